//! `wasmail plugin ...` subcommands.

/// `wasmail plugin` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCmd {}

/// Runs a `wasmail plugin` subcommand.
pub fn run(cmd: PluginCmd) -> anyhow::Result<()> {
    match cmd {}
}

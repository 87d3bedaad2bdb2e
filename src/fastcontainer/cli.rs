//! `wasmail ctl ...` subcommands (talk to a running `wasmail serve` over the admin API).

/// `wasmail ctl` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CtlCmd {}

/// Runs a `wasmail ctl` subcommand.
pub fn run(_config: &crate::config::Config, cmd: CtlCmd) -> anyhow::Result<()> {
    match cmd {}
}

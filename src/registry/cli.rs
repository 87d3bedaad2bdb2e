//! `wasmail domain|mailbox|alias ...` subcommands.

/// `wasmail domain` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DomainCmd {}
/// `wasmail mailbox` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum MailboxCmd {}
/// `wasmail alias` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AliasCmd {}

/// Runs a registry subcommand against the registry named in the config file.
pub fn run_domain(_config: &crate::config::Config, cmd: DomainCmd) -> anyhow::Result<()> {
    match cmd {}
}
/// Runs a `wasmail mailbox` subcommand.
pub fn run_mailbox(_config: &crate::config::Config, cmd: MailboxCmd) -> anyhow::Result<()> {
    match cmd {}
}
/// Runs a `wasmail alias` subcommand.
pub fn run_alias(_config: &crate::config::Config, cmd: AliasCmd) -> anyhow::Result<()> {
    match cmd {}
}

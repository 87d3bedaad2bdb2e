//! The `wasmail` command line: `serve`, `check-config`, and the management subcommands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wasmail::config::{Config, LogFormat};

/// Programmable, sandboxed mail policy for Postfix and Dovecot, with WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "wasmail", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the configuration file is.
#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Configuration file (TOML); also accepted after a subcommand.
    #[arg(
        short,
        long,
        global = true,
        env = "WASMAIL_CONFIG",
        default_value = "/etc/wasmail/wasmail.toml"
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the configured services until SIGTERM/SIGINT (SIGHUP reloads plugins).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a configuration file and report every problem with file, line and key.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Inspect and try plugins without Postfix.
    Plugin {
        #[command(subcommand)]
        cmd: wasmail::host::cli::PluginCmd,
    },
    /// Manage hosted domains in the registry.
    Domain {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        cmd: wasmail::registry::cli::DomainCmd,
    },
    /// Manage mailboxes in the registry.
    Mailbox {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        cmd: wasmail::registry::cli::MailboxCmd,
    },
    /// Manage aliases in the registry.
    Alias {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        cmd: wasmail::registry::cli::AliasCmd,
    },
    /// Export or import the whole registry (to move it between backends or hosts).
    Registry {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        cmd: wasmail::registry::cli::RegistryCmd,
    },
    /// Talk to a running `wasmail serve` through its admin API.
    Ctl {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        cmd: wasmail::admin::cli::CtlCmd,
    },
    /// Internal: PID 1 of a FastContainer, started by the spawner with its pipes.
    #[command(hide = true)]
    ContainerInit {
        /// Pipe carrying the JSON spec.
        #[arg(long)]
        spec_fd: i32,
        /// Pipe for setup errors (EOF once the worker is exec'd).
        #[arg(long)]
        status_fd: i32,
        /// Pipe for the worker's final wait status.
        #[arg(long)]
        exit_fd: i32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wasmail: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(arg: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(&arg.config)?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let config = load(&config)?;
            wasmail::telemetry::init(config.server.log_format, &config.server.log_filter);
            wasmail::serve::run(config)?;
        }
        Command::CheckConfig { config: arg } => match Config::load(&arg.config) {
            Ok(config) => {
                let services = config.services();
                println!(
                    "{}: OK; services: {}",
                    arg.config.display(),
                    if services.is_empty() {
                        "none".to_string()
                    } else {
                        services.join(", ")
                    }
                );
            }
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
        },
        Command::Plugin { cmd } => {
            wasmail::telemetry::init(LogFormat::Text, "warn");
            wasmail::host::cli::run(cmd)?;
        }
        Command::Domain { config, cmd } => {
            wasmail::registry::cli::run_domain(&load(&config)?, cmd)?
        }
        Command::Mailbox { config, cmd } => {
            wasmail::registry::cli::run_mailbox(&load(&config)?, cmd)?
        }
        Command::Alias { config, cmd } => wasmail::registry::cli::run_alias(&load(&config)?, cmd)?,
        Command::Registry { config, cmd } => {
            wasmail::registry::cli::run_registry(&load(&config)?, cmd)?
        }
        Command::Ctl { config, cmd } => wasmail::admin::cli::run(&load(&config)?, cmd)?,
        Command::ContainerInit {
            spec_fd,
            status_fd,
            exit_fd,
        } => std::process::exit(wasmail::fastcontainer::init::run(
            spec_fd, status_fd, exit_fd,
        )),
    }
    Ok(ExitCode::SUCCESS)
}

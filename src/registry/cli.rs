//! `wasmail domain|mailbox|alias|registry ...` subcommands.
//!
//! Each command opens the registry named by `[registry]` in the configuration file, makes
//! one change (or reads one snapshot), prints the result and exits; a running
//! `wasmail serve` picks the change up within its refresh interval. Lists print aligned
//! columns, or a JSON array with `--json`. Password hashes are never printed: outputs say
//! `password: set` or `none`. Passwords are read from the terminal (twice, without echo)
//! or from one line of standard input, never from the command line, where other users
//! could see them in `ps`.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Serialize;

use super::password::{self, Secret};
use super::{Alias, Domain, Mailbox, Registry, RegistryError, Snapshot, validate};
use crate::config::Config;

/// `wasmail domain` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DomainCmd {
    /// Add a hosted domain.
    Add {
        /// Domain name, e.g. example.com (internationalised names in their xn-- form).
        name: String,
        /// Postfix transport for the domain's mail, e.g. lmtp:unix:private/dovecot-lmtp
        /// (default: Postfix's own).
        #[arg(long, value_name = "TRANSPORT")]
        transport: Option<String>,
        /// Plugins for one service (milter, policy or hook), run after the global chain,
        /// in order. Repeat for several services.
        #[arg(long = "chain", value_name = "SERVICE=P1,P2", value_parser = parse_chain)]
        chains: Vec<(String, Vec<String>)>,
        /// A per-domain setting for the domain's plugins and workers. Repeatable.
        #[arg(long = "setting", value_name = "KEY=VALUE", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
    },
    /// List domains with their transport, chains and counts.
    List {
        /// Print a JSON array instead of columns.
        #[arg(long)]
        json: bool,
    },
    /// Show one domain with its mailboxes and aliases.
    Show {
        /// Domain name.
        name: String,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a domain.
    Rm {
        /// Domain name.
        name: String,
        /// Also remove the domain's mailboxes and aliases (without it, a domain that still
        /// has any is kept).
        #[arg(long)]
        force: bool,
    },
    /// Change a domain's transport, chains or settings; what is not named stays.
    Set {
        /// Domain name.
        name: String,
        /// New Postfix transport.
        #[arg(long, value_name = "TRANSPORT", conflicts_with = "no_transport")]
        transport: Option<String>,
        /// Remove the transport (Postfix's default applies).
        #[arg(long)]
        no_transport: bool,
        /// Replace one service's chain; `SERVICE=` (nothing after `=`) removes it.
        /// Repeatable.
        #[arg(long = "chain", value_name = "SERVICE=P1,P2", value_parser = parse_chain)]
        chains: Vec<(String, Vec<String>)>,
        /// Set a setting. Repeatable.
        #[arg(long = "setting", value_name = "KEY=VALUE", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
        /// Remove a setting. Repeatable.
        #[arg(long = "unset-setting", value_name = "KEY")]
        unset_settings: Vec<String>,
    },
}

/// `wasmail mailbox` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum MailboxCmd {
    /// Add a mailbox. Asks for the password (twice) on a terminal, else reads one line
    /// from standard input.
    Add {
        /// Address, local@domain; the domain must be in the registry.
        address: String,
        /// Storage quota: bytes, or a number with K, M, G or T (powers of 1024, as in
        /// Dovecot), e.g. 2G. Default: unlimited.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        quota: Option<u64>,
        /// Read the password from the first line of standard input, even on a terminal.
        #[arg(long, conflicts_with = "no_password")]
        password_stdin: bool,
        /// Create the mailbox without a password (it cannot log in until
        /// `wasmail mailbox passwd`).
        #[arg(long)]
        no_password: bool,
    },
    /// List mailboxes, of one domain or of all.
    List {
        /// Only this domain's mailboxes.
        domain: Option<String>,
        /// Print a JSON array instead of columns.
        #[arg(long)]
        json: bool,
    },
    /// Remove a mailbox (the registry entry; stored mail is not touched).
    Rm {
        /// Address, local@domain.
        address: String,
    },
    /// Set a mailbox's password. Asks on a terminal, else reads one line from standard
    /// input.
    Passwd {
        /// Address, local@domain.
        address: String,
        /// Read the password from the first line of standard input, even on a terminal.
        #[arg(long, conflicts_with = "no_password")]
        password_stdin: bool,
        /// Remove the password: the mailbox can no longer log in.
        #[arg(long)]
        no_password: bool,
    },
}

/// `wasmail alias` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AliasCmd {
    /// Add an alias: mail to SOURCE goes to every TARGET.
    Add {
        /// local@domain, or @domain for the domain's catch-all; the domain must be in the
        /// registry.
        source: String,
        /// Addresses to deliver to, local or remote.
        #[arg(required = true, value_name = "TARGET")]
        targets: Vec<String>,
    },
    /// List aliases, of one domain or of all.
    List {
        /// Only this domain's aliases.
        domain: Option<String>,
        /// Print a JSON array instead of columns.
        #[arg(long)]
        json: bool,
    },
    /// Remove an alias.
    Rm {
        /// local@domain, or @domain for the catch-all.
        source: String,
    },
}

/// `wasmail registry` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RegistryCmd {
    /// Write everything in the registry (domains, mailboxes with their password hashes,
    /// aliases) as a versioned JSON document (docs/registry.md).
    Export {
        /// Write to this file (created with mode 0600; it holds password hashes) instead
        /// of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
    /// Read a document written by `wasmail registry export` into the registry; refuses
    /// (writing nothing) when an entry already exists, unless --replace.
    Import {
        /// Read from this file instead of standard input.
        #[arg(long, short, value_name = "FILE")]
        input: Option<std::path::PathBuf>,
        /// Overwrite entries that already exist (entries the document does not name are
        /// kept).
        #[arg(long)]
        replace: bool,
    },
}

/// Runs a `wasmail registry` subcommand.
pub fn run_registry(config: &Config, cmd: RegistryCmd) -> anyhow::Result<()> {
    use super::dump::{Dump, import};
    let reg = open(config)?;
    match cmd {
        RegistryCmd::Export { output } => {
            let snap = reg.snapshot()?;
            let text = Dump::from_snapshot(&snap).to_json();
            match output {
                None => std::io::stdout()
                    .lock()
                    .write_all(text.as_bytes())
                    .context("writing to standard output")?,
                Some(path) => {
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    f.write_all(text.as_bytes())
                        .and_then(|_| f.sync_all())
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "exported {} domain(s), {} mailbox(es), {} alias(es) from {} to {}",
                        snap.domains.len(),
                        snap.mailboxes.len(),
                        snap.aliases.len(),
                        reg.location(),
                        path.display()
                    );
                }
            }
        }
        RegistryCmd::Import { input, replace } => {
            let (text, from) = match &input {
                None => {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
                        .context("reading standard input")?;
                    (text, "standard input".to_string())
                }
                Some(path) => (
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                    path.display().to_string(),
                ),
            };
            let dump = Dump::parse(&text).map_err(|e| anyhow::anyhow!("{from}: {e}"))?;
            let report = import(&*reg, &dump, replace)?;
            println!(
                "imported {} entries into {}: {} added, {} replaced, {} unchanged",
                report.added + report.replaced + report.unchanged,
                reg.location(),
                report.added,
                report.replaced,
                report.unchanged
            );
        }
    }
    Ok(())
}

/// Runs a `wasmail domain` subcommand against the registry named in the config file.
pub fn run_domain(config: &Config, cmd: DomainCmd) -> anyhow::Result<()> {
    let reg = open(config)?;
    match cmd {
        DomainCmd::Add {
            name,
            transport,
            chains,
            settings,
        } => {
            let domain = Domain {
                name,
                transport,
                chains: chain_map(chains)?,
                settings: settings.into_iter().collect(),
            };
            let name = validate::domain_name(&domain.name)?;
            reg.add_domain(&domain).map_err(|e| match e {
                RegistryError::Exists(_) => {
                    hint(e, format!("change it with `wasmail domain set {name} ...`"))
                }
                e => e.into(),
            })?;
            println!("added domain {name}");
        }
        DomainCmd::List { json } => {
            let snap = reg.snapshot()?;
            let views: Vec<_> = snap
                .domains
                .values()
                .map(|d| domain_view(&snap, d))
                .collect();
            if json {
                print_json(&views)?;
            } else if views.is_empty() {
                eprintln!("no domains in {}", reg.location());
            } else {
                let rows = views
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.to_string(),
                            v.transport.unwrap_or("-").to_string(),
                            v.mailbox_count.to_string(),
                            v.alias_count.to_string(),
                            chains_text(v.chains),
                        ]
                    })
                    .collect::<Vec<_>>();
                print_table(
                    &["DOMAIN", "TRANSPORT", "MAILBOXES", "ALIASES", "CHAINS"],
                    &rows,
                );
            }
        }
        DomainCmd::Show { name, json } => {
            let name = validate::domain_name(&name)?;
            let snap = reg.snapshot()?;
            let Some(d) = snap.domain(&name) else {
                return Err(not_found_domain(&name));
            };
            let detail = DomainDetail {
                domain: domain_view(&snap, d),
                mailboxes: mailboxes_of(&snap, Some(&name)),
                aliases: aliases_of(&snap, Some(&name)),
            };
            if json {
                print_json(&detail)?;
            } else {
                print_domain(&detail);
            }
        }
        DomainCmd::Rm { name, force } => {
            let name = validate::domain_name(&name)?;
            reg.remove_domain(&name, force)?;
            println!("removed domain {name}");
        }
        DomainCmd::Set {
            name,
            transport,
            no_transport,
            chains,
            settings,
            unset_settings,
        } => {
            if transport.is_none()
                && !no_transport
                && chains.is_empty()
                && settings.is_empty()
                && unset_settings.is_empty()
            {
                bail!(
                    "nothing to change: give --transport, --no-transport, --chain, --setting \
                     or --unset-setting"
                );
            }
            let name = validate::domain_name(&name)?;
            let snap = reg.snapshot()?;
            let Some(current) = snap.domain(&name) else {
                return Err(not_found_domain(&name));
            };
            let mut d = current.clone();
            if no_transport {
                d.transport = None;
            } else if transport.is_some() {
                d.transport = transport;
            }
            for (service, plugins) in chain_map(chains)? {
                if plugins.is_empty() {
                    d.chains.remove(&service);
                } else {
                    d.chains.insert(service, plugins);
                }
            }
            for key in &unset_settings {
                d.settings.remove(key);
            }
            d.settings.extend(settings);
            reg.update_domain(&d)?;
            println!("updated domain {name}");
        }
    }
    Ok(())
}

/// Runs a `wasmail mailbox` subcommand.
pub fn run_mailbox(config: &Config, cmd: MailboxCmd) -> anyhow::Result<()> {
    let reg = open(config)?;
    match cmd {
        MailboxCmd::Add {
            address,
            quota,
            password_stdin,
            no_password,
        } => {
            let address = validate::mailbox_address(&address)?;
            // Check what can be checked before asking for a password.
            let snap = reg.snapshot()?;
            let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
            if snap.domain(domain).is_none() {
                return Err(RegistryError::UnknownDomain(domain.to_string()).into());
            }
            let password_hash = if no_password {
                None
            } else {
                let secret = read_password(&address, password_stdin)?;
                Some(password::hash_password(secret.expose())?)
            };
            reg.add_mailbox(&Mailbox {
                address: address.clone(),
                password_hash,
                quota_bytes: quota,
            })
            .map_err(|e| match e {
                RegistryError::Exists(ref m) if *m == format!("mailbox {address}") => hint(
                    e,
                    format!("change its password with `wasmail mailbox passwd {address}`"),
                ),
                e => e.into(),
            })?;
            println!(
                "added mailbox {address} (password: {}, quota: {})",
                if no_password { "none" } else { "set" },
                quota.map_or("unlimited".to_string(), format_size)
            );
        }
        MailboxCmd::List { domain, json } => {
            let snap = reg.snapshot()?;
            let domain = domain_filter(&snap, domain.as_deref())?;
            let views = mailboxes_of(&snap, domain.as_deref());
            if json {
                print_json(&views)?;
            } else if views.is_empty() {
                eprintln!("no mailboxes{}", in_what(&*reg, domain.as_deref()));
            } else {
                let rows = views
                    .iter()
                    .map(|v| {
                        vec![
                            v.address.to_string(),
                            v.password.to_string(),
                            v.quota_bytes.map_or("unlimited".to_string(), format_size),
                        ]
                    })
                    .collect::<Vec<_>>();
                print_table(&["ADDRESS", "PASSWORD", "QUOTA"], &rows);
            }
        }
        MailboxCmd::Rm { address } => {
            let address = validate::mailbox_address(&address)?;
            reg.remove_mailbox(&address)?;
            println!("removed mailbox {address}");
        }
        MailboxCmd::Passwd {
            address,
            password_stdin,
            no_password,
        } => {
            let address = validate::mailbox_address(&address)?;
            let snap = reg.snapshot()?;
            if snap.mailbox(&address).is_none() {
                return Err(hint(
                    RegistryError::NotFound(format!("mailbox {address}")),
                    format!("add it with `wasmail mailbox add {address}`"),
                ));
            }
            let hash = if no_password {
                None
            } else {
                let secret = read_password(&address, password_stdin)?;
                Some(password::hash_password(secret.expose())?)
            };
            reg.set_password(&address, hash.as_deref())?;
            if no_password {
                println!("removed the password of {address}");
            } else {
                println!("changed the password of {address}");
            }
        }
    }
    Ok(())
}

/// Runs a `wasmail alias` subcommand.
pub fn run_alias(config: &Config, cmd: AliasCmd) -> anyhow::Result<()> {
    let reg = open(config)?;
    match cmd {
        AliasCmd::Add { source, targets } => {
            let source = validate::alias_source(&source)?;
            reg.add_alias(&Alias {
                source: source.clone(),
                targets,
            })?;
            let what = if source.starts_with('@') {
                "catch-all alias"
            } else {
                "alias"
            };
            println!("added {what} {source}");
        }
        AliasCmd::List { domain, json } => {
            let snap = reg.snapshot()?;
            let domain = domain_filter(&snap, domain.as_deref())?;
            let views = aliases_of(&snap, domain.as_deref());
            if json {
                print_json(&views)?;
            } else if views.is_empty() {
                eprintln!("no aliases{}", in_what(&*reg, domain.as_deref()));
            } else {
                let rows = views
                    .iter()
                    .map(|v| vec![v.source.to_string(), v.targets.join(", ")])
                    .collect::<Vec<_>>();
                print_table(&["SOURCE", "TARGETS"], &rows);
            }
        }
        AliasCmd::Rm { source } => {
            let source = validate::alias_source(&source)?;
            reg.remove_alias(&source)?;
            println!("removed alias {source}");
        }
    }
    Ok(())
}

/// Opens the configured registry; the error says which setting names the file or the
/// etcd endpoints.
fn open(config: &Config) -> anyhow::Result<Arc<dyn Registry>> {
    let section = config.registry_section();
    super::open(&section).with_context(|| {
        let file = config.source.as_ref().map_or_else(
            || "the configuration".to_string(),
            |p| p.display().to_string(),
        );
        match section.backend {
            super::config::Backend::Sqlite => format!(
                "cannot open the registry {} (`[registry] path` in {file})",
                section.path.display()
            ),
            super::config::Backend::Etcd => format!(
                "cannot open the registry in etcd {} (`[registry] endpoints` in {file})",
                section.endpoints.join(",")
            ),
        }
    })
}

/// A registry error with advice appended.
fn hint(e: RegistryError, advice: String) -> anyhow::Error {
    anyhow::anyhow!("{e}; {advice}")
}

fn not_found_domain(name: &str) -> anyhow::Error {
    hint(
        RegistryError::NotFound(format!("domain {name}")),
        "`wasmail domain list` shows the domains".to_string(),
    )
}

/// Normalises an optional `DOMAIN` argument and checks that the domain exists.
fn domain_filter(snap: &Snapshot, domain: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(d) = domain else { return Ok(None) };
    let d = validate::domain_name(d)?;
    if snap.domain(&d).is_none() {
        return Err(not_found_domain(&d));
    }
    Ok(Some(d))
}

fn in_what(reg: &dyn Registry, domain: Option<&str>) -> String {
    match domain {
        Some(d) => format!(" in domain {d}"),
        None => format!(" in {}", reg.location()),
    }
}

/// Collects `--chain SERVICE=...` values, refusing a service named twice.
fn chain_map(chains: Vec<(String, Vec<String>)>) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for (service, plugins) in chains {
        if out.insert(service.clone(), plugins).is_some() {
            bail!("--chain {service}=... is given twice; list all its plugins in one value");
        }
    }
    Ok(out)
}

/// Parses `SERVICE=P1,P2` (plugins may be empty: `SERVICE=`).
fn parse_chain(s: &str) -> Result<(String, Vec<String>), String> {
    let (service, plugins) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not SERVICE=PLUGIN,PLUGIN (e.g. milter=spam,dkim)"))?;
    let service = service.trim().to_ascii_lowercase();
    if !validate::CHAIN_SERVICES.contains(&service.as_str()) {
        return Err(format!(
            "`{service}` is not a service with plugin chains; use one of {}",
            validate::CHAIN_SERVICES.join(", ")
        ));
    }
    let plugins = plugins
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    Ok((service, plugins))
}

/// Parses `KEY=VALUE`.
fn parse_setting(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    Ok((k.trim().to_string(), v.to_string()))
}

/// Parses a size: bytes, or a whole number with K, M, G or T (powers of 1024; `KB`,
/// `KiB` and a final `B` are accepted too, in any case).
fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "`{s}` is not a size: give bytes, or a whole number with K, M, G or T \
             (powers of 1024), e.g. 2G"
        )
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches('b').trim_end_matches('i');
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift)
        .filter(|v| i64::try_from(*v).is_ok())
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Formats bytes with the largest exact unit: `2G`, `1536M`, `1000` (bytes).
fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Reads a password: from the terminal (twice, without echo) when standard input is one
/// and `--password-stdin` was not given, else the first line of standard input.
fn read_password(address: &str, from_stdin: bool) -> anyhow::Result<Secret> {
    let stdin = std::io::stdin();
    let secret = if !from_stdin && stdin.is_terminal() {
        let first = prompt_hidden(&format!("Password for {address}: "))?;
        let again = prompt_hidden("Repeat the password: ")?;
        if first.expose() != again.expose() {
            bail!("the passwords do not match; nothing was changed");
        }
        first
    } else {
        let mut line = String::new();
        let n = stdin
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        let secret = Secret::new(line);
        if n == 0 {
            bail!(
                "no password on standard input; pipe one line, or use --no-password for a \
                 mailbox that cannot log in"
            );
        }
        secret
    };
    let plain = secret.expose().trim_end_matches(['\n', '\r']);
    if plain.is_empty() {
        bail!("the password is empty; use --no-password for a mailbox that cannot log in");
    }
    if plain.chars().any(char::is_control) {
        bail!("the password contains control characters");
    }
    Ok(Secret::new(plain.to_string()))
}

/// Prints `prompt` on standard error and reads a line from the terminal with echo off.
fn prompt_hidden(prompt: &str) -> anyhow::Result<Secret> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    use std::os::fd::AsFd;

    /// Restores the terminal even if reading fails.
    struct Restore<'a> {
        fd: std::os::fd::BorrowedFd<'a>,
        saved: nix::sys::termios::Termios,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let _ = tcsetattr(self.fd, SetArg::TCSANOW, &self.saved);
        }
    }

    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let saved = tcgetattr(fd).context("reading the terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    // Still echo the newline, so the next prompt starts on its own line.
    quiet.local_flags.insert(LocalFlags::ECHONL);
    let restore = Restore { fd, saved };
    tcsetattr(fd, SetArg::TCSANOW, &quiet).context("turning off terminal echo")?;
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    drop(restore);
    let secret = Secret::new(line);
    read.context("reading the password from the terminal")?;
    Ok(secret)
}

/// A domain as listed (no password material anywhere in these views).
#[derive(Debug, Serialize)]
struct DomainView<'a> {
    name: &'a str,
    transport: Option<&'a str>,
    chains: &'a BTreeMap<String, Vec<String>>,
    settings: &'a BTreeMap<String, String>,
    mailbox_count: usize,
    alias_count: usize,
}

/// A domain with its mailboxes and aliases (`domain show`).
#[derive(Debug, Serialize)]
struct DomainDetail<'a> {
    #[serde(flatten)]
    domain: DomainView<'a>,
    mailboxes: Vec<MailboxView<'a>>,
    aliases: Vec<AliasView<'a>>,
}

/// A mailbox as listed: whether a password is set, never the hash.
#[derive(Debug, Serialize)]
struct MailboxView<'a> {
    address: &'a str,
    domain: &'a str,
    /// `set` or `none`.
    password: &'static str,
    quota_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct AliasView<'a> {
    source: &'a str,
    domain: &'a str,
    catch_all: bool,
    targets: &'a [String],
}

fn domain_view<'a>(snap: &'a Snapshot, d: &'a Domain) -> DomainView<'a> {
    DomainView {
        name: &d.name,
        transport: d.transport.as_deref(),
        chains: &d.chains,
        settings: &d.settings,
        mailbox_count: snap
            .mailboxes
            .values()
            .filter(|m| m.domain() == d.name)
            .count(),
        alias_count: snap
            .aliases
            .values()
            .filter(|a| a.domain() == d.name)
            .count(),
    }
}

fn mailboxes_of<'a>(snap: &'a Snapshot, domain: Option<&str>) -> Vec<MailboxView<'a>> {
    let mut v: Vec<_> = snap
        .mailboxes
        .values()
        .filter(|m| domain.is_none_or(|d| m.domain() == d))
        .map(|m| MailboxView {
            address: &m.address,
            domain: m.domain(),
            password: if m.password_hash.is_some() {
                "set"
            } else {
                "none"
            },
            quota_bytes: m.quota_bytes,
        })
        .collect();
    // By domain, then local part.
    v.sort_by(|a, b| (a.domain, a.address).cmp(&(b.domain, b.address)));
    v
}

fn aliases_of<'a>(snap: &'a Snapshot, domain: Option<&str>) -> Vec<AliasView<'a>> {
    let mut v: Vec<_> = snap
        .aliases
        .values()
        .filter(|a| domain.is_none_or(|d| a.domain() == d))
        .map(|a| AliasView {
            source: &a.source,
            domain: a.domain(),
            catch_all: a.is_catch_all(),
            targets: &a.targets,
        })
        .collect();
    v.sort_by(|a, b| (a.domain, a.source).cmp(&(b.domain, b.source)));
    v
}

fn chains_text(chains: &BTreeMap<String, Vec<String>>) -> String {
    if chains.is_empty() {
        return "-".to_string();
    }
    chains
        .iter()
        .map(|(s, p)| format!("{s}={}", p.join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_domain(d: &DomainDetail<'_>) {
    let v = &d.domain;
    let mut rows: Vec<Vec<String>> = vec![
        vec!["domain".into(), v.name.to_string()],
        vec![
            "transport".into(),
            v.transport.unwrap_or("- (Postfix default)").to_string(),
        ],
    ];
    if v.chains.is_empty() {
        rows.push(vec!["chains".into(), "-".into()]);
    }
    for (service, plugins) in v.chains {
        rows.push(vec![format!("chain {service}"), plugins.join(", ")]);
    }
    for (k, val) in v.settings {
        rows.push(vec![format!("setting {k}"), val.clone()]);
    }
    rows.push(vec!["mailboxes".into(), v.mailbox_count.to_string()]);
    rows.push(vec!["aliases".into(), v.alias_count.to_string()]);
    print_rows(&rows);
    if !d.mailboxes.is_empty() {
        println!("\nMAILBOXES");
        let rows = d
            .mailboxes
            .iter()
            .map(|m| {
                vec![
                    format!("  {}", m.address),
                    format!("password: {}", m.password),
                    format!(
                        "quota: {}",
                        m.quota_bytes.map_or("unlimited".to_string(), format_size)
                    ),
                ]
            })
            .collect::<Vec<_>>();
        print_rows(&rows);
    }
    if !d.aliases.is_empty() {
        println!("\nALIASES");
        let rows = d
            .aliases
            .iter()
            .map(|a| {
                vec![
                    format!("  {}", a.source),
                    format!("-> {}", a.targets.join(", ")),
                ]
            })
            .collect::<Vec<_>>();
        print_rows(&rows);
    }
}

/// Prints a header line and rows in aligned columns.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut all = Vec::with_capacity(rows.len() + 1);
    all.push(header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    all.extend(rows.iter().cloned());
    print_rows(&all);
}

/// Prints rows in columns padded to the widest cell, two spaces apart.
fn print_rows(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if c + 1 < r.len() {
                line.extend(std::iter::repeat_n(' ', widths[c] - cell.chars().count()));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("10 KB").unwrap(), 10 << 10);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert!(parse_size("1.5G").unwrap_err().contains("not a size"));
        assert!(parse_size("G").is_err());
        assert!(parse_size("2X").is_err());
        assert!(
            parse_size("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(format_size(2 << 30), "2G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
    }

    #[test]
    fn chain_and_setting_arguments() {
        assert_eq!(
            parse_chain("Milter=a, b").unwrap(),
            ("milter".to_string(), vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(parse_chain("hook=").unwrap().1, Vec::<String>::new());
        assert!(parse_chain("milter").unwrap_err().contains("SERVICE="));
        assert!(
            parse_chain("smtp=a")
                .unwrap_err()
                .contains("milter, policy, hook")
        );
        assert_eq!(
            parse_setting("k=v=w").unwrap(),
            ("k".to_string(), "v=w".to_string())
        );
        assert!(parse_setting("k").is_err());
        assert!(chain_map(vec![("milter".into(), vec![]), ("milter".into(), vec![])]).is_err());
    }
}

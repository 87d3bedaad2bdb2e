//! `wasmail plugin check|test`: inspect a plugin and run it on a message without Postfix.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::json;

use super::caps::auth::{Authenticator, StaticDns};
use super::caps::kv::{KvConfig, SqliteKv};
use super::config::{Capability, PluginEntry, PluginsSection};
use super::engine::World;
use super::milter::WasmFilter;
use super::plugin::{BodyMode, Description};
use super::set::PluginHost;
use super::state::Services;
use crate::milter_service::chain::{
    ChainRunner, Edit, Event, Header, NoDomainChains, Outcome, StagePlugin, Verdict,
};

/// `wasmail plugin` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCmd {
    /// Load a plugin (type-check against the wasmail worlds) and print what it declares.
    Check {
        /// The component file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a milter-filter plugin on a message and print the verdicts and edits.
    Test(Box<TestArgs>),
}

/// Arguments of `wasmail plugin test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The component file (or, with --config, the configured plugin's name).
    pub file: PathBuf,
    /// The message (RFC 5322 file; LF or CRLF line ends).
    #[arg(long)]
    pub eml: PathBuf,
    /// Envelope sender (default: the message's From address).
    #[arg(long)]
    pub from: Option<String>,
    /// Envelope recipient; repeat for several (default: the message's To addresses).
    #[arg(long = "rcpt")]
    pub rcpt: Vec<String>,
    /// SMTP client address.
    #[arg(long, default_value = "192.0.2.1")]
    pub client_ip: String,
    /// SMTP client host name.
    #[arg(long, default_value = "client.example")]
    pub client_name: String,
    /// HELO name.
    #[arg(long, default_value = "client.example")]
    pub helo: String,
    /// A plugin setting `KEY=VALUE` (repeatable).
    #[arg(long = "setting", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Capabilities to grant (repeatable; default: log, config, message, auth, kv).
    #[arg(long = "grant", value_name = "CAPABILITY")]
    pub grants: Vec<String>,
    /// Take the plugin's file, grants, limits and settings from this configuration; FILE
    /// is then the plugin's name.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Do not use DNS: the `auth` capability answers from no records.
    #[arg(long)]
    pub offline: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `wasmail plugin` subcommand.
pub fn run(cmd: PluginCmd) -> anyhow::Result<()> {
    match cmd {
        PluginCmd::Check { file, json } => check(&file, json),
        PluginCmd::Test(args) => test(*args),
    }
}

fn section_for(dir: &Path) -> PluginsSection {
    PluginsSection {
        dir: dir.to_path_buf(),
        watch: false,
        pool_instances: 8,
        idle_instances: 0,
        ..PluginsSection::default()
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

fn check(file: &Path, json_out: bool) -> anyhow::Result<()> {
    let file = absolute(file)?;
    let entry = PluginEntry {
        file: file.clone(),
        grants: Capability::ALL.to_vec(),
        on_error: Default::default(),
        limits: Default::default(),
        instance_reuse: 1,
        settings: Default::default(),
    };
    let mut entries = BTreeMap::new();
    entries.insert("plugin".to_string(), entry);
    let section = section_for(file.parent().unwrap_or(Path::new("/")));
    let started = Instant::now();
    let host = PluginHost::start(&section, &entries, HashMap::new(), Services::default())?;
    let elapsed = started.elapsed();
    let p = host.get("plugin").expect("loaded");
    let wasmail_imports: Vec<&str> = p
        .imports
        .iter()
        .filter(|i| i.starts_with("wasmail:"))
        .map(String::as_str)
        .collect();
    let needs: Vec<&str> = Capability::ALL
        .into_iter()
        .filter(|c| {
            wasmail_imports.iter().any(|i| {
                i.split('@').next() == Some(&format!("wasmail:plugin/{}", c.name()) as &str)
            })
        })
        .map(Capability::name)
        .collect();
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    if json_out {
        let desc = description_json(&p.description);
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "file": file,
                "size": size,
                "sha256": p.sha256,
                "world": p.world.name(),
                "description": desc,
                "capabilities": needs,
                "imports": p.imports,
                "load_ms": elapsed.as_secs_f64() * 1000.0,
            }))?
        );
        return Ok(());
    }
    println!("{}: OK", file.display());
    println!("  world:        {}", p.world);
    println!("  sha256:       {}", p.sha256);
    println!(
        "  size:         {size} bytes (compiled and checked in {:.1} ms)",
        elapsed.as_secs_f64() * 1000.0
    );
    match &p.description {
        Description::Milter {
            name,
            version,
            stages,
            body,
        } => {
            println!("  name:         {name} {version}");
            println!(
                "  stages:       {}",
                stages
                    .iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!("  body:         {}", body_text(*body));
        }
        Description::Table {
            name,
            version,
            tables,
        } => {
            println!("  name:         {name} {version}");
            println!("  tables:       {}", tables.join(", "));
        }
        Description::Policy { name, version } => println!("  name:         {name} {version}"),
        Description::Hook {
            name,
            version,
            events,
        } => {
            println!("  name:         {name} {version}");
            println!("  events:       {}", events.join(", "));
        }
    }
    println!(
        "  capabilities: {} (grant them in [plugin.NAME] grants)",
        if needs.is_empty() {
            "none".to_string()
        } else {
            needs.join(", ")
        }
    );
    println!("  imports:");
    for i in &p.imports {
        println!("    {i}");
    }
    Ok(())
}

fn body_text(b: BodyMode) -> String {
    match b {
        BodyMode::None => "none".into(),
        BodyMode::Chunks => "chunks".into(),
        BodyMode::Whole(n) => format!("whole (up to {n} bytes)"),
    }
}

fn description_json(d: &Description) -> serde_json::Value {
    match d {
        Description::Milter {
            name,
            version,
            stages,
            body,
        } => json!({
            "name": name, "version": version,
            "stages": stages.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>(),
            "body": body_text(*body),
        }),
        Description::Table {
            name,
            version,
            tables,
        } => json!({"name": name, "version": version, "tables": tables}),
        Description::Policy { name, version } => json!({"name": name, "version": version}),
        Description::Hook {
            name,
            version,
            events,
        } => json!({"name": name, "version": version, "events": events}),
    }
}

/// Splits a message file into unfolded-as-received headers (values without the leading
/// space, folding kept as CRLF + whitespace, as Postfix sends them over milter) and a CRLF
/// body.
pub fn split_message(raw: &[u8]) -> (Vec<Header>, Vec<u8>) {
    let text = String::from_utf8_lossy(raw);
    let normalized = text.replace("\r\n", "\n");
    let (head, body) = match normalized.find("\n\n") {
        Some(i) => (&normalized[..i], &normalized[i + 2..]),
        None if normalized.starts_with('\n') => ("", &normalized[1..]),
        None => (normalized.as_str(), ""),
    };
    let mut headers: Vec<Header> = Vec::new();
    for line in head.lines() {
        if (line.starts_with(' ') || line.starts_with('\t'))
            && let Some(last) = headers.last_mut()
        {
            last.value.push_str("\r\n");
            last.value.push_str(line);
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push(Header {
                name: name.trim_end().to_string(),
                value: value.strip_prefix(' ').unwrap_or(value).to_string(),
            });
        }
    }
    let body = body.replace('\n', "\r\n").into_bytes();
    (headers, body)
}

fn addresses(headers: &[Header], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(','))
        .filter_map(|a| {
            let a = a.trim();
            let inner = match (a.rfind('<'), a.rfind('>')) {
                (Some(l), Some(r)) if l < r => &a[l + 1..r],
                _ => a,
            };
            inner.contains('@').then(|| inner.trim().to_string())
        })
        .collect()
}

fn verdict_json(v: &Verdict) -> serde_json::Value {
    let reply = |kind: &str, r: &crate::milter_service::chain::Reply| json!({"verdict": kind, "code": r.code, "enhanced": r.enhanced, "text": r.text});
    match v {
        Verdict::Continue => json!({"verdict": "continue"}),
        Verdict::Accept => json!({"verdict": "accept"}),
        Verdict::Reject(r) => reply("reject", r),
        Verdict::Tempfail(r) => reply("tempfail", r),
        Verdict::Discard => json!({"verdict": "discard"}),
        Verdict::Quarantine(q) => json!({"verdict": "quarantine", "reason": q}),
    }
}

fn verdict_text(v: &Verdict) -> String {
    let reply = |kind: &str, r: &crate::milter_service::chain::Reply| {
        format!(
            "{kind} {} {} {}",
            r.code.map(|c| c.to_string()).unwrap_or_default(),
            r.enhanced.clone().unwrap_or_default(),
            r.text.clone().unwrap_or_default()
        )
        .trim_end()
        .to_string()
    };
    match v {
        Verdict::Continue => "continue".into(),
        Verdict::Accept => "accept".into(),
        Verdict::Reject(r) => reply("reject", r),
        Verdict::Tempfail(r) => reply("tempfail", r),
        Verdict::Discard => "discard".into(),
        Verdict::Quarantine(q) => format!("quarantine ({q})"),
    }
}

fn edit_json(e: &Edit) -> serde_json::Value {
    match e {
        Edit::AddHeader { name, value } => {
            json!({"edit": "add-header", "name": name, "value": value})
        }
        Edit::InsertHeader { index, name, value } => {
            json!({"edit": "insert-header", "index": index, "name": name, "value": value})
        }
        Edit::ChangeHeader { name, index, value } => {
            json!({"edit": "change-header", "index": index, "name": name, "value": value})
        }
        Edit::DeleteHeader { name, index } => {
            json!({"edit": "delete-header", "index": index, "name": name})
        }
        Edit::AddRcpt { address, args } => {
            json!({"edit": "add-recipient", "address": address, "args": args})
        }
        Edit::DeleteRcpt { address } => json!({"edit": "delete-recipient", "address": address}),
        Edit::ChangeFrom { address, args } => {
            json!({"edit": "change-sender", "address": address, "args": args})
        }
        Edit::ReplaceBody(b) => {
            json!({"edit": "replace-body", "bytes": b.len(), "body": String::from_utf8_lossy(b)})
        }
    }
}

fn edit_text(e: &Edit) -> String {
    match e {
        Edit::AddHeader { name, value } => format!("add-header {name}: {value}"),
        Edit::InsertHeader { index, name, value } => {
            format!("insert-header #{index} {name}: {value}")
        }
        Edit::ChangeHeader { name, index, value } => {
            format!("change-header {name}[{index}]: {value}")
        }
        Edit::DeleteHeader { name, index } => format!("delete-header {name}[{index}]"),
        Edit::AddRcpt { address, args } => format!("add-recipient {address} {args}")
            .trim_end()
            .to_string(),
        Edit::DeleteRcpt { address } => format!("delete-recipient {address}"),
        Edit::ChangeFrom { address, args } => format!("change-sender {address} {args}")
            .trim_end()
            .to_string(),
        Edit::ReplaceBody(b) => format!("replace-body ({} bytes)", b.len()),
    }
}

fn test(args: TestArgs) -> anyhow::Result<()> {
    let (name, section, entry) = match &args.config {
        Some(path) => {
            let config = crate::config::Config::load(path)?;
            let name = args.file.to_string_lossy().to_string();
            let entry = config
                .plugin
                .get(&name)
                .with_context(|| format!("{} has no [plugin.{name}]", path.display()))?
                .clone();
            let mut section = config.plugins.clone();
            section.watch = false;
            section.pool_instances = 8;
            section.idle_instances = 0;
            (name, section, entry)
        }
        None => {
            let file = absolute(&args.file)?;
            let grants = if args.grants.is_empty() {
                vec![
                    Capability::Log,
                    Capability::Config,
                    Capability::Message,
                    Capability::Auth,
                    Capability::Kv,
                ]
            } else {
                args.grants
                    .iter()
                    .map(|g| {
                        Capability::ALL
                            .into_iter()
                            .find(|c| c.name() == g)
                            .with_context(|| format!("--grant {g}: unknown capability (log, config, message, auth, kv, send)"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            };
            let mut settings = toml::Table::new();
            for s in &args.settings {
                let Some((k, v)) = s.split_once('=') else {
                    bail!("--setting {s}: expected KEY=VALUE");
                };
                settings.insert(k.to_string(), toml::Value::String(v.to_string()));
            }
            let section = section_for(file.parent().unwrap_or(Path::new("/")));
            (
                "plugin".to_string(),
                section,
                PluginEntry {
                    file,
                    grants,
                    on_error: Default::default(),
                    limits: Default::default(),
                    instance_reuse: 1,
                    settings,
                },
            )
        }
    };
    let raw =
        std::fs::read(&args.eml).with_context(|| format!("reading {}", args.eml.display()))?;
    let (headers, body) = split_message(&raw);
    let from = args
        .from
        .clone()
        .or_else(|| addresses(&headers, "From").into_iter().next())
        .unwrap_or_default();
    let rcpts = if args.rcpt.is_empty() {
        addresses(&headers, "To")
    } else {
        args.rcpt.clone()
    };
    if rcpts.is_empty() {
        bail!("no recipient: give --rcpt or a To header");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let mut entries = BTreeMap::new();
    entries.insert(name.clone(), entry.clone());
    let offline = args.offline;
    let services = {
        let kv = SqliteKv::open(&KvConfig {
            path: None,
            ..section.kv.clone()
        })?;
        let auth = if offline {
            Authenticator::with_records(&section.auth, StaticDns::default())?
        } else {
            Authenticator::new(&section.auth)?
        };
        Services {
            kv: Some(Arc::new(kv)),
            auth: Some(Arc::new(auth)),
            send: None,
            runtime: Some(handle),
        }
    };
    let mut expect = HashMap::new();
    expect.insert(name.clone(), World::MilterFilter);
    let host = PluginHost::start(&section, &entries, expect, services)?;
    let filter = WasmFilter::new(host.clone(), &name, None)
        .context("the plugin is not a milter-filter plugin")?;
    let client_ip = args.client_ip.clone();
    let (client_name, helo) = (args.client_name.clone(), args.helo.clone());
    let results = runtime.block_on(async move {
        tokio::task::spawn_blocking(move || {
            let mut runner = ChainRunner::new(
                vec![Box::new(filter) as Box<dyn StagePlugin>],
                Box::new(NoDomainChains),
            );
            let mut steps: Vec<(&'static str, Outcome)> = Vec::new();
            let mut events: Vec<(&'static str, Event)> = vec![
                (
                    "connect",
                    Event::Connect {
                        hostname: client_name,
                        address: client_ip,
                        port: 25,
                    },
                ),
                ("helo", Event::Helo(helo)),
                (
                    "mail-from",
                    Event::MailFrom {
                        address: format!("<{from}>"),
                        args: Vec::new(),
                    },
                ),
            ];
            for r in &rcpts {
                events.push((
                    "rcpt",
                    Event::Rcpt {
                        address: format!("<{r}>"),
                        args: Vec::new(),
                    },
                ));
            }
            events.push(("headers", Event::Headers(headers)));
            events.push(("end-of-headers", Event::EndOfHeaders));
            for chunk in body.chunks(65535) {
                events.push(("body", Event::Body(chunk.to_vec())));
            }
            events.push(("end-of-message", Event::EndOfMessage));
            let mut accepted_rcpts = 0;
            let total_rcpts = rcpts.len();
            let mut rcpt_seen = 0;
            for (stage, ev) in events {
                let out = runner.run(ev);
                let final_ = out.verdict.is_final();
                let is_rcpt = stage == "rcpt";
                if is_rcpt {
                    rcpt_seen += 1;
                    if !matches!(out.verdict, Verdict::Reject(_) | Verdict::Tempfail(_)) {
                        accepted_rcpts += 1;
                    }
                }
                steps.push((stage, out));
                if is_rcpt {
                    if rcpt_seen == total_rcpts && accepted_rcpts == 0 {
                        break;
                    }
                    continue;
                }
                if final_ {
                    break;
                }
            }
            runner.end_transaction();
            steps
        })
        .await
    })?;
    let last = results.last().map(|(_, o)| o.clone());
    let p = host.get(&name).expect("loaded");
    if args.json {
        let stages: Vec<serde_json::Value> = results
            .iter()
            .map(|(s, o)| {
                let mut v = verdict_json(&o.verdict);
                v["stage"] = json!(s);
                v
            })
            .collect();
        let last = last.unwrap_or_else(|| Outcome {
            verdict: Verdict::Continue,
            decided_by: None,
            edits: Vec::new(),
            quarantine: None,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "plugin": description_json(&p.description),
                "stages": stages,
                "verdict": verdict_json(&last.verdict),
                "edits": last.edits.iter().map(edit_json).collect::<Vec<_>>(),
                "quarantine": last.quarantine,
                "failures": p.counters.failures.load(std::sync::atomic::Ordering::Relaxed),
            }))?
        );
    } else {
        for (s, o) in &results {
            println!("{s:<15} {}", verdict_text(&o.verdict));
        }
        if let Some(last) = last {
            if let Some(q) = &last.quarantine {
                println!("quarantine      {q}");
            }
            for e in &last.edits {
                println!("edit            {}", edit_text(e));
            }
        }
        let failures = p
            .counters
            .failures
            .load(std::sync::atomic::Ordering::Relaxed);
        if failures > 0 {
            println!("plugin failures {failures} (see the log above)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_message_keeps_folding_and_crlf_body() {
        let (h, b) =
            split_message(b"Subject: hi\nX-Long: a\n\tb\nFrom: A <a@x.example>\n\nline1\nline2\n");
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].value, "hi");
        assert_eq!(h[1].value, "a\r\n\tb");
        assert_eq!(b, b"line1\r\nline2\r\n");
        assert_eq!(addresses(&h, "from"), vec!["a@x.example".to_string()]);
    }

    #[test]
    fn split_message_without_body() {
        let (h, b) = split_message(b"Subject: x\r\n");
        assert_eq!(h.len(), 1);
        assert!(b.is_empty());
    }
}

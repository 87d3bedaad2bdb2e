//! The example plugins (`plugins/examples/*`, `plugins/python/keyword-score`) through the
//! real host with real capabilities (message, kv, auth with static DNS, config), the
//! request/event adapters (`calls::lookup`, `calls::policy`, `calls::hook`), and the
//! `wasmail plugin check|test` commands of the real binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use wasmail::config::Config;
use wasmail::host::calls::{
    self, HookDecision, HookEvent, HookSession, LookupAnswer, PolicyAction,
};
use wasmail::host::caps::auth::{Authenticator, StaticDns};
use wasmail::host::cli::split_message;
use wasmail::host::engine::World;
use wasmail::host::set::PluginHost;
use wasmail::host::state::Services;
use wasmail::milter_service::chain::{ChainRunner, Edit, Event, Outcome, Reply, Stage, Verdict};

use crate::support;
use crate::support::chain::{eom, header_edit, runner, runtime};

// ---------------------------------------------------------------------------------------
// Helpers (the patterns of host.rs)

/// Parses `toml` (`{plugins}` = built plugin dir, `{dir}` = `dir`).
fn config_in(dir: &Path, toml: &str) -> Config {
    let text = toml
        .replace("{plugins}", support::plugins_dir().to_str().unwrap())
        .replace("{dir}", dir.to_str().unwrap());
    Config::from_str_at(&text, &dir.join("wasmail.toml"))
        .unwrap_or_else(|e| panic!("config: {e}\n{text}"))
}

fn expect_milter(milter: &[&str]) -> HashMap<String, World> {
    milter
        .iter()
        .map(|n| (n.to_string(), World::MilterFilter))
        .collect()
}

/// Starts a host from `toml` in `dir` with the services `Services::start` builds.
fn host_in(dir: &Path, toml: &str, milter: &[&str]) -> Arc<PluginHost> {
    let config = config_in(dir, toml);
    Services::start(&config.plugins, &config.plugin, runtime().handle())
        .and_then(|services| {
            PluginHost::start(
                &config.plugins,
                &config.plugin,
                expect_milter(milter),
                services,
            )
        })
        .unwrap_or_else(|e| panic!("loading plugins: {e:#}"))
}

struct Fixture {
    _dir: tempfile::TempDir,
    host: Arc<PluginHost>,
}

fn host(toml: &str, milter: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let host = host_in(dir.path(), toml, milter);
    Fixture { _dir: dir, host }
}

fn connect_events(ip: &str) -> Vec<Event> {
    vec![
        Event::Connect {
            hostname: "client.example".into(),
            address: ip.into(),
            port: 4000,
        },
        Event::Helo("client.example".into()),
    ]
}

/// CONNECT (from `ip`) to END-OF-MESSAGE for the message file text `eml` (LF or CRLF).
fn eml_events(ip: &str, from: &str, rcpt: &str, eml: &str) -> Vec<Event> {
    let (headers, body) = split_message(eml.as_bytes());
    let mut events = connect_events(ip);
    events.extend([
        Event::MailFrom {
            address: format!("<{from}>"),
            args: vec![],
        },
        Event::Rcpt {
            address: format!("<{rcpt}>"),
            args: vec![],
        },
        Event::Headers(headers),
        Event::EndOfHeaders,
        Event::Body(body),
        Event::EndOfMessage,
    ]);
    events
}

/// Runs events until a final verdict (what Postfix would do); returns every outcome.
fn run(r: &mut ChainRunner, events: Vec<Event>) -> Vec<(Stage, Outcome)> {
    let mut out = Vec::new();
    for ev in events {
        let stage = ev.stage();
        let o = r.run(ev);
        let stop = o.verdict.is_final();
        out.push((stage, o));
        if stop {
            break;
        }
    }
    r.end_transaction();
    out
}

/// One message through `chain` on a new connection.
fn deliver(host: &Arc<PluginHost>, chain: &[&str], events: Vec<Event>) -> Vec<(Stage, Outcome)> {
    run(&mut runner(host, chain), events)
}

#[track_caller]
fn reply(v: &Verdict, reject: bool) -> &Reply {
    match (v, reject) {
        (Verdict::Reject(r), true) | (Verdict::Tempfail(r), false) => r,
        _ => panic!(
            "expected {}, got {v:?}",
            if reject { "reject" } else { "tempfail" }
        ),
    }
}

#[track_caller]
fn assert_reply(v: &Verdict, reject: bool, code: u16, enhanced: &str, text: &str) {
    let r = reply(v, reject);
    assert_eq!(r.code, Some(code), "{v:?}");
    assert_eq!(r.enhanced.as_deref(), Some(enhanced), "{v:?}");
    let t = r.text.as_deref().unwrap_or_default();
    assert!(t.contains(text), "{text:?} not in {v:?}");
}

fn failures(host: &PluginHost, name: &str) -> u64 {
    host.get(name)
        .unwrap()
        .counters
        .failures
        .load(std::sync::atomic::Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------
// Messages

const PLAIN: &str = "From: Alice <alice@example.org>\n\
To: bob@example.com\n\
Subject: Hello\n\
Date: Tue, 14 Jan 2025 11:00:00 +0100\n\
Message-ID: <plain-1@example.org>\n\
\n\
Hello Bob\n";

/// A multipart/mixed message with a text part and a base64 attachment called `filename`.
fn with_attachment(filename: &str, content_type: &str) -> String {
    format!(
        "From: Alice <alice@example.org>\n\
To: bob@example.com\n\
Subject: Your invoice\n\
MIME-Version: 1.0\n\
Content-Type: multipart/mixed; boundary=\"b1\"\n\
\n\
This is a MIME message.\n\
\n\
--b1\n\
Content-Type: text/plain; charset=us-ascii\n\
\n\
Please find the invoice attached.\n\
\n\
--b1\n\
Content-Type: {content_type}; name=\"{filename}\"\n\
Content-Disposition: attachment; filename=\"{filename}\"\n\
Content-Transfer-Encoding: base64\n\
\n\
TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n\
--b1--\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

// ---------------------------------------------------------------------------------------
// attachment-block

fn attachment_block(settings: &str) -> String {
    format!(
        r#"
[plugins]
dir = "{{plugins}}"
watch = false
[plugin.attachment-block]
file = "attachment-block.wasm"
grants = ["message", "config", "log"]
on_error = "tempfail"
[plugin.attachment-block.settings]
{settings}
"#
    )
}

#[test]
fn attachment_block_rejects_an_exe_attachment() {
    let f = host(&attachment_block(""), &["attachment-block"]);
    let eml = with_attachment("invoice.pdf.exe", "application/octet-stream");
    let out = deliver(
        &f.host,
        &["attachment-block"],
        eml_events("192.0.2.10", "alice@example.org", "bob@example.com", &eml),
    );
    let o = eom(&out);
    assert_reply(&o.verdict, true, 554, "5.7.1", "\"invoice.pdf.exe\"");
    assert!(
        reply(&o.verdict, true)
            .text
            .as_deref()
            .unwrap()
            .contains(".exe files are not accepted"),
        "{o:?}"
    );
    assert_eq!(failures(&f.host, "attachment-block"), 0);
}

#[test]
fn attachment_block_lets_a_pdf_through_unless_pdf_is_blocked() {
    let eml = with_attachment("invoice.pdf", "application/pdf");
    let events = || eml_events("192.0.2.10", "alice@example.org", "bob@example.com", &eml);

    let f = host(&attachment_block(""), &["attachment-block"]);
    let out = deliver(&f.host, &["attachment-block"], events());
    let o = eom(&out);
    assert_eq!(o.verdict, Verdict::Continue, "{o:?}");
    assert!(o.edits.is_empty(), "{o:?}");
    // A plain message without parts passes too.
    let out = deliver(
        &f.host,
        &["attachment-block"],
        eml_events("192.0.2.10", "alice@example.org", "bob@example.com", PLAIN),
    );
    assert_eq!(eom(&out).verdict, Verdict::Continue);

    let f = host(
        &attachment_block("blocked_extensions = \"pdf\""),
        &["attachment-block"],
    );
    let out = deliver(&f.host, &["attachment-block"], events());
    assert_reply(&eom(&out).verdict, true, 554, "5.7.1", "\"invoice.pdf\"");
    // With only pdf blocked, .exe is allowed.
    let exe = with_attachment("tool.exe", "application/octet-stream");
    let out = deliver(
        &f.host,
        &["attachment-block"],
        eml_events("192.0.2.10", "alice@example.org", "bob@example.com", &exe),
    );
    assert_eq!(eom(&out).verdict, Verdict::Continue);
    assert_eq!(failures(&f.host, "attachment-block"), 0);
}

// ---------------------------------------------------------------------------------------
// subject-tag

const SUBJECT_TAG: &str = r#"
[plugins]
dir = "{plugins}"
watch = false
[plugin.subject-tag]
file = "subject-tag.wasm"
grants = ["config"]
on_error = "tempfail"
[plugin.subject-tag.settings]
footer = "This message came from outside."
"#;

fn tag(host: &Arc<PluginHost>, eml: &str) -> Outcome {
    let out = deliver(
        host,
        &["subject-tag"],
        eml_events("192.0.2.10", "alice@example.org", "bob@example.com", eml),
    );
    eom(&out).clone()
}

#[test]
fn subject_tag_tags_the_subject_and_appends_the_footer() {
    let f = host(SUBJECT_TAG, &["subject-tag"]);
    let o = tag(&f.host, PLAIN);
    assert_eq!(o.verdict, Verdict::Continue);
    assert_eq!(
        o.edits,
        vec![
            Edit::ChangeHeader {
                name: "Subject".into(),
                index: 1,
                value: "[EXTERNAL] Hello".into()
            },
            Edit::ReplaceBody(b"Hello Bob\r\n\r\nThis message came from outside.\r\n".to_vec()),
        ]
    );
    assert_eq!(failures(&f.host, "subject-tag"), 0);
}

#[test]
fn subject_tag_does_not_tag_twice() {
    let f = host(SUBJECT_TAG, &["subject-tag"]);
    let eml = PLAIN.replace("Subject: Hello", "Subject: Re: [external] Hello");
    let o = tag(&f.host, &eml);
    assert_eq!(o.verdict, Verdict::Continue);
    assert!(
        !o.edits
            .iter()
            .any(|e| matches!(e, Edit::ChangeHeader { .. } | Edit::AddHeader { .. })),
        "an already tagged subject is left alone: {o:?}"
    );
    // The footer is still added.
    assert!(
        o.edits.iter().any(|e| matches!(e, Edit::ReplaceBody(_))),
        "{o:?}"
    );
}

#[test]
fn subject_tag_only_tags_the_subject_of_a_multipart_message() {
    let f = host(SUBJECT_TAG, &["subject-tag"]);
    let eml = with_attachment("report.pdf", "application/pdf");
    let o = tag(&f.host, &eml);
    assert_eq!(o.verdict, Verdict::Continue);
    assert_eq!(
        o.edits,
        vec![Edit::ChangeHeader {
            name: "Subject".into(),
            index: 1,
            value: "[EXTERNAL] Your invoice".into()
        }]
    );
}

// ---------------------------------------------------------------------------------------
// greylist

fn greylist(kv: &str, settings: &str) -> String {
    format!(
        r#"
[plugins]
dir = "{{plugins}}"
watch = false
[plugins.kv]
{kv}
[plugin.greylist]
file = "greylist.wasm"
grants = ["kv", "config", "log"]
on_error = "tempfail"
[plugin.greylist.settings]
min_delay_seconds = 0
{settings}
"#
    )
}

/// One SMTP transaction up to RCPT on a new connection: the MAIL FROM outcome and, when
/// MAIL FROM was not refused, the RCPT outcome.
fn envelope(
    host: &Arc<PluginHost>,
    ip: &str,
    from: &str,
    rcpt: &str,
) -> (Outcome, Option<Outcome>) {
    let mut r = runner(host, &["greylist"]);
    for ev in connect_events(ip) {
        assert_eq!(r.run(ev).verdict, Verdict::Continue);
    }
    let mail = r.run(Event::MailFrom {
        address: format!("<{from}>"),
        args: vec![],
    });
    let rcpt = (!mail.verdict.is_final()).then(|| {
        r.run(Event::Rcpt {
            address: format!("<{rcpt}>"),
            args: vec![],
        })
    });
    r.end_transaction();
    (mail, rcpt)
}

#[track_caller]
fn assert_greylisted(step: &(Outcome, Option<Outcome>)) {
    assert_eq!(step.0.verdict, Verdict::Continue, "MAIL FROM: {step:?}");
    let rcpt = step.1.as_ref().expect("RCPT ran");
    assert_reply(&rcpt.verdict, false, 451, "4.7.1", "Greylisted");
}

#[track_caller]
fn assert_passes(step: &(Outcome, Option<Outcome>)) {
    assert_eq!(step.0.verdict, Verdict::Continue, "MAIL FROM: {step:?}");
    assert_eq!(
        step.1.as_ref().expect("RCPT ran").verdict,
        Verdict::Continue,
        "RCPT: {step:?}"
    );
}

#[test]
fn greylist_tempfails_the_first_attempt_and_passes_the_retry() {
    let f = host(&greylist("", ""), &["greylist"]);
    let (ip, from, rcpt) = ("192.0.2.10", "alice@example.org", "bob@example.com");
    assert_greylisted(&envelope(&f.host, ip, from, rcpt));
    // The retry: a new connection from the same /24, same sender and recipient.
    assert_passes(&envelope(&f.host, "192.0.2.77", from, rcpt));
    // Whitelisted from now on.
    assert_passes(&envelope(&f.host, ip, from, rcpt));
    // Another recipient is a new triplet.
    assert_greylisted(&envelope(&f.host, ip, from, "carol@example.com"));
    // Another network is a new triplet too.
    assert_greylisted(&envelope(&f.host, "198.51.100.1", from, rcpt));
    assert_eq!(failures(&f.host, "greylist"), 0);
}

#[test]
fn greylist_rate_limits_a_sender() {
    let f = host(&greylist("", "rate_limit = 2"), &["greylist"]);
    let (ip, from, rcpt) = ("192.0.2.10", "alice@example.org", "bob@example.com");
    assert_greylisted(&envelope(&f.host, ip, from, rcpt));
    assert_passes(&envelope(&f.host, ip, from, rcpt));
    let third = envelope(&f.host, ip, from, rcpt);
    assert_reply(&third.0.verdict, false, 451, "4.7.1", "Too many messages");
    assert!(third.1.is_none());
    // Other senders are not affected; bounces are never limited.
    assert_passes(&{
        let first = envelope(&f.host, ip, "dave@example.org", rcpt);
        assert_greylisted(&first);
        envelope(&f.host, ip, "dave@example.org", rcpt)
    });
    for _ in 0..3 {
        let (mail, _) = envelope(&f.host, ip, "", rcpt);
        assert_eq!(mail.verdict, Verdict::Continue);
    }
}

#[test]
fn greylist_state_survives_a_host_restart_with_a_kv_file() {
    let dir = tempfile::tempdir().unwrap();
    let toml = greylist("path = \"{dir}/kv/greylist.sqlite\"", "");
    let (ip, from, rcpt) = ("192.0.2.10", "alice@example.org", "bob@example.com");
    {
        let first = host_in(dir.path(), &toml, &["greylist"]);
        assert_greylisted(&envelope(&first, ip, from, rcpt));
    }
    assert!(dir.path().join("kv/greylist.sqlite").is_file());
    // A second host on the same file remembers the first attempt: the retry passes.
    let second = host_in(dir.path(), &toml, &["greylist"]);
    assert_passes(&envelope(&second, ip, from, rcpt));
    drop(second);
    // ...and a third one remembers the pass.
    let third = host_in(dir.path(), &toml, &["greylist"]);
    assert_passes(&envelope(&third, ip, from, rcpt));

    // Without a file (in memory) a restart forgets everything.
    let memory = greylist("", "");
    let one = host_in(dir.path(), &memory, &["greylist"]);
    assert_greylisted(&envelope(&one, ip, "erin@example.org", rcpt));
    drop(one);
    let two = host_in(dir.path(), &memory, &["greylist"]);
    assert_greylisted(&envelope(&two, ip, "erin@example.org", rcpt));
}

// ---------------------------------------------------------------------------------------
// auth-check (auth capability with static DNS)

const AUTH_CHECK: &str = r#"
[plugins]
dir = "{plugins}"
watch = false
[plugins.auth]
authserv_id = "mx.test.example"
dns_timeout = "2s"
[plugins.auth.dkim_keys.ed]
domain = "example.org"
selector = "ed2025"
algorithm = "ed25519-sha256"
private_key = "{data}/dkim-ed25519.pem"
[plugins.auth.dkim_keys.rsa]
domain = "example.org"
selector = "rsa2025"
algorithm = "rsa-sha256"
private_key = "{data}/dkim-rsa-pkcs8.pem"
[plugin.auth-check]
file = "auth-check.wasm"
grants = ["auth", "config", "log"]
on_error = "tempfail"
"#;

struct AuthFixture {
    _dir: tempfile::TempDir,
    host: Arc<PluginHost>,
    /// Signs with the configured keys (same config, no DNS).
    signer: Authenticator,
}

/// The auth-check plugin with an Authenticator answering from `dns` plus the published
/// public keys of the configured DKIM keys.
fn auth_check(dns: StaticDns) -> AuthFixture {
    let dir = tempfile::tempdir().unwrap();
    let data = support::repo_root().join("tests/data/caps");
    let config = config_in(
        dir.path(),
        &AUTH_CHECK.replace("{data}", data.to_str().unwrap()),
    );
    let signer = Authenticator::with_records(&config.plugins.auth, StaticDns::new()).unwrap();
    let mut dns = dns;
    for id in ["ed", "rsa"] {
        dns = dns.txt(
            &signer.dkim_record_name(id).unwrap(),
            &signer.dkim_public_record(id).unwrap(),
        );
    }
    let services = Services {
        kv: None,
        auth: Some(Arc::new(
            Authenticator::with_records(&config.plugins.auth, dns).unwrap(),
        )),
        send: None,
        runtime: Some(runtime().handle().clone()),
    };
    let host = PluginHost::start(
        &config.plugins,
        &config.plugin,
        expect_milter(&["auth-check"]),
        services,
    )
    .unwrap_or_else(|e| panic!("loading plugins: {e:#}"));
    AuthFixture {
        _dir: dir,
        host,
        signer,
    }
}

fn example_org(policy: &str) -> StaticDns {
    StaticDns::new()
        .txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all")
        .txt("_dmarc.example.org", &format!("v=DMARC1; p={policy}"))
}

/// `raw` with a DKIM-Signature header made with key `key_id` prepended.
fn dkim_signed(signer: &Authenticator, key_id: &str, raw: &str) -> String {
    let crlf = raw.replace("\r\n", "\n").replace('\n', "\r\n");
    let value = signer.dkim_sign(key_id, crlf.as_bytes()).unwrap();
    format!("DKIM-Signature: {value}\r\n{crlf}")
}

#[test]
fn auth_check_passes_aligned_spf_and_adds_authentication_results() {
    let f = auth_check(example_org("reject"));
    let out = deliver(
        &f.host,
        &["auth-check"],
        eml_events("192.0.2.10", "alice@example.org", "bob@example.com", PLAIN),
    );
    let o = eom(&out);
    assert_eq!(o.verdict, Verdict::Continue, "{o:?}");
    let ar = header_edit(o, "Authentication-Results").expect("Authentication-Results edit");
    assert!(ar.starts_with("mx.test.example;"), "{ar}");
    assert!(ar.contains("spf=pass"), "{ar}");
    assert!(ar.contains("smtp.mailfrom=alice@example.org"), "{ar}");
    assert!(ar.contains("dkim=none"), "{ar}");
    assert!(ar.contains("arc=none"), "{ar}");
    assert!(ar.contains("dmarc=pass"), "{ar}");
    assert!(ar.contains("header.from=example.org"), "{ar}");
    // From outside the SPF record, with p=none: spf=fail, dmarc=fail, only the header.
    let f = auth_check(example_org("none"));
    let out = deliver(
        &f.host,
        &["auth-check"],
        eml_events("203.0.113.9", "alice@example.org", "bob@example.com", PLAIN),
    );
    let o = eom(&out);
    assert_eq!(o.verdict, Verdict::Continue, "{o:?}");
    let ar = header_edit(o, "Authentication-Results").unwrap();
    assert!(ar.contains("spf=fail") && ar.contains("dmarc=fail"), "{ar}");
    assert!(ar.contains("policy.dmarc=none"), "{ar}");
    assert_eq!(failures(&f.host, "auth-check"), 0);
}

/// A chain with `auth` forced inline (`[milter] plugin_threads = "inline"`) runs on a
/// connection's thread: an event loop (single-threaded runtime, where the DNS wait moves
/// to a scoped thread) or a worker of the multi-threaded runtime (`block_in_place`).
#[test]
fn auth_check_runs_inline_on_an_event_loop_and_on_a_runtime_worker() {
    let f = auth_check(example_org("reject"));
    let events = || eml_events("192.0.2.10", "alice@example.org", "bob@example.com", PLAIN);
    let event_loop = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let worker = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let on_loop = event_loop.block_on(async { deliver(&f.host, &["auth-check"], events()) });
    let host = f.host.clone();
    let on_worker = worker
        .block_on(worker.spawn(async move { deliver(&host, &["auth-check"], events()) }))
        .unwrap();
    for out in [on_loop, on_worker] {
        let o = eom(&out);
        assert_eq!(o.verdict, Verdict::Continue, "{o:?}");
        let ar = header_edit(o, "Authentication-Results").expect("Authentication-Results edit");
        assert!(ar.contains("spf=pass") && ar.contains("dmarc=pass"), "{ar}");
    }
    assert_eq!(failures(&f.host, "auth-check"), 0);
}

#[test]
fn auth_check_rejects_on_dmarc_reject() {
    let f = auth_check(example_org("reject"));
    let out = deliver(
        &f.host,
        &["auth-check"],
        eml_events("203.0.113.9", "alice@example.org", "bob@example.com", PLAIN),
    );
    let o = eom(&out);
    assert_reply(
        &o.verdict,
        true,
        550,
        "5.7.1",
        "DMARC policy of example.org",
    );
    assert_eq!(failures(&f.host, "auth-check"), 0);

    // p=none: only the header.
    let f = auth_check(example_org("none"));
    let out = deliver(
        &f.host,
        &["auth-check"],
        eml_events("203.0.113.9", "alice@example.org", "bob@example.com", PLAIN),
    );
    let o = eom(&out);
    assert_eq!(o.verdict, Verdict::Continue, "{o:?}");
    let ar = header_edit(o, "Authentication-Results").unwrap();
    assert!(ar.contains("dmarc=fail"), "{ar}");
    assert!(ar.contains("policy.dmarc=none"), "{ar}");
    // p=quarantine: quarantined.
    let f = auth_check(example_org("quarantine"));
    let out = deliver(
        &f.host,
        &["auth-check"],
        eml_events("203.0.113.9", "alice@example.org", "bob@example.com", PLAIN),
    );
    let o = eom(&out);
    assert_eq!(
        o.quarantine.as_deref(),
        Some("DMARC failed for example.org"),
        "{o:?}"
    );
}

#[test]
fn auth_check_verifies_a_dkim_signature() {
    let f = auth_check(example_org("reject"));
    for key in ["ed", "rsa"] {
        let raw = dkim_signed(&f.signer, key, PLAIN);
        // From outside example.org's SPF: only the aligned signature makes DMARC pass.
        let out = deliver(
            &f.host,
            &["auth-check"],
            eml_events("203.0.113.9", "alice@example.org", "bob@example.com", &raw),
        );
        let o = eom(&out);
        assert_eq!(o.verdict, Verdict::Continue, "{key}: {o:?}");
        let ar = header_edit(o, "Authentication-Results").unwrap();
        assert!(ar.contains("dkim=pass header.d=example.org"), "{key}: {ar}");
        assert!(ar.contains("dmarc=pass"), "{key}: {ar}");
    }
    // A body changed in transit: DKIM fails, DMARC fails, p=reject rejects.
    let raw = dkim_signed(&f.signer, "ed", PLAIN).replace("Hello Bob", "Hello Eve");
    let out = deliver(
        &f.host,
        &["auth-check"],
        eml_events("203.0.113.9", "alice@example.org", "bob@example.com", &raw),
    );
    assert_reply(&eom(&out).verdict, true, 550, "5.7.1", "DMARC");
    assert_eq!(failures(&f.host, "auth-check"), 0);
}

// ---------------------------------------------------------------------------------------
// virtual-mailbox (table)

#[test]
fn virtual_mailbox_answers_lookups() {
    let f = host(
        r#"
[plugins]
dir = "{plugins}"
watch = false
[plugin.virtual-mailbox]
file = "virtual-mailbox.wasm"
grants = ["config"]
[plugin.virtual-mailbox.settings]
domains = "example.com, example.net"
mailboxes = ["alice@example.com", "bob@example.net"]
"#,
        &[],
    );
    let look = |table: &str, key: &str| {
        calls::lookup(
            &f.host,
            "virtual-mailbox",
            None,
            table,
            &[key.to_lowercase()],
            key,
        )
        .map(|(_, answer)| answer)
        .unwrap_or_else(|e| panic!("lookup {table} {key}: {e:?}"))
    };
    let found = |a: LookupAnswer| match a {
        LookupAnswer::Found(v) => Some(v),
        _ => None,
    };
    assert_eq!(
        found(look("virtual_mailbox_domains", "example.com")).as_deref(),
        Some("OK")
    );
    assert_eq!(
        found(look("virtual_mailbox_domains", "Example.NET")).as_deref(),
        Some("OK")
    );
    assert_eq!(
        found(look("virtual_mailbox_maps", "alice@example.com")).as_deref(),
        Some("example.com/alice/")
    );
    assert_eq!(
        found(look("virtual_mailbox_maps", "Bob@Example.net")).as_deref(),
        Some("example.net/bob/")
    );
    for (table, key) in [
        ("virtual_mailbox_domains", "example.org"),
        ("virtual_mailbox_maps", "carol@example.com"),
        ("virtual_mailbox_maps", "@example.com"),
        ("virtual_mailbox_maps", "example.com"),
        ("some_other_table", "example.com"),
    ] {
        let a = look(table, key);
        assert!(matches!(a, LookupAnswer::NotFound), "{table} {key}: {a:?}");
    }
    for key in ["a b@example.com", "alice@example.com\t", ""] {
        let a = look("virtual_mailbox_maps", key);
        assert!(matches!(a, LookupAnswer::Perm(_)), "{key:?}: {a:?}");
    }
    assert_eq!(failures(&f.host, "virtual-mailbox"), 0);
}

// ---------------------------------------------------------------------------------------
// login-rule (mail-hook)

fn session(client: &str, secured: bool) -> HookSession {
    HookSession {
        protocol: "imap".into(),
        client_address: client.into(),
        local_address: "192.0.2.1".into(),
        secured,
    }
}

#[test]
fn login_rule_denies_by_user_network_and_tls() {
    let f = host(
        r#"
[plugins]
dir = "{plugins}"
watch = false
[plugin.login-rule]
file = "login-rule.wasm"
grants = ["config", "log"]
[plugin.login-rule.settings]
deny_users = "*@retired.example, mallory@example.com"
deny_networks = "198.51.100.0/24, 2001:db8:bad::/48"
deny_message = "Login not allowed here"
require_tls = true
"#,
        &[],
    );
    let decide = |event: HookEvent| {
        calls::hook(&f.host, "login-rule", None, &event)
            .unwrap_or_else(|e| panic!("hook {event:?}: {e:?}"))
    };
    let auth = |client: &str, secured: bool, user: &str| {
        decide(HookEvent::Auth((
            session(client, secured),
            user.into(),
            "PLAIN".into(),
        )))
    };
    let denied = |d: HookDecision| match d {
        HookDecision::Deny(m) => m == "Login not allowed here",
        _ => false,
    };
    // Allowed: good user, good network, TLS.
    for (client, user) in [
        ("192.0.2.50", "alice@example.com"),
        ("2001:db8:1::5", "alice@example.com"),
        ("192.0.2.50", "bob@retired.example.com"),
    ] {
        let d = auth(client, true, user);
        assert!(matches!(d, HookDecision::Allow), "{client} {user}: {d:?}");
    }
    let d = decide(HookEvent::PostLogin((
        session("192.0.2.50", true),
        "alice@example.com".into(),
    )));
    assert!(matches!(d, HookDecision::Allow), "{d:?}");
    // Denied users.
    for user in [
        "mallory@example.com",
        "MALLORY@example.com",
        "old@retired.example",
    ] {
        let d = auth("192.0.2.50", true, user);
        assert!(denied(d.clone()), "{user}: {d:?}");
    }
    // Denied networks, IPv4 and IPv6 (and IPv4-mapped IPv6).
    for client in [
        "198.51.100.7",
        "198.51.100.255",
        "::ffff:198.51.100.7",
        "2001:db8:bad::1",
        "2001:db8:bad:ffff::2",
    ] {
        let d = auth(client, true, "alice@example.com");
        assert!(denied(d.clone()), "{client}: {d:?}");
    }
    let d = auth("198.51.101.7", true, "alice@example.com");
    assert!(matches!(d, HookDecision::Allow), "{d:?}");
    // No TLS.
    let d = auth("192.0.2.50", false, "alice@example.com");
    assert!(denied(d.clone()), "{d:?}");
    // post-login checks the final user name too.
    let d = decide(HookEvent::PostLogin((
        session("192.0.2.50", true),
        "mallory@example.com".into(),
    )));
    assert!(denied(d.clone()), "{d:?}");
    assert_eq!(failures(&f.host, "login-rule"), 0);
}

// ---------------------------------------------------------------------------------------
// sender-quota (policy)

#[test]
fn sender_quota_defers_over_the_limit() {
    let f = host(
        r#"
[plugins]
dir = "{plugins}"
watch = false
[plugin.sender-quota]
file = "sender-quota.wasm"
grants = ["kv", "config", "log"]
[plugin.sender-quota.settings]
daily_limit = 3
"#,
        &[],
    );
    let ask = |state: &str, sender: &str, count: &str| {
        let attrs: Vec<(String, String)> = [
            ("request", "smtpd_access_policy"),
            ("protocol_state", state),
            ("sender", sender),
            ("recipient", "bob@example.com"),
            ("recipient_count", count),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        calls::policy(&f.host, "sender-quota", None, &attrs)
            .unwrap_or_else(|e| panic!("policy: {e:?}"))
    };
    for i in 0..3 {
        let a = ask("RCPT", "alice@example.org", "0");
        assert!(matches!(a, PolicyAction::Dunno), "recipient {i}: {a:?}");
    }
    let a = ask("RCPT", "Alice@Example.org", "0");
    match &a {
        PolicyAction::Defer(text) => {
            assert!(text.contains("Sender quota exceeded"), "{text}");
            assert!(text.contains("3 recipients per day"), "{text}");
        }
        other => panic!("expected defer, got {other:?}"),
    }
    // Another sender has its own quota; at END-OF-MESSAGE the recipient count counts.
    let a = ask("END-OF-MESSAGE", "bob@example.org", "3");
    assert!(matches!(a, PolicyAction::Dunno), "{a:?}");
    let a = ask("END-OF-MESSAGE", "bob@example.org", "1");
    assert!(matches!(a, PolicyAction::Defer(_)), "{a:?}");
    // The null sender is never counted.
    for _ in 0..5 {
        let a = ask("RCPT", "", "0");
        assert!(matches!(a, PolicyAction::Dunno), "{a:?}");
    }
    assert_eq!(failures(&f.host, "sender-quota"), 0);
}

// ---------------------------------------------------------------------------------------
// keyword-score (Python)

#[test]
fn keyword_score_python_plugin_scores_and_rejects() {
    let test = "keyword_score_python_plugin_scores_and_rejects";
    let file = support::repo_root().join("target/plugins/keyword-score.wasm");
    if !file.is_file() {
        eprintln!(
            "SKIPPED: {test}: target/plugins/keyword-score.wasm missing (scripts/build-python-plugins.sh builds it)"
        );
        return;
    }
    // One host for every case: compiling the 18 MB component takes a while in debug builds.
    let f = host(
        &format!(
            r#"
[plugins]
dir = "{{plugins}}"
watch = false
[plugin.keyword-score]
file = "{}"
grants = ["log", "config"]
on_error = "tempfail"
[plugin.keyword-score.limits]
call_deadline = "20s"
transaction_budget = "60s"
"#,
            file.display()
        ),
        &["keyword-score"],
    );
    let send = |eml: &str| {
        deliver(
            &f.host,
            &["keyword-score"],
            eml_events("192.0.2.10", "alice@example.org", "bob@example.com", eml),
        )
    };

    // lottery (4) + winner (3) = 7 >= 5; each keyword counts once.
    let spam = PLAIN
        .replace("Subject: Hello", "Subject: You are a WINNER")
        .replace(
            "Hello Bob",
            "Claim your lottery prize, winner! The lottery is yours.",
        );
    let out = send(&spam);
    let o = eom(&out);
    assert_reply(
        &o.verdict,
        true,
        550,
        "5.7.1",
        "Message looks like spam (score 7)",
    );

    // An encoded subject is decoded before matching: viagra (5) alone reaches 5.
    let encoded = PLAIN.replace("Subject: Hello", "Subject: =?UTF-8?B?Q2hlYXAgVmlhZ3Jh?=");
    let out = send(&encoded);
    assert_reply(&eom(&out).verdict, true, 550, "5.7.1", "(score 5)");

    // Clean, and below the threshold: continue with the header.
    let out = send(PLAIN);
    let o = eom(&out);
    assert_eq!(o.verdict, Verdict::Continue, "{o:?}");
    assert_eq!(header_edit(o, "X-Keyword-Score"), Some("0"), "{o:?}");
    let urgent = PLAIN.replace("Hello Bob", "Urgent: winners of the quiz");
    let out = send(&urgent);
    let o = eom(&out);
    assert_eq!(o.verdict, Verdict::Continue, "{o:?}");
    assert_eq!(
        header_edit(o, "X-Keyword-Score"),
        Some("1"),
        "`winners` is not `winner`: {o:?}"
    );
    assert_eq!(failures(&f.host, "keyword-score"), 0);
}

// ---------------------------------------------------------------------------------------
// `wasmail plugin check|test`

fn wasmail(args: &[&str]) -> Output {
    Command::new(support::wasmail_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running wasmail")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[track_caller]
fn ok(o: &Output) -> String {
    let (out, err) = text(o);
    assert!(
        o.status.success(),
        "exit {}\nstdout:\n{out}\nstderr:\n{err}",
        o.status
    );
    out
}

fn plugin_path(name: &str) -> String {
    support::plugin(name).to_str().unwrap().to_owned()
}

#[test]
fn cli_plugin_check_describes_a_milter_plugin() {
    let stamp = plugin_path("stamp");
    let out = ok(&wasmail(&["plugin", "check", &stamp]));
    assert!(out.contains(&format!("{stamp}: OK")), "{out}");
    assert!(out.contains("world:        milter-filter"), "{out}");
    assert!(out.contains("name:         stamp "), "{out}");
    assert!(out.contains("stages:       Connect"), "{out}");
    assert!(out.contains("capabilities: config"), "{out}");
    assert!(out.contains("wasmail:plugin/config@"), "{out}");

    let out = ok(&wasmail(&["plugin", "check", &stamp, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["world"], "milter-filter", "{v}");
    assert_eq!(v["description"]["name"], "stamp", "{v}");
    assert_eq!(v["capabilities"], serde_json::json!(["config"]), "{v}");
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64, "{v}");
    assert!(v["imports"].as_array().unwrap().len() > 1, "{v}");

    // A plugin that needs more capabilities lists them.
    let out = ok(&wasmail(&["plugin", "check", &plugin_path("greylist")]));
    assert!(out.contains("capabilities: log, config, kv"), "{out}");
}

#[test]
fn cli_plugin_check_describes_a_table_plugin() {
    let out = ok(&wasmail(&[
        "plugin",
        "check",
        &plugin_path("virtual-mailbox"),
    ]));
    assert!(out.contains("world:        table"), "{out}");
    assert!(
        out.contains("tables:       virtual_mailbox_domains, virtual_mailbox_maps"),
        "{out}"
    );
    let out = ok(&wasmail(&[
        "plugin",
        "check",
        &plugin_path("virtual-mailbox"),
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["world"], "table");
    assert_eq!(
        v["description"]["tables"],
        serde_json::json!(["virtual_mailbox_domains", "virtual_mailbox_maps"])
    );
    // The other worlds.
    let out = ok(&wasmail(&["plugin", "check", &plugin_path("login-rule")]));
    assert!(out.contains("world:        mail-hook"), "{out}");
    assert!(out.contains("events:       auth, post-login"), "{out}");
    let out = ok(&wasmail(&["plugin", "check", &plugin_path("sender-quota")]));
    assert!(out.contains("world:        policy"), "{out}");
}

#[test]
fn cli_plugin_check_refuses_what_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let o = wasmail(&["plugin", "check", core.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}{err}");
    assert!(
        err.contains("core WebAssembly module, not a component") && err.contains("core.wasm"),
        "{err}"
    );
    let txt = write(dir.path(), "notes.txt", "hello\n");
    let o = wasmail(&["plugin", "check", txt.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}{err}");
    assert!(err.contains("not a WebAssembly file"), "{err}");
    let o = wasmail(&[
        "plugin",
        "check",
        dir.path().join("missing.wasm").to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("missing.wasm"), "{err}");
}

#[test]
fn cli_plugin_test_runs_attachment_block() {
    let dir = tempfile::tempdir().unwrap();
    let exe = write(
        dir.path(),
        "exe.eml",
        &with_attachment("invoice.pdf.exe", "application/octet-stream"),
    );
    let ab = plugin_path("attachment-block");
    let out = ok(&wasmail(&[
        "plugin",
        "test",
        &ab,
        "--eml",
        exe.to_str().unwrap(),
        "--offline",
    ]));
    let line = out
        .lines()
        .find(|l| l.starts_with("end-of-message"))
        .unwrap_or_else(|| panic!("no end-of-message line: {out}"));
    assert!(line.contains("reject 554 5.7.1"), "{line}");
    assert!(line.contains("invoice.pdf.exe"), "{line}");
    for stage in ["connect", "mail-from", "rcpt", "headers"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(stage) && l.ends_with("continue")),
            "{stage}: {out}"
        );
    }

    let out = ok(&wasmail(&[
        "plugin",
        "test",
        &ab,
        "--eml",
        exe.to_str().unwrap(),
        "--offline",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["verdict"]["verdict"], "reject", "{v}");
    assert_eq!(v["verdict"]["code"], 554, "{v}");
    assert_eq!(v["verdict"]["enhanced"], "5.7.1", "{v}");
    assert!(
        v["verdict"]["text"]
            .as_str()
            .unwrap()
            .contains("invoice.pdf.exe"),
        "{v}"
    );
    assert_eq!(v["plugin"]["name"], "attachment-block", "{v}");
    assert_eq!(v["failures"], 0, "{v}");
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(stages.last().unwrap()["stage"], "end-of-message", "{v}");

    // A PDF passes.
    let pdf = write(
        dir.path(),
        "pdf.eml",
        &with_attachment("invoice.pdf", "application/pdf"),
    );
    let out = ok(&wasmail(&[
        "plugin",
        "test",
        &ab,
        "--eml",
        pdf.to_str().unwrap(),
        "--offline",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"]["verdict"], "continue", "{v}");
    // ...unless --setting blocks it.
    let out = ok(&wasmail(&[
        "plugin",
        "test",
        &ab,
        "--eml",
        pdf.to_str().unwrap(),
        "--offline",
        "--setting",
        "blocked_extensions=pdf",
    ]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("end-of-message") && l.contains("reject 554 5.7.1")),
        "{out}"
    );
}

#[test]
fn cli_plugin_test_prints_subject_tag_edits() {
    let dir = tempfile::tempdir().unwrap();
    let eml = write(dir.path(), "plain.eml", PLAIN);
    let st = plugin_path("subject-tag");
    let out = ok(&wasmail(&[
        "plugin",
        "test",
        &st,
        "--eml",
        eml.to_str().unwrap(),
        "--offline",
    ]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("end-of-message") && l.ends_with("continue")),
        "{out}"
    );
    let edits: Vec<&str> = out.lines().filter(|l| l.starts_with("edit ")).collect();
    assert_eq!(edits.len(), 2, "{out}");
    assert!(
        edits[0].ends_with("change-header Subject[1]: [EXTERNAL] Hello"),
        "{out}"
    );
    assert!(edits[1].contains("replace-body ("), "{out}");

    let out = ok(&wasmail(&[
        "plugin",
        "test",
        &st,
        "--eml",
        eml.to_str().unwrap(),
        "--offline",
        "--setting",
        "tag=[X]",
        "--setting",
        "footer=",
    ]));
    let edits: Vec<&str> = out.lines().filter(|l| l.starts_with("edit ")).collect();
    assert_eq!(edits.len(), 1, "an empty footer leaves the body: {out}");
    assert!(
        edits[0].ends_with("change-header Subject[1]: [X] Hello"),
        "{out}"
    );

    let out = ok(&wasmail(&[
        "plugin",
        "test",
        &st,
        "--eml",
        eml.to_str().unwrap(),
        "--offline",
        "--json",
        "--setting",
        "footer=Outside!",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["edits"][0]["edit"], "change-header", "{v}");
    assert_eq!(v["edits"][0]["value"], "[EXTERNAL] Hello", "{v}");
    assert_eq!(v["edits"][1]["edit"], "replace-body", "{v}");
    assert_eq!(
        v["edits"][1]["body"], "Hello Bob\r\n\r\nOutside!\r\n",
        "{v}"
    );
}

#[test]
fn cli_plugin_test_with_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let eml = write(dir.path(), "plain.eml", PLAIN);
    let config = write(
        dir.path(),
        "wasmail.toml",
        &format!(
            r#"
[plugins]
dir = "{}"
watch = true
[plugin.tagger]
file = "subject-tag.wasm"
grants = ["config"]
[plugin.tagger.settings]
tag = "[CFG]"
footer = ""
"#,
            support::plugins_dir().display()
        ),
    );
    let out = ok(&wasmail(&[
        "plugin",
        "test",
        "--config",
        config.to_str().unwrap(),
        "tagger",
        "--eml",
        eml.to_str().unwrap(),
        "--offline",
    ]));
    let edits: Vec<&str> = out.lines().filter(|l| l.starts_with("edit ")).collect();
    assert_eq!(
        edits,
        ["edit            change-header Subject[1]: [CFG] Hello"],
        "{out}"
    );

    // A name the configuration does not have.
    let o = wasmail(&[
        "plugin",
        "test",
        "--config",
        config.to_str().unwrap(),
        "nope",
        "--eml",
        eml.to_str().unwrap(),
        "--offline",
    ]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("[plugin.nope]"), "{err}");
}

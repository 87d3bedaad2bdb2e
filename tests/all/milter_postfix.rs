//! End to end with real Postfix (Debian 3.7): a private Postfix instance whose
//! `smtpd_milters` (the tested block of docs/postfix.md) points at a `wasmail serve` running
//! real plugins; mail is sent with swaks and smtp-source, and checked in the delivered
//! Maildirs and Postfix's queues. Needs root, postfix and swaks (CI has them).

use std::time::Duration;

use crate::support::postfix::Postfix;
use crate::support::{self, Serve};

const WAIT: Duration = Duration::from_secs(60);

fn prerequisites(test: &str) -> bool {
    support::require_root(test)
        && support::require_program(test, "postfix")
        && support::require_program(test, "swaks")
}

/// Starts `wasmail serve` with `[milter] chain` and the given `[plugin.*]` tables
/// (`{plugins}` = built plugins dir, `{dir}` = wasmail's temp dir), then Postfix pointing
/// at it.
fn start(chain: &[&str], plugins: &str) -> (Serve, Postfix) {
    start_with(chain, plugins, "", "")
}

/// [`start`] with extra `[milter]` lines and extra Postfix main.cf lines. Postfix starts
/// first, so the plugin config may use `{filter_port}` (e.g. as the `send` relay).
fn start_with(
    chain: &[&str],
    plugins: &str,
    milter_extra: &str,
    main_cf: &str,
) -> (Serve, Postfix) {
    start_prepared(chain, plugins, milter_extra, main_cf, |_| {})
}

/// [`start_with`], calling `prepare` with wasmail's temp dir (which has a `plugins/`
/// subdirectory, the `[plugins] dir`) before wasmail starts.
fn start_prepared(
    chain: &[&str],
    plugins: &str,
    milter_extra: &str,
    main_cf: &str,
    prepare: impl FnOnce(&std::path::Path),
) -> (Serve, Postfix) {
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    prepare(dir.path());
    let socket = dir.path().join("milter.sock");
    let postfix = Postfix::start(&format!("unix:{}", socket.display()), main_cf);
    let chain_list = chain
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    // Postfix's sessions run on two event loops here (the placement path: accepted on
    // one loop, maybe moved to the other); the miltertest and service tests run the
    // default shape, on the runtime's workers.
    let config = format!(
        r#"
[server]
shutdown_grace = "5s"
event_loops = 2

[milter]
listen = "unix:{{dir}}/milter.sock"
socket_mode = "0666"
chain = [{chain_list}]
{milter_extra}

[plugins]
dir = "{{dir}}/plugins"

{plugins}
"#
    )
    .replace("{plugins}", support::plugins_dir().to_str().unwrap())
    .replace("{filter_port}", &postfix.filter_port.to_string());
    let serve = Serve::start_in(dir, &config);
    (serve, postfix)
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn postfix_delivers_a_header_added_by_a_plugin() {
    if !prerequisites("postfix_delivers_a_header_added_by_a_plugin") {
        return;
    }
    let (_serve, pf) = start(
        &["stamp"],
        "[plugin.stamp]\nfile = \"{plugins}/stamp.wasm\"\n[plugin.stamp.settings]\nvalue = \"e2e\"\n\
         macros = \"client_addr,{mail_addr},j,i\"\n",
    );
    pf.send_accepted(&["bob@example.com"], &[]);
    let got = pf.wait_delivered("bob", 1, WAIT);
    assert_eq!(
        header(&got[0], "X-Wasmail-Stamp"),
        Some("e2e"),
        "{}",
        got[0]
    );
    let seen = header(&got[0], "X-Wasmail-Seen").unwrap();
    assert!(seen.starts_with("connect,helo,mail-from,rcpt"), "{seen}");
    // Macros Postfix sent (wasmail asked for them with SETSYMLIST) reach the plugin.
    let macros = header(&got[0], "X-Wasmail-Macros").expect("macros header");
    assert!(macros.contains("client_addr=127.0.0.1"), "{macros}");
    assert!(macros.contains("{mail_addr}=alice@example.org"), "{macros}");
    assert!(macros.contains("j=filter.wasmail.test"), "{macros}");
    let queue_id = macros.rsplit("i=").next().unwrap_or("");
    assert!(!queue_id.trim().is_empty(), "queue id macro: {macros}");
}

#[test]
fn postfix_client_sees_the_plugins_reject_and_tempfail_replies() {
    if !prerequisites("postfix_client_sees_the_plugins_reject_and_tempfail_replies") {
        return;
    }
    let (_serve, pf) = start(
        &["rejecter", "deferrer"],
        r#"
[plugin.rejecter]
file = "{plugins}/stamp.wasm"
[plugin.rejecter.settings]
verdict_at = "end-of-headers"
verdict = "reject"
reject_rcpt = "carol@example.com"
[plugin.deferrer]
file = "{plugins}/stamp.wasm"
[plugin.deferrer.settings]
verdict_at = "mail-from"
verdict = "tempfail"
"#,
    );
    // The second plugin tempfails at MAIL FROM (the first continues there).
    pf.send_refused(
        &["bob@example.com"],
        &[],
        "451 4.7.1 stamp: tempfail at mail-from",
    );
}

#[test]
fn postfix_client_sees_a_reject_with_the_plugins_text() {
    if !prerequisites("postfix_client_sees_a_reject_with_the_plugins_text") {
        return;
    }
    let (_serve, pf) = start(
        &["rejecter"],
        r#"
[plugin.rejecter]
file = "{plugins}/stamp.wasm"
[plugin.rejecter.settings]
verdict_at = "end-of-headers"
verdict = "reject"
reject_rcpt = "carol@example.com"
"#,
    );
    let out = pf.send_refused(
        &["carol@example.com", "bob@example.com"],
        &[],
        "550 5.7.1 stamp: reject at end-of-headers",
    );
    assert!(out.contains("550 5.1.1"), "carol refused at RCPT: {out}");
}

#[test]
fn postfix_client_sees_a_tempfail_from_a_body_chunk_after_the_final_dot() {
    let test = "postfix_client_sees_a_tempfail_from_a_body_chunk_after_the_final_dot";
    if !prerequisites(test) {
        return;
    }
    // Body chunks are not answered (SMFIP_NR_BODY); the verdict goes with end of message.
    let (_serve, pf) = start(
        &["deferrer", "stamp"],
        r#"
[plugin.deferrer]
file = "{plugins}/stamp.wasm"
[plugin.deferrer.settings]
verdict_at = "body"
verdict = "tempfail"
[plugin.stamp]
file = "{plugins}/stamp.wasm"
"#,
    );
    pf.send_refused(
        &["bob@example.com"],
        &[],
        "451 4.7.1 stamp: tempfail at body",
    );
}

#[test]
fn postfix_applies_body_replacement_recipient_changes_and_quarantine() {
    if !prerequisites("postfix_applies_body_replacement_recipient_changes_and_quarantine") {
        return;
    }
    let (_serve, pf) = start(
        &["editor"],
        r#"
[plugin.editor]
file = "{plugins}/stamp.wasm"
[plugin.editor.settings]
replace_body = "Replaced by a wasm plugin.\n"
add_rcpt = "<carol@example.com>"
delete_rcpt = "<bob@example.com>"
change_subject = "Edited"
"#,
    );
    pf.send_accepted(&["bob@example.com"], &["--header", "Subject: Original"]);
    let got = pf.wait_delivered("carol", 1, WAIT);
    assert!(got[0].contains("Replaced by a wasm plugin."), "{}", got[0]);
    assert!(
        !got[0].contains("This is a test mailing"),
        "old body gone: {}",
        got[0]
    );
    assert_eq!(header(&got[0], "Subject"), Some("Edited"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        pf.delivered("bob").is_empty(),
        "bob was deleted as a recipient"
    );
}

#[test]
fn postfix_puts_a_quarantined_message_on_hold() {
    if !prerequisites("postfix_puts_a_quarantined_message_on_hold") {
        return;
    }
    let (_serve, pf) = start(
        &["quarantiner"],
        r#"
[plugin.quarantiner]
file = "{plugins}/stamp.wasm"
[plugin.quarantiner.settings]
verdict_at = "end-of-headers"
verdict = "quarantine"
"#,
    );
    // Accepted into the hold queue.
    pf.send_accepted(&["bob@example.com"], &[]);
    pf.wait_queue("hold", 1, WAIT);
    assert!(pf.delivered("bob").is_empty());
}

#[test]
fn failing_plugin_tempfails_then_hot_reload_delivers_the_queued_mail() {
    if !prerequisites("failing_plugin_tempfails_then_hot_reload_delivers_the_queued_mail") {
        return;
    }
    queued_mail_survives_a_failing_plugin("trap");
}

#[test]
fn timing_out_plugin_tempfails_then_hot_reload_delivers_the_queued_mail() {
    if !prerequisites("timing_out_plugin_tempfails_then_hot_reload_delivers_the_queued_mail") {
        return;
    }
    queued_mail_survives_a_failing_plugin("loop");
}

/// The faulty plugin (`mode` at end of message, on_error = tempfail) defers mail sent
/// through a queueing Postfix; after the plugin file is replaced by a working one (hot
/// reload) and the queue is flushed, every message is delivered.
fn queued_mail_survives_a_failing_plugin(mode: &str) {
    let plugins = support::plugins_dir();
    // policy.wasm is a copy in wasmail's own plugin dir, so the test can replace it.
    let (mut serve, pf) = start_prepared(
        &["policy"],
        &format!(
            "[plugin.policy]\nfile = \"policy.wasm\"\non_error = \"tempfail\"\n\
             [plugin.policy.limits]\ncall_deadline = \"500ms\"\n\
             [plugin.policy.settings]\nmode = \"{mode}\"\nvalue = \"recovered\"\n"
        ),
        "",
        "",
        |dir| {
            std::fs::copy(plugins.join("faulty.wasm"), dir.join("plugins/policy.wasm")).unwrap();
        },
    );
    let live = serve.dir.path().join("plugins/policy.wasm");
    // Sent through the queueing listener: Postfix accepts, then its smtp client hands the
    // message to the milter-protected listener and gets 4xx; the message stays deferred.
    let sent = 3;
    for i in 0..sent {
        let (code, out) = pf.swaks(
            pf.queue_port,
            "alice@example.org",
            &["bob@example.com"],
            &["--header", &format!("Subject: queued {i}")],
        );
        assert_eq!(code, 0, "{out}");
    }
    pf.wait_queue("deferred", sent, WAIT);
    assert!(
        pf.log().contains("4.3.0"),
        "the deferral carries the plugin tempfail:\n{}\nwasmail:\n{}",
        pf.log(),
        serve.log_text()
    );
    assert!(pf.delivered("bob").is_empty());
    let failure = serve
        .log_text()
        .lines()
        .find(|l| l.contains("plugin failed"))
        .map(str::to_string)
        .expect("the failure is logged");
    let kind = if mode == "loop" { "timeout" } else { "trap" };
    assert!(failure.contains(&format!("kind=\"{kind}\"")), "{failure}");
    if mode == "trap" {
        // The Rust panic writes to stderr first; the host's restricted WASI traps there
        // (this also proves the restriction matches the WASI version wasmtime-wasi links).
        assert!(failure.contains("plugins have no stderr"), "{failure}");
    }

    // Replace the plugin with a working one; the watcher reloads it.
    let tmp = serve.dir.path().join("plugins/policy.tmp");
    std::fs::copy(plugins.join("stamp.wasm"), &tmp).unwrap();
    std::fs::rename(&tmp, &live).unwrap();
    serve.wait_for_log("plugin loaded", WAIT);
    serve.wait_for_log("plugin directory reloaded", WAIT);
    pf.flush();
    let got = pf.wait_delivered("bob", sent, WAIT);
    assert_eq!(got.len(), sent, "sent == delivered");
    for m in &got {
        assert_eq!(header(m, "X-Wasmail-Stamp"), Some("recovered"), "{m}");
    }
    pf.wait_queue("deferred", 0, WAIT);
}

#[test]
fn two_hundred_messages_over_ten_connections_through_the_example_plugins() {
    two_hundred_messages(
        "two_hundred_messages_over_ten_connections_through_the_example_plugins",
        1,
    );
}

#[test]
fn two_hundred_messages_with_reused_plugin_instances() {
    two_hundred_messages("two_hundred_messages_with_reused_plugin_instances", 50);
}

/// 200 messages over 10 SMTP connections through three plugins with `instance_reuse`:
/// none lost, and every message was seen by plugins in a clean state.
fn two_hundred_messages(test: &str, instance_reuse: u32) {
    if !prerequisites(test) || !support::require_program(test, "smtp-source") {
        return;
    }
    let (serve, pf) = start_with(
        &["tag", "attachments", "stamp"],
        &r#"
[plugin.tag]
file = "{plugins}/subject-tag.wasm"
grants = ["config"]
instance_reuse = REUSE
[plugin.attachments]
file = "{plugins}/attachment-block.wasm"
grants = ["message", "config", "log"]
instance_reuse = REUSE
[plugin.stamp]
file = "{plugins}/stamp.wasm"
instance_reuse = REUSE
[plugin.stamp.settings]
value = "load"
macros = "i"
"#
        .replace("REUSE", &instance_reuse.to_string()),
        "[admin]\nlisten = \"unix:{dir}/admin.sock\"\n",
        "",
    );
    let out = support::output_within(
        std::process::Command::new(support::which("smtp-source").unwrap())
            .args(["-s", "10", "-m", "200", "-l", "2048", "-c"])
            .args(["-f", "alice@example.org", "-t", "bob@example.com"])
            .arg(format!("127.0.0.1:{}", pf.filter_port)),
        std::time::Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = pf.wait_delivered("bob", 200, Duration::from_secs(180));
    assert_eq!(got.len(), 200, "no message lost");
    for m in &got {
        assert_eq!(header(m, "X-Wasmail-Stamp"), Some("load"));
        // One transaction's calls only: state from an earlier message on a reused
        // instance would show a second mail-from here.
        let seen = header(m, "X-Wasmail-Seen").expect("X-Wasmail-Seen");
        assert_eq!(seen.matches("mail-from").count(), 1, "{seen}");
        assert_eq!(seen.matches("end-of-headers").count(), 1, "{seen}");
        // The macros a reused instance reads are its current message's: the queue id the
        // plugin saw is the one in this message's own Received header.
        let macros = header(m, "X-Wasmail-Macros").expect("X-Wasmail-Macros");
        let queue_id = macros.strip_prefix("i=").unwrap_or_default().trim();
        assert!(
            !queue_id.is_empty() && m.contains(&format!(" id {queue_id}")),
            "{m}"
        );
        assert_eq!(
            m.lines()
                .filter(|l| l.starts_with("X-Wasmail-Stamp:"))
                .count(),
            1,
            "{m}"
        );
    }
    assert_eq!(pf.queue_count("deferred"), 0);
    // The admin API's counters say how often an instance was reused.
    let (reused, metrics) = support::metric_total(
        &serve.dir.path().join("admin.sock"),
        "wasmail_plugin_reused_total{",
    );
    if instance_reuse > 1 {
        assert!(reused >= 200, "reused {reused} times:\n{metrics}");
    } else {
        assert_eq!(reused, 0, "{metrics}");
    }
}

#[test]
fn progress_keeps_postfix_waiting_for_a_slow_end_of_message_plugin() {
    let test = "progress_keeps_postfix_waiting_for_a_slow_end_of_message_plugin";
    if !prerequisites(test) {
        return;
    }
    // The plugin spins at end of message until its 4 s deadline (then on_error = continue);
    // Postfix's content timeout is 2 s, so only SMFIR_PROGRESS every 0.5 s keeps it waiting.
    let (serve, pf) = start_with(
        &["slow"],
        r#"
[plugin.slow]
file = "{plugins}/faulty.wasm"
on_error = "continue"
[plugin.slow.limits]
call_deadline = "4s"
[plugin.slow.settings]
mode = "loop"
stage = "end-of-message"
"#,
        "progress_interval = \"500ms\"",
        "milter_content_timeout = 2s",
    );
    let started = std::time::Instant::now();
    pf.send_accepted(&["bob@example.com"], &[]);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the plugin really ran long"
    );
    pf.wait_delivered("bob", 1, WAIT);
    assert!(
        serve.log_text().contains("plugin failed"),
        "{}",
        serve.log_text()
    );
    assert!(
        !pf.log().contains("timed out") && !pf.log().contains("milter_default_action"),
        "Postfix saw no milter timeout:\n{}",
        pf.log()
    );
}

#[test]
fn per_domain_chain_runs_for_messages_with_a_recipient_in_that_domain() {
    let test = "per_domain_chain_runs_for_messages_with_a_recipient_in_that_domain";
    if !prerequisites(test) {
        return;
    }
    let (_serve, pf) = start_with(
        &[],
        r#"
[plugin.netstamp]
file = "{plugins}/stamp.wasm"
[plugin.netstamp.settings]
value = "example.net chain"
"#,
        "[milter.domains.\"example.net\"]\nchain = [\"netstamp\"]",
        "",
    );
    // Only example.com: the example.net chain does not run.
    pf.send_accepted(&["bob@example.com"], &[]);
    let got = pf.wait_delivered("bob", 1, WAIT);
    assert_eq!(header(&got[0], "X-Wasmail-Stamp"), None, "{}", got[0]);
    // example.net among the recipients: its chain joins at that RCPT (connect/helo/mail
    // replayed) and its edits apply to the whole message.
    pf.send_accepted(&["bob@example.com", "erin@example.net"], &[]);
    let erin = pf.wait_delivered("erin@example.net", 1, WAIT);
    assert_eq!(
        header(&erin[0], "X-Wasmail-Stamp"),
        Some("example.net chain")
    );
    let seen = header(&erin[0], "X-Wasmail-Seen").unwrap();
    assert!(
        seen.starts_with("connect,helo,mail-from,rcpt"),
        "replayed: {seen}"
    );
    let bob = pf.wait_delivered("bob", 2, WAIT);
    let stamped = bob
        .iter()
        .filter(|m| header(m, "X-Wasmail-Stamp") == Some("example.net chain"))
        .count();
    assert_eq!(
        stamped, 1,
        "only the second message (with an example.net recipient)"
    );
}

#[test]
fn vacation_plugin_sends_one_auto_reply_through_the_relay() {
    let test = "vacation_plugin_sends_one_auto_reply_through_the_relay";
    if !prerequisites(test) {
        return;
    }
    let (serve, pf) = start_with(
        &["vacation"],
        r#"
[plugins.send]
relay = "127.0.0.1:{filter_port}"
[plugin.vacation]
file = "{plugins}/vacation.wasm"
grants = ["send", "kv", "config", "log"]
[plugin.vacation.settings]
away = "bob@example.com"
subject = "Bob is away"
message = "Back on Monday."
"#,
        "",
        "",
    );
    for i in 0..2 {
        let (code, out) = pf.swaks(
            pf.filter_port,
            "carol@example.com",
            &["bob@example.com"],
            &["--header", &format!("Subject: question {i}")],
        );
        assert_eq!(code, 0, "{out}");
    }
    pf.wait_delivered("bob", 2, WAIT);
    // One reply (the second message is within the period), sent by wasmail's send queue
    // back into Postfix, passing the milter again without triggering another reply.
    let replies = pf.wait_delivered("carol", 1, WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let replies_later = pf.delivered("carol");
    assert_eq!(
        replies_later.len(),
        1,
        "exactly one auto-reply: {replies_later:?}"
    );
    let r = &replies[0];
    assert_eq!(header(r, "Subject"), Some("Bob is away"));
    assert_eq!(header(r, "Auto-Submitted"), Some("auto-replied"));
    assert!(r.contains("Back on Monday."));
    assert!(r.contains("Return-Path: <>"), "null envelope sender: {r}");
    assert!(
        serve.log_text().contains("auto-reply queued"),
        "{}",
        serve.log_text()
    );
}

#[test]
fn postfix_applies_sender_change_header_insert_and_delete_and_rcpt_with_esmtp_args() {
    let test = "postfix_applies_sender_change_header_insert_and_delete_and_rcpt_with_esmtp_args";
    if !prerequisites(test) {
        return;
    }
    let (_serve, pf) = start(
        &["editor"],
        r#"
[plugin.editor]
file = "{plugins}/stamp.wasm"
[plugin.editor.settings]
change_from = "<bounces@example.org>"
insert_header = "X-First: inserted at the top"
delete_header = "X-Remove-Me"
add_rcpt = "<dave@example.com>"
add_rcpt_args = "NOTIFY=NEVER"
"#,
    );
    pf.send_accepted(&["bob@example.com"], &["--header", "X-Remove-Me: secret"]);
    let bob = pf.wait_delivered("bob", 1, WAIT);
    let dave = pf.wait_delivered("dave", 1, WAIT);
    let m = &bob[0];
    assert!(
        m.contains("Return-Path: <bounces@example.org>"),
        "sender changed: {m}"
    );
    assert_eq!(header(m, "X-Remove-Me"), None, "{m}");
    let first_own = m
        .lines()
        .find(|l| l.starts_with("X-First:") || l.starts_with("Received:"))
        .unwrap();
    assert!(
        first_own.starts_with("X-First:"),
        "inserted above Postfix's own Received: {m}"
    );
    assert!(
        dave[0].contains("X-Wasmail-Stamp"),
        "added recipient got the message"
    );
    assert!(pf.log().contains("dave@example.com"), "{}", pf.log());
}

#[test]
fn postfix_discard_and_accept_verdicts() {
    let test = "postfix_discard_and_accept_verdicts";
    if !prerequisites(test) {
        return;
    }
    // The first plugin accepts at MAIL FROM (no later plugin runs for that message); the
    // second would reject at end of headers.
    let (_serve, pf) = start(
        &["acceptor", "rejecter"],
        r#"
[plugin.acceptor]
file = "{plugins}/stamp.wasm"
[plugin.acceptor.settings]
verdict_at = "mail-from"
verdict = "accept"
[plugin.rejecter]
file = "{plugins}/stamp.wasm"
[plugin.rejecter.settings]
verdict_at = "end-of-headers"
verdict = "reject"
"#,
    );
    // Accept skips the rejecting plugin.
    pf.send_accepted(&["bob@example.com"], &[]);
    let got = pf.wait_delivered("bob", 1, WAIT);
    assert_eq!(
        header(&got[0], "X-Wasmail-Stamp"),
        None,
        "accepted messages carry no edits"
    );
    drop((_serve, pf));

    let (_serve, pf) = start(
        &["discarder"],
        r#"
[plugin.discarder]
file = "{plugins}/stamp.wasm"
[plugin.discarder.settings]
verdict_at = "end-of-headers"
verdict = "discard"
"#,
    );
    // A discarded message is accepted at SMTP.
    pf.send_accepted(&["bob@example.com"], &[]);
    let start = std::time::Instant::now();
    while !pf.log().contains("milter-discard") {
        assert!(start.elapsed() < WAIT, "{}", pf.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(pf.delivered("bob").is_empty());
}

#[test]
fn several_messages_on_one_smtp_connection_each_get_a_fresh_plugin_instance() {
    let test = "several_messages_on_one_smtp_connection_each_get_a_fresh_plugin_instance";
    if !prerequisites(test) || !support::require_program(test, "smtp-source") {
        return;
    }
    let (mut serve, pf) = start(
        &["stamp"],
        "[plugin.stamp]\nfile = \"{plugins}/stamp.wasm\"\n[plugin.stamp.settings]\nvalue = \"multi\"\n",
    );
    // -d: do not disconnect between messages; 5 messages over one SMTP session.
    let out = support::output_within(
        std::process::Command::new(support::which("smtp-source").unwrap())
            .args(["-d", "-s", "1", "-m", "5", "-l", "512", "-c"])
            .args(["-f", "alice@example.org", "-t", "bob@example.com"])
            .arg(format!("127.0.0.1:{}", pf.filter_port)),
        std::time::Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = pf.wait_delivered("bob", 5, WAIT);
    for m in &got {
        assert_eq!(header(m, "X-Wasmail-Stamp"), Some("multi"));
        let seen = header(m, "X-Wasmail-Seen").unwrap();
        // Each message's instance saw connect and helo once (live or replayed) and exactly
        // one transaction: nothing leaks from the previous message.
        assert!(seen.starts_with("connect,helo,mail-from,rcpt,"), "{seen}");
        assert_eq!(seen.matches("mail-from").count(), 1, "{seen}");
        assert_eq!(seen.matches("end-of-message").count(), 1, "{seen}");
    }
    // Postfix closes the milter connection when the SMTP session ends.
    serve.wait_for_log("messages=5", WAIT);
    let log = serve.log_text();
    let connections = log.matches("milter connection peer=").count();
    assert_eq!(
        connections, 1,
        "one milter connection for the SMTP session:\n{log}"
    );
}

#[test]
fn registry_domain_chain_added_with_the_cli_runs_on_the_next_connection() {
    let test = "registry_domain_chain_added_with_the_cli_runs_on_the_next_connection";
    if !prerequisites(test) {
        return;
    }
    let (serve, pf) = start(
        &[],
        r#"
[registry]
path = "{dir}/registry.db"
refresh = "100ms"

[plugin.netstamp]
file = "{plugins}/stamp.wasm"
[plugin.netstamp.settings]
value = "registry chain"
"#,
    );
    pf.send_accepted(&["erin@example.net"], &[]);
    let erin = pf.wait_delivered("erin@example.net", 1, WAIT);
    assert_eq!(header(&erin[0], "X-Wasmail-Stamp"), None, "{}", erin[0]);

    let out = std::process::Command::new(support::wasmail_bin())
        .args(["domain", "--config"])
        .arg(serve.dir.path().join("wasmail.toml"))
        .args(["add", "example.net", "--chain", "milter=netstamp"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(std::time::Duration::from_millis(500));

    pf.send_accepted(&["erin@example.net"], &[]);
    let erin = pf.wait_delivered("erin@example.net", 2, WAIT);
    let stamped: Vec<_> = erin
        .iter()
        .filter_map(|m| header(m, "X-Wasmail-Stamp"))
        .collect();
    assert_eq!(
        stamped,
        ["registry chain"],
        "only the message after the change"
    );
}

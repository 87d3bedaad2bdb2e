//! The Dovecot delegation endpoints (`[dovecot]`): the auth policy server, the passdb for
//! Dovecot's Lua passdb, the post-login socket and the event sink, first with raw HTTP and
//! socket requests against `wasmail serve` (no root), then behind a real private Dovecot
//! 2.3 configured from the blocks in docs/dovecot.md (root + Dovecot + dovecot-auth-lua;
//! loud `SKIPPED:` otherwise).

use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use wasmail::registry::password::hash_password;
use wasmail::registry::sqlite::SqliteRegistry;
use wasmail::registry::{Domain, Mailbox, Registry};

use crate::support::postfix::free_port;
use crate::support::{Serve, plugins_dir, repo_root, require_program, require_root};

const KEY: &str = "0123456789abcdef-test-key";

/// The fenced block (```FENCE) after `<!-- tested: NAME -->` in docs/dovecot.md.
fn docs_block(name: &str, fence: &str) -> String {
    crate::support::docs_fenced("docs/dovecot.md", name, fence)
}

/// A registry in `dir/registry.db`: example.com with bob (`pw-bob`) and carol
/// (`pw-carol`), retired.example with old (`pw-old`).
fn seed_registry(dir: &Path) {
    let r = SqliteRegistry::open(&dir.join("registry.db")).unwrap();
    for d in ["example.com", "retired.example"] {
        r.add_domain(&Domain {
            name: d.into(),
            ..Domain::default()
        })
        .unwrap();
    }
    for (a, pw) in [
        ("bob@example.com", "pw-bob"),
        ("carol@example.com", "pw-carol"),
        ("old@retired.example", "pw-old"),
    ] {
        r.add_mailbox(&Mailbox {
            address: a.into(),
            password_hash: Some(hash_password(pw).unwrap()),
            ..Mailbox::default()
        })
        .unwrap();
    }
}

/// The hook-verdicts plugin table: mallory denied, slow tarpitted, carol's session
/// rewritten at post-login, dan denied at post-login.
fn verdicts_plugin() -> String {
    format!(
        r#"
[plugins]
dir = "{plugins}"
watch = false

[plugin.hook-verdicts]
file = "hook-verdicts.wasm"
grants = ["config", "log"]
on_error = "tempfail"
[plugin.hook-verdicts.settings]
auth = ["mallory@example.com=deny:Mallory may not log in here", "slow@example.com=delay:1500", "trap@example.com=trap"]
post_login = ["carol@example.com=rewrite:imap_capability=IMAP4rev1 LITERAL+ X-WASMAIL-REWRITTEN;plugin/x_worker=w1", "dan@example.com=deny:no sessions for dan"]
"#,
        plugins = plugins_dir().display()
    )
}

/// `wasmail serve` with `[dovecot]` on a free loopback port and a post-login socket.
fn serve_endpoints() -> (Serve, u16) {
    let dir = tempfile::tempdir().unwrap();
    seed_registry(dir.path());
    std::fs::write(dir.path().join("dovecot.key"), format!("{KEY}\n")).unwrap();
    let port = free_port();
    let config = format!(
        r#"
[registry]
path = "{{dir}}/registry.db"

[dovecot]
http = "127.0.0.1:{port}"
api_key_file = "{{dir}}/dovecot.key"
post_login = "unix:{{dir}}/post-login.sock"
hooks = ["hook-verdicts"]
max_body = 4096
{plugin}
"#,
        plugin = verdicts_plugin()
    );
    let s = Serve::start_in(dir, &config);
    (s, port)
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); returns the status
/// and the body. `headers` are extra header lines.
fn http(port: u16, method: &str, target: &str, headers: &[&str], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may refuse before reading a large body; a failed write is fine then.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

const KEY_HEADER: &str = "X-API-Key: 0123456789abcdef-test-key";

fn policy(port: u16, command: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = http(
        port,
        "POST",
        &format!("/auth-policy?command={command}"),
        &[KEY_HEADER, "Content-Type: application/json"],
        body.as_bytes(),
    );
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn policy_body(login: &str) -> String {
    format!(
        r#"{{"login":"{login}","pwhash":"06ca","remote":"192.0.2.7","device_id":"","protocol":"imap","session_id":"S1","local":"127.0.0.1","mechanism":"PLAIN","attrs":{{"domain":""}},"tls":false}}"#
    )
}

#[test]
fn auth_policy_allows_denies_tarpits_and_reports() {
    let (mut s, port) = serve_endpoints();
    let (status, json) = policy(port, "allow", &policy_body("bob@example.com"));
    assert_eq!(status, 200);
    assert_eq!(json["status"], 0, "{json}");
    let (status, json) = policy(port, "allow", &policy_body("mallory@example.com"));
    assert_eq!(status, 200);
    assert_eq!(json["status"], -1, "{json}");
    assert_eq!(json["msg"], "Mallory may not log in here");
    // A 1.5 s delay becomes a 2 s tarpit (Dovecot counts seconds), answered at once.
    let t0 = Instant::now();
    let (_, json) = policy(port, "allow", &policy_body("slow@example.com"));
    assert_eq!(json["status"], 2, "{json}");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // A failing plugin with on_error = "tempfail": 503, Dovecot's
    // auth_policy_reject_on_fail decides.
    let (status, _) = policy(port, "allow", &policy_body("trap@example.com"));
    assert_eq!(status, 503);
    // report: observed only.
    let report = r#"{"login":"bob@example.com","remote":"192.0.2.7","protocol":"imap","success":true,"policy_reject":false,"tls":false}"#;
    let (status, json) = policy(port, "report", report);
    assert_eq!((status, json["status"].as_i64()), (200, Some(0)));
    s.wait_for_log("dovecot auth report", Duration::from_secs(5));
    s.wait_for_log("dovecot auth policy: deny", Duration::from_secs(5));
    let (status, metrics) = http(port, "GET", "/metrics", &[KEY_HEADER], b"");
    assert_eq!(status, 200);
    for line in [
        r#"wasmail_dovecot_requests_total{endpoint="auth_policy",result="allow"} 1"#,
        r#"wasmail_dovecot_requests_total{endpoint="auth_policy",result="deny"} 1"#,
        r#"wasmail_dovecot_requests_total{endpoint="auth_policy",result="tarpit"} 1"#,
        r#"wasmail_dovecot_requests_total{endpoint="auth_policy",result="tempfail"} 1"#,
        r#"wasmail_dovecot_requests_total{endpoint="auth_policy",result="report_success"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(s.stop(Duration::from_secs(10)).success());
}

#[test]
fn passdb_verifies_passwords_against_the_registry() {
    let (s, port) = serve_endpoints();
    let ask = |form: &str| {
        http(
            port,
            "POST",
            "/passdb",
            &[
                KEY_HEADER,
                "Content-Type: application/x-www-form-urlencoded",
            ],
            form.as_bytes(),
        )
    };
    assert_eq!(
        ask("user=Bob%40Example.com&password=pw-bob&service=imap&remote_ip=192.0.2.7"),
        (200, "user=bob@example.com".into())
    );
    assert_eq!(ask("user=bob%40example.com&password=wrong").0, 403);
    assert_eq!(ask("user=nobody%40example.com&password=pw-bob").0, 404);
    assert_eq!(ask("password=pw-bob").0, 400);
    assert_eq!(ask("user=%zz&password=x").0, 400);
    let log = s.log_text();
    assert!(log.contains("dovecot passdb"), "{log}");
    assert!(
        !log.contains("pw-bob"),
        "a password reached the log:\n{log}"
    );
}

#[test]
fn events_are_logged_and_counted() {
    let (mut s, port) = serve_endpoints();
    let event = br#"{"event":"imap_command_finished","hostname":"h","fields":{"user":"bob@example.com","cmd_name":"SELECT","tagged_reply_state":"OK"}}"#;
    // The event exporter cannot send headers: the key comes in the URL.
    let target = format!("/events?api_key={KEY}");
    assert_eq!(http(port, "POST", &target, &[], event).0, 200);
    s.wait_for_log("dovecot event", Duration::from_secs(5));
    assert!(s.log_text().contains("SELECT"));
    assert_eq!(http(port, "POST", &target, &[], b"{\"nope\":1}").0, 400);
    let (_, metrics) = http(port, "GET", &format!("/metrics?api_key={KEY}"), &[], b"");
    assert!(
        metrics.contains(r#"wasmail_dovecot_events_total{event="imap_command_finished"} 1"#),
        "{metrics}"
    );
}

#[test]
fn bad_http_input_is_refused_without_hanging() {
    let (mut s, port) = serve_endpoints();
    let body = policy_body("bob@example.com");
    // No key: 401, and a log line naming the peer.
    let (status, _) = http(
        port,
        "POST",
        "/auth-policy?command=allow",
        &[],
        body.as_bytes(),
    );
    assert_eq!(status, 401);
    s.wait_for_log("without the API key refused (401)", Duration::from_secs(5));
    // Wrong key: 403 and a log line.
    let (status, _) = http(
        port,
        "POST",
        "/auth-policy?command=allow",
        &["X-API-Key: 0123456789abcdef-WRONG-key"],
        body.as_bytes(),
    );
    assert_eq!(status, 403);
    s.wait_for_log("wrong API key refused (403)", Duration::from_secs(5));
    // Malformed JSON, unknown command, not an object: 400.
    for (command, body) in [
        ("allow", "{\"login\":"),
        ("allow", "[1,2,3]"),
        ("drop", "{}"),
    ] {
        let (status, _) = policy(port, command, body);
        assert_eq!(status, 400, "{command} {body}");
    }
    // Oversized body (max_body = 4096): 413, whether declared or streamed.
    let big = vec![b'x'; 64 * 1024];
    let (status, _) = http(
        port,
        "POST",
        "/auth-policy?command=allow",
        &[KEY_HEADER],
        &big,
    );
    assert_eq!(status, 413);
    // Unknown path, wrong method.
    assert_eq!(http(port, "GET", "/nope", &[KEY_HEADER], b"").0, 404);
    assert_eq!(http(port, "GET", "/auth-policy", &[KEY_HEADER], b"").0, 405);
    // A client that sends half a request and goes away does not block the next one.
    {
        let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
        half.write_all(b"POST /auth-policy?command=allow HTTP/1.1\r\nContent-Length: 500\r\n")
            .unwrap();
    }
    let t0 = Instant::now();
    let (status, json) = policy(port, "allow", &body);
    assert_eq!((status, json["status"].as_i64()), (200, Some(0)));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // A client that stalls in the middle of its body gets 408 after request_timeout
    // (1.5 s), not a connection held forever.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        slow,
        "POST /auth-policy?command=allow HTTP/1.1\r\nHost: x\r\n{KEY_HEADER}\r\nContent-Length: 100\r\n\r\n{{\"login\""
    )
    .unwrap();
    let t0 = Instant::now();
    let mut resp = String::new();
    let _ = slow.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(s.stop(Duration::from_secs(10)).success());
}

/// Sends `data` on `sock` with `fd` attached (SCM_RIGHTS), as Dovecot does.
fn send_with_fd(sock: &UnixStream, data: &[u8], fd: &impl AsRawFd) {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(data)];
    let n = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
    assert_eq!(n, data.len());
}

/// Post-login exchange with a passed "client connection" (one end of a socketpair):
/// returns wasmail's answer (empty = closed without a reply) and the other end of the
/// pair, which reads EOF once wasmail has closed the fd it received.
fn post_login(dir: &Path, user: &str) -> (String, UnixStream) {
    let sock = UnixStream::connect(dir.join("post-login.sock")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (client_end, ours) = UnixStream::pair().unwrap();
    let request = format!(
        "VERSION\tscript-login\t1\t0\n127.0.0.1\t192.0.2.7\t{user}\tuid=5000\tgid=5000\thome=/srv/mail/{user}\tauth_mech=PLAIN\n"
    );
    send_with_fd(&sock, request.as_bytes(), &client_end);
    drop(client_end);
    let mut answer = String::new();
    BufReader::new(&sock).read_line(&mut answer).unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (answer, ours)
}

fn assert_closed(peer: &mut UnixStream) {
    let mut b = [0u8; 1];
    assert_eq!(
        peer.read(&mut b)
            .expect("EOF, not a timeout: wasmail kept the client fd open"),
        0
    );
}

#[test]
fn post_login_socket_allows_rewrites_denies_and_closes_the_fd() {
    let (mut s, _port) = serve_endpoints();
    let dir = s.dir.path().to_path_buf();
    // bob: no rule, the fields come back unchanged.
    let (answer, mut client) = post_login(&dir, "bob@example.com");
    assert_eq!(
        answer,
        "bob@example.com\tuid=5000\tgid=5000\thome=/srv/mail/bob@example.com\tauth_mech=PLAIN\n"
    );
    assert_closed(&mut client);
    // carol: rewritten (a field with a space and a new plugin/ field).
    let (answer, mut client) = post_login(&dir, "carol@example.com");
    let fields: Vec<&str> = answer.trim_end().split('\t').collect();
    assert_eq!(fields[0], "carol@example.com");
    assert!(
        fields.contains(&"imap_capability=IMAP4rev1 LITERAL+ X-WASMAIL-REWRITTEN"),
        "{answer:?}"
    );
    assert!(fields.contains(&"plugin/x_worker=w1"), "{answer:?}");
    assert!(fields.contains(&"uid=5000"), "{answer:?}");
    assert_closed(&mut client);
    // dan: denied = closed without a reply.
    let (answer, mut client) = post_login(&dir, "dan@example.com");
    assert_eq!(answer, "");
    assert_closed(&mut client);
    s.wait_for_log("dovecot post-login: deny", Duration::from_secs(5));

    // A client that disconnects mid-request, one that sends garbage, and one that sends
    // too much: each is dropped, logged, and the next request is answered at once.
    {
        let sock = UnixStream::connect(dir.join("post-login.sock")).unwrap();
        (&sock)
            .write_all(b"VERSION\tscript-login\t1\t0\n127.0.0.1\t")
            .unwrap();
    }
    s.wait_for_log(
        "disconnected before a complete request",
        Duration::from_secs(5),
    );
    let garbage = UnixStream::connect(dir.join("post-login.sock")).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (&garbage).write_all(b"HELLO\tthere\n").unwrap();
    let mut rest = Vec::new();
    (&garbage).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let big = UnixStream::connect(dir.join("post-login.sock")).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut long = b"VERSION\tscript-login\t1\t0\n127.0.0.1\t".to_vec();
    long.extend(std::iter::repeat_n(b'a', 100 * 1024));
    let _ = (&big).write_all(&long);
    let mut rest = Vec::new();
    let _ = (&big).read_to_end(&mut rest);
    assert!(rest.is_empty());
    s.wait_for_log("request too large", Duration::from_secs(5));
    let t0 = Instant::now();
    let (answer, _) = post_login(&dir, "bob@example.com");
    assert!(answer.starts_with("bob@example.com\t"), "{answer:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(s.stop(Duration::from_secs(10)).success());
}

// ---------------------------------------------------------------------------------------
// Real Dovecot in front.

/// A private Dovecot instance; stopped on drop.
struct Dovecot {
    conf: PathBuf,
    log: PathBuf,
}

impl Dovecot {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = crate::support::output_within(
            std::process::Command::new("/usr/sbin/dovecot")
                .arg("-c")
                .arg(&self.conf)
                .arg("stop"),
            Duration::from_secs(30),
        );
    }
}

/// Line-oriented IMAP over TCP.
struct Imap {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Imap {
    fn connect(port: u16) -> Imap {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Imap {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let greeting = c.line();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        c
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        let _ = self.r.read_line(&mut l);
        l
    }
    /// Sends `tag cmd` and collects lines up to the tagged one (or EOF: "" at the end).
    fn cmd(&mut self, tag: &str, cmd: &str) -> String {
        let _ = self.w.write_all(format!("{tag} {cmd}\r\n").as_bytes());
        let mut all = String::new();
        loop {
            let l = self.line();
            all.push_str(&l);
            if l.is_empty() || l.starts_with(&format!("{tag} ")) {
                return all;
            }
        }
    }
}

fn wait_port(port: u16, what: &str, log: impl Fn() -> String) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{what} did not listen on {port}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dovecot_front_delegates_policy_passdb_post_login_and_events() {
    let name = "dovecot_hooks::dovecot_front_delegates_policy_passdb_post_login_and_events";
    if !require_root(name) || !require_program(name, "/usr/sbin/dovecot") {
        return;
    }
    if !Path::new("/usr/lib/dovecot/modules/auth/libauthdb_lua.so").exists() {
        eprintln!(
            "SKIPPED: {name}: dovecot-auth-lua is not installed (scripts/setup.sh installs it)"
        );
        return;
    }
    // wasmail, configured from the docs block plus the verdicts plugin for the
    // post-login rewrite.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    seed_registry(&root);
    std::fs::write(root.join("dovecot.key"), format!("{KEY}\n")).unwrap();
    let http_port = free_port();
    let imap_port = free_port();
    let wasmail_toml = docs_block("wasmail", "toml")
        .replace("127.0.0.1:9930", &format!("127.0.0.1:{http_port}"))
        .replace(
            "/etc/wasmail/dovecot.key",
            &format!("{}/dovecot.key", root.display()),
        )
        .replace(
            "/run/wasmail/post-login.sock",
            &format!("{}/post-login.sock", root.display()),
        )
        .replace(
            "hooks = [\"login-rule\"]",
            "hooks = [\"login-rule\", \"hook-verdicts\"]",
        )
        .replace(
            "file = \"login-rule.wasm\"",
            &format!("file = \"{}/login-rule.wasm\"", plugins_dir().display()),
        );
    let verdicts = verdicts_plugin().replace(
        &format!(
            "[plugins]\ndir = \"{}\"\nwatch = false\n",
            plugins_dir().display()
        ),
        "",
    );
    let config = format!(
        "[registry]\npath = \"{{dir}}/registry.db\"\n\n[plugins]\ndir = \"{}\"\nwatch = false\n\n{wasmail_toml}\n{verdicts}",
        plugins_dir().display()
    );
    let mut serve = Serve::start_in(dir, &config);

    // The Lua passdb script from docs/, pointed at this wasmail.
    let lua = std::fs::read_to_string(repo_root().join("docs/dovecot-passdb.lua"))
        .unwrap()
        .replace(
            "http://127.0.0.1:9930/passdb",
            &format!("http://127.0.0.1:{http_port}/passdb"),
        )
        .replace(
            "/etc/wasmail/dovecot.key",
            &format!("{}/dovecot.key", root.display()),
        );
    std::fs::write(root.join("wasmail-passdb.lua"), lua).unwrap();

    // A private Dovecot: its own base_dir and log, IMAP on a loopback port, mail under
    // the temp dir as `nobody`; the wasmail part is the docs block.
    let mail = root.join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    nix::unistd::chown(
        &mail,
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let delegation = docs_block("dovecot", "dovecot.conf")
        .replace("127.0.0.1:9930", &format!("127.0.0.1:{http_port}"))
        .replace("REPLACE-WITH-THE-KEY", KEY)
        .replace("REPLACE-WITH-A-RANDOM-NONCE", "test-nonce-0123456789")
        .replace(
            "/etc/dovecot/wasmail-passdb.lua",
            &format!("{}/wasmail-passdb.lua", root.display()),
        )
        .replace(
            "/run/wasmail/post-login.sock",
            &format!("{}/post-login.sock", root.display()),
        );
    let conf = root.join("dovecot.conf");
    let log = root.join("dovecot.log");
    std::fs::write(
        &conf,
        format!(
            "protocols = imap\n\
             listen = 127.0.0.1\n\
             base_dir = {root}/run/\n\
             state_dir = {root}/state\n\
             instance_name = wasmail-front-test-{imap_port}\n\
             log_path = {log}\n\
             auth_verbose = yes\n\
             ssl = no\n\
             disable_plaintext_auth = no\n\
             auth_mechanisms = plain login\n\
             mail_location = maildir:~/Maildir\n\
             userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home={mail}/%d/%n\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {imap_port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
             service pop3-login {{\n  inet_listener pop3 {{\n    port = 0\n  }}\n  inet_listener pop3s {{\n    port = 0\n  }}\n}}\n\
             service submission-login {{\n  inet_listener submission {{\n    port = 0\n  }}\n}}\n\
             {delegation}\n",
            root = root.display(),
            log = log.display(),
            mail = mail.display(),
        ),
    )
    .unwrap();
    let out = crate::support::output_within(
        std::process::Command::new("/usr/sbin/dovecot")
            .arg("-c")
            .arg(&conf),
        Duration::from_secs(30),
    );
    let dovecot = Dovecot { conf, log };
    assert!(
        out.status.success(),
        "dovecot did not start: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        dovecot.log_text()
    );
    wait_port(imap_port, "dovecot", || dovecot.log_text());

    // 1. Policy deny (login-rule from the docs block): the IMAP client sees the message.
    let mut c = Imap::connect(imap_port);
    let reply = c.cmd("a", "LOGIN old@retired.example pw-old");
    assert!(
        reply.contains("a NO") && reply.contains("This domain has moved"),
        "policy deny not seen by the client: {reply:?}\n{}",
        dovecot.log_text()
    );

    // 2. The Lua passdb: wrong password refused, right one accepted.
    let mut c = Imap::connect(imap_port);
    let reply = c.cmd("a", "LOGIN bob@example.com wrong-password");
    assert!(reply.contains("a NO"), "{reply:?}\n{}", dovecot.log_text());
    let mut c = Imap::connect(imap_port);
    let reply = c.cmd("a", "LOGIN bob@example.com pw-bob");
    assert!(
        reply.contains("a OK"),
        "{reply:?}\n{}\n{}",
        dovecot.log_text(),
        serve.log_text()
    );
    let caps = c.cmd("b", "CAPABILITY");
    assert!(!caps.contains("X-WASMAIL-REWRITTEN"), "{caps}");
    let sel = c.cmd("c", "SELECT INBOX");
    assert!(sel.contains("c OK"), "{sel}");
    c.cmd("d", "LOGOUT");

    // 3. Post-login rewrite (hook-verdicts for carol): the session runs with the
    // rewritten userdb field, visible in its CAPABILITY answer.
    let mut c = Imap::connect(imap_port);
    let reply = c.cmd("a", "LOGIN carol@example.com pw-carol");
    assert!(reply.contains("a OK"), "{reply:?}\n{}", dovecot.log_text());
    let caps = c.cmd("b", "CAPABILITY");
    assert!(
        caps.contains("X-WASMAIL-REWRITTEN"),
        "post-login rewrite not in effect: {caps:?}\n{}",
        dovecot.log_text()
    );
    c.cmd("d", "LOGOUT");

    // 4. The event exporter reached the sink.
    serve.wait_for_log("dovecot event", Duration::from_secs(10));
    let log = serve.log_text();
    assert!(
        log.contains("auth_request_finished") || log.contains("imap_command_finished"),
        "{log}"
    );
    assert!(log.contains("dovecot passdb"), "{log}");
    drop(dovecot);
    assert!(serve.stop(Duration::from_secs(10)).success());
}

/// `GET /workers` on the admin unix socket (no token needed there).
fn workers(admin: &Path) -> serde_json::Value {
    let mut s = UnixStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /workers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"))
}

#[test]
fn auth_policy_allow_prewarms_the_domain_worker() {
    let name = "dovecot_hooks::auth_policy_allow_prewarms_the_domain_worker";
    if !require_root(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    seed_registry(dir.path());
    std::fs::write(dir.path().join("dovecot.key"), format!("{KEY}\n")).unwrap();
    std::fs::create_dir_all(dir.path().join("mail/example.com")).unwrap();
    let port = free_port();
    let config = format!(
        "[server]\nshutdown_grace = \"5s\"\n\
         [registry]\npath = \"{{dir}}/registry.db\"\n\
         [dovecot]\nhttp = \"127.0.0.1:{port}\"\napi_key_file = \"{{dir}}/dovecot.key\"\n\
         [admin]\nlisten = \"unix:{{dir}}/admin.sock\"\n\
         {fc}",
        fc = crate::support::fc_test_worker_section("wasmail-dovecot-test"),
    );
    let mut serve = Serve::start_in(dir, &config);
    let admin = serve.dir.path().join("admin.sock");
    let cold = |w: &serde_json::Value| {
        w["workers"]
            .as_array()
            .is_none_or(|a| a.iter().all(|x| x["state"] != "ready"))
    };
    assert!(cold(&workers(&admin)), "{}", workers(&admin));

    // A domain the registry does not host starts nothing.
    let (status, json) = policy(port, "allow", &policy_body("x@unknown.example"));
    assert_eq!((status, json["status"].as_i64()), (200, Some(0)));
    // The before-auth call answers at once and the worker comes up behind it.
    let t0 = Instant::now();
    let (status, json) = policy(port, "allow", &policy_body("bob@example.com"));
    assert_eq!((status, json["status"].as_i64()), (200, Some(0)));
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let ready = loop {
        let w = workers(&admin);
        if let Some(x) = w["workers"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["state"] == "ready").cloned())
        {
            break x;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no worker started: {w}\n{}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ready["domain"], "example.com", "{ready}");
    let all = workers(&admin);
    assert!(
        !all.to_string().contains("unknown.example"),
        "a worker for an unhosted domain: {all}"
    );
    assert!(serve.stop(Duration::from_secs(20)).success());
    let pid = ready["pid"].as_u64().unwrap() as i32;
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
        "worker {pid} outlived serve"
    );
}

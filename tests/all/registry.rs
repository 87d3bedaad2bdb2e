//! `wasmail domain|mailbox|alias` end to end: the built binary against a registry file in a
//! temp dir, outputs parsed back (JSON with serde_json), the file read with the library.
//! The scenario bodies (`*_on`) take any [`Reg`]; `registry_etcd` runs them against etcd.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use serde_json::Value;
use wasmail::registry::Registry;
use wasmail::registry::config::RegistrySection;
use wasmail::registry::password::verify_password;

use crate::support::wasmail_bin;

/// A temp dir with a config whose `[registry]` section names a registry (by default an
/// SQLite file in the temp dir).
pub(crate) struct Reg {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: PathBuf,
    /// The `[registry]` section's body.
    section: String,
}

impl Reg {
    pub(crate) fn new() -> Reg {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("reg.db");
        Reg::with_path(dir, &db.display().to_string())
    }

    fn with_path(dir: tempfile::TempDir, path: &str) -> Reg {
        Reg::with_section(dir, &format!("path = \"{path}\"\n"))
    }

    /// A config whose `[registry]` section is `section` (TOML lines).
    pub(crate) fn with_section(dir: tempfile::TempDir, section: &str) -> Reg {
        let config = dir.path().join("wasmail.toml");
        std::fs::write(&config, format!("[registry]\n{section}")).unwrap();
        Reg {
            dir,
            config,
            section: section.to_string(),
        }
    }

    /// The registry the config names, opened with the library.
    pub(crate) fn open(&self) -> Arc<dyn Registry> {
        let section: RegistrySection = toml::from_str(&self.section).unwrap();
        wasmail::registry::open(&section).unwrap()
    }

    /// Runs `wasmail <group> --config <cfg> <args...>`, feeding `stdin` (None = /dev/null).
    pub(crate) fn run(&self, group: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(wasmail_bin());
        cmd.arg(group)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("WASMAIL_CONFIG")
            .current_dir(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawn wasmail");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        // No output ever carries password material (but an export to standard output,
        // which is the whole registry, hashes included).
        let export = group == "registry" && args.first() == Some(&"export");
        for stream in [&out.stdout, &out.stderr].into_iter().filter(|_| !export) {
            let s = String::from_utf8_lossy(stream);
            for needle in ["argon2", "ARGON2", "$6$", "s3cret", "n3w-pass"] {
                assert!(
                    !s.contains(needle),
                    "output of {group} {args:?} contains {needle:?}:\n{s}"
                );
            }
        }
        out
    }

    /// Runs and expects success; returns stdout.
    pub(crate) fn ok(&self, group: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(group, args, stdin);
        assert!(
            out.status.success(),
            "wasmail {group} {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; returns stderr.
    pub(crate) fn fail(&self, group: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(group, args, stdin);
        assert!(
            !out.status.success(),
            "wasmail {group} {args:?} succeeded unexpectedly:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub(crate) fn json(&self, group: &str, args: &[&str]) -> Value {
        let text = self.ok(group, args, None);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

/// The element of a JSON array whose `key` is `value`.
fn find<'a>(array: &'a Value, key: &str, value: &str) -> &'a Value {
    array
        .as_array()
        .expect("a JSON array")
        .iter()
        .find(|v| v[key] == value)
        .unwrap_or_else(|| panic!("no {key} = {value} in {array}"))
}

#[test]
fn domains_add_list_show_set_rm() {
    domains_add_list_show_set_rm_on(&Reg::new());
}

/// `wasmail domain ...` on an empty registry.
pub(crate) fn domains_add_list_show_set_rm_on(r: &Reg) {
    let out = r.ok(
        "domain",
        &[
            "add",
            "Example.COM",
            "--transport",
            "lmtp:unix:/run/dovecot/lmtp",
            "--chain",
            "milter=spam,dkim",
            "--setting",
            "workers.max=4",
        ],
        None,
    );
    assert_eq!(out.trim(), "added domain example.com");
    r.ok("domain", &["add", "other.example"], None);

    let e = r.fail("domain", &["add", "example.com"], None);
    assert!(e.contains("domain example.com already exists"), "{e}");
    assert!(e.contains("wasmail domain set"), "{e}");
    let e = r.fail("domain", &["add", "bad_name.example"], None);
    assert!(e.contains("bad_name.example") && e.contains("'_'"), "{e}");
    let e = r.fail("domain", &["add", "bücher.example"], None);
    assert!(e.contains("xn--"), "{e}");
    let e = r.fail("domain", &["add", "x.example", "--transport", "lmtp"], None);
    assert!(e.contains("transport `lmtp`"), "{e}");
    let e = r.fail("domain", &["add", "x.example", "--chain", "smtp=a"], None);
    assert!(e.contains("milter, policy, hook"), "{e}");

    // Human list: a header and aligned columns.
    let text = r.ok("domain", &["list"], None);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("DOMAIN "), "{text}");
    let col = lines[0].find("TRANSPORT").unwrap();
    let row = lines.iter().find(|l| l.starts_with("example.com")).unwrap();
    assert_eq!(row.find("lmtp:unix:/run/dovecot/lmtp"), Some(col), "{text}");
    assert!(row.ends_with("milter=spam,dkim"), "{text}");

    let list = r.json("domain", &["list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let d = find(&list, "name", "example.com");
    assert_eq!(d["transport"], "lmtp:unix:/run/dovecot/lmtp");
    assert_eq!(d["chains"]["milter"], serde_json::json!(["spam", "dkim"]));
    assert_eq!(d["settings"]["workers.max"], "4");
    assert_eq!(d["mailbox_count"], 0);
    assert_eq!(
        find(&list, "name", "other.example")["transport"],
        Value::Null
    );

    r.ok(
        "domain",
        &[
            "set",
            "EXAMPLE.com",
            "--no-transport",
            "--chain",
            "milter=",
            "--chain",
            "policy=rate",
            "--setting",
            "a=b",
            "--unset-setting",
            "workers.max",
        ],
        None,
    );
    let d = r.json("domain", &["show", "example.com", "--json"]);
    assert_eq!(d["transport"], Value::Null);
    assert_eq!(d["chains"], serde_json::json!({"policy": ["rate"]}));
    assert_eq!(d["settings"], serde_json::json!({"a": "b"}));
    r.ok(
        "domain",
        &[
            "set",
            "example.com",
            "--transport",
            "smtp:[mx.example.net]:25",
        ],
        None,
    );
    let d = r.json("domain", &["show", "example.com", "--json"]);
    assert_eq!(d["transport"], "smtp:[mx.example.net]:25");
    assert_eq!(
        d["settings"],
        serde_json::json!({"a": "b"}),
        "set keeps the rest"
    );

    let e = r.fail("domain", &["set", "example.com"], None);
    assert!(e.contains("nothing to change"), "{e}");
    let e = r.fail("domain", &["set", "nope.example", "--setting", "a=b"], None);
    assert!(e.contains("domain nope.example does not exist"), "{e}");
    let e = r.fail(
        "domain",
        &["set", "example.com", "--transport", "x:y", "--no-transport"],
        None,
    );
    assert!(e.contains("cannot be used with"), "{e}");

    let text = r.ok("domain", &["show", "example.com"], None);
    assert!(
        text.lines()
            .any(|l| l.starts_with("domain ") && l.ends_with("example.com"))
    );
    assert!(text.contains("smtp:[mx.example.net]:25"), "{text}");
    assert!(text.contains("chain policy"), "{text}");

    assert_eq!(
        r.ok("domain", &["rm", "other.example"], None).trim(),
        "removed domain other.example"
    );
    let e = r.fail("domain", &["rm", "other.example"], None);
    assert!(e.contains("does not exist"), "{e}");
    let e = r.fail("domain", &["show", "other.example"], None);
    assert!(e.contains("does not exist"), "{e}");
    assert_eq!(
        r.json("domain", &["list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn mailboxes_aliases_and_domain_removal() {
    mailboxes_aliases_and_domain_removal_on(&Reg::new());
}

/// `wasmail mailbox|alias ...` and `domain rm` on an empty registry.
pub(crate) fn mailboxes_aliases_and_domain_removal_on(r: &Reg) {
    r.ok("domain", &["add", "example.com"], None);

    let out = r.ok(
        "mailbox",
        &[
            "add",
            "Alice@Example.com",
            "--password-stdin",
            "--quota",
            "2G",
        ],
        Some("s3cret\n"),
    );
    assert_eq!(
        out.trim(),
        "added mailbox alice@example.com (password: set, quota: 2G)"
    );
    // Without a flag, a non-terminal standard input gives the password.
    r.ok(
        "mailbox",
        &["add", "bob@example.com"],
        Some("s3cret-bob\r\n"),
    );
    r.ok(
        "mailbox",
        &["add", "carol@example.com", "--no-password"],
        None,
    );

    let e = r.fail("mailbox", &["add", "dave@example.com"], None);
    assert!(e.contains("no password on standard input"), "{e}");
    let e = r.fail("mailbox", &["add", "erin@example.com"], Some("\n"));
    assert!(e.contains("password is empty"), "{e}");
    let e = r.fail(
        "mailbox",
        &["add", "x@unknown.example", "--no-password"],
        None,
    );
    assert!(
        e.contains(
            "domain unknown.example is not in the registry; add it with \
             `wasmail domain add unknown.example`"
        ),
        "{e}"
    );
    let e = r.fail(
        "mailbox",
        &["add", "alice@example.com", "--no-password"],
        None,
    );
    assert!(
        e.contains("already exists") && e.contains("mailbox passwd"),
        "{e}"
    );
    let e = r.fail("mailbox", &["add", "no-at-sign", "--no-password"], None);
    assert!(e.contains("`no-at-sign`"), "{e}");
    let e = r.fail(
        "mailbox",
        &["add", "a@example.com", "--quota", "lots"],
        None,
    );
    assert!(e.contains("not a size"), "{e}");
    // Passwords are never taken from the command line.
    r.fail(
        "mailbox",
        &["add", "a@example.com", "--password", "x"],
        None,
    );

    let list = r.json("mailbox", &["list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    let alice = find(&list, "address", "alice@example.com");
    assert_eq!(alice["password"], "set");
    assert_eq!(alice["quota_bytes"], 2u64 << 30);
    assert_eq!(alice["domain"], "example.com");
    assert_eq!(
        find(&list, "address", "carol@example.com")["password"],
        "none"
    );
    assert_eq!(
        find(&list, "address", "carol@example.com")["quota_bytes"],
        Value::Null
    );

    let text = r.ok("mailbox", &["list", "example.com"], None);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let col = lines[0].find("PASSWORD").unwrap();
    assert_eq!(lines[1].find("set"), Some(col), "{text}");
    assert!(lines[1].ends_with("2G"), "{text}");
    let e = r.fail("mailbox", &["list", "unknown.example"], None);
    assert!(e.contains("unknown.example does not exist"), "{e}");

    // The stored hashes are Dovecot-style and check out.
    let stored = |address: &str| {
        let reg = r.open();
        let snap = reg.snapshot().unwrap();
        snap.mailbox(address).unwrap().password_hash.clone()
    };
    let h = stored("alice@example.com").unwrap();
    assert!(h.starts_with("{ARGON2ID}$argon2id$"), "{h}");
    assert!(verify_password(&h, "s3cret"));
    assert!(verify_password(
        &stored("bob@example.com").unwrap(),
        "s3cret-bob"
    ));

    let out = r.ok(
        "mailbox",
        &["passwd", "alice@example.com", "--password-stdin"],
        Some("n3w-pass\n"),
    );
    assert_eq!(out.trim(), "changed the password of alice@example.com");
    let h = stored("alice@example.com").unwrap();
    assert!(verify_password(&h, "n3w-pass"));
    assert!(!verify_password(&h, "s3cret"));
    r.ok(
        "mailbox",
        &["passwd", "bob@example.com", "--no-password"],
        None,
    );
    assert_eq!(stored("bob@example.com"), None);
    let e = r.fail(
        "mailbox",
        &["passwd", "nobody@example.com", "--password-stdin"],
        Some("x\n"),
    );
    assert!(
        e.contains("mailbox nobody@example.com does not exist"),
        "{e}"
    );

    // Aliases, including a catch-all.
    assert_eq!(
        r.ok(
            "alias",
            &["add", "Postmaster@example.com", "alice@example.com"],
            None
        )
        .trim(),
        "added alias postmaster@example.com"
    );
    assert_eq!(
        r.ok(
            "alias",
            &[
                "add",
                "@example.com",
                "catchall@remote.example",
                "Bob@Remote.Example"
            ],
            None
        )
        .trim(),
        "added catch-all alias @example.com"
    );
    let e = r.fail("alias", &["add", "alice@example.com", "x@y.example"], None);
    assert!(e.contains("either a mailbox or an alias"), "{e}");
    let e = r.fail(
        "mailbox",
        &["add", "postmaster@example.com", "--no-password"],
        None,
    );
    assert!(e.contains("either a mailbox or an alias"), "{e}");
    let e = r.fail(
        "alias",
        &["add", "info@unknown.example", "a@b.example"],
        None,
    );
    assert!(e.contains("wasmail domain add unknown.example"), "{e}");
    let e = r.fail(
        "alias",
        &["add", "info@example.com", "not-an-address"],
        None,
    );
    assert!(e.contains("`not-an-address`"), "{e}");
    r.fail("alias", &["add", "info@example.com"], None);

    let list = r.json("alias", &["list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let catch_all = find(&list, "source", "@example.com");
    assert_eq!(catch_all["catch_all"], true);
    assert_eq!(
        catch_all["targets"],
        serde_json::json!(["catchall@remote.example", "Bob@remote.example"])
    );
    assert_eq!(
        find(&list, "source", "postmaster@example.com")["catch_all"],
        false
    );
    let text = r.ok("alias", &["list", "example.com"], None);
    assert!(text.starts_with("SOURCE "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("@example.com") && l.contains("Bob@remote.example")),
        "{text}"
    );

    let show = r.json("domain", &["show", "example.com", "--json"]);
    assert_eq!(show["mailbox_count"], 3);
    assert_eq!(show["alias_count"], 2);
    assert_eq!(show["mailboxes"].as_array().unwrap().len(), 3);
    assert_eq!(show["aliases"].as_array().unwrap().len(), 2);
    let text = r.ok("domain", &["show", "example.com"], None);
    assert!(
        text.contains("password: set") && text.contains("password: none"),
        "{text}"
    );

    // A domain in use is kept without --force.
    let e = r.fail("domain", &["rm", "example.com"], None);
    assert!(e.contains("3 mailbox(es) and 2 alias(es)"), "{e}");
    assert!(e.contains("--force"), "{e}");

    assert_eq!(
        r.ok("alias", &["rm", "@Example.com"], None).trim(),
        "removed alias @example.com"
    );
    let e = r.fail("alias", &["rm", "@example.com"], None);
    assert!(e.contains("alias @example.com does not exist"), "{e}");
    r.ok("mailbox", &["rm", "carol@example.com"], None);
    let e = r.fail("mailbox", &["rm", "carol@example.com"], None);
    assert!(
        e.contains("mailbox carol@example.com does not exist"),
        "{e}"
    );

    r.ok("domain", &["rm", "example.com", "--force"], None);
    assert_eq!(
        r.json("mailbox", &["list", "--json"]),
        serde_json::json!([])
    );
    assert_eq!(r.json("alias", &["list", "--json"]), serde_json::json!([]));
    assert_eq!(r.json("domain", &["list", "--json"]), serde_json::json!([]));
    let out = r.run("mailbox", &["list"], None);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no mailboxes"));
}

#[test]
fn unusable_registry_path_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let path = blocker.join("reg.db");
    let r = Reg::with_path(dir, &path.display().to_string());
    let e = r.fail("domain", &["list"], None);
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("[registry] path"), "{e}");
    assert!(e.contains("wasmail.toml"), "{e}");
}

#[test]
fn relative_registry_path_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = Reg::with_path(dir, "reg.db");
    let e = r.fail("domain", &["list"], None);
    assert!(e.contains("registry.path") && e.contains("absolute"), "{e}");
    assert!(!r.dir.path().join("reg.db").exists());
}

//! The etcd registry backend against a private etcd (support::etcd): the CLI scenarios of
//! `registry` run unchanged on etcd, the same operations give the same results as SQLite,
//! export/import moves a registry between the backends byte for byte, two `wasmail serve`
//! see a CLI change through the watch within a second, a dead etcd leaves lookups
//! answering from the last snapshot while the CLI fails naming the endpoint, and
//! concurrent writers never lose or corrupt data.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmail::registry::etcd::{EtcdOptions, EtcdRegistry};
use wasmail::registry::sqlite::SqliteRegistry;
use wasmail::registry::{Alias, Domain, Mailbox, Registry};

use crate::lookup::postmap;
use crate::registry::{
    Reg, domains_add_list_show_set_rm_on, mailboxes_aliases_and_domain_removal_on,
};
use crate::support::etcd::Etcd;
use crate::support::{Serve, docs_fenced, require_program, wasmail_bin};

/// Starts a private etcd, or None (with a loud SKIPPED line) when etcd is not installed.
fn etcd(test: &str) -> Option<Etcd> {
    Etcd::binary(test).map(|bin| Etcd::start(&bin))
}

/// The `[registry]` lines for `etcd` under `prefix`.
fn section(etcd: &Etcd, prefix: &str, extra: &str) -> String {
    format!(
        "backend = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"{prefix}\"\n{extra}",
        etcd.endpoint
    )
}

fn open(etcd: &Etcd, prefix: &str) -> EtcdRegistry {
    EtcdRegistry::open(&EtcdOptions {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: prefix.into(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(20),
    })
    .unwrap()
}

#[test]
fn cli_scenarios_run_unchanged_on_etcd() {
    let Some(etcd) = etcd("registry_etcd::cli_scenarios_run_unchanged_on_etcd") else {
        return;
    };
    // Each scenario in its own prefix of the same etcd (they start from an empty
    // registry).
    let r = Reg::with_section(tempfile::tempdir().unwrap(), &section(&etcd, "/a", ""));
    domains_add_list_show_set_rm_on(&r);
    let r = Reg::with_section(tempfile::tempdir().unwrap(), &section(&etcd, "/b", ""));
    mailboxes_aliases_and_domain_removal_on(&r);
    // `domain list` on an empty etcd registry names where it looked.
    let r = Reg::with_section(tempfile::tempdir().unwrap(), &section(&etcd, "/c", ""));
    let out = r.run("domain", &["list"], None);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("no domains in etcd {}", etcd.endpoint)),
        "{err}"
    );
}

#[test]
fn same_operations_give_the_same_results_as_sqlite() {
    let Some(etcd) = etcd("registry_etcd::same_operations_give_the_same_results_as_sqlite") else {
        return;
    };
    let sqlite = SqliteRegistry::open_in_memory().unwrap();
    let etcd_reg = open(&etcd, "/wasmail");
    let hash = "{SHA512-CRYPT}$6$tV8xPiQJQSRP3kDN$dcnGGn3qulI32hbq6BKttMlduYC3khAqC87CosPiPECMnkq36bqqhmREzkprJ2fz5o6jdMUyJfS8rftkrbmIs.";
    type Op = Box<dyn Fn(&dyn Registry) -> wasmail::registry::Result<()>>;
    let mut with_chain = Domain::named("Example.COM");
    with_chain.transport = Some("lmtp:unix:/run/dovecot/lmtp".into());
    with_chain
        .chains
        .insert("milter".into(), vec!["spam".into(), "dkim".into()]);
    with_chain.settings.insert("workers.max".into(), "4".into());
    let ops: Vec<(&str, Op)> = vec![
        ("add domain", Box::new(move |r| r.add_domain(&with_chain))),
        (
            "add again",
            Box::new(|r| r.add_domain(&Domain::named("example.com"))),
        ),
        (
            "bad name",
            Box::new(|r| r.add_domain(&Domain::named("bad_name.example"))),
        ),
        (
            "add y",
            Box::new(|r| r.add_domain(&Domain::named("y.example"))),
        ),
        (
            "update missing",
            Box::new(|r| r.update_domain(&Domain::named("z.example"))),
        ),
        (
            "mailbox",
            Box::new(|r| r.add_mailbox(&Mailbox::at("Alice@example.com"))),
        ),
        (
            "mailbox again",
            Box::new(|r| r.add_mailbox(&Mailbox::at("alice@example.com"))),
        ),
        (
            "mailbox unknown domain",
            Box::new(|r| r.add_mailbox(&Mailbox::at("a@nope.example"))),
        ),
        (
            "no at sign",
            Box::new(|r| r.add_mailbox(&Mailbox::at("no-at-sign"))),
        ),
        (
            "alias",
            Box::new(|r| {
                r.add_alias(&Alias::new(
                    "postmaster@example.com",
                    &["alice@EXAMPLE.com"],
                ))
            }),
        ),
        (
            "alias on mailbox",
            Box::new(|r| r.add_alias(&Alias::new("alice@example.com", &["b@y.example"]))),
        ),
        (
            "mailbox on alias",
            Box::new(|r| r.add_mailbox(&Mailbox::at("postmaster@example.com"))),
        ),
        (
            "catch-all",
            Box::new(|r| r.add_alias(&Alias::new("@example.com", &["Bob@Remote.org"]))),
        ),
        (
            "catch-all again",
            Box::new(|r| r.add_alias(&Alias::new("@example.com", &["x@y.example"]))),
        ),
        (
            "alias unknown domain",
            Box::new(|r| r.add_alias(&Alias::new("@nope.example", &["x@y.example"]))),
        ),
        (
            "password",
            Box::new(move |r| r.set_password("ALICE@example.com", Some(hash))),
        ),
        (
            "plaintext password",
            Box::new(|r| r.set_password("alice@example.com", Some("plain"))),
        ),
        (
            "password missing",
            Box::new(|r| r.set_password("nobody@example.com", None)),
        ),
        (
            "update mailbox",
            Box::new(|r| {
                r.update_mailbox(&Mailbox {
                    address: "alice@example.com".into(),
                    password_hash: None,
                    quota_bytes: Some(1 << 30),
                })
            }),
        ),
        (
            "update missing mailbox",
            Box::new(|r| r.update_mailbox(&Mailbox::at("nobody@example.com"))),
        ),
        (
            "update alias",
            Box::new(|r| r.update_alias(&Alias::new("@example.com", &["alice@example.com"]))),
        ),
        (
            "update missing alias",
            Box::new(|r| r.update_alias(&Alias::new("@y.example", &["alice@example.com"]))),
        ),
        (
            "mailbox in y",
            Box::new(|r| r.add_mailbox(&Mailbox::at("a@y.example"))),
        ),
        (
            "rm in use",
            Box::new(|r| r.remove_domain("example.com", false)),
        ),
        (
            "rm y in use",
            Box::new(|r| r.remove_domain("y.example", false)),
        ),
        ("rm mailbox", Box::new(|r| r.remove_mailbox("a@y.example"))),
        (
            "rm mailbox again",
            Box::new(|r| r.remove_mailbox("a@y.example")),
        ),
        ("rm y", Box::new(|r| r.remove_domain("Y.example", false))),
        (
            "rm alias missing",
            Box::new(|r| r.remove_alias("info@example.com")),
        ),
        (
            "rm alias",
            Box::new(|r| r.remove_alias("Postmaster@example.com")),
        ),
        (
            "add x",
            Box::new(|r| r.add_domain(&Domain::named("x.example"))),
        ),
        (
            "mailbox in x",
            Box::new(|r| r.add_mailbox(&Mailbox::at("b@x.example"))),
        ),
        (
            "catch-all in x",
            Box::new(|r| r.add_alias(&Alias::new("@x.example", &["b@x.example"]))),
        ),
        (
            "rm x force",
            Box::new(|r| r.remove_domain("x.example", true)),
        ),
        (
            "rm missing",
            Box::new(|r| r.remove_domain("x.example", true)),
        ),
    ];
    for (name, op) in &ops {
        let a = op(&sqlite).map_err(|e| e.to_string());
        let b = op(&etcd_reg).map_err(|e| e.to_string());
        assert_eq!(a, b, "{name}: SQLite and etcd differ");
        let (sa, sb) = (sqlite.snapshot().unwrap(), etcd_reg.snapshot().unwrap());
        assert_eq!(sa.domains, sb.domains, "{name}");
        assert_eq!(sa.mailboxes, sb.mailboxes, "{name}");
        assert_eq!(sa.aliases, sb.aliases, "{name}");
    }
    let s = etcd_reg.snapshot().unwrap();
    assert_eq!(s.domains.len(), 1);
    assert_eq!(s.mailboxes.len(), 1);
    assert_eq!(s.aliases.len(), 1);
    assert_eq!(s.generation, etcd_reg.generation().unwrap());
}

#[test]
fn generation_ignores_keys_outside_the_registry() {
    let Some(etcd) = etcd("registry_etcd::generation_ignores_keys_outside_the_registry") else {
        return;
    };
    let reg = open(&etcd, "/wasmail");
    assert_eq!(reg.generation().unwrap(), 0, "empty etcd");
    reg.add_domain(&Domain::named("x.example")).unwrap();
    let g = reg.generation().unwrap();
    assert!(g > 0);
    // Placement writes other keys under the same prefix; another installation uses
    // another prefix.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
            .await
            .unwrap();
        c.put("/wasmail/hosts/h1", "alive", None).await.unwrap();
        c.put("/wasmail/owners/x.example", "h1", None)
            .await
            .unwrap();
        c.put("/wasmail/registryx", "not the registry", None)
            .await
            .unwrap();
    });
    let other = open(&etcd, "/other");
    other.add_domain(&Domain::named("other.example")).unwrap();
    assert_eq!(reg.generation().unwrap(), g);
    let s = reg.snapshot().unwrap();
    assert_eq!(s.generation, g);
    assert_eq!(s.domains.keys().collect::<Vec<_>>(), ["x.example"]);
    // Refused and failed writes change nothing either.
    assert!(reg.add_domain(&Domain::named("x.example")).is_err());
    assert!(reg.remove_mailbox("a@x.example").is_err());
    assert_eq!(reg.generation().unwrap(), g);
    // A registry write does.
    reg.add_mailbox(&Mailbox::at("a@x.example")).unwrap();
    assert!(reg.generation().unwrap() > g);
}

#[test]
fn export_from_sqlite_import_into_etcd_and_back_is_identical() {
    let Some(etcd) =
        etcd("registry_etcd::export_from_sqlite_import_into_etcd_and_back_is_identical")
    else {
        return;
    };
    let sql = Reg::new();
    sql.ok(
        "domain",
        &[
            "add",
            "example.com",
            "--transport",
            "lmtp:unix:/run/dovecot/lmtp",
            "--chain",
            "milter=spam,dkim",
            "--chain",
            "hook=audit",
            "--setting",
            "workers.max=4",
        ],
        None,
    );
    sql.ok("domain", &["add", "example.net"], None);
    sql.ok(
        "mailbox",
        &["add", "alice@example.com", "--quota", "2G"],
        Some("s3cret\n"),
    );
    sql.ok(
        "mailbox",
        &["add", "bob@example.net", "--no-password"],
        None,
    );
    sql.ok(
        "alias",
        &["add", "postmaster@example.com", "alice@example.com"],
        None,
    );
    sql.ok(
        "alias",
        &["add", "@example.net", "bob@example.net", "x@remote.example"],
        None,
    );
    let first = sql.dir.path().join("first.json");
    sql.ok(
        "registry",
        &["export", "--output", first.to_str().unwrap()],
        None,
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&first).unwrap().permissions().mode() & 0o777,
        0o600,
        "the dump holds password hashes"
    );
    let text = std::fs::read_to_string(&first).unwrap();
    assert!(text.contains("\"format\": \"wasmail-registry\""), "{text}");
    assert!(text.contains("{ARGON2ID}"), "hashes are exported");

    let et = Reg::with_section(
        tempfile::tempdir().unwrap(),
        &section(&etcd, "/wasmail", ""),
    );
    let out = et.ok(
        "registry",
        &["import", "--input", first.to_str().unwrap()],
        None,
    );
    assert!(out.contains("6 added, 0 replaced, 0 unchanged"), "{out}");
    // Standard output is the default.
    let second = et.ok("registry", &["export"], None);
    assert_eq!(second, text, "SQLite → etcd → export differs");

    // Importing again is refused, naming the entries, unless --replace.
    let e = et.fail(
        "registry",
        &["import", "--input", first.to_str().unwrap()],
        None,
    );
    assert!(
        e.contains("6 already in the registry: domain example.com, domain example.net"),
        "{e}"
    );
    assert!(e.contains("--replace"), "{e}");
    let out = et.run("registry", &["import", "--replace"], Some(&text));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("6 unchanged"));

    // And back into a fresh SQLite file.
    let back = Reg::new();
    back.run("registry", &["import"], Some(&second));
    assert_eq!(back.ok("registry", &["export"], None), text);
    // The mailbox still logs in with its password.
    let h = back
        .open()
        .snapshot()
        .unwrap()
        .mailbox("alice@example.com")
        .unwrap()
        .password_hash
        .clone()
        .unwrap();
    assert!(wasmail::registry::password::verify_password(&h, "s3cret"));

    // A bad document is refused naming the entry, and nothing is written.
    let bad = text.replace(
        "alice@example.com\",\n      \"password_hash",
        "alice@\",\n      \"password_hash",
    );
    assert_ne!(bad, text);
    let fresh = Reg::with_section(tempfile::tempdir().unwrap(), &section(&etcd, "/fresh", ""));
    let out = fresh.run("registry", &["import"], Some(&bad));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("mailbox alice@:"), "{e}");
    assert!(e.contains("nothing was imported"), "{e}");
    assert_eq!(
        fresh.json("domain", &["list", "--json"]),
        serde_json::json!([])
    );
}

/// A `wasmail serve` answering socketmap lookups from the etcd registry.
fn serve_on(etcd: &Etcd, refresh: &str) -> Serve {
    let config = format!(
        "[registry]\n{}\n[lookup]\nsocketmap = \"unix:{{dir}}/sm.sock\"\n",
        section(
            etcd,
            "/wasmail",
            &format!("refresh = \"{refresh}\"\nrequest_timeout = \"1s\"\n")
        )
    );
    Serve::start(&config)
}

fn sm(serve: &Serve, table: &str) -> String {
    format!(
        "socketmap:unix:{}:{table}",
        serve.dir.path().join("sm.sock").display()
    )
}

/// Polls `postmap -q key` on every serve until all answer `want`; returns how long it took.
fn until_answered(serves: &[&Serve], key: &str, table: &str, want: &str) -> Duration {
    let start = Instant::now();
    let mut pending: Vec<&Serve> = serves.to_vec();
    while !pending.is_empty() {
        pending.retain(|s| {
            let (code, value, _) = postmap(key, &sm(s, table));
            !(code == 0 && value == want)
        });
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{key} not answered {want} by {} serve(s) after 10 s",
            pending.len()
        );
    }
    start.elapsed()
}

#[test]
fn two_serves_answer_a_cli_change_within_a_second() {
    let test = "registry_etcd::two_serves_answer_a_cli_change_within_a_second";
    if !require_program(test, "postmap") {
        return;
    }
    let Some(etcd) = etcd(test) else { return };
    // Polling once an hour: only the watch can bring the change in time.
    let a = serve_on(&etcd, "1h");
    let b = serve_on(&etcd, "1h");
    // The CLI uses the section from docs/registry.md verbatim, but for the endpoint.
    let documented = docs_fenced("docs/registry.md", "registry-etcd", "toml");
    let body = documented
        .strip_prefix("[registry]\n")
        .expect("the block starts with [registry]")
        .replace("http://127.0.0.1:2379", &etcd.endpoint);
    assert_ne!(body, documented);
    let cli = Reg::with_section(tempfile::tempdir().unwrap(), &body);
    let (code, _, _) = postmap("example.com", &sm(&a, "virtual_mailbox_domains"));
    assert_eq!(code, 1, "not hosted yet");

    cli.ok("domain", &["add", "example.com"], None);
    let took = until_answered(&[&a, &b], "example.com", "virtual_mailbox_domains", "OK");
    eprintln!("domain add visible on both serves after {took:?}");
    assert!(took < Duration::from_secs(1), "domain add took {took:?}");

    cli.ok(
        "mailbox",
        &["add", "alice@example.com", "--no-password"],
        None,
    );
    let took = until_answered(
        &[&a, &b],
        "alice@example.com",
        "virtual_mailbox_maps",
        "example.com/alice/",
    );
    eprintln!("mailbox add visible on both serves after {took:?}");
    assert!(took < Duration::from_secs(1), "mailbox add took {took:?}");
    let mut a = a;
    let mut b = b;
    for s in [&mut a, &mut b] {
        assert!(
            s.log_text().contains("registry changed"),
            "{}",
            s.log_text()
        );
        // The backend's runtime goes down with serve without a panic.
        let status = s.stop(Duration::from_secs(10));
        assert!(status.success(), "{status}:\n{}", s.log_text());
        assert!(!s.log_text().contains("panicked"), "{}", s.log_text());
    }
}

#[test]
fn dead_etcd_keeps_lookups_answering_and_fails_the_cli_clearly() {
    let test = "registry_etcd::dead_etcd_keeps_lookups_answering_and_fails_the_cli_clearly";
    if !require_program(test, "postmap") {
        return;
    }
    let Some(mut etcd) = etcd(test) else { return };
    let cli = Reg::with_section(
        tempfile::tempdir().unwrap(),
        &section(&etcd, "/wasmail", "request_timeout = \"1s\"\n"),
    );
    cli.ok("domain", &["add", "example.com"], None);
    cli.ok(
        "mailbox",
        &["add", "alice@example.com", "--no-password"],
        None,
    );
    let serve = serve_on(&etcd, "100ms");
    until_answered(
        &[&serve],
        "alice@example.com",
        "virtual_mailbox_maps",
        "example.com/alice/",
    );

    etcd.kill();
    // Several polls fail meanwhile; the snapshot stays.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, value, err) = postmap("alice@example.com", &sm(&serve, "virtual_mailbox_maps"));
    assert_eq!((code, value.as_str()), (0, "example.com/alice/"), "{err}");
    let (code, value, _) = postmap("example.com", &sm(&serve, "virtual_mailbox_domains"));
    assert_eq!((code, value.as_str()), (0, "OK"));
    let log = serve.log_text();
    assert_eq!(
        log.matches("cannot refresh the registry").count(),
        1,
        "logged once:\n{log}"
    );
    assert!(log.contains(&etcd.endpoint), "{log}");

    // The CLI fails within its request_timeout (1 s), naming the endpoint and what it did.
    for (group, args) in [
        ("domain", &["add", "example.org"][..]),
        ("domain", &["list"][..]),
        ("mailbox", &["rm", "alice@example.com"][..]),
        ("registry", &["export"][..]),
    ] {
        let start = Instant::now();
        let e = cli.fail(group, args, None);
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(4),
            "{group} {args:?} took {took:?}"
        );
        assert!(e.contains(&etcd.endpoint), "{e}");
        assert!(e.contains("etcd"), "{e}");
    }
    let e = cli.fail("domain", &["add", "example.org"], None);
    assert!(e.contains("adding a domain"), "{e}");
    assert!(e.contains("is etcd running and reachable?"), "{e}");

    // etcd comes back: serve says so, the watch is re-established, and the next change
    // is served again.
    etcd.restart();
    cli.ok("domain", &["add", "example.org"], None);
    let took = until_answered(&[&serve], "example.org", "virtual_mailbox_domains", "OK");
    eprintln!("first change after etcd came back served after {took:?}");
    let mut serve = serve;
    serve.wait_for_log("registry watch re-established", Duration::from_secs(10));
    serve.wait_for_log("registry readable again", Duration::from_secs(10));
    let log = serve.log_text();
    for once in ["registry watch lost", "cannot refresh the registry"] {
        assert_eq!(log.matches(once).count(), 1, "{once}: logged once:\n{log}");
    }
}

#[test]
fn concurrent_writers_never_lose_or_corrupt_data() {
    let Some(etcd) = etcd("registry_etcd::concurrent_writers_never_lose_or_corrupt_data") else {
        return;
    };
    let first = open(&etcd, "/wasmail");
    first.add_domain(&Domain::named("example.com")).unwrap();

    // Four writers (each its own client, like four hosts) add 25 mailboxes each to one
    // domain at the same time: every write is a conflict candidate.
    const WRITERS: usize = 4;
    const EACH: usize = 25;
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let endpoint = etcd.endpoint.clone();
            std::thread::spawn(move || {
                let reg = EtcdRegistry::open(&EtcdOptions {
                    endpoints: vec![endpoint],
                    prefix: "/wasmail".into(),
                    connect_timeout: Duration::from_secs(2),
                    request_timeout: Duration::from_secs(30),
                })
                .unwrap();
                for i in 0..EACH {
                    reg.add_mailbox(&Mailbox::at(&format!("w{w}-{i}@example.com")))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = first.snapshot().unwrap();
    assert_eq!(s.mailboxes.len(), WRITERS * EACH);
    // The generation counter counted every write exactly once.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let counter = rt.block_on(async {
        let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
            .await
            .unwrap();
        let r = c.get("/wasmail/registry/generation", None).await.unwrap();
        r.kvs()[0].value_str().unwrap().to_string()
    });
    assert_eq!(counter, (1 + WRITERS * EACH).to_string());

    // A remover and an adder race on one domain. The adder adds a mailbox and removes it
    // again, so the domain is empty now and then and the remover sometimes succeeds.
    // Whatever the interleaving: no mailbox is ever left without its domain, and a
    // mailbox that was added cannot vanish before its own removal (a refused
    // `domain rm` removes nothing).
    let reg: Arc<EtcdRegistry> = Arc::new(open(&etcd, "/race"));
    reg.add_domain(&Domain::named("race.example")).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let adder = {
        let endpoint = etcd.endpoint.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let r = EtcdRegistry::open(&EtcdOptions {
                endpoints: vec![endpoint],
                prefix: "/race".into(),
                connect_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(30),
            })
            .unwrap();
            let (mut added, mut refused) = (0, 0);
            for i in 0..60 {
                let address = format!("m{i}@race.example");
                match r.add_mailbox(&Mailbox::at(&address)) {
                    Ok(()) => {
                        added += 1;
                        let s = r.snapshot().unwrap();
                        for m in s.mailboxes.values() {
                            assert!(s.domain(m.domain()).is_some(), "orphan {}", m.address);
                        }
                        assert!(s.mailbox(&address).is_some(), "{address} vanished");
                        r.remove_mailbox(&address).unwrap();
                    }
                    Err(e) => {
                        assert!(e.to_string().contains("not in the registry"), "{e}");
                        refused += 1;
                    }
                }
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            (added, refused)
        })
    };
    let (mut removed, mut kept) = (0, 0);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        match reg.remove_domain("race.example", false) {
            Ok(()) => {
                removed += 1;
                reg.add_domain(&Domain::named("race.example")).unwrap();
            }
            Err(e) => {
                assert!(e.to_string().contains("still has 1 mailbox(es)"), "{e}");
                kept += 1;
            }
        }
    }
    let (added, refused) = adder.join().unwrap();
    eprintln!(
        "race: {added} mailbox(es) added, {refused} refused (no domain); domain removed \
         {removed} time(s), kept {kept} time(s)"
    );
    assert!(added > 0);
    assert!(
        removed > 0,
        "the domain was never empty when the remover tried"
    );
    let s = reg.snapshot().unwrap();
    assert!(
        s.mailboxes.is_empty(),
        "every added mailbox was removed again"
    );
    assert!(s.domain("race.example").is_some());
}

#[test]
fn wasmail_check_config_accepts_the_etcd_section_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("wasmail.toml");
    std::fs::write(
        &cfg,
        "[registry]\nbackend = \"etcd\"\nendpoints = [\"https://10.0.0.1:2379\"]\nprefix = \"x\"\n",
    )
    .unwrap();
    let out = Command::new(wasmail_bin())
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("registry.endpoints[0]") && e.contains("TLS"),
        "{e}"
    );
    assert!(e.contains("registry.prefix"), "{e}");
    std::fs::write(
        &cfg,
        "[registry]\nbackend = \"etcd\"\nendpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n",
    )
    .unwrap();
    let out = Command::new(wasmail_bin())
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn snapshot_reads_a_large_registry_in_pages_in_the_documented_layout() {
    let Some(etcd) =
        etcd("registry_etcd::snapshot_reads_a_large_registry_in_pages_in_the_documented_layout")
    else {
        return;
    };
    let reg = open(&etcd, "/wasmail");
    reg.add_domain(&Domain::named("example.com")).unwrap();
    // 1200 mailboxes written straight into etcd in the layout docs/registry.md describes
    // (more than two 500-key pages), 100 keys per transaction (etcd allows 128 ops).
    const N: usize = 1200;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
            .await
            .unwrap();
        for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
            let ops: Vec<_> = chunk
                .iter()
                .map(|i| {
                    etcd_client::TxnOp::put(
                        format!("/wasmail/registry/mailboxes/example.com/u{i:04}@example.com"),
                        format!("{{\"password_hash\":null,\"quota_bytes\":{}}}", i + 1),
                        None,
                    )
                })
                .collect();
            c.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
        }
        c.put(
            "/wasmail/registry/aliases/example.com/@example.com",
            r#"{"targets":["u0000@example.com"]}"#,
            None,
        )
        .await
        .unwrap();
    });
    let s = reg.snapshot().unwrap();
    assert_eq!(s.mailboxes.len(), N);
    assert_eq!(
        s.mailbox("u1199@example.com").unwrap().quota_bytes,
        Some(1200)
    );
    assert_eq!(
        s.alias("@example.com").unwrap().targets,
        ["u0000@example.com"]
    );
    // The registry's own operations see them: the domain is in use.
    let e = reg.remove_domain("example.com", false).unwrap_err();
    assert!(
        e.to_string().contains("1200 mailbox(es) and 1 alias(es)"),
        "{e}"
    );
    // A corrupt value is an error naming its key.
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
            .await
            .unwrap();
        c.put("/wasmail/registry/domains/bad.example", "{not json", None)
            .await
            .unwrap();
    });
    let e = reg.snapshot().unwrap_err().to_string();
    assert!(
        e.contains("/wasmail/registry/domains/bad.example is not valid JSON"),
        "{e}"
    );
    assert!(e.contains(&etcd.endpoint), "{e}");
}

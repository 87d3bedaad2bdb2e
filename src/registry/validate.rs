//! Validation and normalisation of registry input, shared by every backend.
//!
//! Each function takes what a user typed (or a caller passed) and returns the canonical
//! form stored in the registry (lower-case names, sorted maps), or
//! [`RegistryError::Invalid`] with a message that names the offending value and says what
//! would be accepted. Backends call these before writing, so a value read back from any
//! backend is already canonical and services can compare with `==`.

use std::collections::BTreeMap;

use super::{Alias, Domain, Mailbox, RegistryError, Result, password};

/// The services a domain may carry a plugin chain for.
pub const CHAIN_SERVICES: [&str; 3] = ["milter", "policy", "hook"];

/// Longest domain name (RFC 1035 §2.3.4, without the root's trailing dot).
const MAX_DOMAIN: usize = 253;
/// Longest label of a domain name.
const MAX_LABEL: usize = 63;
/// Longest local part (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL: usize = 64;
/// Longest setting name.
const MAX_SETTING_KEY: usize = 128;

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::Invalid(msg.into())
}

/// Normalises a domain name: lower-case ASCII letters, digits, hyphens and dots; labels of
/// 1-63 characters that neither start nor end with a hyphen; at most 253 characters.
/// Internationalised names must be given in their IDNA A-label form (`xn--...`).
pub fn domain_name(input: &str) -> Result<String> {
    if input.is_empty() {
        return Err(invalid("the domain name is empty"));
    }
    if !input.is_ascii() {
        return Err(invalid(format!(
            "domain `{input}` is not ASCII: give an internationalised domain in its IDNA \
             A-label form (xn--..., e.g. `idn2 '{input}'` prints it)"
        )));
    }
    let name = input.to_ascii_lowercase();
    if name.len() > MAX_DOMAIN {
        return Err(invalid(format!(
            "domain `{input}` is {} characters long; at most {MAX_DOMAIN} are allowed",
            name.len()
        )));
    }
    if name.starts_with('.') || name.ends_with('.') {
        return Err(invalid(format!(
            "domain `{input}` starts or ends with a dot; write it without (example.com, not \
             example.com.)"
        )));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(invalid(format!(
                "domain `{input}` has an empty label (two dots in a row)"
            )));
        }
        if label.len() > MAX_LABEL {
            return Err(invalid(format!(
                "domain `{input}`: label `{label}` is {} characters long; at most {MAX_LABEL} \
                 are allowed",
                label.len()
            )));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(invalid(format!(
                "domain `{input}` contains {c:?}; only letters, digits, hyphens and dots are \
                 allowed"
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid(format!(
                "domain `{input}`: label `{label}` starts or ends with a hyphen"
            )));
        }
    }
    Ok(name)
}

/// Checks a local part (before the `@`): non-empty, at most 64 bytes, no whitespace or
/// control characters. `what` and `input` name the whole value in messages.
fn local_part(local: &str, what: &str, input: &str) -> Result<()> {
    if local.is_empty() {
        return Err(invalid(format!(
            "{what} `{input}` has an empty local part (the part before `@`)"
        )));
    }
    if local.len() > MAX_LOCAL {
        return Err(invalid(format!(
            "{what} `{input}`: the local part is {} bytes long; at most {MAX_LOCAL} are allowed",
            local.len()
        )));
    }
    if let Some(c) = local.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!(
            "{what} `{input}` contains {c:?} in its local part; whitespace and control \
             characters are not allowed"
        )));
    }
    Ok(())
}

/// Normalises a local mailbox or alias address `local@domain`: lower-cased, exactly one
/// `@`, a valid local part and domain. `what` ("mailbox address", "alias") names the value
/// in messages.
fn local_address(input: &str, what: &str) -> Result<String> {
    let Some((local, domain)) = input.split_once('@') else {
        return Err(invalid(format!(
            "{what} `{input}` has no `@`; write it as local@domain"
        )));
    };
    if domain.contains('@') {
        return Err(invalid(format!(
            "{what} `{input}` has more than one `@`; write it as local@domain"
        )));
    }
    local_part(local, what, input)?;
    let domain = domain_name(domain)?;
    Ok(format!("{}@{domain}", local.to_lowercase()))
}

/// Normalises a mailbox address `local@domain` (lower-cased).
pub fn mailbox_address(input: &str) -> Result<String> {
    local_address(input, "mailbox address")
}

/// Normalises an alias source: `local@domain`, or `@domain` for the domain's catch-all.
pub fn alias_source(input: &str) -> Result<String> {
    match input.strip_prefix('@') {
        Some(domain) if !domain.contains('@') => Ok(format!("@{}", domain_name(domain)?)),
        _ => local_address(input, "alias"),
    }
}

/// Normalises an alias target: any address, local or remote, with exactly one `@` and
/// non-empty parts. The domain part is lower-cased; the local part is kept as given
/// (remote systems may treat it case-sensitively).
pub fn alias_target(input: &str) -> Result<String> {
    let mut parts = input.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid(format!(
            "alias target `{input}` must contain exactly one `@` (local@domain)"
        )));
    };
    local_part(local, "alias target", input)?;
    if domain.is_empty() {
        return Err(invalid(format!(
            "alias target `{input}` has an empty domain (the part after `@`)"
        )));
    }
    Ok(format!("{local}@{}", domain_name(domain)?))
}

/// Checks a Postfix transport (`transport_maps` answer) such as `lmtp:unix:/run/x.sock` or
/// `smtp:[mx.example]:25`: non-empty, no whitespace or control characters, and a `:`
/// between the transport name and its next hop.
pub fn transport(input: &str) -> Result<String> {
    if input.is_empty() {
        return Err(invalid(
            "the transport is empty; leave it unset to use Postfix's default",
        ));
    }
    if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!(
            "transport `{input}` contains {c:?}; whitespace and control characters are not \
             allowed"
        )));
    }
    if !input.contains(':') {
        return Err(invalid(format!(
            "transport `{input}` has no `:`; write it as transport:nexthop, e.g. \
             lmtp:unix:/run/dovecot/lmtp or smtp:[mx.example.com]:25"
        )));
    }
    Ok(input.to_string())
}

/// Checks per-service plugin chains: keys from [`CHAIN_SERVICES`], plugin names as in
/// `[plugin.NAME]`. Empty chains are dropped (an absent key and an empty chain mean the
/// same thing).
pub fn chains(input: &BTreeMap<String, Vec<String>>) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for (service, plugins) in input {
        let service = service.to_ascii_lowercase();
        if !CHAIN_SERVICES.contains(&service.as_str()) {
            return Err(invalid(format!(
                "`{service}` is not a service with plugin chains; use one of {}",
                CHAIN_SERVICES.join(", ")
            )));
        }
        for p in plugins {
            if !crate::host::config::valid_plugin_name(p) {
                return Err(invalid(format!(
                    "`{p}` in the {service} chain is not a plugin name: plugin names use \
                     letters, digits, `-` and `_` only (at most 64)"
                )));
            }
        }
        if !plugins.is_empty() {
            out.insert(service, plugins.clone());
        }
    }
    Ok(out)
}

/// Checks settings: names of letters, digits, `-`, `_` and `.` (at most 128), values
/// without control characters.
pub fn settings(input: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    for (k, val) in input {
        if k.is_empty()
            || k.len() > MAX_SETTING_KEY
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(invalid(format!(
                "`{k}` is not a setting name: use letters, digits, `-`, `_` and `.` (at most \
                 {MAX_SETTING_KEY})"
            )));
        }
        if val.chars().any(char::is_control) {
            return Err(invalid(format!(
                "the value of setting `{k}` contains control characters"
            )));
        }
    }
    Ok(input.clone())
}

/// Validates and normalises a whole [`Domain`].
pub fn domain(d: &Domain) -> Result<Domain> {
    Ok(Domain {
        name: domain_name(&d.name)?,
        transport: d.transport.as_deref().map(transport).transpose()?,
        chains: chains(&d.chains)?,
        settings: settings(&d.settings)?,
    })
}

/// Checks a stored password hash: Dovecot's `{SCHEME}hash` form with a scheme that
/// [`password::verify_password`] understands, and no whitespace or control characters
/// (it ends up on a line of Dovecot's auth protocol).
pub fn password_hash(hash: &str) -> Result<String> {
    if hash.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "the password hash contains whitespace or control characters",
        ));
    }
    if password::scheme(hash).is_none() {
        return Err(invalid(format!(
            "the password hash is not in Dovecot's {{SCHEME}}hash form with a supported \
             scheme ({}); produce one with `doveadm pw -s ARGON2ID`",
            password::SCHEMES.join(", ")
        )));
    }
    Ok(hash.to_string())
}

/// Validates and normalises a whole [`Mailbox`]. Quota: 1 byte .. `i64::MAX` (None is
/// unlimited; 0 would mean unlimited to Dovecot, so it is rejected to avoid surprises).
pub fn mailbox(m: &Mailbox) -> Result<Mailbox> {
    let address = mailbox_address(&m.address)?;
    if let Some(q) = m.quota_bytes {
        if q == 0 {
            return Err(invalid(format!(
                "mailbox {address}: a quota of 0 bytes is not allowed; leave the quota unset \
                 for unlimited"
            )));
        }
        if i64::try_from(q).is_err() {
            return Err(invalid(format!(
                "mailbox {address}: quota {q} bytes is too large (at most {})",
                i64::MAX
            )));
        }
    }
    Ok(Mailbox {
        address,
        password_hash: m.password_hash.as_deref().map(password_hash).transpose()?,
        quota_bytes: m.quota_bytes,
    })
}

/// Validates and normalises a whole [`Alias`]: at least one target, no target twice.
pub fn alias(a: &Alias) -> Result<Alias> {
    let source = alias_source(&a.source)?;
    if a.targets.is_empty() {
        return Err(invalid(format!(
            "alias {source} has no targets; give at least one"
        )));
    }
    let mut targets: Vec<String> = Vec::with_capacity(a.targets.len());
    for t in &a.targets {
        let t = alias_target(t)?;
        if targets.contains(&t) {
            return Err(invalid(format!(
                "alias {source}: target {t} is listed twice"
            )));
        }
        targets.push(t);
    }
    Ok(Alias { source, targets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<String>) -> String {
        match r {
            Err(RegistryError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn domain_names() {
        assert_eq!(domain_name("Example.COM").unwrap(), "example.com");
        assert_eq!(
            domain_name("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(domain_name("a-b.c1").unwrap(), "a-b.c1");
        let long_label = "a".repeat(64);
        let too_long = vec!["a".repeat(63); 4].join(".");
        let cases = [
            ("", "empty"),
            ("bücher.example", "xn--"),
            ("example.com.", "dot"),
            (".example.com", "dot"),
            ("a..b", "empty label"),
            ("-a.b", "hyphen"),
            ("a-.b", "hyphen"),
            ("a_b.c", "'_'"),
            ("a b.c", "' '"),
            (long_label.as_str(), "at most 63"),
            (too_long.as_str(), "at most 253"),
        ];
        for (input, needle) in cases {
            let m = err(domain_name(input));
            assert!(m.contains(needle), "{input:?}: {m}");
        }
        // 253 characters exactly is fine.
        let max = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "b".repeat(61));
        assert_eq!(max.len(), 253);
        assert!(domain_name(&max).is_ok());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            mailbox_address("Alice@Example.COM").unwrap(),
            "alice@example.com"
        );
        assert!(err(mailbox_address("alice")).contains("no `@`"));
        assert!(err(mailbox_address("@example.com")).contains("empty local part"));
        assert!(err(mailbox_address("a@b@example.com")).contains("more than one"));
        assert!(err(mailbox_address("a b@example.com")).contains("whitespace"));
        assert!(err(mailbox_address(&format!("{}@x.y", "a".repeat(65)))).contains("64"));
        assert!(err(mailbox_address("a@-x.y")).contains("hyphen"));

        assert_eq!(alias_source("@Example.com").unwrap(), "@example.com");
        assert_eq!(
            alias_source("Info@Example.com").unwrap(),
            "info@example.com"
        );
        assert!(err(alias_source("@")).contains("empty"));
        assert!(err(alias_source("@@x.y")).contains("more than one"));

        assert_eq!(alias_target("Bob@Remote.ORG").unwrap(), "Bob@remote.org");
        assert!(err(alias_target("bob")).contains("exactly one"));
        assert!(err(alias_target("a@b@c")).contains("exactly one"));
        assert!(err(alias_target("bob@")).contains("empty domain"));
        assert!(err(alias_target("@x.y")).contains("empty local part"));
    }

    #[test]
    fn transports() {
        assert!(transport("lmtp:unix:/run/x.sock").is_ok());
        assert!(transport("smtp:[mx.example]:25").is_ok());
        assert!(err(transport("lmtp")).contains("no `:`"));
        assert!(err(transport("lmtp: x")).contains("' '"));
        assert!(err(transport("")).contains("empty"));
    }

    #[test]
    fn chains_and_settings() {
        let mut c = BTreeMap::new();
        c.insert(
            "Milter".to_string(),
            vec!["a".to_string(), "b-c".to_string()],
        );
        c.insert("policy".to_string(), vec![]);
        let out = chains(&c).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out["milter"], ["a", "b-c"]);
        c.insert("smtp".into(), vec!["x".into()]);
        match chains(&c) {
            Err(RegistryError::Invalid(m)) => assert!(m.contains("milter, policy, hook"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut c = BTreeMap::new();
        c.insert("hook".to_string(), vec!["a b".to_string()]);
        assert!(chains(&c).is_err());

        let mut s = BTreeMap::new();
        s.insert("workers.max".to_string(), "4".to_string());
        assert!(settings(&s).is_ok());
        s.insert("bad key".to_string(), "x".to_string());
        assert!(settings(&s).is_err());
        let mut s = BTreeMap::new();
        s.insert("k".to_string(), "a\nb".to_string());
        assert!(settings(&s).is_err());
    }

    #[test]
    fn whole_records() {
        let a = alias(&Alias {
            source: "@X.Y".into(),
            targets: vec!["a@X.Y".into(), "a@x.y".into()],
        });
        assert!(matches!(a, Err(RegistryError::Invalid(m)) if m.contains("twice")));
        let a = alias(&Alias {
            source: "a@x.y".into(),
            targets: vec![],
        });
        assert!(matches!(a, Err(RegistryError::Invalid(m)) if m.contains("no targets")));
        let m = mailbox(&Mailbox {
            address: "a@x.y".into(),
            password_hash: Some("plain".into()),
            quota_bytes: None,
        });
        assert!(matches!(m, Err(RegistryError::Invalid(m)) if m.contains("{SCHEME}")));
        let m = mailbox(&Mailbox {
            address: "a@x.y".into(),
            password_hash: None,
            quota_bytes: Some(0),
        });
        assert!(matches!(m, Err(RegistryError::Invalid(m)) if m.contains("unlimited")));
    }
}

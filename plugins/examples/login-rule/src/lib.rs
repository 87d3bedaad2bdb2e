//! `login-rule`: denies IMAP/POP3 logins by user name, client network or missing TLS
//! (world `mail-hook`, events `auth` and `post-login`). See README.md.

use std::net::IpAddr;

use wasmail_plugin_sdk::hook::prelude::*;

const DEFAULT_MESSAGE: &str = "Login not allowed";

struct LoginRule;

impl Hook for LoginRule {
    fn describe() -> Description {
        Description::new(
            "login-rule",
            env!("CARGO_PKG_VERSION"),
            &[EventKind::Auth, EventKind::PostLogin],
        )
    }

    fn on_auth(session: Session, user: String, _mechanism: String) -> Decision {
        decide(&session, &user)
    }

    fn on_post_login(session: Session, user: String) -> Decision {
        decide(&session, &user)
    }
}

wasmail_plugin_sdk::export_hook!(LoginRule);

fn decide(session: &Session, user: &str) -> Decision {
    let rules = Rules::new(
        &config::get_list_or("deny_users", ""),
        &config::get_list_or("deny_networks", ""),
        config::get_bool_or("require_tls", false),
    );
    for bad in &rules.invalid {
        log::warn!("ignoring invalid deny_networks entry {bad:?}");
    }
    match rules.check(session.secured, user, &session.client_address) {
        Some(reason) => {
            log::info!(
                "denied {} login of {user:?} from {}: {reason}",
                session.protocol,
                session.client_address
            );
            Decision::deny(config::get_or("deny_message", DEFAULT_MESSAGE))
        }
        None => Decision::Allow,
    }
}

/// An IP network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or a bare address (a host network).
    fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.trim().parse::<u8>().ok()?)),
            None => (text, None),
        };
        let network = parse_ip(address)?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { network, prefix })
    }

    /// True when `ip` is inside this network.
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// True when the top `prefix` of `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: u128, b: u128, prefix: u8, bits: u32) -> bool {
    let shift = bits - u32::from(prefix);
    if shift >= bits {
        return true;
    }
    (a >> shift) == (b >> shift)
}

/// Parses an IP address, allowing `[...]` brackets; IPv4-mapped IPv6 becomes IPv4.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_start_matches('[').trim_end_matches(']');
    text.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The configured rules.
#[derive(Debug)]
struct Rules {
    /// Lower-case user names, or `*@domain` patterns.
    users: Vec<String>,
    networks: Vec<Cidr>,
    require_tls: bool,
    /// `deny_networks` entries that did not parse (ignored).
    invalid: Vec<String>,
}

impl Rules {
    fn new(users: &[String], networks: &[String], require_tls: bool) -> Rules {
        let mut invalid = Vec::new();
        let networks = networks
            .iter()
            .filter_map(|n| {
                let cidr = Cidr::parse(n);
                if cidr.is_none() {
                    invalid.push(n.clone());
                }
                cidr
            })
            .collect();
        Rules {
            users: users.iter().map(|u| u.trim().to_lowercase()).collect(),
            networks,
            require_tls,
            invalid,
        }
    }

    /// Why a login is denied, or `None` when it is allowed.
    fn check(&self, secured: bool, user: &str, client: &str) -> Option<&'static str> {
        if self.require_tls && !secured {
            return Some("no TLS");
        }
        let user = user.trim().to_lowercase();
        if self
            .users
            .iter()
            .any(|pattern| user_matches(pattern, &user))
        {
            return Some("user denied");
        }
        if let Some(ip) = parse_ip(client)
            && self.networks.iter().any(|n| n.contains(ip))
        {
            return Some("network denied");
        }
        None
    }
}

/// `pattern` (lower case) is a user name, `*@domain` (any user of that domain) or `*`.
fn user_matches(pattern: &str, user: &str) -> bool {
    match pattern.strip_prefix("*@") {
        Some(domain) => user.rsplit_once('@').is_some_and(|(_, d)| d == domain),
        None => pattern == "*" || pattern == user,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cidrs() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(parse_ip("10.1.200.3").unwrap()));
        assert!(!net.contains(parse_ip("10.2.0.1").unwrap()));
        assert!(net.contains(parse_ip("::ffff:10.1.0.9").unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(parse_ip("[2001:db8:ffff::1]").unwrap()));
        assert!(!v6.contains(parse_ip("2001:db9::1").unwrap()));
        assert!(!v6.contains(parse_ip("10.1.0.1").unwrap()));
        let host = Cidr::parse("192.0.2.1").unwrap();
        assert_eq!(host.prefix, 32);
        assert!(host.contains(parse_ip("192.0.2.1").unwrap()));
        assert!(!host.contains(parse_ip("192.0.2.2").unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(parse_ip("203.0.113.5").unwrap()));
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains(parse_ip("::1").unwrap())
        );
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("nonsense"), None);
        assert_eq!(Cidr::parse("10.0.0.0/x"), None);
    }

    #[test]
    fn users() {
        assert!(user_matches("bob@example.com", "bob@example.com"));
        assert!(user_matches("*@example.com", "alice@example.com"));
        assert!(!user_matches("*@example.com", "alice@example.org"));
        assert!(!user_matches("*@example.com", "example.com"));
        assert!(user_matches("*", "anyone"));
        assert!(!user_matches("bob", "bob@example.com"));
    }

    #[test]
    fn rules() {
        let r = Rules::new(
            &list(&["Bob@Example.com", "*@blocked.example"]),
            &list(&["198.51.100.0/24", "2001:db8::/48", "bogus"]),
            false,
        );
        assert_eq!(r.invalid, ["bogus"]);
        assert_eq!(r.check(true, "alice@example.com", "192.0.2.1"), None);
        assert_eq!(
            r.check(false, "bob@example.com", "192.0.2.1"),
            Some("user denied")
        );
        assert_eq!(
            r.check(true, "x@BLOCKED.example", "192.0.2.1"),
            Some("user denied")
        );
        assert_eq!(
            r.check(true, "alice@example.com", "198.51.100.7"),
            Some("network denied")
        );
        assert_eq!(
            r.check(true, "alice@example.com", "2001:db8:0:1::5"),
            Some("network denied")
        );
        assert_eq!(r.check(true, "alice@example.com", ""), None);

        let tls = Rules::new(&[], &[], true);
        assert_eq!(tls.check(false, "alice", "192.0.2.1"), Some("no TLS"));
        assert_eq!(tls.check(true, "alice", "192.0.2.1"), None);
    }
}

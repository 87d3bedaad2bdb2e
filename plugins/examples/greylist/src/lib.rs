//! `greylist`: greylisting of (client network, sender, recipient) triplets plus a per-sender
//! rate limit, both kept in the `kv` store with TTLs (the plugin has no clock). See README.md
//! for the key scheme.

use std::net::{IpAddr, Ipv6Addr};

use wasmail_plugin_sdk::addr;
use wasmail_plugin_sdk::milter::prelude::*;

wasmail_plugin_sdk::instance_state! {
    /// The client's network key (`a.b.c.0/24`, `x:x:x:x::/64`, or `local`).
    static NETWORK: String = String::from("local");
    /// The envelope sender, normalised (`<>` for the null sender).
    static SENDER: String = String::from("<>");
}

const GREYLISTED: &str = "Greylisted, try again later";

struct Greylist;

impl Filter for Greylist {
    fn describe() -> Description {
        Description::new(
            "greylist",
            env!("CARGO_PKG_VERSION"),
            &[Stage::Connect, Stage::MailFrom, Stage::Rcpt],
            BodyMode::None,
        )
    }

    fn on_connect(client: Client) -> Verdict {
        NETWORK.set(network_key(&client.address));
        Verdict::Continue
    }

    fn on_mail_from(sender: Envelope) -> Verdict {
        let sender = match addr::normalize(&sender.address) {
            s if s.is_empty() => String::from("<>"),
            s => s,
        };
        SENDER.set(sender.clone());
        if sender == "<>" {
            return Verdict::Continue; // bounces are not rate limited
        }
        let limit: i64 = config::get_parsed_or("rate_limit", 100);
        let window: u32 = config::get_parsed_or("rate_window_seconds", 3600);
        if limit <= 0 {
            return Verdict::Continue;
        }
        match kv::increment(&rate_key(&sender), 1, Some(window.max(1))) {
            Ok(count) if count > limit => {
                log::info!("rate limit: {sender} sent {count} messages (limit {limit}/{window}s)");
                Verdict::tempfail(
                    451,
                    "4.7.1",
                    "Too many messages from this sender, try again later",
                )
            }
            Ok(_) => Verdict::Continue,
            Err(e) => {
                log::warn!("rate limit store error, letting the message pass: {e}");
                Verdict::Continue
            }
        }
    }

    fn on_rcpt(recipient: Envelope) -> Verdict {
        let triplet = triplet(
            &NETWORK.with_borrow(String::clone),
            &SENDER.with_borrow(String::clone),
            &addr::normalize(&recipient.address),
        );
        let min_delay: u32 = config::get_parsed_or("min_delay_seconds", 60);
        let retry_window: u32 = config::get_parsed_or("retry_window_seconds", 86_400);
        let pass_ttl: u32 = config::get_parsed_or("pass_ttl_seconds", 36 * 86_400);
        let keys = Keys::new(&triplet);
        let state = State {
            passed: kv::exists(&keys.pass),
            seen: kv::exists(&keys.seen),
            waiting: kv::exists(&keys.wait),
        };
        let step = decide(state);
        let stored = match step {
            Step::Renew => kv::set(&keys.pass, b"1", Some(pass_ttl)),
            Step::Promote => kv::set(&keys.pass, b"1", Some(pass_ttl)).map(|()| {
                kv::delete(&keys.seen);
                kv::delete(&keys.wait);
            }),
            Step::TooEarly => Ok(()),
            Step::FirstSight => {
                kv::set(&keys.seen, b"1", Some(retry_window.max(1))).and_then(|()| {
                    if min_delay > 0 {
                        kv::set(&keys.wait, b"1", Some(min_delay))
                    } else {
                        Ok(())
                    }
                })
            }
        };
        if let Err(e) = stored {
            log::warn!("greylist store error, letting the recipient pass: {e}");
            return Verdict::Continue;
        }
        match step {
            Step::Renew | Step::Promote => Verdict::Continue,
            Step::TooEarly | Step::FirstSight => {
                log::info!("greylisted {triplet} ({step:?})");
                Verdict::tempfail(451, "4.7.1", GREYLISTED)
            }
        }
    }
}

wasmail_plugin_sdk::export_filter!(Greylist);

/// The client's network: the /24 of an IPv4 address, the /64 of an IPv6 address (IPv4-mapped
/// IPv6 addresses count as IPv4), `local` for unix-socket clients, the text itself otherwise.
fn network_key(address: &str) -> String {
    let text = address.trim().trim_start_matches('[').trim_end_matches(']');
    let text = text.strip_prefix("IPv6:").unwrap_or(text);
    if text.is_empty() {
        return String::from("local");
    }
    match text.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        Ok(IpAddr::V6(v6)) => {
            let s = v6.segments();
            let net = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{net}/64")
        }
        Err(_) => text.to_ascii_lowercase(),
    }
}

/// The greylisting triplet `network|sender|recipient`.
fn triplet(network: &str, sender: &str, recipient: &str) -> String {
    format!("{network}|{sender}|{recipient}")
}

/// The rate-limit counter key of a sender.
fn rate_key(sender: &str) -> String {
    format!("rate:{sender}")
}

/// The three kv keys of one triplet.
struct Keys {
    /// Whitelisted: the triplet passed; TTL `pass_ttl_seconds` (renewed on every pass).
    pass: String,
    /// First attempt remembered; TTL `retry_window_seconds`.
    seen: String,
    /// Retry not allowed yet; TTL `min_delay_seconds`.
    wait: String,
}

impl Keys {
    fn new(triplet: &str) -> Keys {
        Keys {
            pass: format!("pass:{triplet}"),
            seen: format!("seen:{triplet}"),
            wait: format!("wait:{triplet}"),
        }
    }
}

/// Which keys exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    passed: bool,
    seen: bool,
    waiting: bool,
}

/// What happens to a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Whitelisted already (and the whitelist entry is renewed).
    Renew,
    /// A retry after the minimum delay: whitelist the triplet and let it pass.
    Promote,
    /// A retry before the minimum delay: tempfail again.
    TooEarly,
    /// Never seen (or the retry window expired): remember it and tempfail.
    FirstSight,
}

/// The greylisting state machine.
fn decide(state: State) -> Step {
    match state {
        State { passed: true, .. } => Step::Renew,
        State {
            seen: true,
            waiting: true,
            ..
        } => Step::TooEarly,
        State { seen: true, .. } => Step::Promote,
        State { seen: false, .. } => Step::FirstSight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        assert_eq!(network_key("192.0.2.77"), "192.0.2.0/24");
        assert_eq!(network_key("[192.0.2.77]"), "192.0.2.0/24");
        assert_eq!(network_key("::ffff:198.51.100.9"), "198.51.100.0/24");
        assert_eq!(network_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(network_key("IPv6:2001:db8::1"), "2001:db8::/64");
        assert_eq!(network_key(""), "local");
        assert_eq!(network_key("Not-An-IP"), "not-an-ip");
    }

    #[test]
    fn keys() {
        let t = triplet("192.0.2.0/24", "a@x.example", "b@y.example");
        assert_eq!(t, "192.0.2.0/24|a@x.example|b@y.example");
        let k = Keys::new(&t);
        assert_eq!(k.pass, format!("pass:{t}"));
        assert_eq!(k.seen, format!("seen:{t}"));
        assert_eq!(k.wait, format!("wait:{t}"));
        assert_eq!(rate_key("a@x"), "rate:a@x");
    }

    fn st(passed: bool, seen: bool, waiting: bool) -> State {
        State {
            passed,
            seen,
            waiting,
        }
    }

    #[test]
    fn state_machine() {
        assert_eq!(decide(st(false, false, false)), Step::FirstSight);
        assert_eq!(decide(st(false, true, true)), Step::TooEarly);
        assert_eq!(decide(st(false, true, false)), Step::Promote);
        assert_eq!(decide(st(true, false, false)), Step::Renew);
        assert_eq!(decide(st(true, true, true)), Step::Renew);
        // The wait key outlived the seen key (min delay > retry window): start over.
        assert_eq!(decide(st(false, false, true)), Step::FirstSight);
    }
}

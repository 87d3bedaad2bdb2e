//! Counters of the Dovecot endpoints, rendered in Prometheus text format at
//! `GET /metrics` on the `[dovecot] http` listener.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Most distinct event names counted; later names are counted as `other`.
const MAX_EVENT_NAMES: usize = 64;

/// Counters by `(endpoint, result)` plus exported events by name.
#[derive(Debug, Default)]
pub struct Metrics {
    results: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    events: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// Counts one request of `endpoint` (`auth_policy`, `passdb`, `post_login`,
    /// `events`, `auth`) ending with `result`.
    pub fn count(&self, endpoint: &'static str, result: &'static str) {
        *lock(&self.results).entry((endpoint, result)).or_default() += 1;
    }

    /// Counts one exported event.
    pub fn event(&self, name: &str) {
        let mut events = lock(&self.events);
        let key = if events.contains_key(name) || events.len() < MAX_EVENT_NAMES {
            name
        } else {
            "other"
        };
        *events.entry(key.to_string()).or_default() += 1;
    }

    /// The value of one counter (tests, logs).
    pub fn get(&self, endpoint: &str, result: &str) -> u64 {
        lock(&self.results)
            .iter()
            .find(|((e, r), _)| *e == endpoint && *r == result)
            .map_or(0, |(_, n)| *n)
    }

    /// Prometheus text exposition.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP wasmail_dovecot_requests_total Requests from Dovecot by endpoint and result.\n\
             # TYPE wasmail_dovecot_requests_total counter\n",
        );
        for ((e, r), n) in lock(&self.results).iter() {
            let _ = writeln!(
                out,
                "wasmail_dovecot_requests_total{{endpoint=\"{e}\",result=\"{r}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP wasmail_dovecot_events_total Events exported by Dovecot, by name.\n\
             # TYPE wasmail_dovecot_events_total counter\n",
        );
        for (name, n) in lock(&self.events).iter() {
            let _ = writeln!(out, "wasmail_dovecot_events_total{{event=\"{name}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        m.count("auth_policy", "deny");
        m.count("auth_policy", "deny");
        m.event("auth_request_finished");
        for i in 0..100 {
            m.event(&format!("e{i}"));
        }
        assert_eq!(m.get("auth_policy", "deny"), 2);
        let text = m.render_prometheus();
        assert!(text.contains(
            "wasmail_dovecot_requests_total{endpoint=\"auth_policy\",result=\"deny\"} 2"
        ));
        assert!(text.contains("wasmail_dovecot_events_total{event=\"auth_request_finished\"} 1"));
        assert!(
            text.contains("wasmail_dovecot_events_total{event=\"other\"} 37"),
            "{text}"
        );
    }
}

//! FastContainer metrics: a snapshot taken from the manager ([`Metrics`], one
//! [`DomainMetrics`] per domain seen) and its Prometheus text rendering.
//!
//! The manager keeps the counters per domain under the domain's lock;
//! `Manager::metrics` copies them out, so the admin API renders without holding any lock.

use std::fmt::Write as _;
use std::time::Duration;

/// Upper bounds of the cold-start latency histogram buckets, in milliseconds.
pub const COLD_START_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];

/// A latency histogram over [`COLD_START_BUCKETS_MS`] plus an overflow bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: [u64; COLD_START_BUCKETS_MS.len() + 1],
    sum: Duration,
}

impl LatencyHistogram {
    /// Adds one observation.
    pub fn observe(&mut self, d: Duration) {
        let i = COLD_START_BUCKETS_MS
            .iter()
            .position(|&ms| d <= Duration::from_millis(ms))
            .unwrap_or(COLD_START_BUCKETS_MS.len());
        self.counts[i] += 1;
        self.sum += d;
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the observations.
    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// Cumulative counts per upper bound, Prometheus style; the last bound is `None`
    /// (+Inf) and its count equals [`count`](Self::count).
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        let bounds = COLD_START_BUCKETS_MS
            .iter()
            .map(|&ms| Some(Duration::from_millis(ms)))
            .chain([None]);
        bounds.zip(self.counts.iter().scan(0, |acc, c| {
            *acc += c;
            Some(*acc)
        }))
    }
}

/// Why a worker was stopped by the manager (crashes are counted apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapReason {
    /// Idle longer than its idle timeout.
    Idle,
    /// Older than max_lifetime (drained, or idle when it expired).
    Lifetime,
    /// `Manager::stop`.
    Stop,
    /// The manager shut down.
    Shutdown,
}

impl ReapReason {
    /// Every reason, in label order.
    pub const ALL: [ReapReason; 4] = [
        ReapReason::Idle,
        ReapReason::Lifetime,
        ReapReason::Stop,
        ReapReason::Shutdown,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReapReason::Idle => "idle",
            ReapReason::Lifetime => "lifetime",
            ReapReason::Stop => "stop",
            ReapReason::Shutdown => "shutdown",
        }
    }
}

/// Stopped workers per [`ReapReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapCounts([u64; 4]);

impl ReapCounts {
    /// Counts one.
    pub fn bump(&mut self, reason: ReapReason) {
        self.0[reason as usize] += 1;
    }

    /// The count for `reason`.
    pub fn get(&self, reason: ReapReason) -> u64 {
        self.0[reason as usize]
    }

    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// One domain's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainMetrics {
    /// The domain.
    pub domain: String,
    /// Workers that became ready.
    pub starts: u64,
    /// Starts that failed (spawn error, exit or timeout before ready).
    pub start_failures: u64,
    /// Ready workers that exited on their own.
    pub crashes: u64,
    /// Workers stopped by the manager, by reason.
    pub reaps: ReapCounts,
    /// Open sessions (leases).
    pub sessions: u64,
    /// Workers that exist (ready, draining or stopping).
    pub workers: u64,
    /// The idle timeout currently in effect.
    pub idle_timeout: Duration,
    /// Spawn → ready latency of the starts.
    pub cold_start: LatencyHistogram,
}

/// A snapshot of the manager's metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Per domain, sorted by domain.
    pub domains: Vec<DomainMetrics>,
}

impl Metrics {
    /// Workers that exist, over all domains.
    pub fn active_workers(&self) -> u64 {
        self.domains.iter().map(|d| d.workers).sum()
    }

    /// The Prometheus text exposition format (version 0.0.4): one `# HELP` and `# TYPE`
    /// per family, then its samples, per-domain ones labelled `domain`.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let p = "wasmail_fastcontainer";
        family(
            &mut out,
            &format!("{p}_active_workers"),
            "gauge",
            "Workers that exist (ready, draining or stopping).",
        );
        let _ = writeln!(out, "{p}_active_workers {}", self.active_workers());

        let per_domain: [(&str, &str, &str, Sample); 6] = [
            ("workers", "gauge", "Workers of the domain.", |d| {
                d.workers.to_string()
            }),
            ("sessions", "gauge", "Open sessions.", |d| {
                d.sessions.to_string()
            }),
            (
                "starts_total",
                "counter",
                "Workers that became ready.",
                |d| d.starts.to_string(),
            ),
            (
                "start_failures_total",
                "counter",
                "Starts that failed before the worker was ready.",
                |d| d.start_failures.to_string(),
            ),
            (
                "crashes_total",
                "counter",
                "Ready workers that exited on their own.",
                |d| d.crashes.to_string(),
            ),
            (
                "idle_timeout_seconds",
                "gauge",
                "Idle timeout currently in effect.",
                |d| seconds(d.idle_timeout),
            ),
        ];
        for (name, kind, help, value) in per_domain {
            family(&mut out, &format!("{p}_{name}"), kind, help);
            for d in &self.domains {
                let _ = writeln!(
                    out,
                    "{p}_{name}{{domain=\"{}\"}} {}",
                    esc(&d.domain),
                    value(d)
                );
            }
        }

        family(
            &mut out,
            &format!("{p}_reaps_total"),
            "counter",
            "Workers stopped by the manager, by reason.",
        );
        for d in &self.domains {
            for r in ReapReason::ALL {
                let _ = writeln!(
                    out,
                    "{p}_reaps_total{{domain=\"{}\",reason=\"{}\"}} {}",
                    esc(&d.domain),
                    r.as_str(),
                    d.reaps.get(r)
                );
            }
        }

        let h = format!("{p}_cold_start_seconds");
        family(
            &mut out,
            &h,
            "histogram",
            "Spawn to ready latency of worker starts.",
        );
        for d in &self.domains {
            let dom = esc(&d.domain);
            for (le, n) in d.cold_start.cumulative() {
                let le = le.map_or_else(|| "+Inf".to_string(), seconds);
                let _ = writeln!(out, "{h}_bucket{{domain=\"{dom}\",le=\"{le}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "{h}_sum{{domain=\"{dom}\"}} {}",
                seconds(d.cold_start.sum())
            );
            let _ = writeln!(
                out,
                "{h}_count{{domain=\"{dom}\"}} {}",
                d.cold_start.count()
            );
        }
        out
    }
}

/// Reads one per-domain sample value.
type Sample = fn(&DomainMetrics) -> String;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn seconds(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

/// Escapes a label value (`\`, `"` and newline).
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks `text` line by line against the exposition format: every family has HELP
    /// and TYPE before its samples and appears once, every sample is `name{labels} value`
    /// with a float value, histogram buckets are cumulative and end at +Inf = _count.
    /// Returns the samples as (name with labels, value).
    pub(crate) fn check_exposition(text: &str) -> Vec<(String, f64)> {
        let mut typed: Vec<(String, String)> = Vec::new();
        let mut samples = Vec::new();
        let mut last_help: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(!typed.iter().any(|(n, _)| *n == name), "{name} twice");
                last_help = Some(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(
                    last_help.as_deref(),
                    Some(name),
                    "TYPE without HELP: {line}"
                );
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                typed.push((name.to_string(), kind.to_string()));
            } else {
                assert!(!line.starts_with('#'), "{line}");
                let (series, value) = line.rsplit_once(' ').expect(line);
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
                let name = series.split('{').next().unwrap();
                assert!(
                    name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                    "{line}"
                );
                let labels = &series[name.len()..];
                if !labels.is_empty() {
                    assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                    for pair in labels[1..labels.len() - 1].split("\",") {
                        let (k, v) = pair.split_once("=\"").expect(line);
                        assert!(!k.is_empty() && !v.contains('\n'), "{line}");
                    }
                }
                let (family, kind) = typed.last().expect("sample before any TYPE");
                let ok = name == family
                    || (kind == "histogram"
                        && [
                            &format!("{family}_bucket"),
                            &format!("{family}_sum"),
                            &format!("{family}_count"),
                        ]
                        .contains(&&name.to_string()));
                assert!(ok, "sample {name} outside its family {family}");
                samples.push((series.to_string(), value));
            }
        }
        // Histograms: cumulative buckets, +Inf equals _count.
        let mut prev: Option<(String, f64)> = None;
        for (series, v) in &samples {
            if let Some(i) = series.find("_bucket{") {
                let key = series[..i].to_string()
                    + &series[series.find("domain=").unwrap()..series.find(",le=").unwrap()];
                if let Some((k, pv)) = &prev
                    && *k == key
                {
                    assert!(v >= pv, "{series} not cumulative");
                }
                if series.contains("le=\"+Inf\"") {
                    let count = series
                        .replace("_bucket", "_count")
                        .replace(",le=\"+Inf\"", "");
                    let c = samples.iter().find(|(s, _)| *s == count).expect("_count");
                    assert_eq!(c.1, *v, "{series}");
                }
                prev = Some((key, *v));
            }
        }
        samples
    }

    #[test]
    fn histogram_buckets() {
        let mut h = LatencyHistogram::default();
        for ms in [0, 1, 3, 3, 150, 7000] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum(), Duration::from_millis(7157));
        let c: Vec<_> = h.cumulative().collect();
        assert_eq!(c[0], (Some(Duration::from_millis(1)), 2));
        assert_eq!(c[2], (Some(Duration::from_millis(5)), 4));
        assert_eq!(c[7], (Some(Duration::from_millis(200)), 5));
        assert_eq!(c[11].1, 5);
        assert_eq!(c[12], (None, 6));
    }

    #[test]
    fn rendering_is_valid_exposition_text() {
        let mut d = DomainMetrics {
            domain: "a.example".into(),
            starts: 2,
            workers: 1,
            sessions: 3,
            idle_timeout: Duration::from_millis(1500),
            ..Default::default()
        };
        d.cold_start.observe(Duration::from_millis(3));
        d.cold_start.observe(Duration::from_millis(40));
        d.reaps.bump(ReapReason::Idle);
        let m = Metrics {
            domains: vec![
                d,
                DomainMetrics {
                    domain: "we\"ird\\".into(),
                    ..Default::default()
                },
            ],
        };
        let text = m.render_prometheus();
        let samples = check_exposition(&text);
        let get = |s: &str| samples.iter().find(|(k, _)| k == s).map(|x| x.1);
        assert_eq!(get("wasmail_fastcontainer_active_workers"), Some(1.0));
        assert_eq!(
            get("wasmail_fastcontainer_starts_total{domain=\"a.example\"}"),
            Some(2.0)
        );
        assert_eq!(
            get("wasmail_fastcontainer_reaps_total{domain=\"a.example\",reason=\"idle\"}"),
            Some(1.0)
        );
        assert_eq!(
            get(
                "wasmail_fastcontainer_cold_start_seconds_bucket{domain=\"a.example\",le=\"0.005\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            get("wasmail_fastcontainer_cold_start_seconds_count{domain=\"a.example\"}"),
            Some(2.0)
        );
        assert_eq!(
            get("wasmail_fastcontainer_cold_start_seconds_sum{domain=\"a.example\"}"),
            Some(0.043)
        );
        assert_eq!(
            get("wasmail_fastcontainer_idle_timeout_seconds{domain=\"a.example\"}"),
            Some(1.5)
        );
        assert!(text.contains("domain=\"we\\\"ird\\\\\""), "{text}");
        assert!(text.contains("# TYPE wasmail_fastcontainer_cold_start_seconds histogram"));
    }
}

//! Per-domain adaptive idle timeout: how long a worker with no sessions is kept before it
//! is reaped, from the domain's measured start time and its arrival history.
//!
//! # The trade-off
//!
//! When a domain's last session ends, its worker goes idle. Let `G` be the gap until the
//! next session arrives (a random variable, learnt per domain) and `S` the domain's cold
//! start time (spawn → ready). Keeping the worker for `T` before reaping costs memory for
//! `min(G, T)`; reaping costs the next arrival a cold start, `S`, whenever `G > T`:
//!
//! ```text
//! idle cost(T)    = memory × E[min(G, T)]       (grows with T)
//! latency cost(T) = S × P(G > T)                (shrinks with T)
//! ```
//!
//! Instead of inventing an exchange rate between memory and latency, we bound the latency:
//! the expected cold-start delay per idle period may be at most `L`
//! (`idle_latency_budget`, default 10 ms, "nobody notices"). Since the idle cost grows
//! with `T`, the cheapest `T` meeting the bound is the smallest with
//! `S × P(G > T) ≤ L`, that is the `p`-th percentile of the gap distribution with
//!
//! ```text
//! p = 1 − L / S        (capped at 0.99, as in "Serverless in the Wild")
//! T = clamp(Q_G(p), idle_min, idle_max)
//! ```
//!
//! so a slow-starting domain (Dovecot, ~150 ms: p ≈ 0.93) is kept until nearly every
//! regular arrival would find it warm, and a domain whose start costs less than the
//! budget (the tiny worker, ~2 ms) is reaped after `idle_min`: a cold start is as good as
//! a warm one.
//!
//! # Estimating `S` and `G`
//!
//! - `S`: an EWMA (weight [`START_EWMA`]) of the measured spawn → ready times.
//! - `G`: a small histogram of idle gaps (the time from the domain's last session ending
//!   to the next arrival, measured also across reaps) on log-spaced buckets
//!   ([`GAP_EDGES`], 1 s … 4 h plus an overflow bucket), the "hybrid histogram" of
//!   Shahrad et al., *Serverless in the Wild* (USENIX ATC '20). Every new gap first decays
//!   the old weights by [`GAP_DECAY`], so the histogram follows a changing pattern (about
//!   the last 30 gaps count). A percentile is read as the upper edge of its bucket, which
//!   errs on the side of keeping the worker (the paper's margin).
//!
//! # Rules, in order
//!
//! 1. `idle = "fixed"`: always `idle_timeout`.
//! 2. No start measured yet, or fewer than [`MIN_GAPS`] (weighted) gaps: the configured
//!    `idle_timeout` clamped to `idle_min..=idle_max` (the prior; production systems keep
//!    10-20 min).
//! 3. `S ≤ L`: `idle_min`.
//! 4. `Q_G(p) ≤ idle_max`: `clamp(Q_G(p), idle_min, idle_max)`.
//! 5. Otherwise the pattern is out of range (gaps mostly longer than we may keep a
//!    worker): keep for `idle_max` if that still catches at least half of the arrivals
//!    (`P(G ≤ idle_max) ≥` [`CATCH_MIN`]), else `idle_min`: idling for the ceiling would
//!    mostly be wasted, so pay the cold start.

use std::time::Duration;

use super::config::{FastContainerSection, IdleMode};

/// Upper edges of the idle-gap histogram buckets; one more bucket holds longer gaps.
pub const GAP_EDGES: [Duration; 17] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(20),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(2 * 60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(20 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(45 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(4 * 3600),
];

/// Factor applied to the histogram's weights before each new gap is added.
pub const GAP_DECAY: f64 = 0.97;
/// Weighted gap count below which the history is not trusted (rule 2).
pub const MIN_GAPS: f64 = 5.0;
/// Weight of a new start time in the start-time EWMA.
pub const START_EWMA: f64 = 0.3;
/// Highest percentile used (rule 4).
pub const P_MAX: f64 = 0.99;
/// Rule 5: keep for `idle_max` only if it catches at least this share of arrivals.
pub const CATCH_MIN: f64 = 0.5;

/// The idle policy from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Fixed or adaptive.
    pub mode: IdleMode,
    /// `idle_timeout`: the fixed timeout, and the adaptive prior.
    pub fixed: Duration,
    /// `idle_min`.
    pub min: Duration,
    /// `idle_max` (treated as at least `min`).
    pub max: Duration,
    /// `idle_latency_budget` (`L`).
    pub latency_budget: Duration,
}

impl IdlePolicy {
    /// The policy configured in `[fastcontainer]`.
    pub fn from_section(s: &FastContainerSection) -> IdlePolicy {
        IdlePolicy {
            mode: s.idle,
            fixed: s.idle_timeout,
            min: s.idle_min,
            max: s.idle_max,
            latency_budget: s.idle_latency_budget,
        }
    }

    /// A fixed timeout.
    pub fn fixed(timeout: Duration) -> IdlePolicy {
        IdlePolicy {
            mode: IdleMode::Fixed,
            fixed: timeout,
            min: timeout,
            max: timeout,
            latency_budget: Duration::ZERO,
        }
    }

    /// The idle timeout for a domain with these statistics (rules in the module doc).
    pub fn timeout(&self, stats: &IdleStats) -> Duration {
        if self.mode == IdleMode::Fixed {
            return self.fixed;
        }
        let (min, max) = (self.min, self.max.max(self.min));
        let prior = self.fixed.clamp(min, max);
        let Some(start) = stats.start_cost() else {
            return prior;
        };
        if start <= self.latency_budget {
            return min;
        }
        if stats.gap_weight() < MIN_GAPS {
            return prior;
        }
        let p = (1.0 - self.latency_budget.as_secs_f64() / start.as_secs_f64()).min(P_MAX);
        match stats.gap_quantile(p) {
            Some(q) if q <= max => q.clamp(min, max),
            _ if stats.gap_cdf(max) >= CATCH_MIN => max,
            _ => min,
        }
    }
}

/// What one domain's adaptive timeout learns from: start times and idle gaps.
#[derive(Debug, Clone, Default)]
pub struct IdleStats {
    start: Option<f64>,
    weights: [f64; GAP_EDGES.len() + 1],
    total: f64,
}

impl IdleStats {
    /// Records a measured cold start (spawn → ready).
    pub fn record_start(&mut self, took: Duration) {
        let x = took.as_secs_f64();
        self.start = Some(match self.start {
            None => x,
            Some(s) => s + START_EWMA * (x - s),
        });
    }

    /// Records an idle gap: from the domain's last session ending to the next arrival.
    pub fn record_gap(&mut self, gap: Duration) {
        for w in &mut self.weights {
            *w *= GAP_DECAY;
        }
        let bucket = GAP_EDGES
            .iter()
            .position(|edge| gap <= *edge)
            .unwrap_or(GAP_EDGES.len());
        self.weights[bucket] += 1.0;
        self.total = self.weights.iter().sum();
    }

    /// The smoothed start time, once one was measured.
    pub fn start_cost(&self) -> Option<Duration> {
        self.start.map(Duration::from_secs_f64)
    }

    /// The weighted number of gaps in the histogram.
    pub fn gap_weight(&self) -> f64 {
        self.total
    }

    /// The `p`-th percentile gap, as the upper edge of its bucket; `None` when it falls in
    /// the overflow bucket (beyond the last edge) or there is no history.
    pub fn gap_quantile(&self, p: f64) -> Option<Duration> {
        if self.total <= 0.0 {
            return None;
        }
        let want = p.clamp(0.0, 1.0) * self.total;
        let mut acc = 0.0;
        for (i, w) in self.weights.iter().enumerate() {
            acc += w;
            // A small tolerance so that p = 1.0 is reached despite rounding.
            if acc >= want - 1e-9 && *w > 0.0 {
                return GAP_EDGES.get(i).copied();
            }
        }
        None
    }

    /// The share of gaps known to be at most `t` (buckets whose upper edge is ≤ `t`).
    pub fn gap_cdf(&self, t: Duration) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        let caught: f64 = GAP_EDGES
            .iter()
            .zip(&self.weights)
            .filter(|(edge, _)| **edge <= t)
            .map(|(_, w)| w)
            .sum();
        caught / self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(30);
    const MAX: Duration = Duration::from_secs(30 * 60);

    fn adaptive() -> IdlePolicy {
        IdlePolicy {
            mode: IdleMode::Adaptive,
            fixed: Duration::from_secs(600),
            min: MIN,
            max: MAX,
            latency_budget: Duration::from_millis(10),
        }
    }

    fn stats(start_ms: u64, gaps: &[(Duration, usize)]) -> IdleStats {
        let mut s = IdleStats::default();
        s.record_start(Duration::from_millis(start_ms));
        for &(g, n) in gaps {
            for _ in 0..n {
                s.record_gap(g);
            }
        }
        s
    }

    fn mins(m: u64) -> Duration {
        Duration::from_secs(60 * m)
    }

    #[test]
    fn fixed_mode_ignores_history() {
        let p = IdlePolicy {
            mode: IdleMode::Fixed,
            ..adaptive()
        };
        let s = stats(500, &[(Duration::from_secs(1), 50)]);
        assert_eq!(p.timeout(&s), Duration::from_secs(600));
        assert_eq!(
            IdlePolicy::fixed(Duration::from_millis(80)).timeout(&s),
            Duration::from_millis(80)
        );
    }

    #[test]
    fn without_history_the_prior_is_used() {
        let p = adaptive();
        assert_eq!(p.timeout(&IdleStats::default()), Duration::from_secs(600));
        // A slow start but only three gaps: still the prior.
        assert_eq!(
            p.timeout(&stats(150, &[(mins(1), 3)])),
            Duration::from_secs(600)
        );
        // The prior is clamped.
        let p = IdlePolicy {
            fixed: Duration::from_secs(5),
            ..adaptive()
        };
        assert_eq!(p.timeout(&IdleStats::default()), MIN);
    }

    #[test]
    fn a_start_within_the_budget_is_reaped_early() {
        let s = stats(2, &[(mins(3), 40)]);
        assert_eq!(adaptive().timeout(&s), MIN);
        // Even without gap history.
        assert_eq!(adaptive().timeout(&stats(2, &[])), MIN);
    }

    #[test]
    fn slow_start_keeps_until_the_percentile_gap() {
        // Dovecot-like: 150 ms → p = 1 − 10/150 ≈ 0.933.
        // Gaps of 3 min land in the (2 min, 5 min] bucket → 5 min.
        assert_eq!(adaptive().timeout(&stats(150, &[(mins(3), 40)])), mins(5));
        // Mostly one-minute gaps with an occasional 25-minute one (about 2 % of the
        // decayed weight): p = 0.933 stays in the 1 min bucket...
        let mix = [(mins(25), 1), (mins(1), 29)].repeat(4);
        assert!((0.01..0.06).contains(&(1.0 - stats(1, &mix).gap_cdf(mins(1)))));
        assert_eq!(adaptive().timeout(&stats(150, &mix)), mins(1));
        // ...while a 1 s start (p = 0.99) reaches the 25-minute tail: its 30 min edge.
        assert_eq!(adaptive().timeout(&stats(1000, &mix)), mins(30));
        // Short gaps are clamped to idle_min.
        assert_eq!(
            adaptive().timeout(&stats(1000, &[(Duration::from_secs(3), 30)])),
            MIN
        );
    }

    #[test]
    fn the_percentile_grows_with_the_start_time() {
        // Gaps spread evenly over five buckets (20 % each).
        let spread = [
            (mins(1), 10),
            (mins(2), 10),
            (mins(5), 10),
            (mins(10), 10),
            (mins(15), 10),
        ];
        let mut last = Duration::ZERO;
        for start_ms in [11, 15, 25, 50, 1000] {
            let t = adaptive().timeout(&stats(start_ms, &spread));
            assert!(t >= last, "{start_ms} ms: {t:?} < {last:?}");
            last = t;
        }
        assert_eq!(last, mins(15));
    }

    #[test]
    fn out_of_range_patterns() {
        // Gaps of 3 h: keeping 30 min catches none → idle_min.
        assert_eq!(
            adaptive().timeout(&stats(1000, &[(Duration::from_secs(3 * 3600), 20)])),
            MIN
        );
        // 60 % within 10 min, 40 % beyond 4 h: p99 overflows, but idle_max still catches
        // more than half → idle_max.
        let s = stats(1000, &[(Duration::from_secs(5 * 3600), 8), (mins(10), 12)]);
        assert!(s.gap_quantile(0.99).is_none());
        assert_eq!(adaptive().timeout(&s), MAX);
    }

    #[test]
    fn history_decays() {
        let mut s = stats(1000, &[(Duration::from_secs(3 * 3600), 30)]);
        assert_eq!(adaptive().timeout(&s), MIN);
        for _ in 0..200 {
            s.record_gap(mins(4));
        }
        assert_eq!(adaptive().timeout(&s), mins(5));
        assert!(s.gap_weight() < 1.0 / (1.0 - GAP_DECAY) + 0.01);
    }

    #[test]
    fn start_ewma() {
        let mut s = IdleStats::default();
        assert_eq!(s.start_cost(), None);
        s.record_start(Duration::from_millis(100));
        assert_eq!(s.start_cost(), Some(Duration::from_millis(100)));
        s.record_start(Duration::from_millis(200));
        let ms = s.start_cost().unwrap().as_secs_f64() * 1000.0;
        assert!((ms - 130.0).abs() < 1e-6, "{ms}");
    }

    #[test]
    fn quantile_and_cdf() {
        let s = stats(1, &[(Duration::from_millis(500), 1), (mins(3), 1)]);
        assert_eq!(s.gap_quantile(0.0), Some(Duration::from_secs(1)));
        assert_eq!(s.gap_quantile(1.0), Some(mins(5)));
        assert!((s.gap_cdf(mins(2)) - GAP_DECAY / (1.0 + GAP_DECAY)).abs() < 1e-9);
        assert_eq!(s.gap_cdf(mins(5)), 1.0);
        assert_eq!(IdleStats::default().gap_quantile(0.5), None);
    }

    #[test]
    fn min_above_max_is_tolerated() {
        let p = IdlePolicy {
            min: mins(10),
            max: mins(1),
            ..adaptive()
        };
        assert_eq!(p.timeout(&stats(1000, &[(mins(3), 20)])), mins(10));
    }
}

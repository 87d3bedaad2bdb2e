//! Failure classification, the per-version circuit breaker and failure counters.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::config::BreakerConfig;
use super::state::Denied;

/// Why a plugin call did not produce a usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The call ran past its deadline or the transaction's budget (epoch interrupt).
    Timeout,
    /// The fuel budget ran out.
    OutOfFuel,
    /// The plugin tried to grow memory past its limit.
    Memory,
    /// A wasm trap (unreachable, out-of-bounds access, stack overflow, ...), with its text.
    Trap(String),
    /// The plugin called a capability it was not granted, or one not usable at this stage.
    Denied(String),
    /// The answer broke a limit (too many edits, oversized header or body, bad header name).
    Limit(String),
    /// The instance could not be created (e.g. the pool is exhausted).
    Instantiate(String),
    /// The breaker is open: the plugin was not run.
    BreakerOpen,
}

impl FailureKind {
    /// Short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfFuel => "out_of_fuel",
            FailureKind::Memory => "memory",
            FailureKind::Trap(_) => "trap",
            FailureKind::Denied(_) => "denied",
            FailureKind::Limit(_) => "limit",
            FailureKind::Instantiate(_) => "instantiate",
            FailureKind::BreakerOpen => "breaker_open",
        }
    }

    /// Classifies an error returned by a wasmtime call.
    pub fn classify(e: &wasmtime::Error) -> FailureKind {
        if let Some(d) = e.downcast_ref::<Denied>() {
            return FailureKind::Denied(d.to_string());
        }
        if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
            return match trap {
                wasmtime::Trap::Interrupt => FailureKind::Timeout,
                wasmtime::Trap::OutOfFuel => FailureKind::OutOfFuel,
                other => FailureKind::Trap(other.to_string()),
            };
        }
        let text = format!("{e:#}");
        if text.contains("growing memory") || text.contains("memory minimum size") {
            FailureKind::Memory
        } else {
            // The outermost context is wasmtime's "error while executing at wasm
            // backtrace"; the root cause says what actually happened.
            FailureKind::Trap(first_line(&e.root_cause().to_string()))
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Trap(t) => write!(f, "trap: {t}"),
            FailureKind::Denied(d) => write!(f, "denied: {d}"),
            FailureKind::Limit(l) => write!(f, "limit: {l}"),
            FailureKind::Instantiate(i) => write!(f, "instantiate: {i}"),
            other => f.write_str(other.label()),
        }
    }
}

/// Counters of one plugin version.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls into the plugin that returned normally.
    pub calls: AtomicU64,
    /// Instances created.
    pub instances: AtomicU64,
    /// Transactions served by a reused instance (`instance_reuse`).
    pub reused: AtomicU64,
    /// Failures of every kind.
    pub failures: AtomicU64,
    /// Timeouts (deadline or budget).
    pub timeouts: AtomicU64,
    /// Memory-limit failures.
    pub memory: AtomicU64,
    /// Traps and other errors.
    pub traps: AtomicU64,
    /// Ungranted capability calls.
    pub denied: AtomicU64,
    /// Answers over a limit.
    pub limits: AtomicU64,
    /// Calls skipped because the breaker was open.
    pub skipped: AtomicU64,
}

impl Counters {
    /// Counts one failure.
    pub fn count(&self, kind: &FailureKind) {
        let c = match kind {
            FailureKind::BreakerOpen => return add(&self.skipped),
            FailureKind::Timeout | FailureKind::OutOfFuel => &self.timeouts,
            FailureKind::Memory => &self.memory,
            FailureKind::Trap(_) | FailureKind::Instantiate(_) => &self.traps,
            FailureKind::Denied(_) => &self.denied,
            FailureKind::Limit(_) => &self.limits,
        };
        add(c);
        add(&self.failures);
    }
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug)]
struct State {
    failures: VecDeque<Instant>,
    open_until: Option<Instant>,
    backoff: Duration,
}

/// Opens after `failures` failures within `window`; stays open for a backoff that doubles
/// on each reopen (up to `max_backoff`); the first success after it closes resets it.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
    /// True while `state.open_until` is set (written under the lock). Calls check it first,
    /// so a closed breaker, the usual case, costs no lock and no clock read per call; a
    /// call racing with the trip may still run, as it could have just before it.
    open: AtomicBool,
}

/// What [`Breaker::record_failure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    /// Still closed.
    No,
    /// Opened now, for this long.
    Opened(Duration),
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        let backoff = config.backoff;
        Breaker {
            config,
            state: Mutex::new(State {
                failures: VecDeque::new(),
                open_until: None,
                backoff,
            }),
            open: AtomicBool::new(false),
        }
    }

    /// True when calls may run now (reads the clock only when the breaker has opened).
    pub fn allows_now(&self) -> bool {
        !self.open.load(Ordering::Acquire) || self.allows(Instant::now())
    }

    /// True when calls may run at `now`.
    pub fn allows(&self, now: Instant) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.open_until.is_none_or(|t| now >= t)
    }

    /// Records a failure at `now`.
    pub fn record_failure(&self, now: Instant) -> Tripped {
        if self.config.failures == 0 {
            return Tripped::No;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.config.window;
        while s
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            s.failures.pop_front();
        }
        s.failures.push_back(now);
        if s.failures.len() as u32 >= self.config.failures {
            let period = s.backoff;
            s.open_until = Some(now + period);
            self.open.store(true, Ordering::Release);
            s.backoff = (period * 2).min(self.config.max_backoff);
            s.failures.clear();
            return Tripped::Opened(period);
        }
        Tripped::No
    }

    /// Records a success: a half-open breaker closes and its backoff resets.
    pub fn record_success(&self) {
        if !self.open.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.open_until.is_some() {
            s.open_until = None;
            s.backoff = self.config.backoff;
        }
        self.open.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failures: 3,
            window: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
        }
    }

    #[test]
    fn the_lock_free_check_follows_trips_and_the_closing_success() {
        let b = Breaker::new(cfg());
        b.record_success();
        assert!(b.allows_now(), "closed");
        let now = Instant::now();
        for _ in 0..3 {
            b.record_failure(now);
        }
        assert!(!b.allows_now(), "open: the backoff (1 s) has not passed");
        b.record_success();
        assert!(b.allows_now(), "a success closes it");
        assert!(b.allows(now), "closed for every clock reading");
        // The backoff was reset too: the next trip opens for the first period again.
        for _ in 0..2 {
            b.record_failure(now);
        }
        assert_eq!(
            b.record_failure(now),
            Tripped::Opened(Duration::from_secs(1))
        );
    }

    #[test]
    fn opens_after_n_failures_in_window_and_backs_off() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        assert_eq!(b.record_failure(t0), Tripped::No);
        assert_eq!(b.record_failure(t0), Tripped::No);
        assert_eq!(
            b.record_failure(t0),
            Tripped::Opened(Duration::from_secs(1))
        );
        assert!(!b.allows(t0));
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.allows(t1), "half-open after the backoff");
        for _ in 0..2 {
            b.record_failure(t1);
        }
        assert_eq!(
            b.record_failure(t1),
            Tripped::Opened(Duration::from_secs(2)),
            "backoff doubles"
        );
        let t2 = t1 + Duration::from_secs(2);
        for _ in 0..2 {
            b.record_failure(t2);
        }
        assert_eq!(
            b.record_failure(t2),
            Tripped::Opened(Duration::from_secs(4))
        );
        let t3 = t2 + Duration::from_secs(4);
        for _ in 0..2 {
            b.record_failure(t3);
        }
        assert_eq!(
            b.record_failure(t3),
            Tripped::Opened(Duration::from_secs(4)),
            "capped at max_backoff"
        );
        b.record_success();
        assert!(b.allows(t3));
        for _ in 0..2 {
            b.record_failure(t3);
        }
        assert_eq!(
            b.record_failure(t3),
            Tripped::Opened(Duration::from_secs(1)),
            "success resets the backoff"
        );
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        b.record_failure(t0);
        b.record_failure(t0);
        assert_eq!(b.record_failure(t0 + Duration::from_secs(11)), Tripped::No);
        assert!(b.allows(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn zero_failures_disables() {
        let b = Breaker::new(BreakerConfig {
            failures: 0,
            ..cfg()
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(b.record_failure(t0), Tripped::No);
        }
        assert!(b.allows(t0));
    }

    #[test]
    fn classify_denied_and_traps() {
        let e = wasmtime::Error::new(Denied::Capability("kv"));
        assert!(matches!(FailureKind::classify(&e), FailureKind::Denied(s) if s.contains("kv")));
        let e = wasmtime::Error::new(wasmtime::Trap::Interrupt);
        assert_eq!(FailureKind::classify(&e), FailureKind::Timeout);
        let e = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached);
        assert!(matches!(FailureKind::classify(&e), FailureKind::Trap(_)));
        let e = wasmtime::Error::msg("plugins have no stderr").context("error while executing");
        assert_eq!(
            FailureKind::classify(&e),
            FailureKind::Trap("plugins have no stderr".into()),
            "the root cause, not the outer context"
        );
    }
}

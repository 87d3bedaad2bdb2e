//! `faulty`: a milter-filter test plugin that misbehaves on purpose so tests can check the
//! host's sandbox limits and `on_error` policies.
//!
//! Subscribes to every stage (body mode `chunks`). Settings (capability `config`):
//!
//! * `mode` (default `ok`):
//!   * `trap` – panics (with `panic = "abort"` this is a wasm trap);
//!   * `loop` – loops forever (until the host's epoch/fuel limit interrupts it);
//!   * `alloc` – allocates 1 MiB blocks and touches every page until the memory limit stops it;
//!   * `big-edit` – at end of message returns an add-header edit with a 2 MiB value;
//!   * `many-edits` – at end of message returns 10,000 add-header edits;
//!   * `log-flood` – writes 100,000 log lines of 1 KiB (needs the `log` grant);
//!   * `ungranted` – calls `kv::get` (the test config does not grant `kv`, so this traps);
//!   * `ok` – behaves: adds `X-Faulty: ok` at end of message.
//! * `stage` (default `end-of-message`): where `trap`, `loop`, `alloc`, `log-flood` and
//!   `ungranted` happen. `big-edit`, `many-edits` and `ok` always act at end of message.

use std::hint::black_box;

use wasmail_plugin_sdk::milter::prelude::*;

/// Size of the `big-edit` header value.
const BIG_EDIT_BYTES: usize = 2 << 20;
/// Number of `many-edits` edits.
const MANY_EDITS: usize = 10_000;
/// Number and size of `log-flood` lines.
const LOG_LINES: usize = 100_000;
const LOG_LINE_BYTES: usize = 1024;

/// The misbehaviours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Trap,
    Loop,
    Alloc,
    BigEdit,
    ManyEdits,
    LogFlood,
    Ungranted,
    Ok,
}

impl Mode {
    /// Parses a mode name (unknown names behave like `ok`).
    fn parse(name: &str) -> Mode {
        match name.trim().to_ascii_lowercase().as_str() {
            "trap" => Mode::Trap,
            "loop" => Mode::Loop,
            "alloc" => Mode::Alloc,
            "big-edit" => Mode::BigEdit,
            "many-edits" => Mode::ManyEdits,
            "log-flood" => Mode::LogFlood,
            "ungranted" => Mode::Ungranted,
            _ => Mode::Ok,
        }
    }
}

struct Faulty;

impl Filter for Faulty {
    fn describe() -> Description {
        Description::new(
            "faulty",
            env!("CARGO_PKG_VERSION"),
            &Stage::ALL,
            BodyMode::Chunks,
        )
    }

    fn on_connect(_client: Client) -> Verdict {
        at(Stage::Connect)
    }

    fn on_helo(_name: String) -> Verdict {
        at(Stage::Helo)
    }

    fn on_mail_from(_sender: Envelope) -> Verdict {
        at(Stage::MailFrom)
    }

    fn on_rcpt(_recipient: Envelope) -> Verdict {
        at(Stage::Rcpt)
    }

    fn on_headers(_headers: Vec<Header>) -> Verdict {
        at(Stage::Headers)
    }

    fn on_end_of_headers() -> Verdict {
        at(Stage::EndOfHeaders)
    }

    fn on_body_chunk(_chunk: Vec<u8>, _truncated: bool) -> Verdict {
        at(Stage::Body)
    }

    fn on_end_of_message() -> Outcome {
        at(Stage::EndOfMessage);
        Outcome::continue_with(end_edits(mode()))
    }
}

wasmail_plugin_sdk::export_filter!(Faulty);

fn mode() -> Mode {
    Mode::parse(&config::get_or("mode", "ok"))
}

/// Misbehaves when `stage` is the configured one.
fn at(stage: Stage) -> Verdict {
    let configured = config::get("stage")
        .and_then(|s| Stage::from_name(&s))
        .unwrap_or(Stage::EndOfMessage);
    if configured == stage {
        misbehave(mode());
    }
    Verdict::Continue
}

/// The stage-bound misbehaviours.
fn misbehave(mode: Mode) {
    match mode {
        Mode::Trap => panic!("faulty: trap"),
        Mode::Loop => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        Mode::Alloc => {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut block = vec![0u8; 1 << 20];
                for i in (0..block.len()).step_by(4096) {
                    block[i] = 1;
                }
                blocks.push(black_box(block));
            }
        }
        Mode::LogFlood => {
            let line = "x".repeat(LOG_LINE_BYTES);
            for _ in 0..LOG_LINES {
                log::info(black_box(&line));
            }
        }
        Mode::Ungranted => {
            black_box(kv::get("faulty"));
        }
        Mode::BigEdit | Mode::ManyEdits | Mode::Ok => {}
    }
}

/// The edits at end of message.
fn end_edits(mode: Mode) -> Vec<Edit> {
    match mode {
        Mode::BigEdit => vec![Edit::add_header("X-Faulty-Big", "x".repeat(BIG_EDIT_BYTES))],
        Mode::ManyEdits => (0..MANY_EDITS)
            .map(|i| Edit::add_header("X-Faulty-Many", i.to_string()))
            .collect(),
        Mode::Ok => vec![Edit::add_header("X-Faulty", "ok")],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(Mode::parse("trap"), Mode::Trap);
        assert_eq!(Mode::parse(" Big-Edit "), Mode::BigEdit);
        assert_eq!(Mode::parse("nonsense"), Mode::Ok);
    }

    #[test]
    fn edits() {
        assert_eq!(
            end_edits(Mode::Ok),
            vec![Edit::add_header("X-Faulty", "ok")]
        );
        assert_eq!(end_edits(Mode::ManyEdits).len(), MANY_EDITS);
        match &end_edits(Mode::BigEdit)[..] {
            [Edit::AddHeader(h)] => assert_eq!(h.value.len(), BIG_EDIT_BYTES),
            other => panic!("unexpected {other:?}"),
        }
        assert!(end_edits(Mode::Trap).is_empty());
    }
}

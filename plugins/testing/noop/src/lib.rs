//! `noop`: a milter-filter test plugin for benchmarks. It subscribes to every stage with body
//! mode `chunks` and answers `continue` everywhere, with an empty outcome at end of message.
//! It allocates nothing beyond what the ABI needs (the description and the arguments).

use wasmail_plugin_sdk::milter::prelude::*;

struct Noop;

impl Filter for Noop {
    fn describe() -> Description {
        Description::new(
            "noop",
            env!("CARGO_PKG_VERSION"),
            &Stage::ALL,
            BodyMode::Chunks,
        )
    }
}

wasmail_plugin_sdk::export_filter!(Noop);

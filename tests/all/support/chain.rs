//! Driving milter plugins through the real host without an MTA: a runtime for the
//! capabilities, a chain runner over loaded plugins, and outcome helpers.

use std::sync::Arc;

use wasmail::host::milter::WasmFilter;
use wasmail::host::set::PluginHost;
use wasmail::milter_service::chain::{
    ChainRunner, Edit, NoDomainChains, Outcome, Stage, StagePlugin,
};

/// A shared multi-threaded runtime (the `auth` and `send` capabilities need one).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A chain runner over the loaded milter plugins `chain` (global chain, no domains).
pub fn runner(host: &Arc<PluginHost>, chain: &[&str]) -> ChainRunner {
    let plugins = chain
        .iter()
        .map(|n| {
            Box::new(WasmFilter::new(host.clone(), n, None).expect("milter plugin"))
                as Box<dyn StagePlugin>
        })
        .collect();
    ChainRunner::new(plugins, Box::new(NoDomainChains))
}

/// The end-of-message outcome; fails the test when the message stopped earlier.
#[track_caller]
pub fn eom(outcomes: &[(Stage, Outcome)]) -> &Outcome {
    let (stage, o) = outcomes.last().expect("some outcome");
    assert_eq!(
        *stage,
        Stage::EndOfMessage,
        "the message did not reach end of message: {outcomes:?}"
    );
    o
}

/// The value of the first added header called `name`.
pub fn header_edit<'a>(o: &'a Outcome, name: &str) -> Option<&'a str> {
    o.edits.iter().find_map(|e| match e {
        Edit::AddHeader { name: n, value } if n.eq_ignore_ascii_case(name) => Some(value.as_str()),
        _ => None,
    })
}

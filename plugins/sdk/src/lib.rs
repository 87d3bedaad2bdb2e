//! Guest-side SDK for wasmail plugins.
//!
//! A wasmail plugin is a WebAssembly component built for `wasm32-wasip2` against one of the
//! four worlds of the `wasmail:plugin@0.1.0` ABI (`wit/plugin.wit` at the repository root).
//! This crate is a thin layer over the [`wit_bindgen`] bindings of those worlds:
//!
//! | world           | module      | trait you implement | export macro          |
//! |-----------------|-------------|---------------------|-----------------------|
//! | `milter-filter` | [`milter`]  | [`milter::Filter`]  | [`export_filter!`]    |
//! | `table`         | [`table`]   | [`table::Table`]    | [`export_table!`]     |
//! | `policy`        | [`policy`]  | [`policy::Policy`]  | [`export_policy!`]    |
//! | `mail-hook`     | [`hook`]    | [`hook::Hook`]      | [`export_hook!`]      |
//!
//! The capability imports shared by the worlds have small wrappers at the crate root:
//! [`log`], [`config`], [`kv`] and [`send`]. The milter-only capabilities are
//! [`milter::message`] and [`milter::auth`]. Every capability call traps unless the operator
//! granted the capability to the plugin (`[plugin.NAME] grants = [...]`).
//!
//! A minimal milter plugin:
//!
//! ```ignore
//! use wasmail_plugin_sdk::milter::prelude::*;
//!
//! struct Tagger;
//!
//! impl Filter for Tagger {
//!     fn describe() -> Description {
//!         Description::new("tagger", "0.1.0", &[Stage::EndOfMessage], BodyMode::None)
//!     }
//!
//!     fn on_end_of_message() -> Outcome {
//!         Outcome::continue_with(vec![Edit::add_header("X-Tagged", "yes")])
//!     }
//! }
//!
//! wasmail_plugin_sdk::export_filter!(Tagger);
//! ```
//!
//! # State
//!
//! The host creates a fresh component instance for every SMTP transaction (milter), lookup
//! (table), policy request (policy) or hook event (mail-hook), so guest memory lives exactly
//! that long. Per-transaction state can therefore be kept in plain statics; see [`state`] and
//! [`instance_state!`].
//!
//! # Native builds
//!
//! The crate also compiles for the host target so that plugins can unit-test their pure logic
//! with `cargo test --target x86_64-unknown-linux-gnu`. Capability calls are not available
//! there (they panic), and the export macros expand to nothing outside `wasm32`.

#![warn(missing_docs)]

pub mod addr;
pub mod config;
pub mod hook;
pub mod kv;
pub mod log;
pub mod milter;
pub mod policy;
pub mod send;
pub mod state;
pub mod table;

/// Shared ABI types (`wasmail:plugin/types`): [`Header`](types::Header) and
/// [`Level`](types::Level).
pub mod types {
    pub use crate::milter::wasmail::plugin::types::{Header, Level};

    impl Header {
        /// Creates a header from a name and a value.
        pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
            Header {
                name: name.into(),
                value: value.into(),
            }
        }

        /// True when the header's name equals `name`, ignoring ASCII case.
        pub fn is(&self, name: &str) -> bool {
            self.name.eq_ignore_ascii_case(name)
        }
    }
}

/// Re-export of the `wit-bindgen` runtime the generated code uses (for advanced use only).
#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Exports a type implementing [`milter::Filter`] as the plugin's `filter` interface
/// (world `milter-filter`). Use it once per plugin crate, at module level.
///
/// Outside `wasm32` this expands to nothing, so plugin crates also build natively for tests.
#[macro_export]
macro_rules! export_filter {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::milter::export!($ty with_types_in $crate::milter);
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn __wasmail_assert_filter<T: $crate::milter::Filter>() {}
            let _ = __wasmail_assert_filter::<$ty>;
        };
    };
}

/// Exports a type implementing [`table::Table`] as the plugin's `lookup` interface
/// (world `table`). Use it once per plugin crate, at module level.
///
/// Outside `wasm32` this expands to nothing, so plugin crates also build natively for tests.
#[macro_export]
macro_rules! export_table {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::table::export!($ty with_types_in $crate::table);
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn __wasmail_assert_table<T: $crate::table::Table>() {}
            let _ = __wasmail_assert_table::<$ty>;
        };
    };
}

/// Exports a type implementing [`policy::Policy`] as the plugin's `access` interface
/// (world `policy`). Use it once per plugin crate, at module level.
///
/// Outside `wasm32` this expands to nothing, so plugin crates also build natively for tests.
#[macro_export]
macro_rules! export_policy {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::policy::export!($ty with_types_in $crate::policy);
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn __wasmail_assert_policy<T: $crate::policy::Policy>() {}
            let _ = __wasmail_assert_policy::<$ty>;
        };
    };
}

/// Exports a type implementing [`hook::Hook`] as the plugin's `hook` interface
/// (world `mail-hook`). Use it once per plugin crate, at module level.
///
/// Outside `wasm32` this expands to nothing, so plugin crates also build natively for tests.
#[macro_export]
macro_rules! export_hook {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::hook::export!($ty with_types_in $crate::hook);
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn __wasmail_assert_hook<T: $crate::hook::Hook>() {}
            let _ = __wasmail_assert_hook::<$ty>;
        };
    };
}

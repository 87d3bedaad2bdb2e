//! Per-instance state.
//!
//! The host creates a fresh component instance for every SMTP transaction (milter-filter),
//! lookup (table), policy request (policy) and hook event (mail-hook), and drops it afterwards.
//! Guest memory, including statics, therefore lives exactly as long as one transaction and is
//! never shared with another message or tenant. (For later messages of one SMTP connection the
//! host replays `on_connect`/`on_helo` into the new instance, so connection data is available
//! again in every transaction.) Anything that must outlive the instance goes to [`kv`](crate::kv).
//!
//! A component instance is single-threaded, so state is kept in a `thread_local!` `RefCell`;
//! [`instance_state!`](crate::instance_state) declares one:
//!
//! ```
//! wasmail_plugin_sdk::instance_state! {
//!     /// The envelope sender of this transaction.
//!     static SENDER: String = String::new();
//! }
//!
//! SENDER.set("alice@example.com".to_string());
//! SENDER.with_borrow_mut(|s| s.make_ascii_uppercase());
//! assert_eq!(SENDER.with_borrow(|s| s.clone()), "ALICE@EXAMPLE.COM");
//! let taken = SENDER.take();
//! assert_eq!(taken, "ALICE@EXAMPLE.COM");
//! ```
//!
//! The declared static is a [`std::thread::LocalKey`] of a [`RefCell`](std::cell::RefCell), so
//! `with_borrow`, `with_borrow_mut`, `set`, `take` and `replace` are available.

/// Declares per-instance state: `static NAME: Type = init;` becomes a `thread_local!`
/// `RefCell<Type>` initialised lazily with `init`. See the [module docs](crate::state).
#[macro_export]
macro_rules! instance_state {
    ($($(#[$attr:meta])* $vis:vis static $name:ident : $ty:ty = $init:expr;)+) => {
        ::std::thread_local! {
            $($(#[$attr])* $vis static $name: ::std::cell::RefCell<$ty> =
                ::std::cell::RefCell::new($init);)+
        }
    };
}

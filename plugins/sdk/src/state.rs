//! Per-transaction state.
//!
//! The host runs a plugin in a component instance per SMTP transaction (milter-filter),
//! lookup (table), policy request (policy) and hook event (mail-hook). For milter-filter
//! plugins the operator may let an instance serve several transactions one after another
//! (`[plugin.NAME] instance_reuse`, for speed); values declared with
//! [`instance_state!`](crate::instance_state) are reset to their initial value at the end of
//! every transaction (after `on_end_of_message` or `on_abort` returns), so they live exactly
//! as long as one transaction either way and are never shared with another message or
//! tenant. Plain `static`s and `thread_local!`s are *not* reset: use them only for what may
//! outlive a transaction (a parsed configuration, for example). For later messages of one
//! SMTP connection the host replays `on_connect`/`on_helo` first, so connection data is
//! available again in every transaction. Anything that must outlive the instance goes to
//! [`kv`](crate::kv).
//!
//! A component instance is single-threaded, so state is kept in a `thread_local!` `RefCell`;
//! [`instance_state!`](crate::instance_state) declares one and registers its reset:
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
//! wasmail_plugin_sdk::state::end_transaction();
//! assert_eq!(SENDER.with_borrow(|s| s.clone()), "");
//! ```
//!
//! The declared value is an [`InstanceState`] with `with_borrow`, `with_borrow_mut`, `set`,
//! `take` and `replace`, like a `thread_local!` `RefCell`.

use std::cell::RefCell;
use std::thread::LocalKey;

thread_local! {
    /// The resets of the `instance_state!` values used in this transaction.
    static RESETS: RefCell<Vec<fn()>> = const { RefCell::new(Vec::new()) };
}

/// Resets every [`instance_state!`](crate::instance_state) value to its initial value (the
/// initialiser runs again at the next use). The SDK calls this after `on_end_of_message`
/// and `on_abort`; call it yourself only to start over within a transaction.
pub fn end_transaction() {
    let resets = RESETS.with_borrow_mut(std::mem::take);
    for reset in resets {
        reset();
    }
}

/// One value declared with [`instance_state!`](crate::instance_state): a thread-local
/// `RefCell` that is initialised at its first use in a transaction and emptied at the end
/// of the transaction.
pub struct InstanceState<T: 'static> {
    cell: &'static LocalKey<RefCell<Option<T>>>,
    init: fn() -> T,
    reset: fn(),
}

impl<T: 'static> InstanceState<T> {
    #[doc(hidden)]
    pub const fn __new(
        cell: &'static LocalKey<RefCell<Option<T>>>,
        init: fn() -> T,
        reset: fn(),
    ) -> Self {
        InstanceState { cell, init, reset }
    }

    fn with_cell<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        self.cell.with(|c| {
            if c.borrow().is_none() {
                // The initialiser may use other instance state: no borrow is held here.
                let value = (self.init)();
                *c.borrow_mut() = Some(value);
                RESETS.with_borrow_mut(|r| r.push(self.reset));
            }
            let mut slot = c.borrow_mut();
            f(slot.as_mut().expect("initialised above"))
        })
    }

    /// Runs `f` with a shared reference to the value.
    pub fn with_borrow<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        self.with_cell(|v| f(v))
    }

    /// Runs `f` with a mutable reference to the value.
    pub fn with_borrow_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        self.with_cell(f)
    }

    /// Replaces the value.
    pub fn set(&self, value: T) {
        self.with_cell(|v| *v = value);
    }

    /// Replaces the value, returning the old one.
    pub fn replace(&self, value: T) -> T {
        self.with_cell(|v| std::mem::replace(v, value))
    }

    /// Takes the value, leaving `T::default()`.
    pub fn take(&self) -> T
    where
        T: Default,
    {
        self.with_cell(std::mem::take)
    }
}

/// Declares per-transaction state: `static NAME: Type = init;` becomes an
/// [`InstanceState`] initialised with `init` at its first use in a transaction and reset at
/// the end of every transaction. See the [module docs](crate::state).
#[macro_export]
macro_rules! instance_state {
    ($($(#[$attr:meta])* $vis:vis static $name:ident : $ty:ty = $init:expr;)+) => {
        $(
            $(#[$attr])*
            $vis const $name: $crate::state::InstanceState<$ty> = {
                ::std::thread_local! {
                    static CELL: ::std::cell::RefCell<::std::option::Option<$ty>> =
                        const { ::std::cell::RefCell::new(::std::option::Option::None) };
                }
                $crate::state::InstanceState::__new(
                    &CELL,
                    || $init,
                    || CELL.with_borrow_mut(|v| *v = ::std::option::Option::None),
                )
            };
        )+
    };
}

#[cfg(test)]
mod tests {
    use super::end_transaction;

    crate::instance_state! {
        static COUNT: u32 = 7;
        static LIST: Vec<u32> = vec![COUNT.with_borrow(|c| *c)];
    }

    #[test]
    fn values_start_over_after_each_transaction() {
        // `set` as the very first use still registers the reset.
        COUNT.set(1);
        LIST.with_borrow_mut(|l| l.push(2));
        assert_eq!(LIST.with_borrow(Clone::clone), vec![1, 2]);
        end_transaction();
        assert_eq!(COUNT.with_borrow(|c| *c), 7);
        assert_eq!(LIST.take(), vec![7]);
        assert_eq!(COUNT.replace(3), 7);
        end_transaction();
        assert_eq!(COUNT.with_borrow(|c| *c), 7);
        // An empty transaction resets nothing and breaks nothing.
        end_transaction();
        end_transaction();
        assert_eq!(LIST.with_borrow(Clone::clone), vec![7]);
    }
}

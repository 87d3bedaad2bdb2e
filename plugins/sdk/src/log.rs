//! Capability `log`: write lines to wasmail's log, tagged with the plugin's name.
//!
//! Needs the `log` grant. The host caps the size of a line and the number of lines per
//! instance (further lines are dropped and counted).
//!
//! ```ignore
//! use wasmail_plugin_sdk::log;
//! log::info("checking message");
//! log::warn!("sender {} is over its limit ({} > {})", sender, count, limit);
//! ```

pub use crate::types::Level;

use crate::milter::wasmail::plugin::log as raw;

/// Writes one log line at `level`.
pub fn write(level: Level, message: &str) {
    raw::write(level, message);
}

/// Writes one line at level `trace`.
pub fn trace(message: &str) {
    write(Level::Trace, message);
}

/// Writes one line at level `debug`.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// Writes one line at level `info`.
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Writes one line at level `warn`.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// Writes one line at level `error`.
pub fn error(message: &str) {
    write(Level::Error, message);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wasmail_log {
    ($level:ident, $($arg:tt)+) => {
        $crate::log::write($crate::log::Level::$level, &::std::format!($($arg)+))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wasmail_log_trace {
    ($($arg:tt)+) => { $crate::__wasmail_log!(Trace, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wasmail_log_debug {
    ($($arg:tt)+) => { $crate::__wasmail_log!(Debug, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wasmail_log_info {
    ($($arg:tt)+) => { $crate::__wasmail_log!(Info, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wasmail_log_warn {
    ($($arg:tt)+) => { $crate::__wasmail_log!(Warn, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wasmail_log_error {
    ($($arg:tt)+) => { $crate::__wasmail_log!(Error, $($arg)+) };
}

/// `log::trace!("fmt", args...)`: formats and writes one line at level `trace`.
#[doc(inline)]
pub use crate::__wasmail_log_trace as trace;

/// `log::debug!("fmt", args...)`: formats and writes one line at level `debug`.
#[doc(inline)]
pub use crate::__wasmail_log_debug as debug;

/// `log::info!("fmt", args...)`: formats and writes one line at level `info`.
#[doc(inline)]
pub use crate::__wasmail_log_info as info;

/// `log::warn!("fmt", args...)`: formats and writes one line at level `warn`.
#[doc(inline)]
pub use crate::__wasmail_log_warn as warn;

/// `log::error!("fmt", args...)`: formats and writes one line at level `error`.
#[doc(inline)]
pub use crate::__wasmail_log_error as error;

//! Capability `kv`: a persistent key/value store with TTLs and a byte quota, private to the
//! plugin within its tenant (domain).
//!
//! Needs the `kv` grant. Values are bytes; the helpers here add text convenience.

pub use crate::milter::wasmail::plugin::kv::KvError;

use crate::milter::wasmail::plugin::kv as raw;

/// The value stored under `key`, if any and not expired.
pub fn get(key: &str) -> Option<Vec<u8>> {
    raw::get(key)
}

/// The value under `key` as UTF-8 text (invalid bytes replaced), if any and not expired.
pub fn get_string(key: &str) -> Option<String> {
    get(key).map(|v| match String::from_utf8(v) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// True when `key` holds a value that has not expired.
pub fn exists(key: &str) -> bool {
    get(key).is_some()
}

/// Stores `value` under `key`, expiring after `ttl_seconds` (`None` = never).
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl_seconds: Option<u32>) -> Result<(), KvError> {
    raw::set(key, value.as_ref(), ttl_seconds)
}

/// Adds `delta` to the signed 64-bit counter under `key` (missing = 0) and returns the new
/// value; `ttl_seconds` applies when the key is created, so a counter created with a TTL is a
/// fixed window that starts at its first increment.
pub fn increment(key: &str, delta: i64, ttl_seconds: Option<u32>) -> Result<i64, KvError> {
    raw::increment(key, delta, ttl_seconds)
}

/// Removes `key`; true when it existed.
pub fn delete(key: &str) -> bool {
    raw::delete(key)
}

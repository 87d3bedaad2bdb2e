//! Integration tests: lookup.

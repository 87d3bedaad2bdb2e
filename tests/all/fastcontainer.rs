//! Integration tests: fastcontainer.

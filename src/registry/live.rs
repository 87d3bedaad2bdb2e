//! Live registry snapshot (filled in by the registry work).

/// Placeholder.
#[derive(Debug)]
pub struct Live;

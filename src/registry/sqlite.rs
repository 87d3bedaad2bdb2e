//! SQLite backend (filled in).

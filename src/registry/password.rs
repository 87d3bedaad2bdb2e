//! Password hashing (filled in).

//! Sendmail milter protocol v6: sans-IO codec (placeholder, filled in by the milter work).

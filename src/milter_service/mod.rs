//! milter_service (placeholder; see the issue that builds it).

//! Integration tests: milter_service.

//! `[lookup]` configuration section.

use serde::Deserialize;

/// Raw `[lookup]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupSection {}

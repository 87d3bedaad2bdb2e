//! `[policy]` configuration section.

use serde::Deserialize;

/// Raw `[policy]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {}

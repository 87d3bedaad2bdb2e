//! `[admin]` configuration section.

use serde::Deserialize;

/// Raw `[admin]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {}

//! `[plugins]` configuration section.

use serde::Deserialize;

/// Raw `[plugins]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {}

//! `[registry]` configuration section.

use serde::Deserialize;

/// Raw `[registry]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {}

//! `[fastcontainer]` configuration section.

use serde::Deserialize;

/// Raw `[fastcontainer]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastContainerSection {}

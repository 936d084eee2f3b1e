//! Where a service's tasks may go: the rules and preferences a spec gives
//! for choosing nodes (the expressions themselves are `crate::placement`'s).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::is_default;
use crate::placement::{Affinity, Constraint, Spread};

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Rules and preferences for choosing nodes.
pub struct PlacementSpec {
    #[serde(default, skip_serializing_if = "is_default")]
    pub strategy: Strategy,
    /// Every one must hold on a node for a task to be placed there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// Preferences, weighed against each other and the strategy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinities: Vec<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<Spread>,
}

impl PlacementSpec {
    pub fn is_empty(&self) -> bool {
        *self == PlacementSpec::default()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Fill the fullest node that fits first, leaving whole nodes free.
    #[default]
    Binpack,
    /// Prefer the emptiest node.
    Spread,
}

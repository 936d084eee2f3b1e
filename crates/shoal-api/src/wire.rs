//! Bodies on the wire. Listings are JSON arrays of these. By resource:
//! `apps`, `nodes`, `security`, `images`; every type is named here.

mod apps;
mod images;
mod nodes;
mod security;

pub use apps::*;
pub use images::*;
pub use nodes::*;
pub use security::*;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal_types::FieldError;

/// Every error answer: a message for people, and for a rejected spec the
/// fields at fault.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<FieldErrorSchema>")]
    pub errors: Vec<FieldError>,
}

#[derive(JsonSchema)]
#[allow(dead_code)]
struct FieldErrorSchema {
    path: String,
    message: String,
}

//! What one task may use (cpu and memory), in the quantities a spec stores:
//! millicores and bytes, read from the forms users write.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::quantity::{parse_cpu_millis, parse_memory_bytes};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Limits (and, for the scheduler, requests) of one task.
pub struct Resources {
    /// Cores as a number (`0.5`) or millicores as a string (`"500m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Millicores>,
    /// Bytes as a number or with a unit (`"64Mi"`, `"1G"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
}

/// A cpu quantity in millicores; printed as `"250m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millicores(pub u64);

/// A memory quantity in bytes; printed as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Bytes(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for Millicores {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = match NumberOrText::deserialize(deserializer)? {
            NumberOrText::Number(cores) => cores.to_string(),
            NumberOrText::Text(text) => text,
        };
        parse_cpu_millis(&text)
            .map(Millicores)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Millicores {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}m", self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = match NumberOrText::deserialize(deserializer)? {
            NumberOrText::Number(bytes) => bytes.to_string(),
            NumberOrText::Text(text) => text,
        };
        parse_memory_bytes(&text)
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Millicores {
    fn schema_name() -> Cow<'static, str> {
        "Millicores".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Cores as a number (0.5) or millicores as a string (\"500m\").",
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": "^([0-9]+m|[0-9]+(\\.[0-9]+)?)$"}
            ]
        })
    }
}

impl JsonSchema for Bytes {
    fn schema_name() -> Cow<'static, str> {
        "Bytes".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Bytes as a number or a string with a unit (\"64Mi\", \"1G\").",
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(k|K|M|G|T|Ki|Mi|Gi|Ti)?$"}
            ]
        })
    }
}

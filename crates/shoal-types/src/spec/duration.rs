//! Durations in a spec: stored as milliseconds, written and printed as
//! `"500ms"`, `"10s"`, `"1m 30s"`.

use std::borrow::Cow;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in milliseconds; written and printed as `"1s"`, `"500ms"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub u64);

impl Millis {
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }

    /// Reads `"500ms"`, `"10s"`, `"1m 30s"`; the error says how to write one.
    pub fn parse(text: &str) -> Result<Millis, String> {
        let duration = humantime::parse_duration(text).map_err(|error| {
            format!("`{text}` is not a duration ({error}); write e.g. \"500ms\", \"10s\", \"1m\"")
        })?;
        u64::try_from(duration.as_millis())
            .map(Millis)
            .map_err(|_| format!("duration `{text}` is too long"))
    }
}

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.as_duration()))
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Millis::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl JsonSchema for Millis {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration such as \"500ms\", \"10s\", \"1m 30s\".",
            "type": "string"
        })
    }
}

//! How a change of a service's spec rolls out: batch by batch, each new
//! task healthy for a while before the next batch, with what to do when
//! new tasks fail. Docker Swarm's `update_config` names, so compose files
//! map onto it.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Kind, Millis, ServiceSpec};

/// A service's rolling update. Every field has a default, so `update: {}`
/// and no `update` at all roll out alike: one task at a time, the new one
/// started first and healthy for 5s before the old one stops, rolled back
/// when a new task fails.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// Tasks replaced at once (default 1; 0: all at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10000))]
    pub parallelism: Option<u32>,
    /// Time between one batch done and the next started (default 0s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Millis>,
    /// `start-first` (the new task runs beside the old one until it has
    /// been healthy for `monitor`; the default) or `stop-first` (the old
    /// one stops first: for tasks that cannot run twice, or no room for
    /// both). A global service always stops first: a node runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<UpdateOrder>,
    /// How long a new task must stay healthy (running, for a service
    /// without a check) before its batch is done (default 5s). A new task
    /// that fails, restarts or turns unhealthy before then has failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<Millis>,
    /// What a failed update does: `rollback` to the version before (the
    /// default), `pause` (no further batches until the next apply), or
    /// `continue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<FailureAction>,
    /// Share of the new tasks that may fail before `failure_action` is
    /// taken, from 0 (the default: the first failure) to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_ratio: Option<Ratio>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StartFirst,
    StopFirst,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Rollback,
    Pause,
    Continue,
}

impl FailureAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureAction::Rollback => "rollback",
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
        }
    }
}

/// A share from 0 to 1, kept in thousandths so that a spec compares and
/// stores exactly; written as a number (`0.25`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ratio(pub u16);

/// The thousandths in one whole.
pub const RATIO_ONE: u16 = 1000;

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if !(0.0..=1.0).contains(&value) {
            return Err(serde::de::Error::custom(format!(
                "must be a share from 0 to 1 (0.2 for one in five), got {value}"
            )));
        }
        Ok(Ratio((value * f64::from(RATIO_ONE)).round() as u16))
    }
}

impl Serialize for Ratio {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(f64::from(self.0) / f64::from(RATIO_ONE))
    }
}

impl JsonSchema for Ratio {
    fn schema_name() -> Cow<'static, str> {
        "Ratio".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A share from 0 to 1.",
            "type": "number",
            "minimum": 0,
            "maximum": 1
        })
    }
}

/// Tasks replaced at once by default.
const PARALLELISM_DEFAULT: u32 = 1;
/// How long a new task stays healthy by default before its batch is done.
const MONITOR_MS_DEFAULT: u64 = 5_000;
/// Longest `delay` and `monitor` a spec may give.
const UPDATE_TIME_MS_MAX: u64 = 3_600_000;

/// A service's update with every default filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Update {
    /// Tasks replaced at once; `u32::MAX` for all at once.
    pub parallelism: u32,
    pub delay: Millis,
    pub order: UpdateOrder,
    pub monitor: Millis,
    pub failure_action: FailureAction,
    pub max_failure_ratio: Ratio,
}

impl ServiceSpec {
    /// How a change of this service rolls out, defaults filled in. A
    /// global service stops first, as a node runs one of it.
    pub fn update(&self) -> Update {
        let spec = self.update.clone().unwrap_or_default();
        Update {
            parallelism: match spec.parallelism.unwrap_or(PARALLELISM_DEFAULT) {
                0 => u32::MAX,
                n => n,
            },
            delay: spec.delay.unwrap_or(Millis(0)),
            order: match self.kind {
                Kind::Global => UpdateOrder::StopFirst,
                _ => spec.order.unwrap_or_default(),
            },
            monitor: spec.monitor.unwrap_or(Millis(MONITOR_MS_DEFAULT)),
            failure_action: spec.failure_action.unwrap_or_default(),
            max_failure_ratio: spec.max_failure_ratio.unwrap_or_default(),
        }
    }
}

/// Checks a service's `update`. Errors name the field under
/// `at("update…")`.
pub(super) fn validate_update(
    update: &UpdateSpec,
    service: &ServiceSpec,
    at: &impl Fn(&str) -> String,
    fail: &mut impl FnMut(String, String),
) {
    if service.kind == Kind::Batch {
        fail(
            at("update"),
            "a batch job is not rolled out: a changed job's tasks are replaced at once; remove `update`".into(),
        );
    }
    if let Some(parallelism) = update.parallelism {
        if parallelism > super::REPLICAS_MAX {
            fail(
                at("update.parallelism"),
                format!(
                    "at most {} (0 replaces all at once), got {parallelism}",
                    super::REPLICAS_MAX
                ),
            );
        }
    }
    for (field, time) in [("delay", update.delay), ("monitor", update.monitor)] {
        if let Some(time) = time {
            if time.0 > UPDATE_TIME_MS_MAX {
                fail(
                    at(&format!("update.{field}")),
                    format!("at most 1h, got {time}"),
                );
            }
        }
    }
    if service.kind == Kind::Global && update.order == Some(UpdateOrder::StartFirst) {
        fail(
            at("update.order"),
            "a global service runs one task per node, so its old task stops first; use `stop-first` or leave `order` out".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(update: &str) -> ServiceSpec {
        let yaml =
            format!("name: web\nservices: [{{name: a, image: busybox, update: {update}}}]\n");
        crate::parse_app(yaml.as_bytes())
            .expect("parses")
            .services
            .remove(0)
    }

    #[test]
    fn defaults_are_one_at_a_time_start_first_for_5s_then_rollback() {
        let update = service("{}").update();
        assert_eq!(
            update,
            Update {
                parallelism: 1,
                delay: Millis(0),
                order: UpdateOrder::StartFirst,
                monitor: Millis(5_000),
                failure_action: FailureAction::Rollback,
                max_failure_ratio: Ratio(0),
            }
        );
        let update = service(
            "{parallelism: 0, delay: 2s, order: stop-first, monitor: 500ms, failure_action: pause, max_failure_ratio: 0.25}",
        )
        .update();
        assert_eq!(
            update,
            Update {
                parallelism: u32::MAX,
                delay: Millis(2_000),
                order: UpdateOrder::StopFirst,
                monitor: Millis(500),
                failure_action: FailureAction::Pause,
                max_failure_ratio: Ratio(250),
            }
        );
    }

    #[test]
    fn a_spec_with_an_update_reads_back_as_written() {
        let spec = service("{parallelism: 2, max_failure_ratio: 0.1, order: start-first}");
        let json = serde_json::to_string(&spec).expect("writes");
        assert!(
            json.contains(
                r#""update":{"parallelism":2,"order":"start-first","max_failure_ratio":0.1}"#
            ),
            "{json}"
        );
        let back: ServiceSpec = serde_json::from_str(&json).expect("reads");
        assert_eq!(back, spec);
        // No update is written as none.
        let plain = crate::parse_app(b"name: web\nservices: [{name: a, image: busybox}]\n")
            .expect("parses");
        let json = serde_json::to_string(&plain).expect("writes");
        assert!(!json.contains("update"), "{json}");
    }

    #[test]
    fn bad_updates_are_refused_naming_the_field() {
        for (service, field) in [
            (
                "{name: a, image: busybox, update: {monitor: 2h}}",
                "services[0].update.monitor",
            ),
            (
                "{name: a, image: busybox, update: {delay: 90m}}",
                "services[0].update.delay",
            ),
            (
                "{name: a, image: busybox, update: {parallelism: 10001}}",
                "services[0].update.parallelism",
            ),
            (
                "{name: a, image: busybox, kind: batch, update: {}}",
                "services[0].update",
            ),
            (
                "{name: a, image: busybox, kind: global, update: {order: start-first}}",
                "services[0].update.order",
            ),
        ] {
            let yaml = format!("name: web\nservices: [{service}]\n");
            let error = crate::parse_app(yaml.as_bytes()).expect_err(service);
            assert!(error.to_string().contains(field), "{service}: {error}");
        }
        for (update, words) in [
            ("{max_failure_ratio: 1.5}", "from 0 to 1"),
            ("{order: sideways}", "sideways"),
            ("{failure_action: retry}", "retry"),
            ("{parallel: 2}", "parallel"),
        ] {
            let yaml =
                format!("name: web\nservices: [{{name: a, image: busybox, update: {update}}}]\n");
            let error = crate::parse_app(yaml.as_bytes()).expect_err(update);
            assert!(error.to_string().contains(words), "{update}: {error}");
        }
    }
}

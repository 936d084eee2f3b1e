//! The app spec: an app of services, as users write it in YAML or JSON.
//!
//! One type serves as input, stored state and output: quantities are stored
//! normalized (millicores, bytes, milliseconds) and printed back in a form
//! the parser accepts, so `shoal app inspect -o json` can be applied again.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::placement::{check_label_key, Affinity, Constraint, Spread, Toleration};
use crate::placement::{
    AFFINITIES_MAX, AFFINITY_WEIGHT_MAX, CONSTRAINTS_MAX, PRIORITY_MAX, SPREADS_MAX,
    TOLERATIONS_MAX,
};
use crate::quantity::{parse_cpu_millis, parse_memory_bytes};

/// Largest spec body accepted, in bytes (API and CLI alike).
pub const SPEC_BYTES_MAX: usize = 1 << 20;
pub const SERVICES_MAX: usize = 64;
pub const REPLICAS_MAX: u32 = 10_000;
pub const LABELS_MAX: usize = 64;
pub const ENV_MAX: usize = 1024;
pub const ARGS_MAX: usize = 4096;
pub const ARG_BYTES_MAX: usize = 128 << 10;
pub const PORTS_MAX: usize = 64;
pub const CPU_MILLIS_MAX: u64 = 1024 * 1000;
pub const MEMORY_BYTES_MIN: u64 = 4 << 20;
pub const MEMORY_BYTES_MAX: u64 = 16 << 40;
pub const STOP_GRACE_MS_MAX: u64 = 10 * 60 * 1000;
pub const BACKOFF_MS_MAX: u64 = 60 * 60 * 1000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// An app: a named group of services deployed and removed together.
pub struct AppSpec {
    /// DNS label: lowercase letters, digits and `-`, at most 63 characters.
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub services: Vec<ServiceSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// One service: `replicas` identical containers of one image.
pub struct ServiceSpec {
    /// DNS label, unique within the app.
    pub name: String,
    /// Image reference; `busybox` means `docker.io/library/busybox:latest`.
    pub image: String,
    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's cmd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Absolute path; the image's working directory when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserSpec>,
    #[serde(default = "default_replicas", deserialize_with = "de_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: u32,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub restart: RestartSpec,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Time between SIGTERM and SIGKILL when the task stops.
    #[serde(default = "default_grace")]
    pub stop_grace_period: Millis,
    /// Whether the service gets a network (CNI) of its own; on by default.
    #[serde(default = "default_true")]
    pub network: bool,
    /// `service` (keep `replicas` running), `global` (one task on every
    /// node that may run it) or `batch` (run `replicas` tasks to completion).
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: Kind,
    /// 0 to 1000; when the cluster is full, a task may take the place of
    /// tasks of a lower priority, which wait for room elsewhere.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(max = 1000))]
    pub priority: u32,
    #[serde(default, skip_serializing_if = "PlacementSpec::is_empty")]
    pub placement: PlacementSpec,
    /// Taints of nodes this service may run on anyway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `replicas` tasks, replaced when they fail or their node does.
    #[default]
    Service,
    /// One task on every node whose labels and taints allow it, following
    /// nodes as they join and leave; `replicas` is ignored.
    Global,
    /// `replicas` tasks that run to completion: a task that exited with 0
    /// is done and never runs again; a failed one is retried per `restart`.
    Batch,
}

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

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl ServiceSpec {
    /// Whether a task made from `self` can stand for `other`: everything but
    /// the replica count is the same, so scaling never restarts a task.
    pub fn same_task_as(&self, other: &ServiceSpec) -> bool {
        // Every field but `replicas`, named so that a new field cannot be
        // forgotten here (the pattern stops compiling); no clone, as the
        // scheduler asks this of every task in every round.
        let ServiceSpec {
            name,
            image,
            command,
            args,
            env,
            working_dir,
            user,
            replicas: _,
            resources,
            restart,
            labels,
            ports,
            stop_grace_period,
            network,
            kind,
            priority,
            placement,
            tolerations,
        } = self;
        *name == other.name
            && *image == other.image
            && *command == other.command
            && *args == other.args
            && *env == other.env
            && *working_dir == other.working_dir
            && *user == other.user
            && *resources == other.resources
            && *restart == other.restart
            && *labels == other.labels
            && *ports == other.ports
            && *stop_grace_period == other.stop_grace_period
            && *network == other.network
            && *kind == other.kind
            && *priority == other.priority
            && *placement == other.placement
            && *tolerations == other.tolerations
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
}

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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whenever the process exits.
    #[default]
    Always,
    /// Restart only when it exits with a non-zero code.
    OnFailure,
    /// Never restart.
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// When to restart and how long to wait: the delay doubles after each
/// restart, from `backoff_initial` up to `backoff_max`, and starts over once
/// the task has run longer than `backoff_max`.
pub struct RestartSpec {
    /// `always` by default; `on-failure` for batch jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RestartPolicy>,
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial: Millis,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Millis,
    /// Runs of a task at most (the first included); unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub attempts_max: Option<u32>,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

impl RestartSpec {
    pub fn policy(&self) -> RestartPolicy {
        self.policy.unwrap_or_default()
    }
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: None,
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            attempts_max: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// DNS label naming the port (used for SRV records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Publishes the port on this port of the node's addresses. A node
    /// runs at most one task publishing a given port and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
}

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

fn default_replicas() -> u32 {
    1
}
fn default_true() -> bool {
    true
}
fn default_grace() -> Millis {
    Millis(10_000)
}
fn default_backoff_initial() -> Millis {
    Millis(1_000)
}
fn default_backoff_max() -> Millis {
    Millis(60_000)
}

fn de_replicas<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = i64::deserialize(deserializer)?;
    if value < 0 {
        return Err(serde::de::Error::custom(format!(
            "must be ≥ 0, got {value}"
        )));
    }
    if value > i64::from(REPLICAS_MAX) {
        return Err(serde::de::Error::custom(format!(
            "must be ≤ {REPLICAS_MAX}, got {value}"
        )));
    }
    Ok(value as u32)
}

/// A cpu quantity in millicores; printed as `"250m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millicores(pub u64);

/// A memory quantity in bytes; printed as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Bytes(pub u64);

/// A duration in milliseconds; written and printed as `"1s"`, `"500ms"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub u64);

impl Millis {
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

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

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let duration = humantime::parse_duration(&text).map_err(|error| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({error}); write e.g. \"500ms\", \"10s\", \"1m\""
            ))
        })?;
        u64::try_from(duration.as_millis())
            .map(Millis)
            .map_err(|_| serde::de::Error::custom(format!("duration `{text}` is too long")))
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = humantime::format_duration(self.as_duration()).to_string();
        serializer.serialize_str(&text)
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

/// One thing wrong with a spec, at a field path such as `services[0].replicas`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Everything wrong with a spec; a spec with any error changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct SpecError {
    pub errors: Vec<FieldError>,
}

impl SpecError {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            errors: vec![FieldError {
                path: path.into(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            if error.path.is_empty() || error.path == "." {
                write!(f, "{}", error.message)?;
            } else {
                write!(f, "{}: {}", error.path, error.message)?;
            }
        }
        Ok(())
    }
}

/// Parses and validates an app spec from YAML or JSON (native or Stellar's
/// application config), returning it normalized.
pub fn parse_app(body: &[u8]) -> Result<AppSpec, SpecError> {
    if body.len() > SPEC_BYTES_MAX {
        return Err(SpecError::one(
            "",
            format!(
                "spec is {} bytes, more than the limit of {SPEC_BYTES_MAX}; split the app into smaller apps",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|error| SpecError::one("", format!("spec is not UTF-8 text: {error}")))?;
    let value: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|error| SpecError::one("", format!("invalid JSON: {error}")))?
    } else {
        serde_saphyr::from_str(text)
            .map_err(|error| SpecError::one("", format!("invalid YAML: {error}")))?
    };
    if !value.is_object() {
        return Err(SpecError::one(
            "",
            "spec must be a mapping with `name` and `services`",
        ));
    }
    let mut spec = if crate::stellar::looks_like_stellar(&value) {
        crate::stellar::to_app(value)?
    } else {
        serde_path_to_error::deserialize::<_, AppSpec>(value).map_err(|error| {
            let path = error.path().to_string();
            SpecError::one(path, error.into_inner().to_string())
        })?
    };
    validate(&mut spec)?;
    Ok(spec)
}

/// Checks everything serde cannot and normalizes image references.
pub fn validate(spec: &mut AppSpec) -> Result<(), SpecError> {
    let mut errors = Vec::new();
    let mut fail = |path: String, message: String| errors.push(FieldError { path, message });
    if let Err(message) = check_dns_label(&spec.name) {
        fail("name".into(), message);
    }
    check_labels(&spec.labels, "labels", &mut fail);
    if spec.services.is_empty() {
        fail("services".into(), "must list at least one service".into());
    }
    if spec.services.len() > SERVICES_MAX {
        fail(
            "services".into(),
            format!(
                "at most {SERVICES_MAX} services per app, got {}",
                spec.services.len()
            ),
        );
    }
    let mut seen = BTreeMap::new();
    for (index, service) in spec.services.iter_mut().enumerate() {
        let at = |field: &str| format!("services[{index}].{field}");
        if let Err(message) = check_dns_label(&service.name) {
            fail(at("name"), message);
        } else if let Some(first) = seen.insert(service.name.clone(), index) {
            fail(
                at("name"),
                format!(
                    "`{}` is already the name of services[{first}]; service names must be unique in an app",
                    service.name
                ),
            );
        }
        match oci_spec::distribution::Reference::from_str(&service.image) {
            Ok(reference) => service.image = reference.to_string(),
            Err(error) => fail(
                at("image"),
                format!(
                    "`{}` is not a valid image reference ({error}); write e.g. `busybox:latest` or `registry.example:5000/team/app:1.2`",
                    service.image
                ),
            ),
        }
        for (field, list) in [("command", &service.command), ("args", &service.args)] {
            if let Some(list) = list {
                if list.len() > ARGS_MAX {
                    fail(
                        at(field),
                        format!("at most {ARGS_MAX} entries, got {}", list.len()),
                    );
                }
                let bytes: usize = list.iter().map(String::len).sum();
                if bytes > ARG_BYTES_MAX {
                    fail(
                        at(field),
                        format!("at most {ARG_BYTES_MAX} bytes in all, got {bytes}"),
                    );
                }
                if list.iter().any(|arg| arg.contains('\0')) {
                    fail(at(field), "must not contain NUL characters".into());
                }
            }
        }
        if service.command.as_ref().is_some_and(Vec::is_empty) {
            fail(
                at("command"),
                "must not be empty; leave it out to use the image's entrypoint".into(),
            );
        }
        if service.env.len() > ENV_MAX {
            fail(
                at("env"),
                format!("at most {ENV_MAX} variables, got {}", service.env.len()),
            );
        }
        for (key, value) in &service.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                fail(
                    at(&format!("env.{key}")),
                    "variable names must be non-empty and contain neither `=` nor NUL".into(),
                );
            }
            if value.contains('\0') {
                fail(
                    at(&format!("env.{key}")),
                    "value must not contain NUL".into(),
                );
            }
        }
        if let Some(dir) = &service.working_dir {
            if !dir.starts_with('/') {
                fail(
                    at("working_dir"),
                    format!("must be an absolute path, got `{dir}`; write e.g. `/app`"),
                );
            }
        }
        if let Some(cpu) = service.resources.cpu {
            if cpu.0 == 0 {
                fail(
                    at("resources.cpu"),
                    "must be more than 0; leave it out for no limit".into(),
                );
            } else if cpu.0 > CPU_MILLIS_MAX {
                fail(
                    at("resources.cpu"),
                    format!("at most {} cores, got {}m", CPU_MILLIS_MAX / 1000, cpu.0),
                );
            }
        }
        if let Some(memory) = service.resources.memory {
            if memory.0 < MEMORY_BYTES_MIN {
                fail(
                    at("resources.memory"),
                    format!(
                        "at least 4Mi (a container needs that much to start), got {} bytes",
                        memory.0
                    ),
                );
            } else if memory.0 > MEMORY_BYTES_MAX {
                fail(
                    at("resources.memory"),
                    format!("at most 16Ti, got {} bytes", memory.0),
                );
            }
        }
        let restart = service.restart;
        match (service.kind, restart.policy) {
            (Kind::Batch, Some(RestartPolicy::Always)) => fail(
                at("restart.policy"),
                "a batch job runs to completion, so `always` would run it forever; use `on-failure` (the default for batch) or `never`".into(),
            ),
            (Kind::Batch, None) => service.restart.policy = Some(RestartPolicy::OnFailure),
            (_, None) => service.restart.policy = Some(RestartPolicy::Always),
            _ => {}
        }
        if restart.attempts_max == Some(0) {
            fail(
                at("restart.attempts_max"),
                "must be at least 1 (the first run); leave it out for no limit".into(),
            );
        }
        if service.priority > PRIORITY_MAX {
            fail(
                at("priority"),
                format!(
                    "must be between 0 and {PRIORITY_MAX}, got {}",
                    service.priority
                ),
            );
        }
        validate_placement(&service.placement, &at("placement"), &mut fail);
        if service.tolerations.len() > TOLERATIONS_MAX {
            fail(
                at("tolerations"),
                format!(
                    "at most {TOLERATIONS_MAX} tolerations, got {}",
                    service.tolerations.len()
                ),
            );
        }
        if restart.backoff_initial.0 == 0 || restart.backoff_initial.0 > BACKOFF_MS_MAX {
            fail(
                at("restart.backoff_initial"),
                "must be between 1ms and 1h".into(),
            );
        }
        if restart.backoff_max < restart.backoff_initial || restart.backoff_max.0 > BACKOFF_MS_MAX {
            fail(
                at("restart.backoff_max"),
                "must be at least backoff_initial and at most 1h".into(),
            );
        }
        if service.stop_grace_period.0 > STOP_GRACE_MS_MAX {
            fail(at("stop_grace_period"), "must be at most 10m".into());
        }
        check_labels(&service.labels, &at("labels"), &mut fail);
        if service.ports.len() > PORTS_MAX {
            fail(at("ports"), format!("at most {PORTS_MAX} ports"));
        }
        let mut ports_seen = BTreeMap::new();
        let mut host_ports_seen = BTreeMap::new();
        for (port_index, port) in service.ports.iter().enumerate() {
            let port_at = |field: &str| at(&format!("ports[{port_index}].{field}"));
            if port.container_port == 0 {
                fail(
                    port_at("container_port"),
                    "must be between 1 and 65535".into(),
                );
            }
            if let Some(name) = &port.name {
                if let Err(message) = check_dns_label(name) {
                    fail(port_at("name"), message);
                }
            }
            if let Some(host_port) = port.host_port {
                if host_port == 0 {
                    fail(
                        port_at("host_port"),
                        "must be between 1 and 65535 (leave it out to publish nothing)".into(),
                    );
                } else if !service.network {
                    fail(
                        port_at("host_port"),
                        "publishes a port of the task's own network, which needs `network: true`; with `network: false` the task listens on the node's ports itself".into(),
                    );
                } else if let Some(other) =
                    host_ports_seen.insert((host_port, port.protocol), port_index)
                {
                    fail(
                        port_at("host_port"),
                        format!(
                            "host port {host_port}/{} is also published by ports[{other}]",
                            port.protocol.as_str(),
                        ),
                    );
                }
            }
            if ports_seen
                .insert((port.container_port, port.protocol), port_index)
                .is_some()
            {
                fail(
                    port_at("container_port"),
                    format!(
                        "port {}/{:?} is listed twice",
                        port.container_port, port.protocol
                    ),
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SpecError { errors })
    }
}

fn validate_placement(
    placement: &PlacementSpec,
    path: &str,
    fail: &mut impl FnMut(String, String),
) {
    if placement.constraints.len() > CONSTRAINTS_MAX {
        fail(
            format!("{path}.constraints"),
            format!(
                "at most {CONSTRAINTS_MAX} constraints, got {}",
                placement.constraints.len()
            ),
        );
    }
    if placement.affinities.len() > AFFINITIES_MAX {
        fail(
            format!("{path}.affinities"),
            format!(
                "at most {AFFINITIES_MAX} affinities, got {}",
                placement.affinities.len()
            ),
        );
    }
    for (index, affinity) in placement.affinities.iter().enumerate() {
        if affinity.weight == 0 || affinity.weight.abs() > AFFINITY_WEIGHT_MAX {
            fail(
                format!("{path}.affinities[{index}].weight"),
                format!(
                    "must be between -{AFFINITY_WEIGHT_MAX} and {AFFINITY_WEIGHT_MAX} and not 0 (negative to avoid matching nodes), got {}",
                    affinity.weight
                ),
            );
        }
    }
    if placement.spread.len() > SPREADS_MAX {
        fail(
            format!("{path}.spread"),
            format!(
                "at most {SPREADS_MAX} spreads, got {}",
                placement.spread.len()
            ),
        );
    }
    for (index, spread) in placement.spread.iter().enumerate() {
        if let Err(message) = check_label_key(&spread.over) {
            fail(format!("{path}.spread[{index}].over"), message);
        }
        if spread.max_per == Some(0) {
            fail(
                format!("{path}.spread[{index}].max_per"),
                "must be at least 1; leave it out to spread evenly without a limit".into(),
            );
        }
    }
}

fn check_labels(
    labels: &BTreeMap<String, String>,
    path: &str,
    fail: &mut impl FnMut(String, String),
) {
    if labels.len() > LABELS_MAX {
        fail(
            path.into(),
            format!("at most {LABELS_MAX} labels, got {}", labels.len()),
        );
    }
    for (key, value) in labels {
        if let Err(message) = check_label_key(key) {
            fail(format!("{path}.{key}"), message);
        }
        if value.len() > 1024 {
            fail(
                format!("{path}.{key}"),
                "label values are at most 1024 bytes".into(),
            );
        }
    }
}

/// A DNS label as names of apps, services and ports must be.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a DNS label: use 1-63 lowercase letters, digits and `-`, starting with a letter and not ending with `-` (e.g. `{}`)",
            suggest_label(name)
        ))
    }
}

fn suggest_label(name: &str) -> String {
    let mut label: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .skip_while(|c| !c.is_ascii_lowercase())
        .take(63)
        .collect();
    while label.ends_with('-') {
        label.pop();
    }
    if label.is_empty() {
        "web".into()
    } else {
        label
    }
}

/// The JSON Schema of [`AppSpec`] (the native format).
pub fn app_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(AppSpec)).unwrap_or_default()
}

//! A service as users write it and the cluster stores it: one flat object,
//! the workload's fields (`image`, `command`, ...) beside the others.
//!
//! [`ServiceSpec`] is read, written and described through [`FlatService`],
//! so its nested [`Workload`] changes none of the three. The fields, their
//! order, defaults and attributes are those shoal 0.2 wrote: nodes of older
//! releases read the JSON of log entries and snapshots, so it must stay
//! byte for byte what it was (`tests/stored` holds the proof). A workload
//! other than a container needs fields of its own here, written only once
//! every node reads them (ARCHITECTURE.md, "Versions").

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize};

use super::{
    is_default, is_zero, ContainerSpec, FileRef, HealthSpec, Kind, Millis, PlacementSpec, Port,
    Prepull, Resources, RestartSpec, Security, ServiceSpec, UpdateSpec, UserSpec, Workload,
    REPLICAS_MAX,
};
use crate::placement::Toleration;

// serde's `into` clones the spec before writing it; specs are written when
// an app is put and when a snapshot is taken, never in the scheduler's loop.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// One service: `replicas` identical containers of one image.
pub(super) struct FlatService {
    /// DNS label, unique within the app.
    name: String,
    /// Image reference; `busybox` means `docker.io/library/busybox:latest`.
    image: String,
    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    /// Replaces the image's cmd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    /// Absolute path; the image's working directory when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<UserSpec>,
    #[serde(default = "default_replicas", deserialize_with = "de_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    replicas: u32,
    #[serde(default)]
    resources: Resources,
    #[serde(default)]
    restart: RestartSpec,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<Port>,
    /// Time between SIGTERM and SIGKILL when the task stops.
    #[serde(default = "default_grace")]
    stop_grace_period: Millis,
    /// Whether the service gets a network (CNI) of its own; on by default.
    #[serde(default = "default_true")]
    network: bool,
    /// `service` (keep `replicas` running), `global` (one task on every
    /// node that may run it) or `batch` (run `replicas` tasks to completion).
    #[serde(default, skip_serializing_if = "is_default")]
    kind: Kind,
    /// 0 to 1000; when the cluster is full, a task may take the place of
    /// tasks of a lower priority, which wait for room elsewhere.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(max = 1000))]
    priority: u32,
    #[serde(default, skip_serializing_if = "PlacementSpec::is_empty")]
    placement: PlacementSpec,
    /// Taints of nodes this service may run on anyway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tolerations: Vec<Toleration>,
    /// Which nodes pull the image before they need it: `successors` (the
    /// node that would take over a lost replica; the default), `all` (every
    /// node that may run the service) or `none`. For `kind: service` only.
    /// Written only when not the default (shoal 0.5, log format 5).
    #[serde(default, skip_serializing_if = "is_default")]
    prepull: Prepull,
    /// What the container may do beyond the hardened defaults every task
    /// runs with (privileged, the node's network or PID namespace, added
    /// capabilities: each needs a node that allows it and an admin token),
    /// and what it gives up (dropped capabilities, a read-only root).
    /// Written only when not the default (shoal 0.6, log format 6).
    #[serde(default, skip_serializing_if = "Security::is_default")]
    security: Security,
    /// Secrets the tasks get as files, read-only, in memory on the node
    /// (`/run/secrets/NAME` by default). Written only when listed (shoal
    /// 0.8, log format 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    secrets: Vec<FileRef>,
    /// Configs the tasks get as files, read-only (`/NAME` by default).
    /// Written only when listed (shoal 0.8, log format 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    configs: Vec<FileRef>,
    /// How the node that runs a task checks that it does its job; only
    /// healthy tasks are in DNS. Written only when set (shoal 0.12, log
    /// format 12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health: Option<HealthSpec>,
    /// How a change of the spec rolls out: batch by batch, each new task
    /// healthy for `monitor` before the next batch. Written only when set
    /// (shoal 0.13, log format 13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    update: Option<UpdateSpec>,
}

impl From<FlatService> for ServiceSpec {
    fn from(flat: FlatService) -> Self {
        let FlatService {
            name,
            image,
            command,
            args,
            env,
            working_dir,
            user,
            replicas,
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
            prepull,
            security,
            secrets,
            configs,
            health,
            update,
        } = flat;
        ServiceSpec {
            name,
            workload: Workload::Container(ContainerSpec {
                image,
                command,
                args,
                env,
                working_dir,
                user,
                security,
            }),
            replicas,
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
            prepull,
            secrets,
            configs,
            health,
            update,
        }
    }
}

impl From<ServiceSpec> for FlatService {
    fn from(spec: ServiceSpec) -> Self {
        let ServiceSpec {
            name,
            workload,
            replicas,
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
            prepull,
            secrets,
            configs,
            health,
            update,
        } = spec;
        // A new variant stops this compiling: it needs a written form first.
        let Workload::Container(ContainerSpec {
            image,
            command,
            args,
            env,
            working_dir,
            user,
            security,
        }) = workload;
        FlatService {
            name,
            image,
            command,
            args,
            env,
            working_dir,
            user,
            replicas,
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
            prepull,
            security,
            secrets,
            configs,
            health,
            update,
        }
    }
}

/// The schema users write, under the name the served document has always
/// given it (`#/$defs/ServiceSpec`).
impl JsonSchema for ServiceSpec {
    fn schema_name() -> Cow<'static, str> {
        "ServiceSpec".into()
    }
    fn schema_id() -> Cow<'static, str> {
        concat!(module_path!(), "::ServiceSpec").into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        FlatService::json_schema(generator)
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

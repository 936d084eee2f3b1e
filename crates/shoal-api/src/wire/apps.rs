//! Apps as the API shows them: their services, rollouts, tasks, plans and
//! DNS records.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal_types::{AppSpec, DesiredState, Promise, Task, TaskState};

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ServiceView {
    pub name: String,
    pub image: String,
    /// The digest `image` named when this version was applied (what every
    /// replica runs); absent for versions applied before shoal 0.4 or
    /// while some node was older.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// `registry`, or `node` for an image imported by hand (run by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_source: Option<shoal_types::PinSource>,
    /// `service`, `global` or `batch`.
    #[serde(default)]
    pub kind: shoal_types::Kind,
    /// Tasks wanted: `replicas`, or for a global service the nodes it may run on.
    pub replicas: u32,
    /// Tasks of the service whose promise is kept and that run.
    pub running: u32,
    /// Batch tasks that exited with 0.
    #[serde(default)]
    pub completed: u32,
    /// Batch tasks that failed for good.
    #[serde(default)]
    pub failed: u32,
    /// Whether the nodes named by the service's `prepull` hold its image
    /// (asked of them when the app is read); absent for an image imported
    /// by hand, which is never pulled ahead, and from nodes before 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepull: Option<PrepullView>,
}

/// A service's image held ahead of need, as the nodes holding it say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PrepullView {
    /// The service's `prepull`: `successors`, `all` or `none`.
    pub mode: shoal_types::Prepull,
    /// Every node named to hold the image ahead holds it, and for
    /// `successors` one is named: a replica lost with its node starts
    /// elsewhere without a pull. Never for `none`.
    pub protected: bool,
    /// The nodes named to hold the image ahead (the service's standby, or
    /// every node that may run it and does not), and whether they do.
    pub nodes: Vec<PrepullNodeView>,
    /// Why the service is not protected, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PrepullNodeView {
    pub node: String,
    /// Whether the node holds the image; absent when it could not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<bool>,
    /// Why the node could not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Tasks of a service that fit on no node now, and why.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct UnplacedView {
    pub app: String,
    pub service: String,
    pub count: u32,
    pub reason: String,
}

/// What applying a spec would do, computed without changing anything.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlanView {
    pub app: String,
    /// The app version the spec would become.
    pub version: u64,
    /// False when the spec equals the one applied.
    pub changed: bool,
    /// Service → the image digest it would run (what apply would pin now).
    #[serde(default)]
    pub images: std::collections::BTreeMap<String, shoal_types::PinnedImage>,
    pub place: Vec<PlannedTask>,
    /// Tasks that would stop, with their nodes.
    pub stop: Vec<PlannedStop>,
    pub unplaced: Vec<UnplacedView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlannedTask {
    pub service: String,
    pub slot: u32,
    pub node: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlannedStop {
    pub task: String,
    pub node: String,
    /// Why: the spec changed, scaled down, the node is lost, drained, or a
    /// higher priority needs the room.
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct AppView {
    pub name: String,
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub services: Vec<ServiceView>,
    pub spec: AppSpec,
    /// Tasks the scheduler could not place, and why.
    #[serde(default)]
    pub unplaced: Vec<UnplacedView>,
    /// How far the current version has rolled out (absent from shoal 0.1).
    #[serde(default)]
    pub rollout: Option<RolloutView>,
}

/// An app's rollout of its current version, as the cluster computes it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct RolloutView {
    pub version: u64,
    /// Every service has what it wants and no older task is still stopping.
    pub done: bool,
    /// A task of the current version broken for good: the rollout will not
    /// finish by itself.
    #[serde(default)]
    pub broken: Option<BrokenTaskView>,
    pub services: Vec<ServiceRolloutView>,
    /// The rolling update paused after new tasks failed; no further batch
    /// until the app is applied again (absent before shoal 0.13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// This version is the one before `failed_version`, put back after
    /// that version's new tasks failed (absent before shoal 0.13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<RolledBackView>,
}

/// A rollback: which version failed, and how.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct RolledBackView {
    pub failed_version: u64,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ServiceRolloutView {
    pub service: String,
    /// `replicas`, or for a global service the nodes that may run it.
    pub wanted: u32,
    /// Tasks of the current spec that run.
    pub running: u32,
    /// Of those, the ones that serve: healthy, or without a check (absent
    /// before shoal 0.13).
    #[serde(default)]
    pub healthy: Option<u32>,
    /// Tasks of an older spec still meant to run until a rolling update
    /// replaces them (absent before shoal 0.13).
    #[serde(default)]
    pub outdated: Option<u32>,
    /// Batch tasks that exited with 0, and that failed for good.
    pub completed: u32,
    pub failed: u32,
    /// Tasks told to stop that still run.
    pub stopping: u32,
    pub done: bool,
    /// Why tasks of the service fit on no node, when some do not.
    #[serde(default)]
    pub unplaced: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct BrokenTaskView {
    pub task: String,
    pub state: TaskState,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TaskView {
    pub id: String,
    pub app: String,
    pub service: String,
    pub slot: u32,
    pub app_version: u64,
    pub node: String,
    pub image: String,
    /// The digest the task runs, pinned when its app version was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    pub desired: DesiredState,
    pub state: TaskState,
    pub promise: Promise,
    pub message: String,
    /// The containerd container id, while a container exists.
    pub container_id: Option<String>,
    pub exit_code: Option<i32>,
    pub attempt: u32,
    pub restarts: u32,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub updated_at_ms: u64,
    /// The task's address on the cluster network, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
    /// What its service's health check found: `starting` (no check passed
    /// since it started), `healthy`, `unhealthy` (`retries` failed in a
    /// row), or `none` (its service has no check, or it does not run).
    /// Only healthy tasks, and running ones without a check, are in DNS.
    #[serde(default = "no_health")]
    pub health: String,
}

fn no_health() -> String {
    "none".into()
}

impl From<&Task> for TaskView {
    fn from(task: &Task) -> Self {
        TaskView {
            id: task.id.clone(),
            app: task.app.clone(),
            service: task.service.clone(),
            slot: task.slot,
            app_version: task.app_version,
            node: task.node.clone(),
            image: task.spec.image().to_string(),
            image_digest: task.image.as_ref().map(|pin| pin.digest.clone()),
            desired: task.desired,
            state: task.status.state,
            promise: task.status.promise,
            message: task.status.message.clone(),
            container_id: task.status.container_id.clone(),
            exit_code: task.status.exit_code,
            attempt: task.status.attempt,
            restarts: task.status.restarts,
            address: task.status.address,
            health: task
                .health()
                .map_or_else(no_health, |health| health.as_str().to_string()),
            created_at_ms: task.created_at_ms,
            started_at_ms: task.status.started_at_ms,
            updated_at_ms: task.status.updated_at_ms,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ApplyResponse {
    pub app: String,
    pub version: u64,
    /// False when the spec equals the one already applied.
    pub changed: bool,
}

/// One record the cluster's DNS serves (`shoal dns list`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DnsRecordView {
    /// Fully qualified, without the trailing dot: `web.demo.shoal`.
    pub name: String,
    /// `A` or `SRV`.
    #[serde(rename = "type")]
    pub record_type: String,
    /// An IPv4 address, or `PRIORITY WEIGHT PORT TARGET` for SRV.
    pub value: String,
}

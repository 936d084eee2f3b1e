//! Tasks: one replica of a service placed on one node. The cluster writes
//! `desired` (and never the status); the node writes `status` (and never the
//! placement). Within one attempt a status only moves forward; a restart is a
//! new attempt of the same task, so the node can keep its promise locally,
//! also when it is cut off from the cluster.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::ServiceSpec;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// `APP.SERVICE.SLOT.SERIAL`: readable, unique across the cluster's life;
    /// also the containerd container id of the task.
    pub id: String,
    pub app: String,
    pub service: String,
    /// Replica index in `0..replicas`.
    pub slot: u32,
    /// The app version whose spec this task runs.
    pub app_version: u64,
    pub node: String,
    pub desired: DesiredState,
    /// The service spec of `app_version`, so that a node can run the task
    /// without the app (which may have moved on). Shared by the tasks of
    /// one service placed together, as a million copies cost gigabytes.
    pub spec: std::sync::Arc<ServiceSpec>,
    pub created_at_ms: u64,
    pub status: TaskStatus,
    /// What the service's image reference named when `app_version` was
    /// applied (log format 4), so that a tag moved later changes nothing;
    /// none for apps applied before, or while a node read only older
    /// formats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PinnedImage>,
}

/// An image reference pinned when an app version is applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PinnedImage {
    /// `sha256:…` of the manifest or index the reference named.
    pub digest: String,
    pub source: PinSource,
}

/// Where a pinned digest came from, which says how nodes run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PinSource {
    /// The registry: every node runs `REPOSITORY@DIGEST` and pulls it if it
    /// has not got it.
    Registry,
    /// An image imported by hand on the node that answered the apply; nodes
    /// run the reference by name, as each node's import is its own.
    Node,
}

impl PinnedImage {
    /// What a node runs for `reference` under this pin: the digest of a
    /// registry pin, the name itself for an image imported by hand.
    pub fn run_reference(pin: Option<&PinnedImage>, reference: &str) -> String {
        match pin {
            Some(PinnedImage {
                digest,
                source: PinSource::Registry,
            }) => {
                // `name:tag@digest` and `name@digest` both pull by digest;
                // the tag is dropped so that the node's record is one per digest.
                let without_digest = reference.split('@').next().unwrap_or(reference);
                let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
                let name = match without_digest[last_slash..].rfind(':') {
                    Some(colon) => &without_digest[..last_slash + colon],
                    None => without_digest,
                };
                format!("{name}@{digest}")
            }
            _ => reference.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    Stopped,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Placed; the node has not taken it up yet.
    Pending,
    /// The node is checking the image and creating the container.
    Preparing,
    /// The container's process is being started.
    Starting,
    Running,
    /// Being stopped on purpose (SIGTERM, grace period, SIGKILL).
    Stopping,
    /// The process exited with code 0.
    Exited,
    /// The process exited with another code, or could not be started.
    Failed,
    /// Stopped on purpose; the container is gone.
    Stopped,
}

impl TaskState {
    /// Position in the forward-only order.
    pub fn rank(self) -> u8 {
        match self {
            TaskState::Pending => 0,
            TaskState::Preparing => 1,
            TaskState::Starting => 2,
            TaskState::Running => 3,
            TaskState::Stopping => 4,
            TaskState::Exited | TaskState::Failed => 5,
            // A task that exited is still stopped (its container removed)
            // when the cluster no longer wants it.
            TaskState::Stopped => 6,
        }
    }

    pub fn is_terminal(self) -> bool {
        self.rank() >= 5
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Stopping => "stopping",
            TaskState::Exited => "exited",
            TaskState::Failed => "failed",
            TaskState::Stopped => "stopped",
        }
    }
}

/// Whether the node keeps its promise to hold the task in its desired state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Promise {
    /// On its way to the desired state.
    Pending,
    Kept,
    /// Not kept; `TaskStatus::message` says why.
    Broken,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskStatus {
    /// Which run of the task this is; a restart is attempt + 1.
    pub attempt: u32,
    pub state: TaskState,
    pub promise: Promise,
    /// Why the task is in this state, in words for people.
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Restarts since the task last ran for longer than its back-off cap.
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    pub updated_at_ms: u64,
    /// The task's address on the cluster network, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
    /// What its service's health check found, while it runs and has one
    /// (written only then: shoal 0.12, log format 12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::spec::Health>,
}

impl Task {
    /// Its health as traffic sees it: while it runs, what its node said of
    /// it, or `Starting` until the node has said (a service with a check);
    /// `None` when its service has no check or it does not run.
    pub fn health(&self) -> Option<crate::spec::Health> {
        if self.status.state != TaskState::Running || self.spec.health.is_none() {
            return None;
        }
        Some(self.status.health.unwrap_or(crate::spec::Health::Starting))
    }

    /// Whether the task has finished for good: it exited with 0 (a batch
    /// job's success), or it failed and its restart policy runs it no more.
    pub fn finished_for_good(&self) -> bool {
        let status = &self.status;
        match status.state {
            TaskState::Exited if status.exit_code == Some(0) => true,
            TaskState::Exited | TaskState::Failed => {
                self.spec.restart.policy() == crate::spec::RestartPolicy::Never
                    || self
                        .spec
                        .restart
                        .attempts_max
                        .is_some_and(|most| status.attempt >= most)
            }
            _ => false,
        }
    }
}

impl TaskStatus {
    pub fn pending(now_ms: u64) -> Self {
        TaskStatus {
            address: None,
            attempt: 0,
            state: TaskState::Pending,
            promise: Promise::Pending,
            message: "waiting for the node to take it up".into(),
            container_id: None,
            exit_code: None,
            restarts: 0,
            started_at_ms: None,
            updated_at_ms: now_ms,
            health: None,
        }
    }

    /// Whether `self` may replace `previous`: a later attempt, or the same
    /// attempt in a later state (or the same state with new details).
    pub fn may_follow(&self, previous: &TaskStatus) -> bool {
        if self.attempt != previous.attempt {
            return self.attempt > previous.attempt;
        }
        self.state == previous.state || self.state.rank() > previous.state.rank()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(attempt: u32, state: TaskState) -> TaskStatus {
        TaskStatus {
            attempt,
            state,
            ..TaskStatus::pending(0)
        }
    }

    #[test]
    fn states_only_move_forward_within_an_attempt() {
        let running = status(1, TaskState::Running);
        assert!(status(1, TaskState::Failed).may_follow(&running));
        assert!(status(1, TaskState::Running).may_follow(&running));
        assert!(!status(1, TaskState::Starting).may_follow(&running));
        assert!(!status(1, TaskState::Exited).may_follow(&status(1, TaskState::Failed)));
        assert!(status(2, TaskState::Preparing).may_follow(&status(1, TaskState::Failed)));
        assert!(status(1, TaskState::Stopped).may_follow(&status(1, TaskState::Failed)));
        assert!(!status(1, TaskState::Failed).may_follow(&status(1, TaskState::Stopped)));
        assert!(!status(0, TaskState::Running).may_follow(&running));
    }
}

#[cfg(test)]
mod pin_tests {
    use super::*;

    #[test]
    fn registry_pins_run_by_digest_and_imports_by_name() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let pin = PinnedImage {
            digest: digest.clone(),
            source: PinSource::Registry,
        };
        for (reference, runs) in [
            ("127.0.0.1:5000/demo/web:v1", "127.0.0.1:5000/demo/web"),
            ("127.0.0.1:5000/demo/web", "127.0.0.1:5000/demo/web"),
            ("redis:alpine", "redis"),
            ("registry.example/a/b:c@sha256:00", "registry.example/a/b"),
        ] {
            assert_eq!(
                PinnedImage::run_reference(Some(&pin), reference),
                format!("{runs}@{digest}"),
                "{reference}"
            );
        }
        let local = PinnedImage {
            digest,
            source: PinSource::Node,
        };
        assert_eq!(
            PinnedImage::run_reference(Some(&local), "shoal.demo/busybox:latest"),
            "shoal.demo/busybox:latest"
        );
        assert_eq!(PinnedImage::run_reference(None, "busybox"), "busybox");
    }
}

//! The node's answers to the API: [`NodeBackend`] reads this node's own
//! state, gossip and runtime, and proposes writes through the log; the
//! views it answers with are built in `views`.

mod pins;
mod protection;
#[cfg(test)]
mod tests;
mod views;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use shoal_api::server::{ApiError, ApiResult, Backend, LogOptions, LogStream};
use shoal_api::wire::{
    AppView, ApplyResponse, ClusterInfo, ClusterSettings, DnsRecordView, ImageView, NodeUpdate,
    NodeView, PlanView, PlannedStop, PlannedTask, TaskView, VersionInfo,
};
use shoal_cluster::raft::ProposeError;
use shoal_runtime::registry::RegistryAccess;
use shoal_runtime::ContainerStatus;
use shoal_runtime::{ErrorKind, ImageStore, Runtime};
use shoal_state::Entry;
use shoal_state::{ApplyError, Command, Outcome};
use shoal_types::{DesiredState, NodeStatus, PinnedImage, Taint, TaintEffect};

use shoal_cluster::log::ReplicatedLog;
use shoal_cluster::raft::RaftNode;

use super::Shared;
use crate::clock::now_ms;
use views::{app_view, image_view, node_views, stop_words, unplaced_view};

pub struct NodeBackend<R, L = RaftNode>(pub Arc<Shared<R, L>>);

impl<R, L: ReplicatedLog> NodeBackend<R, L> {
    /// A spec that loosens the hardened defaults (`security`) is taken
    /// only from an admin token, and only when some node's operator allows
    /// what it needs; the error names the field. The leader checks the
    /// token again when the proposal is forwarded (`Command::authority`).
    fn check_loosening(&self, spec: &shoal_types::AppSpec) -> ApiResult<()> {
        for (index, service) in spec.services.iter().enumerate() {
            let Some(field) = service.security().first_loosening() else {
                continue;
            };
            let path = format!("services[{index}].{field}");
            let state = self.0.raft.read();
            let access = shoal_api::access::Access::Admin;
            let decision = forward_operator().map(|token| {
                super::gate::operator_may(&state, &self.0.cluster_id, &token, access, now_ms())
            });
            if !matches!(decision, Some(Ok(_))) {
                let caller = match decision {
                    Some(Err(super::gate::OperatorRefusal::Role(caller))) => caller.label(),
                    _ => "this caller".to_string(),
                };
                return Err(ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    format!(
                        "{path}: runs the task beyond the hardened defaults, which needs {}; {caller} may not",
                        super::gate::token_needed(access)
                    ),
                ));
            }
            let needs = service.needs();
            let allowed = state
                .nodes
                .values()
                .any(|node| node.status == NodeStatus::Alive && node.allows.lacks(needs).is_none());
            if !allowed {
                if let Some(allowance) = shoal_types::Allows::default().lacks(needs) {
                    return Err(shoal_types::SpecError::one(
                        path,
                        format!(
                            "no alive node allows {}; start the agents of the nodes that may run it with {} (every node must run shoal 0.6 or later)",
                            allowance.what(),
                            allowance.flag()
                        ),
                    )
                    .into());
                }
            }
        }
        Ok(())
    }
}

/// The bearer token of the API call being answered.
fn forward_operator() -> Option<String> {
    shoal_cluster::raft::OPERATOR_TOKEN
        .try_with(Clone::clone)
        .ok()
        .flatten()
}

impl<R, L: ReplicatedLog> NodeBackend<R, L> {
    /// Waits until this node's state holds every write acknowledged
    /// before the call (reads are linearizable).
    async fn fresh(&self) -> ApiResult<()> {
        self.0.raft.linearizable_read().await.map_err(propose_error)
    }
}

fn propose_error(error: ProposeError) -> ApiError {
    match error {
        ProposeError::Rejected(ApplyError::AppNotFound(name)) => {
            ApiError::not_found(format!("app `{name}` not found; see `shoal apps`"))
        }
        ProposeError::Rejected(ApplyError::NodeNotFound(name)) => {
            ApiError::not_found(format!("node `{name}` not found; see `shoal nodes`"))
        }
        ProposeError::Rejected(error) => ApiError::bad_request(error.to_string()),
        // Not the request's fault, nor passing: an operator upgrades first.
        ProposeError::MixedVersions(why) => ApiError::new(axum::http::StatusCode::CONFLICT, why),
        other => ApiError::unavailable(other.to_string()),
    }
}

impl<R: Runtime + ImageStore, L: ReplicatedLog> NodeBackend<R, L> {
    /// The settings and credentials a pull of `reference` uses here.
    pub(super) async fn registry_access(&self, reference: &str) -> RegistryAccess {
        super::pull_credentials::access_for(&self.0.raft, &self.0.pull_credentials, reference).await
    }

    async fn node_update(&self, name: &str, command: Command) -> ApiResult<NodeUpdate> {
        let outcome = self
            .0
            .raft
            .propose(now_ms(), command)
            .await
            .map_err(propose_error)?;
        let changed = matches!(outcome, Outcome::NodeUpdated { changed: true });
        let node = self
            .nodes()
            .await?
            .into_iter()
            .find(|node| node.name == name)
            .ok_or_else(|| {
                ApiError::not_found(format!("node `{name}` not found; see `shoal nodes`"))
            })?;
        Ok(NodeUpdate { changed, node })
    }
}

impl<R: Runtime + ImageStore, L: ReplicatedLog> Backend for NodeBackend<R, L> {
    fn version(&self) -> VersionInfo {
        VersionInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            commit: env!("SHOAL_GIT_COMMIT").into(),
        }
    }

    /// From this node's own view (gossip and its applied state), so that a
    /// node cut off from the majority still shows what it sees.
    async fn nodes(&self) -> ApiResult<Vec<NodeView>> {
        let shared = &self.0;
        let now = now_ms();
        let raft = shared.raft.status();
        let members = shared.membership.members();
        let state = shared.raft.read();
        Ok(node_views(&state, &members, &raft, now))
    }

    async fn cluster(&self) -> ApiResult<ClusterInfo> {
        let shared = &self.0;
        let raft = shared.raft.status();
        let name_of = |id: &u64| {
            raft.nodes
                .get(id)
                .map(|node| node.name.clone())
                .unwrap_or_else(|| id.to_string())
        };
        let settings = shared.raft.read().settings.clone();
        Ok(ClusterInfo {
            cluster_id: shared.cluster_id.clone(),
            name: shared.config.name.clone(),
            gossip_addr: shared.config.gossip_advertise.to_string(),
            leader: raft.leader.as_ref().map(name_of),
            voters: raft.voters.iter().map(name_of).collect(),
            learners: raft.learners.iter().map(name_of).collect(),
            settings: ClusterSettings {
                voters_max: Some(settings.voters_max),
                cluster_cidr: Some(settings.cluster_cidr),
                node_prefix_len: Some(settings.node_prefix_len),
                dns_zone: Some(settings.dns_zone),
            },
            log_version: shared.raft.cluster_log_version(),
            release: shoal_state::RELEASE.to_string(),
            gossip: Some(super::gossip_keys::view(
                &shared.membership,
                shared
                    .gossip_generation
                    .load(std::sync::atomic::Ordering::Relaxed),
            )),
        })
    }

    async fn set_settings(&self, settings: ClusterSettings) -> ApiResult<ClusterInfo> {
        let command = Command::SetSettings {
            voters_max: settings.voters_max,
            cluster_cidr: settings.cluster_cidr,
            node_prefix_len: settings.node_prefix_len,
            dns_zone: settings.dns_zone,
        };
        self.0
            .raft
            .propose(now_ms(), command)
            .await
            .map_err(propose_error)?;
        // The answer shows the change even when this node's replica lags.
        self.fresh().await?;
        self.cluster().await
    }

    async fn dns_records(&self) -> ApiResult<Vec<DnsRecordView>> {
        // What this node's server answers with; the same records from the
        // state when it does not run (yet).
        let rows = match self.0.network.served_rows() {
            Some(rows) => rows,
            None => {
                let state = self.0.raft.read();
                super::network::records_from_state(&state).rows(&state.settings.dns_zone)
            }
        };
        Ok(rows
            .into_iter()
            .map(|row| DnsRecordView {
                name: row.name,
                record_type: row.record_type.to_string(),
                value: row.value,
            })
            .collect())
    }

    async fn leave(&self) -> ApiResult<()> {
        let shared = self.0.clone();
        tokio::spawn(super::cluster::leave(shared));
        Ok(())
    }

    async fn apply(&self, body: Bytes) -> ApiResult<ApplyResponse> {
        let spec = shoal_types::parse_app(&body)?;
        self.check_loosening(&spec)?;
        let name = spec.name.clone();
        let images = self.pin_images(&spec).await?;
        let unpinned = Command::PutApp { spec: spec.clone() };
        let pinned = Command::PutAppPinned {
            spec: spec.clone(),
            images,
        };
        let proposed = match self.0.raft.propose(now_ms(), pinned).await {
            // Some node reads only formats before pins (the cluster is being
            // upgraded): the app goes in as before, its tags resolved by
            // each node when it runs them; unless the spec itself needs a
            // newer format (then the refusal stands).
            Err(ProposeError::MixedVersions(why))
                if unpinned.version_needed() < shoal_state::format::PINS =>
            {
                tracing::warn!(app = %name, %why, "images not pinned while the cluster is upgraded");
                self.0.raft.propose(now_ms(), unpinned).await
            }
            other => other,
        };
        match proposed {
            Ok(Outcome::AppPut { version, changed }) => Ok(ApplyResponse {
                app: name,
                version,
                changed,
            }),
            Ok(other) => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
            Err(error) => Err(propose_error(error)),
        }
    }

    async fn apps(&self, prepull: bool) -> ApiResult<Vec<AppView>> {
        self.fresh().await?;
        let mut views: Vec<AppView> = {
            let state = self.0.raft.read();
            state
                .apps
                .keys()
                .filter_map(|name| app_view(&state, name))
                .collect()
        };
        if prepull {
            self.protection(&mut views).await;
        }
        Ok(views)
    }

    async fn taint_node(&self, name: String, taint: String) -> ApiResult<NodeUpdate> {
        let taint: Taint = taint
            .parse()
            .map_err(|message: String| ApiError::bad_request(format!("taint: {message}")))?;
        let command = Command::TaintNode {
            name: name.clone(),
            taint,
        };
        self.node_update(&name, command).await
    }

    async fn untaint_node(
        &self,
        name: String,
        key: String,
        effect: Option<String>,
    ) -> ApiResult<NodeUpdate> {
        let effect = effect
            .map(|effect| effect.parse::<TaintEffect>())
            .transpose()
            .map_err(|message| ApiError::bad_request(format!("effect: {message}")))?;
        shoal_types::placement::check_label_key(&key)
            .map_err(|message| ApiError::bad_request(format!("key: {message}")))?;
        let command = Command::UntaintNode {
            name: name.clone(),
            key,
            effect,
        };
        self.node_update(&name, command).await
    }

    async fn drain_node(&self, name: String, drain: bool) -> ApiResult<NodeUpdate> {
        let command = Command::SetNodeDrain {
            name: name.clone(),
            drain,
        };
        self.node_update(&name, command).await
    }

    async fn plan(&self, body: Bytes) -> ApiResult<PlanView> {
        let spec = shoal_types::parse_app(&body)?;
        let name = spec.name.clone();
        let images = self.pin_images(&spec).await?;
        self.fresh().await?;
        let mut state = self.0.raft.read().clone();
        let index = state.applied_index + 1;
        let command = Command::PutAppPinned {
            spec,
            images: images.clone(),
        };
        let outcome = state
            .apply(index, &Entry::trusted(now_ms(), &command))
            .map_err(|error| ApiError::bad_request(error.to_string()))?;
        let Outcome::AppPut { version, changed } = outcome else {
            return Err(ApiError::internal(format!(
                "unexpected outcome {outcome:?}"
            )));
        };
        let plan = shoal_sched::reconcile_at(&state, now_ms(), self.0.raft.cluster_log_version());
        let place = plan
            .place
            .iter()
            .filter(|placement| placement.app == name)
            .map(|placement| PlannedTask {
                service: placement.service.clone(),
                slot: placement.slot,
                node: placement.node.clone(),
            })
            .collect();
        let stop = plan
            .stop
            .iter()
            .zip(&plan.stop_why)
            .filter_map(|(id, why)| Some((state.tasks.get(id)?, *why)))
            .filter(|(task, _)| task.app == name)
            .map(|(task, why)| PlannedStop {
                task: task.id.clone(),
                node: task.node.clone(),
                reason: stop_words(&state, task, why),
            })
            .collect();
        let unplaced = plan
            .unplaced
            .iter()
            .filter(|entry| entry.app == name)
            .map(unplaced_view)
            .collect();
        Ok(PlanView {
            app: name,
            images,
            version,
            changed,
            place,
            stop,
            unplaced,
        })
    }

    async fn app(&self, name: String, prepull: bool) -> ApiResult<AppView> {
        self.fresh().await?;
        let view = app_view(&self.0.raft.read(), &name);
        let mut views = Vec::from_iter(view);
        if prepull {
            self.protection(&mut views).await;
        }
        views
            .pop()
            .ok_or_else(|| ApiError::not_found(format!("app `{name}` not found; see `shoal apps`")))
    }

    async fn remove_app(&self, name: String) -> ApiResult<()> {
        self.0
            .raft
            .propose(now_ms(), Command::RemoveApp { name })
            .await
            .map(|_| ())
            .map_err(propose_error)
    }

    async fn tasks(&self, app: Option<String>) -> ApiResult<Vec<TaskView>> {
        self.fresh().await?;
        let state = self.0.raft.read();
        let mut tasks: Vec<TaskView> = state
            .tasks
            .values()
            .filter(|task| app.as_ref().is_none_or(|app| &task.app == app))
            .map(|task| {
                let mut view = TaskView::from(task);
                // A task on a node that is not alive is lost until it is
                // replaced and its node comes back or is forgotten.
                let node_alive = state
                    .nodes
                    .get(&task.node)
                    .is_some_and(|n| n.status == NodeStatus::Alive);
                if !node_alive && !task.status.state.is_terminal() {
                    view.message =
                        format!("lost: node {} is not alive ({})", task.node, view.message);
                }
                view
            })
            .collect();
        tasks.sort_by(|a, b| {
            (&a.app, &a.service, a.slot, &a.id).cmp(&(&b.app, &b.service, b.slot, &b.id))
        });
        Ok(tasks)
    }

    async fn logs(&self, target: String, options: LogOptions) -> ApiResult<LogStream> {
        super::logs::stream(self.0.clone(), target, options).await
    }

    async fn images(&self) -> ApiResult<Vec<ImageView>> {
        let images = self
            .0
            .runtime
            .images()
            .await
            .map_err(|error| ApiError::unavailable(error.to_string()))?;
        Ok(images.into_iter().map(image_view).collect())
    }

    fn upload_dir(&self) -> PathBuf {
        self.0.config.data_dir.join("uploads")
    }

    async fn import_image(
        &self,
        archive: PathBuf,
        name: Option<String>,
    ) -> ApiResult<Vec<ImageView>> {
        let images = self
            .0
            .runtime
            .import(archive, name)
            .await
            .map_err(|error| match error.kind() {
                ErrorKind::Invalid => ApiError::bad_request(error.to_string()),
                _ => ApiError::unavailable(error.to_string()),
            })?;
        Ok(images.into_iter().map(image_view).collect())
    }

    async fn image_disk(&self) -> ApiResult<shoal_api::wire::ImageDiskView> {
        let config = &self.0.config.image_gc;
        let root = config.root.clone();
        let disk = tokio::task::spawn_blocking(move || super::image_gc::disk_use(&root))
            .await
            .map_err(|error| ApiError::internal(error.to_string()))?
            .map_err(|error| {
                ApiError::unavailable(format!("{}: {error}", config.root.display()))
            })?;
        Ok(shoal_api::wire::ImageDiskView {
            path: config.root.display().to_string(),
            used_bytes: disk.used_bytes,
            total_bytes: disk.total_bytes,
            used_percent: disk.percent(),
            gc_high_percent: config.high_percent,
            gc_low_percent: config.low_percent,
        })
    }

    async fn pulls(&self) -> ApiResult<Vec<shoal_api::wire::PullView>> {
        Ok(self
            .0
            .runtime
            .pulls()
            .into_iter()
            .map(|(name, progress)| shoal_api::wire::PullView {
                name,
                done_bytes: progress.done_bytes,
                total_bytes: progress.total_bytes,
                bytes_per_s: progress.bytes_per_s,
                layers: progress
                    .layers
                    .into_iter()
                    .map(|layer| shoal_api::wire::LayerPullView {
                        digest: layer.digest,
                        done_bytes: layer.done_bytes,
                        total_bytes: layer.total_bytes,
                    })
                    .collect(),
            })
            .collect())
    }

    async fn remove_image(&self, name: String) -> ApiResult<()> {
        let node = &self.0.config.name;
        let name = shoal_runtime::image::normalize_name(name.trim())
            .map_err(|error| ApiError::bad_request(format!("name: {error}")))?;
        let images = self
            .0
            .runtime
            .images()
            .await
            .map_err(|error| ApiError::unavailable(error.to_string()))?;
        if !images.iter().any(|image| image.name == name) {
            return Err(ApiError::not_found(format!(
                "name: node {node} has no image {name}; `shoal images` lists them"
            )));
        }
        // Tasks of this node meant to run it, and containers running it
        // (a task being stopped still runs until it has stopped).
        let mut users: std::collections::BTreeSet<String> = {
            let state = self.0.raft.read();
            state
                .tasks
                .values()
                .filter(|task| &task.node == node && task.desired == DesiredState::Running)
                .filter(|task| {
                    let shoal_types::Workload::Container(container) = &task.spec.workload;
                    let reference =
                        PinnedImage::run_reference(task.image.as_ref(), &container.image);
                    shoal_runtime::image::normalize_name(&reference)
                        .ok()
                        .as_ref()
                        == Some(&name)
                })
                .map(|task| task.id.clone())
                .collect()
        };
        let containers = self
            .0
            .runtime
            .list()
            .await
            .map_err(|error| ApiError::unavailable(error.to_string()))?;
        users.extend(
            containers
                .into_iter()
                .filter(|c| c.image == name && matches!(c.status, ContainerStatus::Running { .. }))
                .map(|c| c.id),
        );
        if !users.is_empty() {
            let users: Vec<String> = users.into_iter().collect();
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                format!(
                    "name: {name} is in use on node {node} by {}; remove it once they have stopped",
                    users.join(", ")
                ),
            ));
        }
        self.0
            .runtime
            .remove_image(&name)
            .await
            .map_err(|error| match error.kind() {
                ErrorKind::NotFound => ApiError::not_found(format!(
                    "name: node {node} has no image {name}; `shoal images` lists them"
                )),
                _ => ApiError::unavailable(error.to_string()),
            })?;
        tracing::info!(image = %name, "image removed");
        Ok(())
    }

    async fn pull_image(&self, reference: String) -> ApiResult<ImageView> {
        let image = self
            .0
            .runtime
            .pull(&reference, &self.registry_access(&reference).await)
            .await
            .map_err(|error| match error.kind() {
                ErrorKind::ImageMissing => ApiError::not_found(error.to_string()),
                ErrorKind::Invalid => ApiError::bad_request(error.to_string()),
                _ => ApiError::unavailable(error.to_string()),
            })?;
        Ok(image_view(image))
    }
}

//! The node's answers to the API.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use shoal_api::server::{ApiError, ApiResult, Backend, LogOptions, LogStream};
use shoal_api::wire::{
    AppView, ApplyResponse, ClusterInfo, ClusterSettings, ImageView, NodeView, ServiceView,
    TaskView, VersionInfo,
};
use shoal_cluster::membership::MemberStatus;
use shoal_cluster::raft::ProposeError;
use shoal_runtime::Runtime;
use shoal_state::{ApplyError, Command, Outcome, State};
use shoal_types::{consensus_id, DesiredState, NodeStatus, TaskState};

use super::Shared;
use crate::output::now_ms;

pub struct NodeBackend<R>(pub Arc<Shared<R>>);

impl<R> NodeBackend<R> {
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
        ProposeError::Rejected(error) => ApiError::bad_request(error.to_string()),
        other => ApiError::unavailable(other.to_string()),
    }
}

fn app_view(state: &State, name: &str, unplaced: &[shoal_state::Unplaced]) -> Option<AppView> {
    let app = state.apps.get(name)?;
    let services = app
        .spec
        .services
        .iter()
        .map(|service| {
            let running = state
                .tasks
                .values()
                .filter(|task| {
                    task.app == app.spec.name
                        && task.service == service.name
                        && task.desired == DesiredState::Running
                        && task.status.state == TaskState::Running
                        && task.slot < service.replicas
                        && task.spec.same_task_as(service)
                })
                .count() as u32;
            ServiceView {
                name: service.name.clone(),
                image: service.image.clone(),
                replicas: service.replicas,
                running,
            }
        })
        .collect();
    Some(AppView {
        name: app.spec.name.clone(),
        version: app.version,
        created_at_ms: app.created_at_ms,
        updated_at_ms: app.updated_at_ms,
        services,
        spec: app.spec.clone(),
        unplaced: unplaced
            .iter()
            .filter(|entry| entry.app == name)
            .map(|entry| {
                format!(
                    "{}.{} replica {}: {}",
                    entry.app, entry.service, entry.slot, entry.reason
                )
            })
            .collect(),
    })
}

impl<R: Runtime> Backend for NodeBackend<R> {
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
        let mut names: Vec<&str> = state.nodes.keys().map(String::as_str).collect();
        for member in &members {
            if !state.nodes.contains_key(&member.facts.name) && !member.facts.name.is_empty() {
                names.push(&member.facts.name);
            }
        }
        let views = names
            .into_iter()
            .map(|name| {
                let recorded = state.nodes.get(name);
                let member = members.iter().find(|member| member.facts.name == name);
                let id = consensus_id(name);
                let role = if raft.voters.contains(&id) {
                    "voter"
                } else if raft.learners.contains(&id) {
                    "learner"
                } else {
                    "-"
                };
                // Gossip knows liveness first; the state has the verdict
                // that moves work.
                let status = match member.map(|m| m.status) {
                    Some(MemberStatus::Alive) => NodeStatus::Alive,
                    Some(MemberStatus::Suspect) => NodeStatus::Suspect,
                    Some(MemberStatus::Dead) => NodeStatus::Dead,
                    Some(MemberStatus::Left) => NodeStatus::Left,
                    None => recorded.map_or(NodeStatus::Dead, |node| node.status),
                };
                let facts = member.map(|m| &m.facts);
                let started_at_ms = facts
                    .map(|f| f.started_at_ms)
                    .or(recorded.map(|n| n.started_at_ms))
                    .unwrap_or(now);
                NodeView {
                    name: name.to_string(),
                    addr: facts
                        .map(|f| f.api_addr.clone())
                        .or(recorded.map(|n| n.addr.clone()))
                        .unwrap_or_default(),
                    status,
                    role: role.to_string(),
                    leader: raft.leader == Some(id),
                    os: facts
                        .map(|f| f.os.clone())
                        .or(recorded.map(|n| n.os.clone()))
                        .unwrap_or_default(),
                    arch: facts
                        .map(|f| f.arch.clone())
                        .or(recorded.map(|n| n.arch.clone()))
                        .unwrap_or_default(),
                    uptime_s: if status == NodeStatus::Alive || status == NodeStatus::Suspect {
                        now.saturating_sub(started_at_ms) / 1000
                    } else {
                        0
                    },
                    cpus: facts
                        .map(|f| f.cpus)
                        .or(recorded.map(|n| n.cpus))
                        .unwrap_or(0),
                    memory_total_bytes: facts
                        .map(|f| f.memory_total_bytes)
                        .or(recorded.map(|n| n.memory_total_bytes))
                        .unwrap_or(0),
                    memory_used_bytes: facts.map(|f| f.memory_used_bytes).unwrap_or(0),
                    labels: facts
                        .map(|f| f.labels.clone())
                        .or(recorded.map(|n| n.labels.clone()))
                        .unwrap_or_default(),
                }
            })
            .collect();
        Ok(views)
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
        Ok(ClusterInfo {
            cluster_id: shared.cluster_id.clone(),
            name: shared.config.name.clone(),
            gossip_addr: shared.config.gossip_advertise.to_string(),
            leader: raft.leader.as_ref().map(name_of),
            voters: raft.voters.iter().map(name_of).collect(),
            learners: raft.learners.iter().map(name_of).collect(),
            settings: ClusterSettings {
                voters_max: Some(shared.raft.read().settings.voters_max),
            },
        })
    }

    async fn set_settings(&self, settings: ClusterSettings) -> ApiResult<ClusterInfo> {
        let command = Command::SetSettings {
            voters_max: settings.voters_max,
        };
        self.0
            .raft
            .propose(now_ms(), command)
            .await
            .map_err(propose_error)?;
        self.cluster().await
    }

    async fn leave(&self) -> ApiResult<()> {
        let shared = self.0.clone();
        tokio::spawn(super::cluster::leave(shared));
        Ok(())
    }

    fn extra_routes(&self) -> axum::Router {
        self.0.raft.router()
    }

    async fn apply(&self, body: Bytes) -> ApiResult<ApplyResponse> {
        let spec = shoal_types::parse_app(&body)?;
        let name = spec.name.clone();
        match self
            .0
            .raft
            .propose(now_ms(), Command::PutApp { spec })
            .await
        {
            Ok(Outcome::AppPut { version, changed }) => Ok(ApplyResponse {
                app: name,
                version,
                changed,
            }),
            Ok(other) => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
            Err(error) => Err(propose_error(error)),
        }
    }

    async fn apps(&self) -> ApiResult<Vec<AppView>> {
        self.fresh().await?;
        let unplaced = self
            .0
            .unplaced
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default();
        let state = self.0.raft.read();
        Ok(state
            .apps
            .keys()
            .filter_map(|name| app_view(&state, name, &unplaced))
            .collect())
    }

    async fn app(&self, name: String) -> ApiResult<AppView> {
        self.fresh().await?;
        let unplaced = self
            .0
            .unplaced
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default();
        app_view(&self.0.raft.read(), &name, &unplaced)
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
            .map_err(|error| match error {
                shoal_runtime::RuntimeError::InvalidImage(_) => {
                    ApiError::bad_request(error.to_string())
                }
                other => ApiError::unavailable(other.to_string()),
            })?;
        Ok(images.into_iter().map(image_view).collect())
    }
}

fn image_view(image: shoal_runtime::ImageInfo) -> ImageView {
    ImageView {
        name: image.name,
        digest: image.digest,
        size_bytes: image.size_bytes,
        created_s: image.created_s,
    }
}

//! The node's answers to the API.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use shoal_api::server::{ApiError, ApiResult, Backend, LogOptions, LogStream};
use shoal_api::wire::{
    AppView, ApplyResponse, ImageView, NodeView, ServiceView, TaskView, VersionInfo,
};
use shoal_cluster::ProposeError;
use shoal_runtime::Runtime;
use shoal_state::{ApplyError, Command, Outcome, State};
use shoal_types::{DesiredState, TaskState};

use super::{host, Shared};
use crate::output::now_ms;

pub struct NodeBackend<R>(pub Arc<Shared<R>>);

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

    async fn nodes(&self) -> ApiResult<Vec<NodeView>> {
        let shared = &self.0;
        let now = now_ms();
        let (_, used) = host::memory();
        let state = shared.consensus.read();
        Ok(state
            .nodes
            .values()
            .map(|node| NodeView {
                name: node.name.clone(),
                addr: node.addr.clone(),
                status: node.status,
                role: "voter".into(),
                os: node.os.clone(),
                arch: node.arch.clone(),
                uptime_s: now.saturating_sub(node.started_at_ms) / 1000,
                cpus: node.cpus,
                memory_total_bytes: node.memory_total_bytes,
                memory_used_bytes: if node.name == shared.config.name {
                    used
                } else {
                    0
                },
                labels: node.labels.clone(),
            })
            .collect())
    }

    async fn apply(&self, body: Bytes) -> ApiResult<ApplyResponse> {
        let spec = shoal_types::parse_app(&body)?;
        let name = spec.name.clone();
        match self
            .0
            .consensus
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
        let unplaced = self
            .0
            .unplaced
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default();
        let state = self.0.consensus.read();
        Ok(state
            .apps
            .keys()
            .filter_map(|name| app_view(&state, name, &unplaced))
            .collect())
    }

    async fn app(&self, name: String) -> ApiResult<AppView> {
        let unplaced = self
            .0
            .unplaced
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default();
        app_view(&self.0.consensus.read(), &name, &unplaced)
            .ok_or_else(|| ApiError::not_found(format!("app `{name}` not found; see `shoal apps`")))
    }

    async fn remove_app(&self, name: String) -> ApiResult<()> {
        self.0
            .consensus
            .propose(now_ms(), Command::RemoveApp { name })
            .await
            .map(|_| ())
            .map_err(propose_error)
    }

    async fn tasks(&self, app: Option<String>) -> ApiResult<Vec<TaskView>> {
        let state = self.0.consensus.read();
        let mut tasks: Vec<TaskView> = state
            .tasks
            .values()
            .filter(|task| app.as_ref().is_none_or(|app| &task.app == app))
            .map(TaskView::from)
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

//! The container lifecycle, [`Runtime`] for containerd: a container record
//! with its spec, then its rootfs snapshot and its task; stopped, removed
//! and listed by the labels shoal gives it.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, ListContainersRequest,
    ListTasksRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::v1::{Process, Status as TaskStatus};

use super::content::from_cd;
use super::spec::{build_spec, SPEC_TYPE_URL};
use super::tasks::exit_code;
use super::{cd_err, found, Containerd, RUNC_RUNTIME};
use crate::image::resolve_process;
use crate::{
    validate_config, ContainerConfig, ContainerInfo, ContainerStatus, Result, Runtime,
    RuntimeError, LABEL_TASK,
};

impl Runtime for Containerd {
    async fn ensure_ready(&self) -> Result<()> {
        self.create_namespace().await
    }

    async fn run(&self, config: &ContainerConfig) -> Result<u32> {
        validate_config(config)?;
        let record = self.image_record(&config.image).await?;
        let target = record.target.as_ref().ok_or_else(|| {
            RuntimeError::InvalidImage(format!("image {} has no target", config.image))
        })?;
        let image = self.resolve(&from_cd(target)?).await?;
        let process = resolve_process(config, &image.exec)?;
        let cgroups_path = format!("/shoal/{}/{}", self.namespace, config.id);
        let spec = build_spec(config, &process, &cgroups_path)?;
        let spec = serde_json::to_vec(&spec).map_err(|e| {
            RuntimeError::InvalidConfig(format!("encoding the OCI spec of {}: {e}", config.id))
        })?;
        if let Some(dir) = config.log_path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| RuntimeError::Io {
                    context: format!("creating {}", dir.display()),
                    source,
                })?;
        }

        let container = Container {
            id: config.id.clone(),
            labels: config.labels.clone().into_iter().collect(),
            image: record.name.clone(),
            runtime: Some(ContainerRuntime {
                name: RUNC_RUNTIME.to_string(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: spec,
            }),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: config.id.clone(),
            ..Container::default()
        };
        // Created before its snapshot so that the snapshot is referenced
        // (and safe from garbage collection) from the moment it exists.
        match self
            .containers()
            .create(self.req(CreateContainerRequest {
                container: Some(container),
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {
                return Err(RuntimeError::ContainerExists(config.id.clone()))
            }
            Err(s) => return Err(cd_err(format!("creating container {}", config.id))(s)),
        }
        match self.start(config, &image).await {
            Ok(pid) => Ok(pid),
            Err(e) => {
                if let Err(cleanup) = self.remove(&config.id).await {
                    tracing::warn!(id = %config.id, error = %cleanup, "cleaning up after a failed run");
                }
                Err(e)
            }
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Option<i32>> {
        self.stop_task(id, grace).await
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.delete_task(id).await?;
        let delete = self
            .containers()
            .delete(self.req(DeleteContainerRequest { id: id.to_string() }))
            .await;
        found(delete).map_err(cd_err(format!("deleting container {id}")))?;
        self.remove_snapshot(id).await
    }

    async fn exec(&self, id: &str, args: &[String], timeout: Duration) -> Result<Option<i32>> {
        self.exec_in(id, args, timeout).await
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>> {
        let filter = format!("labels.\"{LABEL_TASK}\"");
        let containers = self
            .containers()
            .list(self.req(ListContainersRequest {
                filters: vec![filter],
            }))
            .await
            .map_err(cd_err("listing containers"))?
            .into_inner()
            .containers;
        let tasks = self
            .tasks()
            .list(self.req(ListTasksRequest {
                filter: String::new(),
            }))
            .await
            .map_err(cd_err("listing tasks"))?
            .into_inner()
            .tasks;
        // containerd 1.6 names a task by its container's id in `id` and
        // leaves `container_id` empty in listings.
        let tasks: HashMap<&str, &Process> = tasks
            .iter()
            .map(|t| {
                (
                    if t.container_id.is_empty() {
                        t.id.as_str()
                    } else {
                        t.container_id.as_str()
                    },
                    t,
                )
            })
            .collect();
        Ok(containers
            .into_iter()
            .map(|c| {
                let task = tasks.get(c.id.as_str()).copied();
                Self::list_info(c, task)
            })
            .collect())
    }
}

impl Containerd {
    fn list_info(container: Container, task: Option<&Process>) -> ContainerInfo {
        let status = match task {
            None => ContainerStatus::Created,
            Some(p) => match TaskStatus::try_from(p.status) {
                Ok(TaskStatus::Stopped) => ContainerStatus::Stopped {
                    exit_code: exit_code(p.exit_status),
                },
                Ok(TaskStatus::Created) | Ok(TaskStatus::Unknown) | Err(_) => {
                    ContainerStatus::Created
                }
                Ok(TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing) => {
                    ContainerStatus::Running { pid: p.pid }
                }
            },
        };
        ContainerInfo {
            id: container.id,
            image: container.image,
            labels: container.labels.into_iter().collect(),
            status,
        }
    }
}

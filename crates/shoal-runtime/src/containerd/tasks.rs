//! A container's task (its process): created and started with its log,
//! signalled, waited for, stopped with a grace period, and deleted.

use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::{
    CreateTaskRequest, DeleteTaskRequest, GetRequest as GetTaskRequest, KillRequest, StartRequest,
    WaitRequest,
};
use containerd_client::types::v1::{Process, Status as TaskStatus};

use super::images::ResolvedImage;
use super::{cd_err, found, Containerd, RPC_TIMEOUT};
use crate::{ContainerConfig, ErrorKind, Result, RuntimeError};

/// How long a task gets to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

pub(super) fn exit_code(status: u32) -> i32 {
    i32::try_from(status).unwrap_or(i32::MAX)
}

/// `file://` URI for the shim; containerd parses it as a URL, so characters
/// with a meaning there are escaped.
fn file_uri(path: &Path) -> String {
    let mut uri = String::from("file://");
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'.' | b'_' | b'~' => {
                uri.push(char::from(*b))
            }
            _ => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri
}

impl Containerd {
    async fn task(&self, id: &str) -> Result<Option<Process>> {
        let reply = self
            .tasks()
            .get(self.req(GetTaskRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await;
        Ok(found(reply)
            .map_err(cd_err(format!("looking up task {id}")))?
            .and_then(|r| r.into_inner().process))
    }

    /// Sends `signal` and waits up to `wait` for the exit; `None` when the
    /// task is still running then.
    async fn signal_and_wait(&self, id: &str, signal: u32, wait: Duration) -> Result<Option<i32>> {
        let kill = KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal,
            all: false,
        };
        // NotFound: the process is already gone; Wait reports how it ended.
        found(self.tasks().kill(self.req(kill)).await)
            .map_err(cd_err(format!("signalling task {id}")))?;
        self.wait_exit(id, "", wait).await
    }

    /// The exit code of container `id`'s task (`exec_id` empty) or of one
    /// of its other processes, or `None` if it still runs after `wait`.
    pub(super) async fn wait_exit(
        &self,
        id: &str,
        exec_id: &str,
        wait: Duration,
    ) -> Result<Option<i32>> {
        let mut request = self.req(WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        });
        request.set_timeout(wait + RPC_TIMEOUT);
        match tokio::time::timeout(wait, self.tasks().wait(request)).await {
            Err(_elapsed) => Ok(None),
            Ok(reply) => Ok(Some(exit_code(
                reply
                    .map_err(cd_err(format!("waiting for a process of {id}")))?
                    .into_inner()
                    .exit_status,
            ))),
        }
    }

    /// Snapshot, task and start for a freshly created container.
    pub(super) async fn start(
        &self,
        config: &ContainerConfig,
        image: &ResolvedImage,
    ) -> Result<u32> {
        let rootfs = self.prepare_rootfs(&config.id, image).await?;
        // The shim reads the scheme from stdout's URI and uses it for both.
        let log = match &self.log_writer {
            Some(binary) => crate::logwriter::binary_uri(binary, &config.log_path),
            None => file_uri(&config.log_path),
        };
        let create = CreateTaskRequest {
            container_id: config.id.clone(),
            rootfs,
            stdin: String::new(),
            stdout: log.clone(),
            stderr: log,
            terminal: false,
            ..CreateTaskRequest::default()
        };
        self.tasks()
            .create(self.req(create))
            .await
            .map_err(cd_err(format!("creating task {}", config.id)))?;
        let start = StartRequest {
            container_id: config.id.clone(),
            exec_id: String::new(),
        };
        let reply = self
            .tasks()
            .start(self.req(start))
            .await
            .map_err(cd_err(format!("starting task {}", config.id)))?;
        Ok(reply.into_inner().pid)
    }

    /// SIGTERM, `grace`, then SIGKILL; the exit code, or `None` when the
    /// container has no task.
    pub(super) async fn stop_task(&self, id: &str, grace: Duration) -> Result<Option<i32>> {
        let Some(task) = self.task(id).await? else {
            return Ok(None);
        };
        if task.status == TaskStatus::Stopped as i32 {
            return Ok(Some(exit_code(task.exit_status)));
        }
        if let Some(code) = self.signal_and_wait(id, SIGTERM, grace).await? {
            return Ok(Some(code));
        }
        match self.signal_and_wait(id, SIGKILL, KILL_WAIT).await? {
            Some(code) => Ok(Some(code)),
            None => Err(still_runs(id)),
        }
    }

    /// Kills the task if it still runs and deletes it; nothing when there is none.
    pub(super) async fn delete_task(&self, id: &str) -> Result<()> {
        if let Some(task) = self.task(id).await? {
            if task.status != TaskStatus::Stopped as i32
                && self
                    .signal_and_wait(id, SIGKILL, KILL_WAIT)
                    .await?
                    .is_none()
            {
                return Err(still_runs(id));
            }
            let delete = self
                .tasks()
                .delete(self.req(DeleteTaskRequest {
                    container_id: id.to_string(),
                }))
                .await;
            found(delete).map_err(cd_err(format!("deleting task {id}")))?;
        }
        Ok(())
    }
}

/// A task that outlived SIGKILL (stuck in the kernel, or a host too busy to
/// reap it) may be gone when asked again.
fn still_runs(id: &str) -> RuntimeError {
    RuntimeError::containerd(
        ErrorKind::Transient,
        format!("task {id} still runs {KILL_WAIT:?} after SIGKILL"),
    )
}

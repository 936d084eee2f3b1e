//! A command run inside a running container, as a health check does: the
//! container's own process settings (user, environment, working
//! directory, capabilities, seccomp) with other arguments, no terminal
//! and no input or output, waited for within a time and killed after it.

use std::time::Duration;

use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, StartRequest,
};

use super::{cd_err, found, Containerd};
use crate::{ErrorKind, Result, RuntimeError};

/// The type of an OCI process spec in an `Any`.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const SIGKILL: u32 = 9;
/// How long a killed command gets to be reaped before it is given up on.
const KILL_WAIT: Duration = Duration::from_secs(5);

impl Containerd {
    /// Runs `args` in container `id` and waits up to `timeout`: its exit
    /// code, or `None` when it ran longer (it is killed then).
    pub(super) async fn exec_in(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<Option<i32>> {
        let process = self.process_spec(id, args).await?;
        let exec_id = format!("check-{}", super::unique_suffix());
        let request = ExecProcessRequest {
            container_id: id.to_string(),
            // No input or output: the shim gives the process null streams.
            stdin: String::new(),
            stdout: String::new(),
            stderr: String::new(),
            terminal: false,
            spec: Some(prost_types::Any {
                type_url: PROCESS_TYPE_URL.to_string(),
                value: process,
            }),
            exec_id: exec_id.clone(),
        };
        // Once asked for, the process may exist whatever the answer: every
        // outcome ends in the same clean-up.
        let created = self
            .tasks()
            .exec(self.req(request))
            .await
            .map_err(cd_err(format!("creating a process in {id}")));
        let outcome = match created {
            Ok(_) => self.start_and_wait(id, &exec_id, timeout).await,
            Err(error) => Err(error),
        };
        let exited = matches!(outcome, Ok(Some(_)));
        self.clean_up(id, &exec_id, exited).await;
        outcome
    }

    /// Starts process `exec_id` and waits up to `timeout` for its exit.
    async fn start_and_wait(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<Option<i32>> {
        let start = StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        self.tasks()
            .start(self.req(start))
            .await
            .map_err(cd_err(format!("starting a process in {id}")))?;
        self.wait_exit(id, exec_id, timeout).await
    }

    /// Kills process `exec_id` unless it `exited`, waits a little for it,
    /// and deletes its record; what fails is logged, as the check's answer
    /// stands.
    async fn clean_up(&self, id: &str, exec_id: &str, exited: bool) {
        if !exited {
            let kill = KillRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                signal: SIGKILL,
                all: false,
            };
            if let Err(error) = found(self.tasks().kill(self.req(kill)).await) {
                tracing::debug!(container = id, %error, "killing a checked process");
            }
            if let Err(error) = self.wait_exit(id, exec_id, KILL_WAIT).await {
                tracing::debug!(container = id, %error, "waiting for a killed checked process");
            }
        }
        let delete = DeleteProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        if let Err(error) = found(self.tasks().delete_process(self.req(delete)).await) {
            tracing::warn!(container = id, %error, "deleting a checked process");
        }
    }

    /// The container's process spec with `args` in place of its own, and
    /// no terminal.
    async fn process_spec(&self, id: &str, args: &[String]) -> Result<Vec<u8>> {
        let reply = self
            .containers()
            .get(self.req(GetContainerRequest { id: id.to_string() }))
            .await
            .map_err(cd_err(format!("looking up container {id}")))?;
        let spec = reply
            .into_inner()
            .container
            .and_then(|container| container.spec)
            .ok_or_else(|| {
                RuntimeError::containerd(ErrorKind::Invalid, format!("container {id} has no spec"))
            })?;
        let mut spec: serde_json::Value = serde_json::from_slice(&spec.value).map_err(|error| {
            RuntimeError::containerd(
                ErrorKind::Invalid,
                format!("container {id}'s spec is not JSON: {error}"),
            )
        })?;
        let process = spec
            .get_mut("process")
            .and_then(serde_json::Value::as_object_mut)
            .ok_or_else(|| {
                RuntimeError::containerd(
                    ErrorKind::Invalid,
                    format!("container {id}'s spec has no process"),
                )
            })?;
        process.insert("args".into(), serde_json::json!(args));
        process.insert("terminal".into(), serde_json::Value::Bool(false));
        serde_json::to_vec(process).map_err(|error| {
            RuntimeError::containerd(
                ErrorKind::Invalid,
                format!("encoding a process spec for {id}: {error}"),
            )
        })
    }
}

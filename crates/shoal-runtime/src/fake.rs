//! [`Runtime`] and [`ImageStore`] in memory, for unit tests and the
//! simulator. It keeps the containerd driver's contract (same errors, same
//! idempotency, same image parsing for `import`) and adds knobs to play the
//! container's part: make a process exit, choose how it reacts to SIGTERM,
//! write its output, or make the next call fail.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::image::{self, Archive, ExecConfig, Limits, ProcessSpec};
use crate::registry::{ImageRef, RegistryAccess};
use crate::{
    validate_config, ContainerConfig, ContainerInfo, ContainerStatus, ErrorKind, ImageInfo,
    ImageResolution, ImageStore, Result, Runtime, RuntimeError, LABEL_TASK,
};

/// Exit code of a process killed by SIGTERM (128 + 15), as runc reports it.
pub const SIGTERM_EXIT_CODE: i32 = 143;
/// Exit code of a process killed by SIGKILL (128 + 9).
pub const SIGKILL_EXIT_CODE: i32 = 137;

/// The fake's pids start above this, as a booted host's would.
const PID_MIN: u32 = 1000;

/// The operations a failure can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeOp {
    EnsureReady,
    Run,
    Stop,
    Remove,
    List,
    Images,
    Import,
    Pull,
    Exec,
}

#[derive(Clone, Debug)]
struct FakeImage {
    info: ImageInfo,
    exec: ExecConfig,
    /// Came from the registry (not imported by hand).
    pulled: bool,
}

#[derive(Clone, Debug)]
struct FakeContainer {
    config: ContainerConfig,
    process: ProcessSpec,
    status: ContainerStatus,
    /// What the process exits with on SIGTERM; `None`: it ignores SIGTERM.
    sigterm_exit_code: Option<i32>,
    /// What a command run in it gives: its exit code, or `None`: it runs
    /// until its time is up. 0 by default.
    exec_outcome: Option<i32>,
}

#[derive(Debug, Default)]
struct State {
    images: BTreeMap<String, FakeImage>,
    /// What a pull finds: the images of a registry that is not there.
    registry: BTreeMap<String, FakeImage>,
    /// Every reference pulled, in order.
    pulled: Vec<String>,
    /// Pulls that wait to be released, with the progress they show.
    held_pulls: BTreeMap<String, (crate::PullProgress, std::sync::Arc<tokio::sync::Notify>)>,
    containers: BTreeMap<String, FakeContainer>,
    snapshots: BTreeSet<String>,
    failures: Vec<(FakeOp, RuntimeError)>,
    next_pid: u32,
    /// How long a registry resolve takes (none by default), and the
    /// resolves under way now and at most so far.
    resolve_pause: Option<std::time::Duration>,
    resolving: usize,
    resolving_max: usize,
}

#[derive(Debug, Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update below is a single assignment; a panic cannot leave
        // the state half-changed.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take_failure(&self, op: FakeOp) -> Result<()> {
        let mut state = self.state();
        match state.failures.iter().position(|(o, _)| *o == op) {
            Some(i) => Err(state.failures.remove(i).1),
            None => Ok(()),
        }
    }

    /// Makes `name` known with busybox-like defaults (`sh`, standard PATH);
    /// returns its normalized name.
    pub fn add_image(&self, name: &str) -> String {
        let exec = ExecConfig {
            env: Some(vec![image::DEFAULT_PATH_ENV.to_string()]),
            cmd: Some(vec!["sh".to_string()]),
            ..ExecConfig::default()
        };
        self.add_image_with_config(name, exec, 0)
    }

    /// Puts `name` in the registry the fake pulls from (busybox-like
    /// defaults); returns its normalized name.
    pub fn add_registry_image(&self, name: &str) -> String {
        let name = self.add_image(name);
        let mut state = self.state();
        if let Some(image) = state.images.remove(&name) {
            state.registry.insert(name.clone(), image);
        }
        name
    }

    /// Makes pulls of `reference` wait, showing `progress`, until
    /// [`FakeRuntime::release_pull`].
    pub fn hold_pull(&self, reference: &str, progress: crate::PullProgress) {
        let name = ImageRef::parse(reference)
            .map(|r| r.to_string())
            .unwrap_or_else(|_| reference.to_string());
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        self.state().held_pulls.insert(name, (progress, notify));
    }

    pub fn release_pull(&self, reference: &str) {
        let name = ImageRef::parse(reference)
            .map(|r| r.to_string())
            .unwrap_or_else(|_| reference.to_string());
        if let Some((_, notify)) = self.state().held_pulls.remove(&name) {
            notify.notify_one();
        }
    }

    /// The names of the images the fake holds now.
    pub fn image_names(&self) -> Vec<String> {
        self.state().images.keys().cloned().collect()
    }

    /// Every reference pulled so far, normalized, in order.
    pub fn pulled(&self) -> Vec<String> {
        self.state().pulled.clone()
    }

    /// Makes `name` known with the given process defaults and size.
    pub fn add_image_with_config(&self, name: &str, exec: ExecConfig, size_bytes: u64) -> String {
        let name = image::normalize_name(name).unwrap_or_else(|_| name.to_string());
        let info = ImageInfo {
            name: name.clone(),
            digest: image::sha256_digest(name.as_bytes()),
            size_bytes,
            created_s: Some(image::now_epoch_s()),
            pulled: false,
        };
        self.state().images.insert(
            name.clone(),
            FakeImage {
                info,
                exec,
                pulled: false,
            },
        );
        name
    }

    /// Makes a running container's process exit with `code`; false when it
    /// was not running.
    pub fn exit(&self, id: &str, code: i32) -> bool {
        match self.state().containers.get_mut(id) {
            Some(c) if matches!(c.status, ContainerStatus::Running { .. }) => {
                c.status = ContainerStatus::Stopped { exit_code: code };
                true
            }
            _ => false,
        }
    }

    /// What a command run in the container gives from now on: its exit
    /// code, or (`None`) it outlives any timeout.
    pub fn on_exec(&self, id: &str, outcome: Option<i32>) -> bool {
        match self.state().containers.get_mut(id) {
            Some(c) => {
                c.exec_outcome = outcome;
                true
            }
            None => false,
        }
    }

    /// How the container's process answers SIGTERM: exit with the code, or
    /// (`None`) ignore it until SIGKILL. The default is dying of it (143).
    pub fn on_sigterm(&self, id: &str, exit_code: Option<i32>) -> bool {
        match self.state().containers.get_mut(id) {
            Some(c) => {
                c.sigterm_exit_code = exit_code;
                true
            }
            None => false,
        }
    }

    /// Makes the next call of `op` fail without doing anything, as when
    /// containerd cannot be reached: a [`RuntimeError::Containerd`] of kind
    /// [`ErrorKind::Transient`] with `message`.
    pub fn fail_next(&self, op: FakeOp, message: impl Into<String>) {
        self.fail_next_with(op, RuntimeError::containerd(ErrorKind::Transient, message));
    }

    /// Registry resolves take `pause` from now on.
    pub fn pause_resolves(&self, pause: std::time::Duration) {
        self.state().resolve_pause = Some(pause);
    }

    /// The most resolves that were under way at once.
    pub fn resolves_at_once_max(&self) -> usize {
        self.state().resolving_max
    }

    /// Makes the next call of `op` fail with `error` without doing anything.
    pub fn fail_next_with(&self, op: FakeOp, error: RuntimeError) {
        self.state().failures.push((op, error));
    }

    /// The process the container runs, as resolved from its config and image.
    pub fn process(&self, id: &str) -> Option<ProcessSpec> {
        self.state().containers.get(id).map(|c| c.process.clone())
    }

    pub fn config(&self, id: &str) -> Option<ContainerConfig> {
        self.state().containers.get(id).map(|c| c.config.clone())
    }

    /// Whether the container's rootfs snapshot exists (from `run` until `remove`).
    pub fn snapshot_exists(&self, id: &str) -> bool {
        self.state().snapshots.contains(id)
    }

    /// Appends `text` to the container's log, as if its process printed it.
    pub fn append_log(&self, id: &str, text: &str) -> Result<()> {
        let path = self
            .config(id)
            .map(|c| c.log_path)
            .ok_or_else(|| RuntimeError::ContainerNotFound(id.to_string()))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| RuntimeError::Io {
                context: format!("opening {}", path.display()),
                source,
            })?;
        file.write_all(text.as_bytes())
            .map_err(|source| RuntimeError::Io {
                context: format!("writing {}", path.display()),
                source,
            })
    }
}

impl Runtime for FakeRuntime {
    async fn ensure_ready(&self) -> Result<()> {
        self.take_failure(FakeOp::EnsureReady)
    }

    async fn run(&self, config: &ContainerConfig) -> Result<u32> {
        self.take_failure(FakeOp::Run)?;
        validate_config(config)?;
        let name = image::normalize_name(&config.image).unwrap_or_else(|_| config.image.clone());
        let exec = match self.state().images.get(&name) {
            Some(image) => image.exec.clone(),
            None => return Err(RuntimeError::ImageNotFound(config.image.clone())),
        };
        let process = image::resolve_process(config, &exec)?;
        if self.state().containers.contains_key(&config.id) {
            return Err(RuntimeError::ContainerExists(config.id.clone()));
        }
        // Like the shim, create the log so readers find it from the start.
        if let Some(dir) = config.log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Io {
                context: format!("creating {}", dir.display()),
                source,
            })?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.log_path)
            .map_err(|source| RuntimeError::Io {
                context: format!("opening {}", config.log_path.display()),
                source,
            })?;

        let mut state = self.state();
        if state.containers.contains_key(&config.id) {
            return Err(RuntimeError::ContainerExists(config.id.clone()));
        }
        state.next_pid = state.next_pid.max(PID_MIN) + 1;
        let pid = state.next_pid;
        state.snapshots.insert(config.id.clone());
        state.containers.insert(
            config.id.clone(),
            FakeContainer {
                config: config.clone(),
                process,
                status: ContainerStatus::Running { pid },
                sigterm_exit_code: Some(SIGTERM_EXIT_CODE),
                exec_outcome: Some(0),
            },
        );
        Ok(pid)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Option<i32>> {
        self.take_failure(FakeOp::Stop)?;
        {
            let mut state = self.state();
            let Some(c) = state.containers.get_mut(id) else {
                return Ok(None);
            };
            match c.status {
                ContainerStatus::Created => return Ok(None),
                ContainerStatus::Stopped { exit_code } => return Ok(Some(exit_code)),
                ContainerStatus::Running { .. } => {}
            }
            if let Some(code) = c.sigterm_exit_code {
                c.status = ContainerStatus::Stopped { exit_code: code };
                return Ok(Some(code));
            }
        }
        // Ignores SIGTERM: it gets the whole grace period, as with containerd,
        // and may still exit by itself meanwhile.
        tokio::time::sleep(grace).await;
        let mut state = self.state();
        let Some(c) = state.containers.get_mut(id) else {
            return Ok(None);
        };
        match c.status {
            ContainerStatus::Stopped { exit_code } => Ok(Some(exit_code)),
            _ => {
                c.status = ContainerStatus::Stopped {
                    exit_code: SIGKILL_EXIT_CODE,
                };
                Ok(Some(SIGKILL_EXIT_CODE))
            }
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.take_failure(FakeOp::Remove)?;
        let mut state = self.state();
        state.containers.remove(id);
        state.snapshots.remove(id);
        Ok(())
    }

    async fn exec(&self, id: &str, _args: &[String], timeout: Duration) -> Result<Option<i32>> {
        self.take_failure(FakeOp::Exec)?;
        let outcome = {
            let mut state = self.state();
            let Some(c) = state.containers.get_mut(id) else {
                return Err(RuntimeError::containerd(
                    ErrorKind::NotFound,
                    format!("container {id} not found"),
                ));
            };
            if !matches!(c.status, ContainerStatus::Running { .. }) {
                return Err(RuntimeError::containerd(
                    ErrorKind::Conflict,
                    format!("container {id} does not run"),
                ));
            }
            c.exec_outcome
        };
        if outcome.is_none() {
            // Runs until its time is up, then is killed.
            tokio::time::sleep(timeout).await;
        }
        Ok(outcome)
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>> {
        self.take_failure(FakeOp::List)?;
        Ok(self
            .state()
            .containers
            .values()
            .filter(|c| c.config.labels.contains_key(LABEL_TASK))
            .map(|c| ContainerInfo {
                id: c.config.id.clone(),
                image: image::normalize_name(&c.config.image)
                    .unwrap_or_else(|_| c.config.image.clone()),
                labels: c.config.labels.clone(),
                status: c.status.clone(),
            })
            .collect())
    }
}

impl ImageStore for FakeRuntime {
    async fn images(&self) -> Result<Vec<ImageInfo>> {
        self.take_failure(FakeOp::Images)?;
        Ok(self
            .state()
            .images
            .values()
            .map(|i| ImageInfo {
                pulled: i.pulled,
                ..i.info.clone()
            })
            .collect())
    }

    async fn pull(&self, reference: &str, _access: &RegistryAccess) -> Result<ImageInfo> {
        self.take_failure(FakeOp::Pull)?;
        let name = ImageRef::parse(reference)?.to_string();
        let held = self.state().held_pulls.get(&name).map(|(_, n)| n.clone());
        if let Some(release) = held {
            release.notified().await;
        }
        let mut state = self.state();
        state.pulled.push(name.clone());
        let Some(image) = state.registry.get(&name).cloned() else {
            return Err(RuntimeError::Registry {
                kind: ErrorKind::ImageMissing,
                message: format!("{name}: fetching the manifest: the registry has no such image"),
            });
        };
        let info = ImageInfo {
            pulled: true,
            ..image.info.clone()
        };
        state.images.insert(
            name,
            FakeImage {
                pulled: true,
                ..image
            },
        );
        Ok(info)
    }

    async fn remove_image(&self, name: &str) -> Result<()> {
        self.take_failure(FakeOp::Images)?;
        match self.state().images.remove(name) {
            Some(_) => Ok(()),
            None => Err(RuntimeError::containerd(
                ErrorKind::NotFound,
                format!("no image {name}"),
            )),
        }
    }

    fn pulls(&self) -> Vec<(String, crate::PullProgress)> {
        self.state()
            .held_pulls
            .iter()
            .map(|(name, (progress, _))| (name.clone(), progress.clone()))
            .collect()
    }

    fn pull_progress(&self, reference: &str) -> Option<crate::PullProgress> {
        let name = ImageRef::parse(reference).ok()?.to_string();
        self.state()
            .held_pulls
            .get(&name)
            .map(|(progress, _)| progress.clone())
    }

    /// The fake has no registry and keeps no blob bytes: pulls never
    /// fetch a blob, so there is nothing to ask peers for.
    fn fetch_blobs_through(&self, _peers: std::sync::Arc<dyn crate::registry::BlobPeers>) {}

    async fn blob(
        &self,
        _digest: &str,
        _offset: u64,
    ) -> Result<Option<(u64, crate::registry::BlobBody)>> {
        Ok(None)
    }

    async fn resolve(&self, reference: &str, _access: &RegistryAccess) -> Result<ImageResolution> {
        self.take_failure(FakeOp::Pull)?;
        let name = ImageRef::parse(reference)?.to_string();
        let pause = {
            let mut state = self.state();
            state.resolving += 1;
            state.resolving_max = state.resolving_max.max(state.resolving);
            state.resolve_pause
        };
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        let mut state = self.state();
        state.resolving -= 1;
        if let Some(image) = state.images.get(&name).filter(|i| !i.pulled) {
            return Ok(ImageResolution {
                name,
                digest: image.info.digest.clone(),
                local: true,
                platforms: Vec::new(),
            });
        }
        match state.registry.get(&name) {
            Some(image) => Ok(ImageResolution {
                name,
                digest: image.info.digest.clone(),
                local: false,
                platforms: vec![image::Platform {
                    os: "linux".into(),
                    architecture: image::host_arch().into(),
                    variant: None,
                }],
            }),
            None => Err(RuntimeError::Registry {
                kind: ErrorKind::ImageMissing,
                message: format!("{name}: fetching the manifest: the registry has no such image"),
            }),
        }
    }

    async fn import(&self, archive: PathBuf, name: Option<String>) -> Result<Vec<ImageInfo>> {
        self.take_failure(FakeOp::Import)?;
        let images = tokio::task::spawn_blocking(move || {
            Archive::extract(&archive, Limits::default())?.images(name.as_deref())
        })
        .await
        .map_err(|e| {
            RuntimeError::containerd(ErrorKind::Internal, format!("reading the archive: {e}"))
        })??;
        let mut infos = Vec::new();
        let mut state = self.state();
        for image in images {
            for name in &image.names {
                let info = ImageInfo {
                    name: name.clone(),
                    digest: image.target.digest.clone(),
                    size_bytes: image.size_bytes(),
                    created_s: Some(image::now_epoch_s()),
                    pulled: false,
                };
                let exec = image.config_file.config.clone().unwrap_or_default();
                state.images.insert(
                    name.clone(),
                    FakeImage {
                        info: info.clone(),
                        exec,
                        pulled: false,
                    },
                );
                infos.push(info);
            }
        }
        Ok(infos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: &str, image: &str, dir: &std::path::Path) -> ContainerConfig {
        ContainerConfig {
            labels: BTreeMap::from([(LABEL_TASK.to_string(), "t".to_string())]),
            ..ContainerConfig::new(id, image, dir.join("log"))
        }
    }

    #[tokio::test]
    async fn injected_failures_hit_once_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new();
        fake.add_image("busybox");
        fake.fail_next(FakeOp::Run, "boom");
        let c = config("a", "busybox", dir.path());
        assert!(matches!(
            fake.run(&c).await,
            Err(RuntimeError::Containerd { kind: ErrorKind::Transient, message }) if message == "boom"
        ));
        assert!(fake.list().await.unwrap().is_empty());
        fake.run(&c).await.unwrap();
        assert_eq!(fake.list().await.unwrap().len(), 1);

        fake.fail_next_with(FakeOp::Remove, RuntimeError::ContainerExists("a".into()));
        let error = fake.remove("a").await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Conflict);
        assert_eq!(fake.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn knobs_apply_only_to_known_containers() {
        let fake = FakeRuntime::new();
        assert!(!fake.exit("nope", 1));
        assert!(!fake.on_sigterm("nope", None));
        assert!(fake.append_log("nope", "x").is_err());
        assert_eq!(fake.add_image("busybox:1"), "docker.io/library/busybox:1");
    }
}

//! The files a task gets from its service's `secrets` and `configs`:
//! written as it starts, only to memory (a directory of the node's on a
//! tmpfs: under `/run` where it is one, as on systemd hosts, else under
//! `/dev/shm`; never the data dir), each bound read-only into the
//! container at its target, and removed when its container goes or stops
//! running.
//!
//! A node that holds the data key opens secrets from its own replica; one
//! that holds none (a worker) asks a voter for the secrets of the task it
//! starts (`POST /v1/internal/task-secrets`), which hands them only to the
//! node the task is placed on. Configs are in the state in the clear.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use sha2::{Digest, Sha256};
use shoal_api::client::{Client, ClientError};
use shoal_api::wire::{SecretValue, TaskSecretsRequest};
use shoal_cluster::log::ReplicatedLog;
use shoal_pki::seal::DataKey;
use shoal_runtime::BindMount;
use shoal_types::{FileKind, Task, Workload};
use zeroize::Zeroizing;

use super::pull_credentials::AskVoters;

/// Where the nodes of this host keep their tasks' files: `/run/shoal/files`
/// where `/run` is a tmpfs (systemd hosts), else `/dev/shm/shoal/files`
/// (a tmpfs on every Linux host; world-writable, so the `shoal` directory
/// in it is taken only when it is root's and no one else may write it).
pub fn files_root() -> PathBuf {
    if on_tmpfs(Path::new("/run")).unwrap_or(false) {
        PathBuf::from("/run/shoal/files")
    } else {
        PathBuf::from("/dev/shm/shoal/files")
    }
}
/// Voters asked for a task's secrets, at most.
const VOTERS_ASKED_MAX: usize = 3;
/// Task directories looked at in one garbage pass.
const DIRS_LISTED_MAX: usize = 65_536;
/// `statfs`'s magic number of a tmpfs (linux/magic.h).
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// This node's directory under `root`: one per data dir, so that several
/// nodes on one host (tests, benchmarks) never share one.
pub fn node_dir(root: &Path, data_dir: &Path) -> PathBuf {
    let data_dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    root.join(hex::encode(&hash[..8]))
}

/// Writes, binds and removes the files of this node's tasks.
pub struct TaskFiles {
    /// This node's directory: a directory per task in it.
    dir: PathBuf,
    data_key: Option<DataKey>,
    voters: Option<AskVoters>,
    /// Tasks being started: their files are being written or about to be
    /// bound, so the garbage pass leaves them (it decides under this lock).
    starting: Mutex<BTreeSet<String>>,
}

/// A task being started, until dropped.
pub struct Starting<'a> {
    files: &'a TaskFiles,
    task_id: String,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.files
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.task_id);
    }
}

/// One file to write: where in the container, its bits and owner, its
/// bytes.
struct File {
    target: String,
    mode: u32,
    uid: u32,
    gid: u32,
    value: Zeroizing<Vec<u8>>,
}

impl TaskFiles {
    pub fn new(dir: PathBuf, data_key: Option<DataKey>, voters: Option<AskVoters>) -> Self {
        TaskFiles {
            dir,
            data_key,
            voters,
            starting: Mutex::default(),
        }
    }

    /// Marks a task as being started until the returned value is dropped
    /// (after its container runs, or failed to).
    pub fn starting(&self, task_id: &str) -> Starting<'_> {
        self.starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task_id.to_string());
        Starting {
            files: self,
            task_id: task_id.to_string(),
        }
    }

    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.dir.join(task_id)
    }

    /// Writes `task`'s files (none when its service lists none) and
    /// returns the mounts that put them in its container.
    pub async fn prepare<L: ReplicatedLog>(
        &self,
        log: &L,
        task: &Task,
    ) -> Result<Vec<BindMount>, String> {
        if task.spec.files().next().is_none() {
            return Ok(Vec::new());
        }
        let secrets = if task.spec.secrets.is_empty() {
            Vec::new()
        } else {
            match self.secrets(log, task).await {
                Ok(secrets) => secrets,
                // Cut off from the voters: a restart takes the files its
                // task had (kept while the task is meant to run).
                Err(error) => {
                    let dir = self.task_dir(&task.id);
                    let targets: Vec<String> = task
                        .spec
                        .files()
                        .map(|(kind, file)| file.target_path(kind))
                        .collect();
                    return tokio::task::spawn_blocking(move || kept_files(&dir, &targets))
                        .await
                        .ok()
                        .flatten()
                        .inspect(|_| {
                            tracing::info!(task = %task.id, %error, "no voter gave the task's secrets: it runs with the files it had");
                        })
                        .ok_or(error);
                }
            }
        };
        let files = {
            let state = log.read();
            let Workload::Container(container) = &task.spec.workload;
            let (uid, gid) = container.user.map_or((0, 0), |user| (user.uid, user.gid));
            let mut files = Vec::new();
            for (kind, file) in task.spec.files() {
                let value = match kind {
                    FileKind::Secret => secrets
                        .iter()
                        .find(|value| value.name == file.name)
                        .and_then(|value| {
                            base64::engine::general_purpose::STANDARD
                                .decode(&value.data)
                                .ok()
                        })
                        .ok_or_else(|| format!("secret {} was not given", file.name))?,
                    FileKind::Config => state
                        .configs
                        .get(&file.name)
                        .and_then(|record| {
                            base64::engine::general_purpose::STANDARD
                                .decode(&record.data)
                                .ok()
                        })
                        .ok_or_else(|| {
                            format!(
                                "no config {} (create it with `shoal config create {} -f FILE`)",
                                file.name, file.name
                            )
                        })?,
                };
                files.push(File {
                    target: file.target_path(kind),
                    mode: file.mode_or_default(kind).0,
                    uid: file.uid.unwrap_or(uid),
                    gid: file.gid.unwrap_or(gid),
                    value: Zeroizing::new(value),
                });
            }
            files
        };
        let dir = self.task_dir(&task.id);
        let root = self.dir.clone();
        tokio::task::spawn_blocking(move || write_files(&root, &dir, &files))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| format!("writing its secrets and configs: {error:#}"))
    }

    /// The values of `task`'s secrets: opened here, or given by a voter.
    async fn secrets<L: ReplicatedLog>(
        &self,
        log: &L,
        task: &Task,
    ) -> Result<Vec<SecretValue>, String> {
        if let Some(key) = &self.data_key {
            return super::files::secrets_of(key, &log.read(), task);
        }
        let Some(voters) = &self.voters else {
            return Err(
                "this node holds no data key and knows no voter to ask for its secrets".into(),
            );
        };
        let request = TaskSecretsRequest {
            task: task.id.clone(),
        };
        let mut last_error = "no voter is known".to_string();
        for addr in (voters.addrs)().iter().take(VOTERS_ASKED_MAX) {
            let answer = match Client::new(addr, &voters.tls, None) {
                Ok(client) => client.task_secrets(&request).await,
                Err(error) => Err(error),
            };
            match answer {
                Ok(given) => return Ok(given.secrets),
                // The rule's answer: another voter would say the same.
                Err(ClientError::Api {
                    status: 403,
                    message,
                    ..
                }) => {
                    return Err(format!(
                        "a voter gives this node no secrets for it: {message}"
                    ))
                }
                Err(error) => last_error = format!("{addr}: {error}"),
            }
        }
        Err(format!("no voter gave its secrets ({last_error})"))
    }

    /// Removes a task's files (nothing when it has none). Blocking.
    pub fn release(&self, task_id: &str) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.task_dir(task_id)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Removes the files of tasks not in `live` and not being started;
    /// returns how many tasks' files went. Blocking.
    pub fn collect_garbage(&self, live: &BTreeSet<String>) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten().take(DIRS_LISTED_MAX) {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if live.contains(name) {
                continue;
            }
            let starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
            if starting.contains(name) {
                continue;
            }
            let released = self.release(name);
            drop(starting);
            match released {
                Ok(()) => removed += 1,
                Err(error) => {
                    tracing::warn!(task = name, %error, "removing the files of a task that no longer runs")
                }
            }
        }
        removed
    }
}

/// The mounts of the files a task was given before, when each of them is
/// still there.
fn kept_files(dir: &Path, targets: &[String]) -> Option<Vec<BindMount>> {
    targets
        .iter()
        .enumerate()
        .map(|(index, target)| {
            let source = dir.join(format!("{index}"));
            source.is_file().then(|| BindMount {
                source,
                destination: target.into(),
                read_only: true,
            })
        })
        .collect()
}

/// Whether `path` is on a tmpfs.
fn on_tmpfs(path: &Path) -> std::io::Result<bool> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string and `stat` is memory
    // statfs(2) fills on success, read only then.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by platform
    Ok(stat.f_type as i64 == TMPFS_MAGIC)
}

/// Checks that `dir` is a directory (not a link to one) of this process's
/// user that no one else may write to: a directory made in a
/// world-writable place by someone else first is not taken.
fn check_private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        anyhow::bail!(
            "{} is not a directory of uid {me} that only it may write to (uid {}, mode {:o}); remove it and the node makes it anew",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// Writes the files into a fresh `dir` under `root` (0700, root's), each
/// with its bits and owner, and returns their mounts.
fn write_files(root: &Path, dir: &Path, files: &[File]) -> anyhow::Result<Vec<BindMount>> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)?;
    // Every directory from the one made in a shared place down.
    let mut made = Some(root);
    for _ in 0..3 {
        let Some(at) = made else { break };
        check_private(at)?;
        made = at.parent().filter(|parent| {
            !matches!(
                parent.to_str(),
                Some("/" | "/run" | "/dev/shm" | "/dev" | "/tmp")
            )
        });
    }
    if !on_tmpfs(root)? {
        anyhow::bail!(
            "{} is not on a tmpfs: secrets are kept only in memory, so the node needs a tmpfs there (/run is one on systemd hosts)",
            root.display()
        );
    }
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
        _ => {}
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    let mut mounts = Vec::new();
    for (index, file) in files.iter().enumerate() {
        let path = dir.join(format!("{index}"));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        out.write_all(&file.value)?;
        std::os::unix::fs::chown(&path, Some(file.uid), Some(file.gid))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))?;
        mounts.push(BindMount {
            source: path,
            destination: file.target.clone().into(),
            read_only: true,
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_data_dir_has_its_own_directory() {
        let root = Path::new("/run/shoal/files");
        let a = node_dir(root, Path::new("/nonexistent/a"));
        let b = node_dir(root, Path::new("/nonexistent/b"));
        assert_ne!(a, b);
        assert_eq!(a, node_dir(root, Path::new("/nonexistent/a")));
        assert!(a.starts_with(root));
    }

    #[test]
    fn files_are_written_with_their_bits_and_owner_and_only_on_a_tmpfs() {
        // A tmpfs on every Linux host.
        let shm = Path::new("/dev/shm");
        assert!(on_tmpfs(shm).expect("statfs"), "/dev/shm is no tmpfs");
        let root = tempfile::Builder::new()
            .prefix("shoal-files-test")
            .tempdir_in(shm)
            .expect("dir");
        let dir = root.path().join("web.a.0.1");
        let files = [
            File {
                target: "/run/secrets/db".into(),
                mode: 0o440,
                uid: 7,
                gid: 8,
                value: Zeroizing::new(b"pw".to_vec()),
            },
            File {
                target: "/app.toml".into(),
                mode: 0o444,
                uid: 0,
                gid: 0,
                value: Zeroizing::new(b"k = 1\n".to_vec()),
            },
        ];
        let mounts = write_files(root.path(), &dir, &files).expect("written");
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].destination, Path::new("/run/secrets/db"));
        assert!(mounts.iter().all(|mount| mount.read_only));
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&mounts[0].source).expect("meta");
        assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o440, 7, 8));
        assert_eq!(std::fs::read(&mounts[1].source).expect("read"), b"k = 1\n");
        let dir_mode = std::fs::metadata(&dir).expect("meta").mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        // Written again (a restart): the same, afresh.
        write_files(root.path(), &dir, &files).expect("rewritten");
        // The disk is refused.
        let disk = tempfile::tempdir().expect("dir");
        if !on_tmpfs(disk.path()).unwrap_or(true) {
            let error =
                write_files(disk.path(), &disk.path().join("t"), &files).expect_err("not a tmpfs");
            assert!(error.to_string().contains("is not on a tmpfs"), "{error}");
        }
        // A directory someone else may write to is not taken.
        let other = tempfile::Builder::new()
            .prefix("shoal-files-test")
            .tempdir_in(shm)
            .expect("dir");
        let open_dir = other.path().join("open");
        std::fs::create_dir(&open_dir).expect("mkdir");
        std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let error =
            write_files(&open_dir, &open_dir.join("t"), &files).expect_err("writable by others");
        assert!(
            error.to_string().contains("only it may write to"),
            "{error}"
        );
        // Collected: only live tasks keep theirs.
        let task_files = TaskFiles::new(root.path().to_path_buf(), None, None);
        write_files(root.path(), &root.path().join("web.a.1.1"), &files).expect("written");
        let live = BTreeSet::from(["web.a.1.1".to_string()]);
        let starting = task_files.starting("web.a.0.1");
        assert_eq!(task_files.collect_garbage(&live), 0, "being started");
        drop(starting);
        assert_eq!(task_files.collect_garbage(&live), 1);
        assert!(!dir.exists());
        assert!(root.path().join("web.a.1.1").exists());
        task_files.release("web.a.1.1").expect("released");
        task_files.release("web.a.1.1").expect("nothing to release");
        assert!(!root.path().join("web.a.1.1").exists());
    }
}

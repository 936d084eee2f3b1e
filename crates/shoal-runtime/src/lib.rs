//! The node's boundary to the container runtime.
//!
//! Two small traits: [`Runtime`], the container lifecycle the promise keeper
//! drives, and [`ImageStore`] beside it, the images containers are run from.
//! [`containerd`] implements both over containerd's gRPC API, [`fake`] in
//! memory for unit tests and the simulator. Both pass the same conformance
//! suite (`tests/conformance.rs`).

mod config;
pub mod containerd;
mod error;
pub mod fake;
pub mod image;
pub mod logwriter;
pub mod registry;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) use config::check_identifier;
pub use config::{
    validate_config, BindMount, ContainerConfig, NetworkMode, Privileges, ID_CHARS_MAX,
};
pub use error::{ErrorKind, Result, RuntimeError};

/// Label every container made by shoal carries: its task id.
pub const LABEL_TASK: &str = "io.shoal.task";
/// Label with the attempt number of the task run in this container.
pub const LABEL_ATTEMPT: &str = "io.shoal.attempt";

/// The status of one container as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ContainerStatus {
    /// The container exists but has no task (never started, or its task was deleted).
    Created,
    Running {
        pid: u32,
    },
    /// The task exited; it is kept until [`Runtime::remove`].
    Stopped {
        exit_code: i32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub status: ContainerStatus,
}

/// The container runtime as the node process sees it. Every method is
/// idempotent where the doc says so, so that the node's reconciler can retry
/// after a crash without knowing how far the last attempt got. Every error
/// has a [`RuntimeError::kind`] to decide by; a runtime that cannot be
/// reached gives [`ErrorKind::Transient`].
pub trait Runtime: Send + Sync + 'static {
    /// Connects and prepares (creates the namespace when missing).
    fn ensure_ready(&self) -> impl Future<Output = Result<()>> + Send;

    /// Creates the container (with a fresh rootfs snapshot keyed by its id)
    /// and starts its process; returns the pid. Fails with
    /// [`ErrorKind::Conflict`] ([`RuntimeError::ContainerExists`]) when the id
    /// is taken (callers remove first), [`ErrorKind::ImageMissing`]
    /// ([`RuntimeError::ImageNotFound`]) when the image is not in the
    /// [`ImageStore`] beside the runtime, and [`ErrorKind::Invalid`] when the
    /// config cannot run as given ([`validate_config`], or no command from
    /// either the config or the image); those leave nothing behind.
    fn run(&self, config: &ContainerConfig) -> impl Future<Output = Result<u32>> + Send;

    /// Sends SIGTERM, waits up to `grace`, then SIGKILL; returns the exit
    /// code. Idempotent: a container that is not running gives its last exit
    /// code (or `None` when it never ran), a missing container `None` (not
    /// [`ErrorKind::NotFound`]).
    fn stop(&self, id: &str, grace: Duration) -> impl Future<Output = Result<Option<i32>>> + Send;

    /// Deletes the task (killing it if it still runs), the container and its
    /// snapshot. Idempotent: a missing container is not an error.
    fn remove(&self, id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Every container in this runtime's namespace that carries [`LABEL_TASK`].
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerInfo>>> + Send;

    /// Runs `args` inside running container `id`, as its own process runs
    /// (user, environment, working directory, privileges), with no input
    /// or output; returns its exit code, or `None` when it ran longer than
    /// `timeout` (it is killed then). [`ErrorKind::NotFound`] when there is
    /// no such container; an error too when it does not run.
    fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<i32>>> + Send;
}

/// An image in an [`ImageStore`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Full, normalized name: `docker.io/library/busybox:latest`.
    pub name: String,
    /// Digest of the manifest the name points to.
    pub digest: String,
    /// Sum of the (compressed) layer sizes plus config, in bytes.
    pub size_bytes: u64,
    /// Creation time in seconds since the Unix epoch, when known (for a
    /// pulled image, when it was pulled).
    pub created_s: Option<i64>,
    /// Pulled from a registry (so it can be pulled again), not imported by
    /// hand.
    #[serde(default)]
    pub pulled: bool,
}

/// How far a pull under way is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    /// Bytes of its layers stored (those already here count as stored).
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Bytes fetched per second since the layers began to come.
    pub bytes_per_s: u64,
    pub layers: Vec<LayerProgress>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerProgress {
    pub digest: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// What an image reference names right now, as [`ImageStore::resolve`]
/// finds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageResolution {
    /// The normalized reference.
    pub name: String,
    /// `sha256:…` of the manifest or index.
    pub digest: String,
    /// Found as an image imported by hand on this node: no registry was
    /// asked, and other nodes' imports of the name may differ.
    pub local: bool,
    /// The platforms the image offers (from its index, or its one
    /// manifest's config); empty when `local`.
    pub platforms: Vec<image::Platform>,
}

/// The images a node runs containers from, kept beside its [`Runtime`] (one
/// value may implement both, sharing one connection). Each way of getting an
/// image onto the node is one method: a registry pull, an archive import.
pub trait ImageStore: Send + Sync + 'static {
    /// Every image in the store, by name.
    fn images(&self) -> impl Future<Output = Result<Vec<ImageInfo>>> + Send;

    /// Pulls `reference` (`host[:port]/repo:tag` or `…@sha256:…`; Docker
    /// Hub names are normalized) for this node's platform, with `access`
    /// for its registry, and names the image by the normalized reference.
    /// Fails with [`ErrorKind::ImageMissing`] when the registry has no such
    /// image, [`ErrorKind::Invalid`] when it refuses the credentials or the
    /// image cannot run here, [`ErrorKind::Transient`] when it cannot be
    /// reached; a blob whose bytes do not match its digest is never stored.
    fn pull(
        &self,
        reference: &str,
        access: &registry::RegistryAccess,
    ) -> impl Future<Output = Result<ImageInfo>> + Send;

    /// What `reference` names now, without pulling it: an image imported
    /// by hand here under that name (no registry asked), else the digest
    /// and platforms its registry serves. Fails as [`ImageStore::pull`]
    /// does.
    fn resolve(
        &self,
        reference: &str,
        access: &registry::RegistryAccess,
    ) -> impl Future<Output = Result<ImageResolution>> + Send;

    /// How far the pull of `reference` under way on this node is, once
    /// its layers are known; `None` when no such pull is under way.
    fn pull_progress(&self, reference: &str) -> Option<PullProgress>;

    /// Every pull under way on this node whose layers are known, by the
    /// name the image will have.
    fn pulls(&self) -> Vec<(String, PullProgress)>;

    /// Removes the image record `name` (as [`ImageStore::images`] lists
    /// it); its content and snapshots go with the runtime's garbage
    /// collection once nothing else holds them. Fails with
    /// [`ErrorKind::NotFound`] when there is no such image.
    fn remove_image(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// From now on, every blob a pull needs is asked of `peers` (the
    /// cluster's other nodes) before its registry; bytes from peers are
    /// checked against the digest as a registry's are.
    fn fetch_blobs_through(&self, peers: std::sync::Arc<dyn registry::BlobPeers>);

    /// A blob this store holds, complete: its size and its bytes from
    /// `offset` on; `None` when there is no such blob here.
    fn blob(
        &self,
        digest: &str,
        offset: u64,
    ) -> impl Future<Output = Result<Option<(u64, registry::BlobBody)>>> + Send;

    /// Imports an OCI image layout tarball or a `docker save` tarball and
    /// unpacks it for the runtime's snapshotter. `name` overrides the name the
    /// archive carries (required when it carries none). Importing an image
    /// that is already there changes nothing.
    fn import(
        &self,
        archive: PathBuf,
        name: Option<String>,
    ) -> impl Future<Output = Result<Vec<ImageInfo>>> + Send;
}

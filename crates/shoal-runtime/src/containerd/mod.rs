//! [`Runtime`](crate::Runtime) and [`ImageStore`](crate::ImageStore) over
//! containerd's gRPC API; this module holds the connection, its namespace,
//! the clients of each service, and how their failures become
//! [`RuntimeError`]s of a kind.
//!
//! Written against containerd 1.6, which has no transfer service: images go
//! in through the content, images, snapshots, diff and leases services.
//! Containers run under the runc v2 shim, with their rootfs an active
//! snapshot keyed by the container id and their output appended to a log by
//! the shim (through a logging binary it runs, or its own `file://` log), so
//! that neither depends on this process staying up.

mod containers;
mod content;
mod exec;
mod images;
mod leases;
mod pull;
mod seccomp;
mod snapshots;
mod spec;
mod tasks;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{CreateNamespaceRequest, Namespace};
use containerd_client::tonic::metadata::AsciiMetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};

use crate::{check_identifier, ErrorKind, Result, RuntimeError};
use images::ResolvedImage;

pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
pub use pull::{LABEL_PULLED_FROM, LAYERS_IN_FLIGHT_MAX};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of every ordinary call (containerd answers in milliseconds).
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Slowest throughput tolerated when writing blobs and applying layers,
/// which sets their deadlines.
const BULK_BYTES_PER_S: u64 = 8 << 20;
/// Replies with thousands of containers (each with its spec) exceed tonic's
/// 4 MiB default.
const REPLY_BYTES_MAX: usize = 256 << 20;
/// Image names with a pull lock kept; unheld ones are dropped beyond it.
const PULL_GATES_MAX: usize = 256;

/// The containerd driver. Cheap to share: one HTTP/2 connection multiplexes
/// all calls.
pub struct Containerd {
    channel: Channel,
    namespace: String,
    namespace_header: AsciiMetadataValue,
    snapshotter: String,
    /// Manifest digest → resolved image; content-addressed, so never stale.
    resolved: Mutex<HashMap<String, Arc<ResolvedImage>>>,
    /// The logging binary the shim runs beside each container (see
    /// [`crate::logwriter`]); without one, the shim's own `file://` log.
    log_writer: Option<std::path::PathBuf>,
    /// Registry clients and their tokens.
    registries: crate::registry::Registries,
    /// Image name → the lock its pulls take turns on.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Image configs read while resolving references, oldest first.
    configs: Mutex<std::collections::VecDeque<(String, bytes::Bytes)>>,
    /// Image name → how far its pull under way is.
    progress: Mutex<HashMap<String, Arc<pull::Counters>>>,
}

fn cd_err(what: impl std::fmt::Display) -> impl FnOnce(Status) -> RuntimeError {
    move |s| {
        RuntimeError::containerd(
            kind_of(s.code()),
            format!("{what}: {} ({:?})", s.message(), s.code()),
        )
    }
}

/// What a gRPC status from containerd means for the caller. containerd's
/// errdefs map onto the codes: not found, already exists, failed
/// precondition (e.g. a task still running), invalid argument, unavailable.
fn kind_of(code: Code) -> ErrorKind {
    match code {
        Code::NotFound => ErrorKind::NotFound,
        Code::AlreadyExists | Code::FailedPrecondition => ErrorKind::Conflict,
        Code::InvalidArgument | Code::OutOfRange => ErrorKind::Invalid,
        // Unreachable, out of time (tonic reports its own client-side
        // timeout as Cancelled), overloaded, or lost a race.
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::ResourceExhausted
        | Code::Aborted => ErrorKind::Transient,
        Code::Ok
        | Code::Unknown
        | Code::Internal
        | Code::Unimplemented
        | Code::DataLoss
        | Code::PermissionDenied
        | Code::Unauthenticated => ErrorKind::Internal,
    }
}

/// `Ok(None)` for NotFound: for deletes and lookups where missing is fine.
fn found<T>(result: std::result::Result<T, Status>) -> std::result::Result<Option<T>, Status> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

/// Unique enough for ingest refs, lease ids and temporary snapshot keys.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn bulk_timeout(size_bytes: u64) -> Duration {
    RPC_TIMEOUT + Duration::from_secs(size_bytes / BULK_BYTES_PER_S)
}

impl Containerd {
    /// Connects to containerd at `socket`; containers, images and snapshots
    /// live in `namespace`, rootfs snapshots are made by `snapshotter`.
    pub async fn connect(socket: &Path, namespace: &str, snapshotter: &str) -> Result<Self> {
        check_identifier("namespace", namespace)?;
        let namespace_header = AsciiMetadataValue::try_from(namespace)
            .map_err(|e| RuntimeError::InvalidConfig(format!("namespace {namespace:?}: {e}")))?;
        if snapshotter.is_empty() {
            return Err(RuntimeError::InvalidConfig(
                "snapshotter name is empty".into(),
            ));
        }
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(socket))
            .await
            .map_err(|_| {
                RuntimeError::containerd(
                    ErrorKind::Transient,
                    format!(
                        "connecting to {} timed out after {CONNECT_TIMEOUT:?}",
                        socket.display()
                    ),
                )
            })?
            .map_err(|e| {
                // Not running (yet), or restarting: the socket is absent
                // or refuses.
                RuntimeError::containerd(
                    ErrorKind::Transient,
                    format!("connecting to {}: {e}", socket.display()),
                )
            })?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
            namespace_header,
            snapshotter: snapshotter.to_string(),
            resolved: Mutex::new(HashMap::new()),
            log_writer: None,
            registries: crate::registry::Registries::default(),
            pulls: Mutex::new(HashMap::new()),
            configs: Mutex::new(std::collections::VecDeque::new()),
            progress: Mutex::new(HashMap::new()),
        })
    }

    /// Logs through `binary` (a program that runs
    /// [`crate::logwriter::run`] when started as `binary log-writer PATH`),
    /// so that no stream loses its tail when a process exits.
    pub fn with_log_writer(mut self, binary: std::path::PathBuf) -> Self {
        self.log_writer = Some(binary);
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// The connection, for callers that need containerd services this type
    /// does not wrap.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Creates this driver's namespace unless it exists.
    async fn create_namespace(&self) -> Result<()> {
        let namespace = Namespace {
            name: self.namespace.clone(),
            labels: HashMap::new(),
        };
        let reply = NamespacesClient::new(self.channel())
            .create(self.req(CreateNamespaceRequest {
                namespace: Some(namespace),
            }))
            .await;
        match reply {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(cd_err(format!("creating namespace {}", self.namespace))(s)),
        }
    }

    fn req<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("containerd-namespace", self.namespace_header.clone());
        request.set_timeout(RPC_TIMEOUT);
        request
    }

    fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel()).max_decoding_message_size(REPLY_BYTES_MAX)
    }
    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel()).max_decoding_message_size(REPLY_BYTES_MAX)
    }
    fn images_client(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel()).max_decoding_message_size(REPLY_BYTES_MAX)
    }
    fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel()).max_decoding_message_size(REPLY_BYTES_MAX)
    }
    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel()).max_decoding_message_size(REPLY_BYTES_MAX)
    }
    fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_what_the_caller_can_do() {
        for (code, kind) in [
            (Code::Unavailable, ErrorKind::Transient),
            (Code::DeadlineExceeded, ErrorKind::Transient),
            (Code::Cancelled, ErrorKind::Transient),
            (Code::NotFound, ErrorKind::NotFound),
            (Code::AlreadyExists, ErrorKind::Conflict),
            (Code::FailedPrecondition, ErrorKind::Conflict),
            (Code::InvalidArgument, ErrorKind::Invalid),
            (Code::Unknown, ErrorKind::Internal),
        ] {
            let error = cd_err("creating task t")(Status::new(code, "why"));
            assert_eq!(error.kind(), kind, "{code:?}");
            assert_eq!(
                error.to_string(),
                format!("containerd: creating task t: why ({code:?})")
            );
        }
    }

    /// What the node sees when containerd is not running: worth retrying.
    #[tokio::test]
    async fn no_containerd_is_transient() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let error = Containerd::connect(&socket, "shoal", DEFAULT_SNAPSHOTTER)
            .await
            .err()
            .expect("nothing listens there");
        assert_eq!(error.kind(), ErrorKind::Transient, "{error}");
        assert!(error.to_string().contains("connecting to"), "{error}");
    }
}

//! [`Runtime`] over containerd's gRPC API (written against containerd 1.6,
//! which has no transfer service: images go in through the content, images,
//! snapshots, diff and leases services).
//!
//! Containers run under the runc v2 shim, with their rootfs an active
//! snapshot keyed by the container id and their output appended by the shim
//! to a `file://` log, so that neither depends on this process staying up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    AbortRequest, AddResourceRequest, ApplyRequest, Container, CreateContainerRequest,
    CreateImageRequest, CreateNamespaceRequest, CreateRequest as CreateLeaseRequest,
    CreateTaskRequest, DeleteContainerRequest, DeleteRequest as DeleteLeaseRequest,
    DeleteTaskRequest, GetImageRequest, GetRequest as GetTaskRequest, Image, Info as ContentInfo,
    InfoRequest, KillRequest, ListContainersRequest, ListImagesRequest, ListTasksRequest,
    Namespace, ReadContentRequest, Resource, StartRequest, UpdateImageRequest,
    UpdateRequest as UpdateContentRequest, WaitRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::metadata::AsciiMetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::types::v1::{Process, Status as TaskStatus};
use containerd_client::types::{Descriptor as CdDescriptor, Mount};
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceType, LinuxResourcesBuilder, MountBuilder, RootBuilder, Spec,
    UserBuilder,
};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::image::{
    self, chain_ids, parse_config, parse_manifest_or_index, pick_manifest, resolve_process,
    Archive, ArchiveImage, Blob, BlobSource, Descriptor, ExecConfig, Limits, ManifestOrIndex,
    ProcessSpec,
};
use crate::{
    check_identifier, validate_config, ContainerConfig, ContainerInfo, ContainerStatus, ImageInfo,
    NetworkMode, Result, Runtime, RuntimeError, LABEL_TASK,
};

pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of every ordinary call (containerd answers in milliseconds).
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a task gets to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Slowest throughput tolerated when writing blobs and applying layers,
/// which sets their deadlines.
const BULK_BYTES_PER_S: u64 = 8 << 20;
const CHUNK_BYTES: usize = 1 << 20;
/// Replies with thousands of containers (each with its spec) exceed tonic's
/// 4 MiB default.
const REPLY_BYTES_MAX: usize = 256 << 20;
const IMAGE_CACHE_ENTRIES_MAX: usize = 64;
/// Leases expire on their own so that a crash mid-import leaks nothing.
const LEASE_EXPIRY_S: i64 = 24 * 3600;
const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;
/// Below this CFS quota (µs per period) the kernel refuses the value.
const CPU_QUOTA_US_MIN: i64 = 1_000;
const CPU_PERIOD_US: u64 = 100_000;

const LABEL_GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";
const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";

/// Docker's default capability set: what a container's root may do without
/// being privileged.
const CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// What `run` needs from an image, resolved from its manifest and config.
#[derive(Debug)]
struct ResolvedImage {
    config: Descriptor,
    layers: Vec<Descriptor>,
    diff_ids: Vec<String>,
    exec: ExecConfig,
}

impl ResolvedImage {
    fn size_bytes(&self) -> u64 {
        self.config.size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

impl From<&ArchiveImage> for ResolvedImage {
    fn from(image: &ArchiveImage) -> Self {
        ResolvedImage {
            config: image.config.clone(),
            layers: image.layers.clone(),
            diff_ids: image.config_file.rootfs.diff_ids.clone(),
            exec: image.config_file.config.clone().unwrap_or_default(),
        }
    }
}

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
}

fn cd_err(what: impl std::fmt::Display) -> impl FnOnce(Status) -> RuntimeError {
    move |s| RuntimeError::Containerd(format!("{what}: {} ({:?})", s.message(), s.code()))
}

/// `Ok(None)` for NotFound: for deletes and lookups where missing is fine.
fn found<T>(result: std::result::Result<T, Status>) -> std::result::Result<Option<T>, Status> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

fn exit_code(status: u32) -> i32 {
    i32::try_from(status).unwrap_or(i32::MAX)
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

fn to_cd(desc: &Descriptor) -> Result<CdDescriptor> {
    Ok(CdDescriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.clone(),
        size: i64::try_from(desc.size).map_err(|_| {
            RuntimeError::InvalidImage(format!("blob {} is too large", desc.digest))
        })?,
        annotations: desc.annotations.clone().into_iter().collect(),
    })
}

fn from_cd(desc: &CdDescriptor) -> Result<Descriptor> {
    image::check_digest(&desc.digest)?;
    Ok(Descriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.clone(),
        size: u64::try_from(desc.size).map_err(|_| {
            RuntimeError::InvalidImage(format!("blob {} has negative size", desc.digest))
        })?,
        annotations: desc.annotations.clone().into_iter().collect(),
        platform: None,
    })
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

/// The OCI runtime spec for a container: oci-spec's defaults (namespaces
/// pid, net, ipc, uts, mount, cgroup; standard mounts; no terminal) with
/// the process, rootfs, limits and cgroup set from the config.
fn build_spec(config: &ContainerConfig, process: &ProcessSpec, cgroups_path: &str) -> Result<Spec> {
    let oci = |e: oci_spec::OciSpecError| {
        RuntimeError::InvalidConfig(format!("building the OCI spec of {}: {e}", config.id))
    };
    let mut spec = Spec::default();

    let mut proc = spec.process().clone().unwrap_or_default();
    proc.set_args(Some(process.args.clone()));
    proc.set_env(Some(process.env.clone()));
    proc.set_cwd(PathBuf::from(&process.cwd));
    proc.set_terminal(Some(false));
    proc.set_user(
        UserBuilder::default()
            .uid(process.uid)
            .gid(process.gid)
            .build()
            .map_err(oci)?,
    );
    let caps: oci_spec::runtime::Capabilities = CAPABILITIES.into_iter().collect();
    proc.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            // Nothing carries over exec or to non-root users, as in Docker.
            .inheritable(oci_spec::runtime::Capabilities::new())
            .ambient(oci_spec::runtime::Capabilities::new())
            .build()
            .map_err(oci)?,
    ));
    spec.set_process(Some(proc));

    let hostname = if config.hostname.is_empty() {
        &config.id
    } else {
        &config.hostname
    };
    spec.set_hostname(Some(hostname.clone()));
    // The shim mounts the snapshot at <bundle>/rootfs.
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()
            .map_err(oci)?,
    ));

    // Deny all devices first: runc then allows only its default set
    // (null, zero, tty, ...), instead of leaving the device cgroup open.
    let mut resources =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(oci)?]);
    if let Some(millis) = config.cpu_millis {
        let quota = i64::try_from(millis.saturating_mul(CPU_PERIOD_US / 1000)).unwrap_or(i64::MAX);
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota.max(CPU_QUOTA_US_MIN))
                .period(CPU_PERIOD_US)
                .build()
                .map_err(oci)?,
        );
    }
    if let Some(bytes) = config.memory_bytes {
        let limit = i64::try_from(bytes).map_err(|_| {
            RuntimeError::InvalidConfig(format!("{}: memory limit too large", config.id))
        })?;
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .build()
                .map_err(oci)?,
        );
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_resources(Some(resources.build().map_err(oci)?));
    linux.set_cgroups_path(Some(PathBuf::from(cgroups_path)));
    if let Some(namespaces) = linux.namespaces_mut() {
        match &config.network {
            NetworkMode::Isolated => {}
            NetworkMode::Host => namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network),
            NetworkMode::Path(path) => {
                for namespace in namespaces.iter_mut() {
                    if namespace.typ() == LinuxNamespaceType::Network {
                        namespace.set_path(Some(path.clone()));
                    }
                }
            }
        }
    }
    spec.set_linux(Some(linux));
    if !config.mounts.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for mount in &config.mounts {
            let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
            if mount.read_only {
                options.push("ro".into());
            }
            mounts.push(
                MountBuilder::default()
                    .destination(mount.destination.clone())
                    .typ("bind")
                    .source(mount.source.clone())
                    .options(options)
                    .build()
                    .map_err(oci)?,
            );
        }
        spec.set_mounts(Some(mounts));
    }
    Ok(spec)
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
                RuntimeError::Containerd(format!(
                    "connecting to {} timed out after {CONNECT_TIMEOUT:?}",
                    socket.display()
                ))
            })?
            .map_err(|e| {
                RuntimeError::Containerd(format!("connecting to {}: {e}", socket.display()))
            })?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
            namespace_header,
            snapshotter: snapshotter.to_string(),
            resolved: Mutex::new(HashMap::new()),
            log_writer: None,
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

    fn req<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("containerd-namespace", self.namespace_header.clone());
        request.set_timeout(RPC_TIMEOUT);
        request
    }

    /// A request whose new resources the lease holds until it is deleted.
    fn leased<T>(&self, message: T, lease: &Lease) -> Request<T> {
        let mut request = self.req(message);
        request
            .metadata_mut()
            .insert("containerd-lease", lease.header.clone());
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

    // -- images -------------------------------------------------------------

    /// Reads a JSON blob (manifest, index, config) from the content store.
    async fn read_json_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let max = Limits::default().json_bytes_max;
        if desc.size > max {
            return Err(RuntimeError::InvalidImage(format!(
                "{} is {} bytes, more than the {max} allowed for JSON documents",
                desc.digest, desc.size
            )));
        }
        let request = self.req(ReadContentRequest {
            digest: desc.digest.clone(),
            offset: 0,
            size: 0,
        });
        let mut stream = match self.content().read(request).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => {
                return Err(RuntimeError::InvalidImage(format!(
                    "blob {} is missing from containerd",
                    desc.digest
                )))
            }
            Err(s) => return Err(cd_err(format!("reading blob {}", desc.digest))(s)),
        };
        let mut bytes = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0));
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(cd_err(format!("reading blob {}", desc.digest)))?
        {
            bytes.extend_from_slice(&chunk.data);
            if bytes.len() as u64 > desc.size {
                return Err(RuntimeError::InvalidImage(format!(
                    "blob {} is longer than its descriptor says",
                    desc.digest
                )));
            }
        }
        Ok(bytes)
    }

    /// From an image record's target down to the platform manifest and its
    /// config.
    async fn resolve(&self, target: &Descriptor) -> Result<Arc<ResolvedImage>> {
        if let Some(hit) = self.cache().get(&target.digest) {
            return Ok(hit.clone());
        }
        let limits = Limits::default();
        let mut desc = target.clone();
        for _ in 0..=image::INDEX_DEPTH_MAX {
            match parse_manifest_or_index(&self.read_json_blob(&desc).await?, &limits)? {
                ManifestOrIndex::Index { manifests } => desc = pick_manifest(&manifests)?.clone(),
                ManifestOrIndex::Manifest { config, layers } => {
                    let file = parse_config(&self.read_json_blob(&config).await?, &limits)?;
                    if file.rootfs.diff_ids.len() != layers.len() {
                        return Err(RuntimeError::InvalidImage(format!(
                            "manifest {} has {} layers but its config {} diff ids",
                            desc.digest,
                            layers.len(),
                            file.rootfs.diff_ids.len()
                        )));
                    }
                    let resolved = Arc::new(ResolvedImage {
                        config,
                        layers,
                        diff_ids: file.rootfs.diff_ids,
                        exec: file.config.unwrap_or_default(),
                    });
                    let mut cache = self.cache();
                    if cache.len() >= IMAGE_CACHE_ENTRIES_MAX {
                        cache.clear();
                    }
                    cache.insert(target.digest.clone(), resolved.clone());
                    return Ok(resolved);
                }
            }
        }
        Err(RuntimeError::InvalidImage(format!(
            "image {} nests indexes deeper than {}",
            target.digest,
            image::INDEX_DEPTH_MAX
        )))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ResolvedImage>>> {
        // The map holds no invariant a panicking holder could break.
        self.resolved
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn image_record(&self, name: &str) -> Result<Image> {
        let normalized = image::normalize_name(name).unwrap_or_else(|_| name.to_string());
        let reply = self
            .images_client()
            .get(self.req(GetImageRequest { name: normalized }))
            .await;
        match found(reply).map_err(cd_err(format!("looking up image {name}")))? {
            Some(r) => r
                .into_inner()
                .image
                .ok_or_else(|| RuntimeError::ImageNotFound(name.to_string())),
            None => Err(RuntimeError::ImageNotFound(name.to_string())),
        }
    }

    async fn put_image(&self, name: &str, target: &Descriptor) -> Result<Image> {
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(to_cd(target)?),
            created_at: None,
            updated_at: None,
        };
        let created = self
            .images_client()
            .create(self.req(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await;
        let stored = match created {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == Code::AlreadyExists => {
                self.images_client()
                    .update(self.req(UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    }))
                    .await
                    .map_err(cd_err(format!("updating image {name}")))?
                    .into_inner()
                    .image
            }
            Err(s) => return Err(cd_err(format!("creating image {name}"))(s)),
        };
        stored.ok_or_else(|| {
            RuntimeError::Containerd(format!("containerd returned no record for image {name}"))
        })
    }

    // -- leases -------------------------------------------------------------

    async fn lease_create(&self) -> Result<Lease> {
        let id = format!("shoal-{}", unique_suffix());
        let labels = HashMap::from([(
            LABEL_GC_EXPIRE.to_string(),
            image::rfc3339(image::now_epoch_s() + LEASE_EXPIRY_S),
        )]);
        self.leases()
            .create(self.req(CreateLeaseRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(cd_err(format!("creating lease {id}")))?;
        let header = AsciiMetadataValue::try_from(id.as_str())
            .map_err(|e| RuntimeError::Containerd(format!("lease id {id}: {e}")))?;
        Ok(Lease { id, header })
    }

    async fn lease_delete(&self, lease: &Lease) -> Result<()> {
        let reply = self
            .leases()
            .delete(self.req(DeleteLeaseRequest {
                id: lease.id.clone(),
                sync: false,
            }))
            .await;
        found(reply).map_err(cd_err(format!("deleting lease {}", lease.id)))?;
        Ok(())
    }

    /// Keeps an existing resource alive for the rest of the lease, for
    /// resources found in place that nothing else may reference yet.
    async fn lease_add(&self, lease: &Lease, kind: &str, id: &str) -> Result<()> {
        let resource = Resource {
            id: id.to_string(),
            r#type: kind.to_string(),
        };
        self.leases()
            .add_resource(self.req(AddResourceRequest {
                id: lease.id.clone(),
                resource: Some(resource),
            }))
            .await
            .map_err(cd_err(format!("adding {kind} {id} to lease {}", lease.id)))?;
        Ok(())
    }

    // -- content ------------------------------------------------------------

    /// Stores a blob unless present; either way it ends up with `labels`.
    async fn write_blob(
        &self,
        lease: &Lease,
        blob: &Blob,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        let digest = &blob.desc.digest;
        let info = self
            .content()
            .info(self.req(InfoRequest {
                digest: digest.clone(),
            }))
            .await;
        if let Some(info) = found(info).map_err(cd_err(format!("looking up blob {digest}")))? {
            return self
                .label_blob(lease, info.into_inner().info, digest, labels)
                .await;
        }
        let reference = format!("shoal-{}-{digest}", unique_suffix());
        match self.stream_blob(lease, blob, &reference, labels).await {
            Ok(()) => Ok(()),
            // Someone else stored it meanwhile.
            Err(StreamError::Exists) => {
                let info = self
                    .content()
                    .info(self.req(InfoRequest {
                        digest: digest.clone(),
                    }))
                    .await;
                let info = info.map_err(cd_err(format!("looking up blob {digest}")))?;
                self.label_blob(lease, info.into_inner().info, digest, labels)
                    .await
            }
            Err(StreamError::Failed(e)) => {
                let abort = self
                    .content()
                    .abort(self.req(AbortRequest {
                        r#ref: reference.clone(),
                    }))
                    .await;
                if let Err(s) = found(abort) {
                    tracing::warn!(reference, error = %s.message(), "aborting a failed content write");
                }
                Err(e)
            }
        }
    }

    async fn label_blob(
        &self,
        lease: &Lease,
        info: Option<ContentInfo>,
        digest: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.lease_add(lease, "content", digest).await?;
        let current = info.map(|i| i.labels).unwrap_or_default();
        if labels.iter().all(|(k, v)| current.get(k) == Some(v)) {
            return Ok(());
        }
        let update = UpdateContentRequest {
            info: Some(ContentInfo {
                digest: digest.to_string(),
                labels: labels.clone().into_iter().collect(),
                ..ContentInfo::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: labels.keys().map(|k| format!("labels.{k}")).collect(),
            }),
        };
        self.content()
            .update(self.req(update))
            .await
            .map_err(cd_err(format!("labelling blob {digest}")))?;
        Ok(())
    }

    /// Content.Write in lockstep (one reply per request), so that no more
    /// than one chunk is ever in flight.
    async fn stream_blob(
        &self,
        lease: &Lease,
        blob: &Blob,
        reference: &str,
        labels: &BTreeMap<String, String>,
    ) -> std::result::Result<(), StreamError> {
        let desc = &blob.desc;
        let what = format!("writing blob {}", desc.digest);
        let total = i64::try_from(desc.size).map_err(|_| {
            RuntimeError::InvalidImage(format!("blob {} is too large", desc.digest))
        })?;
        let mut reader: Box<dyn AsyncRead + Unpin + Send> = match &blob.source {
            BlobSource::File(path) => Box::new(tokio::fs::File::open(path).await.map_err(
                |source| RuntimeError::Io {
                    context: format!("opening {}", path.display()),
                    source,
                },
            )?),
            BlobSource::Bytes(bytes) => Box::new(std::io::Cursor::new(bytes.clone())),
        };
        let mut chunk = vec![0u8; CHUNK_BYTES];
        let mut offset: u64 = 0;
        // The next request: a chunk of data, or the commit once all is sent.
        let mut next = async |offset: &mut u64| -> Result<(WriteContentRequest, bool)> {
            let left = usize::try_from(desc.size - *offset).unwrap_or(usize::MAX);
            let mut request = WriteContentRequest {
                r#ref: reference.to_string(),
                total,
                expected: desc.digest.clone(),
                offset: i64::try_from(*offset).unwrap_or(i64::MAX),
                ..WriteContentRequest::default()
            };
            if left == 0 {
                request.action = WriteAction::Commit as i32;
                request.labels = labels.clone().into_iter().collect();
                return Ok((request, true));
            }
            let n = read_up_to(&mut reader, &mut chunk[..left.min(CHUNK_BYTES)])
                .await
                .map_err(|source| RuntimeError::Io {
                    context: format!("reading blob {}", desc.digest),
                    source,
                })?;
            if n == 0 {
                return Err(RuntimeError::InvalidImage(format!(
                    "blob {} ends after {offset} of {} bytes",
                    desc.digest, desc.size
                )));
            }
            request.action = WriteAction::Write as i32;
            request.data = chunk[..n].to_vec();
            *offset += n as u64;
            Ok((request, false))
        };

        let (sender, mut receiver) = tokio::sync::mpsc::channel::<WriteContentRequest>(1);
        let closed = || {
            StreamError::Failed(RuntimeError::Containerd(format!(
                "{what}: stream closed early"
            )))
        };
        let (first, mut committing) = next(&mut offset).await?;
        // containerd answers nothing before the first request arrives, so it
        // has to be queued before the call.
        sender.send(first).await.map_err(|_| closed())?;
        let mut request = self.leased(
            futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)),
            lease,
        );
        request.set_timeout(bulk_timeout(desc.size));
        let mut replies = match self.content().write(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(write_error(&what, s)),
        };
        // One round per chunk plus the commit; `next` fails rather than
        // return an empty chunk, so this ends.
        loop {
            let reply = replies
                .message()
                .await
                .map_err(|s| write_error(&what, s))?
                .ok_or_else(closed)?;
            if u64::try_from(reply.offset).ok() != Some(offset) {
                return Err(StreamError::Failed(RuntimeError::Containerd(format!(
                    "{what}: containerd is at offset {}, we sent {offset} bytes",
                    reply.offset
                ))));
            }
            if committing {
                return Ok(());
            }
            let (request, commit) = next(&mut offset).await?;
            committing = commit;
            sender.send(request).await.map_err(|_| closed())?;
        }
    }

    // -- snapshots ----------------------------------------------------------

    async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        let request = self.req(StatSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
        });
        let reply = found(self.snapshots().stat(request).await);
        Ok(reply
            .map_err(cd_err(format!("looking up snapshot {key}")))?
            .is_some())
    }

    async fn remove_snapshot(&self, key: &str) -> Result<()> {
        let request = self.req(RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
        });
        found(self.snapshots().remove(request).await)
            .map_err(cd_err(format!("removing snapshot {key}")))?;
        Ok(())
    }

    /// Makes the committed snapshot of every layer stack of `image` exist,
    /// applying the layers that are missing.
    async fn unpack(&self, lease: &Lease, image: &ResolvedImage) -> Result<()> {
        let chain = chain_ids(&image.diff_ids)?;
        let Some(top) = chain.last() else {
            return Ok(());
        };
        if self.snapshot_exists(top).await? {
            return self
                .lease_add(lease, &format!("snapshots/{}", self.snapshotter), top)
                .await;
        }
        let mut parent = String::new();
        for (i, (layer, chain_id)) in image.layers.iter().zip(&chain).enumerate() {
            if self.snapshot_exists(chain_id).await? {
                self.lease_add(lease, &format!("snapshots/{}", self.snapshotter), chain_id)
                    .await?;
            } else {
                self.apply_layer(lease, layer, &image.diff_ids[i], chain_id, &parent)
                    .await?;
            }
            parent = chain_id.clone();
        }
        Ok(())
    }

    async fn apply_layer(
        &self,
        lease: &Lease,
        layer: &Descriptor,
        diff_id: &str,
        chain_id: &str,
        parent: &str,
    ) -> Result<()> {
        let key = format!("shoal-unpack-{}", unique_suffix());
        let prepare = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.clone(),
            parent: parent.to_string(),
            labels: HashMap::new(),
        };
        let mounts = self
            .snapshots()
            .prepare(self.leased(prepare, lease))
            .await
            .map_err(cd_err(format!(
                "preparing a snapshot for layer {}",
                layer.digest
            )))?
            .into_inner()
            .mounts;
        let result = self
            .apply_and_commit(lease, layer, diff_id, chain_id, &key, mounts)
            .await;
        if result.is_err() {
            if let Err(e) = self.remove_snapshot(&key).await {
                tracing::warn!(key, error = %e, "removing the snapshot of a failed unpack");
            }
        }
        result
    }

    async fn apply_and_commit(
        &self,
        lease: &Lease,
        layer: &Descriptor,
        diff_id: &str,
        chain_id: &str,
        key: &str,
        mounts: Vec<Mount>,
    ) -> Result<()> {
        let mut request = self.req(ApplyRequest {
            diff: Some(to_cd(layer)?),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        });
        request.set_timeout(bulk_timeout(layer.size));
        let applied = DiffClient::new(self.channel())
            .apply(request)
            .await
            .map_err(cd_err(format!("applying layer {}", layer.digest)))?
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default();
        if applied != diff_id {
            return Err(RuntimeError::InvalidImage(format!(
                "layer {} unpacks to {applied}, but the image config says {diff_id}",
                layer.digest
            )));
        }
        let commit = CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: chain_id.to_string(),
            key: key.to_string(),
            labels: HashMap::new(),
        };
        match self.snapshots().commit(self.leased(commit, lease)).await {
            Ok(_) => Ok(()),
            // Unpacked concurrently by someone else: theirs is as good.
            Err(s) if s.code() == Code::AlreadyExists => self.remove_snapshot(key).await,
            Err(s) => Err(cd_err(format!("committing snapshot {chain_id}"))(s)),
        }
    }

    /// Unpacks an image found packed at `run` (imported by other tools, or
    /// for another snapshotter), and labels its config so the garbage
    /// collector keeps the result.
    async fn unpack_for_run(&self, image: &ResolvedImage) -> Result<()> {
        let lease = self.lease_create().await?;
        let result = async {
            self.unpack(&lease, image).await?;
            let labels = self.config_labels(image)?;
            let info = self
                .content()
                .info(self.req(InfoRequest {
                    digest: image.config.digest.clone(),
                }))
                .await;
            let info = info.map_err(cd_err(format!("looking up blob {}", image.config.digest)))?;
            self.label_blob(
                &lease,
                info.into_inner().info,
                &image.config.digest,
                &labels,
            )
            .await
        }
        .await;
        let deleted = self.lease_delete(&lease).await;
        result.and(deleted)
    }

    /// The label on an image config that holds its unpacked snapshot.
    fn config_labels(&self, image: &ResolvedImage) -> Result<BTreeMap<String, String>> {
        let chain = chain_ids(&image.diff_ids)?;
        Ok(chain
            .last()
            .map(|top| {
                (
                    format!("{LABEL_GC_REF_SNAPSHOT}.{}", self.snapshotter),
                    top.clone(),
                )
            })
            .into_iter()
            .collect())
    }

    // -- import -------------------------------------------------------------

    async fn store_images(&self, lease: &Lease, images: &[ArchiveImage]) -> Result<Vec<ImageInfo>> {
        let mut infos = Vec::new();
        for image in images {
            let resolved = ResolvedImage::from(image);
            let config_labels = self.config_labels(&resolved)?;
            for blob in &image.blobs {
                let mut labels = blob.labels.clone();
                if blob.desc.digest == image.config.digest {
                    labels.extend(config_labels.clone());
                }
                self.write_blob(lease, blob, &labels).await?;
            }
            self.unpack(lease, &resolved).await?;
            // Named only once complete, so a visible image is always runnable.
            for name in &image.names {
                let record = self.put_image(name, &image.target).await?;
                infos.push(ImageInfo {
                    name: name.clone(),
                    digest: image.target.digest.clone(),
                    size_bytes: image.size_bytes(),
                    created_s: record.created_at.map(|t| t.seconds),
                });
            }
        }
        Ok(infos)
    }

    // -- tasks --------------------------------------------------------------

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
        let mut request = self.req(WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        });
        request.set_timeout(wait + RPC_TIMEOUT);
        match tokio::time::timeout(wait, self.tasks().wait(request)).await {
            Err(_elapsed) => Ok(None),
            Ok(reply) => Ok(Some(exit_code(
                reply
                    .map_err(cd_err(format!("waiting for task {id}")))?
                    .into_inner()
                    .exit_status,
            ))),
        }
    }

    /// Snapshot, task and start for a freshly created container.
    async fn start(&self, config: &ContainerConfig, image: &ResolvedImage) -> Result<u32> {
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

    async fn prepare_rootfs(&self, id: &str, image: &ResolvedImage) -> Result<Vec<Mount>> {
        let parent = chain_ids(&image.diff_ids)?.pop().unwrap_or_default();
        let (mut cleared, mut unpacked) = (false, false);
        // At most one retry for each of the two fixable failures.
        for _ in 0..3 {
            let prepare = PrepareSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: id.to_string(),
                parent: parent.clone(),
                labels: HashMap::new(),
            };
            match self.snapshots().prepare(self.req(prepare)).await {
                Ok(reply) => return Ok(reply.into_inner().mounts),
                // The container did not exist until just now, so a snapshot
                // with its key is left over from an interrupted run or remove.
                Err(s) if s.code() == Code::AlreadyExists && !cleared => {
                    cleared = true;
                    self.remove_snapshot(id).await?;
                }
                Err(s) if s.code() == Code::NotFound && !unpacked && !parent.is_empty() => {
                    unpacked = true;
                    self.unpack_for_run(image).await?;
                }
                Err(s) => return Err(cd_err(format!("preparing the rootfs snapshot of {id}"))(s)),
            }
        }
        Err(RuntimeError::Containerd(format!(
            "preparing the rootfs snapshot of {id} kept failing"
        )))
    }

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

fn write_error(what: &str, s: Status) -> StreamError {
    match s.code() {
        Code::AlreadyExists => StreamError::Exists,
        // Digest or size mismatch at commit: the archive lied about the blob.
        Code::FailedPrecondition | Code::InvalidArgument => StreamError::Failed(
            RuntimeError::InvalidImage(format!("{what}: {}", s.message())),
        ),
        _ => StreamError::Failed(cd_err(what)(s)),
    }
}

impl Runtime for Containerd {
    async fn ensure_ready(&self) -> Result<()> {
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
            None => Err(RuntimeError::Containerd(format!(
                "task {id} still runs {KILL_WAIT:?} after SIGKILL"
            ))),
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        if let Some(task) = self.task(id).await? {
            if task.status != TaskStatus::Stopped as i32
                && self
                    .signal_and_wait(id, SIGKILL, KILL_WAIT)
                    .await?
                    .is_none()
            {
                return Err(RuntimeError::Containerd(format!(
                    "task {id} still runs {KILL_WAIT:?} after SIGKILL"
                )));
            }
            let delete = self
                .tasks()
                .delete(self.req(DeleteTaskRequest {
                    container_id: id.to_string(),
                }))
                .await;
            found(delete).map_err(cd_err(format!("deleting task {id}")))?;
        }
        let delete = self
            .containers()
            .delete(self.req(DeleteContainerRequest { id: id.to_string() }))
            .await;
        found(delete).map_err(cd_err(format!("deleting container {id}")))?;
        self.remove_snapshot(id).await
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

    async fn images(&self) -> Result<Vec<ImageInfo>> {
        let records = self
            .images_client()
            .list(self.req(ListImagesRequest {
                filters: Vec::new(),
            }))
            .await
            .map_err(cd_err("listing images"))?
            .into_inner()
            .images;
        let mut infos = Vec::with_capacity(records.len());
        for record in records {
            let Some(target) = record.target.as_ref() else {
                continue;
            };
            let target = from_cd(target)?;
            // One unreadable image must not hide the others.
            let size_bytes = match self.resolve(&target).await {
                Ok(image) => image.size_bytes(),
                Err(e) => {
                    tracing::warn!(image = %record.name, error = %e, "image content unreadable");
                    target.size
                }
            };
            infos.push(ImageInfo {
                name: record.name,
                digest: target.digest,
                size_bytes,
                created_s: record.created_at.map(|t| t.seconds),
            });
        }
        Ok(infos)
    }

    async fn import(&self, archive: PathBuf, name: Option<String>) -> Result<Vec<ImageInfo>> {
        let (archive, images) = tokio::task::spawn_blocking(move || {
            let archive = Archive::extract(&archive, Limits::default())?;
            let images = archive.images(name.as_deref())?;
            Ok::<_, RuntimeError>((archive, images))
        })
        .await
        .map_err(|e| RuntimeError::Containerd(format!("reading the archive: {e}")))??;
        let lease = self.lease_create().await?;
        let stored = self.store_images(&lease, &images).await;
        let released = self.lease_delete(&lease).await;
        // Removing the extracted files is blocking work too.
        let _ = tokio::task::spawn_blocking(move || drop(archive)).await;
        let infos = stored?;
        released?;
        Ok(infos)
    }
}

/// Outcome of a content write that may find the blob already stored.
enum StreamError {
    Exists,
    Failed(RuntimeError),
}

impl From<RuntimeError> for StreamError {
    fn from(e: RuntimeError) -> Self {
        StreamError::Failed(e)
    }
}

struct Lease {
    id: String,
    header: AsciiMetadataValue,
}

/// Fills `buf` as far as the reader allows; 0 only at the end.
async fn read_up_to(
    reader: &mut (dyn AsyncRead + Unpin + Send),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

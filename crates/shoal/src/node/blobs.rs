//! Image blobs fetched once per cluster.
//!
//! Every blob has a *home*: of the nodes alive, the one that ranks first
//! for its digest (rendezvous hashing, so every node names the same home
//! from its own replica and a node joining or leaving moves only its own
//! share). A node that needs a blob asks its home before the registry. The
//! home serves it from its content store when it holds it; otherwise it
//! fetches it from the registry once, into a spool file, and every node
//! that asks (itself included) reads that file as it grows. Bytes from a
//! home are checked against the digest like a registry's, so a home is
//! trusted with nothing; a home that does not answer, refuses or runs an
//! older release leaves the asker to the registry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use shoal_api::server::ApiError;
use shoal_cluster::log::ReplicatedLog;
use shoal_runtime::image::Descriptor;
use shoal_runtime::registry::{BlobBody, BlobPeers, ImageRef, Registries, RegistryAccess};
use shoal_runtime::ImageStore;
use shoal_types::{NodeStatus, Workload};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// The route a home serves blobs on (node certificates only, as every
/// `/v1/internal/` route).
pub const BLOB_PATH: &str = "/v1/internal/blobs/{digest}";
/// Fetches into the spool at once; a home asked for more answers 503 and
/// the asker goes to the registry.
const FETCHES_MAX: usize = 32;
/// Bytes of the blobs in the spool at once, fetching or kept a while.
const SPOOL_BYTES_MAX: u64 = 8 << 30;
/// Largest blob a home fetches for others (bigger ones come from the
/// registry to each node).
const BLOB_BYTES_MAX: u64 = SPOOL_BYTES_MAX;
/// Blob answers a node streams at once.
const BLOB_STREAMS_MAX: usize = 64;
/// A finished fetch's file stays this long for nodes that ask late.
const SPOOL_KEEP: Duration = Duration::from_secs(120);
/// Bytes read from a spool file at once.
const READ_CHUNK_BYTES: usize = 256 << 10;
/// Time a home has to answer (headers); its bytes then follow at the pace
/// the download watches.
const HOME_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest failure message kept for readers of a spool.
const FAILURE_BYTES_MAX: usize = 512;
/// Nodes that run an image asked for one of its blobs before its home.
const HOLDERS_ASKED_MAX: usize = 2;
/// Time one node has to give a manifest it holds, whole.
const HELD_DOCUMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How far a spooled fetch is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Progress {
    /// Bytes in the file so far.
    Running(u64),
    Done,
    Failed(String),
}

/// One blob being fetched into (or just fetched into) a spool file.
pub struct Fetch {
    path: PathBuf,
    size: u64,
    /// Opened when the fetch began, so that a reader never finds the file
    /// gone; read at offsets.
    file: Arc<std::fs::File>,
    /// Its writer, the task that fetches, holds the sender: when that task
    /// is gone, readers know.
    progress: watch::Receiver<Progress>,
}

impl Fetch {
    /// Whether joining it gives the blob: done, or running with its writer.
    fn usable(&self) -> bool {
        match *self.progress.borrow() {
            Progress::Done => true,
            Progress::Failed(_) => false,
            Progress::Running(_) => self.progress.has_changed().is_ok(),
        }
    }

    fn running(&self) -> bool {
        matches!(*self.progress.borrow(), Progress::Running(_)) && self.usable()
    }
}

/// Why a node will not fetch a blob for the cluster now.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Too many fetches or bytes under way.
    Busy,
    /// The rest of a blob (an offset) whose fetch is no longer under way:
    /// a new fetch would start from the first byte.
    NotUnderWay,
    /// The blob is being fetched with another size.
    SizeDiffers,
    /// The registry is one the cluster's state does not name.
    UnknownRegistry,
    /// The spool file could not be made.
    Disk(String),
}

/// The fetches a home makes for the cluster, by digest.
pub struct Spool {
    dir: PathBuf,
    fetches: Mutex<HashMap<String, Arc<Fetch>>>,
    made: std::sync::atomic::AtomicU64,
}

impl Spool {
    /// A spool in `dir`, emptied of what an earlier run left.
    pub fn open(dir: PathBuf) -> std::io::Result<Spool> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Spool {
            dir,
            fetches: Mutex::default(),
            made: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The fetch of `desc` under way (or finished a moment ago), else a new
    /// one of the bytes `source` gives; the latter only for a reader from
    /// the first byte.
    pub fn join(
        self: &Arc<Self>,
        desc: &Descriptor,
        offset: u64,
        source: impl FnOnce() -> BlobBody,
    ) -> Result<Arc<Fetch>, Refused> {
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fetch) = fetches.get(&desc.digest) {
            if fetch.size != desc.size {
                return Err(Refused::SizeDiffers);
            }
            if fetch.usable() {
                return Ok(fetch.clone());
            }
        }
        if offset > 0 {
            return Err(Refused::NotUnderWay);
        }
        fetches.remove(&desc.digest);
        let bytes: u64 = fetches.values().map(|f| f.size).sum();
        let running = fetches.values().filter(|f| f.running()).count();
        if running >= FETCHES_MAX || bytes.saturating_add(desc.size) > SPOOL_BYTES_MAX {
            return Err(Refused::Busy);
        }
        let n = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hex = desc.digest.trim_start_matches("sha256:");
        let path = self.dir.join(format!("{hex}.{n}"));
        let disk = |e: std::io::Error| Refused::Disk(format!("{}: {e}", path.display()));
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(disk)?;
        let reader = std::fs::File::open(&path).map_err(disk)?;
        let (sender, progress) = watch::channel(Progress::Running(0));
        let fetch = Arc::new(Fetch {
            path,
            size: desc.size,
            file: Arc::new(reader),
            progress,
        });
        fetches.insert(desc.digest.clone(), fetch.clone());
        drop(fetches);
        let spool = self.clone();
        let digest = desc.digest.clone();
        let body = source();
        let running = fetch.clone();
        tokio::spawn(async move {
            let writer = tokio::fs::File::from_std(writer);
            match spool_into(writer, body, &running, &sender).await {
                Ok(()) => {
                    sender.send_replace(Progress::Done);
                    tracing::debug!(blob = %digest, "blob fetched for the cluster");
                    tokio::time::sleep(SPOOL_KEEP).await;
                }
                Err(mut why) => {
                    tracing::warn!(blob = %digest, error = %why, "fetching a blob for the cluster failed");
                    why.truncate(why.floor_char_boundary(FAILURE_BYTES_MAX));
                    sender.send_replace(Progress::Failed(why));
                }
            }
            spool.forget(&digest, &running);
        });
        Ok(fetch)
    }

    /// Removes a fetch and its file (readers hold it open and read on).
    fn forget(&self, digest: &str, fetch: &Arc<Fetch>) {
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        if fetches.get(digest).is_some_and(|f| Arc::ptr_eq(f, fetch)) {
            fetches.remove(digest);
        }
        drop(fetches);
        let _ = std::fs::remove_file(&fetch.path);
    }
}

/// Writes `body` into `file`, telling readers how far it is.
async fn spool_into(
    mut file: tokio::fs::File,
    mut body: BlobBody,
    fetch: &Fetch,
    progress: &watch::Sender<Progress>,
) -> Result<(), String> {
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        written += chunk.len() as u64;
        if written > fetch.size {
            return Err(format!(
                "more bytes than the {} the descriptor says",
                fetch.size
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("writing {}: {e}", fetch.path.display()))?;
        // Readers read what the file holds: flushed before it is said.
        file.flush()
            .await
            .map_err(|e| format!("writing {}: {e}", fetch.path.display()))?;
        progress.send_replace(Progress::Running(written));
    }
    if written != fetch.size {
        return Err(format!(
            "the blob ended after {written} of {} bytes",
            fetch.size
        ));
    }
    Ok(())
}

impl Fetch {
    /// The blob's bytes from `offset` on, as they reach the file.
    pub fn body(self: &Arc<Self>, offset: u64) -> BlobBody {
        let reader = SpoolReader {
            fetch: self.clone(),
            progress: self.progress.clone(),
            pos: offset,
            over: false,
        };
        Box::pin(futures::stream::unfold(reader, |mut r| async move {
            if r.over {
                return None;
            }
            let item = r.next().await?;
            if item.is_err() {
                r.over = true;
            }
            Some((item, r))
        }))
    }
}

/// One reader of a spool file, following the fetch that writes it.
struct SpoolReader {
    fetch: Arc<Fetch>,
    progress: watch::Receiver<Progress>,
    pos: u64,
    over: bool,
}

impl SpoolReader {
    /// The next bytes the file holds, waiting for them; `None` at the end.
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        loop {
            let progress = self.progress.borrow_and_update().clone();
            let available = match &progress {
                Progress::Running(n) => *n,
                Progress::Done => self.fetch.size,
                Progress::Failed(why) => {
                    return Some(Err(std::io::Error::other(format!(
                        "the home's fetch failed: {why}"
                    ))))
                }
            };
            if self.pos < available {
                let len = (available - self.pos).min(READ_CHUNK_BYTES as u64);
                return Some(self.read(len).await);
            }
            if progress == Progress::Done {
                return None;
            }
            // The writer gone without a word (it cannot be, short of a
            // panic): the reader ends rather than wait.
            if self.progress.changed().await.is_err() {
                return Some(Err(std::io::Error::other("the home's fetch was dropped")));
            }
        }
    }

    async fn read(&mut self, len: u64) -> std::io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let (file, pos) = (self.fetch.file.clone(), self.pos);
        let buf = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, pos).map(|()| buf)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.pos += len;
        Ok(Bytes::from(buf))
    }
}

/// The node of `nodes` (name, API address) that ranks first for `digest`.
fn home_of<'a>(
    digest: &str,
    nodes: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<(&'a str, &'a str)> {
    nodes.max_by_key(|(name, _)| (rank(digest, name), *name))
}

/// A node's rank for a digest.
fn rank(digest: &str, node: &str) -> u64 {
    shoal_types::rendezvous_rank(digest, node)
}

/// The cluster as a source of blobs: the home of each, or the spool here
/// when this node is its home.
pub struct ClusterBlobs<L> {
    pub node: String,
    pub log: L,
    /// The registry passwords this node holds (never asked of a voter
    /// for another node's fetch).
    pub credentials: Arc<super::pull_credentials::PullCredentials>,
    /// Node certificates, no overall timeout (bodies are long).
    pub client: reqwest::Client,
    pub spool: Arc<Spool>,
    /// The registry clients the spool fetches with (never through peers).
    pub registries: Arc<Registries>,
}

impl<L: ReplicatedLog> ClusterBlobs<L> {
    /// The fetch of `desc` into this node's spool, joined, or started for
    /// a reader from its first byte.
    ///
    /// Any node may ask, so what a home fetches is bounded by the state:
    /// only from a registry the state names (by its settings or an app's
    /// image), and with the registry's credentials only for a repository
    /// an app names; else anonymously, as the asker could itself.
    pub fn fetch(
        &self,
        reference: &ImageRef,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<Arc<Fetch>, Refused> {
        let access = self.fetch_access(reference)?;
        join_fetch(
            &self.spool,
            &self.registries,
            reference,
            desc,
            offset,
            &access,
        )
    }

    /// What a fetch for the cluster of `reference` may use, or why it may
    /// not be made.
    fn fetch_access(&self, reference: &ImageRef) -> Result<RegistryAccess, Refused> {
        let (host_named, repository_named) = named_by_state(&self.log.read(), reference);
        if !host_named {
            return Err(Refused::UnknownRegistry);
        }
        let mut access = super::pull_credentials::access_held(
            &self.log,
            &self.credentials,
            &reference.to_string(),
        );
        if !repository_named {
            access.username = None;
            access.password = None;
        }
        Ok(access)
    }
}

/// The spool's fetch of `desc` from its registry, joined or started.
fn join_fetch(
    spool: &Arc<Spool>,
    registries: &Arc<Registries>,
    reference: &ImageRef,
    desc: &Descriptor,
    offset: u64,
    access: &RegistryAccess,
) -> Result<Arc<Fetch>, Refused> {
    spool.join(desc, offset, || {
        Box::pin(registries.blob(reference, access, desc))
    })
}

/// Whether the state names `reference`'s registry (settings, or an app's
/// image there), and its repository (an app's image).
fn named_by_state(state: &shoal_state::State, reference: &ImageRef) -> (bool, bool) {
    let host = reference.registry();
    let mut host_named = state.registries.contains_key(host);
    for app in state.apps.values() {
        for service in &app.spec.services {
            let shoal_types::Workload::Container(container) = &service.workload;
            let Ok(image) = ImageRef::parse(&container.image) else {
                continue;
            };
            if image.registry() == host {
                host_named = true;
                if image.repository() == reference.repository() {
                    return (true, true);
                }
            }
        }
    }
    (host_named, false)
}

impl<L: ReplicatedLog> ClusterBlobs<L> {
    /// Up to [`HOLDERS_ASKED_MAX`] other alive nodes that run a task of
    /// an image of `reference`'s repository, in the blob's rank order, then
    /// those that hold one ahead for such a service (its standby): they
    /// likely hold the blob (one that does not answers 404).
    fn holders(&self, reference: &ImageRef, digest: &str) -> Vec<(String, String)> {
        let state = self.log.read();
        // The services of that repository: apps are few beside tasks, so
        // references are parsed per service, not per task.
        let services: BTreeSet<(&str, &str)> = state
            .apps
            .iter()
            .flat_map(|(name, app)| {
                app.spec.services.iter().filter_map(move |service| {
                    let Workload::Container(container) = &service.workload;
                    let image = ImageRef::parse(&container.image).ok()?;
                    (image.registry() == reference.registry()
                        && image.repository() == reference.repository())
                    .then_some((name.as_str(), service.name.as_str()))
                })
            })
            .collect();
        if services.is_empty() {
            return Vec::new();
        }
        let alive = |name: &str| {
            state
                .nodes
                .get(name)
                .filter(|n| n.name != self.node)
                .filter(|n| n.status == NodeStatus::Alive && !n.addr.is_empty())
                .map(|n| (n.name.clone(), n.addr.clone()))
        };
        let mut holders: Vec<(String, String)> = state
            .tasks
            .values()
            .filter(|t| t.status.state == shoal_types::TaskState::Running)
            .filter(|t| services.contains(&(t.app.as_str(), t.service.as_str())))
            .filter_map(|t| alive(&t.node))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        holders.sort_by_key(|(name, _)| std::cmp::Reverse(rank(digest, name)));
        // The nodes holding it ahead, worked out for these services only.
        let mut running: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
        for task in state.tasks.values() {
            let key = (task.app.as_str(), task.service.as_str());
            if task.desired == shoal_types::DesiredState::Running && services.contains(&key) {
                running.entry(key).or_default().insert(task.node.as_str());
            }
        }
        let none = BTreeSet::new();
        let mut ahead: Vec<(String, String)> = services
            .iter()
            .filter_map(|&(app, name)| {
                let spec = state.apps.get(app)?;
                let service = spec.spec.services.iter().find(|s| s.name == name)?;
                let on = running.get(&(app, name)).unwrap_or(&none);
                Some(shoal_sched::prepull_nodes(&state, app, service, on))
            })
            .flatten()
            .filter_map(alive)
            .filter(|node| !holders.contains(node))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        ahead.sort_by_key(|(name, _)| std::cmp::Reverse(rank(digest, name)));
        holders.extend(ahead);
        holders.truncate(HOLDERS_ASKED_MAX);
        holders
    }

    /// The blob's home, unless it is this node.
    fn home(&self, digest: &str) -> Option<(String, String)> {
        let state = self.log.read();
        home_of(
            digest,
            state
                .nodes
                .values()
                .filter(|n| n.status == NodeStatus::Alive && !n.addr.is_empty())
                .map(|n| (n.name.as_str(), n.addr.as_str())),
        )
        .map(|(name, addr)| (name.to_string(), addr.to_string()))
    }
}

/// One ask of another node for a blob: the request, or `None` when its
/// address does not parse.
struct Ask {
    node: String,
    request: reqwest::RequestBuilder,
    offset: u64,
}

impl Ask {
    fn new(
        client: &reqwest::Client,
        (node, addr): (String, String),
        digest: &str,
        query: &[(&str, String)],
        offset: u64,
    ) -> Option<Ask> {
        let endpoint = shoal_http::Endpoint::parse(&addr).ok()?;
        let request = client
            .get(endpoint.url(&BLOB_PATH.replace("{digest}", digest)))
            .query(query)
            .header(header::RANGE, format!("bytes={offset}-"));
        Some(Ask {
            node,
            request,
            offset,
        })
    }

    /// The blob's bytes from the node, or `None` (said in the log) when it
    /// does not answer in time or does not serve them.
    async fn send(self, digest: &str) -> Option<BlobBody> {
        let node = self.node;
        let response = match tokio::time::timeout(HOME_ANSWER_TIMEOUT, self.request.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::info!(blob = %digest, %node, error = %e, "a node asked for a blob did not answer");
                return None;
            }
            Err(_) => {
                tracing::info!(blob = %digest, %node, "a node asked for a blob did not answer in time");
                return None;
            }
        };
        let expected = if self.offset == 0 {
            StatusCode::OK
        } else {
            StatusCode::PARTIAL_CONTENT
        };
        if response.status() != expected {
            tracing::debug!(blob = %digest, %node, status = %response.status(), "a node asked for a blob does not serve it");
            return None;
        }
        tracing::debug!(blob = %digest, %node, offset = self.offset, "blob from another node");
        let body = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other));
        Some(Box::pin(body) as BlobBody)
    }
}

impl<L: ReplicatedLog + 'static> BlobPeers for ClusterBlobs<L> {
    /// Nodes that run the image (from their content store) first, then the
    /// blob's home (which fetches it once for everyone); the registry when
    /// none of them gives it.
    fn open(
        &self,
        reference: &ImageRef,
        desc: &Descriptor,
        offset: u64,
    ) -> BoxFuture<'static, Option<BlobBody>> {
        let held: Vec<Ask> = self
            .holders(reference, &desc.digest)
            .into_iter()
            .filter_map(|holder| {
                let query = [("held_only", "true".to_string())];
                Ask::new(&self.client, holder, &desc.digest, &query, offset)
            })
            .collect();
        let home = self.home(&desc.digest);
        // This node is the home: its spool (not over HTTP), once no holder
        // gave the blob, so that nothing is fetched that a holder has.
        let local = match &home {
            Some((name, _)) if name == &self.node => match self.fetch_access(reference) {
                Ok(access) => Some((
                    self.spool.clone(),
                    self.registries.clone(),
                    reference.clone(),
                    desc.clone(),
                    access,
                )),
                Err(refused) => {
                    tracing::debug!(blob = %desc.digest, ?refused, "no fetch for the cluster");
                    None
                }
            },
            _ => None,
        };
        let home = home
            .filter(|(name, _)| name != &self.node)
            .and_then(|home| {
                let query = [
                    ("reference", reference.to_string()),
                    ("size", desc.size.to_string()),
                ];
                Ask::new(&self.client, home, &desc.digest, &query, offset)
            });
        let digest = desc.digest.clone();
        Box::pin(async move {
            for ask in held {
                if let Some(body) = ask.send(&digest).await {
                    return Some(body);
                }
            }
            if let Some((spool, registries, reference, desc, access)) = local {
                return match join_fetch(&spool, &registries, &reference, &desc, offset, &access) {
                    Ok(fetch) => Some(fetch.body(offset)),
                    Err(refused) => {
                        tracing::debug!(blob = %desc.digest, ?refused, "the spool takes no fetch now");
                        None
                    }
                };
            }
            match home {
                Some(ask) => ask.send(&digest).await,
                None => None,
            }
        })
    }

    fn held_document(
        &self,
        reference: &ImageRef,
        digest: &str,
    ) -> BoxFuture<'static, Option<Bytes>> {
        let mut nodes = self.holders(reference, digest);
        if let Some(home) = self.home(digest).filter(|(name, _)| name != &self.node) {
            if !nodes.contains(&home) {
                nodes.push(home);
            }
        }
        let asks: Vec<Ask> = nodes
            .into_iter()
            .filter_map(|node| {
                let query = [("held_only", "true".to_string())];
                Ask::new(&self.client, node, digest, &query, 0)
            })
            .collect();
        let digest = digest.to_string();
        Box::pin(async move {
            // Each node in turn, each within a deadline; a wrong or
            // oversized answer is the next node's turn.
            for ask in asks {
                let read = async {
                    let body = ask.send(&digest).await?;
                    shoal_runtime::registry::read_document(body, &digest).await
                };
                if let Ok(Some(bytes)) = tokio::time::timeout(HELD_DOCUMENT_TIMEOUT, read).await {
                    return Some(bytes);
                }
            }
            None
        })
    }
}

/// What the blob route serves from.
pub struct BlobService<R, L> {
    pub runtime: Arc<R>,
    pub blobs: Arc<ClusterBlobs<L>>,
    /// One permit per answer being streamed.
    pub streams: Arc<tokio::sync::Semaphore>,
}

impl<R, L> BlobService<R, L> {
    pub fn new(runtime: Arc<R>, blobs: Arc<ClusterBlobs<L>>) -> Self {
        BlobService {
            runtime,
            blobs,
            streams: Arc::new(tokio::sync::Semaphore::new(BLOB_STREAMS_MAX)),
        }
    }
}

pub fn router<R: ImageStore, L: ReplicatedLog + 'static>(
    service: Arc<BlobService<R, L>>,
) -> Router {
    Router::new()
        .route(BLOB_PATH, get(serve::<R, L>))
        .with_state(service)
}

#[derive(serde::Deserialize)]
struct BlobQuery {
    reference: Option<String>,
    size: Option<u64>,
    /// Only from this node's content store: nothing is fetched.
    #[serde(default)]
    held_only: bool,
}

/// `GET /v1/internal/blobs/{digest}?reference=R&size=N` with an optional
/// `Range: bytes=OFFSET-`: the blob from this node's content store, or
/// fetched from `R`'s registry into the spool (joined if under way).
async fn serve<R: ImageStore, L: ReplicatedLog + 'static>(
    State(service): State<Arc<BlobService<R, L>>>,
    Path(digest): Path<String>,
    Query(query): Query<BlobQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    shoal_runtime::image::check_digest(&digest)
        .map_err(|e| ApiError::bad_request(format!("digest: {e}")))?;
    let offset = match headers.get(header::RANGE) {
        None => 0,
        Some(range) => range
            .to_str()
            .ok()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|r| r.parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_request("Range: only `bytes=OFFSET-` is served"))?,
    };
    let permit = service.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable("this node streams as many blobs as it may; ask the registry")
    })?;
    let held = service
        .runtime
        .blob(&digest, offset)
        .await
        .map_err(|e| match e.kind() {
            shoal_runtime::ErrorKind::Invalid => {
                ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, e.to_string())
            }
            _ => ApiError::unavailable(e.to_string()),
        })?;
    if let Some((size, body)) = held {
        if query.size.is_some_and(|wanted| wanted != size) {
            return Err(ApiError::bad_request(format!(
                "size: blob {digest} has {size} bytes here"
            )));
        }
        return Ok(respond(size, offset, body, permit));
    }
    if query.held_only {
        return Err(ApiError::not_found(format!(
            "digest: this node holds no blob {digest}"
        )));
    }
    let reference = query.reference.as_deref().ok_or_else(|| {
        ApiError::bad_request("reference: the image the blob belongs to is required to fetch it")
    })?;
    let reference =
        ImageRef::parse(reference).map_err(|e| ApiError::bad_request(format!("reference: {e}")))?;
    let size = query
        .size
        .ok_or_else(|| ApiError::bad_request("size: the blob's size is required to fetch it"))?;
    if size > BLOB_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "size: {size} bytes is more than the {BLOB_BYTES_MAX} a node fetches for others"
        )));
    }
    if offset > size {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("Range: offset {offset} is past the blob's {size} bytes"),
        ));
    }
    let desc = Descriptor {
        media_type: "application/octet-stream".into(),
        digest,
        size,
        ..Descriptor::default()
    };
    match service.blobs.fetch(&reference, &desc, offset) {
        Ok(fetch) => Ok(respond(size, offset, fetch.body(offset), permit)),
        Err(Refused::Busy) => Err(ApiError::unavailable(
            "this node fetches as many blobs as it may; ask the registry",
        )),
        Err(Refused::NotUnderWay) => Err(ApiError::unavailable(
            "this node no longer fetches that blob; ask the registry for the rest",
        )),
        Err(Refused::UnknownRegistry) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "reference: the cluster names no image of {}; a node fetches for others only from registries the cluster uses",
                reference.registry()
            ),
        )),
        Err(Refused::SizeDiffers) => Err(ApiError::bad_request(format!(
            "size: blob {} is being fetched with another size",
            desc.digest
        ))),
        Err(Refused::Disk(why)) => Err(ApiError::internal(format!("spooling the blob: {why}"))),
    }
}

fn respond(
    size: u64,
    offset: u64,
    body: BlobBody,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    // The permit goes when the body does.
    let body = body.map(move |chunk| {
        let _streaming = &permit;
        chunk
    });
    let status = if offset == 0 {
        StatusCode::OK
    } else {
        StatusCode::PARTIAL_CONTENT
    };
    let mut response = (status, Body::from_stream(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        "application/octet-stream".parse().expect("static"),
    );
    headers.insert(header::CONTENT_LENGTH, (size - offset).into());
    if offset > 0 {
        if let Ok(range) = format!("bytes {offset}-{}/{size}", size.saturating_sub(1)).parse() {
            headers.insert(header::CONTENT_RANGE, range);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use futures::channel::mpsc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn desc(size: u64) -> Descriptor {
        Descriptor {
            media_type: "application/octet-stream".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size,
            ..Descriptor::default()
        }
    }

    async fn read_all(mut body: BlobBody) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// A source the test feeds by hand, counting how often it is opened.
    fn source(
        opened: &Arc<AtomicUsize>,
    ) -> (
        mpsc::UnboundedSender<std::io::Result<Bytes>>,
        impl FnOnce() -> BlobBody,
    ) {
        let (tx, rx) = mpsc::unbounded();
        let opened = opened.clone();
        (tx, move || {
            opened.fetch_add(1, Ordering::SeqCst);
            Box::pin(rx) as BlobBody
        })
    }

    #[tokio::test]
    async fn readers_that_join_a_fetch_under_way_share_its_one_download() {
        let dir = tempfile::tempdir().expect("dir");
        let spool = Arc::new(Spool::open(dir.path().join("spool")).expect("spool"));
        let opened = Arc::new(AtomicUsize::new(0));
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
        let (tx, first) = source(&opened);
        let fetch = spool
            .join(&desc(data.len() as u64), 0, first)
            .expect("fetch");
        let early = tokio::spawn(read_all(fetch.body(0)));
        tx.unbounded_send(Ok(Bytes::copy_from_slice(&data[..250_000])))
            .expect("send");
        // Joined mid-way, from 0 and from an offset: the same download.
        let (_, second) = source(&opened);
        let joined = spool
            .join(&desc(data.len() as u64), 0, second)
            .expect("join");
        let late = tokio::spawn(read_all(joined.body(0)));
        let ranged = tokio::spawn(read_all(joined.body(100_000)));
        tx.unbounded_send(Ok(Bytes::copy_from_slice(&data[250_000..])))
            .expect("send");
        drop(tx);
        assert_eq!(early.await.expect("task").expect("bytes"), data);
        assert_eq!(late.await.expect("task").expect("bytes"), data);
        assert_eq!(ranged.await.expect("task").expect("bytes"), data[100_000..]);
        assert_eq!(opened.load(Ordering::SeqCst), 1);
        // Finished, it still serves those who ask a moment later.
        let (_, third) = source(&opened);
        let after = spool
            .join(&desc(data.len() as u64), 0, third)
            .expect("join");
        assert_eq!(read_all(after.body(0)).await.expect("bytes"), data);
        assert_eq!(opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_fetch_fails_its_readers_and_the_next_ask_starts_anew() {
        let dir = tempfile::tempdir().expect("dir");
        let spool = Arc::new(Spool::open(dir.path().join("spool")).expect("spool"));
        let opened = Arc::new(AtomicUsize::new(0));
        let (tx, first) = source(&opened);
        let fetch = spool.join(&desc(1000), 0, first).expect("fetch");
        let reader = tokio::spawn(read_all(fetch.body(0)));
        tx.unbounded_send(Ok(Bytes::from(vec![7u8; 400])))
            .expect("send");
        tx.unbounded_send(Err(std::io::Error::other("registry gone")))
            .expect("send");
        let err = reader.await.expect("task").expect_err("fails");
        assert!(err.to_string().contains("registry gone"), "{err}");
        // A short blob is a failure too, not a complete one.
        let (tx, second) = source(&opened);
        let again = spool.join(&desc(1000), 0, second).expect("new fetch");
        assert_eq!(opened.load(Ordering::SeqCst), 2);
        tx.unbounded_send(Ok(Bytes::from(vec![7u8; 10])))
            .expect("send");
        drop(tx);
        let err = read_all(again.body(0)).await.expect_err("short");
        assert!(err.to_string().contains("ended after 10 of 1000"), "{err}");
        // The spool's files are gone with their fetches.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let left = std::fs::read_dir(dir.path().join("spool"))
            .expect("dir")
            .count();
        assert_eq!(left, 0);
    }

    #[tokio::test]
    async fn the_spool_refuses_what_it_has_no_room_for_and_mismatched_sizes() {
        let dir = tempfile::tempdir().expect("dir");
        let spool = Arc::new(Spool::open(dir.path().join("spool")).expect("spool"));
        let opened = Arc::new(AtomicUsize::new(0));
        let (_, huge) = source(&opened);
        assert_eq!(
            spool.join(&desc(SPOOL_BYTES_MAX + 1), 0, huge).err(),
            Some(Refused::Busy)
        );
        let (_tx, first) = source(&opened);
        spool.join(&desc(10), 0, first).expect("fetch");
        let (_, other) = source(&opened);
        assert_eq!(
            spool.join(&desc(11), 0, other).err(),
            Some(Refused::SizeDiffers)
        );
        assert_eq!(opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_rest_of_a_blob_no_longer_fetched_is_not_fetched_from_its_start() {
        let dir = tempfile::tempdir().expect("dir");
        let spool = Arc::new(Spool::open(dir.path().join("spool")).expect("spool"));
        let opened = Arc::new(AtomicUsize::new(0));
        let (_, source) = source(&opened);
        assert_eq!(
            spool.join(&desc(1000), 400, source).err(),
            Some(Refused::NotUnderWay)
        );
        assert_eq!(opened.load(Ordering::SeqCst), 0);
    }

    /// One replica of a registry image on four nodes, running: the node
    /// that runs it and the service's standby are asked for its blobs; a
    /// dead runner is not, and the standby still is (the registry may be
    /// gone while the replica moves).
    #[tokio::test]
    async fn the_nodes_running_an_image_and_its_standby_are_asked_for_its_blobs() {
        use shoal_cluster::log::MemoryLog;
        use shoal_state::Command;
        let log = MemoryLog::new("n1", shoal_state::State::default());
        for name in ["n1", "n2", "n3", "n4"] {
            log.apply(Command::RegisterNode {
                node: shoal_types::Node::sample(name, &format!("{name}:7950")),
            });
        }
        let spec = shoal_types::spec::parse_app(
            b"name: web\nservices: [{name: s, image: r.example/web:1}]\n",
        )
        .expect("spec");
        let digest = format!("sha256:{}", "cd".repeat(32));
        let pin = shoal_types::PinnedImage {
            digest: digest.clone(),
            source: shoal_types::PinSource::Registry,
        };
        log.apply(Command::PutAppPinned {
            spec,
            images: [("s".to_string(), pin)].into(),
        });
        let plan = shoal_sched::reconcile(&log.read());
        log.apply(Command::ApplyPlan { plan });
        let task = log.read().tasks.values().next().cloned().expect("a task");
        log.apply(Command::ReportTasks {
            node: task.node.clone(),
            statuses: vec![(
                task.id.clone(),
                shoal_types::TaskStatus {
                    attempt: 1,
                    state: shoal_types::TaskState::Running,
                    promise: shoal_types::Promise::Kept,
                    container_id: Some(task.id.clone()),
                    started_at_ms: Some(1),
                    ..shoal_types::TaskStatus::pending(1)
                },
            )],
        });
        let state = log.read().clone();
        let standby = shoal_sched::standby(&state, "web", &state.apps["web"].spec.services[0])
            .expect("a standby")
            .to_string();
        let asker = ["n1", "n2", "n3", "n4"]
            .into_iter()
            .find(|n| *n != task.node && *n != standby)
            .expect("another node");
        let dir = tempfile::tempdir().expect("dir");
        let blobs = ClusterBlobs {
            node: asker.to_string(),
            log: log.clone(),
            credentials: Arc::new(super::super::pull_credentials::PullCredentials::local(None)),
            // Never used to send: the holders are only listed.
            client: shoal_http::client(Default::default(), &{
                let provider = shoal_pki::tls::provider();
                Arc::new(
                    rustls::ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .expect("TLS 1.3")
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
            })
            .expect("client"),
            spool: Arc::new(Spool::open(dir.path().to_path_buf()).expect("spool")),
            registries: Arc::new(Registries::default()),
        };
        let reference = ImageRef::parse(&format!("r.example/web@{digest}")).expect("ref");
        let names = |blobs: &ClusterBlobs<MemoryLog>| -> Vec<String> {
            blobs
                .holders(&reference, &digest)
                .into_iter()
                .map(|(name, _)| name)
                .collect()
        };
        assert_eq!(names(&blobs), [task.node.clone(), standby.clone()]);
        // The standby asks only the runner; the runner asks only the standby.
        for (me, other) in [(&standby, &task.node), (&task.node, &standby)] {
            let mine = ClusterBlobs {
                node: me.clone(),
                log: log.clone(),
                credentials: blobs.credentials.clone(),
                client: blobs.client.clone(),
                spool: blobs.spool.clone(),
                registries: blobs.registries.clone(),
            };
            assert_eq!(names(&mine), std::slice::from_ref(other), "asked by {me}");
        }
        log.apply(Command::SetNodeStatus {
            name: task.node.clone(),
            status: shoal_types::NodeStatus::Dead,
        });
        assert_eq!(names(&blobs), std::slice::from_ref(&standby));
        let other = ImageRef::parse("r.example/other:1").expect("ref");
        assert!(blobs.holders(&other, &digest).is_empty());
    }

    #[test]
    fn a_home_fetches_only_from_registries_the_state_names() {
        let mut state = shoal_state::State::default();
        let spec = shoal_types::spec::parse_app(
            b"name: web\nservices: [{name: a, image: registry.example/team/web:1}]\n",
        )
        .expect("spec");
        state.apps.insert(
            "web".into(),
            shoal_state::App {
                spec,
                images: Default::default(),
                version: 1,
                created_at_ms: 0,
                updated_at_ms: 0,
            },
        );
        let named = |reference: &str| {
            named_by_state(&state, &ImageRef::parse(reference).expect("reference"))
        };
        assert_eq!(
            named(&format!(
                "registry.example/team/web@sha256:{}",
                "ab".repeat(32)
            )),
            (true, true)
        );
        assert_eq!(named("registry.example/team/other:2"), (true, false));
        assert_eq!(named("127.0.0.1:8080/anything:1"), (false, false));
        assert_eq!(named("docker.io/library/busybox:1"), (false, false));
    }

    #[test]
    fn every_node_names_the_same_home_and_homes_spread() {
        let nodes = [("n1", "a:1"), ("n2", "b:1"), ("n3", "c:1")];
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..300u32 {
            let digest = format!("sha256:{:064x}", i);
            let home = home_of(&digest, nodes.iter().copied()).expect("home");
            let reversed = home_of(&digest, nodes.iter().rev().copied()).expect("home");
            assert_eq!(
                home, reversed,
                "the order of the node table changes nothing"
            );
            // A node other than the home leaving moves nothing.
            for gone in nodes.iter().filter(|(name, _)| *name != home.0) {
                let rest = nodes.iter().copied().filter(|n| n != gone);
                assert_eq!(home_of(&digest, rest), Some(home));
            }
            *counts.entry(home.0).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(counts.values().all(|&n| n > 60), "{counts:?}");
        assert_eq!(home_of("sha256:x", std::iter::empty()), None);
    }
}

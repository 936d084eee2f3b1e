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

mod service;
mod spool;

pub use service::{router, BlobService};
pub use spool::{Fetch, Refused, Spool};

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
                history: Vec::new(),
                rollout: None,
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

//! The node process: the state store, the scheduler loop, the promise
//! keeper (the node-side reconciler driving the runtime) and the API server,
//! all in one process that every node runs.

mod audit;
mod backend;
mod blobs;
mod ca;
mod cluster;
mod credentials;
mod facts_key;
mod files;
mod forwards;
pub mod gate;
#[cfg(test)]
mod gate_tests;
mod gossip_keys;
mod gossip_rotation;
mod health;
mod host;
pub mod image_gc;
mod joining;
mod keeper;
mod leader;
mod leftovers;
mod logs;
pub mod network;
mod prepull;
mod pull_credentials;
mod registries;
mod renewal;
mod scheduler;
mod sources;
mod task_files;
pub mod trust;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use shoal_cluster::log::ReplicatedLog;
use shoal_cluster::membership::Membership;
use shoal_cluster::raft::{RaftConfig, RaftNode};
use shoal_runtime::{ImageStore, Runtime};
use shoal_types::consensus_id;

use crate::clock::now_ms;

/// How long requests in flight may finish once the node is told to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// Where the API listens.
    pub bind: SocketAddr,
    /// `host:port` other nodes and clients use.
    pub advertise: String,
    /// Where gossip listens (UDP), and the address others send to.
    pub gossip_bind: SocketAddr,
    pub gossip_advertise: SocketAddr,
    /// API addresses (`host:port`) of nodes to join through.
    pub peers: Vec<String>,
    /// A dead or departed node is forgotten this long after.
    pub forget_dead_after: std::time::Duration,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Cpu (millicores) and memory (bytes) kept back from tasks for the system.
    pub reserve_cpu_millis: u64,
    pub reserve_memory_bytes: u64,
    pub network: network::NetworkConfig,
    /// The join token (`SHOAL-1-…`) a new node joins with.
    pub token: Option<String>,
    /// The role a joining node asks for (`voter`, `worker`); by default
    /// what its token allows.
    pub role: Option<String>,
    /// How long the certificates this node signs last.
    pub cert_lifetime: std::time::Duration,
    /// How old the gossip key gets before this node, leading, rotates it.
    pub gossip_key_rotation: std::time::Duration,
    /// When images are collected to free containerd's disk.
    pub image_gc: image_gc::ImageGcConfig,
    /// What this node's operator lets its tasks do beyond the hardened
    /// defaults (`--allow-privileged`, `--allow-host-network`). The node
    /// runs nothing beyond it, whatever the state asks.
    pub allows: shoal_types::Allows,
}

/// What the loops and the API handlers share. The log is a type parameter
/// so that the API backend can be tested over an in-memory one.
pub struct Shared<R, L = RaftNode> {
    pub config: NodeConfig,
    pub raft: L,
    pub membership: Membership,
    pub cluster_id: String,
    pub runtime: Arc<R>,
    pub started_at_ms: u64,
    pub http: reqwest::Client,
    /// The node's certificate, what it trusts, and (voters) the data key.
    pub trust: trust::Trust,
    /// The node's bridge, task namespaces, routes and DNS.
    pub network: Arc<network::NodeNetwork>,
    /// Set once `shoal node leave` was asked; the loops wind down.
    pub leaving: tokio::sync::watch::Sender<bool>,
    /// The generation of the gossip keyring this node holds (0: none).
    pub gossip_generation: std::sync::atomic::AtomicU64,
    /// The generation of the CA record this node has taken in full (its
    /// roots trusted, its certificate of the signer; 0: none yet).
    pub ca_generation: std::sync::atomic::AtomicU32,
    /// Wakes the renewal loop to renew soon (its certificate is not of the
    /// CA that signs now).
    pub renew_now: tokio::sync::Notify,
    /// The registry passwords this node pulls with.
    pub pull_credentials: Arc<pull_credentials::PullCredentials>,
}

impl<R, L: ReplicatedLog> Shared<R, L> {
    pub fn logs_dir(&self) -> PathBuf {
        self.config.data_dir.join("logs")
    }

    pub fn node_id(&self) -> u64 {
        consensus_id(&self.config.name)
    }

    pub fn is_leader(&self) -> bool {
        shoal_cluster::log::ReplicatedLog::leads(&self.raft)
    }
}

pub async fn run<R: Runtime + ImageStore>(config: NodeConfig, runtime: R) -> anyhow::Result<()> {
    std::fs::create_dir_all(config.data_dir.join("logs"))
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    runtime
        .ensure_ready()
        .await
        .context("preparing the container runtime")?;
    let standing = cluster::stand(&config).await?;
    let raft = RaftNode::open(RaftConfig::new(
        consensus_id(&config.name),
        config.name.clone(),
        config.advertise.clone(),
        config.data_dir.clone(),
        standing.trust.client_tls.clone(),
    ))
    .await
    .with_context(|| format!("opening the cluster state in {}", config.data_dir.display()))?;
    // Servers are who they claim: the node dialled, not removed.
    standing.trust.credentials.set_server_check(Some(Arc::new({
        let raft = raft.clone();
        let cluster_id = standing.cluster_id.clone();
        move |identity: &shoal_pki::identity::Identity,
              dialled: &rustls::pki_types::ServerName<'_>| {
            match gate::server_refusal(&raft.read(), &cluster_id, identity, dialled) {
                Some(why) => Err(why),
                None => Ok(()),
            }
        }
    })));
    if let Some(formation) = standing.formation {
        raft.initialize().await.context("forming a new cluster")?;
        cluster::found(&config, &raft, &standing.trust, formation).await?;
        tracing::info!(cluster = %standing.cluster_id, "formed a new cluster");
    }
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding the API to {}", config.bind))?;
    let http = shoal_http::client(
        shoal_http::ClientOptions {
            connect_timeout: std::time::Duration::from_secs(2),
            request_timeout: Some(std::time::Duration::from_secs(10)),
            ..shoal_http::ClientOptions::default()
        },
        &standing.trust.client_tls,
    )
    .map_err(anyhow::Error::msg)?;
    let audit = Arc::new(audit::Audit::open(&config.data_dir)?);
    let (cluster_id, gossip_peers, trust) =
        (standing.cluster_id, standing.gossip_peers, standing.trust);
    // Before the server takes a forwarded proposal: who may have which
    // command appended when this node leads.
    raft.set_forward_policy(Arc::new(forwards::NodeForwardPolicy::new(
        cluster_id.clone(),
        audit.clone(),
    )));
    // Off longer than its certificate lived: a node that holds the data
    // key issues itself a new one now; any other renews it with a voter
    // (its renewal loop, at once), showing the expired one.
    if renewal::renew_expired_here(&trust, &raft.read(), config.cert_lifetime)
        .context("renewing this node's expired certificate")?
    {
        tracing::info!("renewed this node's expired certificate from its own replica");
    }
    let started_at_ms = now_ms();
    let gossip = gossip_keys::Held::at_start(trust.dir(), &raft.read(), trust.data_key.as_ref());
    let facts_signer = facts_key::load_or_make(trust.dir())?;
    let mut membership_config =
        cluster::membership_config(&config, &cluster_id, started_at_ms, &gossip);
    membership_config.facts_signer = Some(facts_signer.clone());
    let membership = Membership::start(membership_config, gossip_peers)
        .await
        .context("starting gossip")?;
    // The state's facts keys from the first datagram on, not only once the
    // follower loop first runs.
    membership.set_facts_keys(facts_key::keys(&raft.read()));
    let (leaving, _) = tokio::sync::watch::channel(false);
    let network = Arc::new(network::NodeNetwork::new(
        config.network.clone(),
        &config.data_dir,
    ));
    let pull_credentials = Arc::new(pull_credentials::PullCredentials::asking(
        trust.data_key.clone(),
        pull_credentials::AskVoters {
            addrs: Box::new({
                let raft = raft.clone();
                let me = consensus_id(&config.name);
                move || voter_addrs(&raft, me)
            }),
            tls: trust.client_tls.clone(),
        },
    ));
    let shared = Arc::new(Shared {
        pull_credentials,
        network,
        config,
        raft,
        membership,
        cluster_id,
        runtime: Arc::new(runtime),
        started_at_ms,
        http,
        trust,
        leaving,
        gossip_generation: std::sync::atomic::AtomicU64::new(gossip.generation),
        ca_generation: std::sync::atomic::AtomicU32::new(0),
        renew_now: tokio::sync::Notify::new(),
    });

    // Blobs: asked of their home node before the registry, and served to
    // the nodes whose home this one is.
    let blob_client = shoal_http::client(
        shoal_http::ClientOptions {
            connect_timeout: std::time::Duration::from_secs(2),
            request_timeout: None,
            ..shoal_http::ClientOptions::default()
        },
        &shared.trust.client_tls,
    )
    .map_err(anyhow::Error::msg)?;
    let spool_dir = shared.config.data_dir.join("spool").join("blobs");
    let cluster_blobs = Arc::new(blobs::ClusterBlobs {
        node: shared.config.name.clone(),
        log: shared.raft.clone(),
        credentials: shared.pull_credentials.clone(),
        client: blob_client,
        spool: Arc::new(
            blobs::Spool::open(spool_dir.clone())
                .with_context(|| format!("preparing {}", spool_dir.display()))?,
        ),
        registries: Arc::new(shoal_runtime::registry::Registries::default()),
    });
    shared.runtime.fetch_blobs_through(cluster_blobs.clone());
    let blob_service = Arc::new(blobs::BlobService::new(
        shared.runtime.clone(),
        cluster_blobs,
    ));

    let backend = Arc::new(backend::NodeBackend(shared.clone()));
    // The public API, the node-to-node routes and the credential routes,
    // each with its own bounds, all behind the gate.
    let gate = Arc::new(gate::Gate {
        log: shared.raft.clone(),
        cluster_id: shared.cluster_id.clone(),
        audit,
    });
    let router = shoal_api::server::router(backend)
        .merge(shared.raft.router())
        .merge(credentials::router(shared.clone()))
        .merge(ca::router(shared.clone()))
        .merge(gossip_keys::router(shared.clone()))
        .merge(registries::router(shared.clone()))
        .merge(files::router(shared.clone()))
        .merge(blobs::router(blob_service))
        .layer(axum::middleware::from_fn_with_state(
            gate,
            gate::check::<RaftNode>,
        ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = shoal_http::serve(
        listener,
        shared.trust.server_tls.clone(),
        router,
        shoal_http::ServeOptions {
            grace: SHUTDOWN_GRACE,
            // A node that shows an expired certificate (to renew it) comes
            // back on a new connection: the gate judges the one shown.
            client_cert_end: Some(|der| shoal_pki::identity::not_after(der).ok()),
            node_sources: Some(sources::node_sources(shared.raft.clone())),
            ..shoal_http::ServeOptions::default()
        },
        async {
            let _ = stop_rx.await;
        },
    );
    let mut server = std::pin::pin!(server);
    tracing::info!(
        node = %shared.config.name,
        api = %shared.config.bind,
        gossip = %shared.config.gossip_bind,
        cluster = %shared.cluster_id,
        "node started"
    );

    let registration = tokio::spawn(cluster::register(shared.clone()));
    let renewals = tokio::spawn(renewal::renew_certificates(shared.clone()));
    let duties = tokio::spawn(leader::run(shared.clone()));
    let gossip_keys = tokio::spawn(gossip_keys::run(shared.clone(), gossip));
    let facts_keys = tokio::spawn(facts_key::run(shared.clone(), facts_signer));
    let ca_follower = tokio::spawn(ca::run(shared.clone()));
    let facts = tokio::spawn(cluster::refresh_facts(shared.clone()));
    let scheduler = tokio::spawn(scheduler::run(shared.raft.clone()));
    let task_files = Arc::new(task_files::TaskFiles::new(
        task_files::node_dir(&task_files::files_root(), &shared.config.data_dir),
        shared.trust.data_key.clone(),
        Some(pull_credentials::AskVoters {
            addrs: Box::new({
                let raft = shared.raft.clone();
                let me = consensus_id(&shared.config.name);
                move || voter_addrs(&raft, me)
            }),
            tls: shared.trust.client_tls.clone(),
        }),
    ));
    let keeper = tokio::spawn(keeper::run(Arc::new(keeper::Keeper {
        node: shared.config.name.clone(),
        logs_dir: shared.logs_dir(),
        log: shared.raft.clone(),
        runtime: shared.runtime.clone(),
        network: shared.network.clone(),
        clock: crate::clock::SystemClock,
        credentials: shared.pull_credentials.clone(),
        allows: shared.config.allows,
        files: task_files,
    })));
    let prepulls = tokio::spawn(prepull::run(
        shared.config.name.clone(),
        shared.raft.clone(),
        shared.runtime.clone(),
        shared.pull_credentials.clone(),
        shared.config.image_gc.clone(),
    ));
    let image_gc = tokio::spawn(image_gc::run(
        shared.config.name.clone(),
        shared.raft.clone(),
        shared.runtime.clone(),
        shared.config.image_gc.clone(),
    ));
    let network = tokio::spawn(network::run(network::NetworkLoop {
        node: shared.config.name.clone(),
        log: shared.raft.clone(),
        host: shared.network.clone(),
    }));
    let mut leaving = shared.leaving.subscribe();
    let outcome = tokio::select! {
        result = &mut server => result.context("API server"),
        result = scheduler => Err(anyhow::anyhow!("scheduler loop ended: {result:?}")),
        result = keeper => Err(anyhow::anyhow!("promise keeper ended: {result:?}")),
        result = duties => Err(anyhow::anyhow!("leader duties ended: {result:?}")),
        () = shutdown_signal() => Ok(()),
        _ = leaving.wait_for(|left| *left) => {
            tracing::info!("left the cluster");
            Ok(())
        }
    };
    registration.abort();
    gossip_keys.abort();
    facts_keys.abort();
    ca_follower.abort();
    renewals.abort();
    facts.abort();
    image_gc.abort();
    prepulls.abort();
    network.abort();
    let _ = stop_tx.send(());
    // Requests in flight get a moment; followers of logs do not hold the node up.
    let _ = tokio::time::timeout(
        SHUTDOWN_GRACE + std::time::Duration::from_secs(1),
        &mut server,
    )
    .await;
    shared.membership.shutdown().await;
    shared.raft.shutdown().await;
    tracing::info!("node stopped; its containers keep running and are adopted on restart");
    outcome
}

/// The API addresses of the voters other than `me`, the leader's first.
pub fn voter_addrs(raft: &RaftNode, me: u64) -> Vec<String> {
    let status = raft.status();
    let mut voters: Vec<String> = status
        .voters
        .iter()
        .filter(|id| **id != me)
        .filter_map(|id| status.nodes.get(id).map(|node| node.api_addr.clone()))
        .collect();
    if let Some(leader) = status.leader.and_then(|id| status.nodes.get(&id)) {
        if status.leader != Some(me) {
            voters.retain(|addr| addr != &leader.api_addr);
            voters.insert(0, leader.api_addr.clone());
        }
    }
    voters
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

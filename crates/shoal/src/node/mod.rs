//! The node process: the state store, the scheduler loop, the promise
//! keeper (the node-side reconciler driving the runtime) and the API server,
//! all in one process that every node runs.

mod backend;
mod host;
mod keeper;
mod logs;
mod scheduler;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use shoal_cluster::Consensus;
use shoal_runtime::Runtime;
use shoal_state::Command;
use shoal_types::{Node, NodeStatus};

use crate::output::now_ms;

/// How long requests in flight may finish once the node is told to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// Where the API listens.
    pub bind: SocketAddr,
    /// `host:port` other nodes and clients use.
    pub advertise: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What the loops and the API handlers share.
pub struct Shared<R> {
    pub config: NodeConfig,
    pub consensus: Consensus,
    pub runtime: R,
    pub started_at_ms: u64,
    /// The scheduler's latest word on replicas it could not place.
    pub unplaced: Mutex<Vec<shoal_state::Unplaced>>,
}

impl<R> Shared<R> {
    pub fn logs_dir(&self) -> PathBuf {
        self.config.data_dir.join("logs")
    }
}

pub async fn run<R: Runtime>(config: NodeConfig, runtime: R) -> anyhow::Result<()> {
    std::fs::create_dir_all(config.data_dir.join("logs"))
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let consensus = Consensus::open(&config.data_dir)
        .with_context(|| format!("opening the state in {}", config.data_dir.display()))?;
    runtime
        .ensure_ready()
        .await
        .context("preparing the container runtime")?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding the API to {}", config.bind))?;

    let started_at_ms = now_ms();
    let shared = Arc::new(Shared {
        config,
        consensus,
        runtime,
        started_at_ms,
        unplaced: Mutex::new(Vec::new()),
    });
    register(&shared).await?;
    tracing::info!(
        node = %shared.config.name,
        api = %shared.config.bind,
        applied = shared.consensus.read().applied_index,
        "node started"
    );

    let scheduler = tokio::spawn(scheduler::run(shared.clone()));
    let keeper = tokio::spawn(keeper::run(shared.clone()));
    let router = shoal_api::server::router(Arc::new(backend::NodeBackend(shared.clone())));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async {
        let _ = stop_rx.await;
    });
    let mut server = std::pin::pin!(std::future::IntoFuture::into_future(server));
    tokio::select! {
        result = &mut server => result.context("API server")?,
        result = scheduler => anyhow::bail!("scheduler loop ended: {result:?}"),
        result = keeper => anyhow::bail!("promise keeper ended: {result:?}"),
        () = shutdown_signal() => {
            let _ = stop_tx.send(());
            // Requests in flight get a moment; followers of logs do not hold the node up.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await;
        }
    }
    tracing::info!("node stopping; its containers keep running and are adopted on restart");
    Ok(())
}

async fn register<R>(shared: &Shared<R>) -> anyhow::Result<()> {
    let facts = host::facts();
    let node = Node {
        name: shared.config.name.clone(),
        addr: shared.config.advertise.clone(),
        os: facts.os,
        arch: std::env::consts::ARCH.to_string(),
        cpus: facts.cpus,
        memory_total_bytes: facts.memory_total_bytes,
        labels: shared.config.labels.clone(),
        started_at_ms: shared.started_at_ms,
        status: NodeStatus::Alive,
    };
    shared
        .consensus
        .propose(now_ms(), Command::RegisterNode { node })
        .await
        .context("registering this node")?;
    Ok(())
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

//! The node as a member of a cluster: how it finds its cluster, announces
//! itself (facts by gossip, its record through the log), and how it leaves.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shoal_api::wire::ClusterInfo;
use shoal_cluster::log::ReplicatedLog;
use shoal_cluster::membership::{MembershipConfig, NodeFacts};
use shoal_cluster::raft::{ProposeError, RaftNode};
use shoal_state::Command;
use shoal_types::{consensus_id, Node, NodeStatus};

use super::{host, NodeConfig, Shared};
use crate::clock::now_ms;

/// How long a joining node keeps asking its peers for the cluster.
const JOIN_ATTEMPTS_MAX: u32 = 60;
/// How often the node re-announces its facts (memory used changes).
const FACTS_INTERVAL: Duration = Duration::from_secs(5);
const REGISTER_ATTEMPTS_MAX: u32 = 600;

#[derive(Serialize, Deserialize)]
struct ClusterFile {
    cluster_id: String,
}

/// Finds the cluster this node belongs to: the one in its data dir, the
/// one of its peers, or (first node, no peers) a new one of itself.
/// Returns the cluster id and the gossip addresses to join through.
pub async fn identify(
    config: &NodeConfig,
    raft: &RaftNode,
    http: &reqwest::Client,
) -> anyhow::Result<(String, Vec<SocketAddr>)> {
    let path = config.data_dir.join("cluster.json");
    let known = read_cluster_file(&path)?;
    let mut gossip_peers = Vec::new();
    if !config.peers.is_empty() {
        let info = ask_peers(&config.peers, http).await?;
        if let Some(known) = &known {
            anyhow::ensure!(
                known == &info.cluster_id,
                "this node's data dir belongs to cluster {known}, but the peers are of cluster {}; \
                 use another --data-dir to join them",
                info.cluster_id
            );
        }
        if let Ok(mut addrs) = info.gossip_addr.to_socket_addrs() {
            gossip_peers.extend(addrs.next());
        }
        write_cluster_file(&path, &info.cluster_id)?;
        return Ok((info.cluster_id, gossip_peers));
    }
    if let Some(known) = known {
        // A restarted node: the peer cache leads gossip back to the others.
        return Ok((known, gossip_peers));
    }
    anyhow::ensure!(
        !raft.is_initialized(),
        "{} holds cluster state but no cluster.json; give --peer to rejoin",
        config.data_dir.display()
    );
    let cluster_id = new_cluster_id();
    raft.initialize().await.context("forming a new cluster")?;
    write_cluster_file(&path, &cluster_id)?;
    tracing::info!(cluster = %cluster_id, "formed a new cluster");
    Ok((cluster_id, gossip_peers))
}

async fn ask_peers(peers: &[String], http: &reqwest::Client) -> anyhow::Result<ClusterInfo> {
    let mut last_error = String::new();
    for _ in 0..JOIN_ATTEMPTS_MAX {
        for peer in peers {
            let endpoint =
                shoal_http::Endpoint::parse(peer).with_context(|| format!("--peer {peer}"))?;
            match http.get(endpoint.url("/v1/cluster")).send().await {
                Ok(response) if response.status().is_success() => {
                    match response.json::<ClusterInfo>().await {
                        Ok(info) => return Ok(info),
                        Err(error) => last_error = format!("{peer}: {error}"),
                    }
                }
                Ok(response) => last_error = format!("{peer}: answered {}", response.status()),
                Err(error) => last_error = format!("{peer}: {error}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("no peer answered ({last_error}); check --peer and that the peer runs")
}

fn read_cluster_file(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let file: ClusterFile = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(Some(file.cluster_id))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_cluster_file(path: &Path, cluster_id: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("json.tmp");
    let body = serde_json::to_vec(&ClusterFile {
        cluster_id: cluster_id.to_string(),
    })?;
    std::fs::write(&temporary, body).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn new_cluster_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|uuid| uuid.trim().to_string())
        .unwrap_or_else(|_| format!("shoal-{}-{}", now_ms(), std::process::id()))
}

pub fn facts(config: &NodeConfig, started_at_ms: u64) -> NodeFacts {
    let host = host::facts();
    let (_, used) = host::memory();
    NodeFacts {
        name: config.name.clone(),
        api_addr: config.advertise.clone(),
        raft_id: consensus_id(&config.name),
        os: host.os,
        arch: std::env::consts::ARCH.to_string(),
        cpus: host.cpus,
        memory_total_bytes: host.memory_total_bytes,
        memory_used_bytes: used,
        labels: config.labels.clone(),
        started_at_ms,
        release: shoal_state::RELEASE.to_string(),
        log_version: shoal_state::LOG_VERSION,
    }
}

pub fn membership_config(
    config: &NodeConfig,
    cluster_id: &str,
    started_at_ms: u64,
) -> MembershipConfig {
    let mut membership = MembershipConfig::new(
        config.name.clone(),
        config.gossip_bind,
        cluster_id,
        facts(config, started_at_ms),
        config.data_dir.join("peers.json"),
    );
    membership.advertise = config.gossip_advertise;
    membership.dead_forget_after = config.forget_dead_after;
    membership
}

/// Records this node in the cluster state (through the leader), retrying
/// until the cluster answers.
pub async fn register<R>(shared: Arc<Shared<R>>) {
    let facts = facts(&shared.config, shared.started_at_ms);
    let node = Node {
        name: facts.name,
        addr: facts.api_addr,
        os: facts.os,
        arch: facts.arch,
        cpus: facts.cpus,
        memory_total_bytes: facts.memory_total_bytes,
        cpu_allocatable_millis: (u64::from(facts.cpus) * 1000)
            .saturating_sub(shared.config.reserve_cpu_millis),
        memory_allocatable_bytes: facts
            .memory_total_bytes
            .saturating_sub(shared.config.reserve_memory_bytes),
        labels: facts.labels,
        started_at_ms: facts.started_at_ms,
        status: NodeStatus::Alive,
        taints: Vec::new(),
        drain: false,
        subnet: None,
    };
    let mut cidr_wanted = shared.config.network.cluster_cidr.clone();
    for attempt in 0..REGISTER_ATTEMPTS_MAX {
        // `--cluster-cidr` shapes a new cluster: set it before the first
        // subnet is handed out; once subnets are held it cannot change.
        if let Some(cidr) = cidr_wanted.clone() {
            if shared.raft.read().settings.cluster_cidr == cidr {
                cidr_wanted = None;
            } else {
                let command = Command::SetSettings {
                    voters_max: None,
                    cluster_cidr: Some(cidr.clone()),
                    node_prefix_len: None,
                    dns_zone: None,
                };
                match shared.raft.propose(now_ms(), command).await {
                    Ok(_) => {
                        tracing::info!(%cidr, "set the cluster CIDR");
                        cidr_wanted = None;
                    }
                    Err(ProposeError::Rejected(error)) => {
                        tracing::warn!(%error, "--cluster-cidr {cidr} is ignored");
                        cidr_wanted = None;
                    }
                    Err(error) => {
                        if attempt % 10 == 0 {
                            tracing::info!(%error, "cannot set the cluster CIDR yet; retrying");
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
        }
        match shared
            .raft
            .propose(now_ms(), Command::RegisterNode { node: node.clone() })
            .await
        {
            Ok(_) => {
                tracing::info!("registered in the cluster state");
                return;
            }
            Err(error) => {
                if attempt % 10 == 0 {
                    tracing::info!(%error, "cannot register yet; retrying");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    tracing::error!("gave up registering in the cluster state");
}

/// Re-announces this node's facts (memory used) now and then.
pub async fn refresh_facts<R>(shared: Arc<Shared<R>>) {
    loop {
        tokio::time::sleep(FACTS_INTERVAL).await;
        if let Err(error) = shared
            .membership
            .update_facts(facts(&shared.config, shared.started_at_ms))
        {
            tracing::warn!(%error, "spreading this node's facts");
        }
    }
}

/// `shoal node leave`: the node is recorded as left (its work is placed
/// elsewhere and its containers stop), tells gossip, and stops.
pub async fn leave<R, L: ReplicatedLog>(shared: Arc<Shared<R, L>>) {
    const LEAVE_WAIT_MAX: Duration = Duration::from_secs(60);
    let name = shared.config.name.clone();
    let command = Command::SetNodeStatus {
        name: name.clone(),
        status: NodeStatus::Left,
    };
    if let Err(error) = shared.raft.propose(now_ms(), command).await {
        tracing::warn!(%error, "recording the leave; gossip will tell the cluster");
    }
    let started = std::time::Instant::now();
    while started.elapsed() < LEAVE_WAIT_MAX {
        let busy = shared.raft.read().tasks_on(&name).any(|task| {
            task.status.state != shoal_types::TaskState::Stopped
                && task.status.container_id.is_some()
        });
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cluster = shoal_net::subnet::Ipv4Cidr::parse(
        "cluster_cidr",
        &shared.raft.read().settings.cluster_cidr,
    )
    .ok();
    let network = shared.network.clone();
    match tokio::task::spawn_blocking(move || network.teardown(cluster)).await {
        Ok(Ok(())) => tracing::info!("took down the node's routes, masquerade chain and bridge"),
        Ok(Err(error)) => tracing::warn!(%error, "taking down the node's network"),
        Err(error) => tracing::warn!(%error, "taking down the node's network"),
    }
    shared.membership.leave().await;
    shared.leaving.send_replace(true);
}

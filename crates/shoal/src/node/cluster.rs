//! The node as a member of a cluster: how it finds its cluster, announces
//! itself (facts by gossip, its record through the log), and how it leaves.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shoal_api::client::Client;
use shoal_api::wire::ClusterInfo;
use shoal_cluster::log::ReplicatedLog;
use shoal_cluster::membership::{MembershipConfig, NodeFacts};
use shoal_cluster::raft::{ProposeError, RaftNode};
use shoal_state::Command;
use shoal_types::{consensus_id, Node, NodeStatus};

use super::trust::{Formation, Trust};
use super::{host, NodeConfig, Shared};
use crate::clock::now_ms;

/// How long a joining node keeps asking its peers for the cluster.
pub(super) const JOIN_ATTEMPTS_MAX: u32 = 60;
/// How often the node re-announces its facts (memory used changes).
const FACTS_INTERVAL: Duration = Duration::from_secs(5);
/// Attempts to register the node in the state before the node gives up
/// (one every half second or so: about five minutes).
const REGISTER_ATTEMPTS_MAX: u32 = 600;

#[derive(Serialize, Deserialize)]
struct ClusterFile {
    cluster_id: String,
}

/// Where a node stands when it starts: its credentials, its cluster, the
/// gossip addresses to join through, and (the node that forms a cluster)
/// what it must propose once its log runs.
pub struct Standing {
    pub trust: Trust,
    pub cluster_id: String,
    pub gossip_peers: Vec<SocketAddr>,
    pub formation: Option<Formation>,
}

/// Finds the cluster this node belongs to: the one its data dir holds
/// credentials for (a restart: no token needed), the one a join token
/// admits it to (`--peer` with `--token`), or (no peers, empty data dir)
/// a new one of itself. Opens nothing of Raft: the caller opens it with
/// the credentials this returns.
pub async fn stand(config: &NodeConfig) -> anyhow::Result<Standing> {
    let path = config.data_dir.join("cluster.json");
    let pki_dir = config.data_dir.join("pki");
    let known = read_cluster_file(&path)?;
    if let Some(trust) = Trust::load(&pki_dir)? {
        let cluster_id = known
            .clone()
            .unwrap_or_else(|| trust.identity.cluster_id.clone());
        anyhow::ensure!(
            cluster_id == trust.identity.cluster_id,
            "{} belongs to cluster {cluster_id}, but its certificate to cluster {}",
            config.data_dir.display(),
            trust.identity.cluster_id
        );
        if config.token.is_some() {
            tracing::info!(
                "this node has its certificate already; --token is not needed and not used"
            );
        }
        let mut gossip_peers = Vec::new();
        if !config.peers.is_empty() {
            // A restarted node: the peers confirm the cluster and lead gossip.
            let info = ask_peers(&config.peers, &trust).await?;
            anyhow::ensure!(
                info.cluster_id == cluster_id,
                "this node's data dir belongs to cluster {cluster_id}, but the peers are of cluster {}; use another --data-dir to join them",
                info.cluster_id
            );
            if let Ok(mut addrs) = info.gossip_addr.to_socket_addrs() {
                gossip_peers.extend(addrs.next());
            }
        }
        return Ok(Standing {
            trust,
            cluster_id,
            gossip_peers,
            formation: None,
        });
    }
    anyhow::ensure!(
        !config.data_dir.join("raft.redb").exists(),
        "{} holds cluster state but no certificates (it is of shoal 0.2 or older, which had no TLS): shoal {} cannot rejoin it to a secure cluster; form the cluster anew with an empty --data-dir and apply the apps again",
        config.data_dir.display(),
        shoal_state::RELEASE
    );
    if !config.peers.is_empty() {
        let Some(token) = &config.token else {
            anyhow::bail!(
                "joining through --peer needs a join token: run `shoal cluster token create` against the cluster and give the token with --token (or SHOAL_JOIN_TOKEN)"
            );
        };
        let joined = super::joining::join(config, token, &pki_dir).await?;
        write_cluster_file(&path, &joined.cluster_id)?;
        return Ok(joined);
    }
    anyhow::ensure!(
        known.is_none(),
        "{} names a cluster in cluster.json but holds no certificates; give --peer and --token to join again",
        config.data_dir.display()
    );
    anyhow::ensure!(
        config.token.is_none(),
        "--token is for joining: give --peer too (a node without peers forms a new cluster)"
    );
    let cluster_id = new_cluster_id();
    let (trust, formation, chain, key) =
        Trust::form(&pki_dir, &cluster_id, &config.name, config.cert_lifetime)?;
    trust.save(&chain, &key)?;
    write_cluster_file(&path, &cluster_id)?;
    Ok(Standing {
        trust,
        cluster_id,
        gossip_peers: Vec::new(),
        formation: Some(formation),
    })
}

async fn ask_peers(peers: &[String], trust: &Trust) -> anyhow::Result<ClusterInfo> {
    let mut last_error = String::new();
    for _ in 0..JOIN_ATTEMPTS_MAX {
        for peer in peers {
            let client = Client::new(peer, &trust.client_tls, None)
                .with_context(|| format!("--peer {peer}"))?;
            match client.cluster().await {
                Ok(info) => return Ok(info),
                Err(error) => last_error = format!("{peer}: {error}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("no peer answered ({last_error}); check --peer and that the peer runs")
}

/// Proposes what a new cluster starts with: this node's admission, the
/// CA, the first admin token; then writes that token to `admin.json`.
pub async fn found(
    config: &NodeConfig,
    raft: &RaftNode,
    trust: &Trust,
    formation: Formation,
) -> anyhow::Result<()> {
    // The cluster is this node alone: it appends in its own newest format.
    raft.set_cluster_log_version(shoal_state::LOG_VERSION);
    let commands = [
        Command::AdmitNode {
            token: String::new(),
            node: config.name.clone(),
            role: shoal_state::security::NodeRole::Voter,
            admission: trust.identity.admission.clone(),
        },
        Command::SetCa {
            ca: formation.ca.clone(),
        },
        Command::CreateApiToken {
            token: formation.admin_record.clone(),
        },
    ];
    for command in commands {
        raft.propose(now_ms(), command)
            .await
            .context("recording the new cluster's CA and first credentials")?;
    }
    // The gossip keyring: a new cluster seals its gossip from the start.
    if let Some(data_key) = &trust.data_key {
        let keys = super::gossip_keys::seal_record(
            data_key,
            1,
            &shoal_cluster::membership::GossipKeyring::generate(1, now_ms()),
            now_ms(),
        )?;
        raft.propose(now_ms(), Command::SetGossipKeys { keys })
            .await
            .context("recording the new cluster's gossip keyring")?;
    }
    let path = super::trust::write_admin(
        &config.data_dir,
        &shoal_api::client::Credential {
            addr: config.advertise.clone(),
            ca_pem: trust.credentials.roots_pem(),
            token: formation.admin_token.to_string(),
        },
    )?;
    tracing::info!(credential = %path.display(), "wrote the first admin credential (shown nowhere else)");
    Ok(())
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
        gossip_keys: 0,
        ca_generation: 0,
    }
}

/// The facts this node gossips: the log format it reads is this build's
/// only once it holds the gossip keyring (see `gossip_keys`).
fn gossiped_facts<R, L>(shared: &Shared<R, L>) -> NodeFacts {
    let mut facts = facts(&shared.config, shared.started_at_ms);
    facts.log_version =
        super::gossip_keys::log_version_read(shared.membership.sealing().keyring.is_some());
    facts.gossip_keys = shared
        .gossip_generation
        .load(std::sync::atomic::Ordering::Relaxed);
    facts.ca_generation = shared
        .ca_generation
        .load(std::sync::atomic::Ordering::Relaxed);
    facts
}

/// Tells the others this node's facts now.
pub fn spread_facts<R, L>(shared: &Shared<R, L>) {
    if let Err(error) = shared.membership.update_facts(gossiped_facts(shared)) {
        tracing::warn!(%error, "spreading this node's facts");
    }
}

pub fn membership_config(
    config: &NodeConfig,
    cluster_id: &str,
    started_at_ms: u64,
    gossip: &super::gossip_keys::Held,
) -> MembershipConfig {
    let mut facts = facts(config, started_at_ms);
    facts.log_version = gossip.log_version();
    facts.gossip_keys = gossip.generation;
    let mut membership = MembershipConfig::new(
        config.name.clone(),
        config.gossip_bind,
        cluster_id,
        facts,
        config.data_dir.join("peers.json"),
    );
    membership.advertise = config.gossip_advertise;
    membership.dead_forget_after = config.forget_dead_after;
    membership.sealing = super::gossip_keys::sealing(
        gossip,
        super::gossip_keys::Graces::default(),
        std::time::Instant::now(),
    );
    membership
}

/// The record this node registers: its facts, less what its operator keeps
/// back, and what its operator allows.
fn registration<R, L>(shared: &Shared<R, L>) -> Node {
    let facts = facts(&shared.config, shared.started_at_ms);
    Node {
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
        allows: shared.config.allows,
    }
}

/// Records this node in the cluster state (through the leader), retrying
/// until the cluster answers. While some node reads no format with
/// allowances (the cluster is being upgraded), the node registers without
/// them; [`register_allowances`] writes them once every node reads them.
pub async fn register<R>(shared: Arc<Shared<R>>) {
    let mut node = registration(&shared);
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
            // Some node reads no allowances, as far as the leader knows. When
            // the log holds format-6 entries already every node reads them,
            // and the leader only has not heard every node's facts yet (it
            // just took over): retry with them, or this node's tasks that
            // need them would be stopped.
            Err(ProposeError::MixedVersions(why))
                if !node.allows.is_none()
                    && shared.raft.read().log_version < shoal_state::format::ALLOWS =>
            {
                tracing::warn!(
                    %why,
                    "registering without what --allow-privileged and --allow-host-network allow until every node runs shoal 0.6"
                );
                node.allows = shoal_types::Allows::default();
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

/// Registers this node again when the state holds other allowances than
/// its operator gave it (they were left out while the cluster was being
/// upgraded), once every node reads them.
async fn register_allowances<R>(shared: &Shared<R>) {
    let stored = {
        let state = shared.raft.read();
        state.nodes.get(&shared.config.name).map(|node| node.allows)
    };
    let Some(stored) = stored else {
        return;
    };
    if stored == shared.config.allows
        || (!shared.config.allows.is_none()
            && shared.raft.cluster_log_version() < shoal_state::format::ALLOWS)
    {
        return;
    }
    let node = registration(shared);
    match shared
        .raft
        .propose(now_ms(), Command::RegisterNode { node })
        .await
    {
        Ok(_) => tracing::info!(allows = ?shared.config.allows, "registered what this node allows"),
        Err(error) => tracing::debug!(%error, "registering what this node allows"),
    }
}

/// Re-announces this node's facts (memory used) now and then, and
/// registers its allowances when the state does not hold them yet.
pub async fn refresh_facts<R>(shared: Arc<Shared<R>>) {
    loop {
        tokio::time::sleep(FACTS_INTERVAL).await;
        register_allowances(&shared).await;
        spread_facts(&shared);
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

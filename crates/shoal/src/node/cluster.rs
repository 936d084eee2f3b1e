//! The node as a member of a cluster: how it finds its cluster, announces
//! itself (facts by gossip, its record through the log), and how it leaves.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shoal_api::client::{Client, ClientError};
use shoal_api::wire::{ClusterInfo, JoinRequest, RenewRequest};
use shoal_cluster::log::ReplicatedLog;
use shoal_cluster::membership::{MembershipConfig, NodeFacts};
use shoal_cluster::raft::{ProposeError, RaftNode};
use shoal_pki::key::NodeKey;
use shoal_pki::seal::DataKey;
use shoal_pki::token::JoinToken;
use shoal_state::Command;
use shoal_types::{consensus_id, Node, NodeStatus};

use super::trust::{Formation, Trust};
use super::{host, NodeConfig, Shared};
use crate::clock::now_ms;

/// How long a joining node keeps asking its peers for the cluster.
const JOIN_ATTEMPTS_MAX: u32 = 60;
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
        let joined = join(config, token, &pki_dir).await?;
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

/// The joiner's side of a join token: fetch each peer's CA bundle with a
/// client that trusts anything, compare its hash with the token's, and
/// only then, over a connection that verifies the peer against that CA,
/// send the token and a CSR.
async fn join(config: &NodeConfig, token_text: &str, pki_dir: &Path) -> anyhow::Result<Standing> {
    let token =
        JoinToken::parse(token_text).map_err(|error| anyhow::anyhow!("--token: {error}"))?;
    let fetch = shoal_pki::tls::pinning_fetch_config()?;
    let key = NodeKey::generate()?;
    let csr_pem = key.csr_pem(&config.name)?;
    let mut queue: std::collections::VecDeque<String> = config.peers.iter().cloned().collect();
    let mut last_error = String::new();
    for _ in 0..JOIN_ATTEMPTS_MAX {
        let Some(peer) = queue.pop_front() else {
            break;
        };
        queue.push_back(peer.clone());
        let roots = match Client::new(&peer, &fetch, None)
            .with_context(|| format!("--peer {peer}"))?
            .join_ca()
            .await
        {
            Ok(roots) => roots,
            Err(error) => {
                last_error = format!("{peer}: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let hash = shoal_pki::ca::bundle_hash(&roots)
            .with_context(|| format!("{peer} answered with no CA certificate"))?;
        // The bundle, or the one root of it the token pins (one made
        // before a rotation that is under way): nothing else is trusted.
        let Some(pinned) = shoal_pki::ca::pinned(&roots, &token.ca_hash) else {
            anyhow::bail!(
                "{peer} shows a CA whose hash ({}…) is not the one the token pins ({}…), nor holds that root: it is not the cluster the token is of, the cluster's CA rotated since the token was made (make a new one with `shoal cluster token create`), or someone is in between; nothing secret was sent",
                &hash[..12],
                &token.ca_hash[..12]
            );
        };
        let credentials = shoal_pki::tls::Credentials::new(&pinned)?;
        // The token goes only to a node that may admit: a voter. A worker
        // (or a removed node, whose certificate still chains) in the path
        // gets nothing.
        let shown: Arc<std::sync::Mutex<Option<shoal_pki::identity::Identity>>> = Arc::default();
        credentials.set_server_check(Some(Arc::new({
            let shown = shown.clone();
            move |identity: &shoal_pki::identity::Identity,
                  _: &rustls::pki_types::ServerName<'_>| {
                *shown.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity.clone());
                if identity.role == shoal_pki::identity::Role::Voter {
                    Ok(())
                } else {
                    Err(format!(
                        "the server is node {} with a {} certificate: a join token goes only to a voter",
                        identity.name,
                        identity.role.as_str()
                    ))
                }
            }
        })));
        let verified = shoal_pki::tls::client_config(credentials)?;
        let request = JoinRequest {
            token: token.to_string(),
            name: config.name.clone(),
            role: config.role.clone(),
            csr_pem: csr_pem.clone(),
        };
        match Client::new(&peer, &verified, None)?.join(&request).await {
            Ok(answer) => {
                let data_key = match &answer.data_key {
                    Some(hex) => Some(DataKey::from_hex(hex)?),
                    None => None,
                };
                let trust = Trust::joined(
                    pki_dir,
                    &answer.roots_pem,
                    &answer.chain_pem,
                    &key.key_pem(),
                    data_key,
                )?;
                // The gossip keyring (absent from a leader older than 0.7):
                // kept before gossip starts, so that a node joining a
                // cluster that seals speaks sealed from its first datagram.
                if let Some(keys) = &answer.gossip_keys {
                    let held = super::gossip_keys::from_delivery(keys)?;
                    super::gossip_keys::save(pki_dir, &held)?;
                }
                tracing::info!(cluster = %answer.cluster_id, role = trust.identity.role.as_str(), "joined with a token");
                let mut gossip_peers = Vec::new();
                if let Ok(mut addrs) = answer.gossip_addr.to_socket_addrs() {
                    gossip_peers.extend(addrs.next());
                }
                return Ok(Standing {
                    trust,
                    cluster_id: answer.cluster_id,
                    gossip_peers,
                    formation: None,
                });
            }
            Err(ClientError::Api {
                status: 421,
                message,
                ..
            }) => {
                if let Some(leader) = message.strip_prefix("join through the leader: ") {
                    queue.push_front(leader.trim().to_string());
                }
                last_error = format!("{peer}: {message}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(ClientError::Api {
                status, message, ..
            }) if status != 503 => {
                anyhow::bail!("{peer} refused the join: {message}")
            }
            Err(error) => {
                last_error = format!("{peer}: {error}");
                // A worker of this cluster: it may say where the leader
                // is, asked with a decoy token that carries nothing of
                // this node's.
                let worker = shown
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .filter(|identity| identity.role != shoal_pki::identity::Role::Voter);
                if worker.is_some() {
                    if let Some(leader) =
                        leader_named_by(&peer, &pinned, &token.ca_hash, config).await
                    {
                        if !queue.contains(&leader) {
                            queue.push_front(leader);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    anyhow::bail!("no peer admitted this node ({last_error}); check --peer and that the peer runs")
}

/// The leader's address, as `peer` (a node of the cluster whose CA hashes
/// to `ca_hash`, but no voter) names it when asked to admit this node with
/// a decoy token: a fresh one of no use to anyone, so that nothing of the
/// real token reaches a node that may not take it.
async fn leader_named_by(
    peer: &str,
    roots: &str,
    ca_hash: &str,
    config: &NodeConfig,
) -> Option<String> {
    let credentials = shoal_pki::tls::Credentials::new(roots).ok()?;
    let tls = shoal_pki::tls::client_config(credentials).ok()?;
    let decoy = JoinRequest {
        token: JoinToken::generate(ca_hash).to_string(),
        name: config.name.clone(),
        role: config.role.clone(),
        csr_pem: String::new(),
    };
    match Client::new(peer, &tls, None).ok()?.join(&decoy).await {
        Err(ClientError::Api {
            status: 421,
            message,
            ..
        }) => message
            .strip_prefix("join through the leader: ")
            .map(|leader| leader.trim().to_string()),
        _ => None,
    }
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

/// A node whose certificate is not of the CA that signs now renews within
/// this.
const RENEW_SPREAD: Duration = Duration::from_secs(10);

/// Renews the node's certificate at a random 50–80 % of its lifetime,
/// from any node that holds the data key (itself, if it does), and soon
/// when the CA that signs changed.
pub async fn renew_certificates<R>(shared: Arc<Shared<R>>) {
    loop {
        let wait = match (shared.trust.not_before(), shared.trust.not_after()) {
            (Ok(not_before), Ok(not_after)) => renewal_wait(
                not_before,
                not_after,
                std::time::SystemTime::now(),
                rand::random::<f64>(),
            ),
            _ => Duration::from_secs(1),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // The CA that signs changed: soon, at a moment drawn so that
            // the nodes do not all ask at once.
            () = shared.renew_now.notified() => {
                tokio::time::sleep(RENEW_SPREAD.mul_f64(rand::random::<f64>())).await;
            }
        }
        let mut attempt = 0u32;
        loop {
            match renew_once(&shared).await {
                Ok(()) => break,
                Err(error) => {
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(%error, attempt, "renewing this node's certificate");
                    let expires_in = shared
                        .trust
                        .not_after()
                        .ok()
                        .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
                        .unwrap_or_default();
                    // Try again soon, never later than a tenth of what is left.
                    let retry = (expires_in / 10)
                        .clamp(Duration::from_millis(500), Duration::from_secs(30));
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }
}

/// How long until a certificate valid from `not_before` to `not_after`
/// is renewed, at `now`: at 50–80 % of its life (`draw`, in [0, 1), picks
/// where), so that nodes made at once do not renew at once; at least a
/// second, also when that moment, or the end, has passed.
fn renewal_wait(
    not_before: std::time::SystemTime,
    not_after: std::time::SystemTime,
    now: std::time::SystemTime,
    draw: f64,
) -> Duration {
    // Certificates start a little before they are made (for clocks behind).
    let issued = not_before + shoal_pki::ca::LEAF_BACKDATE;
    let lifetime = not_after.duration_since(issued).unwrap_or_default();
    let fraction = 0.5 + 0.3 * draw.clamp(0.0, 1.0);
    let renew_at = issued + lifetime.mul_f64(fraction);
    renew_at
        .duration_since(now)
        .unwrap_or_default()
        .max(Duration::from_secs(1))
}

/// A node that holds the data key and whose certificate has expired (it
/// was off longer than the certificate lived) issues itself a new one
/// from the CA its replica holds, as it starts: a whole cluster switched
/// off for a while comes back without anyone to renew with. Only for the
/// admission its replica holds as current. Whether it renewed.
pub fn renew_expired_here(
    trust: &Trust,
    state: &shoal_state::State,
    lifetime: Duration,
) -> anyhow::Result<bool> {
    if trust.not_after()? > std::time::SystemTime::now() {
        return Ok(false);
    }
    let (Some(record), Some(_)) = (&state.security.ca, &trust.data_key) else {
        return Ok(false);
    };
    let identity = &trust.identity;
    let current = state
        .security
        .admissions
        .get(&identity.name)
        .is_some_and(|known| known.admission == identity.admission);
    if !current {
        anyhow::bail!(
            "this node's certificate expired and its replica no longer holds its admission (removed, or joined again elsewhere)"
        );
    }
    let ca = trust
        .signer(record)?
        .context("this node's data key does not open the cluster's CA")?;
    let key = NodeKey::generate()?;
    let chain = super::credentials::chain_for(
        &ca,
        record,
        &key.csr_pem(&identity.name)?,
        identity,
        lifetime,
    )?;
    trust.renewed(&record.roots_pem, &chain, &key.key_pem())?;
    Ok(true)
}

async fn renew_once<R>(shared: &Shared<R>) -> anyhow::Result<()> {
    let key = NodeKey::generate()?;
    let request = RenewRequest {
        csr_pem: key.csr_pem(&shared.config.name)?,
    };
    // Ask a node that holds the data key: the leader always does.
    let status = shared.raft.status();
    let mut addrs: Vec<String> = status
        .leader
        .and_then(|id| status.nodes.get(&id).map(|node| node.api_addr.clone()))
        .into_iter()
        .collect();
    addrs.extend(
        status
            .voters
            .iter()
            .filter_map(|id| status.nodes.get(id).map(|node| node.api_addr.clone())),
    );
    addrs.dedup();
    let mut last_error = anyhow::anyhow!("the cluster has no leader or voter to renew with");
    for addr in addrs.iter().take(8) {
        match Client::new(addr, &shared.trust.client_tls, None)?
            .renew(&request)
            .await
        {
            Ok(answer) => {
                shared
                    .trust
                    .renewed(&answer.roots_pem, &answer.chain_pem, &key.key_pem())?;
                tracing::info!(from = %addr, "renewed this node's certificate");
                return Ok(());
            }
            Err(error) => last_error = anyhow::anyhow!("{addr}: {error}"),
        }
    }
    Err(last_error)
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
    membership.sealing = super::gossip_keys::sealing(gossip, None, std::time::Instant::now());
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::renewal_wait;

    #[test]
    fn a_certificate_renews_at_half_to_four_fifths_of_its_life() {
        let backdate = shoal_pki::ca::LEAF_BACKDATE;
        let issued = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_before = issued - backdate;
        let life = Duration::from_secs(12 * 3600);
        let not_after = issued + life;
        let at = |seconds: u64| issued + Duration::from_secs(seconds);
        // (now, draw) -> wait
        for (now, draw, wait) in [
            (at(0), 0.0, life / 2),
            (at(0), 1.0, life.mul_f64(0.8)),
            (at(0), 0.5, life.mul_f64(0.65)),
            // Later on, less is left to wait.
            (at(3600), 0.0, life / 2 - Duration::from_secs(3600)),
            // A draw out of range counts as its nearest end.
            (at(0), 7.0, life.mul_f64(0.8)),
            (at(0), -1.0, life / 2),
        ] {
            assert_eq!(
                renewal_wait(not_before, not_after, now, draw),
                wait,
                "{now:?} {draw}"
            );
        }
        // Past the moment, past the end, or a clock before the start: a
        // second, never nothing (the loop retries from there).
        for now in [at(43_000), not_after + Duration::from_secs(86_400)] {
            assert_eq!(
                renewal_wait(not_before, not_after, now, 1.0),
                Duration::from_secs(1)
            );
        }
        assert_eq!(
            renewal_wait(not_before, not_after, SystemTime::UNIX_EPOCH, 0.0),
            at(0).duration_since(UNIX_EPOCH).unwrap() + life / 2
        );
    }
}

//! The node as a member of a cluster: how it finds its cluster, announces
//! itself, and what its leader does besides scheduling (admitting nodes,
//! choosing voters, declaring nodes dead).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shoal_api::wire::ClusterInfo;
use shoal_cluster::membership::{MemberStatus, MembershipConfig, NodeFacts};
use shoal_cluster::raft::{ProposeError, RaftNode};
use shoal_state::Command;
use shoal_types::{consensus_id, Node, NodeStatus};

use super::{host, NodeConfig, Shared};
use crate::output::now_ms;

/// How often the leader looks at membership when nothing changes.
const DUTIES_INTERVAL: Duration = Duration::from_millis(500);
/// A voter declared dead this long ago is replaced.
const VOTER_DEAD_GRACE_MS: u64 = 2_000;
/// Gossip's "dead" must hold this long before work moves: a node that
/// refutes a stale suspicion comes back under a new identity, and the old
/// one is briefly seen dead.
const DEAD_CONFIRM_MS: u64 = 500;
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

/// What the leader does besides scheduling: admit new members as learners,
/// keep the voter count, and turn gossip's verdicts into node statuses.
pub async fn leader_duties<R: Send + Sync + 'static>(shared: Arc<Shared<R>>) {
    let mut changes = shared.membership.subscribe();
    loop {
        shared
            .raft
            .set_cluster_log_version(cluster_log_version(&shared));
        if shared.is_leader() {
            if let Err(error) = leader_pass(&shared).await {
                tracing::debug!(%error, "leader duties");
            }
        }
        let _ = tokio::time::timeout(DUTIES_INTERVAL, changes.changed()).await;
    }
}

/// The newest log format every member of the consensus (voters and
/// learners) reads, from their gossiped facts; a member whose facts are
/// not known yet counts as one of the first release.
fn cluster_log_version<R>(shared: &Shared<R>) -> u32 {
    let facts: BTreeMap<u64, u32> = shared
        .membership
        .members()
        .iter()
        .map(|member| (member.facts.raft_id, member.facts.log_version_read()))
        .chain(std::iter::once((
            consensus_id(&shared.config.name),
            shoal_state::LOG_VERSION,
        )))
        .collect();
    shared
        .raft
        .status()
        .nodes
        .keys()
        .map(|id| {
            facts
                .get(id)
                .copied()
                .unwrap_or(shoal_state::LOG_VERSION_FIRST)
        })
        .min()
        .unwrap_or(shoal_state::LOG_VERSION_FIRST)
}

async fn leader_pass<R>(shared: &Shared<R>) -> anyhow::Result<()> {
    let now = now_ms();
    let members = shared.membership.members();
    let status = shared.raft.status();

    // 1. Live members not yet in the consensus join it as learners.
    for member in &members {
        let live = matches!(member.status, MemberStatus::Alive | MemberStatus::Suspect);
        if live
            && !member.facts.name.is_empty()
            && !status.nodes.contains_key(&member.facts.raft_id)
        {
            tracing::info!(node = %member.facts.name, "admitting a new node as a learner");
            shared
                .raft
                .add_learner(
                    member.facts.raft_id,
                    member.facts.name.clone(),
                    member.facts.api_addr.clone(),
                )
                .await?;
        }
    }

    // 2. Gossip's verdicts become node statuses (suspicion is not enough
    // to move work).
    let recorded: BTreeMap<String, NodeStatus> = shared
        .raft
        .read()
        .nodes
        .values()
        .map(|node| (node.name.clone(), node.status))
        .collect();
    for member in &members {
        let wanted = match member.status {
            MemberStatus::Alive | MemberStatus::Suspect => NodeStatus::Alive,
            MemberStatus::Dead if now.saturating_sub(member.since_ms) >= DEAD_CONFIRM_MS => {
                NodeStatus::Dead
            }
            MemberStatus::Dead => continue,
            MemberStatus::Left => NodeStatus::Left,
        };
        if recorded
            .get(&member.facts.name)
            .is_some_and(|current| *current != wanted)
        {
            tracing::info!(node = %member.facts.name, status = wanted.as_str(), "node status");
            shared
                .raft
                .propose(
                    now,
                    Command::SetNodeStatus {
                        name: member.facts.name.clone(),
                        status: wanted,
                    },
                )
                .await?;
        }
    }
    // Nodes gossip has forgotten, or dead for long: forget them too.
    let gossiped: BTreeSet<&str> = members
        .iter()
        .map(|member| member.facts.name.as_str())
        .collect();
    let forget_after_ms = shared.config.forget_dead_after.as_millis() as u64;
    for (name, node_status) in &recorded {
        let stale = members
            .iter()
            .find(|member| &member.facts.name == name)
            .is_some_and(|member| {
                member.status != MemberStatus::Alive
                    && now.saturating_sub(member.since_ms) > forget_after_ms
            });
        if *node_status != NodeStatus::Alive && (stale || !gossiped.contains(name.as_str())) {
            shared
                .raft
                .propose(now, Command::ForgetNode { name: name.clone() })
                .await?;
            let id = consensus_id(name);
            if status.nodes.contains_key(&id) && !status.voters.contains(&id) {
                shared.raft.remove_nodes(BTreeSet::from([id])).await?;
            }
        }
    }

    // 3. Voters: replace dead ones, add learners up to the target, spread
    // over zones, as many as the cluster setting allows.
    let voters_max = shared.raft.read().settings.voters_max as usize;
    let wanted = choose_voters(
        shared.node_id(),
        &status.voters,
        &status.nodes.keys().copied().collect(),
        &members,
        voters_max,
        now,
    );
    if wanted != status.voters {
        tracing::info!(?wanted, current = ?status.voters, "changing voters");
        shared.raft.change_voters(wanted.clone()).await?;
        let departed: BTreeSet<u64> = status
            .voters
            .difference(&wanted)
            .copied()
            .filter(|id| {
                !members
                    .iter()
                    .any(|m| m.facts.raft_id == *id && m.status == MemberStatus::Alive)
            })
            .collect();
        if !departed.is_empty() {
            shared.raft.remove_nodes(departed).await?;
        }
    }
    Ok(())
}

/// The voters the cluster should have: every live voter stays; dead ones
/// (dead for longer than a grace) go; live learners are promoted, in zones
/// that have fewest voters first, until the target is met. The target is 1
/// or 2 with that many nodes, 3 from 3 nodes on, 5 from 5 on (at most
/// `voters_max`).
pub fn choose_voters(
    leader: u64,
    voters: &BTreeSet<u64>,
    in_consensus: &BTreeSet<u64>,
    members: &[shoal_cluster::membership::Member],
    voters_max: usize,
    now_ms: u64,
) -> BTreeSet<u64> {
    let by_id: BTreeMap<u64, &shoal_cluster::membership::Member> = members
        .iter()
        .map(|member| (member.facts.raft_id, member))
        .collect();
    let live = |id: &u64| {
        *id == leader
            || by_id
                .get(id)
                .is_some_and(|m| matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect))
    };
    let gone = |id: &u64| {
        *id != leader
            && by_id.get(id).is_some_and(|m| {
                matches!(m.status, MemberStatus::Dead | MemberStatus::Left)
                    && (m.status == MemberStatus::Left
                        || now_ms.saturating_sub(m.since_ms) >= VOTER_DEAD_GRACE_MS)
            })
    };
    let live_count = in_consensus.iter().filter(|id| live(id)).count();
    let target = match live_count {
        0..=2 => live_count.max(1),
        3 | 4 => 3,
        _ => 5,
    }
    .min(voters_max.max(1));
    let mut chosen: BTreeSet<u64> = voters.iter().copied().filter(|id| !gone(id)).collect();
    let zone = |id: &u64| -> String {
        by_id
            .get(id)
            .and_then(|m| m.facts.labels.get("zone").cloned())
            .unwrap_or_default()
    };
    let mut candidates: Vec<u64> = in_consensus
        .iter()
        .copied()
        .filter(|id| {
            !chosen.contains(id)
                && live(id)
                && by_id
                    .get(id)
                    .is_some_and(|m| m.status == MemberStatus::Alive)
        })
        .collect();
    while chosen.len() < target && !candidates.is_empty() {
        let mut zones: BTreeMap<String, usize> = BTreeMap::new();
        for id in &chosen {
            *zones.entry(zone(id)).or_default() += 1;
        }
        candidates.sort_by_key(|id| {
            let name = by_id
                .get(id)
                .map(|m| m.facts.name.clone())
                .unwrap_or_default();
            (zones.get(&zone(id)).copied().unwrap_or(0), name)
        });
        let pick = candidates.remove(0);
        chosen.insert(pick);
    }
    // More than the setting allows (it went down): voters that do not answer
    // step down first, then the most crowded zone gives one up; never the
    // leader. Fewer live nodes never demote anyone: that would cost quorum.
    while chosen.len() > voters_max.max(1) {
        let mut zones: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for id in &chosen {
            zones.entry(zone(id)).or_default().push(*id);
        }
        let quiet = chosen.iter().copied().find(|id| *id != leader && !live(id));
        let crowded = zones
            .values()
            .max_by_key(|ids| ids.len())
            .and_then(|ids| ids.iter().rev().copied().find(|id| *id != leader));
        let Some(extra) = quiet.or(crowded) else {
            break;
        };
        chosen.remove(&extra);
    }
    // Spread: a learner in a zone without a voter takes the place of a
    // voter from the zone that has the most (never the leader).
    for _ in 0..voters_max {
        let mut zones: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for id in &chosen {
            zones.entry(zone(id)).or_default().push(*id);
        }
        let newcomer = candidates
            .iter()
            .copied()
            .find(|id| !zone(id).is_empty() && !zones.contains_key(&zone(id)));
        let crowded = zones
            .values()
            .filter(|ids| ids.len() > 1)
            .max_by_key(|ids| ids.len())
            .and_then(|ids| ids.iter().copied().find(|id| *id != leader));
        match (newcomer, crowded) {
            (Some(newcomer), Some(crowded)) => {
                chosen.remove(&crowded);
                chosen.insert(newcomer);
                candidates.retain(|id| *id != newcomer);
            }
            _ => break,
        }
    }
    if chosen.is_empty() {
        chosen.insert(leader);
    }
    chosen
}

/// `shoal node leave`: the node is recorded as left (its work is placed
/// elsewhere and its containers stop), tells gossip, and stops.
pub async fn leave<R>(shared: Arc<Shared<R>>) {
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
    use std::collections::BTreeSet;

    use shoal_cluster::membership::{Member, MemberStatus, NodeFacts};

    use super::choose_voters;

    fn member(id: u64, zone: &str, status: MemberStatus, since_ms: u64) -> Member {
        let mut facts = NodeFacts {
            name: format!("n{id}"),
            raft_id: id,
            ..NodeFacts::default()
        };
        if !zone.is_empty() {
            facts.labels.insert("zone".into(), zone.into());
        }
        Member {
            facts,
            gossip_addr: "127.0.0.1:7946".parse().expect("address"),
            status,
            since_ms,
        }
    }

    fn ids(list: &[u64]) -> BTreeSet<u64> {
        list.iter().copied().collect()
    }

    #[test]
    fn every_node_votes_until_three_then_three_then_five() {
        let alive = |n: u64| {
            (1..=n)
                .map(|id| member(id, "", MemberStatus::Alive, 0))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            choose_voters(1, &ids(&[1]), &ids(&[1, 2]), &alive(2), 5, 0),
            ids(&[1, 2])
        );
        assert_eq!(
            choose_voters(1, &ids(&[1, 2]), &ids(&[1, 2, 3, 4]), &alive(4), 5, 0),
            ids(&[1, 2, 3])
        );
        assert_eq!(
            choose_voters(
                1,
                &ids(&[1, 2, 3]),
                &ids(&[1, 2, 3, 4, 5, 6]),
                &alive(6),
                5,
                0
            ),
            ids(&[1, 2, 3, 4, 5])
        );
        assert_eq!(
            choose_voters(1, &ids(&[1, 2, 3]), &ids(&[1, 2, 3, 4, 5]), &alive(5), 3, 0),
            ids(&[1, 2, 3])
        );
    }

    #[test]
    fn a_voter_dead_past_the_grace_is_replaced_by_a_live_learner() {
        let members = vec![
            member(1, "", MemberStatus::Alive, 0),
            member(2, "", MemberStatus::Alive, 0),
            member(3, "", MemberStatus::Dead, 10_000),
            member(4, "", MemberStatus::Alive, 0),
        ];
        let voters = ids(&[1, 2, 3]);
        let all = ids(&[1, 2, 3, 4]);
        assert_eq!(
            choose_voters(1, &voters, &all, &members, 5, 11_000),
            voters,
            "within the grace"
        );
        assert_eq!(
            choose_voters(1, &voters, &all, &members, 5, 12_500),
            ids(&[1, 2, 4])
        );
    }

    #[test]
    fn a_dead_voter_within_its_grace_costs_no_live_voter_its_seat() {
        let members = vec![
            member(1, "", MemberStatus::Alive, 0),
            member(2, "", MemberStatus::Alive, 0),
            member(3, "", MemberStatus::Dead, 1_000),
        ];
        let voters = ids(&[1, 2, 3]);
        assert_eq!(
            choose_voters(1, &voters, &voters, &members, 5, 1_500),
            voters
        );
    }

    #[test]
    fn voters_spread_over_zones() {
        let members = vec![
            member(1, "a", MemberStatus::Alive, 0),
            member(2, "a", MemberStatus::Alive, 0),
            member(3, "b", MemberStatus::Alive, 0),
            member(4, "c", MemberStatus::Alive, 0),
        ];
        let chosen = choose_voters(1, &ids(&[1, 2, 3]), &ids(&[1, 2, 3, 4]), &members, 5, 0);
        assert_eq!(
            chosen,
            ids(&[1, 3, 4]),
            "one voter per zone, the leader kept"
        );
    }
}

//! Cluster membership by SWIM gossip ([foca]).
//!
//! [`Membership::start`] binds a UDP socket and runs one task that drives
//! foca (which is sans-IO): it feeds foca the datagrams and the timer events
//! it asked for, sends what foca wants sent, and turns foca's member list
//! plus the node facts into the list [`Membership::members`] returns.
//!
//! - **Identity** (what foca gossips about): node name, gossip address and a
//!   boot id chosen at each start; a restarted node, or one the cluster
//!   declared dead, comes back as a newer identity that replaces the old one.
//! - **Facts** ([`NodeFacts`]: API address, Raft id, resources, labels) are
//!   foca custom broadcasts keyed by node name, newest version wins. Each
//!   node re-broadcasts its facts when they change, when it sees a new
//!   member (so a late joiner learns everyone's) and every
//!   [`FACTS_REFRESH_INTERVAL`]. A member whose facts are not known yet is
//!   left out of [`Membership::members`] until they arrive (usually within
//!   the same round trip as the join).
//! - **Left vs dead**: foca only knows "down". A node that leaves
//!   ([`Membership::leave`]) first broadcasts its facts marked `left`, so the
//!   others list it as [`MemberStatus::Left`] rather than `Dead`.
//! - **Cluster identity**: every datagram starts with a magic, a version
//!   byte and a hash of the cluster id (see `wire`); datagrams of other
//!   clusters are dropped and counted ([`MembershipStats`]). This is not
//!   authentication.
//! - **Peer cache**: the gossip addresses of known members (alive, suspect,
//!   and dead ones until forgotten; never the ones that left) are written
//!   atomically to a JSON file at most every [`PEER_CACHE_WRITE_INTERVAL`],
//!   never replaced by an empty list, and read at start when no peers are
//!   given. While the node knows no live member it re-announces itself to
//!   its seed peers with a back-off, so nodes of a restarted cluster find
//!   each other in whatever order they start.
//!
//! Time: foca's timers run on tokio's monotonic clock; the wall clock is
//! read only for `since_ms`, the boot id and the peer cache's timestamp.

mod driver;
mod facts;
mod identity;
mod peer_cache;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use self::driver::{Command, Driver};
use self::facts::FactsMsg;
use self::identity::NodeId;

/// Where gossip listens unless told otherwise (the memberlist/Serf port).
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;
/// Members tracked at most (foca's list, dead ones included, and the facts
/// table). At the limit, datagrams that would add a member are dropped.
pub const MEMBERS_MAX: usize = 1024;
/// Longest node name, in bytes (it is part of every datagram's header).
pub const NAME_MAX_BYTES: usize = 64;
/// Longest cluster id, in bytes.
pub const CLUSTER_ID_MAX_BYTES: usize = 256;
/// Largest encoded facts broadcast, in bytes; it must fit in one datagram
/// next to the header and membership updates.
pub const FACTS_MAX_BYTES: usize = 768;
/// Largest foca packet, in bytes (foca's `max_packet_size`); a datagram
/// adds the 13-byte envelope. Below a 1500-byte MTU.
pub const PACKET_MAX_BYTES: usize = 1400;
/// Peers kept as seeds and written to the peer cache, at most.
pub const PEERS_MAX: usize = 64;
/// Largest peer cache file read, in bytes.
pub const PEER_CACHE_FILE_MAX_BYTES: u64 = 64 * 1024;
/// Commands (join, leave) queued to the gossip task, at most.
pub const COMMANDS_MAX: usize = 64;
/// foca timer events pending, at most (a few per member in practice).
pub const TIMERS_MAX: usize = 16 * MEMBERS_MAX;
/// How often a node re-broadcasts its facts even when nothing changed.
pub const FACTS_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Minimum time between two writes of the peer cache.
pub const PEER_CACHE_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// This node's metadata, spread to every member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub name: String,
    pub api_addr: String,
    pub raft_id: u64,
    pub os: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub labels: BTreeMap<String, String>,
    pub started_at_ms: u64,
    /// The node's shoal release, e.g. `0.2.0` (empty from shoal 0.1, which
    /// did not gossip it).
    pub release: String,
    /// The newest log format the node reads (0 from shoal 0.1, which reads
    /// only the first).
    pub log_version: u32,
}

impl NodeFacts {
    /// The newest log format the node reads, counting a node that does not
    /// say as one of shoal 0.1.
    pub fn log_version_read(&self) -> u32 {
        self.log_version.max(shoal_state::LOG_VERSION_FIRST)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberStatus {
    Alive,
    /// Missed its probes; declared dead unless it answers within
    /// [`MembershipConfig::suspect_to_down_after`].
    Suspect,
    /// Declared dead by the cluster (crash, partition). Listed until
    /// [`MembershipConfig::dead_forget_after`].
    Dead,
    /// Left on purpose ([`Membership::leave`]). Listed as long as dead ones.
    Left,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub facts: NodeFacts,
    pub gossip_addr: SocketAddr,
    pub status: MemberStatus,
    /// Wall clock (ms since the epoch) when this node saw it enter `status`.
    pub since_ms: u64,
}

#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// Node name, unique in the cluster; must equal `facts.name`.
    pub name: String,
    /// Local address of the UDP gossip socket.
    pub bind: SocketAddr,
    /// Address the others send to (a concrete IP, not 0.0.0.0).
    pub advertise: SocketAddr,
    /// Identity of the cluster; datagrams of other clusters are dropped.
    pub cluster_id: String,
    pub facts: NodeFacts,
    /// JSON file of known peers' gossip addresses.
    pub peer_cache: PathBuf,
    /// How long a dead or departed node stays listed before it is forgotten.
    pub dead_forget_after: Duration,
    /// One member is probed per period.
    pub probe_period: Duration,
    /// How long a direct probe waits for its ack before asking others to
    /// probe indirectly. Below `probe_period`.
    pub probe_rtt: Duration,
    /// How long a suspect has to refute the suspicion before it is dead.
    pub suspect_to_down_after: Duration,
}

impl MembershipConfig {
    /// A configuration with the defaults: advertise = bind, dead nodes
    /// forgotten after 5 minutes, and timings that declare a crashed node
    /// dead about 3 s after it stops answering on a LAN (probe every
    /// 500 ms, 200 ms round trip, 2 s of suspicion).
    pub fn new(
        name: impl Into<String>,
        bind: SocketAddr,
        cluster_id: impl Into<String>,
        facts: NodeFacts,
        peer_cache: impl Into<PathBuf>,
    ) -> MembershipConfig {
        MembershipConfig {
            name: name.into(),
            bind,
            advertise: bind,
            cluster_id: cluster_id.into(),
            facts,
            peer_cache: peer_cache.into(),
            dead_forget_after: Duration::from_secs(5 * 60),
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            suspect_to_down_after: Duration::from_secs(2),
        }
    }

    fn validate(&self) -> Result<(), MembershipError> {
        let invalid = |msg: String| Err(MembershipError::InvalidConfig(msg));
        if self.name.is_empty() || self.name.len() > NAME_MAX_BYTES {
            return invalid(format!(
                "name: must be 1 to {NAME_MAX_BYTES} bytes, got {}",
                self.name.len()
            ));
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > CLUSTER_ID_MAX_BYTES {
            return invalid(format!(
                "cluster_id: must be 1 to {CLUSTER_ID_MAX_BYTES} bytes, got {}",
                self.cluster_id.len()
            ));
        }
        if self.advertise.ip().is_unspecified() || self.advertise.port() == 0 {
            return invalid(format!(
                "advertise: {} is not an address others can send to (give a concrete IP and port)",
                self.advertise
            ));
        }
        if self.probe_period.is_zero() || self.probe_rtt.is_zero() {
            return invalid("probe_period and probe_rtt must be above zero".into());
        }
        if self.probe_rtt >= self.probe_period {
            return invalid(format!(
                "probe_rtt ({:?}) must be below probe_period ({:?})",
                self.probe_rtt, self.probe_period
            ));
        }
        if self.suspect_to_down_after.is_zero() {
            return invalid("suspect_to_down_after must be above zero".into());
        }
        if self.dead_forget_after < Duration::from_secs(1) {
            return invalid("dead_forget_after must be at least 1s".into());
        }
        check_facts(&self.name, &self.facts)
    }
}

fn check_facts(name: &str, facts: &NodeFacts) -> Result<(), MembershipError> {
    if facts.name != name {
        return Err(MembershipError::FactsName {
            facts: facts.name.clone(),
            node: name.to_owned(),
        });
    }
    // The largest the broadcast can be: the biggest varints.
    let size = FactsMsg {
        boot: u64::MAX,
        seq: u64::MAX,
        left: true,
        facts: facts.clone(),
    }
    .encode()
    .map_err(|err| MembershipError::Encode(err.to_string()))?
    .len();
    if size > FACTS_MAX_BYTES {
        return Err(MembershipError::FactsTooLarge {
            size,
            max: FACTS_MAX_BYTES,
        });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("invalid membership config: {0}")]
    InvalidConfig(String),
    #[error("node facts are named {facts:?} but the node is {node:?}")]
    FactsName { facts: String, node: String },
    #[error(
        "node facts take {size} bytes encoded, more than the {max} that fit in a gossip \
         datagram: use fewer or shorter labels"
    )]
    FactsTooLarge { size: usize, max: usize },
    #[error("encoding node facts: {0}")]
    Encode(String),
    #[error("cannot bind the gossip socket to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the gossip membership has stopped")]
    Stopped,
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipStats {
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    /// Datagrams of another cluster (same envelope, other cluster id).
    pub dropped_other_cluster: u64,
    /// Datagrams without a valid envelope.
    pub dropped_malformed: u64,
    /// Datagrams over the size limit.
    pub dropped_oversize: u64,
    /// Datagrams dropped because they would add members past [`MEMBERS_MAX`].
    pub dropped_members_full: u64,
    /// Packets foca refused (undecodable, from a dead member, ...).
    pub protocol_errors: u64,
    pub send_errors: u64,
}

#[derive(Default)]
struct Counters {
    datagrams_received: AtomicU64,
    datagrams_sent: AtomicU64,
    dropped_other_cluster: AtomicU64,
    dropped_malformed: AtomicU64,
    dropped_oversize: AtomicU64,
    dropped_members_full: AtomicU64,
    protocol_errors: AtomicU64,
    send_errors: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> MembershipStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MembershipStats {
            datagrams_received: get(&self.datagrams_received),
            datagrams_sent: get(&self.datagrams_sent),
            dropped_other_cluster: get(&self.dropped_other_cluster),
            dropped_malformed: get(&self.dropped_malformed),
            dropped_oversize: get(&self.dropped_oversize),
            dropped_members_full: get(&self.dropped_members_full),
            protocol_errors: get(&self.protocol_errors),
            send_errors: get(&self.send_errors),
        }
    }
}

/// State shared by the handle and the gossip task.
struct Shared {
    members: RwLock<Vec<Member>>,
    changes: watch::Sender<u64>,
    /// The newest facts given to `update_facts`, not yet taken by the task.
    pending_facts: Mutex<Option<NodeFacts>>,
    facts_wakeup: Notify,
    counters: Counters,
}

impl Shared {
    fn publish(&self, members: Vec<Member>) {
        let mut current = self
            .members
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *current != members {
            *current = members;
            drop(current);
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// A running gossip member. Dropping it stops the gossip task without
/// telling anyone (like [`Membership::shutdown`]).
pub struct Membership {
    name: String,
    advertise: SocketAddr,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Membership {
    /// Binds the gossip socket and announces this node to `peers`, or to
    /// the peers in the peer cache when `peers` is empty. Returns once the
    /// socket is bound: joining happens in the background (watch
    /// [`Membership::subscribe`]); while no other member is known, the
    /// announce is repeated with a back-off.
    pub async fn start(
        config: MembershipConfig,
        peers: Vec<SocketAddr>,
    ) -> Result<Membership, MembershipError> {
        config.validate()?;
        let socket = tokio::net::UdpSocket::bind(config.bind)
            .await
            .map_err(|source| MembershipError::Bind {
                addr: config.bind,
                source,
            })?;

        let seeds = if peers.is_empty() {
            match peer_cache::read(&config.peer_cache, &config.cluster_id) {
                Ok(cached) => {
                    if !cached.is_empty() {
                        tracing::info!(
                            path = %config.peer_cache.display(),
                            peers = cached.len(),
                            "joining the peers of the peer cache"
                        );
                    }
                    cached
                }
                Err(err) => {
                    tracing::warn!("ignoring the peer cache: {err}");
                    Vec::new()
                }
            }
        } else {
            peers
        };

        let started_ms = wall_ms();
        let identity = NodeId::new_local(config.name.clone(), config.advertise, started_ms);
        let self_member = Member {
            facts: config.facts.clone(),
            gossip_addr: config.advertise,
            status: MemberStatus::Alive,
            since_ms: started_ms,
        };
        let (changes, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            members: RwLock::new(vec![self_member]),
            changes,
            pending_facts: Mutex::new(None),
            facts_wakeup: Notify::new(),
            counters: Counters::default(),
        });
        let (commands, command_rx) = mpsc::channel(COMMANDS_MAX);
        let (stop, stop_rx) = watch::channel(false);

        tracing::info!(
            node = %config.name,
            bind = %config.bind,
            advertise = %config.advertise,
            seeds = seeds.len(),
            "gossip membership starting"
        );
        let name = config.name.clone();
        let advertise = config.advertise;
        let driver = Driver::new(config, identity, socket, shared.clone(), seeds, started_ms);
        let task = tokio::spawn(driver.run(command_rx, stop_rx));

        Ok(Membership {
            name,
            advertise,
            shared,
            commands,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The gossip address the others know this node by.
    pub fn advertise(&self) -> SocketAddr {
        self.advertise
    }

    /// Every known member with known facts, sorted by name: this node
    /// (Alive; Left after `leave`), the alive and suspect ones, and dead or
    /// departed ones until [`MembershipConfig::dead_forget_after`].
    pub fn members(&self) -> Vec<Member> {
        self.shared
            .members
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Changes (its value is a counter) whenever [`Membership::members`]
    /// would return something different.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Counters of datagrams and drops.
    pub fn stats(&self) -> MembershipStats {
        self.shared.counters.snapshot()
    }

    /// Replaces this node's facts and spreads them. Successive updates
    /// coalesce: the newest wins.
    pub fn update_facts(&self, facts: NodeFacts) -> Result<(), MembershipError> {
        check_facts(&self.name, &facts)?;
        if self.commands.is_closed() {
            return Err(MembershipError::Stopped);
        }
        *self
            .shared
            .pending_facts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(facts);
        self.shared.facts_wakeup.notify_one();
        Ok(())
    }

    /// Announces this node to more peers (they are also kept as seeds to
    /// retry while no member is known).
    pub async fn join(&self, peers: &[SocketAddr]) -> Result<(), MembershipError> {
        self.commands
            .send(Command::Join(peers.to_vec()))
            .await
            .map_err(|_| MembershipError::Stopped)
    }

    /// Leaves gracefully: tells a few members this node is leaving (they
    /// spread it, and list this node as [`MemberStatus::Left`]), writes the
    /// peer cache, then stops. Does nothing if already stopped.
    pub async fn leave(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Leave(done)).await.is_ok() {
            let _ = wait.await;
        }
        self.join_task().await;
    }

    /// Stops at once without telling anyone: the others will find this node
    /// dead (this is how tests simulate a crash).
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        self.join_task().await;
    }

    async fn join_task(&self) {
        let task = self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = task {
            if let Err(err) = task.await {
                if err.is_panic() {
                    tracing::error!("the gossip task panicked: {err}");
                }
            }
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("name", &self.name)
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

/// Wall clock in ms since the epoch (0 if the clock is before it).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

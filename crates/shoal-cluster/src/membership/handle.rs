//! The handle of a running member: it starts the gossip task and reads
//! what the task publishes (members, changes, stats), hands it new facts
//! and joins, and stops it by leaving or at once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::config::check_facts;
use super::driver::{Command, Driver};
use super::facts::{self, FactsTable, SharedFacts};
use super::identity::NodeId;
use super::signing::FactsKeys;
use super::stats::Counters;
use super::wire::Envelope;
use super::{
    peer_cache, wall_ms, GossipSealing, Member, MemberStatus, MembershipConfig, MembershipError,
    MembershipStats, NodeFacts, COMMANDS_MAX,
};

/// State shared by the handle and the gossip task.
pub(super) struct Shared {
    pub(super) members: RwLock<Vec<Member>>,
    pub(super) changes: watch::Sender<u64>,
    /// The newest facts given to `update_facts`, not yet taken by the task.
    pub(super) pending_facts: Mutex<Option<NodeFacts>>,
    pub(super) facts_wakeup: Notify,
    pub(super) counters: Counters,
    /// How datagrams are wrapped and unwrapped, swapped whole.
    pub(super) envelope: RwLock<Arc<Envelope>>,
    /// What the envelope was made from (keys included), to report.
    pub(super) sealing: RwLock<GossipSealing>,
    pub(super) cluster_id: String,
    /// Random per start: with a sequence number, it lets receivers drop
    /// replayed sealed datagrams.
    pub(super) session: u64,
    /// Facts by node name: written by foca's broadcast handler, read by
    /// the gossip task, given keys by the handle.
    pub(super) facts: SharedFacts,
}

impl Shared {
    pub(super) fn envelope(&self) -> Arc<Envelope> {
        self.envelope
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Shared {
    pub(super) fn publish(&self, members: Vec<Member>) {
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
        let session: u64 = rand::random();
        let envelope = Envelope::new(&config.sealing, &config.cluster_id, session)
            .map_err(MembershipError::InvalidConfig)?;
        let shared = Arc::new(Shared {
            members: RwLock::new(vec![self_member]),
            changes,
            pending_facts: Mutex::new(None),
            facts_wakeup: Notify::new(),
            counters: Counters::default(),
            envelope: RwLock::new(Arc::new(envelope)),
            sealing: RwLock::new(config.sealing.clone()),
            cluster_id: config.cluster_id.clone(),
            session,
            facts: Arc::new(Mutex::new(FactsTable::new(&config.cluster_id))),
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

    /// Sends and takes datagrams as `sealing` says from the next one on.
    /// Rotate keys by installing a key on every node, then making it the
    /// primary, then removing the old one: members keep opening each
    /// other's datagrams throughout.
    pub fn set_sealing(&self, sealing: &GossipSealing) -> Result<(), MembershipError> {
        let envelope = Envelope::new(sealing, &self.shared.cluster_id, self.shared.session)
            .map_err(MembershipError::InvalidConfig)?;
        *self
            .shared
            .envelope
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(envelope);
        *self
            .shared
            .sealing
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = sealing.clone();
        Ok(())
    }

    /// How datagrams are sent and taken now.
    pub fn sealing(&self) -> GossipSealing {
        self.shared
            .sealing
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
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
        let mut stats = self.shared.counters.snapshot();
        stats.facts_unsigned = facts::lock(&self.shared.facts).refused_unsigned;
        stats
    }

    /// How many nodes' facts are checked against a key.
    pub fn facts_keys(&self) -> usize {
        facts::lock(&self.shared.facts).keys_len()
    }

    /// The keys the facts of other nodes are checked with from now on, by
    /// node name (the state's facts keys): a node's facts are taken only
    /// when its key signed them, and what is known of it unsigned is
    /// dropped.
    pub fn set_facts_keys(&self, keys: FactsKeys) {
        facts::lock(&self.shared.facts).set_keys(keys, &self.name);
        // The gossip task rebuilds the member list at its next event.
        self.shared.facts_wakeup.notify_one();
    }

    /// Replaces this node's facts and spreads them. Successive updates
    /// coalesce: the newest wins.
    pub fn update_facts(&self, facts: NodeFacts) -> Result<(), MembershipError> {
        check_facts(&self.name, &facts, self.advertise)?;
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

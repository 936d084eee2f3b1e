//! The gossip task: socket, timers and foca, in one loop.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use foca::{
    AccumulatingRuntime, Codec, Config, Foca, Message, OwnedNotification, PeriodicParams,
    PostcardCodec, State, Timer,
};
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::facts::{self, FactsHandler, FactsMsg, SharedFacts};
use super::identity::NodeId;
use super::wire::{self, Prefix, Reject, PREFIX_LEN};
use super::{
    peer_cache, wall_ms, Counters, Member, MemberStatus, MembershipConfig, NodeFacts, Shared,
    MEMBERS_MAX, PACKET_MAX_BYTES, PEERS_MAX, PEER_CACHE_WRITE_INTERVAL, TIMERS_MAX,
};

/// Housekeeping period: join retries, facts refresh, peer cache writes.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(500);
/// First and longest wait between announces while no member is known.
const JOIN_RETRY_MIN: Duration = Duration::from_secs(1);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(10);
/// Facts of a node foca no longer lists are dropped after this long.
const FACTS_ORPHAN_TTL: Duration = Duration::from_secs(60);
/// Cluster size foca's dissemination counts are derived from (each update
/// is piggybacked `4 * log10(n + 1)` times: 6 for 32).
const CLUSTER_SIZE_HINT: u32 = 32;
/// How often two members believed dead are sent an announce.
const ANNOUNCE_TO_DEAD_INTERVAL: Duration = Duration::from_secs(10);
/// Pause after a socket receive error, so a persistent one cannot spin.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(50);

pub(crate) enum Command {
    Join(Vec<SocketAddr>),
    Leave(oneshot::Sender<()>),
}

type Swim = Foca<NodeId, PostcardCodec, StdRng, FactsHandler>;

/// What the status of a member was and since when, by name.
struct Tracked {
    boot: u64,
    addr: SocketAddr,
    status: MemberStatus,
    since_ms: u64,
}

pub(crate) struct Driver {
    foca: Swim,
    runtime: AccumulatingRuntime<NodeId>,
    socket: UdpSocket,
    prefix: Prefix,
    cluster_id: String,
    name: String,
    shared: Arc<Shared>,
    facts: SharedFacts,
    own_facts: NodeFacts,
    own_seq: u64,
    own_status: MemberStatus,
    started_ms: u64,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer<NodeId>)>>,
    timer_seq: u64,
    seeds: Vec<SocketAddr>,
    seed_retry_at: Instant,
    seed_backoff: Duration,
    facts_refresh_at: Instant,
    rebroadcast_facts: bool,
    peer_cache: PathBuf,
    peer_cache_written_at: Option<Instant>,
    peer_cache_last: Vec<SocketAddr>,
    /// The member list was rebuilt since the peer cache was last considered.
    peers_changed: bool,
    fingerprint: Option<u64>,
    tracked: HashMap<String, Tracked>,
    send_buf: Vec<u8>,
}

enum Event {
    Stop,
    Command(Command),
    FactsUpdated,
    TimerDue,
    Datagram(usize),
    RecvError(std::io::Error),
    Housekeeping,
}

impl Driver {
    pub(crate) fn new(
        config: MembershipConfig,
        identity: NodeId,
        socket: UdpSocket,
        shared: Arc<Shared>,
        seeds: Vec<SocketAddr>,
        started_ms: u64,
    ) -> Driver {
        let mut foca_config =
            Config::new_lan(NonZeroU32::new(CLUSTER_SIZE_HINT).unwrap_or(NonZeroU32::MIN));
        foca_config.probe_period = config.probe_period;
        foca_config.probe_rtt = config.probe_rtt;
        foca_config.suspect_to_down_after = config.suspect_to_down_after;
        foca_config.remove_down_after = Some(config.dead_forget_after);
        // Heal partitions sooner than new_lan's 65 s: members declared dead
        // that are in fact alive are told so and rejoin under a new boot id.
        foca_config.periodic_announce_to_down_members = Some(PeriodicParams {
            frequency: ANNOUNCE_TO_DEAD_INTERVAL,
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        foca_config.max_packet_size =
            NonZeroUsize::new(PACKET_MAX_BYTES).unwrap_or(NonZeroUsize::MIN);

        let facts = SharedFacts::default();
        let handler = FactsHandler {
            table: facts.clone(),
        };
        let rng: StdRng = rand::make_rng();
        let foca = Foca::with_custom_broadcast(identity, foca_config, rng, PostcardCodec, handler);

        let own_addrs = [config.advertise, config.bind];
        let mut seeds: Vec<SocketAddr> = seeds
            .into_iter()
            .filter(|addr| !own_addrs.contains(addr))
            .collect();
        seeds.sort_unstable();
        seeds.dedup();
        seeds.truncate(PEERS_MAX);

        let now = Instant::now();
        let mut driver = Driver {
            foca,
            runtime: AccumulatingRuntime::new(),
            socket,
            prefix: wire::prefix(&config.cluster_id),
            cluster_id: config.cluster_id,
            name: config.name,
            shared,
            facts,
            own_facts: config.facts,
            own_seq: 0,
            own_status: MemberStatus::Alive,
            started_ms,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            seeds,
            seed_retry_at: now + JOIN_RETRY_MIN,
            seed_backoff: JOIN_RETRY_MIN,
            facts_refresh_at: now + super::FACTS_REFRESH_INTERVAL,
            rebroadcast_facts: false,
            peer_cache: config.peer_cache,
            peer_cache_written_at: None,
            peer_cache_last: Vec::new(),
            peers_changed: false,
            fingerprint: None,
            tracked: HashMap::new(),
            send_buf: Vec::with_capacity(PREFIX_LEN + PACKET_MAX_BYTES),
        };
        driver.broadcast_own_facts(false);
        driver
    }

    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut recv_buf = vec![0u8; PREFIX_LEN + PACKET_MAX_BYTES + 1];
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);

        let seeds = self.seeds.clone();
        self.announce(&seeds);
        self.flush().await;

        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
            let event = tokio::select! {
                biased;
                changed = stop.changed() => match changed {
                    Ok(()) if !*stop.borrow() => continue,
                    _ => Event::Stop,
                },
                command = commands.recv() => match command {
                    Some(command) => Event::Command(command),
                    None => Event::Stop,
                },
                () = self.shared.facts_wakeup.notified() => Event::FactsUpdated,
                () = sleep_until_opt(next_timer), if next_timer.is_some() => Event::TimerDue,
                // Before the socket, so a flood of datagrams cannot starve it.
                _ = housekeeping.tick() => Event::Housekeeping,
                received = self.socket.recv_from(&mut recv_buf) => match received {
                    Ok((len, _from)) => Event::Datagram(len),
                    Err(err) => Event::RecvError(err),
                },
            };
            match event {
                Event::Stop => break,
                Event::Command(Command::Join(peers)) => self.join(peers),
                Event::Command(Command::Leave(done)) => {
                    self.leave().await;
                    let _ = done.send(());
                    break;
                }
                Event::FactsUpdated => {
                    let pending = self
                        .shared
                        .pending_facts
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .take();
                    if let Some(facts) = pending {
                        if facts != self.own_facts {
                            self.own_facts = facts;
                            self.rebroadcast_facts = true;
                        }
                    }
                }
                Event::TimerDue => self.fire_due_timers(),
                Event::Datagram(len) => {
                    let datagram = recv_buf.get(..len).unwrap_or_default();
                    self.receive(datagram);
                }
                Event::RecvError(err) => {
                    tracing::debug!("gossip socket receive error: {err}");
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                }
                Event::Housekeeping => self.housekeeping(),
            }
            self.flush().await;
        }
        tracing::info!(node = %self.name, "gossip membership stopped");
    }

    fn announce(&mut self, peers: &[SocketAddr]) {
        let own = self.foca.identity().addr;
        for peer in peers.iter().filter(|peer| **peer != own) {
            if let Err(err) = self
                .foca
                .announce(NodeId::probe_target(*peer), &mut self.runtime)
            {
                tracing::debug!(%peer, "announce failed: {err}");
            }
        }
    }

    fn join(&mut self, peers: Vec<SocketAddr>) {
        let own = self.foca.identity().addr;
        for peer in &peers {
            if *peer != own && !self.seeds.contains(peer) && self.seeds.len() < PEERS_MAX {
                self.seeds.push(*peer);
            }
        }
        self.announce(&peers);
    }

    async fn leave(&mut self) {
        tracing::info!(node = %self.name, "leaving the cluster");
        self.broadcast_own_facts(true);
        if let Err(err) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::warn!("leaving the cluster: {err}");
        }
        // A second round in case a datagram of the first is lost.
        if let Err(err) = self.foca.gossip(&mut self.runtime) {
            tracing::debug!("gossip after leaving: {err}");
        }
        self.own_status = MemberStatus::Left;
        self.flush().await;
        self.write_peer_cache(true);
    }

    /// Adds this node's facts to foca's broadcasts with a new version.
    fn broadcast_own_facts(&mut self, left: bool) {
        self.own_seq = self.own_seq.saturating_add(1);
        let msg = FactsMsg {
            boot: self.foca.identity().boot,
            seq: self.own_seq,
            left,
            facts: self.own_facts.clone(),
        };
        let result = msg
            .encode()
            .map_err(|err| err.to_string())
            .and_then(|bytes| {
                self.foca
                    .add_broadcast(&bytes)
                    .map_err(|err| err.to_string())
            });
        if let Err(err) = result {
            tracing::warn!("cannot broadcast this node's facts: {err}");
        }
    }

    fn receive(&mut self, datagram: &[u8]) {
        let counters = &self.shared.counters;
        Counters::bump(&counters.datagrams_received);
        if datagram.len() > PREFIX_LEN + PACKET_MAX_BYTES {
            Counters::bump(&counters.dropped_oversize);
            return;
        }
        let packet = match wire::open(&self.prefix, datagram) {
            Ok(packet) => packet,
            Err(Reject::OtherCluster) => {
                Counters::bump(&counters.dropped_other_cluster);
                tracing::trace!("dropped a datagram of another cluster");
                return;
            }
            Err(Reject::Malformed) => {
                Counters::bump(&counters.dropped_malformed);
                return;
            }
        };
        if self.foca.iter_membership_state().len() >= MEMBERS_MAX && self.would_add_members(packet)
        {
            Counters::bump(&counters.dropped_members_full);
            tracing::debug!("member list full ({MEMBERS_MAX}): dropped a datagram");
            return;
        }
        if let Err(err) = self.foca.handle_data(packet, &mut self.runtime) {
            Counters::bump(&self.shared.counters.protocol_errors);
            tracing::debug!("gossip packet refused: {err}");
        }
    }

    /// Whether handling `packet` could add a member foca does not know.
    /// Only used when the list is full, so its cost does not matter.
    fn would_add_members(&self, mut packet: &[u8]) -> bool {
        let mut codec = PostcardCodec;
        let Ok(header) = Codec::<NodeId>::decode_header(&mut codec, &mut packet) else {
            return false; // foca will refuse it
        };
        let own = self.foca.identity().addr;
        let known = |addr: SocketAddr| {
            addr == own
                || self
                    .foca
                    .iter_membership_state()
                    .any(|member| member.id().addr == addr)
        };
        if !known(header.src.addr) {
            return true;
        }
        if matches!(header.message, Message::Broadcast) {
            return false;
        }
        let Some((count, mut rest)) = packet.split_first_chunk::<2>() else {
            return false;
        };
        for _ in 0..u16::from_be_bytes(*count) {
            match Codec::<NodeId>::decode_member(&mut codec, &mut rest) {
                Ok(member) if !known(member.id().addr) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while self
            .timers
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            let Some(Reverse((_, _, timer))) = self.timers.pop() else {
                break;
            };
            if let Err(err) = self.foca.handle_timer(timer, &mut self.runtime) {
                tracing::debug!("gossip timer: {err}");
            }
        }
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        if self.foca.num_members() == 0 && !self.seeds.is_empty() && now >= self.seed_retry_at {
            tracing::debug!(
                seeds = self.seeds.len(),
                "no member known: announcing again"
            );
            let seeds = self.seeds.clone();
            self.announce(&seeds);
            self.seed_backoff = (self.seed_backoff * 2).min(JOIN_RETRY_MAX);
            self.seed_retry_at = now + self.seed_backoff;
        }
        if self.foca.num_members() > 0 && now >= self.facts_refresh_at {
            self.rebroadcast_facts = true;
            self.facts_refresh_at = now + super::FACTS_REFRESH_INTERVAL;
        }
        // Forget the facts of nodes foca forgot.
        let listed: HashSet<&str> = self
            .foca
            .iter_membership_state()
            .map(|member| member.id().name.as_str())
            .collect();
        let mut table = facts::lock(&self.facts);
        for (name, entry) in table.entries.iter_mut() {
            if listed.contains(name.as_str()) {
                entry.seen = now;
            }
        }
        if let Some(before) = now.checked_sub(FACTS_ORPHAN_TTL) {
            table.evict_unseen(before, &self.name);
        }
    }

    /// Carries out what foca asked for, then publishes the member list.
    async fn flush(&mut self) {
        loop {
            if self.rebroadcast_facts && self.own_status != MemberStatus::Left {
                self.rebroadcast_facts = false;
                self.broadcast_own_facts(false);
                // Send it now rather than with the next probe.
                if let Err(err) = self.foca.broadcast(&mut self.runtime) {
                    tracing::debug!("broadcasting facts: {err}");
                }
            }
            while let Some((dst, data)) = self.runtime.to_send() {
                self.send_buf.clear();
                self.send_buf.extend_from_slice(&self.prefix);
                self.send_buf.extend_from_slice(&data);
                match self.socket.send_to(&self.send_buf, dst.addr).await {
                    Ok(_) => Counters::bump(&self.shared.counters.datagrams_sent),
                    Err(err) => {
                        Counters::bump(&self.shared.counters.send_errors);
                        tracing::debug!(to = %dst.addr, "gossip send failed: {err}");
                    }
                }
            }
            let now = Instant::now();
            while let Some((after, timer)) = self.runtime.to_schedule() {
                if self.timers.len() >= TIMERS_MAX {
                    tracing::error!("{TIMERS_MAX} gossip timers pending: dropped {timer:?}");
                    continue;
                }
                self.timer_seq = self.timer_seq.wrapping_add(1);
                self.timers
                    .push(Reverse((now + after, self.timer_seq, timer)));
            }
            while let Some(notification) = self.runtime.to_notify() {
                self.notified(notification);
            }
            if !self.rebroadcast_facts || self.own_status == MemberStatus::Left {
                break;
            }
        }
        self.publish();
        self.write_peer_cache(false);
    }

    fn notified(&mut self, notification: OwnedNotification<NodeId>) {
        match notification {
            OwnedNotification::MemberUp(id) => {
                tracing::info!(node = %self.name, member = ?id, "member up");
                // Whoever is new learns this node's facts.
                self.rebroadcast_facts = true;
            }
            OwnedNotification::MemberDown(id) => {
                tracing::info!(node = %self.name, member = ?id, "member down");
            }
            OwnedNotification::Rename(old, new) => {
                tracing::debug!(node = %self.name, ?old, ?new, "member restarted");
            }
            OwnedNotification::Active => {
                tracing::info!(node = %self.name, "joined the cluster");
                self.seed_backoff = JOIN_RETRY_MIN;
            }
            OwnedNotification::Idle => {
                tracing::info!(node = %self.name, "no other live member known");
                self.seed_backoff = JOIN_RETRY_MIN;
                self.seed_retry_at = Instant::now() + JOIN_RETRY_MIN;
            }
            OwnedNotification::Defunct if self.own_status != MemberStatus::Left => {
                tracing::warn!(node = %self.name, "declared down by the cluster");
            }
            OwnedNotification::Rejoin(id) => {
                tracing::info!(node = %self.name, identity = ?id, "declared down, rejoined");
                self.rebroadcast_facts = true;
            }
            #[allow(unreachable_patterns)] // with foca's `unstable-notifications`
            _ => {}
        }
    }

    /// Rebuilds the member list if foca's members or the facts changed.
    fn publish(&mut self) {
        let table = facts::lock(&self.facts);
        let mut hasher = DefaultHasher::new();
        table.generation.hash(&mut hasher);
        self.own_status.hash(&mut hasher);
        for member in self.foca.iter_membership_state() {
            member.id().hash(&mut hasher);
            (member.state() as u8).hash(&mut hasher);
        }
        let fingerprint = hasher.finish();
        if self.fingerprint == Some(fingerprint) {
            return;
        }
        self.fingerprint = Some(fingerprint);

        let own = self.foca.identity();
        // The newest identity per name; a node restarted on another address
        // leaves its old identity behind until the old one is forgotten.
        let mut newest: HashMap<&str, (&NodeId, State)> = HashMap::new();
        for member in self.foca.iter_membership_state() {
            let id = member.id();
            if id.addr == own.addr || id.name == own.name {
                continue;
            }
            let slot = newest
                .entry(id.name.as_str())
                .or_insert((id, member.state()));
            if id.boot > slot.0.boot {
                *slot = (id, member.state());
            }
        }

        let now_ms = wall_ms();
        let mut tracked = HashMap::with_capacity(newest.len());
        let mut members = Vec::with_capacity(newest.len() + 1);
        for (name, (id, state)) in newest {
            let known = table.entries.get(name).map(|entry| &entry.msg);
            let status = match state {
                State::Alive => MemberStatus::Alive,
                State::Suspect => MemberStatus::Suspect,
                State::Down if known.is_some_and(|msg| msg.left && msg.boot == id.boot) => {
                    MemberStatus::Left
                }
                State::Down => MemberStatus::Dead,
            };
            let since_ms = match self.tracked.get(name) {
                Some(before) if before.status == status && before.boot == id.boot => {
                    before.since_ms
                }
                _ => now_ms,
            };
            tracked.insert(
                name.to_owned(),
                Tracked {
                    boot: id.boot,
                    addr: id.addr,
                    status,
                    since_ms,
                },
            );
            if let Some(msg) = known {
                members.push(Member {
                    facts: msg.facts.clone(),
                    gossip_addr: id.addr,
                    status,
                    since_ms,
                });
            }
        }
        drop(table);
        self.tracked = tracked;
        self.peers_changed = true;
        members.sort_by(|a, b| a.facts.name.cmp(&b.facts.name));
        members.truncate(MEMBERS_MAX - 1);
        let own = Member {
            facts: self.own_facts.clone(),
            gossip_addr: self.foca.identity().addr,
            status: self.own_status,
            since_ms: self.started_ms,
        };
        let at = members.partition_point(|m| m.facts.name < own.facts.name);
        members.insert(at, own);
        self.shared.publish(members);
    }

    /// Writes the peer cache if the peers changed and the last write is old
    /// enough (or `now`). Never replaces the file with an empty list.
    fn write_peer_cache(&mut self, now: bool) {
        if !self.peers_changed {
            return;
        }
        let instant = Instant::now();
        if !now
            && self
                .peer_cache_written_at
                .is_some_and(|at| instant.duration_since(at) < PEER_CACHE_WRITE_INTERVAL)
        {
            return;
        }
        let mut peers: Vec<(bool, SocketAddr)> = self
            .tracked
            .values()
            .filter(|t| t.status != MemberStatus::Left)
            .map(|t| (t.status == MemberStatus::Dead, t.addr))
            .collect();
        // Live ones first, then the dead ones, while there is room.
        peers.sort_unstable();
        let mut peers: Vec<SocketAddr> = peers
            .into_iter()
            .map(|(_, addr)| addr)
            .take(PEERS_MAX)
            .collect();
        peers.sort_unstable();
        self.peers_changed = false;
        if peers.is_empty() || peers == self.peer_cache_last {
            return;
        }
        self.peer_cache_written_at = Some(instant);
        match peer_cache::write(
            &self.peer_cache,
            &self.cluster_id,
            &self.name,
            wall_ms(),
            &peers,
        ) {
            Ok(()) => {
                tracing::debug!(path = %self.peer_cache.display(), peers = peers.len(), "peer cache written");
                self.peer_cache_last = peers;
            }
            Err(err) => {
                tracing::warn!("{err}");
                self.peers_changed = true; // retry after the interval
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

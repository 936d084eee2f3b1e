//! The gossip task: one loop that feeds foca (which is sans-IO) the
//! socket's datagrams, its timers, the handle's commands and new facts, and
//! carries out what foca asks for (send, schedule, notify).
//!
//! - `inbound`: datagrams in, checked before foca sees them.
//! - `timers`: foca's timers and the housekeeping tick.
//! - `members`: foca's notifications and the member list built from them.
//! - `peers`: announces to seeds and peers, and the peer cache.

mod inbound;
mod members;
mod peers;
mod timers;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Config, Foca, PeriodicParams, Timer};
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::codec::{self, IdentityCodec, Proofs, SharedProofs};
use super::facts::{FactsHandler, FactsMsg, SharedFacts};
use super::handle::Shared;
use super::identity::NodeId;
use super::signing::FactsSigner;
use super::stats::Counters;
use super::wire::{Replays, OVERHEAD, WIRE_PLAIN, WIRE_PROVEN};
use super::{MemberStatus, MembershipConfig, NodeFacts, PACKET_MAX_BYTES, PEERS_MAX, TIMERS_MAX};

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

type Swim = Foca<NodeId, IdentityCodec, StdRng, FactsHandler>;

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
    /// Sequence numbers of the datagrams this node sends.
    sequence: u64,
    /// What each sealing sender sent lately, to drop replays.
    replays: Replays,
    /// When the node last said that it drops datagrams for the clock.
    stale_warned_at: Option<Instant>,
    cluster_id: String,
    name: String,
    shared: Arc<Shared>,
    facts: SharedFacts,
    facts_signer: Option<Arc<FactsSigner>>,
    /// The proofs of identities, written by foca's codec and checked by
    /// the screen.
    proofs: SharedProofs,
    /// Whether the packet foca decodes next carries proofs.
    layout: Arc<std::sync::atomic::AtomicBool>,
    advertise: SocketAddr,
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
        // Sealed, a packet still fits the datagram size below the MTU.
        foca_config.max_packet_size =
            NonZeroUsize::new(PACKET_MAX_BYTES - OVERHEAD).unwrap_or(NonZeroUsize::MIN);

        let facts = shared.facts.clone();
        let handler = FactsHandler {
            table: facts.clone(),
        };
        let rng: StdRng = rand::make_rng();
        let proofs: SharedProofs = Arc::new(std::sync::Mutex::new(Proofs::new(
            &config.cluster_id,
            &config.name,
            config.advertise,
            config.facts_signer.clone(),
        )));
        let codec = IdentityCodec::new(proofs.clone());
        let layout = codec.layout();
        let foca = Foca::with_custom_broadcast(identity, foca_config, rng, codec, handler);

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
            sequence: 0,
            replays: Replays::default(),
            stale_warned_at: None,
            cluster_id: config.cluster_id,
            name: config.name,
            shared,
            facts,
            facts_signer: config.facts_signer,
            proofs,
            layout,
            advertise: config.advertise,
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
            send_buf: Vec::with_capacity(OVERHEAD + PACKET_MAX_BYTES),
        };
        driver.broadcast_own_facts(false);
        driver
    }

    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut recv_buf = vec![0u8; OVERHEAD + PACKET_MAX_BYTES + 1];
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
                    let len = len.min(recv_buf.len());
                    self.receive(&mut recv_buf[..len]);
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
            addr: Some(self.advertise),
        };
        let result = msg
            .encode_signed(self.facts_signer.as_deref(), &self.cluster_id)
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
                let envelope = self.shared.envelope();
                // foca writes every identity with its proof; a node that
                // may still hear from an older release sends without.
                let stripped;
                let packet = if envelope.sends_proofs() {
                    &data[..]
                } else if let Some(bytes) = codec::strip(&data) {
                    stripped = bytes;
                    &stripped[..]
                } else {
                    Counters::bump(&self.shared.counters.send_errors);
                    tracing::warn!("a gossip packet foca wrote does not read back: not sent");
                    continue;
                };
                self.sequence = self.sequence.wrapping_add(1);
                let version = match envelope.wrap(
                    self.sequence,
                    super::wall_ms(),
                    packet,
                    &mut self.send_buf,
                ) {
                    Ok(version) => version,
                    Err(error) => {
                        Counters::bump(&self.shared.counters.send_errors);
                        tracing::warn!(%error, "sealing a gossip datagram");
                        continue;
                    }
                };
                match self.socket.send_to(&self.send_buf, dst.addr).await {
                    Ok(_) => {
                        let counters = &self.shared.counters;
                        Counters::bump(&counters.datagrams_sent);
                        if version != WIRE_PLAIN {
                            Counters::bump(&counters.sealed_sent);
                        }
                        if version == WIRE_PROVEN {
                            Counters::bump(&counters.proven_sent);
                        }
                    }
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
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

//! The keys gossip is sealed with, on this node and in the cluster, and
//! when the cluster starts sealing.
//!
//! The cluster's keyring lives in the replicated state, sealed with the
//! data key (`security.gossip`; generation and key ids in the clear). A
//! voter opens it there; a worker, which holds no data key, fetches it from
//! a voter over mTLS (`GET /v1/internal/gossip-keys`); a joining node gets
//! it with its certificate. Each node keeps the ring it holds in
//! `DATA_DIR/pki/gossip.json` (0600, beside its private key), so that it
//! comes back sealed after a restart before it has heard anyone.
//!
//! When: a node gossips plaintext while some node of the cluster reads no
//! sealed gossip. A node tells the others it reads format 7 only once it
//! holds the ring, so the cluster's format reaches 7 only when every node
//! does; the leader then records the ring again, in format 7, and a node
//! that has applied a format-7 entry (`State::log_version`) seals what it
//! sends. It still takes plaintext for [`PLAINTEXT_GRACE`], as the others
//! apply that entry a moment later, and then only sealed datagrams.
//!
//! Proven identities (each SWIM identity with its node's proof, sealed
//! datagrams of version 3) follow the same way one format later: a node
//! that has applied a format-12 entry, or opened a datagram of version 3,
//! sends them, and takes datagrams without them for [`PLAINTEXT_GRACE`]
//! more.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shoal_api::client::Client;
use shoal_api::server::ApiError;
use shoal_api::wire::{GossipKeys, GossipView};
use shoal_cluster::log::ReplicatedLog;
use shoal_cluster::membership::{GossipKeyring, GossipSealing, MemberStatus, Membership};
use shoal_pki::seal::DataKey;
use shoal_state::format::{PROVEN_IDENTITIES, SEALED_GOSSIP};
use shoal_state::security::GossipKeysRecord;
use zeroize::Zeroizing;

use super::trust::{write_private, DATA_KEY_ID};
use super::Shared;

const FILE: &str = "gossip.json";
/// Additional data the ring is sealed with in the state.
const AAD: &[u8] = b"shoal gossip keys";
/// How often a node compares its ring with the state's when nothing is
/// applied.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// How long a node that starts sealing still takes plaintext.
pub const PLAINTEXT_GRACE: Duration = Duration::from_secs(30);
/// Voters asked for the ring in one round.
const VOTERS_ASKED_MAX: usize = 7;

/// The ring a node holds, and whether its cluster seals. Unknown fields
/// are ignored (a newer release may add some, and a node may go back).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Held {
    /// The generation of the state's record the ring came from (0: none).
    pub generation: u64,
    pub keyring: Option<GossipKeyring>,
    /// The cluster seals its gossip (learnt from the state or at join).
    #[serde(default)]
    pub sealed: bool,
    /// The cluster proves its gossip identities (learnt from the state or
    /// at join).
    #[serde(default)]
    pub proven: bool,
}

impl Held {
    /// What the node holds when it starts: its file, or (a voter) the
    /// state's ring when that is newer; sealed when its file says so or its
    /// state holds a format-7 entry.
    pub fn at_start(
        pki_dir: &Path,
        state: &shoal_state::State,
        data_key: Option<&DataKey>,
    ) -> Held {
        // What cannot be read is fetched again: it is no reason to stop.
        let mut held = load(pki_dir)
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "ignoring the kept gossip keyring");
                None
            })
            .unwrap_or_default();
        if let (Some(key), Some(record)) = (data_key, &state.security.gossip) {
            if record.generation > held.generation || held.keyring.is_none() {
                match open_record(key, record) {
                    Ok(ring) => {
                        held.keyring = Some(ring);
                        held.generation = record.generation;
                    }
                    Err(error) => tracing::warn!(%error, "opening the state's gossip keyring"),
                }
            }
        }
        held.sealed |= state.log_version >= SEALED_GOSSIP;
        held.proven |= state.log_version >= PROVEN_IDENTITIES;
        held
    }

    /// The log format this node tells the others it reads.
    pub fn log_version(&self) -> u32 {
        log_version_read(self.keyring.is_some())
    }
}

/// The log format a node tells the others it reads: this build's once it
/// holds the gossip keyring, the one before sealed gossip until then.
pub fn log_version_read(holds_ring: bool) -> u32 {
    if holds_ring {
        shoal_state::LOG_VERSION
    } else {
        SEALED_GOSSIP - 1
    }
}

/// When a node that switched still takes what it sent before.
#[derive(Clone, Copy, Debug, Default)]
pub struct Graces {
    /// Plaintext, after the switch to sealed datagrams.
    pub plaintext_until: Option<Instant>,
    /// Datagrams without proofs, after the switch to proven identities.
    pub unproven_until: Option<Instant>,
}

/// How a node gossips: plaintext (opening sealed datagrams once it holds
/// the ring) until its cluster seals; then sealed, still taking plaintext
/// for a grace; and once its cluster proves identities, with proofs, still
/// taking datagrams without them for a grace.
pub fn sealing(held: &Held, graces: Graces, now: Instant) -> GossipSealing {
    let open = |until: Option<Instant>| until.is_some_and(|until| now < until);
    match &held.keyring {
        Some(ring) if held.sealed => {
            let mut sealing = if open(graces.plaintext_until) {
                GossipSealing {
                    send_sealed: true,
                    ..GossipSealing::plaintext(Some(ring.clone()))
                }
            } else {
                GossipSealing::sealed(ring.clone())
            };
            if held.proven {
                sealing.send_proofs = true;
                sealing.accept_unproven = sealing.accept_plaintext || open(graces.unproven_until);
            }
            sealing
        }
        keyring => GossipSealing::plaintext(keyring.clone()),
    }
}

/// What `shoal cluster info` shows of a node's gossip.
pub fn view(membership: &Membership, generation: u64) -> GossipView {
    let sealing = membership.sealing();
    let stats = membership.stats();
    let mode = if sealing.is_sealed() {
        "sealed"
    } else if sealing.send_sealed {
        "sealing"
    } else {
        "plaintext"
    };
    let identities = if sealing.is_proven() {
        "proven"
    } else if sealing.send_proofs {
        "proving"
    } else {
        "unproven"
    };
    let dropped = [
        ("malformed", stats.dropped_malformed),
        ("other_cluster", stats.dropped_other_cluster),
        ("unsealed", stats.dropped_unsealed),
        ("truncated", stats.dropped_truncated),
        ("unknown_key", stats.dropped_unknown_key),
        ("forged", stats.dropped_forged),
        ("replayed", stats.dropped_replayed),
        ("stale", stats.dropped_stale),
        ("oversize", stats.dropped_oversize),
        ("members_full", stats.dropped_members_full),
        ("facts_unsigned", stats.facts_unsigned),
        ("identities_foreign", stats.identities_foreign),
        ("unproven", stats.dropped_unproven),
        ("identities_unproven", stats.identities_unproven),
    ]
    .into_iter()
    .map(|(reason, count)| (reason.to_string(), count))
    .collect();
    GossipView {
        mode: mode.to_string(),
        identities: identities.to_string(),
        keyring_generation: generation,
        key_ids: sealing
            .keyring
            .as_ref()
            .map(|ring| ring.ids())
            .unwrap_or_default(),
        primary_key: sealing.keyring.as_ref().map(|ring| ring.primary),
        datagrams_received: stats.datagrams_received,
        datagrams_sent: stats.datagrams_sent,
        sealed_received: stats.sealed_received,
        sealed_sent: stats.sealed_sent,
        dropped,
        facts_keys: u64::try_from(membership.facts_keys()).unwrap_or(u64::MAX),
    }
}

fn load(pki_dir: &Path) -> anyhow::Result<Option<Held>> {
    let path = pki_dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => Zeroizing::new(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let held: Held = serde_json::from_str(&text)
        .with_context(|| format!("reading {} (the gossip keyring)", path.display()))?;
    if let Some(ring) = &held.keyring {
        ring.check()
            .map_err(|message| anyhow::anyhow!("{}: {message}", path.display()))?;
    }
    Ok(Some(held))
}

pub fn save(pki_dir: &Path, held: &Held) -> anyhow::Result<()> {
    let text = Zeroizing::new(serde_json::to_string(held).context("encoding the gossip keyring")?);
    write_private(&pki_dir.join(FILE), text.as_bytes())
}

/// The ring sealed for the replicated state.
pub fn seal_record(
    data_key: &DataKey,
    generation: u64,
    keyring: &GossipKeyring,
    now_ms: u64,
) -> anyhow::Result<GossipKeysRecord> {
    let text = Zeroizing::new(serde_json::to_string(keyring)?);
    let sealed = shoal_pki::seal::seal(data_key, DATA_KEY_ID, AAD, text.as_bytes())?;
    Ok(GossipKeysRecord {
        generation,
        sealed: hex::encode(sealed),
        ids: keyring.ids(),
        primary: keyring.primary,
        changed_at_ms: now_ms,
    })
}

/// The ring in a state record, opened with the data key.
pub fn open_record(data_key: &DataKey, record: &GossipKeysRecord) -> anyhow::Result<GossipKeyring> {
    let sealed = hex::decode(&record.sealed).context("the state's gossip keyring is not hex")?;
    let text = Zeroizing::new(
        shoal_pki::seal::open(|id| (id == DATA_KEY_ID).then_some(data_key), AAD, &sealed)
            .context("opening the state's gossip keyring")?,
    );
    let keyring: GossipKeyring =
        serde_json::from_slice(&text).context("reading the state's gossip keyring")?;
    keyring.check().map_err(anyhow::Error::msg)?;
    Ok(keyring)
}

/// The ring as one node hands it to another over mTLS.
pub fn delivery(
    generation: u64,
    keyring: &GossipKeyring,
    sealed: bool,
    proven: bool,
) -> anyhow::Result<GossipKeys> {
    Ok(GossipKeys {
        generation,
        keyring: serde_json::to_string(keyring)?,
        sealed,
        proven,
    })
}

pub fn from_delivery(keys: &GossipKeys) -> anyhow::Result<Held> {
    let keyring: GossipKeyring =
        serde_json::from_str(&keys.keyring).context("reading the delivered gossip keyring")?;
    keyring
        .check()
        .map_err(|message| anyhow::anyhow!("the delivered gossip keyring: {message}"))?;
    Ok(Held {
        generation: keys.generation,
        keyring: Some(keyring),
        sealed: keys.sealed,
        proven: keys.proven,
    })
}

/// The state's ring as a node that holds the data key hands it over
/// (at a join, and to `GET /v1/internal/gossip-keys`); `None` while the
/// state holds none.
pub fn answer<R, L: ReplicatedLog>(shared: &Shared<R, L>) -> anyhow::Result<Option<GossipKeys>> {
    let data_key = shared
        .trust
        .data_key
        .as_ref()
        .context("this node holds no data key; ask a voter")?;
    let (record, sealed, proven) = {
        let state = shared.raft.read();
        (
            state.security.gossip.clone(),
            state.log_version >= SEALED_GOSSIP,
            state.log_version >= PROVEN_IDENTITIES,
        )
    };
    match record {
        Some(record) => Ok(Some(delivery(
            record.generation,
            &open_record(data_key, &record)?,
            sealed,
            proven,
        )?)),
        None => Ok(None),
    }
}

pub fn router<R: Send + Sync + 'static>(shared: Arc<Shared<R>>) -> Router {
    Router::new()
        .route("/v1/internal/gossip-keys", get(keys_route::<R>))
        .with_state(shared)
}

/// `GET /v1/internal/gossip-keys`: for node certificates only (the gate
/// refuses others, and removed nodes).
async fn keys_route<R>(State(shared): State<Arc<Shared<R>>>) -> Result<Json<GossipKeys>, ApiError> {
    if shared.trust.data_key.is_none() {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "this node holds no data key; ask a voter-capable node",
        ));
    }
    match answer(&shared) {
        Ok(Some(keys)) => Ok(Json(keys)),
        Ok(None) => Err(ApiError::unavailable(
            "the cluster has no gossip keyring yet; its leader records one",
        )),
        Err(error) => {
            tracing::warn!(%error, "answering for the gossip keyring");
            Err(ApiError::internal(
                "the gossip keyring cannot be opened here",
            ))
        }
    }
}

/// Follows the state's ring on every node and sets how the node gossips;
/// on the leader, records a ring when the state holds none, records it
/// again in format 7 once every node reads that, and rotates it.
pub async fn run<R: Send + Sync + 'static>(shared: Arc<Shared<R>>, mut held: Held) {
    let mut changes = shared.raft.subscribe();
    let mut graces = Graces::default();
    let mut fetching = Fetching::default();
    loop {
        if shared.is_leader() {
            if let Err(error) = super::gossip_rotation::lead(&shared, &held).await {
                tracing::debug!(%error, "recording the gossip keyring");
            }
        }
        let changed = follow(&shared, &mut held, &mut fetching).await;
        // The cluster seals once this node has applied a format-7 entry,
        // or (a node that lags, or that was away) once it opens a sealed
        // datagram, which only a node that applied one sends.
        let stats = shared.membership.stats();
        let sealed_heard = held.keyring.is_some() && stats.sealed_received > 0;
        let applied = shared.raft.read().log_version;
        let mut switched = false;
        if !held.sealed && (applied >= SEALED_GOSSIP || sealed_heard) {
            held.sealed = true;
            graces.plaintext_until = Some(Instant::now() + PLAINTEXT_GRACE);
            switched = true;
        }
        // The same for proven identities, which only a node that applied a
        // format-12 entry sends; heard, they count only once every node
        // reads them (any keyring holder can send a datagram of version 3,
        // and a node that switched would soon not hear an older one).
        let proven_heard = held.keyring.is_some()
            && stats.proven_received > 0
            && shared.raft.cluster_log_version() >= PROVEN_IDENTITIES;
        if held.sealed && !held.proven && (applied >= PROVEN_IDENTITIES || proven_heard) {
            held.proven = true;
            graces.unproven_until = Some(Instant::now() + PLAINTEXT_GRACE);
            switched = true;
        }
        if switched {
            if let Err(error) = save(shared.trust.dir(), &held) {
                tracing::warn!(%error, "keeping the gossip keyring");
            }
        }
        let want = sealing(&held, graces, Instant::now());
        if want != shared.membership.sealing() {
            match shared.membership.set_sealing(&want) {
                Ok(()) => tracing::info!(
                    sealed = want.send_sealed,
                    plaintext_taken = want.accept_plaintext,
                    proven = want.send_proofs,
                    unproven_taken = want.accept_unproven,
                    generation = held.generation,
                    "gossip sealing changed"
                ),
                Err(error) => tracing::warn!(%error, "changing how gossip is sealed"),
            }
        }
        shared
            .gossip_generation
            .store(held.generation, Ordering::Relaxed);
        if changed {
            // The others learn at once that this node holds the ring (and
            // so reads format 7), and the leader that it may take the next
            // step of a rotation.
            super::cluster::spread_facts(&shared);
        }
        let _ = tokio::time::timeout(FOLLOW_INTERVAL, changes.changed()).await;
    }
}

/// When a node may ask the voters for the ring again.
struct Fetching {
    next_at: Instant,
    backoff: Duration,
    complained: bool,
    /// Sealed datagrams this node could not open, when it last looked.
    unknown_keys: u64,
    /// When the node last looked whether it hears anyone.
    alone_checked_at: Instant,
}

impl Default for Fetching {
    fn default() -> Fetching {
        Fetching {
            next_at: Instant::now(),
            backoff: FETCH_BACKOFF_MIN,
            complained: false,
            unknown_keys: 0,
            alone_checked_at: Instant::now(),
        }
    }
}

/// The first and the longest wait after a fetch that failed.
const FETCH_BACKOFF_MIN: Duration = Duration::from_secs(1);
const FETCH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a node looks whether it hears no other member.
const ALONE_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Takes the state's ring when it is newer than the one held. Asks a voter
/// for it, and whether the cluster seals, when its own state cannot say:
/// it holds no ring but hears sealed datagrams it cannot open, or it hears
/// no other member at all (its state lags, or it was away while the
/// cluster sealed or rotated, and nobody hears it). Whether the held ring
/// or what the node knows of it changed.
async fn follow<R>(shared: &Shared<R>, held: &mut Held, fetching: &mut Fetching) -> bool {
    let record = shared.raft.read().security.gossip.clone();
    let unknown_keys = shared.membership.stats().dropped_unknown_key;
    let unheard = unknown_keys > fetching.unknown_keys;
    fetching.unknown_keys = unknown_keys;
    let from_state = record
        .as_ref()
        .is_some_and(|record| held.keyring.is_none() || record.generation > held.generation);
    let ask = !from_state
        && ((held.keyring.is_none() && unheard) || alone(shared, fetching, Instant::now()));
    if !from_state && !ask {
        return false;
    }
    // The same keys recorded again (the switch to format 7): nothing to
    // take. A key id is never used twice.
    if let (true, Some(record), Some(ring)) = (from_state, &record, &held.keyring) {
        if record.ids == ring.ids() && record.primary == ring.primary {
            held.generation = record.generation;
            return true;
        }
    }
    let taken = match (&shared.trust.data_key, &record) {
        (Some(key), Some(record)) if from_state => open_record(key, record).map(|ring| Held {
            generation: record.generation,
            keyring: Some(ring),
            sealed: held.sealed,
            proven: held.proven,
        }),
        _ if Instant::now() < fetching.next_at => return false,
        _ => {
            let generation = record.as_ref().map_or(0, |record| record.generation);
            fetch(shared, generation.max(held.generation)).await
        }
    };
    let taken = match taken {
        Ok(taken) => taken,
        Err(error) => {
            fetching.next_at = Instant::now() + fetching.backoff;
            fetching.backoff = (fetching.backoff * 2).min(FETCH_BACKOFF_MAX);
            if fetching.complained {
                tracing::debug!(%error, "taking the cluster's gossip keyring");
            } else {
                fetching.complained = true;
                tracing::warn!(%error, "taking the cluster's gossip keyring");
            }
            return false;
        }
    };
    let news = held.keyring.is_none()
        || taken.generation > held.generation
        || (taken.sealed && !held.sealed)
        || (taken.proven && !held.proven);
    if !news {
        // Asked because nobody is heard, and nothing new: ask again later.
        fetching.next_at = Instant::now() + FETCH_BACKOFF_MAX;
        return false;
    }
    *fetching = Fetching {
        unknown_keys,
        alone_checked_at: fetching.alone_checked_at,
        ..Fetching::default()
    };
    held.generation = taken.generation;
    held.keyring = taken.keyring;
    held.sealed |= taken.sealed;
    held.proven |= taken.proven;
    if let Err(error) = save(shared.trust.dir(), held) {
        tracing::warn!(%error, "keeping the gossip keyring");
    }
    tracing::info!(
        generation = held.generation,
        ids = ?held.keyring.as_ref().map(GossipKeyring::ids),
        "took the cluster's gossip keyring"
    );
    true
}

/// Whether this node hears no other member while the consensus knows
/// others; looked at most every [`ALONE_CHECK_EVERY`] (it lists every
/// member), and only once a fetch may be tried.
fn alone<R>(shared: &Shared<R>, fetching: &mut Fetching, now: Instant) -> bool {
    if now < fetching.next_at || now < fetching.alone_checked_at + ALONE_CHECK_EVERY {
        return false;
    }
    fetching.alone_checked_at = now;
    let own = shared.node_id();
    shared.raft.status().nodes.keys().any(|id| *id != own)
        && !shared.membership.members().iter().any(|member| {
            member.status == MemberStatus::Alive && member.facts.name != shared.config.name
        })
}

/// The ring of `generation` or newer, from the leader or another voter.
async fn fetch<R>(shared: &Shared<R>, generation: u64) -> anyhow::Result<Held> {
    let voters = super::voter_addrs(&shared.raft, shared.node_id());
    let mut last_error = "no voter is known".to_string();
    for addr in voters.iter().take(VOTERS_ASKED_MAX) {
        let answer = match Client::new(addr, &shared.trust.client_tls, None) {
            Ok(client) => client
                .gossip_keys()
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match answer.and_then(|keys| from_delivery(&keys).map_err(|error| error.to_string())) {
            Ok(held) if held.generation >= generation => return Ok(held),
            Ok(held) => last_error = format!("{addr} holds generation {} still", held.generation),
            Err(error) => last_error = format!("{addr}: {error}"),
        }
    }
    anyhow::bail!("fetching gossip keyring {generation}: {last_error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_seals_only_once_it_holds_the_ring_and_its_cluster_seals() {
        let ring = GossipKeyring::generate(1, 0);
        let now = Instant::now();
        let no_grace = Graces::default();
        let none = Held::default();
        assert_eq!(
            sealing(&none, no_grace, now),
            GossipSealing::plaintext(None)
        );
        assert_eq!(none.log_version(), SEALED_GOSSIP - 1);
        // A cluster that seals, and a node that has no ring yet: it can
        // only speak plaintext (nobody hears it until it fetches the ring).
        let sealed_without = Held {
            sealed: true,
            ..Held::default()
        };
        assert_eq!(
            sealing(&sealed_without, no_grace, now),
            GossipSealing::plaintext(None)
        );
        let keyed = Held {
            generation: 1,
            keyring: Some(ring.clone()),
            sealed: false,
            proven: false,
        };
        assert_eq!(
            sealing(&keyed, no_grace, now),
            GossipSealing::plaintext(Some(ring.clone()))
        );
        assert_eq!(keyed.log_version(), shoal_state::LOG_VERSION);
        let sealed = Held {
            sealed: true,
            ..keyed
        };
        let grace = sealing(
            &sealed,
            Graces {
                plaintext_until: Some(now + PLAINTEXT_GRACE),
                ..no_grace
            },
            now,
        );
        assert!(grace.send_sealed && grace.accept_plaintext && !grace.send_proofs);
        assert_eq!(
            sealing(
                &sealed,
                Graces {
                    plaintext_until: Some(now),
                    ..no_grace
                },
                now + Duration::from_millis(1)
            ),
            GossipSealing::sealed(ring.clone())
        );
        assert_eq!(
            sealing(&sealed, no_grace, now),
            GossipSealing::sealed(ring.clone())
        );
    }

    #[test]
    fn a_node_proves_its_identities_only_once_its_cluster_seals_and_proves() {
        let ring = GossipKeyring::generate(1, 0);
        let now = Instant::now();
        let later = now + PLAINTEXT_GRACE;
        // A proving cluster that does not seal yet cannot be: proofs go in
        // sealed datagrams only.
        let not_sealed = Held {
            generation: 1,
            keyring: Some(ring.clone()),
            sealed: false,
            proven: true,
        };
        assert_eq!(
            sealing(&not_sealed, Graces::default(), now),
            GossipSealing::plaintext(Some(ring.clone()))
        );
        let proven = Held {
            sealed: true,
            ..not_sealed
        };
        assert_eq!(
            sealing(&proven, Graces::default(), now),
            GossipSealing::proven(ring.clone())
        );
        // Both switches at once (a new cluster): both graces.
        let both = sealing(
            &proven,
            Graces {
                plaintext_until: Some(later),
                unproven_until: Some(later),
            },
            now,
        );
        assert!(both.send_proofs && both.accept_unproven && both.accept_plaintext);
        // Taking plaintext means taking what is not proven.
        let plaintext_only = sealing(
            &proven,
            Graces {
                plaintext_until: Some(later),
                unproven_until: None,
            },
            now,
        );
        assert!(plaintext_only.accept_plaintext && plaintext_only.accept_unproven);
        let unproven_grace = sealing(
            &proven,
            Graces {
                plaintext_until: None,
                unproven_until: Some(later),
            },
            now,
        );
        assert_eq!(
            unproven_grace,
            GossipSealing {
                send_proofs: true,
                ..GossipSealing::sealed(ring.clone())
            }
        );
        assert_eq!(
            sealing(
                &proven,
                Graces {
                    plaintext_until: None,
                    unproven_until: Some(now),
                },
                now + Duration::from_millis(1)
            ),
            GossipSealing::proven(ring)
        );
    }

    #[test]
    fn the_ring_is_sealed_in_the_state_and_kept_in_a_private_file() {
        let key = DataKey::generate();
        let ring = GossipKeyring::generate(3, 0);
        let record = seal_record(&key, 4, &ring, 9).expect("seal");
        assert_eq!(
            (record.generation, record.ids.clone(), record.primary),
            (4, vec![3], 3)
        );
        let secret = &ring.keys[0].key;
        assert!(!record.sealed.contains(secret.as_str()));
        assert_eq!(open_record(&key, &record).expect("open"), ring);
        assert!(open_record(&DataKey::generate(), &record).is_err());

        let dir = tempfile::tempdir().expect("dir");
        assert!(load(dir.path()).expect("no file").is_none());
        let held = Held {
            generation: 4,
            keyring: Some(ring.clone()),
            sealed: true,
            proven: false,
        };
        save(dir.path(), &held).expect("save");
        let mode = std::fs::metadata(dir.path().join(FILE))
            .map(|meta| std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777)
            .expect("file");
        assert_eq!(mode, 0o600);
        let back = load(dir.path()).expect("load").expect("held");
        assert_eq!(
            (back.generation, back.keyring, back.sealed),
            (4, Some(ring.clone()), true)
        );

        // A voter takes the state's ring when it is newer than its file's.
        let mut state = shoal_state::State::default();
        let newer = GossipKeyring::generate(5, 0);
        state.security.gossip = Some(seal_record(&key, 6, &newer, 9).expect("seal"));
        let at_start = Held::at_start(dir.path(), &state, Some(&key));
        assert_eq!((at_start.generation, at_start.keyring), (6, Some(newer)));
        assert!(at_start.sealed, "the file said the cluster seals");
        // A worker keeps its file's.
        let worker = Held::at_start(dir.path(), &state, None);
        assert_eq!((worker.generation, worker.keyring), (4, Some(ring)));

        // Delivered and read back.
        let keys = delivery(2, &GossipKeyring::generate(1, 0), true, true).expect("delivery");
        assert!(!format!("{keys:?}").contains(&keys.keyring));
        let taken = from_delivery(&keys).expect("taken");
        assert_eq!(
            (taken.generation, taken.sealed, taken.proven),
            (2, true, true)
        );
        // What a voter of an older release sends has no `proven`.
        let old: GossipKeys = serde_json::from_str(
            &serde_json::json!({"generation": 2, "keyring": keys.keyring, "sealed": true})
                .to_string(),
        )
        .expect("old delivery");
        assert!(!from_delivery(&old).expect("taken").proven);
        let bent = GossipKeys {
            keyring: "{\"keys\":[],\"primary\":1}".into(),
            ..keys
        };
        assert!(from_delivery(&bent).is_err());
    }
}

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
use shoal_cluster::membership::{GossipKeyring, GossipSealing, Membership};
use shoal_pki::seal::DataKey;
use shoal_state::format::SEALED_GOSSIP;
use shoal_state::security::GossipKeysRecord;
use shoal_state::Command;
use zeroize::Zeroizing;

use super::trust::{write_private, DATA_KEY_ID};
use super::Shared;
use crate::clock::now_ms;

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

/// The ring a node holds, and whether its cluster seals.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Held {
    /// The generation of the state's record the ring came from (0: none).
    pub generation: u64,
    pub keyring: Option<GossipKeyring>,
    /// The cluster seals its gossip (learnt from the state or at join).
    #[serde(default)]
    pub sealed: bool,
}

impl Held {
    /// What the node holds when it starts: its file, or (a voter) the
    /// state's ring when that is newer; sealed when its file says so or its
    /// state holds a format-7 entry.
    pub fn at_start(
        pki_dir: &Path,
        state: &shoal_state::State,
        data_key: Option<&DataKey>,
    ) -> anyhow::Result<Held> {
        let mut held = load(pki_dir)?.unwrap_or_default();
        if let (Some(key), Some(record)) = (data_key, &state.security.gossip) {
            if record.generation > held.generation || held.keyring.is_none() {
                held.keyring = Some(open_record(key, record)?);
                held.generation = record.generation;
            }
        }
        held.sealed |= state.log_version >= SEALED_GOSSIP;
        Ok(held)
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

/// How a node gossips: plaintext (opening sealed datagrams once it holds
/// the ring) until its cluster seals; then sealed, still taking plaintext
/// until `grace_until`.
pub fn sealing(held: &Held, grace_until: Option<Instant>, now: Instant) -> GossipSealing {
    match &held.keyring {
        Some(ring) if held.sealed => {
            if grace_until.is_some_and(|until| now < until) {
                GossipSealing {
                    keyring: Some(ring.clone()),
                    send_sealed: true,
                    accept_plaintext: true,
                }
            } else {
                GossipSealing::sealed(ring.clone())
            }
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
    ]
    .into_iter()
    .map(|(reason, count)| (reason.to_string(), count))
    .collect();
    GossipView {
        mode: mode.to_string(),
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
) -> anyhow::Result<GossipKeys> {
    Ok(GossipKeys {
        generation,
        keyring: serde_json::to_string(keyring)?,
        sealed,
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
    let (record, sealed) = {
        let state = shared.raft.read();
        (
            state.security.gossip.clone(),
            state.log_version >= SEALED_GOSSIP,
        )
    };
    match record {
        Some(record) => Ok(Some(delivery(
            record.generation,
            &open_record(data_key, &record)?,
            sealed,
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
/// on the leader, records a ring when the state holds none, and records
/// it again in format 7 once every node reads that.
pub async fn run<R: Send + Sync + 'static>(shared: Arc<Shared<R>>, mut held: Held) {
    let mut changes = shared.raft.subscribe();
    let mut grace_until = None;
    let mut complained = false;
    loop {
        if shared.is_leader() {
            if let Err(error) = lead(&shared).await {
                tracing::debug!(%error, "recording the gossip keyring");
            }
        }
        let mut changed = false;
        match follow(&shared, &mut held).await {
            Ok(took) => {
                complained = false;
                changed = took;
            }
            Err(error) if !complained => {
                complained = true;
                tracing::warn!(%error, "following the cluster's gossip keyring");
            }
            Err(error) => tracing::debug!(%error, "following the cluster's gossip keyring"),
        }
        let applied = shared.raft.read().log_version;
        if !held.sealed && applied >= SEALED_GOSSIP {
            held.sealed = true;
            grace_until = Some(Instant::now() + PLAINTEXT_GRACE);
            if let Err(error) = save(shared.trust.dir(), &held) {
                tracing::warn!(%error, "keeping the gossip keyring");
            }
        }
        let want = sealing(&held, grace_until, Instant::now());
        if want != shared.membership.sealing() {
            match shared.membership.set_sealing(&want) {
                Ok(()) => tracing::info!(
                    sealed = want.send_sealed,
                    plaintext_taken = want.accept_plaintext,
                    generation = held.generation,
                    "gossip sealing changed"
                ),
                Err(error) => tracing::warn!(%error, "changing how gossip is sealed"),
            }
        }
        if changed {
            // The others learn at once that this node reads format 7.
            super::cluster::spread_facts(&shared);
        }
        shared
            .gossip_generation
            .store(held.generation, Ordering::Relaxed);
        let _ = tokio::time::timeout(FOLLOW_INTERVAL, changes.changed()).await;
    }
}

/// Takes the state's ring when it is newer than the one held; whether
/// the held ring changed.
async fn follow<R>(shared: &Shared<R>, held: &mut Held) -> anyhow::Result<bool> {
    let Some(record) = shared.raft.read().security.gossip.clone() else {
        return Ok(false);
    };
    if held.keyring.is_some() && record.generation <= held.generation {
        return Ok(false);
    }
    let fetched = match &shared.trust.data_key {
        Some(key) => Held {
            generation: record.generation,
            keyring: Some(open_record(key, &record)?),
            sealed: held.sealed,
        },
        None => fetch(shared, record.generation).await?,
    };
    held.generation = fetched.generation;
    held.keyring = fetched.keyring;
    held.sealed |= fetched.sealed;
    save(shared.trust.dir(), held)?;
    tracing::info!(
        generation = held.generation,
        ids = ?record.ids,
        "took the cluster's gossip keyring"
    );
    Ok(true)
}

/// The ring of `generation` or newer, from the leader or another voter.
async fn fetch<R>(shared: &Shared<R>, generation: u64) -> anyhow::Result<Held> {
    let status = shared.raft.status();
    let mut voters: Vec<String> = status
        .voters
        .iter()
        .filter(|id| **id != shared.node_id())
        .filter_map(|id| status.nodes.get(id).map(|node| node.api_addr.clone()))
        .collect();
    if let Some(leader) = status.leader.and_then(|id| status.nodes.get(&id)) {
        voters.retain(|addr| addr != &leader.api_addr);
        voters.insert(0, leader.api_addr.clone());
    }
    let mut last_error = "no voter is known".to_string();
    for addr in voters.iter().take(VOTERS_ASKED_MAX) {
        let client = Client::new(addr, &shared.trust.client_tls, None)?;
        match client.gossip_keys().await {
            Ok(keys) => {
                let held = from_delivery(&keys)?;
                if held.generation >= generation {
                    return Ok(held);
                }
                last_error = format!("{addr} holds generation {} still", held.generation);
            }
            Err(error) => last_error = format!("{addr}: {error}"),
        }
    }
    anyhow::bail!("fetching gossip keyring {generation}: {last_error}")
}

/// The leader's part: a ring when the state holds none (a cluster formed
/// before shoal 0.7), and the ring again once the cluster's format is 7,
/// so that an entry of that format is applied everywhere even when nothing
/// else is written.
async fn lead<R>(shared: &Shared<R>) -> anyhow::Result<()> {
    let Some(data_key) = &shared.trust.data_key else {
        return Ok(());
    };
    let (record, applied) = {
        let state = shared.raft.read();
        (state.security.gossip.clone(), state.log_version)
    };
    let keys = match record {
        None => seal_record(data_key, 1, &GossipKeyring::generate(1), now_ms())?,
        Some(record)
            if applied < SEALED_GOSSIP && shared.raft.cluster_log_version() >= SEALED_GOSSIP =>
        {
            let ring = open_record(data_key, &record)?;
            seal_record(data_key, record.generation + 1, &ring, now_ms())?
        }
        Some(_) => return Ok(()),
    };
    let generation = keys.generation;
    shared
        .raft
        .propose(now_ms(), Command::SetGossipKeys { keys })
        .await
        .context("recording the gossip keyring")?;
    tracing::info!(generation, "recorded the cluster's gossip keyring");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_seals_only_once_it_holds_the_ring_and_its_cluster_seals() {
        let ring = GossipKeyring::generate(1);
        let now = Instant::now();
        let none = Held::default();
        assert_eq!(sealing(&none, None, now), GossipSealing::plaintext(None));
        assert_eq!(none.log_version(), SEALED_GOSSIP - 1);
        // A cluster that seals, and a node that has no ring yet: it can
        // only speak plaintext (nobody hears it until it fetches the ring).
        let sealed_without = Held {
            sealed: true,
            ..Held::default()
        };
        assert_eq!(
            sealing(&sealed_without, None, now),
            GossipSealing::plaintext(None)
        );
        let keyed = Held {
            generation: 1,
            keyring: Some(ring.clone()),
            sealed: false,
        };
        assert_eq!(
            sealing(&keyed, None, now),
            GossipSealing::plaintext(Some(ring.clone()))
        );
        assert_eq!(keyed.log_version(), shoal_state::LOG_VERSION);
        let sealed = Held {
            sealed: true,
            ..keyed
        };
        let grace = sealing(&sealed, Some(now + PLAINTEXT_GRACE), now);
        assert!(grace.send_sealed && grace.accept_plaintext);
        assert_eq!(
            sealing(&sealed, Some(now), now + Duration::from_millis(1)),
            GossipSealing::sealed(ring.clone())
        );
        assert_eq!(sealing(&sealed, None, now), GossipSealing::sealed(ring));
    }

    #[test]
    fn the_ring_is_sealed_in_the_state_and_kept_in_a_private_file() {
        let key = DataKey::generate();
        let ring = GossipKeyring::generate(3);
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
        let newer = GossipKeyring::generate(5);
        state.security.gossip = Some(seal_record(&key, 6, &newer, 9).expect("seal"));
        let at_start = Held::at_start(dir.path(), &state, Some(&key)).expect("start");
        assert_eq!((at_start.generation, at_start.keyring), (6, Some(newer)));
        assert!(at_start.sealed, "the file said the cluster seals");
        // A worker keeps its file's.
        let worker = Held::at_start(dir.path(), &state, None).expect("start");
        assert_eq!((worker.generation, worker.keyring), (4, Some(ring)));

        // Delivered and read back.
        let keys = delivery(2, &GossipKeyring::generate(1), true).expect("delivery");
        assert!(!format!("{keys:?}").contains(&keys.keyring));
        let taken = from_delivery(&keys).expect("taken");
        assert_eq!((taken.generation, taken.sealed), (2, true));
        let bent = GossipKeys {
            keyring: "{\"keys\":[],\"primary\":1}".into(),
            ..keys
        };
        assert!(from_delivery(&bent).is_err());
    }
}

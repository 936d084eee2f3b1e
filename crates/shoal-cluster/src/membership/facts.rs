//! Node facts spread as foca custom broadcasts.
//!
//! Each node broadcasts its own [`NodeFacts`] with a version `(boot, seq)`:
//! `boot` is the node's identity boot id (a restart or a rejoin beats any
//! older version), `seq` counts re-broadcasts within one boot. Every member
//! keeps the highest version per node name and passes on only what was news
//! to it, so foca stops disseminating stale copies.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::identity::NodeId;
use super::{NodeFacts, FACTS_MAX_BYTES, MEMBERS_MAX, NAME_MAX_BYTES};

/// What travels in one broadcast.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FactsMsg {
    pub(crate) boot: u64,
    pub(crate) seq: u64,
    /// The node left the cluster on purpose (set in its last broadcast).
    pub(crate) left: bool,
    pub(crate) facts: NodeFacts,
}

/// The wire form of a broadcast. The first part is shoal 0.1's positional
/// postcard layout, which every release reads (and 0.1 ignores the bytes
/// after it); newer facts follow as one length-prefixed JSON object, whose
/// unknown fields a reader ignores, so facts can grow without breaking
/// older members.
#[derive(Serialize, Deserialize)]
struct WireFirst {
    boot: u64,
    seq: u64,
    left: bool,
    name: String,
    api_addr: String,
    raft_id: u64,
    os: String,
    arch: String,
    cpus: u32,
    memory_total_bytes: u64,
    memory_used_bytes: u64,
    labels: BTreeMap<String, String>,
    started_at_ms: u64,
}

/// Facts added after shoal 0.1, in the JSON part.
#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct WireMore {
    release: String,
    log_version: u32,
    /// From shoal 0.7 on.
    gossip_keys: u64,
}

impl FactsMsg {
    pub(crate) fn version(&self) -> (u64, u64) {
        (self.boot, self.seq)
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let facts = self.facts.clone();
        let first = WireFirst {
            boot: self.boot,
            seq: self.seq,
            left: self.left,
            name: facts.name,
            api_addr: facts.api_addr,
            raft_id: facts.raft_id,
            os: facts.os,
            arch: facts.arch,
            cpus: facts.cpus,
            memory_total_bytes: facts.memory_total_bytes,
            memory_used_bytes: facts.memory_used_bytes,
            labels: facts.labels,
            started_at_ms: facts.started_at_ms,
        };
        let more = serde_json::to_vec(&WireMore {
            release: facts.release,
            log_version: facts.log_version,
            gossip_keys: facts.gossip_keys,
        })
        .expect("facts serialize: strings and numbers");
        let mut bytes = postcard::to_allocvec(&first)?;
        bytes.extend(postcard::to_allocvec(&more)?);
        Ok(bytes)
    }

    fn decode(data: &[u8]) -> Result<FactsMsg, FactsError> {
        if data.len() > FACTS_MAX_BYTES {
            return Err(FactsError::TooLarge(data.len()));
        }
        let (first, rest): (WireFirst, &[u8]) =
            postcard::take_from_bytes(data).map_err(FactsError::Decode)?;
        let more = if rest.is_empty() {
            WireMore::default()
        } else {
            let (json, _): (Vec<u8>, &[u8]) =
                postcard::take_from_bytes(rest).map_err(FactsError::Decode)?;
            serde_json::from_slice(&json).map_err(|error| FactsError::Json(error.to_string()))?
        };
        let msg = FactsMsg {
            boot: first.boot,
            seq: first.seq,
            left: first.left,
            facts: NodeFacts {
                name: first.name,
                api_addr: first.api_addr,
                raft_id: first.raft_id,
                os: first.os,
                arch: first.arch,
                cpus: first.cpus,
                memory_total_bytes: first.memory_total_bytes,
                memory_used_bytes: first.memory_used_bytes,
                labels: first.labels,
                started_at_ms: first.started_at_ms,
                release: more.release,
                log_version: more.log_version,
                gossip_keys: more.gossip_keys,
            },
        };
        let name = &msg.facts.name;
        if name.is_empty() || name.len() > NAME_MAX_BYTES {
            return Err(FactsError::BadName(name.len()));
        }
        Ok(msg)
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FactsError {
    #[error("node facts broadcast of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("undecodable node facts broadcast: {0}")]
    Decode(postcard::Error),
    #[error("undecodable node facts broadcast: {0}")]
    Json(String),
    #[error("node facts broadcast with a node name of {0} bytes")]
    BadName(usize),
}

/// The invalidation key: one live broadcast per node name, the newest.
pub(crate) struct FactsKey {
    name: String,
    version: (u64, u64),
}

impl foca::Invalidates for FactsKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.name == other.name && self.version >= other.version
    }
}

/// The newest facts known for one node.
#[derive(Debug, Clone)]
pub(crate) struct FactsEntry {
    pub(crate) msg: FactsMsg,
    /// Last time the node was in foca's member list (or the entry changed);
    /// entries of nodes foca forgot are dropped some time after.
    pub(crate) seen: Instant,
}

/// Facts by node name, shared by the broadcast handler (inside foca) and
/// the driver that builds the member list.
#[derive(Debug, Default)]
pub(crate) struct FactsTable {
    pub(crate) entries: HashMap<String, FactsEntry>,
    /// Bumped on every change.
    pub(crate) generation: u64,
    /// Broadcasts refused because the table was full.
    pub(crate) refused_full: u64,
}

impl FactsTable {
    /// Keeps `msg` if it is newer than what is known; true if it was.
    fn offer(&mut self, msg: FactsMsg, now: Instant) -> bool {
        if let Some(known) = self.entries.get_mut(&msg.facts.name) {
            if msg.version() <= known.msg.version() {
                return false;
            }
            known.msg = msg;
            known.seen = now;
        } else {
            if self.entries.len() >= MEMBERS_MAX {
                self.refused_full = self.refused_full.saturating_add(1);
                return false;
            }
            self.entries
                .insert(msg.facts.name.clone(), FactsEntry { msg, seen: now });
        }
        self.generation = self.generation.wrapping_add(1);
        true
    }

    /// Drops the facts of nodes not seen in the member list since `before`,
    /// except `keep` (this node).
    pub(crate) fn evict_unseen(&mut self, before: Instant, keep: &str) {
        let len = self.entries.len();
        self.entries
            .retain(|name, entry| name == keep || entry.seen >= before);
        if self.entries.len() != len {
            self.generation = self.generation.wrapping_add(1);
        }
    }
}

pub(crate) type SharedFacts = Arc<Mutex<FactsTable>>;

pub(crate) fn lock(table: &SharedFacts) -> MutexGuard<'_, FactsTable> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// foca's view of the facts table.
pub(crate) struct FactsHandler {
    pub(crate) table: SharedFacts,
}

impl foca::BroadcastHandler<NodeId> for FactsHandler {
    type Key = FactsKey;
    type Error = FactsError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<FactsKey>, FactsError> {
        let msg = FactsMsg::decode(data)?;
        let key = FactsKey {
            name: msg.facts.name.clone(),
            version: msg.version(),
        };
        let news = lock(&self.table).offer(msg, Instant::now());
        Ok(news.then_some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::{BroadcastHandler, Invalidates};

    fn msg(name: &str, boot: u64, seq: u64, cpus: u32) -> FactsMsg {
        FactsMsg {
            boot,
            seq,
            left: false,
            facts: NodeFacts {
                name: name.into(),
                cpus,
                ..NodeFacts::default()
            },
        }
    }

    #[test]
    fn keeps_the_newest_version_per_name() {
        let table = SharedFacts::default();
        let mut handler = FactsHandler {
            table: table.clone(),
        };
        let mut offer = |m: FactsMsg| {
            handler
                .receive_item(&m.encode().unwrap(), None)
                .unwrap()
                .is_some()
        };
        assert!(offer(msg("a", 5, 1, 1)));
        assert!(!offer(msg("a", 5, 1, 1)), "a repeat is not news");
        assert!(!offer(msg("a", 4, 9, 2)), "an older boot loses");
        assert!(offer(msg("a", 5, 2, 3)));
        assert!(offer(msg("a", 6, 0, 4)), "a new boot wins");
        assert!(offer(msg("b", 1, 0, 1)));
        let table = lock(&table);
        assert_eq!(table.entries["a"].msg.facts.cpus, 4);
        assert_eq!(table.entries.len(), 2);
    }

    #[test]
    fn reads_the_first_layout_and_the_first_layout_reads_it() {
        let mut new = msg("a", 3, 4, 2);
        new.facts.release = "0.2.0".into();
        new.facts.log_version = 2;
        let bytes = new.encode().unwrap();
        // What shoal 0.1 reads: the first part, ignoring the rest.
        let first: WireFirst = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((first.name.as_str(), first.boot, first.cpus), ("a", 3, 2));
        // What shoal 0.1 sent: the first part alone.
        let old = postcard::to_allocvec(&first).unwrap();
        let read = FactsMsg::decode(&old).unwrap();
        assert_eq!(read.facts.release, "");
        assert_eq!(
            read.facts.log_version_read(),
            shoal_state::LOG_VERSION_FIRST
        );
        assert_eq!(FactsMsg::decode(&bytes).unwrap(), new);
        // A newer node's facts: fields this build does not know are ignored.
        let mut newer = old.clone();
        let json = br#"{"release":"9.0.0","log_version":9,"gpus":4}"#.to_vec();
        newer.extend(postcard::to_allocvec(&json).unwrap());
        let read = FactsMsg::decode(&newer).unwrap();
        assert_eq!(
            (read.facts.release.as_str(), read.facts.log_version),
            ("9.0.0", 9)
        );
    }

    #[test]
    fn rejects_garbage() {
        let mut handler = FactsHandler {
            table: SharedFacts::default(),
        };
        assert!(handler.receive_item(b"\xff\xff\xff", None).is_err());
        assert!(handler.receive_item(&[0u8; 4096], None).is_err());
        assert!(handler
            .receive_item(&msg("", 1, 1, 1).encode().unwrap(), None)
            .is_err());
    }

    #[test]
    fn newer_key_invalidates_older_of_same_name_only() {
        let key = |name: &str, version| FactsKey {
            name: name.into(),
            version,
        };
        assert!(key("a", (1, 2)).invalidates(&key("a", (1, 1))));
        assert!(!key("a", (1, 1)).invalidates(&key("a", (1, 2))));
        assert!(!key("a", (9, 9)).invalidates(&key("b", (1, 1))));
    }
}

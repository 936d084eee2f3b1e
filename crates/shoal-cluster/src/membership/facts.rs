//! Node facts spread as foca custom broadcasts.
//!
//! Each node broadcasts its own [`NodeFacts`] with a version `(boot, seq)`:
//! `boot` is the node's identity boot id (a restart or a rejoin beats any
//! older version), `seq` counts re-broadcasts within one boot. Every member
//! keeps the highest version per node name and passes on only what was news
//! to it, so foca stops disseminating stale copies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::identity::NodeId;
use super::{NodeFacts, FACTS_MAX_BYTES, MEMBERS_MAX, NAME_MAX_BYTES};

/// What travels in one broadcast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FactsMsg {
    pub(crate) boot: u64,
    pub(crate) seq: u64,
    /// The node left the cluster on purpose (set in its last broadcast).
    pub(crate) left: bool,
    pub(crate) facts: NodeFacts,
}

impl FactsMsg {
    pub(crate) fn version(&self) -> (u64, u64) {
        (self.boot, self.seq)
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    fn decode(data: &[u8]) -> Result<FactsMsg, FactsError> {
        if data.len() > FACTS_MAX_BYTES {
            return Err(FactsError::TooLarge(data.len()));
        }
        let msg: FactsMsg = postcard::from_bytes(data).map_err(FactsError::Decode)?;
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

//! Node facts spread as foca custom broadcasts.
//!
//! Each node broadcasts its own [`NodeFacts`] with a version `(boot, seq)`:
//! `boot` is the node's identity boot id (a restart or a rejoin beats any
//! older version), `seq` counts re-broadcasts within one boot. Every member
//! keeps the highest version per node name and passes on only what was news
//! to it, so foca stops disseminating stale copies.
//!
//! From shoal 0.9 a broadcast also carries the node's gossip address and a
//! signature by the node's facts key (see `signing`). The facts of a node
//! whose key the state holds are taken only when that key signed them;
//! other facts are taken as before (a node that has not recorded its key
//! yet, a release before 0.9); when a node's key arrives, what is known of
//! it that the key did not sign is dropped, so facts made up by another
//! member (however high their version) do not outlive it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::identity::NodeId;
use super::signing::{self, FactsKeys, FactsSigner, FACTS_SIGNATURE_BYTES};
use super::{NodeFacts, FACTS_MAX_BYTES, MEMBERS_MAX, NAME_MAX_BYTES};

/// Bytes a signature adds to a broadcast (its length, then itself).
pub(crate) const SIGNATURE_WIRE_BYTES: usize = 1 + FACTS_SIGNATURE_BYTES;

/// What travels in one broadcast.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FactsMsg {
    pub(crate) boot: u64,
    pub(crate) seq: u64,
    /// The node left the cluster on purpose (set in its last broadcast).
    pub(crate) left: bool,
    pub(crate) facts: NodeFacts,
    /// The node's gossip address (shoal 0.9 on): with a signature, only
    /// the identity at this address speaks for the node.
    pub(crate) addr: Option<SocketAddr>,
}

/// The signed bytes of a broadcast and their signature.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Proof {
    body: Vec<u8>,
    signature: [u8; FACTS_SIGNATURE_BYTES],
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
    /// From shoal 0.9 on.
    #[serde(skip_serializing_if = "String::is_empty")]
    gossip_addr: String,
    /// From shoal 0.11 on.
    #[serde(skip_serializing_if = "is_zero")]
    ca_generation: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

impl FactsMsg {
    pub(crate) fn version(&self) -> (u64, u64) {
        (self.boot, self.seq)
    }

    /// The broadcast, signed when there is a signer: the body every
    /// release reads, then the signature of (cluster id, body).
    pub(crate) fn encode_signed(
        &self,
        signer: Option<&FactsSigner>,
        cluster_id: &str,
    ) -> Result<Vec<u8>, postcard::Error> {
        let mut bytes = self.encode()?;
        if let Some(signer) = signer {
            let signature = signer.sign(cluster_id, &bytes);
            bytes.extend(postcard::to_allocvec(&signature.to_vec())?);
        }
        Ok(bytes)
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
            gossip_addr: self.addr.map(|addr| addr.to_string()).unwrap_or_default(),
            ca_generation: facts.ca_generation,
        })
        .expect("facts serialize: strings and numbers");
        let mut bytes = postcard::to_allocvec(&first)?;
        bytes.extend(postcard::to_allocvec(&more)?);
        Ok(bytes)
    }

    /// The message, and its proof when it is signed. What follows a
    /// signature is ignored, as a newer release may add to it.
    fn decode(data: &[u8]) -> Result<(FactsMsg, Option<Proof>), FactsError> {
        if data.len() > FACTS_MAX_BYTES {
            return Err(FactsError::TooLarge(data.len()));
        }
        let (first, rest): (WireFirst, &[u8]) =
            postcard::take_from_bytes(data).map_err(FactsError::Decode)?;
        let mut proof = None;
        let more = if rest.is_empty() {
            WireMore::default()
        } else {
            let (json, after): (Vec<u8>, &[u8]) =
                postcard::take_from_bytes(rest).map_err(FactsError::Decode)?;
            if let Ok((signature, _)) = postcard::take_from_bytes::<Vec<u8>>(after) {
                if let Ok(signature) = <[u8; FACTS_SIGNATURE_BYTES]>::try_from(signature) {
                    let body = data.get(..data.len() - after.len()).unwrap_or_default();
                    proof = Some(Proof {
                        body: body.to_vec(),
                        signature,
                    });
                }
            }
            serde_json::from_slice(&json).map_err(|error| FactsError::Json(error.to_string()))?
        };
        let addr = more.gossip_addr.parse().ok();
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
                ca_generation: more.ca_generation,
            },
            addr,
        };
        let name = &msg.facts.name;
        if name.is_empty() || name.len() > NAME_MAX_BYTES {
            return Err(FactsError::BadName(name.len()));
        }
        Ok((msg, proof))
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
    /// Signed by the key the state holds for the node.
    pub(crate) verified: bool,
    /// The signature it came with, checked again when keys change.
    proof: Option<Proof>,
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
    /// Broadcasts refused because the node's key did not sign them.
    pub(crate) refused_unsigned: u64,
    /// The keys facts are checked with, by node name.
    keys: FactsKeys,
    /// The nodes whose verified facts (not `left`) name each gossip
    /// address; made again whenever an entry changes.
    owners: HashMap<SocketAddr, Vec<String>>,
    /// What signatures are bound to.
    cluster_id: String,
}

impl FactsTable {
    pub(crate) fn new(cluster_id: &str) -> FactsTable {
        FactsTable {
            cluster_id: cluster_id.to_owned(),
            ..FactsTable::default()
        }
    }

    /// Whether `proof` is `name`'s key's signature: `None` when no key is
    /// known for `name`.
    fn check(&self, name: &str, proof: Option<&Proof>) -> Option<bool> {
        let key = self.keys.get(name)?;
        Some(proof.is_some_and(|proof| {
            signing::verify(key, &self.cluster_id, &proof.body, &proof.signature)
        }))
    }

    /// Keeps `msg` if it is newer than what is known; true if it was. The
    /// facts of a node whose key is known are refused unless that key
    /// signed them (and when its key arrives, what is known of it unsigned
    /// goes: `set_keys`).
    fn offer(&mut self, msg: FactsMsg, proof: Option<Proof>, now: Instant) -> bool {
        // Copies of what is known arrive several times each: they are not
        // news, and their signatures are not checked again.
        if self
            .entries
            .get(&msg.facts.name)
            .is_some_and(|known| msg.version() <= known.msg.version())
        {
            return false;
        }
        let verified = match self.check(&msg.facts.name, proof.as_ref()) {
            Some(true) => true,
            Some(false) => {
                self.refused_unsigned = self.refused_unsigned.saturating_add(1);
                return false;
            }
            None => false,
        };
        if let Some(known) = self.entries.get_mut(&msg.facts.name) {
            *known = FactsEntry {
                msg,
                seen: now,
                verified,
                proof,
            };
        } else {
            if self.entries.len() >= MEMBERS_MAX {
                self.refused_full = self.refused_full.saturating_add(1);
                return false;
            }
            self.entries.insert(
                msg.facts.name.clone(),
                FactsEntry {
                    msg,
                    seen: now,
                    verified,
                    proof,
                },
            );
        }
        self.generation = self.generation.wrapping_add(1);
        self.index_owners();
        true
    }

    /// Whether an identity named `name` at `addr` claims another node's
    /// address: one that the facts of other nodes, signed by their own
    /// keys, name as their gossip address, and none of them `name`'s (a
    /// node that left gives its address up).
    pub(crate) fn claims_foreign_addr(&self, addr: SocketAddr, name: &str) -> bool {
        self.owners
            .get(&addr)
            .is_some_and(|owners| !owners.iter().any(|owner| owner == name))
    }

    /// Makes [`FactsTable::owners`] again from the entries.
    fn index_owners(&mut self) {
        self.owners.clear();
        for (name, entry) in &self.entries {
            if let (true, false, Some(addr)) = (entry.verified, entry.msg.left, entry.msg.addr) {
                self.owners.entry(addr).or_default().push(name.clone());
            }
        }
    }

    /// The facts key the state holds for `name`.
    pub(crate) fn key_of(&self, name: &str) -> Option<&[u8; super::signing::FACTS_KEY_BYTES]> {
        self.keys.get(name)
    }

    pub(crate) fn keys_len(&self) -> usize {
        self.keys.len()
    }

    /// Checks facts with `keys` from now on: what is known of a node whose
    /// key is now known stays only if that key signed it (its next signed
    /// broadcast brings it back), except `keep` (this node).
    pub(crate) fn set_keys(&mut self, keys: FactsKeys, keep: &str) {
        if keys == self.keys {
            return;
        }
        self.keys = keys;
        let mut changed = false;
        let checked: Vec<(String, Option<bool>)> = self
            .entries
            .iter()
            .map(|(name, entry)| (name.clone(), self.check(name, entry.proof.as_ref())))
            .collect();
        for (name, check) in checked {
            match check {
                Some(false) if name != keep => {
                    self.entries.remove(&name);
                    changed = true;
                }
                check => {
                    if let Some(entry) = self.entries.get_mut(&name) {
                        let verified = check == Some(true);
                        changed |= entry.verified != verified;
                        entry.verified = verified;
                    }
                }
            }
        }
        if changed {
            self.generation = self.generation.wrapping_add(1);
            self.index_owners();
        }
    }

    /// Drops the facts of nodes not seen in the member list since `before`,
    /// except `keep` (this node).
    pub(crate) fn evict_unseen(&mut self, before: Instant, keep: &str) {
        let len = self.entries.len();
        self.entries
            .retain(|name, entry| name == keep || entry.seen >= before);
        if self.entries.len() != len {
            self.generation = self.generation.wrapping_add(1);
            self.index_owners();
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
        let (msg, proof) = FactsMsg::decode(data)?;
        let key = FactsKey {
            name: msg.facts.name.clone(),
            version: msg.version(),
        };
        let news = lock(&self.table).offer(msg, proof, Instant::now());
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
            addr: None,
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
        let (read, _) = FactsMsg::decode(&old).unwrap();
        assert_eq!(read.facts.release, "");
        assert_eq!(
            read.facts.log_version_read(),
            shoal_state::LOG_VERSION_FIRST
        );
        assert_eq!(FactsMsg::decode(&bytes).unwrap(), (new, None));
        // A newer node's facts: fields this build does not know are ignored.
        let mut newer = old.clone();
        let json = br#"{"release":"9.0.0","log_version":9,"gpus":4}"#.to_vec();
        newer.extend(postcard::to_allocvec(&json).unwrap());
        let (read, _) = FactsMsg::decode(&newer).unwrap();
        assert_eq!(
            (read.facts.release.as_str(), read.facts.log_version),
            ("9.0.0", 9)
        );
    }

    fn signer() -> FactsSigner {
        FactsSigner::from_pkcs8(&FactsSigner::generate_pkcs8().unwrap()).unwrap()
    }

    fn key_of(signer: &FactsSigner) -> [u8; 32] {
        signing::parse_facts_key(&signer.public_hex()).unwrap()
    }

    #[test]
    fn a_signed_broadcast_is_read_by_every_release_and_keeps_its_proof() {
        let a = signer();
        let mut signed = msg("a", 3, 4, 2);
        signed.addr = Some("10.0.0.1:7946".parse().unwrap());
        signed.facts.release = "0.9.0".into();
        let bytes = signed.encode_signed(Some(&a), "c1").unwrap();
        let plain = signed.encode().unwrap();
        assert_eq!(bytes.len(), plain.len() + SIGNATURE_WIRE_BYTES);
        // shoal 0.1 reads the first part; 0.2 to 0.8 read the JSON part and
        // ignore what follows it (as `decode` did before signatures).
        let first: WireFirst = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((first.name.as_str(), first.boot), ("a", 3));
        let (_, rest): (WireFirst, &[u8]) = postcard::take_from_bytes(&bytes).unwrap();
        let (json, _): (Vec<u8>, &[u8]) = postcard::take_from_bytes(rest).unwrap();
        let more: WireMore = serde_json::from_slice(&json).unwrap();
        assert_eq!(more.gossip_addr, "10.0.0.1:7946");
        let (read, proof) = FactsMsg::decode(&bytes).unwrap();
        assert_eq!(read, signed);
        let proof = proof.expect("signed");
        assert_eq!(proof.body, plain);
        assert!(signing::verify(
            &key_of(&a),
            "c1",
            &proof.body,
            &proof.signature
        ));
        // Bytes after the signature (a newer release's) are ignored.
        let mut longer = bytes.clone();
        longer.extend(postcard::to_allocvec(&b"more".to_vec()).unwrap());
        assert_eq!(FactsMsg::decode(&longer).unwrap().1, Some(proof));
    }

    fn offer(table: &SharedFacts, m: &FactsMsg, signer: Option<&FactsSigner>) -> bool {
        let mut handler = FactsHandler {
            table: table.clone(),
        };
        handler
            .receive_item(&m.encode_signed(signer, "c1").unwrap(), None)
            .unwrap()
            .is_some()
    }

    /// An address is the node's whose own key signed facts naming it; two
    /// such nodes (one dead, one come in its place) share it; a node that
    /// left or whose key left the state gives it up.
    #[test]
    fn an_address_belongs_to_the_nodes_whose_signed_facts_name_it() {
        let (b, d) = (signer(), signer());
        let table: SharedFacts = Arc::new(Mutex::new(FactsTable::new("c1")));
        let keys = FactsKeys::from([("b".to_string(), key_of(&b)), ("d".to_string(), key_of(&d))]);
        lock(&table).set_keys(keys.clone(), "self");
        let at: SocketAddr = "10.0.0.2:7946".parse().unwrap();
        let at_addr = |name: &str, boot: u64, left: bool| FactsMsg {
            addr: Some(at),
            left,
            ..msg(name, boot, 1, 1)
        };
        // Unsigned facts, or none, give no address.
        assert!(offer(
            &table,
            &FactsMsg {
                addr: Some(at),
                ..msg("u", 1, 1, 1)
            },
            None
        ));
        assert!(!lock(&table).claims_foreign_addr(at, "x"));
        assert!(offer(&table, &at_addr("b", 1, false), Some(&b)));
        let foreign = |name: &str| lock(&table).claims_foreign_addr(at, name);
        assert!(foreign("x") && foreign("u") && !foreign("b"));
        assert!(!lock(&table).claims_foreign_addr("10.0.0.2:7947".parse().unwrap(), "x"));
        assert!(offer(&table, &at_addr("d", 1, false), Some(&d)));
        assert!(foreign("x") && !foreign("b") && !foreign("d"));
        // b leaves: the address is d's alone.
        assert!(offer(
            &table,
            &FactsMsg {
                seq: 2,
                ..at_addr("b", 1, true)
            },
            Some(&b)
        ));
        assert!(foreign("b") && !foreign("d"));
        // d's key leaves the state (removed): nobody's.
        lock(&table).set_keys(FactsKeys::from([("b".to_string(), key_of(&b))]), "self");
        assert!(!foreign("x"));
    }

    #[test]
    fn a_known_key_takes_only_what_it_signed() {
        let (a, intruder) = (signer(), signer());
        let table: SharedFacts = Arc::new(Mutex::new(FactsTable::new("c1")));
        lock(&table).set_keys(FactsKeys::from([("a".to_string(), key_of(&a))]), "self");

        assert!(offer(&table, &msg("a", 5, 1, 1), Some(&a)));
        // Another member speaking for `a`: signed with its own key, unsigned,
        // or signed for another cluster, and newer in every case.
        assert!(!offer(&table, &msg("a", u64::MAX, 0, 99), Some(&intruder)));
        assert!(!offer(&table, &msg("a", u64::MAX, 0, 99), None));
        let other_cluster = msg("a", u64::MAX, 0, 99)
            .encode_signed(Some(&a), "c2")
            .unwrap();
        let mut handler = FactsHandler {
            table: table.clone(),
        };
        assert!(handler
            .receive_item(&other_cluster, None)
            .unwrap()
            .is_none());
        // A signature moved onto other facts.
        let real = msg("a", 6, 1, 1).encode_signed(Some(&a), "c1").unwrap();
        let mut moved = msg("a", 6, 1, 99).encode().unwrap();
        moved.extend_from_slice(&real[real.len() - SIGNATURE_WIRE_BYTES..]);
        assert!(handler.receive_item(&moved, None).unwrap().is_none());
        {
            let table = lock(&table);
            assert_eq!(table.entries["a"].msg.facts.cpus, 1);
            assert!(table.entries["a"].verified);
            assert_eq!(table.refused_unsigned, 4);
        }
        // The node itself goes on as before.
        assert!(offer(&table, &msg("a", 5, 2, 3), Some(&a)));
        assert_eq!(lock(&table).entries["a"].msg.facts.cpus, 3);
        // A node whose key is not known: taken as before, signed or not.
        assert!(offer(&table, &msg("b", 1, 1, 1), None));
        assert!(offer(&table, &msg("b", 1, 2, 1), Some(&intruder)));
        assert!(!lock(&table).entries["b"].verified);
    }

    #[test]
    fn a_key_that_arrives_drops_what_it_did_not_sign_whatever_its_version() {
        let (b, intruder) = (signer(), signer());
        let table: SharedFacts = Arc::new(Mutex::new(FactsTable::new("c1")));
        // Before `b`'s key is known, a member makes up facts for it with
        // the highest version there is.
        assert!(offer(
            &table,
            &msg("b", u64::MAX, u64::MAX, 99),
            Some(&intruder)
        ));
        // The key arrives: what it did not sign goes.
        lock(&table).set_keys(FactsKeys::from([("b".to_string(), key_of(&b))]), "self");
        assert!(!lock(&table).entries.contains_key("b"));
        // Made up again while no key is known: the node's own broadcast,
        // of a lower version, cannot be told from it yet; once its key is
        // known the made-up facts go and the next signed broadcast is taken.
        lock(&table).set_keys(FactsKeys::new(), "self");
        assert!(offer(&table, &msg("b", u64::MAX, u64::MAX, 99), None));
        assert!(!offer(&table, &msg("b", 7, 1, 2), Some(&b)), "no key yet");
        lock(&table).set_keys(FactsKeys::from([("b".to_string(), key_of(&b))]), "self");
        assert!(!lock(&table).entries.contains_key("b"));
        assert!(offer(&table, &msg("b", 7, 1, 2), Some(&b)));
        let generation = lock(&table).generation;
        // Facts already signed stay, and are marked checked.
        lock(&table).set_keys(
            FactsKeys::from([("b".to_string(), key_of(&b)), ("c".to_string(), key_of(&b))]),
            "self",
        );
        let table = lock(&table);
        assert!(table.entries["b"].verified);
        assert_eq!(table.entries["b"].msg.facts.cpus, 2);
        assert_eq!(table.generation, generation, "nothing changed");
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

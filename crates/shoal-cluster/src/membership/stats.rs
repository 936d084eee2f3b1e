//! The membership's counters: datagrams in and out, and each reason one
//! was dropped, bumped by the gossip task and read by the handle.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipStats {
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    /// Datagrams of another cluster (same envelope, other cluster id).
    pub dropped_other_cluster: u64,
    /// Datagrams without a valid envelope.
    pub dropped_malformed: u64,
    /// Plaintext where only sealed datagrams are taken.
    pub dropped_unsealed: u64,
    /// Shorter than a sealed datagram can be.
    pub dropped_truncated: u64,
    /// Sealed with a key id this node's ring does not hold.
    pub dropped_unknown_key: u64,
    /// Did not authenticate: forged, changed on the way, another cluster's.
    pub dropped_forged: u64,
    /// Seen before (the same sender session and sequence).
    pub dropped_replayed: u64,
    /// Sent further than `SKEW_MAX_MS` from this node's clock.
    pub dropped_stale: u64,
    /// Sealed datagrams sent and opened.
    pub sealed_sent: u64,
    pub sealed_received: u64,
    /// Datagrams over the size limit.
    pub dropped_oversize: u64,
    /// Datagrams dropped because they would add members past
    /// [`MEMBERS_MAX`](super::MEMBERS_MAX).
    pub dropped_members_full: u64,
    /// Packets foca refused (undecodable, from a dead member, ...).
    pub protocol_errors: u64,
    pub send_errors: u64,
    /// Facts broadcasts about a node whose facts key the state holds that
    /// the key did not sign (forged by another member, or unsigned).
    pub facts_unsigned: u64,
    /// Identities refused for claiming the gossip address of another node
    /// (one whose facts its own key signed): a datagram sent under one is
    /// dropped, an update about one is taken out of its datagram.
    pub identities_foreign: u64,
    /// Sealed datagrams with proven identities (version 3) sent and opened.
    pub proven_sent: u64,
    pub proven_received: u64,
    /// Sealed datagrams without proofs (version 2) where only version 3 is
    /// taken.
    pub dropped_unproven: u64,
    /// Identities refused for a proof that their node's facts key did not
    /// sign, or at this node's own address with a newer boot than its own
    /// (a datagram sent under one is dropped, an update about one is taken
    /// out of its datagram).
    pub identities_unproven: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) datagrams_received: AtomicU64,
    pub(super) datagrams_sent: AtomicU64,
    pub(super) dropped_other_cluster: AtomicU64,
    pub(super) dropped_malformed: AtomicU64,
    pub(super) dropped_unsealed: AtomicU64,
    pub(super) dropped_truncated: AtomicU64,
    pub(super) dropped_unknown_key: AtomicU64,
    pub(super) dropped_forged: AtomicU64,
    pub(super) dropped_replayed: AtomicU64,
    pub(super) dropped_stale: AtomicU64,
    pub(super) sealed_sent: AtomicU64,
    pub(super) sealed_received: AtomicU64,
    pub(super) dropped_oversize: AtomicU64,
    pub(super) dropped_members_full: AtomicU64,
    pub(super) protocol_errors: AtomicU64,
    pub(super) send_errors: AtomicU64,
    pub(super) identities_foreign: AtomicU64,
    pub(super) proven_sent: AtomicU64,
    pub(super) proven_received: AtomicU64,
    pub(super) dropped_unproven: AtomicU64,
    pub(super) identities_unproven: AtomicU64,
}

impl Counters {
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> MembershipStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MembershipStats {
            datagrams_received: get(&self.datagrams_received),
            datagrams_sent: get(&self.datagrams_sent),
            dropped_other_cluster: get(&self.dropped_other_cluster),
            dropped_malformed: get(&self.dropped_malformed),
            dropped_unsealed: get(&self.dropped_unsealed),
            dropped_truncated: get(&self.dropped_truncated),
            dropped_unknown_key: get(&self.dropped_unknown_key),
            dropped_forged: get(&self.dropped_forged),
            dropped_replayed: get(&self.dropped_replayed),
            dropped_stale: get(&self.dropped_stale),
            sealed_sent: get(&self.sealed_sent),
            sealed_received: get(&self.sealed_received),
            dropped_oversize: get(&self.dropped_oversize),
            dropped_members_full: get(&self.dropped_members_full),
            protocol_errors: get(&self.protocol_errors),
            send_errors: get(&self.send_errors),
            facts_unsigned: 0,
            identities_foreign: get(&self.identities_foreign),
            proven_sent: get(&self.proven_sent),
            proven_received: get(&self.proven_received),
            dropped_unproven: get(&self.dropped_unproven),
            identities_unproven: get(&self.identities_unproven),
        }
    }
}

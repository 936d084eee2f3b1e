//! Datagrams in: the size limit, the cluster's envelope and the member
//! limit are checked before foca sees a packet; each drop is counted.

use std::net::SocketAddr;

use foca::{Codec, Message, PostcardCodec};

use super::super::identity::NodeId;
use super::super::stats::Counters;
use super::super::wall_ms;
use super::super::wire::{Reject, OVERHEAD, SKEW_MAX_MS};
use super::super::{MEMBERS_MAX, PACKET_MAX_BYTES};
use super::Driver;

/// How often the node says that it drops gossip for its clock.
const STALE_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Driver {
    pub(super) fn receive(&mut self, datagram: &mut [u8]) {
        let shared = self.shared.clone();
        let counters = &shared.counters;
        Counters::bump(&counters.datagrams_received);
        if datagram.len() > OVERHEAD + PACKET_MAX_BYTES {
            Counters::bump(&counters.dropped_oversize);
            return;
        }
        let envelope = shared.envelope();
        let range = match envelope.unwrap(datagram, wall_ms(), &mut self.replays) {
            Ok((range, sealed)) => {
                if sealed {
                    Counters::bump(&counters.sealed_received);
                }
                range
            }
            Err(reject) => {
                Counters::bump(match reject {
                    Reject::Malformed => &counters.dropped_malformed,
                    Reject::OtherCluster => &counters.dropped_other_cluster,
                    Reject::Unsealed => &counters.dropped_unsealed,
                    Reject::Truncated => &counters.dropped_truncated,
                    Reject::UnknownKey => &counters.dropped_unknown_key,
                    Reject::Forged => &counters.dropped_forged,
                    Reject::Replayed => &counters.dropped_replayed,
                    Reject::Stale => &counters.dropped_stale,
                });
                tracing::trace!(?reject, "dropped a gossip datagram");
                if reject == Reject::Stale {
                    self.warn_stale();
                }
                return;
            }
        };
        let packet = &datagram[range];
        if packet.is_empty() {
            Counters::bump(&counters.dropped_truncated);
            return;
        }
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

    /// Says, at most once a minute, that sealed datagrams are dropped for
    /// their clock: a node whose clock is off is not heard, and dies.
    fn warn_stale(&mut self) {
        let now = tokio::time::Instant::now();
        if self
            .stale_warned_at
            .is_some_and(|at| now.duration_since(at) < STALE_WARN_EVERY)
        {
            return;
        }
        self.stale_warned_at = Some(now);
        tracing::warn!(
            "dropped sealed gossip sent more than {} s from this node's clock: the nodes' clocks must agree (run NTP on every node)",
            SKEW_MAX_MS / 1000
        );
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
}

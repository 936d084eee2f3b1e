//! Datagrams in: the size limit, the cluster's envelope and the member
//! limit are checked before foca sees a packet; each drop is counted.

use std::net::SocketAddr;

use foca::{Codec, Message, PostcardCodec};

use super::super::facts;
use super::super::identity::NodeId;
use super::super::stats::Counters;
use super::super::wall_ms;
use super::super::wire::{Reject, OVERHEAD, SKEW_MAX_MS};
use super::super::{MEMBERS_MAX, PACKET_MAX_BYTES};
use super::Driver;

/// What [`Driver::screen`] made of a packet.
enum Screened {
    Taken,
    /// Taken without the updates it had to refuse.
    Rewritten(Vec<u8>),
    Dropped,
}

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
        let screened = match self.screen(packet) {
            Screened::Taken => None,
            Screened::Rewritten(packet) => Some(packet),
            Screened::Dropped => {
                tracing::debug!("dropped a gossip datagram sent under another node's address");
                return;
            }
        };
        let packet = screened.as_deref().unwrap_or(packet);
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

    /// Refuses identities that claim another node's gossip address: an
    /// address named by a node's facts, signed by that node's key, is that
    /// node's alone. foca knows a member by its address, and one identity
    /// there replaces another that has an older boot; so any member (all
    /// hold the keyring) could otherwise take a node's place under another
    /// name and, once that identity stops answering, have the node found
    /// dead. A datagram sent under such an identity is dropped; updates
    /// about one are taken out of the datagram (a member may pass one on
    /// that it took before the address's owner was known to it, and the
    /// rest of what it says is still heard).
    fn screen(&self, packet: &[u8]) -> Screened {
        let facts = facts::lock(&self.shared.facts);
        let (screened, refused) = screen(packet, |id| facts.claims_foreign_addr(id.addr, &id.name));
        for _ in 0..refused {
            Counters::bump(&self.shared.counters.identities_foreign);
        }
        screened
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

/// `packet` without the identities `foreign` refuses: dropped when its
/// sender is one, else rewritten without the updates about one (header,
/// count, members, and the broadcasts after them as they came). Also
/// returns how many it refused. A packet that does not decode is left to
/// foca, which refuses it.
fn screen(packet: &[u8], foreign: impl Fn(&NodeId) -> bool) -> (Screened, usize) {
    let mut codec = PostcardCodec;
    let mut rest = packet;
    let Ok(header) = Codec::<NodeId>::decode_header(&mut codec, &mut rest) else {
        return (Screened::Taken, 0);
    };
    if foreign(&header.src) {
        return (Screened::Dropped, 1);
    }
    if matches!(header.message, Message::Broadcast) {
        return (Screened::Taken, 0);
    }
    let Some((count, mut after)) = rest.split_first_chunk::<2>() else {
        return (Screened::Taken, 0);
    };
    let count = u16::from_be_bytes(*count);
    let mut kept = Vec::with_capacity(usize::from(count));
    let mut refused = 0;
    for _ in 0..count {
        match Codec::<NodeId>::decode_member(&mut codec, &mut after) {
            Ok(member) if foreign(member.id()) => refused += 1,
            Ok(member) => kept.push(member),
            Err(_) => return (Screened::Taken, 0),
        }
    }
    if refused == 0 {
        return (Screened::Taken, 0);
    }
    let mut out = Vec::with_capacity(packet.len());
    let kept_count = u16::try_from(kept.len()).unwrap_or(u16::MAX);
    let encoded = Codec::<NodeId>::encode_header(&mut codec, &header, &mut out).is_ok() && {
        out.extend_from_slice(&kept_count.to_be_bytes());
        kept.iter()
            .all(|member| Codec::<NodeId>::encode_member(&mut codec, member, &mut out).is_ok())
    };
    if !encoded {
        return (Screened::Dropped, refused);
    }
    out.extend_from_slice(after);
    (Screened::Rewritten(out), refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::{Header, Member, State};

    fn id(name: &str, last: u8, boot: u64) -> NodeId {
        NodeId {
            addr: SocketAddr::from(([10, 0, 0, last], 7946)),
            boot,
            name: name.into(),
        }
    }

    fn packet(src: &NodeId, message: Message<NodeId>, members: &[NodeId], tail: &[u8]) -> Vec<u8> {
        let mut codec = PostcardCodec;
        let mut out = Vec::new();
        let header = Header {
            src: src.clone(),
            src_incarnation: 0,
            dst: id("a", 1, 1),
            message,
        };
        Codec::<NodeId>::encode_header(&mut codec, &header, &mut out).unwrap();
        if !members.is_empty() {
            out.extend_from_slice(&u16::try_from(members.len()).unwrap().to_be_bytes());
            for member in members {
                let member = Member::new(member.clone(), 3, State::Alive);
                Codec::<NodeId>::encode_member(&mut codec, &member, &mut out).unwrap();
            }
        }
        out.extend_from_slice(tail);
        out
    }

    /// 10.0.0.2 is b's: only b speaks from there.
    fn foreign(id: &NodeId) -> bool {
        id.addr.ip() == std::net::IpAddr::from([10, 0, 0, 2]) && id.name != "b"
    }

    #[test]
    fn a_packet_sent_under_another_nodes_address_is_dropped() {
        let sent = packet(&id("x", 2, 9), Message::Ping(1), &[], b"");
        assert!(matches!(screen(&sent, foreign), (Screened::Dropped, 1)));
        let sent = packet(&id("x", 2, 9), Message::Broadcast, &[], b"facts");
        assert!(matches!(screen(&sent, foreign), (Screened::Dropped, 1)));
        // b itself, at any boot, and x elsewhere are heard.
        let sent = packet(&id("b", 2, 9), Message::Ping(1), &[id("c", 3, 1)], b"");
        assert!(matches!(screen(&sent, foreign), (Screened::Taken, 0)));
        let sent = packet(&id("x", 9, 9), Message::Ping(1), &[], b"");
        assert!(matches!(screen(&sent, foreign), (Screened::Taken, 0)));
    }

    #[test]
    fn updates_about_an_identity_at_another_nodes_address_are_taken_out() {
        let members = [id("b", 2, 4), id("x", 2, 9), id("c", 3, 1), id("y", 2, 10)];
        let sent = packet(&id("c", 3, 1), Message::Ping(7), &members, b"broadcasts");
        let (Screened::Rewritten(out), 2) = screen(&sent, foreign) else {
            panic!("not rewritten");
        };
        assert_eq!(
            out,
            packet(
                &id("c", 3, 1),
                Message::Ping(7),
                &[id("b", 2, 4), id("c", 3, 1)],
                b"broadcasts"
            )
        );
        // What does not decode is left to foca.
        assert!(matches!(
            screen(&sent[..sent.len() - 20], foreign),
            (Screened::Taken, 0)
        ));
    }
}

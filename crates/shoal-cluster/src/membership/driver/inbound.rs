//! Datagrams in: the size limit, the cluster's envelope and the member
//! limit are checked before foca sees a packet; each drop is counted.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use super::super::codec::{self, IdProof};
use super::super::facts;
use super::super::identity::NodeId;
use super::super::stats::Counters;
use super::super::wall_ms;
use super::super::wire::{Reject, OVERHEAD, SKEW_MAX_MS, WIRE_PLAIN, WIRE_PROVEN};
use super::super::{MEMBERS_MAX, PACKET_MAX_BYTES};
use super::Driver;

/// What [`Driver::screen`] made of a packet.
#[derive(Debug)]
enum Screened {
    Taken,
    /// Taken without the updates it had to refuse.
    Rewritten(Vec<u8>),
    Dropped,
}

/// What the screen says of one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Heard,
    /// At an address that other nodes' signed facts name.
    Foreign,
    /// Its node's key is known and did not sign its proof.
    Unproven,
}

/// How many identities the screen refused, by reason.
#[derive(Debug, Default, PartialEq, Eq)]
struct Refused {
    foreign: usize,
    unproven: usize,
}

impl Refused {
    fn count(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Heard => {}
            Verdict::Foreign => self.foreign += 1,
            Verdict::Unproven => self.unproven += 1,
        }
    }
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
        let (range, proven) = match envelope.unwrap(datagram, wall_ms(), &mut self.replays) {
            Ok(opened) => {
                if opened.version != WIRE_PLAIN {
                    Counters::bump(&counters.sealed_received);
                }
                let proven = opened.version == WIRE_PROVEN;
                if proven {
                    Counters::bump(&counters.proven_received);
                }
                (opened.range, proven)
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
                    Reject::Unproven => &counters.dropped_unproven,
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
        let screened = match self.screen(packet, proven) {
            Screened::Taken => None,
            Screened::Rewritten(packet) => Some(packet),
            Screened::Dropped => {
                tracing::debug!(
                    "dropped a gossip datagram sent under another node's address or an unproven identity"
                );
                return;
            }
        };
        let packet = screened.as_deref().unwrap_or(packet);
        if self.foca.iter_membership_state().len() >= MEMBERS_MAX
            && self.would_add_members(packet, proven)
        {
            Counters::bump(&counters.dropped_members_full);
            tracing::debug!("member list full ({MEMBERS_MAX}): dropped a datagram");
            return;
        }
        self.layout.store(proven, Ordering::Relaxed);
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
    ///
    /// In a packet with proofs (`proven`), an identity whose node's facts
    /// key the state holds is refused the same way unless that key signed
    /// its proof: no member can announce a newer identity of another node
    /// at that node's own address and have it replace the node. Nor of
    /// this node, in any packet: an identity at its address with a newer
    /// boot than its own is not one it had (foca would keep it, as down,
    /// in the way of this node's own renewals).
    fn screen(&self, packet: &[u8], proven: bool) -> Screened {
        let facts = facts::lock(&self.shared.facts);
        let mut proofs = codec::lock(&self.proofs);
        let own = self.foca.identity();
        let (screened, refused) = screen(packet, proven, |id, proof| {
            if facts.claims_foreign_addr(id.addr, &id.name) {
                Verdict::Foreign
            } else if (id.addr == own.addr && id.boot > own.boot)
                || (proven && !proofs.check(id, proof, facts.key_of(&id.name)))
            {
                Verdict::Unproven
            } else {
                Verdict::Heard
            }
        });
        let counters = &self.shared.counters;
        for _ in 0..refused.foreign {
            Counters::bump(&counters.identities_foreign);
        }
        for _ in 0..refused.unproven {
            Counters::bump(&counters.identities_unproven);
        }
        screened
    }

    /// Whether handling `packet` could add a member foca does not know.
    /// Only used when the list is full, so its cost does not matter.
    fn would_add_members(&self, packet: &[u8], proven: bool) -> bool {
        let Some(parsed) = codec::parse(packet, proven) else {
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
        !known(parsed.header.src.addr)
            || parsed
                .updates
                .iter()
                .flatten()
                .any(|update| !known(update.member.id().addr))
    }

    /// Forgets the proofs of identities foca no longer lists.
    pub(super) fn forget_proofs(&self) {
        let listed: std::collections::HashSet<&NodeId> = self
            .foca
            .iter_membership_state()
            .map(|member| member.id())
            .collect();
        let own = self.foca.identity();
        codec::lock(&self.proofs).retain(|id| id == own || listed.contains(id));
    }
}

/// `packet` (with proofs if `proven`) without the identities `judge`
/// refuses: dropped when its sender is one, else rewritten without the
/// updates about one (the header, the count, the kept updates and the
/// broadcasts after them, byte for byte as they came). Also returns how
/// many it refused. A packet that does not decode is left to foca, which
/// refuses it.
fn screen(
    packet: &[u8],
    proven: bool,
    mut judge: impl FnMut(&NodeId, Option<&IdProof>) -> Verdict,
) -> (Screened, Refused) {
    let mut refused = Refused::default();
    let Some(parsed) = codec::parse(packet, proven) else {
        return (Screened::Taken, refused);
    };
    let sender = judge(&parsed.header.src, parsed.src_proof.as_ref());
    if sender != Verdict::Heard {
        refused.count(sender);
        return (Screened::Dropped, refused);
    }
    let Some(updates) = &parsed.updates else {
        return (Screened::Taken, refused);
    };
    let verdicts: Vec<Verdict> = updates
        .iter()
        .map(|update| judge(update.member.id(), update.proof.as_ref()))
        .collect();
    for verdict in &verdicts {
        refused.count(*verdict);
    }
    if refused == Refused::default() {
        return (Screened::Taken, refused);
    }
    let kept = parsed.keeping(packet, |index| verdicts[index] == Verdict::Heard);
    (Screened::Rewritten(kept), refused)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::membership::codec::Proofs;
    use crate::membership::signing::{parse_facts_key, FactsSigner};
    use foca::{Codec, Header, Member, Message, PostcardCodec, State};

    fn id(name: &str, last: u8, boot: u64) -> NodeId {
        NodeId {
            addr: SocketAddr::from(([10, 0, 0, last], 7946)),
            boot,
            name: name.into(),
        }
    }

    fn packet<C: Codec<NodeId>>(
        codec: &mut C,
        src: &NodeId,
        message: Message<NodeId>,
        members: &[NodeId],
        tail: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let header = Header {
            src: src.clone(),
            src_incarnation: 0,
            dst: id("a", 1, 1),
            message,
        };
        codec.encode_header(&header, &mut out).unwrap();
        if !members.is_empty() {
            out.extend_from_slice(&u16::try_from(members.len()).unwrap().to_be_bytes());
            for member in members {
                let member = Member::new(member.clone(), 3, State::Alive);
                codec.encode_member(&member, &mut out).unwrap();
            }
        }
        out.extend_from_slice(tail);
        out
    }

    /// 10.0.0.2 is b's: only b speaks from there.
    fn foreign(id: &NodeId, _: Option<&IdProof>) -> Verdict {
        if id.addr.ip() == std::net::IpAddr::from([10, 0, 0, 2]) && id.name != "b" {
            Verdict::Foreign
        } else {
            Verdict::Heard
        }
    }

    fn refused(foreign: usize, unproven: usize) -> Refused {
        Refused { foreign, unproven }
    }

    #[test]
    fn a_packet_sent_under_another_nodes_address_is_dropped() {
        let old = &mut PostcardCodec;
        let sent = packet(old, &id("x", 2, 9), Message::Ping(1), &[], b"");
        let (screened, count) = screen(&sent, false, foreign);
        assert!(matches!(screened, Screened::Dropped));
        assert_eq!(count, refused(1, 0));
        let sent = packet(old, &id("x", 2, 9), Message::Broadcast, &[], b"facts");
        assert!(matches!(screen(&sent, false, foreign).0, Screened::Dropped));
        // b itself, at any boot, and x elsewhere are heard.
        let sent = packet(old, &id("b", 2, 9), Message::Ping(1), &[id("c", 3, 1)], b"");
        let (screened, count) = screen(&sent, false, foreign);
        assert!(matches!(screened, Screened::Taken));
        assert_eq!(count, refused(0, 0));
        let sent = packet(old, &id("x", 9, 9), Message::Ping(1), &[], b"");
        assert!(matches!(screen(&sent, false, foreign).0, Screened::Taken));
    }

    #[test]
    fn updates_about_an_identity_at_another_nodes_address_are_taken_out() {
        let old = &mut PostcardCodec;
        let members = [id("b", 2, 4), id("x", 2, 9), id("c", 3, 1), id("y", 2, 10)];
        let sent = packet(
            old,
            &id("c", 3, 1),
            Message::Ping(7),
            &members,
            b"broadcasts",
        );
        let (Screened::Rewritten(out), count) = screen(&sent, false, foreign) else {
            panic!("not rewritten");
        };
        assert_eq!(count, refused(2, 0));
        assert_eq!(
            out,
            packet(
                old,
                &id("c", 3, 1),
                Message::Ping(7),
                &[id("b", 2, 4), id("c", 3, 1)],
                b"broadcasts"
            )
        );
        // What does not decode is left to foca.
        let (screened, count) = screen(&sent[..sent.len() - 20], false, foreign);
        assert!(matches!(screened, Screened::Taken));
        assert_eq!(count, refused(0, 0));
    }

    fn signer() -> Arc<FactsSigner> {
        Arc::new(FactsSigner::from_pkcs8(&FactsSigner::generate_pkcs8().unwrap()).unwrap())
    }

    /// A packet with proofs, each identity's as given.
    fn proven_packet(
        src: (&NodeId, Option<IdProof>),
        message: Message<NodeId>,
        updates: &[(&NodeId, Option<IdProof>)],
        tail: &[u8],
    ) -> Vec<u8> {
        let header = Header {
            src: src.0.clone(),
            src_incarnation: 0,
            dst: id("a", 1, 1),
            message,
        };
        let mut out = postcard::to_allocvec(&header).unwrap();
        codec::put_proof(&mut out, src.1.as_ref());
        if !updates.is_empty() {
            out.extend_from_slice(&u16::try_from(updates.len()).unwrap().to_be_bytes());
            for (update, proof) in updates {
                let member = Member::new((*update).clone(), 3, State::Alive);
                out.extend_from_slice(&postcard::to_allocvec(&member).unwrap());
                codec::put_proof(&mut out, proof.as_ref());
            }
        }
        out.extend_from_slice(tail);
        out
    }

    /// b and c have keys in the state, d has none; x holds the ring and a
    /// key of its own, and says b started again (a newer boot, at b's
    /// address), or passes that on.
    #[test]
    fn an_identity_its_nodes_key_did_not_prove_is_refused() {
        let (b_key, c_key, x_key) = (signer(), signer(), signer());
        let keys: HashMap<&str, [u8; 32]> = [("b", &b_key), ("c", &c_key)]
            .into_iter()
            .map(|(name, key)| (name, parse_facts_key(&key.public_hex()).unwrap()))
            .collect();
        let (b, b_later, c, d) = (id("b", 2, 4), id("b", 2, 99), id("c", 3, 1), id("d", 4, 1));
        let sign = |key: &FactsSigner, id: &NodeId| {
            Some(key.sign_identity("c1", &postcard::to_allocvec(id).unwrap()))
        };
        let receiver = Mutex::new(Proofs::new("c1", "a", id("a", 1, 1).addr, None));
        let judge = |id: &NodeId, proof: Option<&IdProof>| {
            if receiver
                .lock()
                .unwrap()
                .check(id, proof, keys.get(id.name.as_str()))
            {
                Verdict::Heard
            } else {
                Verdict::Unproven
            }
        };
        // Sent as d (no key known: heard, proof or not), with b's real
        // proof, x's for b_later, none for c, and d's own.
        let updates = [
            (&b, sign(&b_key, &b)),
            (&b_later, sign(&x_key, &b_later)),
            (&c, None),
            (&d, None),
        ];
        let sent = proven_packet((&d, None), Message::Gossip, &updates, b"facts");
        let (Screened::Rewritten(out), count) = screen(&sent, true, judge) else {
            panic!("not rewritten");
        };
        assert_eq!(count, refused(0, 2));
        let kept = [updates[0], updates[3]];
        assert_eq!(
            out,
            proven_packet((&d, None), Message::Gossip, &kept, b"facts")
        );
        // b_later with x's proof, b with none, c with b's: dropped.
        for sender in [
            (&b_later, sign(&x_key, &b_later)),
            (&b, None),
            (&c, sign(&b_key, &c)),
        ] {
            let sent = proven_packet(sender, Message::Announce, &[], b"");
            let (screened, count) = screen(&sent, true, judge);
            assert!(matches!(screened, Screened::Dropped), "{sender:?}");
            assert_eq!(count, refused(0, 1));
        }
        // b and c under their own keys' proofs: heard.
        for sender in [(&b, sign(&b_key, &b)), (&c, sign(&c_key, &c))] {
            let sent = proven_packet(sender, Message::Ping(1), &[], b"");
            assert!(matches!(screen(&sent, true, judge), (Screened::Taken, _)));
        }
        // The same packet without proofs is another layout: left to foca
        // (which the envelope it came in decides).
        let sent = proven_packet((&b_later, None), Message::Announce, &[], b"");
        assert!(matches!(
            screen(&codec::strip(&sent).unwrap(), true, judge).0,
            Screened::Taken
        ));
    }
}

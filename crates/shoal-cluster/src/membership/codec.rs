//! SWIM identities with their proofs: foca's codec, and packets read and
//! rewritten the way it writes them.
//!
//! foca knows a member by its address, and an identity there with a newer
//! boot replaces the one it knew (that is how a restarted node comes back).
//! So whoever could name an identity with a node's name and address and a
//! newer boot would have the real node dropped: its probes go to an
//! identity it does not have, and it is found dead. Each node therefore
//! proves its own identities: an Ed25519 signature by its facts key over
//! the cluster id and the identity's bytes (`signing::sign_identity`).
//! Ed25519 is deterministic, so an identity's proof is the same 64 bytes
//! wherever it is written, and a member passes on the proofs it checked
//! with the identities ([`Proofs`]). A node signs only the identity foca
//! sends under (the sender of each packet), never one it was told about:
//! an update that names its name and address with a newer boot must not
//! come back signed by it.
//!
//! In a packet, a proof follows the sender's identity (after the whole
//! header) and each update (after the member): one byte, `0` for none or
//! `1` followed by the 64 bytes. The other identities of a header (the
//! destination, the target of an indirect probe) are not proven: foca
//! takes no member from them.
//!
//! foca writes an update once, when it learns it, and keeps the bytes; so
//! this codec always writes proofs, and the driver takes them out ([`strip`])
//! of what it sends in the envelope of version 2, which nodes of an older
//! release read. What it decodes is set per datagram: with proofs when the
//! datagram came in version 3 ([`IdentityCodec::set_proven`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Member, Message};

use super::identity::NodeId;
use super::signing::{self, FactsSigner, FACTS_KEY_BYTES, FACTS_SIGNATURE_BYTES};
use super::MEMBERS_MAX;

/// An identity's proof: its node's signature.
pub(crate) type IdProof = [u8; FACTS_SIGNATURE_BYTES];

/// The byte in front of a proof, and the one that says there is none.
const PROOF_SOME: u8 = 1;
const PROOF_NONE: u8 = 0;
/// Proofs of other nodes kept at once; the driver drops those of
/// identities foca no longer lists ([`Proofs::retain`]).
const PROOFS_MAX: usize = 4 * MEMBERS_MAX;
/// This node's own identities whose proofs are kept (it renews its
/// identity each time the cluster takes it for down).
const OWN_PROOFS_MAX: usize = 8;

/// A proof checked for an identity, and the key that signed it.
struct Known {
    proof: IdProof,
    key: [u8; FACTS_KEY_BYTES],
}

/// The proofs this member knows: its own (signed when it first sends under
/// an identity) and those it checked, to pass on with the identities.
pub(crate) struct Proofs {
    cluster_id: String,
    /// This node's name and address: the identities it signs itself.
    own: (String, SocketAddr),
    signer: Option<Arc<FactsSigner>>,
    /// This node's identities it sent under, the newest last.
    signed: Vec<(NodeId, IdProof)>,
    known: HashMap<NodeId, Known>,
}

pub(crate) type SharedProofs = Arc<Mutex<Proofs>>;

pub(crate) fn lock(proofs: &SharedProofs) -> MutexGuard<'_, Proofs> {
    proofs
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The bytes an identity's proof signs: the identity as it travels.
fn identity_bytes(id: &NodeId) -> Option<Vec<u8>> {
    postcard::to_allocvec(id).ok()
}

impl Proofs {
    pub(crate) fn new(
        cluster_id: &str,
        name: &str,
        addr: SocketAddr,
        signer: Option<Arc<FactsSigner>>,
    ) -> Proofs {
        Proofs {
            cluster_id: cluster_id.to_owned(),
            own: (name.to_owned(), addr),
            signer,
            signed: Vec::new(),
            known: HashMap::new(),
        }
    }

    /// Whether `id` has this node's name and address.
    pub(crate) fn is_own(&self, id: &NodeId) -> bool {
        (id.name.as_str(), id.addr) == (self.own.0.as_str(), self.own.1)
    }

    /// The proof of the identity a packet is sent under: foca's own
    /// identity, signed the first time, or (not this node's) as
    /// [`Proofs::proof`].
    pub(crate) fn sender_proof(&mut self, id: &NodeId) -> Option<IdProof> {
        if let Some(proof) = self.proof(id) {
            return Some(proof);
        }
        if !self.is_own(id) {
            return None;
        }
        let signer = self.signer.as_ref()?;
        let proof = signer.sign_identity(&self.cluster_id, &identity_bytes(id)?);
        if self.signed.len() >= OWN_PROOFS_MAX {
            self.signed.remove(0);
        }
        self.signed.push((id.clone(), proof));
        Some(proof)
    }

    /// The proof to write with an update about `id`: one this node made
    /// when it sent under `id`, or one it checked. Nothing is signed here:
    /// an update that names this node's name and address with another
    /// boot is not this node's to vouch for.
    pub(crate) fn proof(&self, id: &NodeId) -> Option<IdProof> {
        if self.is_own(id) {
            return self
                .signed
                .iter()
                .find(|(signed, _)| signed == id)
                .map(|(_, proof)| *proof);
        }
        self.known.get(id).map(|known| known.proof)
    }

    /// Whether `id` may be taken with `proof`: when `key` (the facts key
    /// the state holds for its name) is known, only if that key signed
    /// it, and the proof is then kept to pass on with the identity; when
    /// no key is known, always, and nothing is kept (a proof no one
    /// checked is passed on by no one).
    pub(crate) fn check(
        &mut self,
        id: &NodeId,
        proof: Option<&IdProof>,
        key: Option<&[u8; FACTS_KEY_BYTES]>,
    ) -> bool {
        let Some(key) = key else {
            return true;
        };
        let Some(proof) = proof else {
            return false;
        };
        // Each identity comes many times: a signature is checked once.
        if self
            .known
            .get(id)
            .is_some_and(|known| known.key == *key && known.proof == *proof)
        {
            return true;
        }
        let proven = identity_bytes(id)
            .is_some_and(|bytes| signing::verify_identity(key, &self.cluster_id, &bytes, proof));
        // This node's own proofs are its own to make.
        let room = self.known.len() < PROOFS_MAX || self.known.contains_key(id);
        if proven && room && !self.is_own(id) {
            self.known.insert(
                id.clone(),
                Known {
                    proof: *proof,
                    key: *key,
                },
            );
        }
        proven
    }

    /// Drops the proofs of identities `keep` does not want.
    pub(crate) fn retain(&mut self, keep: impl Fn(&NodeId) -> bool) {
        self.known.retain(|id, _| keep(id));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.known.len()
    }
}

/// foca's codec: postcard, with a proof after the sender and each update.
pub(crate) struct IdentityCodec {
    proofs: SharedProofs,
    /// Whether what is decoded now carries proofs.
    proven: Arc<AtomicBool>,
}

impl IdentityCodec {
    pub(crate) fn new(proofs: SharedProofs) -> IdentityCodec {
        IdentityCodec {
            proofs,
            proven: Arc::new(AtomicBool::new(false)),
        }
    }

    /// What sets whether the next packets decoded carry proofs.
    pub(crate) fn layout(&self) -> Arc<AtomicBool> {
        self.proven.clone()
    }

    fn proven(&self) -> bool {
        self.proven.load(Ordering::Relaxed)
    }

    /// `item`'s bytes and `proof` into `buf`, whole or not at all.
    fn put(
        item: &impl serde::Serialize,
        proof: Option<IdProof>,
        mut buf: impl BufMut,
    ) -> Result<(), postcard::Error> {
        let mut bytes = postcard::to_allocvec(item)?;
        put_proof(&mut bytes, proof.as_ref());
        if buf.remaining_mut() < bytes.len() {
            return Err(postcard::Error::SerializeBufferFull);
        }
        buf.put_slice(&bytes);
        Ok(())
    }
}

impl Codec<NodeId> for IdentityCodec {
    type Error = postcard::Error;

    fn encode_header(
        &mut self,
        header: &Header<NodeId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        // foca sends under its own identity: the one this node signs.
        let proof = lock(&self.proofs).sender_proof(&header.src);
        Self::put(header, proof, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<NodeId>, Self::Error> {
        take(buf, self.proven())
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        let proof = lock(&self.proofs).proof(member.id());
        Self::put(member, proof, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeId>, Self::Error> {
        take(buf, self.proven())
    }
}

/// One item (and, if `proven`, the proof after it) from `buf`, which foca
/// hands over contiguous.
fn take<T: serde::de::DeserializeOwned>(
    mut buf: impl Buf,
    proven: bool,
) -> Result<T, postcard::Error> {
    let chunk = buf.chunk();
    let (item, mut rest) = postcard::take_from_bytes::<T>(chunk)?;
    if proven {
        take_proof(&mut rest)?;
    }
    let used = chunk.len() - rest.len();
    buf.advance(used);
    Ok(item)
}

pub(crate) fn put_proof(out: &mut Vec<u8>, proof: Option<&IdProof>) {
    match proof {
        Some(proof) => {
            out.push(PROOF_SOME);
            out.extend_from_slice(proof);
        }
        None => out.push(PROOF_NONE),
    }
}

fn take_proof(rest: &mut &[u8]) -> Result<Option<IdProof>, postcard::Error> {
    let (&tag, after) = rest
        .split_first()
        .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
    match tag {
        PROOF_NONE => {
            *rest = after;
            Ok(None)
        }
        PROOF_SOME => {
            let (proof, after) = after
                .split_first_chunk::<FACTS_SIGNATURE_BYTES>()
                .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
            *rest = after;
            Ok(Some(*proof))
        }
        _ => Err(postcard::Error::DeserializeBadEncoding),
    }
}

/// An update of a packet, and where its bytes are.
pub(crate) struct Update {
    pub(crate) member: Member<NodeId>,
    pub(crate) proof: Option<IdProof>,
    /// Its bytes, from the member to the end of its proof (if any).
    start: usize,
    /// Where the member ends and its proof starts.
    body_end: usize,
    end: usize,
}

/// A foca packet read as foca reads it.
pub(crate) struct Parsed {
    pub(crate) header: Header<NodeId>,
    pub(crate) src_proof: Option<IdProof>,
    /// Where the header ends, and where its proof does.
    header_body_end: usize,
    header_end: usize,
    /// The updates, when the packet has their count.
    pub(crate) updates: Option<Vec<Update>>,
    /// Where what follows the updates (custom broadcasts) starts.
    rest: usize,
}

/// Reads `packet` (with proofs if `proven`) as foca would; `None` if foca
/// would refuse it.
pub(crate) fn parse(packet: &[u8], proven: bool) -> Option<Parsed> {
    let (header, mut rest) = postcard::take_from_bytes::<Header<NodeId>>(packet).ok()?;
    let header_body_end = packet.len() - rest.len();
    let src_proof = if proven {
        take_proof(&mut rest).ok()?
    } else {
        None
    };
    let header_end = packet.len() - rest.len();
    // foca reads a count of updates whenever two bytes follow the header
    // of anything but a broadcast.
    if matches!(header.message, Message::Broadcast) || rest.len() < 2 {
        return Some(Parsed {
            header,
            src_proof,
            header_body_end,
            header_end,
            updates: None,
            rest: header_end,
        });
    }
    let (count, after) = rest.split_first_chunk::<2>()?;
    rest = after;
    let count = u16::from_be_bytes(*count);
    let mut updates = Vec::with_capacity(usize::from(count).min(MEMBERS_MAX));
    for _ in 0..count {
        let start = packet.len() - rest.len();
        let (member, after) = postcard::take_from_bytes::<Member<NodeId>>(rest).ok()?;
        rest = after;
        let body_end = packet.len() - rest.len();
        let proof = if proven {
            take_proof(&mut rest).ok()?
        } else {
            None
        };
        updates.push(Update {
            member,
            proof,
            start,
            body_end,
            end: packet.len() - rest.len(),
        });
    }
    Some(Parsed {
        header,
        src_proof,
        header_body_end,
        header_end,
        updates: Some(updates),
        rest: packet.len() - rest.len(),
    })
}

impl Parsed {
    /// The packet `packet` was parsed from with only the updates `keep`
    /// wants, byte for byte as they came (proofs included).
    pub(crate) fn keeping(&self, packet: &[u8], keep: impl Fn(usize) -> bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(packet.len());
        out.extend_from_slice(&packet[..self.header_end]);
        if let Some(updates) = &self.updates {
            let kept: Vec<&Update> = updates
                .iter()
                .enumerate()
                .filter(|(index, _)| keep(*index))
                .map(|(_, update)| update)
                .collect();
            // No more than the count read: it fits.
            let count = u16::try_from(kept.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&count.to_be_bytes());
            for update in kept {
                out.extend_from_slice(&packet[update.start..update.end]);
            }
        }
        out.extend_from_slice(&packet[self.rest..]);
        out
    }
}

/// `packet`, written by [`IdentityCodec`], without its proofs: what a
/// node of an older release reads. `None` if it does not parse.
pub(crate) fn strip(packet: &[u8]) -> Option<Vec<u8>> {
    let parsed = parse(packet, true)?;
    let mut out = Vec::with_capacity(packet.len());
    out.extend_from_slice(&packet[..parsed.header_body_end]);
    if let Some(updates) = &parsed.updates {
        let count = u16::try_from(updates.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for update in updates {
            out.extend_from_slice(&packet[update.start..update.body_end]);
        }
    }
    out.extend_from_slice(&packet[parsed.rest..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::{PostcardCodec, State};

    fn id(name: &str, last: u8, boot: u64) -> NodeId {
        NodeId {
            addr: SocketAddr::from(([10, 0, 0, last], 7946)),
            boot,
            name: name.into(),
        }
    }

    fn signer() -> Arc<FactsSigner> {
        Arc::new(FactsSigner::from_pkcs8(&FactsSigner::generate_pkcs8().unwrap()).unwrap())
    }

    fn key(signer: &FactsSigner) -> [u8; FACTS_KEY_BYTES] {
        signing::parse_facts_key(&signer.public_hex()).unwrap()
    }

    /// A packet as foca writes it: header, count, updates, broadcasts.
    fn packet<C: Codec<NodeId>>(
        codec: &mut C,
        src: &NodeId,
        message: Message<NodeId>,
        updates: &[NodeId],
        tail: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let header = Header {
            src: src.clone(),
            src_incarnation: 2,
            dst: id("z", 26, 1),
            message,
        };
        codec.encode_header(&header, &mut out).unwrap();
        out.extend_from_slice(&u16::try_from(updates.len()).unwrap().to_be_bytes());
        for update in updates {
            let member = Member::new(update.clone(), 3, State::Alive);
            codec.encode_member(&member, &mut out).unwrap();
        }
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn a_node_proves_its_own_identities_and_passes_on_what_it_learnt() {
        let (a_key, b_key) = (signer(), signer());
        let a = id("a", 1, 5);
        let proofs = Arc::new(Mutex::new(Proofs::new(
            "c1",
            "a",
            a.addr,
            Some(a_key.clone()),
        )));
        let mut codec = IdentityCodec::new(proofs.clone());
        let b = id("b", 2, 7);
        // b's proof, as b would sign it, learnt from a datagram of b's.
        let b_proof = b_key.sign_identity("c1", &identity_bytes(&b).unwrap());
        assert!(lock(&proofs).check(&b, Some(&b_proof), Some(&key(&b_key))));
        let sent = packet(
            &mut codec,
            &a,
            Message::Ping(1),
            &[b.clone(), id("c", 3, 1)],
            b"bc",
        );
        let parsed = parse(&sent, true).expect("parses");
        assert_eq!(parsed.header.src, a);
        let a_proof = parsed.src_proof.expect("a proves itself");
        assert!(signing::verify_identity(
            &key(&a_key),
            "c1",
            &identity_bytes(&a).unwrap(),
            &a_proof
        ));
        let updates = parsed.updates.as_ref().unwrap();
        assert_eq!(updates[0].member.id(), &b);
        assert_eq!(updates[0].proof, Some(b_proof), "b's proof passed on");
        assert_eq!(updates[1].proof, None, "no proof known for c");
        assert_eq!(&sent[parsed.rest..], b"bc");

        // foca's own decoding reads the same, with proofs or without.
        codec.layout().store(true, Ordering::Relaxed);
        let mut rest = &sent[..];
        assert_eq!(codec.decode_header(&mut rest).unwrap().src, a);
        assert_eq!(u16::from_be_bytes([rest[0], rest[1]]), 2);
        rest = &rest[2..];
        assert_eq!(codec.decode_member(&mut rest).unwrap().id(), &b);
        assert_eq!(codec.decode_member(&mut rest).unwrap().id(), &id("c", 3, 1));
        assert_eq!(rest, b"bc");

        // Without proofs it is what the older release wrote and reads.
        let old = packet(
            &mut PostcardCodec,
            &a,
            Message::Ping(1),
            &[b, id("c", 3, 1)],
            b"bc",
        );
        let stripped = strip(&sent).unwrap();
        assert_eq!(stripped, old);
        codec.layout().store(false, Ordering::Relaxed);
        let mut rest = &stripped[..];
        assert_eq!(codec.decode_header(&mut rest).unwrap().src, a);
    }

    #[test]
    fn a_proof_counts_only_from_the_names_key() {
        let (b_key, x_key) = (signer(), signer());
        let mut proofs = Proofs::new("c1", "a", id("a", 1, 1).addr, None);
        let b = id("b", 2, 7);
        let bytes = identity_bytes(&b).unwrap();
        let good = b_key.sign_identity("c1", &bytes);
        let forged = x_key.sign_identity("c1", &bytes);
        let newer = id("b", 2, 8);
        assert!(
            !proofs.check(&b, Some(&forged), Some(&key(&b_key))),
            "another key"
        );
        assert!(!proofs.check(&b, None, Some(&key(&b_key))), "none");
        assert!(
            !proofs.check(&newer, Some(&good), Some(&key(&b_key))),
            "another boot"
        );
        assert!(
            !proofs.check(
                &b,
                Some(&b_key.sign_identity("c2", &bytes)),
                Some(&key(&b_key))
            ),
            "another cluster"
        );
        assert!(proofs.check(&b, Some(&good), Some(&key(&b_key))));
        assert!(
            proofs.check(&b, Some(&good), Some(&key(&b_key))),
            "again, from the cache"
        );
        assert!(
            !proofs.check(&b, Some(&forged), Some(&key(&b_key))),
            "cache holds good only"
        );
        // No key known: taken, and nothing kept (nor replaced).
        assert!(proofs.check(&b, Some(&forged), None));
        assert_eq!(proofs.proof(&b), Some(good));
        assert!(proofs.check(&newer, Some(&forged), None));
        assert_eq!(proofs.proof(&newer), None);
        assert_eq!(proofs.len(), 1);
        proofs.retain(|kept| kept != &b);
        assert_eq!(proofs.len(), 0);
    }

    /// A node signs the identity it sends under, and nothing it is told
    /// about: an update naming its name and address with a newer boot goes
    /// out without a proof, and what others say about its own identity
    /// never replaces the proof it made.
    #[test]
    fn a_node_signs_only_what_it_sends_under() {
        let a_key = signer();
        let a = id("a", 1, 5);
        let proofs = Arc::new(Mutex::new(Proofs::new(
            "c1",
            "a",
            a.addr,
            Some(a_key.clone()),
        )));
        let mut codec = IdentityCodec::new(proofs.clone());
        let forged_newer = id("a", 1, 1_000_000);
        // Told about first, before it ever sent under a: no proof either.
        let sent = packet(
            &mut codec,
            &id("z", 9, 1),
            Message::Gossip,
            std::slice::from_ref(&a),
            b"",
        );
        let parsed = parse(&sent, true).unwrap();
        assert_eq!(parsed.src_proof, None, "z is not this node");
        assert_eq!(parsed.updates.as_ref().unwrap()[0].proof, None);
        let sent = packet(
            &mut codec,
            &a,
            Message::Gossip,
            &[forged_newer.clone(), a.clone()],
            b"",
        );
        let parsed = parse(&sent, true).unwrap();
        let own = parsed.src_proof.expect("its own identity");
        let updates = parsed.updates.as_ref().unwrap();
        assert_eq!(updates[0].proof, None, "a newer boot it never had");
        assert_eq!(updates[1].proof, Some(own), "its own, as it sent under it");
        // Its own proof, checked with its own key: taken, and not kept in
        // the place of the one it made.
        let mut guard = lock(&proofs);
        let junk = signer().sign_identity("c1", &identity_bytes(&a).unwrap());
        assert!(!guard.check(&a, Some(&junk), Some(&key(&a_key))));
        assert!(guard.check(&a, Some(&own), Some(&key(&a_key))));
        assert_eq!(guard.proof(&a), Some(own));
        assert_eq!(guard.len(), 0);
        // Another node's identity is never signed here, even when sent
        // under (foca only sends under its own).
        assert_eq!(guard.sender_proof(&id("c", 3, 1)), None);
        assert!(guard.is_own(&forged_newer) && !guard.is_own(&id("a", 2, 5)));
    }

    #[test]
    fn updates_are_kept_or_dropped_byte_for_byte() {
        let proofs = Arc::new(Mutex::new(Proofs::new(
            "c1",
            "a",
            id("a", 1, 1).addr,
            Some(signer()),
        )));
        let mut codec = IdentityCodec::new(proofs);
        let a = id("a", 1, 1);
        let sent = packet(
            &mut codec,
            &a,
            Message::Gossip,
            &[id("b", 2, 1), a.clone(), id("c", 3, 1)],
            b"t",
        );
        let parsed = parse(&sent, true).unwrap();
        let kept = parsed.keeping(&sent, |index| index != 0);
        assert_eq!(
            kept,
            packet(
                &mut codec,
                &a,
                Message::Gossip,
                &[a.clone(), id("c", 3, 1)],
                b"t"
            )
        );
        // A broadcast has no updates; what does not parse is none.
        let broadcast = {
            let mut out = Vec::new();
            let header = Header {
                src: a.clone(),
                src_incarnation: 0,
                dst: a.clone(),
                message: Message::Broadcast,
            };
            codec.encode_header(&header, &mut out).unwrap();
            out.extend_from_slice(b"facts");
            out
        };
        let parsed = parse(&broadcast, true).unwrap();
        assert!(parsed.updates.is_none());
        assert_eq!(parsed.keeping(&broadcast, |_| false), broadcast);
        assert!(parse(&sent[..sent.len() - 40], true).is_none());
        assert!(parse(&sent, false).is_none(), "proofs read as members");
    }
}

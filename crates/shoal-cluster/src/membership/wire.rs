//! The envelope around every gossip datagram, in two versions.
//!
//! Version 1, plaintext: it names the cluster, so two clusters sharing a
//! network never merge, but anyone who knows the cluster id can speak.
//!
//! ```text
//! 0      4   5                    13
//! | SHGS | 1 | fnv1a64(cluster id) | foca packet ...
//! ```
//!
//! Version 2, sealed:
//!
//! ```text
//! 0      4   5          9          33
//! | SHGS | 2 | key id   | nonce 24 | XChaCha20-Poly1305(
//!                                      session u64 | sequence u64 | sent at ms u64 | foca packet
//!                                    ) + tag 16
//! ```
//!
//! The additional data is the 9-byte header and a hash of the cluster id,
//! so a packet of another cluster, of a key not in the ring, or changed on
//! the way fails to open. Inside, the sender's session (random per process
//! start), a sequence number and its clock let the receiver drop replays:
//! a packet more than [`SKEW_MAX_MS`] from the receiver's clock, or whose
//! (session, sequence) it has seen, is dropped. Nothing but the key id is
//! in clear: no name, address or label.
//!
//! Version 3 is version 2 with proven identities inside: the foca packet
//! carries a proof after its sender and after each update (see `codec`).
//! The version byte is part of the additional data, so no one can pass a
//! packet of one version off as the other.
//!
//! Which versions a member sends and takes is its [`GossipSealing`]: a
//! cluster speaks version 1 until every node reads sealed gossip, then
//! version 2 only until every node reads proven identities, then version 3
//! only (see ARCHITECTURE.md, "Versions").

use std::collections::HashMap;
use std::fmt;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::config::GossipSealing;

/// First bytes of every datagram.
pub(crate) const MAGIC: [u8; 4] = *b"SHGS";
/// The plaintext envelope.
pub(crate) const WIRE_PLAIN: u8 = 1;
/// The sealed envelope.
pub(crate) const WIRE_SEALED: u8 = 2;
/// The sealed envelope around a packet with proven identities.
pub(crate) const WIRE_PROVEN: u8 = 3;
/// Bytes in front of the foca packet in a plaintext datagram.
pub(crate) const PREFIX_LEN: usize = MAGIC.len() + 1 + 8;
/// Bytes in front of the ciphertext of a sealed one.
pub(crate) const HEADER_LEN: usize = MAGIC.len() + 1 + 4 + 24;
/// Session, sequence and clock in front of the foca packet.
const INNER_LEN: usize = 8 + 8 + 8;
const TAG_LEN: usize = 16;
/// What sealing adds to a foca packet (more than the plaintext prefix).
pub(crate) const OVERHEAD: usize = HEADER_LEN + INNER_LEN + TAG_LEN;
/// A sealed packet further than this from the receiver's clock is dropped:
/// the nodes' clocks must agree within it, as the certificates a node signs
/// (backdated by as much) need anyway.
pub const SKEW_MAX_MS: u64 = 60_000;
/// Keys in a ring at once.
pub const KEYS_MAX: usize = 4;
/// Sequence numbers remembered per sender session.
const WINDOW: u64 = 1024;
/// Sender sessions remembered at once.
const SESSIONS_MAX: usize = super::MEMBERS_MAX * 2;

pub(crate) type Prefix = [u8; PREFIX_LEN];

/// The plaintext envelope for one cluster.
pub(crate) fn prefix(cluster_id: &str) -> Prefix {
    let mut out = [0u8; PREFIX_LEN];
    out[..4].copy_from_slice(&MAGIC);
    out[4] = WIRE_PLAIN;
    out[5..].copy_from_slice(&cluster_hash(cluster_id).to_be_bytes());
    out
}

/// Why a datagram was dropped before reaching foca.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Not ours at all: too short, wrong magic or unknown version.
    Malformed,
    /// A plaintext datagram of another cluster.
    OtherCluster,
    /// A plaintext datagram where only sealed ones are taken.
    Unsealed,
    /// Shorter than a sealed packet can be.
    Truncated,
    /// Sealed with a key id this node's ring does not hold (or the node
    /// holds no ring yet).
    UnknownKey,
    /// Does not authenticate: forged, changed, another cluster's.
    Forged,
    /// A (session, sequence) seen already.
    Replayed,
    /// Sent too long ago, or from too far in the future.
    Stale,
    /// A sealed datagram without proofs (version 2) where only version 3
    /// is taken (plaintext there is `Unsealed`).
    Unproven,
}

/// The version of the envelope `datagram` claims, if it is one of ours.
pub(crate) fn version(datagram: &[u8]) -> Option<u8> {
    match datagram {
        [m0, m1, m2, m3, version, ..] if [*m0, *m1, *m2, *m3] == MAGIC => Some(*version),
        _ => None,
    }
}

/// The foca packet inside a plaintext `datagram` if it belongs to this
/// cluster.
pub(crate) fn open<'a>(expected: &Prefix, datagram: &'a [u8]) -> Result<&'a [u8], Reject> {
    let (head, body) = datagram
        .split_at_checked(PREFIX_LEN)
        .ok_or(Reject::Malformed)?;
    if head[..4] != MAGIC || head[4] != WIRE_PLAIN {
        return Err(Reject::Malformed);
    }
    if head[5..] != expected[5..] {
        return Err(Reject::OtherCluster);
    }
    if body.is_empty() {
        return Err(Reject::Malformed);
    }
    Ok(body)
}

/// How a member wraps the datagrams it sends and unwraps the ones it
/// takes; swapped whole when the sealing changes.
pub(crate) struct Envelope {
    prefix: Prefix,
    sealer: Option<Sealer>,
    send_sealed: bool,
    accept_plaintext: bool,
    send_proofs: bool,
    accept_unproven: bool,
}

/// A datagram opened: where its foca packet is, and how it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Opened {
    pub(crate) range: std::ops::Range<usize>,
    /// Its envelope's version: [`WIRE_PLAIN`], [`WIRE_SEALED`] or
    /// [`WIRE_PROVEN`].
    pub(crate) version: u8,
}

impl Envelope {
    pub(crate) fn new(
        sealing: &GossipSealing,
        cluster_id: &str,
        session: u64,
    ) -> Result<Envelope, String> {
        sealing.check()?;
        let sealer = match &sealing.keyring {
            Some(ring) => Some(Sealer::new(ring, cluster_id, session)?),
            None => None,
        };
        Ok(Envelope {
            prefix: prefix(cluster_id),
            sealer,
            send_sealed: sealing.send_sealed,
            accept_plaintext: sealing.accept_plaintext,
            send_proofs: sealing.send_proofs,
            accept_unproven: sealing.accept_unproven,
        })
    }

    /// Whether what is sent keeps its proofs (version 3); if not, the
    /// caller takes them out of the packet before [`Envelope::wrap`].
    pub(crate) fn sends_proofs(&self) -> bool {
        self.send_proofs
    }

    /// Wraps `packet` into `out` (cleared first); the version it used.
    pub(crate) fn wrap(
        &self,
        sequence: u64,
        now_ms: u64,
        packet: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u8, String> {
        match &self.sealer {
            Some(sealer) if self.send_sealed => {
                let version = if self.send_proofs {
                    WIRE_PROVEN
                } else {
                    WIRE_SEALED
                };
                sealer.seal(version, sequence, now_ms, packet, out)?;
                Ok(version)
            }
            _ => {
                out.clear();
                out.extend_from_slice(&self.prefix);
                out.extend_from_slice(packet);
                Ok(WIRE_PLAIN)
            }
        }
    }

    /// The foca packet inside `datagram` (opened in place).
    pub(crate) fn unwrap(
        &self,
        datagram: &mut [u8],
        now_ms: u64,
        seen: &mut Replays,
    ) -> Result<Opened, Reject> {
        match version(datagram) {
            Some(WIRE_PLAIN) if !self.accept_plaintext => {
                // Say so only for this cluster's plaintext.
                open(&self.prefix, datagram)?;
                Err(Reject::Unsealed)
            }
            Some(WIRE_PLAIN) => {
                let len = open(&self.prefix, datagram)?.len();
                Ok(Opened {
                    range: datagram.len() - len..datagram.len(),
                    version: WIRE_PLAIN,
                })
            }
            Some(version @ (WIRE_SEALED | WIRE_PROVEN)) => {
                let sealer = self.sealer.as_ref().ok_or(Reject::UnknownKey)?;
                let range = sealer.open(datagram, now_ms, seen)?;
                // Only once it opened: the version byte is authenticated.
                if version == WIRE_SEALED && !self.accept_unproven {
                    return Err(Reject::Unproven);
                }
                Ok(Opened { range, version })
            }
            _ => Err(Reject::Malformed),
        }
    }
}

/// The keys gossip is sealed with: every key opens, the primary seals.
/// Delivered to nodes over mTLS; rotated by installing a key, making it
/// primary, then removing the old one, so no member ever fails to open a
/// packet of another.
/// Unknown fields are ignored: a newer release may add some.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKeyring {
    pub keys: Vec<GossipKey>,
    pub primary: u32,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKey {
    pub id: u32,
    /// 32 bytes, hex.
    pub key: String,
    /// When it was made (ms since the epoch): the leader rotates by age.
    #[serde(default)]
    pub created_ms: u64,
}

impl Drop for GossipKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl fmt::Debug for GossipKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<u32> = self.keys.iter().map(|key| key.id).collect();
        write!(f, "GossipKeyring(ids {ids:?}, primary {})", self.primary)
    }
}

impl GossipKeyring {
    /// A ring of one new random key, made at `created_ms`.
    pub fn generate(id: u32, created_ms: u64) -> GossipKeyring {
        let mut key = [0u8; 32];
        rand::fill(&mut key[..]);
        let ring = GossipKeyring {
            keys: vec![GossipKey {
                id,
                key: hex::encode(key),
                created_ms,
            }],
            primary: id,
        };
        key.zeroize();
        ring
    }

    /// Checks the ring: 1 to [`KEYS_MAX`] keys of 32 bytes, distinct ids,
    /// the primary among them.
    pub fn check(&self) -> Result<(), String> {
        if self.keys.is_empty() || self.keys.len() > KEYS_MAX {
            return Err(format!(
                "a gossip keyring holds 1 to {KEYS_MAX} keys, not {}",
                self.keys.len()
            ));
        }
        for (index, key) in self.keys.iter().enumerate() {
            if self.keys[..index].iter().any(|other| other.id == key.id) {
                return Err(format!("gossip key id {} appears twice", key.id));
            }
            let mut bytes = [0u8; 32];
            if hex::decode_to_slice(&key.key, &mut bytes).is_err() {
                return Err(format!("gossip key {} is not 64 hex digits", key.id));
            }
            bytes.zeroize();
        }
        if !self.keys.iter().any(|key| key.id == self.primary) {
            return Err(format!(
                "the primary gossip key {} is not in the ring",
                self.primary
            ));
        }
        Ok(())
    }

    pub fn ids(&self) -> Vec<u32> {
        self.keys.iter().map(|key| key.id).collect()
    }
}

/// The ring ready to seal and open, for one cluster.
pub(crate) struct Sealer {
    ciphers: Vec<(u32, XChaCha20Poly1305)>,
    primary: u32,
    cluster_hash: [u8; 8],
    session: u64,
}

impl Sealer {
    pub(crate) fn new(
        ring: &GossipKeyring,
        cluster_id: &str,
        session: u64,
    ) -> Result<Sealer, String> {
        ring.check()?;
        let mut ciphers = Vec::with_capacity(ring.keys.len());
        for key in &ring.keys {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(&key.key, &mut bytes)
                .map_err(|_| format!("gossip key {} is not 64 hex digits", key.id))?;
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
                .map_err(|_| "a gossip key is 32 bytes".to_string())?;
            bytes.zeroize();
            ciphers.push((key.id, cipher));
        }
        Ok(Sealer {
            ciphers,
            primary: ring.primary,
            cluster_hash: cluster_hash(cluster_id).to_be_bytes(),
            session,
        })
    }

    fn aad(&self, header: &[u8]) -> [u8; HEADER_LEN + 8] {
        let mut aad = [0u8; HEADER_LEN + 8];
        aad[..HEADER_LEN].copy_from_slice(header);
        aad[HEADER_LEN..].copy_from_slice(&self.cluster_hash);
        aad
    }

    /// Seals `packet` into `out` (cleared first), in envelope `version`
    /// ([`WIRE_SEALED`] or [`WIRE_PROVEN`]).
    pub(crate) fn seal(
        &self,
        version: u8,
        sequence: u64,
        now_ms: u64,
        packet: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let (id, cipher) = self
            .ciphers
            .iter()
            .find(|(id, _)| *id == self.primary)
            .ok_or_else(|| "no primary gossip key".to_string())?;
        let mut nonce = [0u8; 24];
        rand::fill(&mut nonce[..]);
        out.clear();
        out.extend_from_slice(&MAGIC);
        out.push(version);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&nonce);
        let aad = self.aad(&out[..HEADER_LEN]);
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&sequence.to_be_bytes());
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(packet);
        let tag = cipher
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                &aad,
                out[HEADER_LEN..].as_mut().into(),
            )
            .map_err(|_| "sealing a gossip packet failed".to_string())?;
        out.extend_from_slice(tag.as_slice());
        Ok(())
    }

    /// Opens a datagram in place; returns the range of the foca packet.
    pub(crate) fn open(
        &self,
        datagram: &mut [u8],
        now_ms: u64,
        seen: &mut Replays,
    ) -> Result<std::ops::Range<usize>, Reject> {
        if datagram.len() < MAGIC.len() + 1
            || datagram[..4] != MAGIC
            || !matches!(datagram[4], WIRE_SEALED | WIRE_PROVEN)
        {
            return Err(Reject::Malformed);
        }
        if datagram.len() < OVERHEAD + 1 {
            return Err(Reject::Truncated);
        }
        let id = u32::from_be_bytes([datagram[5], datagram[6], datagram[7], datagram[8]]);
        let cipher = self
            .ciphers
            .iter()
            .find(|(known, _)| *known == id)
            .map(|(_, cipher)| cipher)
            .ok_or(Reject::UnknownKey)?;
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&datagram[9..HEADER_LEN]);
        let aad = self.aad(&datagram[..HEADER_LEN]);
        let (sealed, tag) = datagram.split_at_mut(datagram.len() - TAG_LEN);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| Reject::Truncated)?;
        cipher
            .decrypt_inout_detached(
                &XNonce::from(nonce),
                &aad,
                sealed[HEADER_LEN..].as_mut().into(),
                &tag.into(),
            )
            .map_err(|_| Reject::Forged)?;
        let inner = &sealed[HEADER_LEN..];
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&inner[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        let (session, sequence, sent_ms) = (word(0), word(8), word(16));
        if sent_ms.abs_diff(now_ms) > SKEW_MAX_MS {
            return Err(Reject::Stale);
        }
        if !seen.first_time(session, sequence, now_ms) {
            return Err(Reject::Replayed);
        }
        Ok(HEADER_LEN + INNER_LEN..datagram.len() - TAG_LEN)
    }
}

/// The (session, sequence) pairs seen lately, per sender session: a
/// sliding window of [`WINDOW`] sequence numbers each, at most
/// [`SESSIONS_MAX`] sessions (the least recently heard forgotten first).
#[derive(Default)]
pub(crate) struct Replays {
    sessions: HashMap<u64, Window>,
}

struct Window {
    /// The highest sequence seen.
    top: u64,
    /// Bit i: `top - i` was seen.
    bits: [u64; (WINDOW / 64) as usize],
    heard_ms: u64,
}

impl Replays {
    /// Whether this is the first time (`session`, `sequence`) is seen;
    /// records it.
    pub(crate) fn first_time(&mut self, session: u64, sequence: u64, now_ms: u64) -> bool {
        if !self.sessions.contains_key(&session) && self.sessions.len() >= SESSIONS_MAX {
            if let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, window)| window.heard_ms)
                .map(|(session, _)| *session)
            {
                self.sessions.remove(&oldest);
            }
        }
        let window = self.sessions.entry(session).or_insert(Window {
            top: sequence,
            bits: [0; (WINDOW / 64) as usize],
            heard_ms: now_ms,
        });
        window.heard_ms = now_ms;
        if sequence > window.top {
            let shift = sequence - window.top;
            window.shift(shift);
            window.top = sequence;
        }
        let behind = window.top - sequence;
        if behind >= WINDOW {
            return false; // too old to tell: treat as replayed
        }
        let (word, bit) = ((behind / 64) as usize, behind % 64);
        let seen = window.bits[word] & (1 << bit) != 0;
        window.bits[word] |= 1 << bit;
        !seen
    }
}

impl Window {
    /// Moves the window `by` sequence numbers up.
    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.bits = [0; (WINDOW / 64) as usize];
            return;
        }
        let words = (by / 64) as usize;
        let bits = by % 64;
        let mut next = [0u64; (WINDOW / 64) as usize];
        for (index, slot) in next.iter_mut().enumerate() {
            let from = index.checked_sub(words);
            let Some(from) = from else { continue };
            let mut value = self.bits[from] << bits;
            if bits > 0 && from > 0 {
                value |= self.bits[from - 1] >> (64 - bits);
            }
            *slot = value;
        }
        self.bits = next;
    }
}

/// FNV-1a, 64 bits, over a domain tag and the cluster id: stable across
/// builds and platforms (unlike std's hasher), which is all this needs.
fn cluster_hash(cluster_id: &str) -> u64 {
    shoal_types::stable::fnv1a64(
        b"shoal-gossip-cluster\0"
            .iter()
            .copied()
            .chain(cluster_id.bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_own_cluster_only() {
        let x = prefix("x");
        let y = prefix("y");
        let mut packet = x.to_vec();
        packet.extend_from_slice(b"data");
        assert_eq!(open(&x, &packet), Ok(&b"data"[..]));
        assert_eq!(open(&y, &packet), Err(Reject::OtherCluster));
        assert_eq!(open(&x, &packet[..5]), Err(Reject::Malformed));
        assert_eq!(open(&x, &x), Err(Reject::Malformed));
        let mut other_version = packet.clone();
        other_version[4] = WIRE_PROVEN + 1;
        assert_eq!(open(&x, &other_version), Err(Reject::Malformed));
        assert_eq!(open(&x, b"GET / HTTP/1.1\r\n\r\n"), Err(Reject::Malformed));
    }

    #[test]
    fn hash_is_stable() {
        // Changing this breaks plaintext gossip between releases.
        let mut expected = *b"SHGS\x01\0\0\0\0\0\0\0\0";
        expected[5..].copy_from_slice(&0x62cc_8051_9397_51a2_u64.to_be_bytes());
        assert_eq!(prefix("shoal"), expected);
        assert_ne!(prefix("shoal")[5..], prefix("shoal2")[5..]);
    }

    fn sealer(ring: &GossipKeyring, cluster: &str) -> Sealer {
        Sealer::new(ring, cluster, 42).expect("sealer")
    }

    fn fuzz_ring() -> &'static GossipKeyring {
        static RING: std::sync::OnceLock<GossipKeyring> = std::sync::OnceLock::new();
        RING.get_or_init(|| GossipKeyring::generate(1, 0))
    }

    proptest::proptest! {
        /// Any bytes at all, and any sealed datagram of the ring with one
        /// byte changed, cut short or grown: dropped with a reason, never
        /// opened, never a panic; the datagram as sealed opens to exactly
        /// its packet, once.
        #[test]
        fn the_gossip_frame_opens_only_what_the_ring_sealed(
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..1500),
            packet in proptest::collection::vec(proptest::num::u8::ANY, 1..1200),
            at in 0usize..2000,
            flip in 1u8..=255,
            cut in 0usize..2000,
            sequence in 0u64..1 << 40,
        ) {
            let a = sealer(fuzz_ring(), "x");
            let now = 1_000_000;
            let mut seen = Replays::default();
            // Noise, and noise that starts like a sealed datagram.
            let mut bytes = noise.clone();
            proptest::prop_assert!(a.open(&mut bytes, now, &mut seen).is_err());
            let mut framed = MAGIC.to_vec();
            framed.push(WIRE_SEALED);
            framed.extend_from_slice(&1u32.to_be_bytes());
            framed.extend_from_slice(&noise);
            proptest::prop_assert!(a.open(&mut framed, now, &mut seen).is_err());
            // The plaintext envelope takes only its own prefix.
            let x = prefix("x");
            if let Ok(inner) = open(&x, &noise) {
                proptest::prop_assert!(noise.starts_with(&x));
                proptest::prop_assert_eq!(inner, &noise[x.len()..]);
            }
            let mut sealed = Vec::new();
            a.seal(WIRE_SEALED, sequence, now, &packet, &mut sealed).expect("seal");
            proptest::prop_assert_eq!(sealed.len(), packet.len() + OVERHEAD);
            // One byte changed anywhere.
            let mut bent = sealed.clone();
            let at = at % bent.len();
            bent[at] ^= flip;
            proptest::prop_assert!(a.open(&mut bent, now, &mut Replays::default()).is_err());
            // Cut short, or with bytes after it.
            let mut short = sealed[..cut % sealed.len()].to_vec();
            proptest::prop_assert!(a.open(&mut short, now, &mut Replays::default()).is_err());
            let mut long = sealed.clone();
            long.extend_from_slice(&noise[..noise.len().min(1 + cut % 64)]);
            if long.len() > sealed.len() {
                proptest::prop_assert!(a.open(&mut long, now, &mut Replays::default()).is_err());
            }
            // As sealed: its packet, once.
            let mut good = sealed.clone();
            let range = a.open(&mut good, now, &mut seen).expect("opens");
            proptest::prop_assert_eq!(&good[range], &packet[..]);
            let mut again = sealed.clone();
            proptest::prop_assert_eq!(a.open(&mut again, now, &mut seen), Err(Reject::Replayed));
        }
    }

    #[test]
    fn opens_what_the_ring_sealed_once() {
        let ring = GossipKeyring::generate(1, 0);
        let a = sealer(&ring, "x");
        let mut out = Vec::new();
        a.seal(WIRE_SEALED, 1, 1_000, b"data", &mut out)
            .expect("seal");
        let mut seen = Replays::default();
        let mut copy = out.clone();
        let range = a.open(&mut copy, 1_000, &mut seen).expect("open");
        assert_eq!(&copy[range], b"data");
        // The same bytes again: a replay.
        let mut again = out.clone();
        assert_eq!(a.open(&mut again, 1_001, &mut seen), Err(Reject::Replayed));
        // Another cluster's sealer with the same key cannot open it.
        let mut other = out.clone();
        assert_eq!(
            sealer(&ring, "y").open(&mut other, 1_000, &mut Replays::default()),
            Err(Reject::Forged)
        );
        // Too old, or from the future.
        let mut late = out.clone();
        assert_eq!(
            a.open(&mut late, 1_000 + SKEW_MAX_MS + 1, &mut Replays::default()),
            Err(Reject::Stale)
        );
        // Another key.
        let mut foreign = out.clone();
        assert_eq!(
            sealer(&GossipKeyring::generate(2, 0), "x").open(
                &mut foreign,
                1_000,
                &mut Replays::default()
            ),
            Err(Reject::UnknownKey)
        );
        let mut wrong_key = out.clone();
        assert_eq!(
            sealer(&GossipKeyring::generate(1, 0), "x").open(
                &mut wrong_key,
                1_000,
                &mut Replays::default()
            ),
            Err(Reject::Forged)
        );
        for at in 0..out.len() {
            let mut bent = out.clone();
            bent[at] ^= 0x20;
            assert!(
                a.open(&mut bent, 1_000, &mut Replays::default()).is_err(),
                "byte {at} changed and still opened"
            );
        }
        let mut short = out[..OVERHEAD].to_vec();
        assert_eq!(a.open(&mut short, 1_000, &mut seen), Err(Reject::Truncated));
        let mut plain = prefix("x").to_vec();
        plain.extend_from_slice(b"data");
        assert_eq!(a.open(&mut plain, 1_000, &mut seen), Err(Reject::Malformed));
    }

    #[test]
    fn the_replay_window_slides() {
        let mut seen = Replays::default();
        assert!(seen.first_time(1, 5, 0));
        assert!(!seen.first_time(1, 5, 0));
        assert!(seen.first_time(1, 3, 0));
        assert!(seen.first_time(1, 700, 0));
        assert!(!seen.first_time(1, 700, 0));
        assert!(!seen.first_time(1, 5, 0), "5 was seen");
        assert!(seen.first_time(1, 4, 0));
        assert!(seen.first_time(1, 5000, 0));
        assert!(!seen.first_time(1, 700, 0), "out of the window: refused");
        assert!(seen.first_time(2, 5, 0), "another session");
    }

    #[test]
    fn rings_are_checked() {
        let mut ring = GossipKeyring::generate(1, 0);
        assert!(ring.check().is_ok());
        ring.primary = 9;
        assert!(ring.check().is_err());
        let mut twice = GossipKeyring::generate(1, 0);
        twice.keys.push(twice.keys[0].clone());
        assert!(twice.check().is_err());
        let mut bad = GossipKeyring::generate(1, 0);
        bad.keys[0].key = "zz".into();
        assert!(bad.check().is_err());
        let ring = GossipKeyring::generate(3, 0);
        assert!(!format!("{ring:?}").contains(&ring.keys[0].key));
    }

    #[test]
    fn the_envelope_sends_and_takes_what_its_sealing_says() {
        let ring = GossipKeyring::generate(1, 0);
        let envelope = |sealing: GossipSealing| Envelope::new(&sealing, "x", 7).expect("envelope");
        let old = envelope(GossipSealing::plaintext(None));
        let keyed = envelope(GossipSealing::plaintext(Some(ring.clone())));
        let grace = envelope(GossipSealing {
            send_sealed: true,
            ..GossipSealing::plaintext(Some(ring.clone()))
        });
        let sealed = envelope(GossipSealing::sealed(ring.clone()));
        let proving = envelope(GossipSealing {
            send_proofs: true,
            ..GossipSealing::sealed(ring.clone())
        });
        let proven = envelope(GossipSealing::proven(ring.clone()));
        let wrap = |envelope: &Envelope, sequence: u64| {
            let mut out = Vec::new();
            let version = envelope
                .wrap(sequence, 1_000, b"data", &mut out)
                .expect("wrap");
            (out, version)
        };
        let unwrap = |envelope: &Envelope, datagram: &[u8]| {
            let mut copy = datagram.to_vec();
            envelope
                .unwrap(&mut copy, 1_000, &mut Replays::default())
                .map(|opened| (copy[opened.range].to_vec(), opened.version))
        };
        let (plain, version) = wrap(&keyed, 1);
        assert_eq!(version, WIRE_PLAIN);
        assert_eq!(&plain[..PREFIX_LEN], &prefix("x"));
        let (sealed_bytes, version) = wrap(&grace, 2);
        assert_eq!(version, WIRE_SEALED);
        assert_eq!(wrap(&sealed, 3).0[4], WIRE_SEALED);
        assert_eq!(
            wrap(&old, 4).0,
            plain,
            "plaintext does not depend on the ring"
        );
        let (proven_bytes, version) = wrap(&proving, 5);
        assert_eq!((version, proven_bytes[4]), (WIRE_PROVEN, WIRE_PROVEN));
        assert!(!sealed.sends_proofs() && proving.sends_proofs() && proven.sends_proofs());
        let data = (b"data".to_vec(), WIRE_PLAIN);
        let opened = (b"data".to_vec(), WIRE_SEALED);
        let opened_proven = (b"data".to_vec(), WIRE_PROVEN);
        // A node without the ring hears plaintext only.
        assert_eq!(unwrap(&old, &plain), Ok(data.clone()));
        assert_eq!(unwrap(&old, &sealed_bytes), Err(Reject::UnknownKey));
        // With the ring, both, until it takes sealed datagrams only.
        assert_eq!(unwrap(&keyed, &plain), Ok(data.clone()));
        assert_eq!(unwrap(&keyed, &sealed_bytes), Ok(opened.clone()));
        assert_eq!(unwrap(&grace, &plain), Ok(data));
        assert_eq!(unwrap(&sealed, &sealed_bytes), Ok(opened.clone()));
        assert_eq!(unwrap(&sealed, &plain), Err(Reject::Unsealed));
        // Proven identities are taken by every node with the ring; the
        // others until the node takes only those.
        assert_eq!(unwrap(&keyed, &proven_bytes), Ok(opened_proven.clone()));
        assert_eq!(unwrap(&sealed, &proven_bytes), Ok(opened_proven.clone()));
        assert_eq!(unwrap(&proving, &sealed_bytes), Ok(opened));
        assert_eq!(unwrap(&proven, &proven_bytes), Ok(opened_proven));
        assert_eq!(unwrap(&proven, &sealed_bytes), Err(Reject::Unproven));
        assert_eq!(unwrap(&proven, &plain), Err(Reject::Unsealed));
        // The version byte cannot be changed on the way.
        let mut passed_off = proven_bytes.clone();
        passed_off[4] = WIRE_SEALED;
        assert_eq!(unwrap(&sealed, &passed_off), Err(Reject::Forged));
        let mut passed_off = sealed_bytes.clone();
        passed_off[4] = WIRE_PROVEN;
        assert_eq!(unwrap(&proven, &passed_off), Err(Reject::Forged));
        // Another cluster's plaintext stays that, and garbage is garbage.
        let mut foreign = prefix("y").to_vec();
        foreign.extend_from_slice(b"data");
        assert_eq!(unwrap(&sealed, &foreign), Err(Reject::OtherCluster));
        assert_eq!(unwrap(&sealed, b"SHGS\x04data"), Err(Reject::Malformed));
        assert_eq!(unwrap(&keyed, b"GET /"), Err(Reject::Malformed));
        assert!(Envelope::new(
            &GossipSealing {
                accept_plaintext: false,
                ..GossipSealing::plaintext(None)
            },
            "x",
            7
        )
        .is_err());
        // Proofs go only in sealed datagrams, and a node that takes
        // plaintext cannot refuse what is not proven.
        for bent in [
            GossipSealing {
                send_sealed: false,
                ..GossipSealing::proven(ring.clone())
            },
            GossipSealing {
                accept_plaintext: true,
                ..GossipSealing::proven(ring.clone())
            },
        ] {
            assert!(Envelope::new(&bent, "x", 7).is_err(), "{bent:?}");
        }
    }
}

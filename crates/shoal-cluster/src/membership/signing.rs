//! Facts signed by the node they are about.
//!
//! Every holder of the gossip keyring can seal a datagram, so the seal
//! says only that a member of the cluster sent it, not which. A node's
//! facts (its addresses, Raft id, resources, labels, release, whether it
//! left) decide what the leader does with it, so each node signs its own
//! with an Ed25519 key of its own ([`FactsSigner`]), whose public half the
//! replicated state holds for the node's admission (the node records it
//! itself, over its mTLS identity). A member takes the facts of a node
//! whose key it knows only when that key signed them.
//!
//! What is signed: a fixed context, the cluster id, and the broadcast's
//! bytes as they travel (the same bytes every release reads), so a
//! signature is good for one cluster and one broadcast only.

use std::collections::HashMap;
use std::fmt;

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use zeroize::Zeroizing;

/// Bytes of an Ed25519 public key and of a signature.
pub const FACTS_KEY_BYTES: usize = 32;
pub const FACTS_SIGNATURE_BYTES: usize = 64;

/// What signs, before the cluster id and the facts.
const CONTEXT: &[u8] = b"shoal gossip facts v1\0";
/// What signs, before the cluster id and a SWIM identity (`codec`).
const IDENTITY_CONTEXT: &[u8] = b"shoal gossip identity v1\0";

/// The public keys facts are checked with, by node name.
pub type FactsKeys = HashMap<String, [u8; FACTS_KEY_BYTES]>;

/// This node's facts key.
pub struct FactsSigner {
    pair: Ed25519KeyPair,
}

#[derive(Debug, thiserror::Error)]
pub enum FactsKeyError {
    #[error("the facts key does not read (PKCS#8 Ed25519 expected): {0}")]
    Unreadable(String),
    #[error("making a facts key: {0}")]
    Generate(String),
}

impl FactsSigner {
    /// A new key, as PKCS#8 (what [`FactsSigner::from_pkcs8`] reads).
    pub fn generate_pkcs8() -> Result<Zeroizing<Vec<u8>>, FactsKeyError> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|document| Zeroizing::new(document.as_ref().to_vec()))
            .map_err(|error| FactsKeyError::Generate(error.to_string()))
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<FactsSigner, FactsKeyError> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(|pair| FactsSigner { pair })
            .map_err(|error| FactsKeyError::Unreadable(error.to_string()))
    }

    /// The public key, as 64 lowercase hex digits (as the state keeps it).
    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    pub(crate) fn sign(&self, cluster_id: &str, facts: &[u8]) -> [u8; FACTS_SIGNATURE_BYTES] {
        self.sign_message(&message(CONTEXT, cluster_id, facts))
    }

    /// The proof of one of this node's SWIM identities, given as the bytes
    /// it travels as.
    pub(crate) fn sign_identity(
        &self,
        cluster_id: &str,
        identity: &[u8],
    ) -> [u8; FACTS_SIGNATURE_BYTES] {
        self.sign_message(&message(IDENTITY_CONTEXT, cluster_id, identity))
    }

    fn sign_message(&self, message: &[u8]) -> [u8; FACTS_SIGNATURE_BYTES] {
        let signature = self.pair.sign(message);
        let mut out = [0u8; FACTS_SIGNATURE_BYTES];
        out.copy_from_slice(signature.as_ref());
        out
    }
}

impl fmt::Debug for FactsSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FactsSigner({})", self.public_hex())
    }
}

/// Reads a public key of 64 hex digits.
pub fn parse_facts_key(text: &str) -> Option<[u8; FACTS_KEY_BYTES]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

pub(crate) fn verify(
    key: &[u8; FACTS_KEY_BYTES],
    cluster_id: &str,
    facts: &[u8],
    signature: &[u8; FACTS_SIGNATURE_BYTES],
) -> bool {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&message(CONTEXT, cluster_id, facts), signature)
        .is_ok()
}

/// Whether `signature` is `key`'s proof of the SWIM identity whose bytes
/// are `identity`.
pub(crate) fn verify_identity(
    key: &[u8; FACTS_KEY_BYTES],
    cluster_id: &str,
    identity: &[u8],
    signature: &[u8; FACTS_SIGNATURE_BYTES],
) -> bool {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&message(IDENTITY_CONTEXT, cluster_id, identity), signature)
        .is_ok()
}

/// The context says what is signed, so a facts signature is never taken
/// for an identity's proof or the other way round.
fn message(context: &[u8], cluster_id: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(context.len() + cluster_id.len() + 1 + body.len());
    message.extend_from_slice(context);
    message.extend_from_slice(cluster_id.as_bytes());
    message.push(0);
    message.extend_from_slice(body);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> FactsSigner {
        FactsSigner::from_pkcs8(&FactsSigner::generate_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn a_signature_holds_for_its_key_cluster_and_bytes_only() {
        let a = signer();
        let b = signer();
        let key = parse_facts_key(&a.public_hex()).unwrap();
        let other = parse_facts_key(&b.public_hex()).unwrap();
        let signature = a.sign("c1", b"facts");
        assert!(verify(&key, "c1", b"facts", &signature));
        assert!(!verify(&other, "c1", b"facts", &signature), "another key");
        assert!(!verify(&key, "c2", b"facts", &signature), "another cluster");
        assert!(!verify(&key, "c1", b"facts!", &signature), "other bytes");
        // The cluster id and the facts cannot trade bytes.
        assert!(!verify(&key, "c1f", b"acts", &signature));
        let mut bent = signature;
        bent[10] ^= 1;
        assert!(!verify(&key, "c1", b"facts", &bent));
    }

    #[test]
    fn an_identity_proof_is_not_a_facts_signature() {
        let a = signer();
        let key = parse_facts_key(&a.public_hex()).unwrap();
        let proof = a.sign_identity("c1", b"id");
        assert!(verify_identity(&key, "c1", b"id", &proof));
        assert_eq!(proof, a.sign_identity("c1", b"id"), "deterministic");
        assert!(!verify_identity(&key, "c2", b"id", &proof));
        assert!(!verify(&key, "c1", b"id", &proof), "taken as facts");
        assert!(!verify_identity(&key, "c1", b"id", &a.sign("c1", b"id")));
    }

    #[test]
    fn keys_read_back_and_garbage_does_not() {
        let pkcs8 = FactsSigner::generate_pkcs8().unwrap();
        let a = FactsSigner::from_pkcs8(&pkcs8).unwrap();
        let again = FactsSigner::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(a.public_hex(), again.public_hex());
        assert_eq!(a.public_hex().len(), 2 * FACTS_KEY_BYTES);
        assert!(FactsSigner::from_pkcs8(b"not a key").is_err());
        assert!(parse_facts_key("zz").is_none());
        assert!(parse_facts_key(&"ab".repeat(31)).is_none());
        assert!(parse_facts_key(&"ab".repeat(32)).is_some());
    }
}

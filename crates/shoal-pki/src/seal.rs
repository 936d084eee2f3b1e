//! Sealing data at rest with XChaCha20-Poly1305 (random 24-byte nonces):
//!
//! ```text
//! | version 1 | key id u32 BE | nonce 24 | ciphertext + tag 16 |
//! ```
//!
//! The header is authenticated with the caller's additional data, so a
//! sealed value moved to another purpose (another secret's name) fails.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + 24;
const TAG_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the sealed value is shorter than its header and tag")]
    Truncated,
    #[error("the sealed value is of version {0}, this release reads 1")]
    Version(u8),
    #[error("the sealed value names key {0}, which this node does not hold")]
    UnknownKey(u32),
    #[error("the sealed value does not authenticate (damaged, or another key or purpose)")]
    Forged,
    #[error("the key file is not 64 hex digits")]
    BadKey,
    #[error("sealing failed")]
    Seal,
}

/// A 256-bit key; wiped on drop.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl DataKey {
    pub fn generate() -> DataKey {
        DataKey(crate::random())
    }

    pub fn from_hex(text: &str) -> Result<DataKey, SealError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| SealError::BadKey)?;
        Ok(DataKey(bytes))
    }

    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

fn aad_with_header<'a>(header: &[u8], aad: &[u8], buffer: &'a mut Vec<u8>) -> &'a [u8] {
    buffer.clear();
    buffer.extend_from_slice(header);
    buffer.extend_from_slice(aad);
    buffer
}

/// Seals `plaintext` under `key` (named `key_id`), bound to `aad`.
pub fn seal(
    key: &DataKey,
    key_id: u32,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let cipher = XChaCha20Poly1305::new_from_slice(&key.0).map_err(|_| SealError::Seal)?;
    let nonce: [u8; 24] = crate::random();
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.push(VERSION);
    header.extend_from_slice(&key_id.to_be_bytes());
    header.extend_from_slice(&nonce);
    let mut buffer = Vec::new();
    let sealed = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: aad_with_header(&header, aad, &mut buffer),
            },
        )
        .map_err(|_| SealError::Seal)?;
    header.extend_from_slice(&sealed);
    Ok(header)
}

/// Opens a sealed value with whichever key its header names.
pub fn open<'k>(
    keys: impl Fn(u32) -> Option<&'k DataKey>,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.len() < HEADER_LEN + TAG_LEN {
        return Err(SealError::Truncated);
    }
    let (header, body) = sealed.split_at(HEADER_LEN);
    if header[0] != VERSION {
        return Err(SealError::Version(header[0]));
    }
    let key_id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let key = keys(key_id).ok_or(SealError::UnknownKey(key_id))?;
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&header[5..]);
    let cipher = XChaCha20Poly1305::new_from_slice(&key.0).map_err(|_| SealError::Seal)?;
    let mut buffer = Vec::new();
    cipher
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: body,
                aad: aad_with_header(header, aad, &mut buffer),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| SealError::Forged)
}

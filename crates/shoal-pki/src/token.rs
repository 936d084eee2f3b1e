//! Join tokens and API tokens, and what the cluster keeps of them: the
//! SHA-256 of their secret, never the secret.
//!
//! ```text
//! SHOAL-1-<CA bundle hash: 64 hex>-<id: 16 hex>-<secret: 64 hex>
//! shoal_<id: 16 hex>_<secret: 64 hex>
//! ```
//!
//! The id is public (listings show it, revocation names it); the secret is
//! 32 random bytes. Errors describe what is wrong with a token's shape and
//! never repeat the token.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const JOIN_PREFIX: &str = "SHOAL-";
const JOIN_VERSION: &str = "1";
const API_PREFIX: &str = "shoal_";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;
const CA_HASH_HEX: usize = 64;
/// Longest text looked at as a token.
const TOKEN_CHARS_MAX: usize = 400;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error("the token is longer than any shoal token")]
    TooLong,
    #[error("a join token starts with SHOAL-1-; this is not a join token")]
    NotJoinToken,
    #[error("join token version {0} is not known to this release (it reads SHOAL-1)")]
    Version(String),
    #[error("an API token starts with shoal_; this is not an API token")]
    NotApiToken,
    #[error("the token has {found} parts, a {kind} has {want}")]
    Parts {
        kind: &'static str,
        found: usize,
        want: usize,
    },
    #[error("the token's {part} must be {len} lowercase hex digits")]
    Part { part: &'static str, len: usize },
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn part(text: &str, part: &'static str, len: usize) -> Result<(), TokenError> {
    if is_hex(text, len) {
        Ok(())
    } else {
        Err(TokenError::Part { part, len })
    }
}

fn trimmed(text: &str) -> Result<&str, TokenError> {
    if text.len() > TOKEN_CHARS_MAX {
        return Err(TokenError::TooLong);
    }
    let text = text.trim();
    if text.is_empty() {
        return Err(TokenError::Empty);
    }
    Ok(text)
}

fn new_secret() -> Zeroizing<String> {
    Zeroizing::new(hex::encode(crate::random::<32>()))
}

/// A token that lets one node join: it pins the CA, so the joiner can
/// check whom it talks to before it sends the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: String,
    pub id: String,
    secret: Zeroizing<String>,
}

impl JoinToken {
    pub fn generate(ca_hash: &str) -> JoinToken {
        JoinToken {
            ca_hash: ca_hash.to_string(),
            id: hex::encode(crate::random::<8>()),
            secret: new_secret(),
        }
    }

    pub fn parse(text: &str) -> Result<JoinToken, TokenError> {
        let text = trimmed(text)?;
        let rest = text
            .strip_prefix(JOIN_PREFIX)
            .ok_or(TokenError::NotJoinToken)?;
        let parts: Vec<&str> = rest.split('-').collect();
        if parts[0] != JOIN_VERSION {
            let version: String = parts[0].chars().take(8).collect();
            if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
                return Err(TokenError::NotJoinToken);
            }
            return Err(TokenError::Version(version));
        }
        let [_, ca_hash, id, secret] = parts[..] else {
            return Err(TokenError::Parts {
                kind: "join token",
                found: parts.len() + 1,
                want: 5,
            });
        };
        part(ca_hash, "CA hash", CA_HASH_HEX)?;
        part(id, "id", ID_HEX)?;
        part(secret, "secret", SECRET_HEX)?;
        Ok(JoinToken {
            ca_hash: ca_hash.into(),
            id: id.into(),
            secret: Zeroizing::new(secret.into()),
        })
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(JOIN_DOMAIN, self.secret.as_bytes())
    }
}

/// The whole token: the one place its secret is written out.
impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{JOIN_PREFIX}{JOIN_VERSION}-{}-{}-{}",
            self.ca_hash,
            self.id,
            self.secret.as_str()
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({})", self.id)
    }
}

/// A bearer credential for the API.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    secret: Zeroizing<String>,
}

impl ApiToken {
    pub fn generate() -> ApiToken {
        ApiToken {
            id: hex::encode(crate::random::<8>()),
            secret: new_secret(),
        }
    }

    pub fn parse(text: &str) -> Result<ApiToken, TokenError> {
        let text = trimmed(text)?;
        let rest = text
            .strip_prefix(API_PREFIX)
            .ok_or(TokenError::NotApiToken)?;
        let parts: Vec<&str> = rest.split('_').collect();
        let [id, secret] = parts[..] else {
            return Err(TokenError::Parts {
                kind: "API token",
                found: parts.len() + 1,
                want: 3,
            });
        };
        part(id, "id", ID_HEX)?;
        part(secret, "secret", SECRET_HEX)?;
        Ok(ApiToken {
            id: id.into(),
            secret: Zeroizing::new(secret.into()),
        })
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(API_DOMAIN, self.secret.as_bytes())
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{API_PREFIX}{}_{}", self.id, self.secret.as_str())
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken({})", self.id)
    }
}

pub const JOIN_DOMAIN: &str = "shoal join token";
pub const API_DOMAIN: &str = "shoal api token";

/// SHA-256 over a domain tag and a secret. Token secrets are 256 random
/// bits, so a plain hash is as strong as a password hash would be.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    pub fn of(domain: &str, secret: &[u8]) -> SecretHash {
        let mut hasher = Sha256::new();
        hasher.update(domain.as_bytes());
        hasher.update([0u8]);
        hasher.update(secret);
        SecretHash(hasher.finalize().into())
    }

    /// Whether `secret` hashes to this, in constant time.
    pub fn matches(&self, domain: &str, secret: &[u8]) -> bool {
        SecretHash::of(domain, secret).0.ct_eq(&self.0).into()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<SecretHash> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(SecretHash(bytes))
    }
}

impl TryFrom<String> for SecretHash {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        SecretHash::from_hex(&text).ok_or_else(|| "a secret hash is 64 hex digits".to_string())
    }
}

impl From<SecretHash> for String {
    fn from(hash: SecretHash) -> String {
        hash.to_hex()
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({})", &self.to_hex()[..8])
    }
}

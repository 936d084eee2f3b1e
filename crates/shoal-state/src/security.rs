//! What the cluster keeps about trust: its CA, the join tokens and API
//! tokens it issued (as hashes of their secrets, never the secrets), the
//! nodes it admitted and the ones it removed, and the gossip keys.
//!
//! Key material is opaque here: the CA's signing key and the gossip keys
//! arrive sealed with the cluster's data key (held by voter-capable nodes
//! only) and are stored as they came; the state machine never sees a
//! secret in the clear and needs none to decide. Token secrets are checked
//! against these hashes by the node that receives them, before it proposes
//! anything; what must be decided once for the whole cluster (a
//! single-use join token used twice at once) is decided here, in log
//! order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ApplyError, Outcome, State};

/// Join tokens kept at once (expired and used ones are pruned a day later).
pub const JOIN_TOKENS_MAX: usize = 1_000;
/// API tokens kept at once.
pub const API_TOKENS_MAX: usize = 10_000;
/// Removed node identities remembered at once.
pub const REMOVED_MAX: usize = 100_000;
/// Nodes admitted at once.
pub const ADMISSIONS_MAX: usize = 100_000;
/// Longest a node certificate may live: a removed identity is remembered
/// this long, after which every certificate it held has expired.
pub const NODE_CERT_LIFETIME_MAX_MS: u64 = 30 * 24 * 3600 * 1000;
/// How long a used-up, expired or revoked join token stays listed.
pub const SPENT_TOKEN_KEPT_MS: u64 = 24 * 3600 * 1000;
/// Longest PEM text accepted for the CA record.
const PEM_BYTES_MAX: usize = 64 * 1024;
/// Longest sealed blob (CA key, gossip keys) accepted.
const SEALED_BYTES_MAX: usize = 16 * 1024;
/// Longest token name or creator label.
const LABEL_CHARS_MAX: usize = 200;

/// What a node may be in the cluster, as its certificate says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// May become a voter, holds the data key and can sign certificates.
    Voter,
    /// Runs work; never votes, never holds the data key.
    Worker,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Voter => "voter",
            NodeRole::Worker => "worker",
        }
    }
}

/// What an API credential may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiRole {
    /// Everything.
    Admin,
    /// Apps and images, and reading.
    Deployer,
    /// Reading only.
    Reader,
}

impl ApiRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Admin => "admin",
            ApiRole::Deployer => "deployer",
            ApiRole::Reader => "reader",
        }
    }

    pub fn parse(text: &str) -> Option<ApiRole> {
        match text {
            "admin" => Some(ApiRole::Admin),
            "deployer" => Some(ApiRole::Deployer),
            "reader" => Some(ApiRole::Reader),
            _ => None,
        }
    }
}

/// The cluster's certificate authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaRecord {
    /// Every root a node trusts (two while a rotation is under way).
    pub roots_pem: String,
    /// The CA certificate that signs node certificates now.
    pub signer_pem: String,
    /// What a leaf's chain carries above itself: empty, or the signer
    /// cross-signed by the previous root during a rotation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chain_pem: String,
    /// The signer's private key, sealed with the data key (hex).
    pub key_sealed: String,
    /// Grows with every rotation.
    pub generation: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRecord {
    /// The public part of the token (16 hex digits).
    pub id: String,
    /// The most a node joining with it may be.
    pub role: NodeRole,
    /// SHA-256 of the token's secret (hex).
    pub hash: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub uses_max: u32,
    #[serde(default)]
    pub uses: u32,
    #[serde(default)]
    pub revoked: bool,
    /// Who created it (a token id or a node), for the listing.
    pub created_by: String,
}

impl JoinTokenRecord {
    /// Why a join with this token at `now_ms` is refused, if it is.
    pub fn refusal(&self, now_ms: u64, role: NodeRole) -> Option<String> {
        if self.revoked {
            Some(format!("join token {} was revoked", self.id))
        } else if now_ms >= self.expires_at_ms {
            Some(format!(
                "join token {} expired; create a new one with `shoal cluster token create`",
                self.id
            ))
        } else if self.uses >= self.uses_max {
            Some(format!(
                "join token {} was already used {} time(s), its limit; create a new one with `shoal cluster token create`",
                self.id, self.uses
            ))
        } else if role == NodeRole::Voter && self.role == NodeRole::Worker {
            Some(format!(
                "join token {} is a worker token and cannot admit a voter; create one with `--role voter`",
                self.id
            ))
        } else {
            None
        }
    }

    fn spent(&self, now_ms: u64) -> Option<u64> {
        if self.revoked || self.uses >= self.uses_max || now_ms >= self.expires_at_ms {
            Some(self.expires_at_ms.min(now_ms))
        } else {
            None
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenRecord {
    /// The public part of the token (16 hex digits).
    pub id: String,
    /// What it is for, as its creator said.
    pub name: String,
    pub role: ApiRole,
    /// SHA-256 of the token's secret (hex).
    pub hash: String,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    pub created_by: String,
}

/// A node the cluster admitted: its certificates carry `admission`, which
/// stays the same across renewals and changes with every new join.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    pub admission: String,
    pub role: NodeRole,
    pub admitted_at_ms: u64,
    /// The join token it came with (empty for the node that formed the cluster).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// The Ed25519 public key the node signs its gossip facts with (64
    /// hex digits; format 9, set by the node itself, empty until then).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub facts_key: String,
}

/// A node identity no node accepts any more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Removed {
    pub node: String,
    pub removed_at_ms: u64,
}

/// The gossip keyring, sealed with the data key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipKeysRecord {
    /// Grows with every change of the ring.
    pub generation: u64,
    /// The keyring's JSON, sealed (hex).
    pub sealed: String,
    /// Key ids in the ring, and the one that seals.
    pub ids: Vec<u32>,
    pub primary: u32,
    pub changed_at_ms: u64,
}

/// Everything about trust, in the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaRecord>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub join_tokens: BTreeMap<String, JoinTokenRecord>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub api_tokens: BTreeMap<String, ApiTokenRecord>,
    /// By node name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub admissions: BTreeMap<String, Admission>,
    /// By admission.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub removed: BTreeMap<String, Removed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip: Option<GossipKeysRecord>,
}

impl Security {
    pub fn is_empty(&self) -> bool {
        self == &Security::default()
    }

    /// Whether a certificate of `node` with `admission` may speak for it:
    /// not removed, and (once the node's admission is known here) the
    /// current one. A replica that has not yet applied a new node's
    /// admission accepts it on the CA's word alone.
    pub fn accepts(&self, node: &str, admission: &str) -> bool {
        if self.removed.contains_key(admission) {
            return false;
        }
        self.admissions
            .get(node)
            .is_none_or(|known| known.admission == admission)
    }

    /// The admission of a node goes on the removed list.
    pub(crate) fn remove_node(&mut self, node: &str, now_ms: u64) {
        if let Some(admission) = self.admissions.remove(node) {
            self.removed.insert(
                admission.admission,
                Removed {
                    node: node.to_string(),
                    removed_at_ms: now_ms,
                },
            );
        }
    }

    /// Forgets what no longer matters at `now_ms`: removed identities
    /// whose certificates have all expired, spent join tokens after a day.
    fn prune(&mut self, now_ms: u64) {
        self.removed.retain(|_, removed| {
            now_ms
                < removed
                    .removed_at_ms
                    .saturating_add(NODE_CERT_LIFETIME_MAX_MS)
        });
        self.join_tokens.retain(|_, token| {
            token
                .spent(now_ms)
                .is_none_or(|at| now_ms < at.saturating_add(SPENT_TOKEN_KEPT_MS))
        });
        while self.removed.len() > REMOVED_MAX {
            let oldest = self
                .removed
                .iter()
                .min_by_key(|(_, removed)| removed.removed_at_ms)
                .map(|(admission, _)| admission.clone());
            match oldest {
                Some(admission) => self.removed.remove(&admission),
                None => break,
            };
        }
    }
}

/// Checks a public token id: 16 lowercase hex digits.
fn check_id(field: &str, id: &str) -> Result<(), ApplyError> {
    if id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ApplyError::Refused(format!(
            "{field}: `{}` is not 16 lowercase hex digits",
            id.chars().take(40).collect::<String>()
        )))
    }
}

fn check_hash(field: &str, hash: &str) -> Result<(), ApplyError> {
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ApplyError::Refused(format!(
            "{field}: a SHA-256 hash is 64 hex digits"
        )))
    }
}

fn check_label(field: &str, text: &str) -> Result<(), ApplyError> {
    if text.chars().count() > LABEL_CHARS_MAX || text.chars().any(char::is_control) {
        Err(ApplyError::Refused(format!(
            "{field}: at most {LABEL_CHARS_MAX} characters, no control characters"
        )))
    } else {
        Ok(())
    }
}

impl State {
    /// Sets the CA record: the first when the cluster forms; after it, a
    /// record of the next generation that starts a rotation (the roots
    /// held, one root more, which signs from then on) or, proposed by the
    /// leader, ends the one under way (the signing root alone, the rest
    /// kept). Anything else is refused: no record jumps generations, drops
    /// the roots nodes trust, or ends a rotation early on another's word.
    pub(crate) fn set_ca(&mut self, ca: &CaRecord, by_leader: bool) -> Result<Outcome, ApplyError> {
        if ca.roots_pem.len() + ca.signer_pem.len() + ca.chain_pem.len() > PEM_BYTES_MAX
            || ca.key_sealed.len() > SEALED_BYTES_MAX
        {
            return Err(ApplyError::TooLarge(
                "the CA record is larger than a CA can be".to_string(),
            ));
        }
        if let Some(known) = &self.security.ca {
            if ca.generation <= known.generation {
                return Err(ApplyError::Refused(format!(
                    "CA generation {} is not newer than the cluster's ({})",
                    ca.generation, known.generation
                )));
            }
            crate::ca::check_step(known, ca, by_leader)?;
        }
        self.security.ca = Some(ca.clone());
        Ok(Outcome::SecurityChanged)
    }

    pub(crate) fn create_join_token(
        &mut self,
        token: &JoinTokenRecord,
        now_ms: u64,
    ) -> Result<Outcome, ApplyError> {
        check_id("id", &token.id)?;
        check_hash("hash", &token.hash)?;
        check_label("created_by", &token.created_by)?;
        self.security.prune(now_ms);
        if self.security.join_tokens.contains_key(&token.id) {
            return Err(ApplyError::Refused(format!(
                "join token {} exists already",
                token.id
            )));
        }
        if self.security.join_tokens.len() >= JOIN_TOKENS_MAX {
            return Err(ApplyError::TooLarge(format!(
                "the cluster holds {JOIN_TOKENS_MAX} join tokens, the limit; revoke some with `shoal cluster token rm`"
            )));
        }
        if token.uses_max == 0 || token.expires_at_ms <= now_ms {
            return Err(ApplyError::Refused(
                "a join token needs at least one use and a lifetime".to_string(),
            ));
        }
        let mut token = token.clone();
        token.uses = 0;
        token.revoked = false;
        self.security.join_tokens.insert(token.id.clone(), token);
        Ok(Outcome::SecurityChanged)
    }

    pub(crate) fn revoke_join_token(&mut self, id: &str) -> Result<Outcome, ApplyError> {
        let token = self
            .security
            .join_tokens
            .get_mut(id)
            .ok_or_else(|| ApplyError::Refused(format!("no join token {id}")))?;
        token.revoked = true;
        Ok(Outcome::SecurityChanged)
    }

    /// Admits a node with a join token: the token must be valid at the
    /// entry's time, and is used up by this (in log order, so two joins
    /// with a single-use token cannot both pass).
    pub(crate) fn admit_node(
        &mut self,
        token_id: &str,
        node: &str,
        role: NodeRole,
        admission: &str,
        now_ms: u64,
    ) -> Result<Outcome, ApplyError> {
        check_id("admission", admission)?;
        shoal_types::check_dns_label(node)
            .map_err(|message| ApplyError::Refused(format!("node: {message}")))?;
        if self.security.removed.contains_key(admission) {
            return Err(ApplyError::Refused(format!(
                "admission {admission} was removed"
            )));
        }
        if !token_id.is_empty() {
            let token = self
                .security
                .join_tokens
                .get(token_id)
                .ok_or_else(|| ApplyError::Refused(format!("no join token {token_id}")))?;
            if let Some(why) = token.refusal(now_ms, role) {
                return Err(ApplyError::Refused(why));
            }
        } else if !self.security.admissions.is_empty() {
            return Err(ApplyError::Refused(
                "only the node that forms the cluster is admitted without a join token".to_string(),
            ));
        }
        if !self.security.admissions.contains_key(node)
            && self.security.admissions.len() >= ADMISSIONS_MAX
        {
            return Err(ApplyError::TooLarge(format!(
                "{ADMISSIONS_MAX} nodes are admitted, the limit"
            )));
        }
        if let Some(token) = self.security.join_tokens.get_mut(token_id) {
            token.uses += 1;
        }
        // A node that joins again under its name (a lost data dir) ends
        // its former identity.
        self.security.remove_node(node, now_ms);
        self.security.admissions.insert(
            node.to_string(),
            Admission {
                admission: admission.to_string(),
                role,
                admitted_at_ms: now_ms,
                token: token_id.to_string(),
                facts_key: String::new(),
            },
        );
        Ok(Outcome::SecurityChanged)
    }

    pub(crate) fn create_api_token(
        &mut self,
        token: &ApiTokenRecord,
    ) -> Result<Outcome, ApplyError> {
        check_id("id", &token.id)?;
        check_hash("hash", &token.hash)?;
        check_label("name", &token.name)?;
        check_label("created_by", &token.created_by)?;
        if self.security.api_tokens.contains_key(&token.id) {
            return Err(ApplyError::Refused(format!(
                "API token {} exists already",
                token.id
            )));
        }
        if self.security.api_tokens.len() >= API_TOKENS_MAX {
            return Err(ApplyError::TooLarge(format!(
                "the cluster holds {API_TOKENS_MAX} API tokens, the limit; remove some with `shoal token rm`"
            )));
        }
        self.security
            .api_tokens
            .insert(token.id.clone(), token.clone());
        Ok(Outcome::SecurityChanged)
    }

    pub(crate) fn revoke_api_token(&mut self, id: &str) -> Result<Outcome, ApplyError> {
        self.security
            .api_tokens
            .remove(id)
            .map(|_| Outcome::SecurityChanged)
            .ok_or_else(|| ApplyError::Refused(format!("no API token {id}")))
    }

    pub(crate) fn set_gossip_keys(
        &mut self,
        keys: &GossipKeysRecord,
    ) -> Result<Outcome, ApplyError> {
        if keys.sealed.len() > SEALED_BYTES_MAX || keys.ids.len() > 8 {
            return Err(ApplyError::TooLarge(
                "the gossip keyring holds at most 8 keys".to_string(),
            ));
        }
        if !keys.ids.contains(&keys.primary) {
            return Err(ApplyError::Refused(format!(
                "primary gossip key {} is not in the ring",
                keys.primary
            )));
        }
        if let Some(known) = &self.security.gossip {
            if keys.generation <= known.generation {
                return Err(ApplyError::Refused(format!(
                    "gossip keyring generation {} is not newer than the cluster's ({})",
                    keys.generation, known.generation
                )));
            }
        }
        self.security.gossip = Some(keys.clone());
        Ok(Outcome::SecurityChanged)
    }

    /// Records the key `node` signs its gossip facts with, for its current
    /// admission (a key for an older admission is refused: the node joined
    /// again since).
    pub(crate) fn set_facts_key(
        &mut self,
        node: &str,
        admission: &str,
        key: &str,
    ) -> Result<Outcome, ApplyError> {
        if key.len() != 64
            || !key
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ApplyError::Refused(
                "key: an Ed25519 public key is 64 lowercase hex digits".to_string(),
            ));
        }
        let known = self
            .security
            .admissions
            .get_mut(node)
            .ok_or_else(|| ApplyError::Refused(format!("node `{node}` is not admitted")))?;
        if known.admission != admission {
            return Err(ApplyError::Refused(format!(
                "admission {} is not node `{node}`'s current one",
                admission.chars().take(40).collect::<String>()
            )));
        }
        known.facts_key = key.to_string();
        Ok(Outcome::SecurityChanged)
    }

    /// Removes a node for good: its identity is refused from now on, its
    /// record and tasks are forgotten (the tasks are placed again).
    pub(crate) fn remove_node(&mut self, name: &str, now_ms: u64) -> Result<Outcome, ApplyError> {
        if !self.nodes.contains_key(name) && !self.security.admissions.contains_key(name) {
            return Err(ApplyError::NodeNotFound(name.to_string()));
        }
        self.security.remove_node(name, now_ms);
        if let Some(node) = self.nodes.get_mut(name) {
            node.status = shoal_types::NodeStatus::Left;
        }
        let tasks = match self.nodes.contains_key(name) {
            true => match self.forget_node(name)? {
                Outcome::NodeForgotten { tasks } => tasks,
                _ => 0,
            },
            false => 0,
        };
        Ok(Outcome::NodeForgotten { tasks })
    }
}

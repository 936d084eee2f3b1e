//! The cluster's security: its CA, API and join tokens, joins and
//! renewals, the gossip keyring, and secrets and configs (whose values
//! never show in `Debug`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `GET /v1/cluster/ca`, and what `POST /v1/cluster/ca/rotate` answers:
/// the cluster's CA and how far a rotation is.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct CaView {
    /// Grows with every change of the CA record: two per rotation (its
    /// start, then its end).
    pub generation: u32,
    /// A rotation is under way: every node trusts both roots and renews
    /// onto the new one; it ends by itself once every node has.
    pub rotating: bool,
    /// The roots every node trusts, the oldest first.
    pub roots: Vec<CaCertView>,
    /// The CA that signs node certificates now.
    pub signer: CaCertView,
    /// Every node the cluster holds, with the generation of the CA record
    /// it has taken in full (trusting its roots, its certificate of its
    /// signer; 0: none yet). During a rotation, one behind holds its end.
    pub nodes: Vec<CaNodeView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct CaCertView {
    pub subject: String,
    /// SHA-256 of the certificate's DER, hex: what a join token pins.
    pub sha256: String,
    pub not_after_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct CaNodeView {
    pub name: String,
    pub generation: u32,
}

/// `POST /v1/secrets`, `POST /v1/configs`: a new secret or config.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileCreate {
    /// 1 to 64 letters, digits, `-`, `_` and `.`, starting with a letter
    /// or digit.
    pub name: String,
    /// The value, base64 (standard alphabet, padded); at most 256 KiB
    /// once decoded. A secret's is sealed with the cluster's data key as
    /// it arrives and never shown again.
    pub data: String,
}

/// `PUT /v1/secrets/{name}`, `PUT /v1/configs/{name}`: a new value, which
/// makes the next version.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileUpdate {
    /// The value, base64; as in `FileCreate`.
    pub data: String,
}

impl std::fmt::Debug for FileCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCreate")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for FileUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileUpdate").finish_non_exhaustive()
    }
}

/// A secret or config as listed: never a secret's value.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct FileView {
    pub name: String,
    /// 1 when created, one more with each new value.
    pub version: u64,
    /// The value's length.
    pub bytes: u64,
    /// The services (`APP/SERVICE`) that list it.
    pub used_by: Vec<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// `GET /v1/internal/gossip-keys` (node certificates only; answered by
/// nodes that hold the data key), and part of a join's answer: the gossip
/// keyring the cluster's state holds now.
/// Unknown fields are ignored: a newer voter may add some.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct GossipKeys {
    /// Grows with every change of the ring.
    pub generation: u64,
    /// The keyring (JSON: keys by id, and the primary). Secret: it travels
    /// only over mTLS and is kept in a 0600 file.
    pub keyring: String,
    /// Whether the cluster seals its gossip already (every node reads
    /// format 7): a node that joins then speaks sealed from the start.
    #[serde(default)]
    pub sealed: bool,
    /// Whether the cluster proves its gossip identities already (every
    /// node reads format 12): a node that joins then sends proofs from the
    /// start.
    #[serde(default)]
    pub proven: bool,
}

impl std::fmt::Debug for GossipKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GossipKeys(generation {}, sealed {}, keys secret)",
            self.generation, self.sealed
        )
    }
}

/// `POST /v1/internal/task-secrets` (node certificates only; answered by
/// nodes that hold the data key): a node that holds no data key asks for
/// the secrets of a task placed on it, as it starts the task.
/// Unknown fields are ignored: a newer node may add some.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TaskSecretsRequest {
    /// The task's id (`APP.SERVICE.SLOT.SERIAL`).
    pub task: String,
}

/// The values of the secrets a task's service lists, each at the version
/// the state holds now. They travel only over the nodes' mTLS.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct TaskSecrets {
    pub secrets: Vec<SecretValue>,
}

#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct SecretValue {
    pub name: String,
    pub version: u64,
    /// The value, base64.
    pub data: String,
}

impl std::fmt::Debug for TaskSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.secrets.iter().map(|s| (&s.name, s.version)))
            .finish()
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data);
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecretValue({} version {}, value secret)",
            self.name, self.version
        )
    }
}

/// `POST /v1/tokens`: a new API token.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// What it is for (shown in listings).
    pub name: String,
    /// `admin`, `deployer` (apps and images) or `reader`.
    pub role: String,
    /// Lifetime in seconds; none for a token that lasts until removed.
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// A token as it is listed: never its secret.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at_ms: u64,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    pub created_by: String,
}

/// A token just made: the only time its secret is shown.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub view: TokenView,
}

/// `POST /v1/cluster/join-tokens`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenCreate {
    /// `voter` (may vote; admits workers too) or `worker`.
    pub role: String,
    /// Lifetime in seconds (default 3600).
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// How many nodes may join with it (default 1).
    #[serde(default)]
    pub uses: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct JoinTokenView {
    pub id: String,
    pub role: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub uses: u32,
    pub uses_max: u32,
    /// `valid`, `expired`, `used` or `revoked`.
    pub state: String,
    pub created_by: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct JoinTokenCreated {
    /// `SHOAL-1-…`: give it to `shoal agent --token`.
    pub token: String,
    #[serde(flatten)]
    pub view: JoinTokenView,
}

/// `POST /v1/join`: a node asks to join with a token, after it checked
/// the CA the token pins.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    pub name: String,
    /// `voter` or `worker`; by default what the token allows.
    #[serde(default)]
    pub role: Option<String>,
    /// Only its public key is used.
    pub csr_pem: String,
}

#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub chain_pem: String,
    pub roots_pem: String,
    /// Where the answering node gossips (UDP).
    pub gossip_addr: String,
    /// The data key (hex), for voters only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
    /// The keys gossip is sealed with (absent from a leader older than
    /// shoal 0.7, or before the cluster has a keyring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip_keys: Option<GossipKeys>,
}

/// Never shows the data key.
impl std::fmt::Debug for JoinResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinResponse")
            .field("cluster_id", &self.cluster_id)
            .field("gossip_addr", &self.gossip_addr)
            .field("data_key", &self.data_key.as_ref().map(|_| "(secret)"))
            .field("gossip_keys", &self.gossip_keys)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/internal/renew`: a node renews its certificate.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct RenewResponse {
    pub chain_pem: String,
    pub roots_pem: String,
}

//! Images and registries: a registry's settings (never its password in
//! `Debug` or a listing) and credentials, pulls and how far they are, the
//! images a node holds and its disk.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `POST /v1/registries`: how to reach a registry and who to be there.
/// Replaces the host's settings.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryAdd {
    /// `HOST[:PORT]` as image references name it (`docker.io` for Docker Hub).
    pub host: String,
    /// Allow plain HTTP (without settings, only loopback registries get it).
    #[serde(default)]
    pub insecure: bool,
    /// CA certificates (PEM) to trust for this registry besides the host's.
    #[serde(default)]
    pub ca_pem: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// Sealed with the cluster's data key as it arrives; never shown again.
    #[serde(default)]
    pub password: Option<String>,
    /// The secret (`shoal secret create`) whose value is the password,
    /// instead of `password`: each new version of it is used from then on,
    /// and it cannot be removed while the registry names it. One line
    /// ending at the end of the value is not part of the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
}

impl std::fmt::Debug for RegistryAdd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAdd")
            .field("host", &self.host)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("password_secret", &self.password_secret)
            .finish_non_exhaustive()
    }
}

/// A registry's settings as listed: never its password.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct RegistryView {
    pub host: String,
    pub insecure: bool,
    /// Whether a CA of its own is trusted for it.
    pub ca: bool,
    pub username: Option<String>,
    /// Whether a password is kept (sealed, or as a secret).
    pub password: bool,
    /// The secret whose value is the password, when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
    pub updated_at_ms: u64,
}

/// `POST /v1/images/pull`: the image the answering node pulls.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePull {
    /// `HOST[:PORT]/REPOSITORY:TAG` or `…@sha256:…`; Docker Hub names may be
    /// short (`redis:alpine`).
    pub reference: String,
}

/// The disk a node's images are on, and when the node collects them.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ImageDiskView {
    /// containerd's root directory.
    pub path: String,
    pub used_bytes: u64,
    /// Used plus what is still free to use.
    pub total_bytes: u64,
    pub used_percent: u64,
    /// Above this, pulled images no app names are removed, the oldest pull
    /// first, down to `gc_low_percent`.
    pub gc_high_percent: u8,
    pub gc_low_percent: u8,
}

/// A pull under way on a node: how far it is.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PullView {
    /// The image's name, as it will be listed once pulled.
    pub name: String,
    /// Bytes of its layers stored, and in all.
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Bytes fetched per second since its layers began to come.
    pub bytes_per_s: u64,
    pub layers: Vec<LayerPullView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct LayerPullView {
    pub digest: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ImageView {
    pub name: String,
    pub digest: String,
    pub size_bytes: u64,
    pub created_s: Option<i64>,
}

/// `POST /v1/internal/registry-credentials` (node certificates only;
/// answered by nodes that hold the data key): a node that holds no data
/// key asks for the credentials of a registry it is to pull from.
/// Unknown fields are ignored: a newer node may add some.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct RegistryCredentialsRequest {
    /// The registry's host as `shoal registry add` named it.
    pub host: String,
    /// The API token of the operator whose call the asking node answers
    /// (an apply or a pull through a worker), which may stand for the
    /// reason to pull; it travels only over the nodes' mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
}

impl std::fmt::Debug for RegistryCredentialsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentialsRequest")
            .field("host", &self.host)
            .field("operator", &self.operator.as_ref().map(|_| "…"))
            .finish()
    }
}

/// A registry's credentials, opened for a node that pulls from it.
/// Secret: they travel only over mTLS and are kept only in the memory of
/// the node that asked.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryCredentials({}, password secret)", self.username)
    }
}

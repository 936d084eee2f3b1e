//! Images from registries: references resolved to manifests, and blobs
//! streamed out of the registry with their digest checked over every byte.
//!
//! The distribution API is `oci-client`'s; what it lacks is here: a blob
//! download that survives a cut connection (resumed with a Range request,
//! no byte fetched twice, the digest still checked over the whole blob),
//! that gives up on a connection with no progress, the choice of plain
//! HTTP only for loopback registries or those the operator marked
//! insecure, and, with credentials, the Docker token flow: oci-client
//! would send a registry's password to whatever token service a challenge
//! names, following redirects; here every token service named is checked
//! to be reached over HTTPS (or plain HTTP only where the registry itself
//! may be), redirects are refused, and oci-client gets the bearer token
//! alone, so a password never crosses the network in clear.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use oci_client::client::{BlobResponse, Certificate, CertificateEncoding, ClientConfig};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::image::{
    self, is_index_media_type, Descriptor, Limits, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};
use crate::{ErrorKind, Result, RuntimeError};

mod download;
mod errors;
mod token;

use download::BlobDownload;
pub(crate) use errors::from_io;
use errors::{bounded, error_chain, registry_error};
use token::{settings_error, RegistryClient};

/// A connection that delivers no byte for this long is cut and the
/// download resumed on a new one.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections in a row that deliver nothing of a blob before its download
/// gives up; back-off grows between them.
pub const BLOB_ATTEMPTS_MAX: u32 = 6;
/// Back-off before the second attempt; doubled for each one after.
const RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// Connecting to a registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole of the request that asks a registry which token service it
/// uses.
const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one blob may use in all, however much each one delivers.
const BLOB_CONNECTIONS_MAX: u32 = 64;
/// Longest registry error message kept.
const MESSAGE_BYTES_MAX: usize = 512;
/// Registries (host and settings) whose client and tokens are kept; the
/// cache is emptied when it is full.
const CLIENTS_MAX: usize = 64;
/// Connections to peers one blob download may use before it goes to the
/// registry for the rest.
const PEER_CONNECTIONS_MAX: u32 = 2;
/// Slowest pace a peer connection may keep over each stall-timeout window
/// (a peer that trickles bytes is left for the registry).
const PEER_BYTES_PER_S_MIN: u64 = 64 << 10;
/// Blobs whose bytes from peers did not match their digest that are
/// remembered, so that the next download of each asks the registry alone.
const PEERS_DISTRUSTED_MAX: usize = 1024;

/// The bytes of a blob as they arrive.
pub type BlobBody = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Where blobs come from before their registry is asked: the cluster's
/// other nodes, which hold them or are fetching them. Blobs are
/// content-addressed, so a peer is trusted with nothing: its bytes are
/// checked against the digest over the whole blob, as a registry's are.
pub trait BlobPeers: Send + Sync + 'static {
    /// The bytes of `desc` from `offset` on, from a peer, or `None` when no
    /// peer offers them (the registry is asked then). `reference` names the
    /// repository, so that a peer that has to fetch the blob knows where.
    fn open(
        &self,
        reference: &ImageRef,
        desc: &Descriptor,
        offset: u64,
    ) -> BoxFuture<'static, Option<BlobBody>>;

    /// A document (a manifest or index) by its digest, whole and checked
    /// against it (see [`read_document`]), from another node's store
    /// alone: nothing is fetched for it. `None` when no node asked has it.
    fn held_document(
        &self,
        reference: &ImageRef,
        digest: &str,
    ) -> BoxFuture<'static, Option<Bytes>>;
}

/// A document (manifest or index) read whole from `body` within the JSON
/// bound, and only if its bytes have `digest`.
pub async fn read_document(mut body: BlobBody, digest: &str) -> Option<Bytes> {
    let limit = Limits::default().json_bytes_max as usize;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.ok()?);
        if out.len() > limit {
            return None;
        }
    }
    (image::sha256_digest(&out) == digest).then(|| Bytes::from(out))
}

/// What the node knows about one registry host: how to reach it and who
/// to be there. Credentials never appear in `Debug` or errors.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAccess {
    /// The operator gave settings for this registry: `insecure` decides
    /// alone. Without settings, a loopback registry is spoken to over
    /// plain HTTP (as Docker does), any other over HTTPS.
    pub explicit: bool,
    /// Plain HTTP allowed.
    pub insecure: bool,
    /// A CA (PEM) trusted for this registry besides the host's bundle.
    pub ca_pem: Option<String>,
    /// Basic credentials, also used to obtain bearer tokens.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RegistryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAccess")
            .field("insecure", &self.insecure)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "…"))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

impl RegistryAccess {
    /// A stable key for the client cache that does not keep the secret in
    /// clear: a hash of every setting.
    fn cache_key(&self, host: &str) -> String {
        let mut hasher = Sha256::new();
        for part in [
            Some(host),
            Some(if self.insecure { "insecure" } else { "secure" }),
            Some(if self.explicit { "explicit" } else { "default" }),
            self.ca_pem.as_deref(),
            self.username.as_deref(),
            self.password.as_deref(),
        ] {
            let part = part.unwrap_or("");
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

/// reqwest under oci-client finds no TLS provider of its own; ring is the
/// one shoal uses everywhere (rustls marks it deprecated for its lack of
/// post-quantum key exchange; aws-lc-rs needs a C build the project keeps
/// out). Installing it again is harmless.
#[allow(deprecated)]
pub fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Checks that `pem` holds at least one certificate and nothing unreadable.
pub fn check_ca_pem(pem: &str) -> std::result::Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let mut count = 0;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        cert.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
        count += 1;
    }
    if count == 0 {
        return Err("no certificate in it (PEM, -----BEGIN CERTIFICATE-----)".into());
    }
    Ok(())
}

/// A parsed, normalized image reference (`docker.io/library/busybox:latest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    pub fn parse(reference: &str) -> Result<Self> {
        let inner = Reference::from_str(reference).map_err(|e| {
            RuntimeError::InvalidImage(format!("image reference {reference:?} is not valid: {e}"))
        })?;
        Ok(ImageRef { inner })
    }

    /// The repository within the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The registry host (`docker.io` for Docker Hub names).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// The same repository at `digest`.
    pub fn at_digest(&self, digest: &str) -> Self {
        ImageRef {
            inner: self.inner.clone_with_digest(digest.to_string()),
        }
    }

    /// Whether the registry is this machine (plain HTTP is allowed there,
    /// as Docker allows it).
    pub fn is_loopback(&self) -> bool {
        let host = self.registry();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.split_once(']').map(|(h, _)| h))
            .unwrap_or_else(|| host.rsplit_once(':').map_or(host, |(h, _)| h));
        host == "localhost" || IpAddr::from_str(host).is_ok_and(|ip| ip.is_loopback())
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

/// A manifest or index as the registry served it, its digest checked.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    /// `sha256:…` of `bytes`.
    pub digest: String,
    pub media_type: String,
}

impl FetchedManifest {
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            ..Descriptor::default()
        }
    }
}

/// Registry clients, one per host and settings, each with its token cache.
pub struct Registries {
    clients: Mutex<HashMap<String, Arc<RegistryClient>>>,
    /// [`STALL_TIMEOUT`], shorter in tests.
    stall: Duration,
    /// Asked for every blob before the registry, once set.
    peers: OnceLock<Arc<dyn BlobPeers>>,
    /// Blobs the peers served wrong bytes of (digests).
    distrusted: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Default for Registries {
    fn default() -> Self {
        Registries {
            clients: Mutex::default(),
            stall: STALL_TIMEOUT,
            peers: OnceLock::new(),
            distrusted: Arc::default(),
        }
    }
}

const MANIFEST_TYPES: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_LIST,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_MANIFEST,
];

impl Registries {
    /// Registries whose connections are cut after `stall` without a byte.
    pub fn with_stall_timeout(stall: Duration) -> Self {
        Registries {
            stall,
            ..Registries::default()
        }
    }

    /// From now on, every blob is asked of `peers` before its registry
    /// (set once; later calls change nothing).
    pub fn fetch_through(&self, peers: Arc<dyn BlobPeers>) {
        let _ = self.peers.set(peers);
    }

    fn client(&self, reference: &ImageRef, access: &RegistryAccess) -> Result<Arc<RegistryClient>> {
        install_ring();
        let host = reference.registry().to_string();
        let credentials = match (&access.username, &access.password) {
            (Some(username), Some(password)) => {
                Some((username.clone(), Zeroizing::new(password.clone())))
            }
            _ => None,
        };
        // Tokens are scoped to a repository: with credentials, a client
        // per repository.
        let mut key = access.cache_key(&host);
        if credentials.is_some() {
            key.push(' ');
            key.push_str(reference.repository());
        }
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let mut http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CHALLENGE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &access.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| settings_error(&host, &e))?;
            http = http.tls_certs_merge(certs);
        }
        let client = RegistryClient {
            plain_http: access.insecure || (!access.explicit && reference.is_loopback()),
            ca_pem: access.ca_pem.clone(),
            stall: self.stall,
            http: http.build().map_err(|e| settings_error(&host, &e))?,
            credentials,
            host,
            current: tokio::sync::Mutex::new(None),
        };
        // A bad CA fails here, not at the first request.
        client.oci_client()?;
        let client = Arc::new(client);
        if clients.len() >= CLIENTS_MAX {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// The manifest or index `reference` names (by tag or digest), its
    /// digest computed over the bytes served and, for a digest reference,
    /// checked against it.
    pub async fn manifest(
        &self,
        reference: &ImageRef,
        access: &RegistryAccess,
    ) -> Result<FetchedManifest> {
        // Pinned to a digest: the nodes that hold it answer first, so
        // that a registry gone does not stop a task from moving.
        if let (Some(digest), Some(peers)) = (reference.digest(), self.peers.get()) {
            if let Some(bytes) = peers.held_document(reference, digest).await {
                let media_type = media_type_of(&bytes)?;
                return Ok(FetchedManifest {
                    bytes,
                    digest: digest.to_string(),
                    media_type,
                });
            }
        }
        let client = self.client(reference, access)?;
        // Authorized as `ready` decided (the auth given here is not used:
        // one is stored already).
        let (bytes, _) = client
            .ready(reference)
            .await?
            .pull_manifest_raw(&reference.inner, &RegistryAuth::Anonymous, MANIFEST_TYPES)
            .await
            .map_err(|e| registry_error(reference, "fetching the manifest", e))?;
        let limit = Limits::default().json_bytes_max;
        if bytes.len() as u64 > limit {
            return Err(RuntimeError::InvalidImage(format!(
                "{reference}: the manifest is {} bytes, more than the {limit} allowed",
                bytes.len()
            )));
        }
        let digest = image::sha256_digest(&bytes);
        if let Some(wanted) = reference.digest() {
            if wanted != digest {
                return Err(RuntimeError::InvalidImage(format!(
                    "{reference}: the registry served a manifest with digest {digest}"
                )));
            }
        }
        let media_type = media_type_of(&bytes)?;
        Ok(FetchedManifest {
            bytes,
            digest,
            media_type,
        })
    }

    /// A small blob (an image config) read whole, its digest checked.
    pub async fn small_blob(
        &self,
        reference: &ImageRef,
        access: &RegistryAccess,
        desc: &Descriptor,
    ) -> Result<Bytes> {
        let limit = Limits::default().json_bytes_max;
        if desc.size > limit {
            return Err(RuntimeError::InvalidImage(format!(
                "{reference}: blob {} is {} bytes, more than the {limit} allowed for JSON documents",
                desc.digest, desc.size
            )));
        }
        let mut stream = std::pin::pin!(self.blob(reference, access, desc));
        let mut out = Vec::with_capacity(desc.size as usize);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(|source| {
                from_io(source, || {
                    format!("{reference}: fetching blob {}", desc.digest)
                })
            })?);
        }
        Ok(Bytes::from(out))
    }

    /// The bytes of one blob as they arrive: from the peers first, when
    /// they are set and offer it, else (or for what they did not deliver)
    /// from the registry. A connection that fails or stalls is replaced by
    /// one that asks for the rest (Range), up to [`BLOB_ATTEMPTS_MAX`]
    /// registry connections in a row without progress; the sha256 of all bytes is checked
    /// against the descriptor before the last chunk is handed out, so a
    /// consumer that commits only after the end never commits a wrong blob.
    /// Errors come as `io::Error`s whose inner error is a [`RuntimeError`].
    pub fn blob(
        &self,
        reference: &ImageRef,
        access: &RegistryAccess,
        desc: &Descriptor,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let state = BlobDownload {
            client: self.client(reference, access),
            reference: reference.clone(),
            desc: desc.clone(),
            offset: 0,
            hasher: Sha256::new(),
            body: None,
            stall: self.stall,
            peers: self
                .peers
                .get()
                .filter(|_| {
                    !self
                        .distrusted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(&desc.digest)
                })
                .cloned(),
            distrusted: self.distrusted.clone(),
            peer_connections: 0,
            from_peer: false,
            peer_bytes: 0,
            window: (tokio::time::Instant::now(), 0),
            attempts: 0,
            connections: 0,
            done: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            if state.done {
                return None;
            }
            let item = state.next_chunk().await;
            if item.is_err() {
                state.done = true;
            }
            Some((item.map_err(std::io::Error::other), state))
        })
    }
}

/// The media type a manifest or index names, or the one its shape implies
/// (older tools leave it out).
fn media_type_of(bytes: &[u8]) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
    }
    let head: Head = serde_json::from_slice(bytes)
        .map_err(|e| RuntimeError::InvalidImage(format!("manifest is not valid JSON: {e}")))?;
    Ok(match head.media_type {
        Some(media_type) => media_type,
        None if head.manifests.is_some() => MEDIA_OCI_INDEX.to_string(),
        None => MEDIA_OCI_MANIFEST.to_string(),
    })
}

/// Whether a media type names an index (kept here so callers need not
/// import the image module).
pub fn is_index(media_type: &str) -> bool {
    is_index_media_type(media_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for (r, loopback) in [
            ("127.0.0.1:5000/a/b:c", true),
            ("localhost:5000/a:b", true),
            ("127.0.0.2:5000/a:b", true),
            ("10.0.0.1:5000/a:b", false),
            ("registry.example:5000/a:b", false),
            ("busybox", false),
        ] {
            assert_eq!(ImageRef::parse(r).unwrap().is_loopback(), loopback, "{r}");
        }
    }

    #[test]
    fn references_normalize_and_bad_ones_name_themselves() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let err = ImageRef::parse("Not Valid").unwrap_err().to_string();
        assert!(err.contains("\"Not Valid\""), "{err}");
    }

    #[test]
    fn credentials_stay_out_of_debug_and_cache_keys() {
        let access = RegistryAccess {
            username: Some("ci".into()),
            password: Some("hunter2-SECRET".into()),
            ..RegistryAccess::default()
        };
        assert!(!format!("{access:?}").contains("hunter2"));
        let key = access.cache_key("r.example");
        assert!(!key.contains("hunter2"));
        let other = RegistryAccess {
            password: Some("other".into()),
            ..access.clone()
        };
        assert_ne!(key, other.cache_key("r.example"));
    }

    #[test]
    fn media_types_come_from_the_document_or_its_shape() {
        assert_eq!(
            media_type_of(
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            )
            .unwrap(),
            MEDIA_DOCKER_MANIFEST
        );
        assert_eq!(
            media_type_of(br#"{"manifests":[]}"#).unwrap(),
            MEDIA_OCI_INDEX
        );
        assert_eq!(
            media_type_of(br#"{"config":{}}"#).unwrap(),
            MEDIA_OCI_MANIFEST
        );
        assert!(media_type_of(b"not json").is_err());
    }
}

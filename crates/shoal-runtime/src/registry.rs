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

/// One registry host (and, with credentials, one repository: tokens are
/// scoped to it) under one set of settings.
///
/// With credentials, shoal does the Docker token flow itself rather than
/// leave it to oci-client, which sends the password to whatever token
/// service a challenge names, follows redirects to get there, and asks
/// again on every token it lacks: here the registry's challenge is read
/// once per token, every token service it names is checked
/// ([`token_service_refusal`]), redirects are refused, and oci-client is
/// handed the bearer token alone, so it never sees a challenge.
struct RegistryClient {
    host: String,
    plain_http: bool,
    ca_pem: Option<String>,
    stall: Duration,
    /// For the challenge and the token, never following a redirect.
    http: reqwest::Client,
    credentials: Option<(String, Zeroizing<String>)>,
    /// oci-client's client with the authorization it uses, until when;
    /// one caller at a time gets a new one.
    current: tokio::sync::Mutex<Option<(Arc<Client>, Option<tokio::time::Instant>)>>,
}

/// How a registry answered `GET /v2/` when asked without credentials.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    /// No credentials needed, or a Basic challenge: the password goes to
    /// the registry itself.
    Registry,
    /// The Docker token flow: the token service and the service name.
    Token {
        realm: String,
        service: Option<String>,
    },
}

/// Reads the `WWW-Authenticate` values of a 401: the first Bearer
/// challenge's token service, every token service any Bearer challenge
/// names being allowed (a second `realm` must not slip past the check).
fn read_challenge(
    values: &[&str],
    registry: &str,
    plain_http: bool,
) -> std::result::Result<Challenge, String> {
    let mut token = None;
    for value in values {
        for challenge in http_auth::ChallengeParser::new(value).filter_map(|c| c.ok()) {
            if !challenge.scheme.eq_ignore_ascii_case("bearer") {
                continue;
            }
            let param = |name: &str| {
                challenge
                    .params
                    .iter()
                    .filter(|(key, _)| key.eq_ignore_ascii_case(name))
                    .map(|(_, value)| value.to_unescaped())
                    .collect::<Vec<_>>()
            };
            let realms = param("realm");
            for realm in &realms {
                if let Some(why) = token_service_refusal(realm, registry, plain_http) {
                    return Err(why);
                }
            }
            if token.is_none() {
                if let Some(realm) = realms.into_iter().next() {
                    token = Some(Challenge::Token {
                        realm,
                        service: param("service").into_iter().next(),
                    });
                }
            }
        }
    }
    Ok(token.unwrap_or(Challenge::Registry))
}

/// What a token service answers.
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A token service's answer is read up to this much.
const TOKEN_ANSWER_BYTES_MAX: usize = 64 << 10;
/// A token whose service says nothing of its lifetime is used this long
/// (the distribution spec's default).
const TOKEN_LIFETIME_DEFAULT_S: u64 = 60;
/// Nor longer than this, whatever it says.
const TOKEN_LIFETIME_MAX_S: u64 = 3600;

impl RegistryClient {
    /// oci-client's client for the next request, with a token that is
    /// still good (a new one fetched when it is not).
    async fn ready(&self, reference: &ImageRef) -> Result<Arc<Client>> {
        let mut current = self.current.lock().await;
        if let Some((client, until)) = current.as_ref() {
            if until.is_none_or(|until| tokio::time::Instant::now() < until) {
                return Ok(client.clone());
            }
        }
        let (auth, until) = match &self.credentials {
            None => (RegistryAuth::Anonymous, None),
            Some((username, password)) => self.authorize(reference, username, password).await?,
        };
        let client = Arc::new(self.oci_client()?);
        client
            .store_auth_if_needed(reference.inner.resolve_registry(), &auth)
            .await;
        *current = Some((client.clone(), until));
        Ok(client)
    }

    fn oci_client(&self) -> Result<Client> {
        let mut config = ClientConfig {
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(self.stall),
            max_concurrent_download: 1,
            ..ClientConfig::default()
        };
        if self.plain_http {
            config.protocol =
                oci_client::client::ClientProtocol::HttpsExcept(vec![self.host.clone()]);
        }
        if let Some(pem) = &self.ca_pem {
            config.extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.as_bytes().to_vec(),
            });
        }
        // `Client::new` would fall back to a client without the CA (and
        // without our timeouts) on a bad certificate.
        Client::try_from(config).map_err(|e| settings_error(&self.host, &e))
    }

    /// The authorization the password earns: itself, for a registry that
    /// takes it (Basic), or a bearer token for the repository from the
    /// token service the registry names, once that service is found safe.
    async fn authorize(
        &self,
        reference: &ImageRef,
        username: &str,
        password: &str,
    ) -> Result<(RegistryAuth, Option<tokio::time::Instant>)> {
        let registry = reference.inner.resolve_registry();
        let scheme = if self.plain_http { "http" } else { "https" };
        let url = format!("{scheme}://{registry}/v2/");
        let unreachable = |what: &str, e: &reqwest::Error| RuntimeError::Registry {
            kind: ErrorKind::Transient,
            message: bounded(format!("{reference}: {what}: {}", error_chain(e))),
        };
        let answer = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| unreachable("asking the registry how to authenticate", &e))?;
        let status = answer.status();
        let refused = |why: String| RuntimeError::Registry {
            kind: ErrorKind::Invalid,
            message: bounded(format!("{}: {why}", reference.registry())),
        };
        let challenge = if status.is_success() {
            Challenge::Registry
        } else if status == reqwest::StatusCode::UNAUTHORIZED {
            let values: Vec<&str> = answer
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .collect();
            read_challenge(&values, reference.registry(), self.plain_http).map_err(refused)?
        } else if status.is_redirection() {
            return Err(refused(format!(
                "the registry answers {url} with a redirect ({status}); its password is not sent where it redirects: name the registry by the host that answers"
            )));
        } else {
            return Err(RuntimeError::Registry {
                kind: if status.is_server_error()
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Invalid
                },
                message: bounded(format!(
                    "{reference}: the registry answered {url} with {status}"
                )),
            });
        };
        let (realm, service) = match challenge {
            Challenge::Registry => {
                return Ok((
                    RegistryAuth::Basic(username.to_string(), password.to_string()),
                    None,
                ))
            }
            Challenge::Token { realm, service } => (realm, service),
        };
        let scope = format!("repository:{}:pull", reference.repository());
        let mut query = vec![("scope", scope.as_str())];
        if let Some(service) = &service {
            query.push(("service", service.as_str()));
        }
        let asked = tokio::time::Instant::now();
        let answer = self
            .http
            .get(&realm)
            .query(&query)
            .basic_auth(username, Some(password))
            .send()
            .await
            .map_err(|e| unreachable("asking the registry's token service", &e))?;
        let status = answer.status();
        if !status.is_success() {
            let kind =
                if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Invalid
                };
            let what = if matches!(status.as_u16(), 401 | 403) {
                "the registry's token service refused the credentials (add them with `shoal registry add`)".to_string()
            } else {
                format!("the registry's token service answered {status}")
            };
            return Err(RuntimeError::Registry {
                kind,
                message: bounded(format!("{reference}: {what}")),
            });
        }
        let body = read_limited(answer, TOKEN_ANSWER_BYTES_MAX)
            .await
            .map_err(|e| unreachable("reading the registry's token", &e))?;
        let token: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            refused("the registry's token service answered something that is no token".into())
        })?;
        let Some(bearer) = token.token.or(token.access_token).filter(|t| !t.is_empty()) else {
            return Err(refused(
                "the registry's token service answered without a token".into(),
            ));
        };
        // Used for four fifths of its life, so that it is not out of date
        // when it arrives.
        let lifetime_ms = token
            .expires_in
            .unwrap_or(TOKEN_LIFETIME_DEFAULT_S)
            .min(TOKEN_LIFETIME_MAX_S)
            * 800;
        Ok((
            RegistryAuth::Bearer(bearer),
            Some(asked + Duration::from_millis(lifetime_ms)),
        ))
    }
}

/// The body of `answer`, refused beyond `max` bytes.
async fn read_limited(
    mut answer: reqwest::Response,
    max: usize,
) -> std::result::Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await? {
        if body.len() + chunk.len() > max {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn settings_error(host: &str, e: &dyn std::fmt::Display) -> RuntimeError {
    RuntimeError::Registry {
        kind: ErrorKind::Invalid,
        message: format!("{host}: the registry's settings do not make a client: {e}"),
    }
}

/// Why the registry `registry` (a host, with its port if any) may not have
/// its password sent to the token service at `realm`, or `None` when it
/// may: over HTTPS anywhere (the registry chose it, as Docker Hub chooses
/// auth.docker.io), over plain HTTP only to the registry's own host when
/// plain HTTP is allowed for the registry, or to a loopback address when
/// the registry is on this machine too.
fn token_service_refusal(realm: &str, registry: &str, registry_plain_http: bool) -> Option<String> {
    let fix = "serve the token service over HTTPS, or add the registry with `shoal registry add --insecure` if it and its token service share a host on a network you trust";
    let Ok(url) = reqwest::Url::parse(realm) else {
        return Some(format!(
            "the registry names a token service that is no URL ({realm:?}); its password is not sent"
        ));
    };
    match url.scheme() {
        "https" => return None,
        "http" => {}
        other => {
            return Some(format!(
                "the registry names a token service reached by {other:?}, not HTTPS ({realm}); its password is not sent"
            ))
        }
    }
    let registry_host = registry
        .strip_prefix('[')
        .and_then(|h| h.split_once(']').map(|(h, _)| h))
        .unwrap_or_else(|| registry.rsplit_once(':').map_or(registry, |(h, _)| h));
    let is_loopback = |host: &str| {
        host.eq_ignore_ascii_case("localhost")
            || IpAddr::from_str(host).is_ok_and(|ip| ip.is_loopback())
    };
    let realm_loopback = match url.host() {
        Some(url::Host::Domain(name)) => is_loopback(name),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    // A registry on this machine may have its token service here too; a
    // remote one naming this machine would hand the password to whatever
    // listens on that port here.
    if realm_loopback && is_loopback(registry_host) {
        return None;
    }
    let same_host = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .is_some_and(|h| h.eq_ignore_ascii_case(registry_host));
    if registry_plain_http && same_host {
        return None;
    }
    Some(format!(
        "the registry sends its password to a token service over plain HTTP ({realm}), where anyone on the path could read it; shoal sends it over HTTPS only: {fix}"
    ))
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

type Body = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

struct BlobDownload {
    client: Result<Arc<RegistryClient>>,
    reference: ImageRef,
    desc: Descriptor,
    offset: u64,
    hasher: Sha256,
    body: Option<Body>,
    stall: Duration,
    peers: Option<Arc<dyn BlobPeers>>,
    distrusted: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Connections to peers so far.
    peer_connections: u32,
    /// Whether the connection open now is a peer's.
    from_peer: bool,
    /// Bytes that came from peers.
    peer_bytes: u64,
    /// When the current pace window of a peer connection began, and the
    /// bytes it has brought since.
    window: (tokio::time::Instant, u64),
    /// Registry connections in a row without a byte; and in all.
    attempts: u32,
    connections: u32,
    done: bool,
}

impl BlobDownload {
    async fn next_chunk(&mut self) -> Result<Bytes> {
        loop {
            if self.body.is_none() {
                self.body = Some(self.connect().await?);
            }
            let body = self.body.as_mut().expect("set above");
            let why = match tokio::time::timeout(self.stall, body.next()).await {
                Ok(Some(Ok(chunk))) if self.from_peer => match self.peer_misbehaves(chunk.len()) {
                    None => {
                        self.peer_bytes += chunk.len() as u64;
                        return self.take(chunk);
                    }
                    Some(why) => {
                        // Nothing of this chunk is handed on: the registry
                        // gives the rest.
                        self.peer_connections = PEER_CONNECTIONS_MAX;
                        why
                    }
                },
                Ok(Some(Ok(chunk))) => return self.take(chunk),
                Ok(None) => format!(
                    "the connection ended after {} of {} bytes",
                    self.offset, self.desc.size
                ),
                Ok(Some(Err(e))) => e.to_string(),
                Err(_) => format!("no byte for {:?}", self.stall),
            };
            tracing::warn!(
                image = %self.reference,
                blob = %self.desc.digest,
                offset = self.offset,
                reason = %why,
                "blob download interrupted; resuming"
            );
            self.body = None;
        }
    }

    /// Why a peer's next chunk of `len` bytes is not taken: more than the
    /// blob holds, or a pace below [`PEER_BYTES_PER_S_MIN`] over a window.
    fn peer_misbehaves(&mut self, len: usize) -> Option<String> {
        if self.offset + len as u64 > self.desc.size {
            return Some(format!(
                "the peer sent more than the blob's {} bytes",
                self.desc.size
            ));
        }
        let (started, bytes) = &mut self.window;
        *bytes += len as u64;
        let elapsed = started.elapsed();
        if elapsed >= self.stall {
            if *bytes < PEER_BYTES_PER_S_MIN * elapsed.as_secs().max(1) {
                return Some(format!(
                    "the peer sent {bytes} bytes in {elapsed:?}, slower than {PEER_BYTES_PER_S_MIN} bytes/s"
                ));
            }
            *started = tokio::time::Instant::now();
            *bytes = 0;
        }
        None
    }

    /// Counts and hashes a chunk; at the end, checks the digest.
    fn take(&mut self, chunk: Bytes) -> Result<Bytes> {
        let end = self.offset + chunk.len() as u64;
        if end > self.desc.size {
            return Err(RuntimeError::InvalidImage(format!(
                "{}: blob {} is longer than the {} bytes its descriptor says",
                self.reference, self.desc.digest, self.desc.size
            )));
        }
        self.hasher.update(&chunk);
        self.offset = end;
        if !chunk.is_empty() {
            // Progress: the next cut starts a fresh run of attempts.
            self.attempts = 0;
        }
        if end == self.desc.size {
            self.done = true;
            let digest = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
            if digest != self.desc.digest {
                let mut from = "";
                if self.peer_bytes > 0 {
                    // Some bytes came from a peer: the next download of
                    // this blob asks the registry alone.
                    let mut distrusted = self.distrusted.lock().unwrap_or_else(|p| p.into_inner());
                    if distrusted.len() >= PEERS_DISTRUSTED_MAX {
                        distrusted.clear();
                    }
                    distrusted.insert(self.desc.digest.clone());
                    from = " (partly from a peer; the next attempt asks the registry alone)";
                }
                return Err(RuntimeError::InvalidImage(format!(
                    "{}: blob {} arrived with digest {digest}{from}; not stored",
                    self.reference, self.desc.digest
                )));
            }
        }
        Ok(chunk)
    }

    /// Opens a connection for the bytes from `offset` on, after the
    /// back-off that its attempt number earns.
    async fn connect(&mut self) -> Result<Body> {
        if let Some(peers) = &self.peers {
            if self.peer_connections < PEER_CONNECTIONS_MAX {
                self.peer_connections += 1;
                match peers.open(&self.reference, &self.desc, self.offset).await {
                    Some(body) => {
                        self.from_peer = true;
                        self.window = (tokio::time::Instant::now(), 0);
                        return Ok(body);
                    }
                    // No peer offers it: straight to the registry.
                    None => self.peer_connections = PEER_CONNECTIONS_MAX,
                }
            }
        }
        self.from_peer = false;
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(e) => return Err(RuntimeError::InvalidImage(e.to_string())),
        };
        loop {
            if self.attempts >= BLOB_ATTEMPTS_MAX || self.connections >= BLOB_CONNECTIONS_MAX {
                return Err(RuntimeError::Registry {
                    kind: ErrorKind::Transient,
                    message: format!(
                        "{}: blob {} still incomplete after {} connections ({} of {} bytes)",
                        self.reference,
                        self.desc.digest,
                        self.connections,
                        self.offset,
                        self.desc.size
                    ),
                });
            }
            if self.attempts > 0 {
                let backoff = RETRY_BACKOFF_FIRST * 2u32.pow(self.attempts - 1);
                tokio::time::sleep(backoff).await;
            }
            self.attempts += 1;
            self.connections += 1;
            let layer = OciDescriptor {
                media_type: self.desc.media_type.clone(),
                digest: self.desc.digest.clone(),
                size: i64::try_from(self.desc.size).unwrap_or(i64::MAX),
                ..OciDescriptor::default()
            };
            // Authorized as `ready` decided: oci-client holds no password
            // to hand to a token service of its choosing.
            let client = match client.ready(&self.reference).await {
                Ok(client) => client,
                Err(e) if e.kind() == ErrorKind::Transient => {
                    tracing::warn!(image = %self.reference, blob = %self.desc.digest, error = %e, "registry unreachable; retrying");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let opened: std::result::Result<Body, _> = if self.offset == 0 {
                client
                    .pull_blob_stream(&self.reference.inner, &layer)
                    .await
                    .map(|s| Box::pin(s.stream) as Body)
            } else {
                match client
                    .pull_blob_stream_partial(&self.reference.inner, &layer, self.offset, None)
                    .await
                {
                    Ok(BlobResponse::Partial(s)) => Ok(Box::pin(s.stream) as Body),
                    // The registry ignored the Range: its bytes up to the
                    // offset are dropped, as they are already stored.
                    Ok(BlobResponse::Full(s)) => {
                        tracing::warn!(
                            image = %self.reference,
                            blob = %self.desc.digest,
                            "the registry does not serve ranges; skipping what is already stored"
                        );
                        Ok(skip_bytes(Box::pin(s.stream), self.offset))
                    }
                    Err(e) => Err(e),
                }
            };
            match opened {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    let e = registry_error(&self.reference, "fetching a blob", e);
                    if e.kind() != ErrorKind::Transient {
                        return Err(e);
                    }
                    tracing::warn!(image = %self.reference, blob = %self.desc.digest, error = %e, "blob request failed; retrying");
                }
            }
        }
    }
}

/// The error a blob stream carries inside an `io::Error` (with its kind),
/// or the `io::Error` itself with `context`.
pub(crate) fn from_io(source: std::io::Error, context: impl FnOnce() -> String) -> RuntimeError {
    if !source
        .get_ref()
        .is_some_and(|inner| inner.is::<RuntimeError>())
    {
        return RuntimeError::Io {
            context: context(),
            source,
        };
    }
    match source
        .into_inner()
        .map(|inner| inner.downcast::<RuntimeError>())
    {
        Some(Ok(inner)) => *inner,
        _ => RuntimeError::Registry {
            kind: ErrorKind::Internal,
            message: format!("{}: an error of a kind just checked vanished", context()),
        },
    }
}

/// The stream without its first `skip` bytes.
fn skip_bytes(stream: Body, skip: u64) -> Body {
    let mut left = skip;
    Box::pin(stream.filter_map(move |item| {
        let out = match item {
            Ok(chunk) if left >= chunk.len() as u64 => {
                left -= chunk.len() as u64;
                None
            }
            Ok(mut chunk) => {
                let rest = chunk.split_off(left as usize);
                left = 0;
                Some(Ok(rest))
            }
            Err(e) => Some(Err(e)),
        };
        std::future::ready(out)
    }))
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

/// What a registry failure means: not there (the reference is wrong), not
/// allowed (the credentials are), or not now (the network, the registry's
/// own trouble).
fn registry_error(reference: &ImageRef, doing: &str, e: OciDistributionError) -> RuntimeError {
    use OciDistributionError as E;
    let (kind, what) = match &e {
        E::ImageManifestNotFoundError(_) => (
            ErrorKind::ImageMissing,
            "the registry has no such image".to_string(),
        ),
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => (
            ErrorKind::Invalid,
            "the registry refused the credentials (add them with `shoal registry add`)".to_string(),
        ),
        E::ServerError { code, message, .. } => match *code {
            404 => (
                ErrorKind::ImageMissing,
                "the registry has no such image".to_string(),
            ),
            401 | 403 => (
                ErrorKind::Invalid,
                format!("the registry refused access ({code}): {message}"),
            ),
            429 | 500..=599 => (
                ErrorKind::Transient,
                format!("the registry answered {code}: {message}"),
            ),
            _ => (
                ErrorKind::Invalid,
                format!("the registry answered {code}: {message}"),
            ),
        },
        E::RegistryError { envelope, .. } => {
            use oci_client::errors::OciErrorCode as C;
            let text = envelope
                .errors
                .iter()
                .map(|x| x.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            let has = |wanted: &[C]| envelope.errors.iter().any(|x| wanted.contains(&x.code));
            if has(&[
                C::ManifestUnknown,
                C::NameUnknown,
                C::BlobUnknown,
                C::ManifestBlobUnknown,
                C::NotFound,
            ]) {
                (
                    ErrorKind::ImageMissing,
                    format!("the registry has no such image: {text}"),
                )
            } else if has(&[C::Toomanyrequests]) {
                (
                    ErrorKind::Transient,
                    format!("the registry asks to slow down: {text}"),
                )
            } else if has(&[C::Unauthorized, C::Denied]) {
                (
                    ErrorKind::Invalid,
                    format!("the registry refused access: {text}"),
                )
            } else {
                // A name, tag, manifest or digest it calls invalid, or
                // something it does not support: asking again changes nothing.
                (ErrorKind::Invalid, format!("the registry refused: {text}"))
            }
        }
        E::RequestError(inner) => (
            ErrorKind::Transient,
            format!("cannot reach the registry: {}", error_chain(inner)),
        ),
        E::IoError(inner) => (
            ErrorKind::Transient,
            format!("reading from the registry: {inner}"),
        ),
        other => (ErrorKind::Invalid, other.to_string()),
    };
    RuntimeError::Registry {
        kind,
        message: bounded(format!("{reference}: {doing}: {what}")),
    }
}

/// What a registry says reaches task statuses (in the replicated log) and
/// API answers: at most [`MESSAGE_BYTES_MAX`] of it.
fn bounded(mut message: String) -> String {
    if message.len() > MESSAGE_BYTES_MAX {
        let mut end = MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// An error with its causes, which reqwest keeps apart (the TLS or
/// connection reason is only in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    let mut depth = 0;
    while let Some(s) = source {
        if depth >= 8 {
            break;
        }
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
        depth += 1;
    }
    out
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

/// The blob download against a small registry of the test's own that cuts,
/// stalls, ignores ranges or lies, without containerd.
#[cfg(test)]
mod download_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};

    use super::*;

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Fault {
        /// Every response ends after this many bytes of what it owes.
        CutEvery(usize),
        /// The first response stalls after half the blob.
        StallOnce,
        /// Ranges are ignored; the first response is cut after half.
        NoRanges,
        /// One byte is wrong.
        Lie,
        /// Every response ends before a byte.
        Nothing,
    }

    struct Server {
        blob: Vec<u8>,
        fault: Fault,
        requests: AtomicUsize,
        served: AtomicUsize,
    }

    async fn blob(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
        let n = server.requests.fetch_add(1, Ordering::SeqCst);
        let from: usize = headers
            .get("range")
            .and_then(|r| {
                r.to_str()
                    .ok()?
                    .strip_prefix("bytes=")?
                    .strip_suffix('-')?
                    .parse()
                    .ok()
            })
            .filter(|_| server.fault != Fault::NoRanges)
            .unwrap_or(0);
        let mut body = server.blob[from..].to_vec();
        if server.fault == Fault::Lie {
            body[0] ^= 1;
        }
        let half = server.blob.len() / 2;
        let (keep, stall) = match server.fault {
            Fault::CutEvery(n) => (n.min(body.len()), false),
            Fault::StallOnce if n == 0 => (half, true),
            Fault::NoRanges if n == 0 => (half, false),
            Fault::Nothing => (0, false),
            _ => (body.len(), false),
        };
        let status = if from > 0 {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let total = body.len();
        body.truncate(keep);
        server.served.fetch_add(keep, Ordering::SeqCst);
        let cut = keep < total;
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(body))]).chain(
            futures::stream::once(async move {
                if stall {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                if cut {
                    // Let what was sent leave before the connection drops.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(std::io::Error::other("cut"))
                } else {
                    Ok(Bytes::new())
                }
            }),
        );
        let mut response = (status, axum::body::Body::from_stream(stream)).into_response();
        response
            .headers_mut()
            .insert("content-length", total.to_string().parse().expect("number"));
        response
    }

    async fn serve(fault: Fault) -> (ImageRef, Descriptor, Arc<Server>) {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let desc = Descriptor {
            media_type: "application/octet-stream".into(),
            digest: image::sha256_digest(&data),
            size: data.len() as u64,
            ..Descriptor::default()
        };
        let server = Arc::new(Server {
            blob: data,
            fault,
            requests: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/v2/", axum::routing::get(|| async { "{}" }))
            .route("/v2/t/blobs/{digest}", axum::routing::get(blob))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let host = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (
            ImageRef::parse(&format!("{host}/t:1")).expect("ref"),
            desc,
            server,
        )
    }

    async fn fetch(fault: Fault) -> (Result<Vec<u8>>, Descriptor, Arc<Server>) {
        let (reference, desc, server) = serve(fault).await;
        let registries = Registries::with_stall_timeout(Duration::from_millis(300));
        (download(&registries, &reference, &desc).await, desc, server)
    }

    async fn download(
        registries: &Registries,
        reference: &ImageRef,
        desc: &Descriptor,
    ) -> Result<Vec<u8>> {
        let mut stream =
            std::pin::pin!(registries.blob(reference, &RegistryAccess::default(), desc));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(e) => return Err(from_io(e, String::new)),
            }
        }
        Ok(out)
    }

    /// A peer that serves the blob up to `upto` bytes (with one byte
    /// flipped when it lies), then drops the connection; asked again past
    /// that point, it has nothing.
    struct Peer {
        blob: Vec<u8>,
        upto: usize,
        lie: bool,
        /// Bytes sent past the end of what it serves.
        extra: usize,
        offsets: Mutex<Vec<u64>>,
    }

    impl BlobPeers for Peer {
        fn held_document(
            &self,
            _reference: &ImageRef,
            _digest: &str,
        ) -> BoxFuture<'static, Option<Bytes>> {
            Box::pin(std::future::ready(None))
        }

        fn open(
            &self,
            _reference: &ImageRef,
            _desc: &Descriptor,
            offset: u64,
        ) -> BoxFuture<'static, Option<BlobBody>> {
            self.offsets.lock().expect("offsets").push(offset);
            let from = offset as usize;
            let mut bytes = self.blob[from.min(self.upto)..self.upto].to_vec();
            if self.lie && !bytes.is_empty() {
                bytes[0] ^= 1;
            }
            if !bytes.is_empty() {
                bytes.extend(std::iter::repeat_n(0u8, self.extra));
            }
            Box::pin(async move {
                if bytes.is_empty() {
                    return None;
                }
                let body = futures::stream::iter([
                    Ok(Bytes::from(bytes)),
                    Err(std::io::Error::other("the peer went away")),
                ]);
                Some(Box::pin(body) as BlobBody)
            })
        }
    }

    async fn fetch_with_peer(upto: usize, lie: bool) -> (Arc<Peer>, Arc<Server>, Registries) {
        fetch_with_peer_sending(upto, lie, 0).await
    }

    async fn fetch_with_peer_sending(
        upto: usize,
        lie: bool,
        extra: usize,
    ) -> (Arc<Peer>, Arc<Server>, Registries) {
        let (reference, desc, server) = serve(Fault::CutEvery(usize::MAX)).await;
        let peer = Arc::new(Peer {
            blob: server.blob.clone(),
            upto,
            lie,
            extra,
            offsets: Mutex::default(),
        });
        let registries = Registries::with_stall_timeout(Duration::from_millis(300));
        registries.fetch_through(peer.clone());
        let got = download(&registries, &reference, &desc).await;
        if lie {
            let err = got.expect_err("wrong bytes from the peer");
            assert!(err.to_string().contains("partly from a peer"), "{err}");
            // The next download asks the registry alone.
            let got = download(&registries, &reference, &desc).await;
            assert_eq!(image::sha256_digest(&got.expect("complete")), desc.digest);
        } else {
            assert_eq!(image::sha256_digest(&got.expect("complete")), desc.digest);
        }
        (peer, server, registries)
    }

    #[tokio::test]
    async fn what_a_peer_did_not_deliver_comes_from_the_registry_by_range() {
        let (peer, server, _) = fetch_with_peer(120_000, false).await;
        // The peer was asked from 0, then from where it stopped, and had
        // nothing more: the registry served the rest, once.
        assert_eq!(*peer.offsets.lock().expect("offsets"), vec![0, 120_000]);
        assert_eq!(server.requests.load(Ordering::SeqCst), 1);
        assert_eq!(server.served.load(Ordering::SeqCst), 80_000);
    }

    #[tokio::test]
    async fn a_whole_blob_from_a_peer_asks_nothing_of_the_registry() {
        let (peer, server, _) = fetch_with_peer(200_000, false).await;
        assert_eq!(*peer.offsets.lock().expect("offsets"), vec![0]);
        assert_eq!(server.requests.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_peer_that_sends_too_much_is_left_for_the_registry() {
        let (peer, server, _) = fetch_with_peer_sending(200_000, false, 10).await;
        // Its chunk ran past the blob's end: nothing of it was taken, and
        // the registry served the whole blob.
        assert_eq!(*peer.offsets.lock().expect("offsets"), vec![0]);
        assert_eq!(server.requests.load(Ordering::SeqCst), 1);
        assert_eq!(server.served.load(Ordering::SeqCst), 200_000);
    }

    /// A peer that sends one byte every 100 ms, never silent for a whole
    /// stall timeout.
    struct Trickle(Vec<u8>);

    impl BlobPeers for Trickle {
        fn held_document(
            &self,
            _reference: &ImageRef,
            _digest: &str,
        ) -> BoxFuture<'static, Option<Bytes>> {
            Box::pin(std::future::ready(None))
        }

        fn open(
            &self,
            _reference: &ImageRef,
            _desc: &Descriptor,
            offset: u64,
        ) -> BoxFuture<'static, Option<BlobBody>> {
            let bytes = self.0[offset as usize..].to_vec();
            Box::pin(async move {
                let body = futures::stream::iter(bytes).then(|byte| async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(Bytes::from(vec![byte]))
                });
                Some(Box::pin(body) as BlobBody)
            })
        }
    }

    #[tokio::test]
    async fn a_peer_that_trickles_is_left_for_the_registry() {
        let (reference, desc, server) = serve(Fault::CutEvery(usize::MAX)).await;
        let registries = Registries::with_stall_timeout(Duration::from_millis(300));
        registries.fetch_through(Arc::new(Trickle(server.blob.clone())));
        let got = download(&registries, &reference, &desc).await;
        assert_eq!(image::sha256_digest(&got.expect("complete")), desc.digest);
        // A few bytes came from the peer, the rest from the registry.
        let served = server.served.load(Ordering::SeqCst);
        assert!((199_990..200_000).contains(&served), "{served}");
    }

    #[tokio::test]
    async fn a_peer_that_lies_is_caught_and_not_asked_again_for_that_blob() {
        let (peer, server, _) = fetch_with_peer(120_000, true).await;
        // Asked for the first download only; the second went to the
        // registry for the whole blob.
        assert_eq!(*peer.offsets.lock().expect("offsets"), vec![0, 120_000]);
        assert_eq!(server.requests.load(Ordering::SeqCst), 2);
        assert_eq!(server.served.load(Ordering::SeqCst), 80_000 + 200_000);
    }

    #[tokio::test]
    async fn cut_connections_resume_while_each_makes_progress() {
        let (got, desc, server) = fetch(Fault::CutEvery(30_000)).await;
        let got = got.expect("complete");
        assert_eq!(image::sha256_digest(&got), desc.digest);
        // 200,000 bytes in pieces of 30,000: 7 connections, more than the
        // 6 in a row allowed without progress, and no byte sent twice.
        assert_eq!(server.requests.load(Ordering::SeqCst), 7);
        assert_eq!(server.served.load(Ordering::SeqCst), 200_000);
    }

    #[tokio::test]
    async fn a_stalled_connection_is_replaced() {
        let (got, desc, server) = fetch(Fault::StallOnce).await;
        assert_eq!(image::sha256_digest(&got.expect("complete")), desc.digest);
        assert_eq!(server.requests.load(Ordering::SeqCst), 2);
        assert_eq!(server.served.load(Ordering::SeqCst), 200_000);
    }

    #[tokio::test]
    async fn a_registry_that_ignores_ranges_still_gives_the_right_bytes() {
        let (got, desc, server) = fetch(Fault::NoRanges).await;
        assert_eq!(image::sha256_digest(&got.expect("complete")), desc.digest);
        assert_eq!(server.requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn wrong_bytes_fail_before_the_last_chunk() {
        let (got, _, _) = fetch(Fault::Lie).await;
        let err = got.expect_err("a wrong digest");
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        assert!(err.to_string().contains("not stored"), "{err}");
    }

    #[tokio::test]
    async fn connections_that_deliver_nothing_give_up() {
        let (got, _, server) = fetch(Fault::Nothing).await;
        let err = got.expect_err("gives up");
        assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
        assert_eq!(
            server.requests.load(Ordering::SeqCst),
            BLOB_ATTEMPTS_MAX as usize
        );
    }
}

/// The token service a registry names must receive its password safely.
#[cfg(test)]
mod token_service_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};

    use super::*;

    #[test]
    fn a_password_goes_to_a_token_service_over_https_or_to_this_machine() {
        for (realm, registry, plain, allowed) in [
            ("https://auth.example/token", "r.example", false, true),
            ("https://10.1.1.1:8443/token", "10.1.1.1:5000", true, true),
            ("http://auth.example/token", "r.example", false, false),
            // Plain HTTP to the registry's own host only when plain HTTP
            // is allowed for the registry.
            ("http://r.example:5001/token", "r.example:5000", true, true),
            ("http://R.Example:5001/token", "r.example:5000", true, true),
            (
                "http://r.example:5001/token",
                "r.example:5000",
                false,
                false,
            ),
            ("http://other.example/token", "r.example:5000", true, false),
            // This machine, for a registry on this machine only.
            ("http://127.0.0.1:9000/token", "127.0.0.1:5000", false, true),
            ("http://localhost/token", "localhost:5000", false, true),
            ("http://[::1]:9000/token", "[::1]:5000", false, true),
            ("http://127.0.0.1:9000/token", "r.example", false, false),
            ("http://localhost/token", "r.example", true, false),
            ("ftp://auth.example/token", "r.example", false, false),
            ("not a url", "r.example", false, false),
        ] {
            let refusal = token_service_refusal(realm, registry, plain);
            assert_eq!(
                refusal.is_none(),
                allowed,
                "{realm} for {registry}: {refusal:?}"
            );
        }
        let why = token_service_refusal("http://auth.example/t", "r.example", false).unwrap();
        assert!(
            why.contains("http://auth.example/t") && why.contains("HTTPS"),
            "{why}"
        );
    }

    #[test]
    fn every_token_service_a_challenge_names_is_checked() {
        let read = |values: &[&str]| read_challenge(values, "r.example", false);
        assert_eq!(
            read(&[r#"Bearer realm="https://auth.example/token",service="r""#]),
            Ok(Challenge::Token {
                realm: "https://auth.example/token".into(),
                service: Some("r".into())
            })
        );
        assert_eq!(
            read(&[r#"Basic realm="Registry""#]),
            Ok(Challenge::Registry)
        );
        assert_eq!(read(&[]), Ok(Challenge::Registry));
        // A second realm in the same challenge, a second challenge, a
        // second header: each is checked.
        assert!(
            read(&[r#"Bearer realm="https://a.example/t",realm="http://b.example/t""#]).is_err()
        );
        assert!(read(&[r#"Basic realm="x", Bearer realm="https://a.example/t", Bearer realm="http://b.example/t""#]).is_err());
        assert!(read(&[
            r#"Bearer realm="https://a.example/t""#,
            r#"Bearer realm="http://b.example/t""#
        ])
        .is_err());
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum V2 {
        /// 401 with the challenge.
        Challenge,
        /// A redirect to the token service's host.
        Redirect,
        /// 502 for the first request, then the challenge.
        FailOnce,
    }

    struct Registry {
        realm: std::sync::Mutex<String>,
        v2: V2,
        v2_asked: AtomicUsize,
        expires_in: u64,
        manifests: AtomicUsize,
        tokens: AtomicUsize,
    }

    const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

    fn challenge(registry: &Registry) -> Response {
        let realm = registry.realm.lock().unwrap().clone();
        (
            StatusCode::UNAUTHORIZED,
            [(
                "www-authenticate",
                format!(r#"Bearer realm="{realm}",service="test""#),
            )],
        )
            .into_response()
    }

    async fn v2(State(registry): State<Arc<Registry>>) -> Response {
        let n = registry.v2_asked.fetch_add(1, Ordering::SeqCst);
        match registry.v2 {
            V2::Redirect => (
                StatusCode::TEMPORARY_REDIRECT,
                [("location", "http://192.0.2.7/v2/")],
            )
                .into_response(),
            V2::FailOnce if n == 0 => StatusCode::BAD_GATEWAY.into_response(),
            _ => challenge(&registry),
        }
    }

    /// Grants `token-REPO-N` for the repository the scope names, to Basic
    /// credentials.
    async fn token(
        State(registry): State<Arc<Registry>>,
        Query(query): Query<std::collections::HashMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        let n = registry.tokens.fetch_add(1, Ordering::SeqCst);
        let basic = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Basic "));
        let repository = query
            .get("scope")
            .and_then(|s| s.strip_prefix("repository:")?.strip_suffix(":pull"))
            .unwrap_or("none");
        if !basic || query.get("service").map(String::as_str) != Some("test") {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        axum::Json(serde_json::json!({
            "token": format!("token-{repository}-{n}"),
            "expires_in": registry.expires_in,
        }))
        .into_response()
    }

    async fn manifest(
        State(registry): State<Arc<Registry>>,
        axum::extract::Path((repository, _tag)): axum::extract::Path<(String, String)>,
        headers: HeaderMap,
    ) -> Response {
        registry.manifests.fetch_add(1, Ordering::SeqCst);
        let scoped = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(&format!("Bearer token-{repository}-")));
        if scoped {
            ([("content-type", MEDIA_OCI_MANIFEST)], MANIFEST).into_response()
        } else {
            challenge(&registry)
        }
    }

    /// A registry on loopback whose challenge names `realm` (`{addr}` is
    /// its own address), with a token service of its own at /token.
    async fn serve(
        v2_mode: V2,
        realm: &str,
        expires_in: u64,
    ) -> (Arc<Registry>, std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let registry = Arc::new(Registry {
            realm: std::sync::Mutex::new(realm.replace("{addr}", &addr.to_string())),
            v2: v2_mode,
            v2_asked: AtomicUsize::new(0),
            expires_in,
            manifests: AtomicUsize::new(0),
            tokens: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/v2/", axum::routing::get(v2))
            .route("/token", axum::routing::get(token))
            .route(
                "/v2/{repository}/manifests/{tag}",
                axum::routing::get(manifest),
            )
            .with_state(registry.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (registry, addr)
    }

    fn access() -> RegistryAccess {
        RegistryAccess {
            username: Some("ci".into()),
            password: Some("hunter2-SECRET".into()),
            ..RegistryAccess::default()
        }
    }

    fn reference(addr: std::net::SocketAddr, repository: &str) -> ImageRef {
        ImageRef::parse(&format!("{addr}/{repository}:1")).unwrap()
    }

    #[tokio::test]
    async fn a_password_is_not_sent_to_a_token_service_over_plain_http() {
        // TEST-NET-1: nothing answers there; the password must not even
        // be tried.
        let (registry, addr) = serve(V2::Challenge, "http://192.0.2.7/token", 60).await;
        let registries = Registries::default();
        let error = registries
            .manifest(&reference(addr, "t"), &access())
            .await
            .expect_err("refused");
        let message = error.to_string();
        assert_eq!(error.kind(), ErrorKind::Invalid, "{message}");
        assert!(
            message.contains("http://192.0.2.7/token") && message.contains("over plain HTTP"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
        assert_eq!(registry.manifests.load(Ordering::SeqCst), 0);
        // A blob is refused alike.
        let desc = Descriptor {
            media_type: "application/octet-stream".into(),
            digest: image::sha256_digest(b"{}"),
            size: 2,
            ..Descriptor::default()
        };
        let error = registries
            .small_blob(&reference(addr, "t"), &access(), &desc)
            .await
            .expect_err("refused");
        assert!(error.to_string().contains("over plain HTTP"), "{error}");
    }

    #[tokio::test]
    async fn a_redirect_of_the_challenge_is_not_followed_with_the_password() {
        let (registry, addr) = serve(V2::Redirect, "http://{addr}/token", 60).await;
        let error = Registries::default()
            .manifest(&reference(addr, "t"), &access())
            .await
            .expect_err("refused");
        assert_eq!(error.kind(), ErrorKind::Invalid, "{error}");
        assert!(error.to_string().contains("redirect"), "{error}");
        assert_eq!(registry.tokens.load(Ordering::SeqCst), 0);
        assert_eq!(registry.manifests.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_registry_that_fails_once_is_asked_again() {
        let (registry, addr) = serve(V2::FailOnce, "http://{addr}/token", 60).await;
        let registries = Registries::default();
        let error = registries
            .manifest(&reference(addr, "t"), &access())
            .await
            .expect_err("the registry failed");
        assert_eq!(error.kind(), ErrorKind::Transient, "{error}");
        let fetched = registries
            .manifest(&reference(addr, "t"), &access())
            .await
            .expect("asked again");
        assert_eq!(fetched.bytes.as_ref(), MANIFEST.as_bytes());
        assert_eq!(registry.v2_asked.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn each_repository_gets_its_token_and_a_token_is_renewed_before_it_ends() {
        // Tokens that live 1 s: used for 0.8 s.
        let (registry, addr) = serve(V2::Challenge, "http://{addr}/token", 1).await;
        let registries = Registries::default();
        for repository in ["t", "u", "t"] {
            let fetched = registries
                .manifest(&reference(addr, repository), &access())
                .await
                .expect("manifest");
            assert_eq!(fetched.bytes.as_ref(), MANIFEST.as_bytes());
        }
        assert_eq!(
            registry.tokens.load(Ordering::SeqCst),
            2,
            "one token per repository"
        );
        tokio::time::sleep(Duration::from_millis(900)).await;
        registries
            .manifest(&reference(addr, "t"), &access())
            .await
            .expect("manifest");
        assert_eq!(
            registry.tokens.load(Ordering::SeqCst),
            3,
            "a new token once the first ran out"
        );
    }
}

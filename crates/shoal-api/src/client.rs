//! The typed client the CLI uses; one method per route.

use std::path::Path;
use std::time::Duration;

use futures::Stream;
use serde::de::DeserializeOwned;

use crate::wire::{
    AppView, ApplyResponse, CaView, ClusterInfo, ClusterSettings, DnsRecordView, DrainRequest,
    ErrorBody, FileCreate, FileUpdate, FileView, GossipKeys, ImageDiskView, ImagePull, ImageView,
    JoinRequest, JoinResponse, JoinTokenCreate, JoinTokenCreated, JoinTokenView, NodeUpdate,
    NodeView, PlanView, PullView, RegistryAdd, RegistryCredentials, RegistryCredentialsRequest,
    RegistryView, RenewRequest, RenewResponse, TaintRequest, TaskSecrets, TaskSecretsRequest,
    TaskView, TokenCreate, TokenCreated, TokenView, VersionInfo,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the shoal node at {addr}: {}; start one with `shoal dev` or point --addr / SHOAL_ADDR at a node (over TLS, trusting the CA of your credentials)", source_chain(.source))]
    Unreachable {
        addr: String,
        #[source]
        source: reqwest::Error,
    },
    /// The node answered with an error.
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        body: Option<ErrorBody>,
    },
    #[error("unexpected answer from the node: {0}")]
    Protocol(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// An error with its causes, which for TLS failures say what went wrong.
fn source_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    let mut depth = 0;
    while let Some(cause) = source {
        if depth >= 8 {
            break;
        }
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
        depth += 1;
    }
    text
}

/// What a client needs to reach a cluster: `DATA_DIR/admin.json` of the
/// node that formed it, and each context of the CLI's config.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// `host:port` of any node's API.
    pub addr: String,
    /// The cluster's CA certificate(s), PEM.
    pub ca_pem: String,
    /// An API token, `shoal_…`.
    pub token: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({})", self.addr)
    }
}

/// A node answers a write within its own bounds (a few seconds without a
/// leader); this only guards against a node that does not answer at all.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest JSON answer read (every app of a large cluster fits).
const RESPONSE_BYTES_MAX: usize = 256 << 20;

#[derive(Clone)]
pub struct Client {
    endpoint: shoal_http::Endpoint,
    addr: String,
    http: reqwest::Client,
}

impl Client {
    /// `addr` is `host:port` or a full `https://host:port` URL; `tls`
    /// decides what the client trusts and shows; `token` is sent as a
    /// bearer token with every request.
    pub fn new(
        addr: &str,
        tls: &std::sync::Arc<rustls::ClientConfig>,
        token: Option<&str>,
    ) -> Result<Self> {
        let endpoint = shoal_http::Endpoint::parse(addr)
            .map_err(|error| ClientError::Protocol(error.to_string()))?;
        let http = shoal_http::client_with_token(shoal_http::ClientOptions::default(), tls, token)
            .map_err(ClientError::Protocol)?;
        Ok(Client {
            endpoint,
            addr: addr.to_string(),
            http,
        })
    }

    /// A client of `credential`'s cluster, at `addr` (its own by default).
    pub fn from_credential(credential: &Credential, addr: Option<&str>) -> Result<Self> {
        let credentials =
            shoal_pki::tls::Credentials::new(&credential.ca_pem).map_err(|error| {
                ClientError::Protocol(format!("the credential's CA certificate: {error}"))
            })?;
        let tls = shoal_pki::tls::client_config(credentials)
            .map_err(|error| ClientError::Protocol(error.to_string()))?;
        Client::new(
            addr.unwrap_or(&credential.addr),
            &tls,
            Some(credential.token.as_str()),
        )
    }

    pub async fn health(&self) -> Result<serde_json::Value> {
        self.get("/v1/health").await
    }

    pub async fn create_token(&self, request: &TokenCreate) -> Result<TokenCreated> {
        self.send(
            self.http
                .post(self.url("/v1/tokens"))
                .json(request)
                .timeout(WRITE_TIMEOUT),
        )
        .await
    }
    pub async fn add_registry(&self, request: &RegistryAdd) -> Result<RegistryView> {
        self.send(
            self.http
                .post(self.url("/v1/registries"))
                .json(request)
                .timeout(WRITE_TIMEOUT),
        )
        .await
    }
    /// The cluster's CA and how far a rotation is.
    pub async fn ca(&self) -> Result<CaView> {
        self.get("/v1/cluster/ca").await
    }
    /// Starts a rotation of the cluster's CA onto a new root.
    pub async fn rotate_ca(&self) -> Result<CaView> {
        self.send(
            self.http
                .post(self.url("/v1/cluster/ca/rotate"))
                .timeout(WRITE_TIMEOUT),
        )
        .await
    }
    pub async fn registries(&self) -> Result<Vec<RegistryView>> {
        self.get("/v1/registries").await
    }
    pub async fn remove_registry(&self, host: &str) -> Result<()> {
        let request = self
            .http
            .delete(self.url(&format!("/v1/registries/{host}")))
            .timeout(WRITE_TIMEOUT);
        self.send_empty(request).await
    }
    /// Creates a secret or config (`kind` is `secrets` or `configs`).
    pub async fn create_file(&self, kind: &str, request: &FileCreate) -> Result<FileView> {
        self.send(
            self.http
                .post(self.url(&format!("/v1/{kind}")))
                .json(request)
                .timeout(WRITE_TIMEOUT),
        )
        .await
    }
    /// Gives a secret or config a new value (its next version).
    pub async fn update_file(
        &self,
        kind: &str,
        name: &str,
        request: &FileUpdate,
    ) -> Result<FileView> {
        self.send(
            self.http
                .put(self.url(&format!("/v1/{kind}/{name}")))
                .json(request)
                .timeout(WRITE_TIMEOUT),
        )
        .await
    }
    pub async fn files(&self, kind: &str) -> Result<Vec<FileView>> {
        self.get(&format!("/v1/{kind}")).await
    }
    pub async fn remove_file(&self, kind: &str, name: &str) -> Result<()> {
        let request = self
            .http
            .delete(self.url(&format!("/v1/{kind}/{name}")))
            .timeout(WRITE_TIMEOUT);
        self.send_empty(request).await
    }
    pub async fn tokens(&self) -> Result<Vec<TokenView>> {
        self.get("/v1/tokens").await
    }
    pub async fn remove_token(&self, id: &str) -> Result<()> {
        let request = self
            .http
            .delete(self.url(&format!("/v1/tokens/{id}")))
            .timeout(WRITE_TIMEOUT);
        self.send_empty(request).await
    }
    pub async fn create_join_token(&self, request: &JoinTokenCreate) -> Result<JoinTokenCreated> {
        self.send(
            self.http
                .post(self.url("/v1/cluster/join-tokens"))
                .json(request)
                .timeout(WRITE_TIMEOUT),
        )
        .await
    }
    pub async fn join_tokens(&self) -> Result<Vec<JoinTokenView>> {
        self.get("/v1/cluster/join-tokens").await
    }
    pub async fn revoke_join_token(&self, id: &str) -> Result<()> {
        let request = self
            .http
            .delete(self.url(&format!("/v1/cluster/join-tokens/{id}")))
            .timeout(WRITE_TIMEOUT);
        self.send_empty(request).await
    }
    /// Removes a node for good: no node accepts its certificate any more.
    pub async fn remove_node(&self, name: &str) -> Result<()> {
        let request = self
            .http
            .delete(self.url(&format!("/v1/nodes/{name}")))
            .timeout(WRITE_TIMEOUT);
        self.send_empty(request).await
    }
    /// The joiner's CA download (with a client that trusts nothing yet).
    pub async fn join_ca(&self) -> Result<String> {
        let response = self
            .http
            .get(self.url("/v1/join/ca"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|error| self.unreachable(error))?;
        check(response)
            .await?
            .text()
            .await
            .map_err(|error| ClientError::Protocol(error.to_string()))
    }
    pub async fn join(&self, request: &JoinRequest) -> Result<JoinResponse> {
        self.send(
            self.http
                .post(self.url("/v1/join"))
                .json(request)
                .timeout(WRITE_TIMEOUT),
        )
        .await
    }
    /// The cluster's gossip keyring, from a node that holds the data key.
    pub async fn gossip_keys(&self) -> Result<GossipKeys> {
        self.get("/v1/internal/gossip-keys").await
    }
    /// The secrets of a task placed on this node, from a node that holds
    /// the data key.
    pub async fn task_secrets(&self, request: &TaskSecretsRequest) -> Result<TaskSecrets> {
        self.send(
            self.http
                .post(self.url("/v1/internal/task-secrets"))
                .json(request)
                .timeout(WRITE_TIMEOUT),
        )
        .await
    }
    /// A registry's credentials, from a node that holds the data key.
    pub async fn registry_credentials(
        &self,
        request: &RegistryCredentialsRequest,
    ) -> Result<RegistryCredentials> {
        self.send(
            self.http
                .post(self.url("/v1/internal/registry-credentials"))
                .json(request)
                .timeout(Duration::from_secs(10)),
        )
        .await
    }
    pub async fn renew(&self, request: &RenewRequest) -> Result<RenewResponse> {
        self.send(
            self.http
                .post(self.url("/v1/internal/renew"))
                .json(request)
                .timeout(WRITE_TIMEOUT),
        )
        .await
    }

    async fn send_empty(&self, request: reqwest::RequestBuilder) -> Result<()> {
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(error))?;
        check(response).await.map(|_| ())
    }

    pub async fn version(&self) -> Result<VersionInfo> {
        self.get("/v1/version").await
    }
    pub async fn cluster(&self) -> Result<ClusterInfo> {
        self.get("/v1/cluster").await
    }

    pub async fn dns_records(&self) -> Result<Vec<DnsRecordView>> {
        self.get("/v1/dns").await
    }
    pub async fn set_settings(&self, settings: &ClusterSettings) -> Result<ClusterInfo> {
        let request = self
            .http
            .put(self.url("/v1/cluster/settings"))
            .json(settings)
            .timeout(WRITE_TIMEOUT);
        self.send(request).await
    }
    pub async fn leave(&self) -> Result<()> {
        let request = self.http.post(self.url("/v1/node/leave"));
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(error))?;
        check(response).await.map(|_| ())
    }
    pub async fn nodes(&self) -> Result<Vec<NodeView>> {
        self.get("/v1/nodes").await
    }
    pub async fn taint_node(&self, name: &str, taint: &str) -> Result<NodeUpdate> {
        let request = self
            .http
            .post(self.url(&format!("/v1/nodes/{name}/taints")))
            .json(&TaintRequest {
                taint: taint.to_string(),
            })
            .timeout(WRITE_TIMEOUT);
        self.send(request).await
    }
    pub async fn untaint_node(
        &self,
        name: &str,
        key: &str,
        effect: Option<&str>,
    ) -> Result<NodeUpdate> {
        let mut request = self
            .http
            .delete(self.url(&format!("/v1/nodes/{name}/taints/{key}")))
            .timeout(WRITE_TIMEOUT);
        if let Some(effect) = effect {
            request = request.query(&[("effect", effect)]);
        }
        self.send(request).await
    }
    pub async fn drain_node(&self, name: &str, drain: bool) -> Result<NodeUpdate> {
        let request = self
            .http
            .put(self.url(&format!("/v1/nodes/{name}/drain")))
            .json(&DrainRequest { drain })
            .timeout(WRITE_TIMEOUT);
        self.send(request).await
    }
    /// What applying the spec would do; nothing changes.
    pub async fn plan(&self, spec: Vec<u8>) -> Result<PlanView> {
        let request = self
            .http
            .post(self.url("/v1/plan"))
            .body(spec)
            .timeout(WRITE_TIMEOUT);
        self.send(request).await
    }
    /// Every app; with `prepull`, whether the nodes hold each service's
    /// image ahead (the node asks them: slower).
    pub async fn apps(&self, prepull: bool) -> Result<Vec<AppView>> {
        self.get(&format!("/v1/apps?prepull={prepull}")).await
    }
    pub async fn app(&self, name: &str, prepull: bool) -> Result<AppView> {
        self.get(&format!("/v1/apps/{name}?prepull={prepull}"))
            .await
    }
    pub async fn tasks(&self, app: Option<&str>) -> Result<Vec<TaskView>> {
        match app {
            Some(app) => self.get(&format!("/v1/tasks?app={app}")).await,
            None => self.get("/v1/tasks").await,
        }
    }
    pub async fn images(&self) -> Result<Vec<ImageView>> {
        self.get("/v1/images").await
    }

    /// Sends a spec file's bytes as they are; the node parses and validates.
    pub async fn apply(&self, spec: Vec<u8>) -> Result<ApplyResponse> {
        let request = self
            .http
            .post(self.url("/v1/apps"))
            .body(spec)
            .timeout(WRITE_TIMEOUT);
        self.send(request).await
    }

    pub async fn remove_app(&self, name: &str) -> Result<()> {
        self.delete(
            self.http
                .delete(self.url(&format!("/v1/apps/{name}")))
                .timeout(WRITE_TIMEOUT),
        )
        .await
    }

    /// The disk the node's images are on.
    pub async fn image_disk(&self) -> Result<ImageDiskView> {
        self.get("/v1/images/disk").await
    }

    /// Pulls under way on the node.
    pub async fn pulls(&self) -> Result<Vec<PullView>> {
        self.get("/v1/images/pulls").await
    }

    /// Removes an image (by the name `images` lists) from the node.
    pub async fn remove_image(&self, name: &str) -> Result<()> {
        self.delete(
            self.http
                .delete(self.url("/v1/images"))
                .query(&[("name", name)])
                .timeout(WRITE_TIMEOUT),
        )
        .await
    }

    /// Sends a request whose answer carries nothing.
    async fn delete(&self, request: reqwest::RequestBuilder) -> Result<()> {
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(error))?;
        check(response).await.map(|_| ())
    }

    /// Streams an image archive from a file to the node.
    pub async fn import_image(&self, archive: &Path, name: Option<&str>) -> Result<Vec<ImageView>> {
        let file = tokio::fs::File::open(archive).await.map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("opening {}: {error}", archive.display()),
            )
        })?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let mut request = self.http.post(self.url("/v1/images")).body(body);
        if let Some(name) = name {
            request = request.query(&[("name", name)]);
        }
        self.send(request).await
    }

    /// Has the node pull an image from its registry; waits for the pull.
    pub async fn pull_image(&self, reference: &str) -> Result<ImageView> {
        let request = self
            .http
            .post(self.url("/v1/images/pull"))
            .json(&ImagePull {
                reference: reference.to_string(),
            })
            .timeout(crate::server::PULL_TIMEOUT);
        self.send(request).await
    }

    /// The log text of a task or service, as a stream of chunks.
    pub async fn logs(
        &self,
        target: &str,
        follow: bool,
        tail: Option<usize>,
        local: bool,
    ) -> Result<impl Stream<Item = reqwest::Result<bytes_alias::Bytes>>> {
        let mut query = vec![("follow", follow.to_string()), ("local", local.to_string())];
        if let Some(tail) = tail {
            query.push(("tail", tail.to_string()));
        }
        let request = self
            .http
            .get(self.url(&format!("/v1/logs/{target}")))
            .query(&query);
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(error))?;
        Ok(check(response).await?.bytes_stream())
    }

    fn url(&self, path: &str) -> String {
        self.endpoint.url(path)
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            addr: self.addr.clone(),
            source,
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(
            self.http
                .get(self.url(path))
                .timeout(Duration::from_secs(30)),
        )
        .await
    }

    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T> {
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(error))?;
        let mut response = check(response).await?;
        // Read up to the bound, never more.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| ClientError::Protocol(error.to_string()))?
        {
            if body.len() + chunk.len() > RESPONSE_BYTES_MAX {
                return Err(ClientError::Protocol(format!(
                    "the answer is longer than {} MiB",
                    RESPONSE_BYTES_MAX >> 20
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let parsed = serde_json::from_slice(&body);
        // The answer may be a secret's value (a task's secrets).
        zeroize::Zeroize::zeroize(&mut body);
        parsed.map_err(|error| ClientError::Protocol(error.to_string()))
    }
}

mod bytes_alias {
    pub use axum::body::Bytes;
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let body: Option<ErrorBody> = serde_json::from_str(&text).ok();
    let message = match &body {
        Some(body) => body.error.clone(),
        None if text.is_empty() => format!("the node answered {status}"),
        None => format!("the node answered {status}: {text}"),
    };
    Err(ClientError::Api {
        status: status.as_u16(),
        message,
        body,
    })
}

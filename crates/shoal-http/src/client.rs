//! The one way shoal builds an HTTP client.

use std::sync::Arc;
use std::time::Duration;

/// How a client waits.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// For a whole request, answer included; `None` for streams (each
    /// request then sets its own).
    pub request_timeout: Option<Duration>,
    /// How long an idle connection is kept for reuse.
    pub idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The one way shoal builds an HTTP client: TLS only, with the given
/// rustls config (which decides what server is trusted and what client
/// certificate is shown; see `shoal_pki::tls`), no proxy (nodes talk to
/// each other directly), no delay on small writes.
pub fn client(
    options: ClientOptions,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<reqwest::Client, String> {
    client_with_token(options, tls, None)
}

/// [`client`], sending `Authorization: Bearer TOKEN` with every request
/// (marked sensitive, so it never shows in debug output).
pub fn client_with_token(
    options: ClientOptions,
    tls: &Arc<rustls::ClientConfig>,
    token: Option<&str>,
) -> Result<reqwest::Client, String> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the API token holds characters a header cannot".to_string())?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let mut builder = reqwest::Client::builder()
        .default_headers(headers)
        .tls_backend_preconfigured(rustls::ClientConfig::clone(tls))
        .https_only(true)
        .no_proxy()
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(options.idle_timeout);
    if let Some(timeout) = options.request_timeout {
        builder = builder.timeout(timeout);
    }
    builder
        .build()
        .map_err(|error| format!("building an HTTP client: {error}"))
}

/// The client a node checks its tasks' health with: plain HTTP to a task's
/// address on the cluster network (an app serves its own port; no
/// credential goes out), no proxy, no redirects followed (a redirect is an
/// answer), a fresh connection for each check, and `timeout` for the whole
/// check.
pub fn probe_client(timeout: Duration) -> Result<reqwest::Client, String> {
    // Plain HTTP only: the TLS it must be given trusts no root, so an
    // `https` address fails rather than skipping the check of its server.
    // ring, the project's one provider (as `shoal_pki::tls::provider`
    // says, rustls marks it deprecated for its lack of post-quantum key
    // exchange).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("the health check client's TLS: {error}"))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_max_idle_per_host(0)
        .tcp_nodelay(true)
        .user_agent(concat!("shoal-health/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| format!("building the health check client: {error}"))
}

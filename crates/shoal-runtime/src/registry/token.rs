//! The Docker token flow, done here with credentials: the registry's
//! challenge read once per token, every token service it names checked,
//! no redirect followed, and oci-client handed the bearer token alone.

use super::*;

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
pub(super) struct RegistryClient {
    pub(super) host: String,
    pub(super) plain_http: bool,
    pub(super) ca_pem: Option<String>,
    pub(super) stall: Duration,
    /// For the challenge and the token, never following a redirect.
    pub(super) http: reqwest::Client,
    pub(super) credentials: Option<(String, Zeroizing<String>)>,
    /// oci-client's client with the authorization it uses, until when;
    /// one caller at a time gets a new one.
    pub(super) current: tokio::sync::Mutex<Option<(Arc<Client>, Option<tokio::time::Instant>)>>,
}

/// How a registry answered `GET /v2/` when asked without credentials.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Challenge {
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
pub(super) fn read_challenge(
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
pub(super) struct TokenAnswer {
    #[serde(default)]
    pub(super) token: Option<String>,
    #[serde(default)]
    pub(super) access_token: Option<String>,
    #[serde(default)]
    pub(super) expires_in: Option<u64>,
}

/// A token service's answer is read up to this much.
pub(super) const TOKEN_ANSWER_BYTES_MAX: usize = 64 << 10;
/// A token whose service says nothing of its lifetime is used this long
/// (the distribution spec's default).
pub(super) const TOKEN_LIFETIME_DEFAULT_S: u64 = 60;
/// Nor longer than this, whatever it says.
pub(super) const TOKEN_LIFETIME_MAX_S: u64 = 3600;

impl RegistryClient {
    /// oci-client's client for the next request, with a token that is
    /// still good (a new one fetched when it is not).
    pub(super) async fn ready(&self, reference: &ImageRef) -> Result<Arc<Client>> {
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

    pub(super) fn oci_client(&self) -> Result<Client> {
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
    pub(super) async fn authorize(
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
pub(super) async fn read_limited(
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

pub(super) fn settings_error(host: &str, e: &dyn std::fmt::Display) -> RuntimeError {
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
pub(super) fn token_service_refusal(
    realm: &str,
    registry: &str,
    registry_plain_http: bool,
) -> Option<String> {
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

/// The token service a registry names must receive its password safely.
#[cfg(test)]
mod tests {
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

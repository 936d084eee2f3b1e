//! The gate every request of every route passes before its handler: who
//! is calling (a node by its certificate, a person or tool by its API
//! token), whether that caller may call this route
//! ([`shoal_api::access::required`]), and the audit record of every
//! mutating request, refused ones included.
//!
//! Default deny: a route needs a credential unless the access table says
//! `Public`, and the one public route carries no data.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shoal_api::access::Access;
use shoal_api::server::Audited;
use shoal_api::wire::ErrorBody;
use shoal_cluster::log::ReplicatedLog;
use shoal_cluster::raft::{ForwardedBy, OPERATOR_TOKEN};
use shoal_pki::identity::{Identity, Role};
use shoal_pki::token::{ApiToken, SecretHash, API_DOMAIN};
use shoal_state::security::ApiRole;
use shoal_state::State as ClusterState;

use super::audit::{Audit, AuditRecord};
use crate::clock::now_ms;

/// Who made a request, as the gate established it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    /// A node of this cluster, by its certificate.
    Node {
        name: String,
        role: Role,
    },
    /// An API token.
    Token {
        id: String,
        role: ApiRole,
    },
}

impl Caller {
    /// How the audit log and errors name the caller (never a secret).
    pub fn label(&self) -> String {
        match self {
            Caller::Anonymous => "anonymous".into(),
            Caller::Node { name, role } => format!("node:{name} ({})", role.as_str()),
            Caller::Token { id, role } => format!("token:{id} ({})", role.as_str()),
        }
    }
}

/// Why a credential was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// The one route a node certificate that has expired may take (TLS takes
/// one within `shoal_pki::tls::EXPIRED_RENEWAL_GRACE` of its end).
pub const RENEW_PATH: &str = "/v1/internal/renew";

/// Who the credentials of a request speak for, against the node's replica.
/// A node certificate that had expired when its connection's handshake
/// verified it speaks for its node only when `renewal` (the request is a
/// renewal) and its admission is the node's current one. (One that expires
/// while its connection is open goes on speaking there, as before: the
/// removed list, checked on every request, is what ends a node's say.)
pub fn identify(
    state: &ClusterState,
    cluster_id: &str,
    peer: Option<&shoal_http::Peer>,
    authorization: Option<&str>,
    now_ms: u64,
    renewal: bool,
) -> Result<Caller, Refusal> {
    if let Some(value) = authorization {
        let Some(text) = value.strip_prefix("Bearer ") else {
            return Err(Refusal(
                "the Authorization header is not `Bearer TOKEN`".into(),
            ));
        };
        let token =
            ApiToken::parse(text).map_err(|error| Refusal(format!("API token: {error}")))?;
        let record = state.security.api_tokens.get(&token.id).ok_or_else(|| {
            Refusal(format!(
                "API token {} is not known to the cluster (revoked, or of another cluster)",
                token.id
            ))
        })?;
        let matches = SecretHash::from_hex(&record.hash)
            .is_some_and(|hash| hash.matches(API_DOMAIN, token.secret().as_bytes()));
        if !matches {
            return Err(Refusal(format!(
                "API token {}: the secret is wrong",
                token.id
            )));
        }
        if record.expires_at_ms.is_some_and(|at| now_ms >= at) {
            return Err(Refusal(format!(
                "API token {} expired; make a new one with `shoal token create`",
                token.id
            )));
        }
        return Ok(Caller::Token {
            id: token.id.clone(),
            role: record.role,
        });
    }
    let Some(leaf) = peer.and_then(|peer| peer.certificates.first()) else {
        return Ok(Caller::Anonymous);
    };
    // TLS verified the chain to the cluster's roots already.
    let identity = Identity::from_cert_der(leaf)
        .map_err(|error| Refusal(format!("client certificate: {error}")))?;
    if identity.cluster_id != cluster_id {
        return Err(Refusal(format!(
            "the client certificate is of cluster {}, this is {cluster_id}",
            identity.cluster_id
        )));
    }
    if !state.security.accepts(&identity.name, &identity.admission) {
        return Err(Refusal(format!(
            "node {} was removed from the cluster; it may join again only with a new join token",
            identity.name
        )));
    }
    let ends = shoal_pki::identity::not_after(leaf)
        .map_err(|error| Refusal(format!("client certificate: {error}")))?;
    if peer.is_some_and(|peer| ends <= peer.handshake_at) {
        let current = state
            .security
            .admissions
            .get(&identity.name)
            .is_some_and(|known| known.admission == identity.admission);
        if !(renewal && current) {
            return Err(Refusal(format!(
                "the certificate of node {} expired at {}; with it a node may only renew it (POST {RENEW_PATH}) under its current admission",
                identity.name,
                humantime::format_rfc3339_seconds(ends)
            )));
        }
    }
    Ok(Caller::Node {
        name: identity.name,
        role: identity.role,
    })
}

/// Why a node does not take a server it dialled at `dialled` (an address,
/// or a host name) that shows `identity`, a certificate of the cluster's
/// roots: of another cluster, removed from this one, or another node than
/// the one(s) the state says are at that address. `None` when it is taken
/// (an address the state does not know is taken on the certificate).
pub fn server_refusal(
    state: &ClusterState,
    cluster_id: &str,
    identity: &Identity,
    dialled: &rustls::pki_types::ServerName<'_>,
) -> Option<String> {
    if identity.cluster_id != cluster_id {
        return Some(format!(
            "the server's certificate is of cluster {}, this is {cluster_id}",
            identity.cluster_id
        ));
    }
    if !state.security.accepts(&identity.name, &identity.admission) {
        return Some(format!(
            "the server's certificate is of node {}, which was removed from the cluster",
            identity.name
        ));
    }
    let host = match dialled {
        rustls::pki_types::ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        rustls::pki_types::ServerName::DnsName(name) => {
            name.as_ref().trim_end_matches('.').to_ascii_lowercase()
        }
        _ => return None,
    };
    // Addresses compared as addresses (`2001:db8::1` is `2001:0db8::1`).
    let same =
        |a: &str, b: &str| match (a.parse::<std::net::IpAddr>(), b.parse::<std::net::IpAddr>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a.trim_end_matches('.').eq_ignore_ascii_case(b),
        };
    let at: Vec<&str> = state
        .nodes
        .values()
        .filter(|node| {
            shoal_http::Endpoint::parse(&node.addr)
                .is_ok_and(|endpoint| same(endpoint.host(), &host))
        })
        .map(|node| node.name.as_str())
        .collect();
    if !at.is_empty() && !at.contains(&identity.name.as_str()) {
        return Some(format!(
            "{host} is node {} in the cluster's state, but the server there shows the certificate of node {}",
            at.join(", "),
            identity.name
        ));
    }
    None
}

/// Whether `caller` may do what `access` needs.
pub fn allowed(access: Access, caller: &Caller) -> bool {
    match (access, caller) {
        (Access::Public | Access::Join, _) => true,
        (Access::Read, Caller::Node { .. } | Caller::Token { .. }) => true,
        (Access::Deploy, Caller::Token { role, .. }) => {
            matches!(role, ApiRole::Admin | ApiRole::Deployer)
        }
        (Access::Admin, Caller::Token { role, .. }) => *role == ApiRole::Admin,
        (Access::Node, Caller::Node { .. }) => true,
        (Access::Voter, Caller::Node { role, .. }) => *role == Role::Voter,
        _ => false,
    }
}

/// Why an operator's API token may not do something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorRefusal {
    /// The token is not taken (malformed, unknown, wrong secret, expired).
    Credential(Refusal),
    /// The caller it names may not do what is asked.
    Role(Caller),
}

/// Whether the API token `secret` of an operator may do what `access`
/// needs: the caller it names, or why not. The API node (for what it
/// checks before proposing) and the leader (for a forwarded proposal)
/// decide by this one rule.
pub fn operator_may(
    state: &ClusterState,
    cluster_id: &str,
    secret: &str,
    access: Access,
    now_ms: u64,
) -> Result<Caller, OperatorRefusal> {
    let caller = identify(
        state,
        cluster_id,
        None,
        Some(&format!("Bearer {secret}")),
        now_ms,
        false,
    )
    .map_err(OperatorRefusal::Credential)?;
    if matches!(caller, Caller::Token { .. }) && allowed(access, &caller) {
        Ok(caller)
    } else {
        Err(OperatorRefusal::Role(caller))
    }
}

/// How an error names the token that `access` needs.
pub fn token_needed(access: Access) -> &'static str {
    match access {
        Access::Admin => "an admin token",
        Access::Deploy => "a deployer or admin token",
        _ => "an API token",
    }
}

/// What the gate needs from the node.
pub struct Gate<L> {
    pub log: L,
    pub cluster_id: String,
    pub audit: Arc<Audit>,
}

/// How much of a refused request's body is read before the answer, and
/// for how long at most.
const REFUSED_BODY_DRAIN_BYTES_MAX: usize = 64 * 1024;
const REFUSED_BODY_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Routes whose every call is recorded: what people and tools change.
/// Node-to-node traffic (Raft, renewals) is the cluster's own business.
fn audited(method: &Method, access: Access) -> bool {
    method != Method::GET
        && method != Method::HEAD
        && !matches!(access, Access::Node | Access::Voter | Access::Public)
}

fn refuse(status: StatusCode, message: String) -> Response {
    let mut response = (
        status,
        axum::Json(ErrorBody {
            error: message,
            errors: Vec::new(),
        }),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

pub async fn check<L: ReplicatedLog>(
    State(gate): State<Arc<Gate<L>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let access = shoal_api::access::required(&method, &path);
    let peer = request.extensions().get::<shoal_http::Peer>().cloned();
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or("\u{fffd}").to_string());
    // The open routes look at no credential: a bad one does not matter there.
    let identified = if matches!(access, Access::Public | Access::Join) {
        Ok(Caller::Anonymous)
    } else {
        let state = gate.log.read();
        identify(
            &state,
            &gate.cluster_id,
            peer.as_ref(),
            authorization.as_deref(),
            now_ms(),
            method == axum::http::Method::POST && path == RENEW_PATH,
        )
    };
    let (caller, refusal) = match identified {
        Ok(caller) if allowed(access, &caller) => (caller, None),
        Ok(Caller::Anonymous) => (
            Caller::Anonymous,
            Some((
                StatusCode::UNAUTHORIZED,
                "this needs a credential: an API token (`shoal token create`, or DATA_DIR/admin.json of the node that formed the cluster) or a node certificate".to_string(),
            )),
        ),
        Ok(caller) => {
            let message = format!(
                "{} may not {method} {path}; it needs {}",
                caller.label(),
                match access {
                    Access::Deploy => "a deployer or admin token",
                    Access::Admin => "an admin token",
                    Access::Node => "a node certificate",
                    Access::Voter => "the certificate of a node that may vote",
                    _ => "another credential",
                }
            );
            (caller, Some((StatusCode::FORBIDDEN, message)))
        }
        Err(Refusal(why)) => (
            Caller::Anonymous,
            Some((StatusCode::UNAUTHORIZED, why)),
        ),
    };
    if let Some((status, message)) = refusal {
        let source = peer.as_ref().map(|peer| peer.addr.ip());
        if audited(&method, access) && gate.audit.refusal_written(source) {
            gate.audit.record(&AuditRecord {
                at_ms: now_ms(),
                caller: caller.label(),
                method: method.as_str(),
                path: &path,
                status: status.as_u16(),
                refused: Some(&message),
                command: None,
                operator: None,
                object: None,
            });
        }
        tracing::debug!(%method, %path, caller = %caller.label(), %status, "refused");
        // Read what the client sent (bounded) before answering: a
        // connection closed with its request body unread is reset, and
        // the reset can destroy the answer before the client reads it.
        let _ = tokio::time::timeout(
            REFUSED_BODY_DRAIN_TIMEOUT,
            axum::body::to_bytes(request.into_body(), REFUSED_BODY_DRAIN_BYTES_MAX),
        )
        .await;
        return refuse(status, message);
    }
    let record = audited(&method, access);
    let label = caller.label();
    // A node's call names it for the Raft routes (the leader takes the
    // proposer from it); an API call's token goes with what its handler
    // forwards to the leader, which checks the operator's role itself.
    let mut operator = None;
    match &caller {
        Caller::Node { name, role } => {
            request.extensions_mut().insert(ForwardedBy {
                node: name.clone(),
                voter: *role == Role::Voter,
            });
        }
        Caller::Token { .. } => {
            operator = authorization
                .as_deref()
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::to_string);
        }
        Caller::Anonymous => {}
    }
    request.extensions_mut().insert(caller);
    let response = OPERATOR_TOKEN.scope(operator, next.run(request)).await;
    if record {
        gate.audit.record(&AuditRecord {
            at_ms: now_ms(),
            caller: label,
            method: method.as_str(),
            path: &path,
            status: response.status().as_u16(),
            refused: None,
            command: None,
            operator: None,
            object: response
                .extensions()
                .get::<Audited>()
                .map(|Audited(object)| object.as_str()),
        });
    }
    response
}

/// The start of a route that hands a node something only the data key
/// opens (a registry's credentials, a task's secrets): this node's data
/// key (a node without one answers 421, naming where to ask), the asking
/// node's name (any other caller is refused, `who` saying what goes to
/// whom), after a linearizable read, so that the decision sees every
/// write the asking node may have seen (the task placed on it), not this
/// node's lagging copy.
pub async fn node_asking_a_voter<'a, R>(
    shared: &'a super::Shared<R>,
    caller: &'a Caller,
    who: &str,
) -> Result<(&'a shoal_pki::seal::DataKey, &'a str), shoal_api::server::ApiError> {
    use shoal_api::server::ApiError;
    let Some(key) = &shared.trust.data_key else {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "this node holds no data key; ask a voter-capable node",
        ));
    };
    let Caller::Node { name, .. } = caller else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, who.to_string()));
    };
    caught_up(&shared.raft).await?;
    Ok((key, name))
}

/// Returns once this node's replica holds every write acknowledged before
/// (a linearizable read), so that what a handler reads next is not a
/// lagging copy; 503 when no leader confirms it.
pub async fn caught_up<L: ReplicatedLog>(log: &L) -> Result<(), shoal_api::server::ApiError> {
    log.linearizable_read()
        .await
        .map_err(|error| shoal_api::server::ApiError::unavailable(error.to_string()))
}

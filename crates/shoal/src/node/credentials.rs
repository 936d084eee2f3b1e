//! The routes that hand out and take back credentials: joining with a
//! token, renewing a node certificate, API tokens, join tokens, and
//! removing a node for good. The gate has checked the caller already;
//! these check what only they can (a join token's secret, the leader).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use shoal_api::server::{ApiError, Audited};
use shoal_api::wire::{
    JoinRequest, JoinResponse, JoinTokenCreate, JoinTokenCreated, JoinTokenView, RenewRequest,
    RenewResponse, TokenCreate, TokenCreated, TokenView,
};
use shoal_cluster::raft::ProposeError;
use shoal_pki::ca::IssueRequest;
use shoal_pki::identity::{Identity, Role};
use shoal_pki::token::{ApiToken, JoinToken, SecretHash, JOIN_DOMAIN};
use shoal_state::security::{ApiRole, ApiTokenRecord, JoinTokenRecord, NodeRole};
use shoal_state::{ApplyError, Command};

use super::gate::Caller;
use super::trust::{node_role, pki_role};
use super::Shared;
use crate::clock::now_ms;

/// A join token's lifetime when none is asked for, and the longest.
const JOIN_TTL_DEFAULT: Duration = Duration::from_secs(3600);
/// Held by the join being decided on this node, the leader.
static JOINING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const JOIN_TTL_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
/// Nodes one join token may admit, at most.
const JOIN_USES_MAX: u32 = 1000;
const TOKEN_NAME_CHARS_MAX: usize = 100;
/// Largest body of these routes.
const BODY_BYTES_MAX: usize = 16 * 1024;

pub fn router<R: Send + Sync + 'static>(shared: Arc<Shared<R>>) -> Router {
    Router::new()
        .route("/v1/join/ca", get(join_ca::<R>))
        .route("/v1/join", post(join::<R>))
        .route(super::gate::RENEW_PATH, post(renew::<R>))
        .route("/v1/tokens", get(tokens::<R>).post(create_token::<R>))
        .route("/v1/tokens/{id}", delete(remove_token::<R>))
        .route(
            "/v1/cluster/join-tokens",
            get(join_tokens::<R>).post(create_join_token::<R>),
        )
        .route(
            "/v1/cluster/join-tokens/{id}",
            delete(revoke_join_token::<R>),
        )
        .route("/v1/nodes/{name}", delete(remove_node::<R>))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(shared)
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, message)
}

fn proposal_error(error: ProposeError) -> ApiError {
    match error {
        ProposeError::Rejected(ApplyError::Refused(why)) => forbidden(why),
        ProposeError::Rejected(ApplyError::NodeNotFound(name)) => {
            ApiError::not_found(format!("node `{name}` not found; see `shoal nodes`"))
        }
        ProposeError::Rejected(error) => ApiError::bad_request(error.to_string()),
        other => ApiError::unavailable(other.to_string()),
    }
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::internal(error.to_string())
}

/// The roots a joiner pins against the hash in its token: the state's.
async fn join_ca<R>(State(shared): State<Arc<Shared<R>>>) -> Response {
    super::ca::roots_now(&shared).into_response()
}

/// Signs a certificate for `identity` with the cluster's CA.
fn sign<R>(shared: &Shared<R>, csr_pem: &str, identity: &Identity) -> Result<String, ApiError> {
    let record = shared
        .raft
        .read()
        .security
        .ca
        .clone()
        .ok_or_else(|| ApiError::unavailable("the cluster has no CA yet; try again"))?;
    let ca = shared
        .trust
        .signer(&record)
        .map_err(internal)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "this node does not hold the data key; ask a voter-capable node",
            )
        })?;
    chain_for(&ca, &record, csr_pem, identity, shared.config.cert_lifetime)
        .map_err(|error| ApiError::bad_request(error.to_string()))
}

/// A node certificate for `identity` on the key of `csr_pem`, signed by
/// the cluster's CA now, with what the CA record says a chain carries above
/// it (the cross-signed signer during a rotation): what a node presents.
pub fn chain_for(
    ca: &shoal_pki::ca::Ca,
    record: &shoal_state::security::CaRecord,
    csr_pem: &str,
    identity: &Identity,
    lifetime: std::time::Duration,
) -> Result<String, shoal_pki::ca::CaError> {
    let issued = ca.issue(&IssueRequest {
        csr_pem,
        identity,
        lifetime,
        now: SystemTime::now(),
    })?;
    Ok(format!("{}{}", issued.cert_pem, record.chain_pem))
}

/// What a join with `token` under `name`, asking for `asked` (else what
/// the token allows), gets from the cluster's `state` at `now_ms`: the
/// role it is admitted as, or the status and reason of its refusal. The
/// handler checks the CA pin and the leader before, and carries it out.
fn join_verdict(
    state: &shoal_state::State,
    token: &JoinToken,
    asked: Option<Role>,
    name: &str,
    now_ms: u64,
) -> Result<Role, (StatusCode, String)> {
    let forbidden = |why: String| (StatusCode::FORBIDDEN, why);
    let record = state.security.join_tokens.get(&token.id).ok_or_else(|| {
        forbidden(format!(
            "join token {} is not known to the cluster (never made, or removed)",
            token.id
        ))
    })?;
    let secret_ok = SecretHash::from_hex(&record.hash)
        .is_some_and(|hash| hash.matches(JOIN_DOMAIN, token.secret().as_bytes()));
    if !secret_ok {
        return Err(forbidden(format!(
            "join token {}: the secret is wrong",
            token.id
        )));
    }
    let role = asked.unwrap_or(pki_role(record.role));
    if let Some(why) = record.refusal(now_ms, node_role(role)) {
        return Err(forbidden(why));
    }
    // A name is the node's as long as the cluster knows it: another join
    // under it (a worker token under a voter's name that is down) would
    // end that node's identity. Only `shoal node rm` frees it.
    let alive = state
        .nodes
        .get(name)
        .is_some_and(|node| node.status == shoal_types::NodeStatus::Alive);
    if alive || state.security.admissions.contains_key(name) {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "a node named `{name}` is {} the cluster; give this one another --name, or if that node is gone for good, remove it first with `shoal node rm {name}`",
                if alive { "alive in" } else { "known to" },
            ),
        ));
    }
    Ok(role)
}

async fn join<R: Send + Sync + 'static>(
    State(shared): State<Arc<Shared<R>>>,
    Json(request): Json<JoinRequest>,
) -> Result<Json<JoinResponse>, ApiError> {
    let token = JoinToken::parse(&request.token)
        .map_err(|error| ApiError::bad_request(format!("token: {error}")))?;
    let asked = match &request.role {
        None => None,
        Some(text) => Some(Role::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "role: `{}` is not a node role; use voter or worker",
                text.chars().take(20).collect::<String>()
            ))
        })?),
    };
    shoal_types::check_dns_label(&request.name)
        .map_err(|message| ApiError::bad_request(format!("name: {message}")))?;
    // The token pins the roots, or the one root of them it was made under
    // (before a rotation that is under way).
    let roots = super::ca::roots_now(&shared);
    if shoal_pki::ca::pinned(&roots, &token.ca_hash).is_none() {
        return Err(forbidden(
            "the join token pins another CA than this cluster's; it is of another cluster, or of this one before a CA rotation ended: make a new one with `shoal cluster token create`",
        ));
    }
    if !shared.is_leader() {
        let status = shared.raft.status();
        let leader = status
            .leader
            .and_then(|id| status.nodes.get(&id).map(|node| node.api_addr.clone()));
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            match leader {
                Some(addr) => format!("join through the leader: {addr}"),
                None => "the cluster has no leader right now; try again".to_string(),
            },
        ));
    }
    // One join at a time from the name check to its `AdmitNode`: two
    // joins under one new name would otherwise both pass the check.
    let _joining = JOINING.lock().await;
    let role = join_verdict(&shared.raft.read(), &token, asked, &request.name, now_ms())
        .map_err(|(status, why)| ApiError::new(status, why))?;
    let identity = Identity {
        cluster_id: shared.cluster_id.clone(),
        role,
        name: request.name.clone(),
        admission: Identity::new_admission(),
    };
    // Signed first, handed over only once admitted: a CSR that does not
    // sign leaves no admission (and no name taken) behind.
    let chain_pem = sign(&shared, &request.csr_pem, &identity)?;
    // Decided in log order: a single-use token admits one node.
    shared
        .raft
        .propose(
            now_ms(),
            Command::AdmitNode {
                token: token.id.clone(),
                node: identity.name.clone(),
                role: node_role(role),
                admission: identity.admission.clone(),
            },
        )
        .await
        .map_err(proposal_error)?;
    tracing::info!(node = %identity.name, role = role.as_str(), token = %token.id, "admitted a node");
    Ok(Json(JoinResponse {
        cluster_id: shared.cluster_id.clone(),
        chain_pem,
        roots_pem: roots,
        gossip_addr: shared.config.gossip_advertise.to_string(),
        data_key: match role {
            Role::Voter => shared
                .trust
                .data_key
                .as_ref()
                .map(|key| key.to_hex().to_string()),
            Role::Worker => None,
        },
        gossip_keys: super::gossip_keys::answer(&shared).unwrap_or_else(|error| {
            tracing::warn!(%error, "handing the gossip keyring to a joining node");
            None
        }),
    }))
}

async fn renew<R>(
    State(shared): State<Arc<Shared<R>>>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<RenewRequest>,
) -> Result<Json<RenewResponse>, ApiError> {
    let Caller::Node { name, .. } = caller else {
        return Err(forbidden("only a node renews its certificate"));
    };
    // The admission and the CA as the cluster holds them now: a voter
    // behind would renew a node removed meanwhile, or onto the old CA.
    super::gate::caught_up(&shared.raft).await?;
    let admission = shared
        .raft
        .read()
        .security
        .admissions
        .get(&name)
        .cloned()
        .ok_or_else(|| forbidden(format!("node {name} is not admitted")))?;
    let identity = Identity {
        cluster_id: shared.cluster_id.clone(),
        role: pki_role(admission.role),
        name,
        admission: admission.admission,
    };
    let chain_pem = sign(&shared, &request.csr_pem, &identity)?;
    Ok(Json(RenewResponse {
        chain_pem,
        roots_pem: super::ca::roots_now(&shared),
    }))
}

fn token_view(record: &ApiTokenRecord) -> TokenView {
    TokenView {
        id: record.id.clone(),
        name: record.name.clone(),
        role: record.role.as_str().to_string(),
        created_at_ms: record.created_at_ms,
        expires_at_ms: record.expires_at_ms,
        created_by: record.created_by.clone(),
    }
}

async fn tokens<R>(State(shared): State<Arc<Shared<R>>>) -> Json<Vec<TokenView>> {
    let state = shared.raft.read();
    Json(state.security.api_tokens.values().map(token_view).collect())
}

async fn create_token<R>(
    State(shared): State<Arc<Shared<R>>>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<TokenCreate>,
) -> Result<(Extension<Audited>, Json<TokenCreated>), ApiError> {
    let role = ApiRole::parse(&request.role).ok_or_else(|| {
        ApiError::bad_request("role: use admin, deployer (apps and images) or reader")
    })?;
    if request.name.trim().is_empty()
        || request.name.chars().count() > TOKEN_NAME_CHARS_MAX
        || request.name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "name: say what the token is for, 1 to {TOKEN_NAME_CHARS_MAX} characters"
        )));
    }
    let now = now_ms();
    let expires_at_ms = match request.ttl_s {
        Some(0) => return Err(ApiError::bad_request("ttl_s: must be at least 1")),
        Some(seconds) => Some(now.saturating_add(seconds.saturating_mul(1000))),
        None => None,
    };
    let token = ApiToken::generate();
    let record = ApiTokenRecord {
        id: token.id.clone(),
        name: request.name.trim().to_string(),
        role,
        hash: token.hash().to_hex(),
        created_at_ms: now,
        expires_at_ms,
        created_by: caller.label(),
    };
    shared
        .raft
        .propose(
            now,
            Command::CreateApiToken {
                token: record.clone(),
            },
        )
        .await
        .map_err(proposal_error)?;
    Ok((
        Extension(Audited(format!(
            "token {} ({})",
            record.id,
            record.role.as_str()
        ))),
        Json(TokenCreated {
            token: token.to_string(),
            view: token_view(&record),
        }),
    ))
}

/// Why revoking token `id` is refused: it is the last admin token that
/// has not expired, and with it the cluster would have no operator who
/// can make tokens, join nodes or change settings again.
fn last_admin_refusal(state: &shoal_state::State, id: &str, now_ms: u64) -> Option<String> {
    let live_admin = |token: &ApiTokenRecord| {
        token.role == ApiRole::Admin && token.expires_at_ms.is_none_or(|at| now_ms < at)
    };
    let tokens = &state.security.api_tokens;
    let this = tokens.get(id).filter(|token| live_admin(token))?;
    let others = tokens
        .values()
        .filter(|token| token.id != this.id && live_admin(token))
        .count();
    (others == 0).then(|| {
        format!(
            "API token {id} is the last admin token: without it no one could make tokens, join nodes or change settings again; create another one first (`shoal token create --name NAME --role admin`)"
        )
    })
}

async fn remove_token<R>(
    State(shared): State<Arc<Shared<R>>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    super::gate::caught_up(&shared.raft).await?;
    if let Some(why) = last_admin_refusal(&shared.raft.read(), &id, now_ms()) {
        return Err(ApiError::new(StatusCode::CONFLICT, why));
    }
    shared
        .raft
        .propose(now_ms(), Command::RevokeApiToken { id })
        .await
        .map_err(proposal_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn join_token_view(record: &JoinTokenRecord, now_ms: u64) -> JoinTokenView {
    let state = if record.revoked {
        "revoked"
    } else if now_ms >= record.expires_at_ms {
        "expired"
    } else if record.uses >= record.uses_max {
        "used"
    } else {
        "valid"
    };
    JoinTokenView {
        id: record.id.clone(),
        role: record.role.as_str().to_string(),
        created_at_ms: record.created_at_ms,
        expires_at_ms: record.expires_at_ms,
        uses: record.uses,
        uses_max: record.uses_max,
        state: state.to_string(),
        created_by: record.created_by.clone(),
    }
}

async fn join_tokens<R>(State(shared): State<Arc<Shared<R>>>) -> Json<Vec<JoinTokenView>> {
    let state = shared.raft.read();
    let now = now_ms();
    Json(
        state
            .security
            .join_tokens
            .values()
            .map(|record| join_token_view(record, now))
            .collect(),
    )
}

async fn create_join_token<R>(
    State(shared): State<Arc<Shared<R>>>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<JoinTokenCreate>,
) -> Result<Json<JoinTokenCreated>, ApiError> {
    let role = match request.role.as_str() {
        "voter" => NodeRole::Voter,
        "worker" => NodeRole::Worker,
        _ => return Err(ApiError::bad_request("role: use voter or worker")),
    };
    let ttl = match request.ttl_s {
        None => JOIN_TTL_DEFAULT,
        Some(seconds) if seconds >= 1 && seconds <= JOIN_TTL_MAX.as_secs() => {
            Duration::from_secs(seconds)
        }
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "ttl_s: 1 to {} seconds",
                JOIN_TTL_MAX.as_secs()
            )))
        }
    };
    let uses = request.uses.unwrap_or(1);
    if uses == 0 || uses > JOIN_USES_MAX {
        return Err(ApiError::bad_request(format!(
            "uses: 1 to {JOIN_USES_MAX} nodes"
        )));
    }
    let ca_hash = super::ca::pin_now(&shared).map_err(internal)?;
    let token = JoinToken::generate(&ca_hash);
    let now = now_ms();
    let record = JoinTokenRecord {
        id: token.id.clone(),
        role,
        hash: token.hash().to_hex(),
        created_at_ms: now,
        expires_at_ms: now.saturating_add(ttl.as_millis() as u64),
        uses_max: uses,
        uses: 0,
        revoked: false,
        created_by: caller.label(),
    };
    shared
        .raft
        .propose(
            now,
            Command::CreateJoinToken {
                token: record.clone(),
            },
        )
        .await
        .map_err(proposal_error)?;
    Ok(Json(JoinTokenCreated {
        token: token.to_string(),
        view: join_token_view(&record, now),
    }))
}

async fn revoke_join_token<R>(
    State(shared): State<Arc<Shared<R>>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    shared
        .raft
        .propose(now_ms(), Command::RevokeJoinToken { id })
        .await
        .map_err(proposal_error)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_node<R>(
    State(shared): State<Arc<Shared<R>>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if name == shared.config.name {
        return Err(ApiError::bad_request(
            "a node does not remove itself; ask another node, or use `shoal node leave`",
        ));
    }
    shared
        .raft
        .propose(now_ms(), Command::RemoveNode { name })
        .await
        .map_err(proposal_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a join request gets, by the token it shows, the role it asks
    /// for and the name it takes, from the state alone.
    #[test]
    fn a_join_gets_the_verdict_of_its_token_role_and_name() {
        let mut state = shoal_state::State::default();
        let token = |role: NodeRole, uses: u32, expires_at_ms: u64, revoked: bool| {
            let token = JoinToken::generate(&"ab".repeat(32));
            let record = JoinTokenRecord {
                id: token.id.clone(),
                role,
                hash: token.hash().to_hex(),
                created_at_ms: 1,
                expires_at_ms,
                uses_max: 1,
                uses,
                revoked,
                created_by: "test".into(),
            };
            (token, record)
        };
        let (voter, record) = token(NodeRole::Voter, 0, 1_000, false);
        state.security.join_tokens.insert(record.id.clone(), record);
        let (worker, record) = token(NodeRole::Worker, 0, 1_000, false);
        state.security.join_tokens.insert(record.id.clone(), record);
        let (used, record) = token(NodeRole::Voter, 1, 1_000, false);
        state.security.join_tokens.insert(record.id.clone(), record);
        let (revoked, record) = token(NodeRole::Voter, 0, 1_000, true);
        state.security.join_tokens.insert(record.id.clone(), record);
        let (unknown, _) = token(NodeRole::Voter, 0, 1_000, false);
        // The secret of another token under a known id.
        let wrong = JoinToken::parse(&voter.to_string().replace(voter.secret(), worker.secret()))
            .expect("a token");
        let mut alive = shoal_types::Node::sample("up", "up:7950");
        alive.status = shoal_types::NodeStatus::Alive;
        state.nodes.insert("up".into(), alive);
        let mut down = shoal_types::Node::sample("down", "down:7950");
        down.status = shoal_types::NodeStatus::Dead;
        state.nodes.insert("down".into(), down);
        state.security.admissions.insert(
            "down".into(),
            shoal_state::security::Admission {
                admission: "00000000000000d1".into(),
                role: NodeRole::Voter,
                admitted_at_ms: 1,
                token: String::new(),
                facts_key: String::new(),
            },
        );
        type Case<'a> = (
            &'a JoinToken,
            Option<Role>,
            &'a str,
            u64,
            Result<Role, (u16, &'a str)>,
        );
        let cases: &[Case] = &[
            (&voter, None, "new", 10, Ok(Role::Voter)),
            (&voter, Some(Role::Worker), "new", 10, Ok(Role::Worker)),
            (&worker, None, "new", 10, Ok(Role::Worker)),
            (
                &worker,
                Some(Role::Voter),
                "new",
                10,
                Err((403, "is a worker token and cannot admit a voter")),
            ),
            (&voter, None, "new", 1_000, Err((403, "expired"))),
            (&used, None, "new", 10, Err((403, "already used 1 time(s)"))),
            (&revoked, None, "new", 10, Err((403, "was revoked"))),
            (
                &unknown,
                None,
                "new",
                10,
                Err((403, "is not known to the cluster")),
            ),
            (&wrong, None, "new", 10, Err((403, "the secret is wrong"))),
            (
                &voter,
                None,
                "up",
                10,
                Err((409, "a node named `up` is alive in the cluster")),
            ),
            (
                &worker,
                None,
                "down",
                10,
                Err((409, "`shoal node rm down`")),
            ),
        ];
        for (token, asked, name, now, want) in cases {
            let got = join_verdict(&state, token, *asked, name, *now)
                .map_err(|(status, why)| (status.as_u16(), why));
            match (want, &got) {
                (Ok(role), Ok(got_role)) => assert_eq!(role, got_role, "{name} at {now}"),
                (Err((status, words)), Err((got_status, why))) => {
                    assert_eq!(status, got_status, "{why}");
                    assert!(why.contains(words), "{why}");
                }
                _ => panic!("{name} at {now} with {asked:?}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    fn with_tokens(tokens: &[(&str, ApiRole, Option<u64>)]) -> shoal_state::State {
        let mut state = shoal_state::State::default();
        for (id, role, expires_at_ms) in tokens {
            state.security.api_tokens.insert(
                id.to_string(),
                ApiTokenRecord {
                    id: id.to_string(),
                    name: id.to_string(),
                    role: *role,
                    hash: "0".repeat(64),
                    created_at_ms: 1,
                    expires_at_ms: *expires_at_ms,
                    created_by: "test".into(),
                },
            );
        }
        state
    }

    #[test]
    fn the_last_admin_token_is_not_revoked() {
        let now = 1_000;
        // The only admin token, beside a deployer's and an expired admin's.
        let state = with_tokens(&[
            ("a", ApiRole::Admin, None),
            ("d", ApiRole::Deployer, None),
            ("old", ApiRole::Admin, Some(now)),
        ]);
        let why = last_admin_refusal(&state, "a", now).expect("refused");
        assert!(
            why.contains("last admin token") && why.contains("--role admin"),
            "{why}"
        );
        for other in ["d", "old", "nosuch"] {
            assert_eq!(last_admin_refusal(&state, other, now), None, "{other}");
        }
        // With a second live admin token, either may go.
        let state = with_tokens(&[
            ("a", ApiRole::Admin, None),
            ("b", ApiRole::Admin, Some(now + 1)),
        ]);
        assert_eq!(last_admin_refusal(&state, "a", now), None);
        assert_eq!(last_admin_refusal(&state, "b", now), None);
    }
}

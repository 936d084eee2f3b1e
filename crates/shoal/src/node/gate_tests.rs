//! The route × credential matrix: every route the node serves (the OpenAPI
//! document's operations, which the API's route test ties to the router,
//! and the Raft router's paths) called with every kind of credential
//! through the real gate. Only the allowed cells pass; every other one is
//! answered 401 or 403 before any handler runs. The expected cells are
//! spelled out here, apart from the access table they check.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use shoal_cluster::log::{MemoryLog, ReplicatedLog};
use shoal_pki::ca::Ca;
use shoal_pki::identity::{Identity, Role};
use shoal_pki::token::ApiToken;
use shoal_state::security::{ApiRole, ApiTokenRecord, NodeRole};
use shoal_state::{Command, State};
use tower::ServiceExt;

use super::audit::Audit;
use super::gate::{self, Gate};

const CLUSTER: &str = "test-cluster";

/// What a caller shows.
#[derive(Clone)]
struct Credential {
    label: &'static str,
    bearer: Option<String>,
    certificate: Option<Vec<u8>>,
}

/// Who may, as a person would write it down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Nobody,
    Reader,
    Deployer,
    Admin,
    Worker,
    Voter,
}

fn cert(ca: &Ca, name: &str, role: Role, cluster: &str, admission: &str) -> Vec<u8> {
    let identity = Identity {
        cluster_id: cluster.into(),
        role,
        name: name.into(),
        admission: admission.into(),
    };
    let (chain, _) = ca
        .issue_new_key(&identity, Duration::from_secs(600), SystemTime::now())
        .expect("certificate");
    let der: rustls::pki_types::CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(chain.as_bytes()).expect("PEM");
    der.to_vec()
}

fn token(log: &MemoryLog, role: ApiRole, expires_at_ms: Option<u64>) -> ApiToken {
    let token = ApiToken::generate();
    log.apply(Command::CreateApiToken {
        token: ApiTokenRecord {
            id: token.id.clone(),
            name: format!("{role:?}"),
            role,
            hash: token.hash().to_hex(),
            created_at_ms: 1,
            expires_at_ms,
            created_by: "test".into(),
        },
    });
    token
}

fn admit(log: &MemoryLog, name: &str, role: NodeRole, admission: &str, first: bool) {
    if !first {
        log.apply(Command::CreateJoinToken {
            token: shoal_state::security::JoinTokenRecord {
                id: format!("{:016x}", admission.len() as u64 + name.len() as u64),
                role: NodeRole::Voter,
                hash: "0".repeat(64),
                created_at_ms: 1,
                expires_at_ms: u64::MAX,
                uses_max: 1,
                uses: 0,
                revoked: false,
                created_by: "test".into(),
            },
        });
    }
    log.apply(Command::AdmitNode {
        token: if first {
            String::new()
        } else {
            format!("{:016x}", admission.len() as u64 + name.len() as u64)
        },
        node: name.into(),
        role,
        admission: admission.into(),
    });
}

/// Every operation the node serves.
fn routes() -> Vec<(Method, String)> {
    let document = shoal_api::openapi::document();
    let mut routes = Vec::new();
    for (path, operations) in document["paths"].as_object().expect("paths") {
        for (method, _) in operations.as_object().expect("operations") {
            // Skip `parameters` and the like, which are not operations.
            let method = match method.as_str() {
                "get" => Method::GET,
                "put" => Method::PUT,
                "post" => Method::POST,
                "delete" => Method::DELETE,
                "patch" => Method::PATCH,
                _ => continue,
            };
            let path = path
                .replace("{name}", "web")
                .replace("{key}", "gpu")
                .replace("{target}", "web.a")
                .replace("{id}", "00000000000000aa")
                .replace("{digest}", &format!("sha256:{}", "a".repeat(64)));
            routes.push((method, path));
        }
    }
    for path in shoal_cluster::raft::ROUTER_PATHS {
        routes.push((Method::POST, path.to_string()));
    }
    routes
}

/// Who may call `method path`, written out by hand.
fn allowed(method: &Method, path: &str) -> Vec<Class> {
    use Class::*;
    let read = method == Method::GET;
    match path {
        "/v1/health" => vec![Nobody, Reader, Deployer, Admin, Worker, Voter],
        "/v1/join/ca" | "/v1/join" => vec![Nobody, Reader, Deployer, Admin, Worker, Voter],
        // Raft's RPCs, and the membership changes only a leader makes.
        "/v1/raft/append"
        | "/v1/raft/vote"
        | "/v1/raft/snapshot"
        | "/v1/raft/add-learner"
        | "/v1/raft/change-voters"
        | "/v1/raft/remove-nodes" => vec![Voter],
        p if p.starts_with("/v1/raft/") || p.starts_with("/v1/internal/") => vec![Worker, Voter],
        p if p.starts_with("/v1/tokens") || p.starts_with("/v1/cluster/join-tokens") => {
            vec![Admin]
        }
        _ if read => vec![Reader, Deployer, Admin, Worker, Voter],
        // Deployers handle apps and images; pulling an image is theirs too.
        "/v1/apps" | "/v1/plan" | "/v1/images" | "/v1/images/pull" => vec![Deployer, Admin],
        "/v1/apps/web" => vec![Deployer, Admin],
        // Secrets and configs are written by those who deploy the apps
        // that use them; no route reads a secret's value.
        "/v1/secrets" | "/v1/configs" | "/v1/secrets/web" | "/v1/configs/web" => {
            vec![Deployer, Admin]
        }
        _ => vec![Admin],
    }
}

#[tokio::test]
async fn only_the_allowed_cells_of_the_route_credential_matrix_pass() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::generate(CLUSTER, 1, SystemTime::now()).expect("CA");
    let foreign = Ca::generate("other", 1, SystemTime::now()).expect("CA");
    let log = MemoryLog::new("v1", State::default());
    admit(&log, "v1", NodeRole::Voter, "00000000000000a1", true);
    admit(&log, "w1", NodeRole::Worker, "00000000000000b1", false);
    admit(&log, "gone", NodeRole::Voter, "00000000000000c1", false);
    log.apply(Command::RemoveNode {
        name: "gone".into(),
    });
    let admin = token(&log, ApiRole::Admin, None);
    let deployer = token(&log, ApiRole::Deployer, None);
    let reader = token(&log, ApiRole::Reader, None);
    let expired = token(&log, ApiRole::Admin, Some(2));
    let revoked = token(&log, ApiRole::Admin, None);
    log.apply(Command::RevokeApiToken {
        id: revoked.id.clone(),
    });
    let bearer = |token: &ApiToken| Some(token.to_string());
    let credentials: Vec<(Credential, Class)> = vec![
        (
            Credential {
                label: "nothing",
                bearer: None,
                certificate: None,
            },
            Class::Nobody,
        ),
        (
            Credential {
                label: "reader token",
                bearer: bearer(&reader),
                certificate: None,
            },
            Class::Reader,
        ),
        (
            Credential {
                label: "deployer token",
                bearer: bearer(&deployer),
                certificate: None,
            },
            Class::Deployer,
        ),
        (
            Credential {
                label: "admin token",
                bearer: bearer(&admin),
                certificate: None,
            },
            Class::Admin,
        ),
        (
            Credential {
                label: "expired admin token",
                bearer: bearer(&expired),
                certificate: None,
            },
            Class::Nobody,
        ),
        (
            Credential {
                label: "revoked admin token",
                bearer: bearer(&revoked),
                certificate: None,
            },
            Class::Nobody,
        ),
        (
            Credential {
                label: "admin token with a wrong secret",
                bearer: Some(format!("shoal_{}_{}", admin.id, "0".repeat(64))),
                certificate: None,
            },
            Class::Nobody,
        ),
        (
            Credential {
                label: "garbage bearer",
                bearer: Some("hunter2".into()),
                certificate: None,
            },
            Class::Nobody,
        ),
        (
            Credential {
                label: "worker certificate",
                bearer: None,
                certificate: Some(cert(&ca, "w1", Role::Worker, CLUSTER, "00000000000000b1")),
            },
            Class::Worker,
        ),
        (
            Credential {
                label: "voter certificate",
                bearer: None,
                certificate: Some(cert(&ca, "v1", Role::Voter, CLUSTER, "00000000000000a1")),
            },
            Class::Voter,
        ),
        (
            Credential {
                label: "removed node's certificate",
                bearer: None,
                certificate: Some(cert(&ca, "gone", Role::Voter, CLUSTER, "00000000000000c1")),
            },
            Class::Nobody,
        ),
        (
            Credential {
                label: "an old admission of a known node",
                bearer: None,
                certificate: Some(cert(&ca, "w1", Role::Voter, CLUSTER, "00000000000000ff")),
            },
            Class::Nobody,
        ),
        (
            Credential {
                label: "certificate of another cluster",
                bearer: None,
                certificate: Some(cert(
                    &foreign,
                    "v1",
                    Role::Voter,
                    "other",
                    "00000000000000a1",
                )),
            },
            Class::Nobody,
        ),
    ];
    let gate = Arc::new(Gate {
        log: log.clone(),
        cluster_id: CLUSTER.into(),
        // Every refusal on its own line: the matrix counts them.
        audit: Arc::new(
            Audit::open(dir.path())
                .expect("audit log")
                .with_refusal_rate(u32::MAX),
        ),
    });
    // Every handler answers 200: what is not 200 was the gate's doing.
    let router =
        Router::new()
            .fallback(|| async { "reached" })
            .layer(axum::middleware::from_fn_with_state(
                gate,
                gate::check::<MemoryLog>,
            ));
    let routes = routes();
    assert!(routes.len() >= 30, "{} routes", routes.len());
    let mut failures = Vec::new();
    let mut cells = 0;
    for (method, path) in &routes {
        let allowed = allowed(method, path);
        for (credential, class) in &credentials {
            let mut request = Request::builder().method(method.clone()).uri(path.as_str());
            if let Some(bearer) = &credential.bearer {
                request = request.header("authorization", format!("Bearer {bearer}"));
            }
            let mut request = request.body(Body::empty()).expect("request");
            // Each cell from an address of its own: refusals are audited
            // one by one up to a rate per address.
            let source = std::net::Ipv4Addr::from(0x0a00_0000_u32 + cells as u32);
            request.extensions_mut().insert(shoal_http::Peer {
                addr: std::net::SocketAddr::from((source, 1)),
                certificates: Arc::new(
                    credential
                        .certificate
                        .iter()
                        .map(|der| rustls::pki_types::CertificateDer::from(der.clone()))
                        .collect(),
                ),
                handshake_at: SystemTime::now(),
            });
            let status = router
                .clone()
                .oneshot(request)
                .await
                .expect("answer")
                .status();
            cells += 1;
            let should = allowed.contains(class);
            let passed = status == StatusCode::OK;
            let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
            if should != passed || (!should && !refused) {
                failures.push(format!(
                    "{method} {path} with {}: {status}",
                    credential.label
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cells} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Every mutating request was audited, refused ones too, and no secret is in the log.
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).expect("audit log");
    let mutating = routes
        .iter()
        .filter(|(method, path)| {
            method != Method::GET
                && !path.starts_with("/v1/raft/")
                && !path.starts_with("/v1/internal/")
        })
        .count();
    assert_eq!(
        audit.lines().count(),
        mutating * credentials.len(),
        "{audit}"
    );
    for token in [&admin, &deployer, &reader, &expired, &revoked] {
        assert!(
            !audit.contains(token.secret()),
            "a token's secret is in the audit log"
        );
    }
    assert!(audit.contains(&format!("token:{} (admin)", admin.id)));
}

/// A node takes a server it dialled only when the server's certificate is
/// of this cluster, not removed, and of the node the state says is at the
/// address dialled.
#[test]
fn a_server_is_the_node_dialled_and_not_removed() {
    use rustls::pki_types::ServerName;
    let log = MemoryLog::new("a", State::default());
    admit(&log, "a", NodeRole::Voter, "000000000000000a", true);
    admit(&log, "b", NodeRole::Voter, "000000000000000b", false);
    // (Names of different lengths: the helper names join tokens by them.)
    admit(&log, "wk", NodeRole::Worker, "00000000000000ff", false);
    for (name, addr) in [
        ("a", "10.0.0.1:7950"),
        ("b", "10.0.0.2:7950"),
        ("wk", "10.0.0.9:7950"),
    ] {
        log.apply(Command::RegisterNode {
            node: shoal_types::Node::sample(name, addr),
        });
    }
    let identity = |name: &str, admission: &str, cluster: &str| Identity {
        cluster_id: cluster.into(),
        role: Role::Voter,
        name: name.into(),
        admission: admission.into(),
    };
    let ip = |text: &str| ServerName::from(text.parse::<std::net::IpAddr>().expect("ip"));
    let refusal = |who: &Identity, dialled: &ServerName<'_>| {
        gate::server_refusal(&log.read(), CLUSTER, who, dialled)
    };
    let b = identity("b", "000000000000000b", CLUSTER);
    assert_eq!(refusal(&b, &ip("10.0.0.2")), None, "b where b is");
    assert_eq!(
        refusal(&b, &ip("10.9.9.9")),
        None,
        "an address the state does not know"
    );
    let why = refusal(
        &identity("wk", "00000000000000ff", CLUSTER),
        &ip("10.0.0.2"),
    )
    .expect("wk at b's address");
    assert!(why.contains("node b") && why.contains("node wk"), "{why}");
    let why = refusal(&identity("b", "000000000000000b", "other"), &ip("10.0.0.2"))
        .expect("another cluster");
    assert!(why.contains("cluster other"), "{why}");
    // Addresses are compared as addresses.
    log.apply(Command::RegisterNode {
        node: shoal_types::Node::sample("b", "[2001:db8::2]:7950"),
    });
    assert_eq!(
        refusal(&b, &ip("2001:0db8:0:0::2")),
        None,
        "b at its IPv6 address"
    );
    assert!(refusal(
        &identity("a", "000000000000000a", CLUSTER),
        &ip("2001:db8::2")
    )
    .is_some());
    // wk is removed: its certificate is refused even at its own address.
    log.apply(Command::RemoveNode { name: "wk".into() });
    let why = refusal(
        &identity("wk", "00000000000000ff", CLUSTER),
        &ip("10.0.0.9"),
    )
    .expect("removed");
    assert!(why.contains("removed"), "{why}");
    // A stale admission of b (b joined again since) is refused too.
    assert!(refusal(&identity("b", "00000000000000bb", CLUSTER), &ip("10.0.0.2")).is_some());
}

/// A node certificate shown expired (TLS takes one within its grace)
/// speaks for its node only for a renewal, and only under the node's
/// current admission: every other request is refused naming the expiry,
/// and so is a renewal by an admission the node no longer holds.
#[test]
fn an_expired_certificate_may_only_renew_under_the_current_admission() {
    let ca = Ca::generate(CLUSTER, 1, SystemTime::now() - Duration::from_secs(86_400)).unwrap();
    let log = MemoryLog::new("n1", State::default());
    admit(&log, "n1", NodeRole::Voter, "00000000000000a1", true);
    admit(&log, "w1", NodeRole::Worker, "00000000000000b1", false);
    let issued = |admission: &str, ends_in_past: bool| {
        let identity = Identity {
            cluster_id: CLUSTER.into(),
            role: Role::Worker,
            name: "w1".into(),
            admission: admission.into(),
        };
        let now = if ends_in_past {
            SystemTime::now() - Duration::from_secs(3600)
        } else {
            SystemTime::now()
        };
        let (chain, _) = ca
            .issue_new_key(&identity, Duration::from_secs(600), now)
            .expect("certificate");
        let der: rustls::pki_types::CertificateDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(chain.as_bytes()).expect("PEM");
        shoal_http::Peer {
            addr: std::net::SocketAddr::from(([10, 0, 0, 1], 1)),
            certificates: Arc::new(vec![der]),
            handshake_at: SystemTime::now(),
        }
    };
    let now_ms = u64::try_from(
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let state = log.read();
    let ask = |peer: &shoal_http::Peer, renewal: bool| {
        gate::identify(&state, CLUSTER, Some(peer), None, now_ms, renewal)
    };
    let worker = gate::Caller::Node {
        name: "w1".into(),
        role: Role::Worker,
    };
    let expired = issued("00000000000000b1", true);
    assert_eq!(ask(&expired, true), Ok(worker.clone()));
    let refused = ask(&expired, false).expect_err("an expired certificate reads");
    assert!(refused.0.contains("expired at"), "{refused:?}");
    assert!(refused.0.contains(gate::RENEW_PATH), "{refused:?}");
    // Expired, of an admission that is not the node's current one.
    let other = issued("00000000000000c1", true);
    assert!(ask(&other, true).is_err());
    // A certificate that has not expired is as before, renewal or not.
    let fresh = issued("00000000000000b1", false);
    assert_eq!(ask(&fresh, false), Ok(worker.clone()));
    assert_eq!(ask(&fresh, true), Ok(worker.clone()));
    // One that expired after its connection's handshake goes on speaking
    // on that connection (its node renews and reconnects).
    let mut kept = issued("00000000000000b1", true);
    kept.handshake_at = SystemTime::now() - Duration::from_secs(7200);
    assert_eq!(ask(&kept, false), Ok(worker));
}

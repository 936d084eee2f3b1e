use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use shoal_cluster::log::MemoryLog;
use shoal_cluster::membership::{Membership, MembershipConfig};
use shoal_cluster::raft::ProposeError;
use shoal_runtime::fake::FakeRuntime;
use shoal_state::State;
use shoal_types::Node;
use tower::ServiceExt;

use super::*;
use crate::node::{network, NodeConfig};

/// A node's backend over an in-memory log holding node `n1`, the fake
/// runtime and gossip on a loopback port of its own.
struct Fixture {
    log: MemoryLog,
    runtime: Arc<FakeRuntime>,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("data dir");
    // A free UDP port of loopback for gossip (it must be concrete); another
    // test may take it between the look and the bind, then another one.
    let mut attempt = 0;
    let (config, membership) = loop {
        attempt += 1;
        let loopback = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|socket| socket.local_addr())
            .expect("a free loopback port");
        let config = node_config(dir.path(), loopback);
        let facts = crate::node::cluster::facts(&config, 0);
        match Membership::start(
            MembershipConfig::new(
                "n1",
                loopback,
                "test-cluster",
                facts,
                dir.path().join("peers.json"),
            ),
            Vec::new(),
        )
        .await
        {
            Ok(membership) => break (config, membership),
            Err(error) if attempt < 10 => eprintln!("gossip on {loopback}: {error}; another port"),
            Err(error) => panic!("gossip on loopback: {error}"),
        }
    };
    let (trust, ..) = crate::node::trust::Trust::form(
        &dir.path().join("pki"),
        "test-cluster",
        "n1",
        std::time::Duration::from_secs(3600),
    )
    .expect("a throwaway CA");
    let log = MemoryLog::new("n1", State::default());
    log.apply(Command::RegisterNode {
        node: Node::sample("n1", "127.0.0.1:7950"),
    });
    let network = Arc::new(network::NodeNetwork::new(
        config.network.clone(),
        dir.path(),
    ));
    // `busybox` imported by hand, as on a fresh node of the tests.
    let runtime = Arc::new(FakeRuntime::new());
    runtime.add_image("busybox");
    let shared = Arc::new(Shared {
        config,
        raft: log.clone(),
        membership,
        cluster_id: "test-cluster".into(),
        runtime: runtime.clone(),
        started_at_ms: 0,
        http: shoal_http::client(Default::default(), &trust.client_tls).expect("client"),
        trust,
        network,
        leaving: tokio::sync::watch::channel(false).0,
        gossip_generation: Default::default(),
        ca_generation: Default::default(),
        renew_now: Default::default(),
        pull_credentials: Arc::new(crate::node::pull_credentials::PullCredentials::local(None)),
    });
    Fixture {
        log,
        runtime,
        router: shoal_api::server::router(Arc::new(NodeBackend(shared))),
        _dir: dir,
    }
}

/// The node's settings for the fixture, its gossip on `loopback`.
fn node_config(dir: &std::path::Path, loopback: std::net::SocketAddr) -> NodeConfig {
    NodeConfig {
        name: "n1".into(),
        data_dir: dir.to_path_buf(),
        bind: loopback,
        advertise: "127.0.0.1:7950".into(),
        gossip_bind: loopback,
        gossip_advertise: loopback,
        peers: Vec::new(),
        forget_dead_after: std::time::Duration::from_secs(3600),
        labels: Default::default(),
        reserve_cpu_millis: 0,
        reserve_memory_bytes: 0,
        network: network::NetworkConfig {
            bridge: "shoaltest0".into(),
            cni_plugin_dirs: Vec::new(),
            cluster_cidr: None,
            resolv_conf: dir.join("resolv.conf"),
            dns_port: 0,
            cni_config: None,
        },
        token: None,
        role: None,
        cert_lifetime: std::time::Duration::from_secs(3600),
        gossip_key_rotation: std::time::Duration::from_secs(86_400),
        image_gc: crate::node::image_gc::ImageGcConfig {
            root: dir.to_path_buf(),
            high_percent: 85,
            low_percent: 80,
            interval: std::time::Duration::from_secs(60),
        },
        allows: Default::default(),
    }
}

async fn call(
    fixture: &Fixture,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = fixture
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("answered");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

const SPEC: &str = "name: web\nservices: [{name: hello, image: busybox, replicas: 2}]\n";

#[tokio::test]
async fn an_app_is_put_through_the_log_and_shows_its_rollout() {
    let fixture = fixture().await;
    let (status, body) = call(&fixture, Method::POST, "/v1/apps", SPEC).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["version"].as_u64(), body["changed"].as_bool()),
        (Some(1), Some(true))
    );
    assert!(matches!(
        fixture.log.commands().last(),
        Some(Command::PutAppPinned { spec, images })
            if spec.name == "web" && images["hello"].source == shoal_types::PinSource::Node
    ));
    let (status, app) = call(&fixture, Method::GET, "/v1/apps/web", "").await;
    assert_eq!(status, StatusCode::OK, "{app}");
    assert_eq!(app["rollout"]["done"], false, "{app}");
    assert_eq!(app["rollout"]["services"][0]["wanted"], 2, "{app}");
    let (_, again) = call(&fixture, Method::POST, "/v1/apps", SPEC).await;
    assert_eq!(again["changed"], false, "the same spec changes nothing");
}

#[tokio::test]
async fn images_are_pinned_at_apply_and_an_unknown_one_changes_nothing() {
    let fixture = fixture().await;
    let web = fixture.runtime.add_registry_image("registry.example/web:1");
    let spec = "name: web\nservices:\n  - {name: a, image: busybox}\n  - {name: b, image: registry.example/web:1}\n";
    let (status, body) = call(&fixture, Method::POST, "/v1/apps", spec).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, app) = call(&fixture, Method::GET, "/v1/apps/web", "").await;
    let services = app["services"].as_array().expect("services");
    assert_eq!(services[0]["image_source"], "node", "{app}");
    assert_eq!(services[1]["image_source"], "registry", "{app}");
    let digest = fixture
        .runtime
        .images()
        .await
        .expect("images")
        .into_iter()
        .find(|image| image.name == web);
    assert!(digest.is_none(), "resolving pulls nothing");
    assert!(
        services[1]["image_digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{app}"
    );

    // A reference its registry does not have, in the second service: 422
    // naming the field, and nothing proposed.
    let before = fixture.log.commands().len();
    let missing = "name: web2\nservices:\n  - {name: a, image: busybox}\n  - {name: b, image: registry.example/nothing:1}\n";
    let (status, body) = call(&fixture, Method::POST, "/v1/apps", missing).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["path"], "services[1].image", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no such image"),
        "{body}"
    );
    assert_eq!(fixture.log.commands().len(), before);
}

#[tokio::test]
async fn an_apps_images_are_resolved_at_the_same_time() {
    let fixture = fixture().await;
    for name in ["a", "b", "c", "d"] {
        fixture
            .runtime
            .add_registry_image(&format!("registry.example/{name}:1"));
    }
    fixture
        .runtime
        .pause_resolves(std::time::Duration::from_millis(50));
    // Five services, four distinct images (one named twice).
    let spec = "name: many\nservices:\n  - {name: a, image: registry.example/a:1}\n  - {name: b, image: registry.example/b:1}\n  - {name: c, image: registry.example/c:1}\n  - {name: d, image: registry.example/d:1}\n  - {name: e, image: registry.example/a:1}\n";
    let (status, body) = call(&fixture, Method::POST, "/v1/apps", spec).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fixture.runtime.resolves_at_once_max(), 4);
    let (_, app) = call(&fixture, Method::GET, "/v1/apps/many", "").await;
    let services = app["services"].as_array().expect("services");
    assert_eq!(services.len(), 5, "{app}");
    assert_eq!(
        services[0]["image_digest"], services[4]["image_digest"],
        "{app}"
    );
    assert_ne!(
        services[0]["image_digest"], services[1]["image_digest"],
        "{app}"
    );
}

#[tokio::test]
async fn a_bad_spec_names_the_field_and_changes_nothing() {
    let fixture = fixture().await;
    let before = fixture.log.commands().len();
    let typo = "name: web\nservices: [{name: hello, image: busybox, replicaz: 2}]\n";
    let (status, body) = call(&fixture, Method::POST, "/v1/apps", typo).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("replicaz"),
        "{body}"
    );
    assert_eq!(fixture.log.commands().len(), before);
    let (status, _) = call(&fixture, Method::GET, "/v1/apps/web", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn no_leader_is_503_and_an_unknown_node_404() {
    let fixture = fixture().await;
    let (status, body) = call(
        &fixture,
        Method::POST,
        "/v1/nodes/nope/taints",
        r#"{"taint": "gpu=true:NoSchedule"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("nope"),
        "{body}"
    );
    fixture
        .log
        .refuse(Some(ProposeError::NoLeader("an election".into())));
    let (status, body) = call(&fixture, Method::POST, "/v1/apps", SPEC).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _) = call(&fixture, Method::GET, "/v1/apps", "").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "reads wait for the leader"
    );
}

#[tokio::test]
async fn nodes_merge_the_log_and_gossip() {
    let fixture = fixture().await;
    let (status, nodes) = call(&fixture, Method::GET, "/v1/nodes", "").await;
    assert_eq!(status, StatusCode::OK, "{nodes}");
    let node = &nodes[0];
    assert_eq!(node["name"], "n1", "{nodes}");
    assert_eq!(node["role"], "voter");
    assert_eq!(node["leader"], true);
    assert_eq!(node["release"], shoal_state::RELEASE, "from gossip: {node}");
}

#[tokio::test]
async fn an_image_is_removed_unless_a_task_of_the_node_runs_it() {
    let fixture = fixture().await;
    let old = fixture.runtime.add_image("registry.example/old:1");
    // A task placed on this node that runs busybox.
    let (status, body) = call(&fixture, Method::POST, "/v1/apps", SPEC).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let plan = shoal_sched::reconcile(&fixture.log.read());
    fixture.log.apply(Command::ApplyPlan { plan });
    assert!(!fixture.log.read().tasks.is_empty());

    let (status, body) = call(&fixture, Method::DELETE, "/v1/images?name=busybox", "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("in use on node n1 by web.hello.0."),
        "{body}"
    );
    let names = |images: Vec<shoal_runtime::ImageInfo>| -> Vec<String> {
        images.into_iter().map(|i| i.name).collect()
    };
    let kept = names(fixture.runtime.images().await.expect("images"));
    assert!(
        kept.contains(&"docker.io/library/busybox:latest".to_string()),
        "{kept:?}"
    );

    // Unused: removed, and gone from the list.
    let (status, body) = call(
        &fixture,
        Method::DELETE,
        "/v1/images?name=registry.example/old:1",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let left = names(fixture.runtime.images().await.expect("images"));
    assert!(!left.contains(&old), "{left:?}");

    // Not there, a name that is no reference, no name: each says so.
    for (query, wanted, words) in [
        (
            "?name=registry.example/old:1",
            StatusCode::NOT_FOUND,
            "has no image",
        ),
        ("?name=Not%20A%20Name", StatusCode::BAD_REQUEST, "name:"),
        ("", StatusCode::BAD_REQUEST, "name: missing"),
    ] {
        let (status, body) =
            call(&fixture, Method::DELETE, &format!("/v1/images{query}"), "").await;
        assert_eq!(status, wanted, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap_or_default().contains(words),
            "{query}: {body}"
        );
    }
}

#[tokio::test]
async fn pulls_under_way_say_how_far_they_are() {
    let fixture = fixture().await;
    let (status, body) = call(&fixture, Method::GET, "/v1/images/pulls", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, serde_json::json!([]));
    let web = fixture.runtime.add_registry_image("registry.example/web:1");
    fixture.runtime.hold_pull(
        &web,
        shoal_runtime::PullProgress {
            done_bytes: 3,
            total_bytes: 10,
            bytes_per_s: 1,
            layers: vec![shoal_runtime::LayerProgress {
                digest: format!("sha256:{}", "a".repeat(64)),
                done_bytes: 3,
                total_bytes: 10,
            }],
        },
    );
    let (status, body) = call(&fixture, Method::GET, "/v1/images/pulls", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0]["name"], web.as_str(), "{body}");
    assert_eq!(
        (&body[0]["done_bytes"], &body[0]["total_bytes"]),
        (&serde_json::json!(3), &serde_json::json!(10)),
        "{body}"
    );
    assert_eq!(body[0]["layers"][0]["total_bytes"], 10, "{body}");
}

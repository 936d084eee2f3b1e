//! One Raft node: a cluster of itself, its state restored from disk.

use std::time::{Duration, Instant};

use shoal_cluster::raft::{ProposeError, RaftConfig, RaftNode, RaftRole};
use shoal_state::{ApplyError, Command, Outcome};

fn put_app(name: &str) -> Command {
    let yaml = format!("name: {name}\nservices:\n  - name: a\n    image: busybox\n");
    Command::PutApp {
        spec: shoal_types::parse_app(yaml.as_bytes()).expect("valid spec"),
    }
}

fn config(dir: &std::path::Path) -> RaftConfig {
    // No peers: the address is recorded in the membership but never dialled.
    let credentials = shoal_pki::tls::Credentials::new(
        shoal_pki::ca::Ca::generate("test", 1, std::time::SystemTime::now())
            .expect("CA")
            .cert_pem(),
    )
    .expect("roots");
    let tls = shoal_pki::tls::client_config(credentials).expect("TLS");
    let mut config = RaftConfig::new(1, "solo", "127.0.0.1:9", dir, tls);
    config.snapshot_every_entries = 50;
    config.log_kept_after_snapshot = 10;
    config
}

#[tokio::test]
async fn a_single_node_initializes_writes_and_comes_back_from_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = RaftNode::open(config(dir.path())).await.expect("open");
    assert!(!node.is_initialized());
    node.initialize().await.expect("initialize");
    assert!(node.is_initialized());
    let status = node.status();
    assert_eq!(status.role, RaftRole::Leader);
    assert_eq!(status.leader, Some(1));
    assert_eq!(status.voters, [1].into());
    assert_eq!(status.nodes[&1].name, "solo");

    let applied = node.subscribe();
    let outcome = node.propose(1, put_app("web")).await.expect("write");
    assert_eq!(
        outcome,
        Outcome::AppPut {
            version: 1,
            changed: true
        }
    );
    assert_eq!(node.read().apps["web"].created_at_ms, 1);
    assert_eq!(*applied.borrow(), node.read().applied_index);

    let error = node
        .propose(
            2,
            Command::RemoveApp {
                name: "nope".into(),
            },
        )
        .await
        .expect_err("unknown app");
    assert_eq!(
        error,
        ProposeError::Rejected(ApplyError::AppNotFound("nope".into()))
    );

    // Across several snapshots (every 50 entries) and log purges.
    for i in 0..130 {
        node.propose(3 + i, put_app(&format!("app-{i}")))
            .await
            .expect("write");
    }
    node.linearizable_read().await.expect("read");
    let before = node.read().clone();
    assert_eq!(before.apps.len(), 131);
    assert_eq!(node.status().last_applied, before.applied_index);
    node.shutdown().await;
    assert_eq!(node.status().role, RaftRole::Shutdown);
    assert_eq!(
        node.propose(9, put_app("late")).await,
        Err(ProposeError::Stopped)
    );

    let node = RaftNode::open(config(dir.path())).await.expect("reopen");
    assert!(node.is_initialized());
    assert_eq!(*node.read(), before, "state restored from disk");
    // No initialize needed: it elects itself and takes writes.
    let outcome = node.propose(200, put_app("web")).await.expect("write");
    assert_eq!(
        outcome,
        Outcome::AppPut {
            version: 1,
            changed: false
        }
    );
    node.initialize().await.expect("initialize is a no-op now");
    assert_eq!(node.read().apps.len(), 131);
    node.shutdown().await;
}

#[tokio::test]
async fn a_node_outside_any_cluster_refuses_writes_in_bounded_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(dir.path());
    config.wait_max = Duration::from_millis(600);
    let node = RaftNode::open(config).await.expect("open");
    let started = Instant::now();
    let error = node
        .propose(1, put_app("web"))
        .await
        .expect_err("no cluster");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        error.to_string().contains("not part of a cluster"),
        "{error}"
    );
    assert!(node.read().apps.is_empty());
    node.shutdown().await;
}

//! Gossip membership over real UDP sockets on loopback.
//!
//! Each test uses its own 127.77.<test>.<node> addresses (all of 127/8 is
//! loopback on Linux), so tests run in parallel without port races and a
//! restarted node can take its address again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use shoal_cluster::membership::{
    Member, MemberStatus, Membership, MembershipConfig, MembershipError, NodeFacts,
};

const CONVERGE: Duration = Duration::from_secs(10);

fn addr(test: u8, node: u8) -> SocketAddr {
    SocketAddr::from(([127, 77, test, node], 7946))
}

fn facts(name: &str, n: u32) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        api_addr: format!("10.0.0.{n}:7070"),
        raft_id: u64::from(n),
        os: "linux".into(),
        arch: "x86_64".into(),
        cpus: n,
        memory_total_bytes: 1 << 30,
        memory_used_bytes: 0,
        labels: BTreeMap::from([("zone".into(), format!("z{n}"))]),
        started_at_ms: 1,
        release: "0.2.0".into(),
        log_version: 2,
    }
}

fn config(name: &str, n: u32, at: SocketAddr, cluster: &str, dir: &Path) -> MembershipConfig {
    MembershipConfig::new(
        name,
        at,
        cluster,
        facts(name, n),
        dir.join(format!("{name}.peers.json")),
    )
}

async fn start(name: &str, n: u32, at: SocketAddr, dir: &Path, peers: &[SocketAddr]) -> Membership {
    Membership::start(config(name, n, at, "test", dir), peers.to_vec())
        .await
        .unwrap_or_else(|err| panic!("starting {name}: {err}"))
}

/// Polls `done` until it holds; panics after `timeout`. Returns the time it
/// took.
async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if done() {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn member(node: &Membership, name: &str) -> Option<Member> {
    node.members().into_iter().find(|m| m.facts.name == name)
}

fn status(node: &Membership, name: &str) -> Option<MemberStatus> {
    member(node, name).map(|m| m.status)
}

/// Every node lists exactly `nodes`, all alive, each with its own facts.
fn converged(nodes: &[&Membership]) -> bool {
    nodes.iter().all(|node| {
        let members = node.members();
        members.len() == nodes.len()
            && nodes.iter().all(|other| {
                members.iter().any(|m| {
                    m.facts.name == other.name()
                        && m.status == MemberStatus::Alive
                        && m.gossip_addr == other.advertise()
                        && m.facts.api_addr.starts_with("10.0.0.")
                })
            })
    })
}

async fn shutdown_all(nodes: &[&Membership]) {
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn three_nodes_join_through_one_and_share_facts() {
    let dir = tempfile::tempdir().unwrap();
    let a = start("a", 1, addr(1, 1), dir.path(), &[]).await;
    let b = start("b", 2, addr(1, 2), dir.path(), &[a.advertise()]).await;
    let c = start("c", 3, addr(1, 3), dir.path(), &[a.advertise()]).await;

    let took = wait_for("3 nodes to converge", CONVERGE, || converged(&[&a, &b, &c])).await;
    println!("3-node join convergence: {took:?}");

    // Each sees the others' facts as given.
    let seen_by_c = member(&c, "b").unwrap();
    assert_eq!(seen_by_c.facts, facts("b", 2));
    assert_eq!(seen_by_c.gossip_addr, addr(1, 2));
    assert_eq!(member(&b, "c").unwrap().facts.cpus, 3);
    assert_eq!(member(&a, "a").unwrap().status, MemberStatus::Alive);

    // A change of facts reaches the others, and subscribers hear of it.
    let mut changes = c.subscribe();
    changes.mark_unchanged();
    let mut updated = facts("a", 1);
    updated.memory_used_bytes = 123_456;
    updated.labels.insert("disk".into(), "ssd".into());
    a.update_facts(updated.clone()).unwrap();
    let took = wait_for("updated facts to spread", CONVERGE, || {
        [&b, &c]
            .iter()
            .all(|n| member(n, "a").is_some_and(|m| m.facts == updated))
    })
    .await;
    println!("facts update spread: {took:?}");
    assert!(changes.has_changed().unwrap());
    assert_eq!(member(&a, "a").unwrap().facts, updated);

    // Facts must keep the node's name and fit a datagram.
    assert!(matches!(
        a.update_facts(facts("other", 1)),
        Err(MembershipError::FactsName { .. })
    ));
    let mut huge = facts("a", 1);
    huge.labels = (0..100)
        .map(|i| (format!("label-{i}"), "x".repeat(20)))
        .collect();
    assert!(matches!(
        a.update_facts(huge),
        Err(MembershipError::FactsTooLarge { .. })
    ));

    shutdown_all(&[&a, &b, &c]).await;
    assert!(matches!(
        a.join(&[b.advertise()]).await,
        Err(MembershipError::Stopped)
    ));
}

#[tokio::test]
async fn crashed_node_becomes_suspect_then_dead() {
    let dir = tempfile::tempdir().unwrap();
    let a = start("a", 1, addr(2, 1), dir.path(), &[]).await;
    let b = start("b", 2, addr(2, 2), dir.path(), &[a.advertise()]).await;
    let c = start("c", 3, addr(2, 3), dir.path(), &[a.advertise()]).await;
    wait_for("3 nodes to converge", CONVERGE, || converged(&[&a, &b, &c])).await;

    c.shutdown().await;
    let crashed = Instant::now();
    let mut suspect_at = [None, None];
    let mut dead_at = [None, None];
    wait_for("c to be dead for a and b", Duration::from_secs(20), || {
        for (i, observer) in [&a, &b].into_iter().enumerate() {
            match status(observer, "c") {
                Some(MemberStatus::Suspect) if suspect_at[i].is_none() => {
                    suspect_at[i] = Some(crashed.elapsed());
                }
                Some(MemberStatus::Dead) if dead_at[i].is_none() => {
                    dead_at[i] = Some(crashed.elapsed());
                }
                _ => {}
            }
        }
        dead_at.iter().all(Option::is_some)
    })
    .await;
    println!("after crash: suspect seen at {suspect_at:?}, dead at {dead_at:?} (a, b)");
    assert!(
        suspect_at.iter().any(Option::is_some),
        "nobody saw c suspect before dead"
    );
    for (suspect, dead) in suspect_at.iter().zip(&dead_at) {
        if let (Some(suspect), Some(dead)) = (suspect, dead) {
            assert!(suspect <= dead);
        }
    }
    // Dead members stay listed (until dead_forget_after), with their facts.
    let dead = member(&a, "c").unwrap();
    assert_eq!(dead.facts.cpus, 3);
    assert!(dead.since_ms >= member(&a, "a").unwrap().since_ms);
    assert_eq!(status(&a, "b"), Some(MemberStatus::Alive));

    shutdown_all(&[&a, &b]).await;
}

#[tokio::test]
async fn leaving_node_is_seen_as_left() {
    let dir = tempfile::tempdir().unwrap();
    let a = start("a", 1, addr(3, 1), dir.path(), &[]).await;
    let b = start("b", 2, addr(3, 2), dir.path(), &[a.advertise()]).await;
    let c = start("c", 3, addr(3, 3), dir.path(), &[a.advertise()]).await;
    wait_for("3 nodes to converge", CONVERGE, || converged(&[&a, &b, &c])).await;

    c.leave().await;
    let took = wait_for("c to be left for a and b", CONVERGE, || {
        [&a, &b]
            .iter()
            .all(|n| status(n, "c") == Some(MemberStatus::Left))
    })
    .await;
    println!("leave seen as Left after {took:?}");
    assert_eq!(status(&c, "c"), Some(MemberStatus::Left));
    // Left stays left: it does not turn into dead.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status(&a, "c"), Some(MemberStatus::Left));
    assert_eq!(status(&a, "b"), Some(MemberStatus::Alive));
    c.leave().await; // a second leave is harmless

    shutdown_all(&[&a, &b]).await;
}

#[tokio::test]
async fn restarted_node_is_alive_again() {
    let dir = tempfile::tempdir().unwrap();
    let a = start("a", 1, addr(4, 1), dir.path(), &[]).await;
    let b = start("b", 2, addr(4, 2), dir.path(), &[a.advertise()]).await;
    wait_for("2 nodes to converge", CONVERGE, || converged(&[&a, &b])).await;

    // Crash, wait until the others see it dead, start again.
    b.shutdown().await;
    wait_for("b to be dead", Duration::from_secs(20), || {
        status(&a, "b") == Some(MemberStatus::Dead)
    })
    .await;
    let dead_since = member(&a, "b").unwrap().since_ms;
    let mut restarted = config("b", 2, addr(4, 2), "test", dir.path());
    restarted.facts.started_at_ms = 2;
    let b2 = Membership::start(restarted.clone(), vec![a.advertise()])
        .await
        .unwrap();
    let took = wait_for("restarted b to be alive", CONVERGE, || {
        converged(&[&a, &b2]) && member(&a, "b").is_some_and(|m| m.facts.started_at_ms == 2)
    })
    .await;
    println!("restart after death: alive again after {took:?}");
    assert!(member(&a, "b").unwrap().since_ms >= dead_since);

    // Crash and restart at once, before anyone noticed.
    b2.shutdown().await;
    restarted.facts.started_at_ms = 3;
    let b3 = Membership::start(restarted, vec![a.advertise()])
        .await
        .unwrap();
    let took = wait_for("quickly restarted b to replace itself", CONVERGE, || {
        converged(&[&a, &b3]) && member(&a, "b").is_some_and(|m| m.facts.started_at_ms == 3)
    })
    .await;
    println!("quick restart: replaced after {took:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(converged(&[&a, &b3]), "the old b must not come back dead");

    shutdown_all(&[&a, &b3]).await;
}

#[tokio::test]
async fn clusters_do_not_merge() {
    let dir = tempfile::tempdir().unwrap();
    let x = Membership::start(config("x1", 1, addr(5, 1), "x", dir.path()), vec![])
        .await
        .unwrap();
    let y = Membership::start(
        config("y1", 2, addr(5, 2), "y", dir.path()),
        vec![addr(5, 1)],
    )
    .await
    .unwrap();
    x.join(&[y.advertise()]).await.unwrap();
    // Same cluster as x, to show x itself works.
    let x2 = Membership::start(
        config("x2", 3, addr(5, 3), "x", dir.path()),
        vec![addr(5, 1)],
    )
    .await
    .unwrap();
    wait_for("x1 and x2 to converge", CONVERGE, || converged(&[&x, &x2])).await;
    wait_for(
        "the other cluster's datagrams to be dropped",
        CONVERGE,
        || x.stats().dropped_other_cluster > 0 && y.stats().dropped_other_cluster > 0,
    )
    .await;
    // Anything else sent to the gossip port is dropped and counted.
    let stranger = std::net::UdpSocket::bind(addr(5, 9)).unwrap();
    stranger
        .send_to(b"GET / HTTP/1.1\r\n\r\n", x.advertise())
        .unwrap();
    stranger.send_to(&[0u8; 2000], x.advertise()).unwrap();
    wait_for("garbage to be dropped", CONVERGE, || {
        let stats = x.stats();
        stats.dropped_malformed == 1 && stats.dropped_oversize == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let names =
        |n: &Membership| -> Vec<String> { n.members().into_iter().map(|m| m.facts.name).collect() };
    assert_eq!(names(&x), ["x1", "x2"]);
    assert_eq!(names(&x2), ["x1", "x2"]);
    assert_eq!(names(&y), ["y1"]);
    println!("x1 {:?}\ny1 {:?}", x.stats(), y.stats());

    shutdown_all(&[&x, &x2, &y]).await;
}

#[tokio::test]
async fn peer_cache_lets_nodes_rejoin_without_peers() {
    let dir = tempfile::tempdir().unwrap();
    let a = start("a", 1, addr(6, 1), dir.path(), &[]).await;
    let b = start("b", 2, addr(6, 2), dir.path(), &[a.advertise()]).await;
    let c = start("c", 3, addr(6, 3), dir.path(), &[a.advertise()]).await;
    wait_for("3 nodes to converge", CONVERGE, || converged(&[&a, &b, &c])).await;

    let cache_of = |name: &str| dir.path().join(format!("{name}.peers.json"));
    let cached_peers = |name: &str| -> Vec<SocketAddr> {
        let Ok(text) = std::fs::read_to_string(cache_of(name)) else {
            return Vec::new();
        };
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["cluster_id"], "test");
        serde_json::from_value(json["peers"].clone()).unwrap()
    };
    wait_for("c's peer cache to list a and b", CONVERGE, || {
        cached_peers("c") == [addr(6, 1), addr(6, 2)]
    })
    .await;
    assert!(!dir.path().join("c.peers.json.tmp").exists());

    // c restarts with no peers: the cache brings it back.
    c.shutdown().await;
    let c = start("c", 3, addr(6, 3), dir.path(), &[]).await;
    let took = wait_for("c to rejoin from its cache", CONVERGE, || {
        converged(&[&a, &b, &c])
    })
    .await;
    println!("rejoin from peer cache: {took:?}");

    // The whole cluster stops and starts again, one by one, with no peers.
    wait_for("every cache to list the others", CONVERGE, || {
        cached_peers("a") == [addr(6, 2), addr(6, 3)]
            && cached_peers("b") == [addr(6, 1), addr(6, 3)]
    })
    .await;
    shutdown_all(&[&a, &b, &c]).await;
    let a = start("a", 1, addr(6, 1), dir.path(), &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = start("b", 2, addr(6, 2), dir.path(), &[]).await;
    let c = start("c", 3, addr(6, 3), dir.path(), &[]).await;
    let took = wait_for("the restarted cluster to converge", CONVERGE, || {
        converged(&[&a, &b, &c])
    })
    .await;
    println!("whole-cluster restart from peer caches: {took:?}");

    shutdown_all(&[&a, &b, &c]).await;
}

#[tokio::test]
async fn five_nodes_converge() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut nodes: Vec<Membership> = Vec::new();
    for i in 1..=5u8 {
        // Each joins through the one before it.
        let peers: Vec<SocketAddr> = nodes.last().map(|n| n.advertise()).into_iter().collect();
        nodes.push(
            start(
                &format!("n{i}"),
                u32::from(i),
                addr(7, i),
                dir.path(),
                &peers,
            )
            .await,
        );
    }
    let refs: Vec<&Membership> = nodes.iter().collect();
    let took = wait_for("5 nodes to converge", CONVERGE, || converged(&refs)).await;
    println!(
        "5-node convergence: {took:?} after the last start, {:?} after the first",
        started.elapsed()
    );
    // Still converged a little later (no flapping).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(converged(&refs));
    shutdown_all(&refs).await;
}

#[tokio::test]
async fn bad_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = config("n", 1, addr(8, 1), "test", dir.path());

    let mut other_name = base.clone();
    other_name.facts.name = "m".into();
    let err = Membership::start(other_name, vec![]).await.unwrap_err();
    assert!(matches!(err, MembershipError::FactsName { .. }), "{err}");

    let mut unspecified = base.clone();
    unspecified.advertise = "0.0.0.0:7946".parse().unwrap();
    let err = Membership::start(unspecified, vec![]).await.unwrap_err();
    assert!(err.to_string().contains("advertise"), "{err}");

    let mut slow_rtt = base.clone();
    slow_rtt.probe_rtt = slow_rtt.probe_period;
    assert!(Membership::start(slow_rtt, vec![]).await.is_err());

    // A port taken by another socket.
    let taken = std::net::UdpSocket::bind(addr(8, 2)).unwrap();
    let mut busy = base.clone();
    busy.bind = addr(8, 2);
    busy.advertise = addr(8, 2);
    let err = Membership::start(busy, vec![]).await.unwrap_err();
    assert!(matches!(err, MembershipError::Bind { .. }), "{err}");
    drop(taken);

    // A corrupt peer cache is ignored, not fatal.
    std::fs::write(&base.peer_cache, b"{oops").unwrap();
    let node = Membership::start(base, vec![]).await.unwrap();
    assert_eq!(node.members().len(), 1);
    node.shutdown().await;
}

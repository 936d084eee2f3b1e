//! A rolling upgrade of shoal itself (SHOAL_E2E=1): a 3-node cluster of the
//! release named in `tests/upgrade-from`, running an app in real containers,
//! is upgraded to this build one node at a time (stop, replace, start).
//! No container restarts, writes are accepted throughout (retried only
//! while a leader is elected), and every node ends with the same state.

mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::cluster::Cluster;
use serde_json::Value;

const SLEEPERS: &str = r#"
name: sleepers
services:
  - name: zz
    image: shoal.test/busybox:latest
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    replicas: 3
"#;

/// How long a write may be refused in a row (a leader election).
const WRITE_RETRY_MAX: Duration = Duration::from_secs(20);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run a command");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The commit named in `tests/upgrade-from`.
fn upgrade_from() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upgrade-from");
    let text = std::fs::read_to_string(&path).expect("tests/upgrade-from");
    let commit = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .expect("tests/upgrade-from names a commit")
        .to_string();
    assert!(
        commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "tests/upgrade-from: `{commit}` is not a full commit id"
    );
    commit
}

/// Builds the older release (a git worktree, debug build) once; later runs
/// reuse the binary under `target/upgrade-from/COMMIT`.
fn old_binary() -> PathBuf {
    let root = workspace_root();
    let commit = upgrade_from();
    let base = root.join("target/upgrade-from").join(&commit);
    let binary = base.join("target/debug/shoal");
    if binary.exists() {
        return binary;
    }
    let source = base.join("src");
    if !source.join("Cargo.toml").exists() {
        run(Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["worktree", "prune"]));
        let _ = std::fs::remove_dir_all(&source);
        let known = Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            known,
            "commit {commit} of tests/upgrade-from is not in this clone; fetch the whole history (git fetch --unshallow)"
        );
        run(Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["worktree", "add", "--detach"])
            .arg(&source)
            .arg(&commit));
    }
    eprintln!("building shoal at {commit} for the upgrade test");
    run(Command::new("cargo")
        .args(["build", "--locked", "-p", "shoal", "--bin", "shoal"])
        .current_dir(&source)
        .env("CARGO_TARGET_DIR", base.join("target")));
    assert!(binary.exists(), "the build made no {}", binary.display());
    binary
}

/// Applies `spec` through node `index`, again while the cluster has no
/// leader, for at most [`WRITE_RETRY_MAX`].
fn write(cluster: &Cluster, index: usize, spec: &str) {
    let started = Instant::now();
    loop {
        let output = cluster.apply(index, spec);
        if output.status.success() {
            return;
        }
        let error = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            started.elapsed() < WRITE_RETRY_MAX,
            "a write through node {index} was refused for {WRITE_RETRY_MAX:?}: {error}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn empty_app(name: &str) -> String {
    format!(
        "name: {name}\nservices: [{{name: a, image: shoal.test/busybox:latest, replicas: 0}}]\n"
    )
}

/// Every container of every node with its process id (`ctr` as the witness).
fn container_pids(cluster: &Cluster) -> BTreeMap<String, String> {
    let mut pids = BTreeMap::new();
    for member in &cluster.members {
        let listing = run(Command::new("ctr").args(["-n", &member.namespace, "tasks", "ls"]));
        for line in listing.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [task, pid, status, ..] = fields[..] {
                assert_eq!(status, "RUNNING", "{line}");
                pids.insert(format!("{}/{task}", member.name), pid.to_string());
            }
        }
    }
    pids
}

/// What node `index` holds of the replicated state, as its API shows it.
fn state_seen(cluster: &Cluster, index: usize) -> Value {
    let apps = cluster.shoal_json(index, &["apps"]).expect("apps");
    let mut tasks: Vec<Value> = cluster
        .tasks(index)
        .into_iter()
        .map(|t| {
            serde_json::json!([
                t["id"],
                t["node"],
                t["desired"],
                t["state"],
                t["app_version"]
            ])
        })
        .collect();
    tasks.sort_by_key(|t| t.to_string());
    let nodes: Vec<Value> = cluster
        .nodes(index)
        .expect("nodes")
        .into_iter()
        .map(|n| {
            serde_json::json!([
                n["name"],
                n["subnet"],
                n["taints"],
                n["drain"],
                n["cpu_allocatable_millis"]
            ])
        })
        .collect();
    serde_json::json!({"apps": apps, "tasks": tasks, "nodes": nodes})
}

fn cluster_info(cluster: &Cluster, index: usize) -> Option<Value> {
    cluster.shoal_json(index, &["cluster", "info"])
}

#[test]
fn a_running_cluster_upgrades_node_by_node() {
    if !harness::e2e_enabled() {
        eprintln!("skipped: set SHOAL_E2E=1 to run end-to-end tests");
        return;
    }
    let old = old_binary();
    let Some(mut cluster) = Cluster::start_with_binary_or_skip("upgrade", &[&[], &[], &[]], &old)
    else {
        return;
    };
    let release = env!("CARGO_PKG_VERSION");
    cluster.apply_ok(0, SLEEPERS);
    cluster.wait_for("3 replicas running", || {
        (cluster.running_replicas(0, None) == 3).then_some(())
    });
    let before = container_pids(&cluster);
    assert_eq!(before.len(), 3, "{before:?}");
    // The newest format the old release writes.
    let old_format = cluster_info(&cluster, 0).expect("cluster info")["log_version"].clone();

    for index in 0..3 {
        cluster.stop(index);
        // The others take writes while this node is down.
        write(
            &cluster,
            (index + 1) % 3,
            &empty_app(&format!("down-{index}")),
        );
        cluster.members[index].agent_binary = harness::binary().into();
        cluster.start(index, &[]);
        cluster.wait_for("the upgraded node back among 3 alive nodes", || {
            let nodes = cluster.nodes(index)?;
            let alive = nodes.iter().filter(|n| n["status"] == "alive").count();
            let upgraded = nodes.iter().any(|n| {
                n["name"] == cluster.members[index].name.as_str() && n["release"] == release
            });
            (alive == 3 && upgraded).then_some(())
        });
        // And through the upgraded node itself.
        write(&cluster, index, &empty_app(&format!("up-{index}")));
        if index < 2 {
            // Older nodes remain: everyone keeps writing the old format (a
            // node just restarted learns it within a few duty rounds).
            cluster.wait_for(
                "the mixed cluster to write the old release's format",
                || (cluster_info(&cluster, index)?["log_version"] == old_format).then_some(()),
            );
        }
        if index < 2 {
            // A secret needs a format older nodes do not read: refused,
            // saying why, and nothing is kept.
            let refused =
                cluster.shoal_with_stdin(index, &["secret", "create", "early", "-f", "-"], "pw");
            assert!(!refused.status.success(), "{refused:?}");
            let said = String::from_utf8_lossy(&refused.stderr);
            assert!(said.contains("upgrade every node"), "{said}");
            // So does a rotation of the CA: an older node would not follow
            // the new roots.
            let refused = cluster.shoal(index, &["cluster", "ca", "rotate", "--no-wait"]);
            assert!(!refused.status.success(), "{refused:?}");
            let said = String::from_utf8_lossy(&refused.stderr);
            assert!(said.contains("upgrade every node"), "{said}");
            // An older node reads no sealed gossip: the upgraded node
            // speaks plaintext, or it would not be heard.
            let info = cluster_info(&cluster, index).expect("cluster info");
            assert_eq!(info["gossip"]["mode"], "plaintext", "{info}");
            assert_eq!(info["gossip"]["sealed_sent"], 0, "{info}");
        }
    }

    // Every node now reads this release's format, and every node learns it.
    for index in 0..3 {
        cluster.wait_for("the cluster to write this release's log format", || {
            (cluster_info(&cluster, index)?["log_version"] == shoal_state::LOG_VERSION)
                .then_some(())
        });
    }
    // Every node holds the keyring and seals its gossip; once the moment
    // for the others to switch too has passed, it takes no plaintext. The
    // same for proven identities, which the old release does not send.
    for index in 0..3 {
        cluster.wait_for("the node to take sealed, proven gossip only", || {
            let info = cluster_info(&cluster, index)?;
            (info["gossip"]["mode"] == "sealed" && info["gossip"]["identities"] == "proven")
                .then_some(())
        });
    }
    // Every node records its facts key once the cluster writes format 9,
    // and every node then takes each node's facts only when signed by it.
    for index in 0..3 {
        cluster.wait_for("every node to know every node's facts key", || {
            (cluster_info(&cluster, index)?["gossip"]["facts_keys"] == 3).then_some(())
        });
    }
    // The CA the old release made rotates to a new root, every node
    // renewing onto it; the writes below go through the new certificates.
    let rotated = cluster.shoal_ok(0, &["cluster", "ca", "rotate", "--timeout", "2m"]);
    assert!(rotated.contains("rotation ended"), "{rotated}");
    for index in 0..3 {
        write(&cluster, index, &empty_app(&format!("after-{index}")));
    }
    // Now a secret is taken, and every node lists it (the one refused
    // before is not there).
    let created = cluster.shoal_with_stdin(0, &["secret", "create", "late", "-f", "-"], "pw");
    assert!(created.status.success(), "{created:?}");
    for index in 0..3 {
        cluster.wait_for("the secret listed by every node", || {
            let listed = cluster.shoal_json(index, &["secret", "ls"])?;
            let names: Vec<&str> = listed
                .as_array()?
                .iter()
                .filter_map(|s| s["name"].as_str())
                .collect();
            (names == ["late"]).then_some(())
        });
    }
    let nodes = cluster.nodes(0).expect("nodes");
    for node in &nodes {
        assert_eq!(node["release"], release, "{node}");
        assert_eq!(node["status"], "alive", "{node}");
    }
    for index in 0..3 {
        let info = cluster_info(&cluster, index).expect("cluster info");
        let gossip = &info["gossip"];
        assert!(gossip["sealed_received"].as_u64() > Some(0), "{info}");
        // Nobody sent plaintext to a node that no longer took it, nor
        // sealed with a key another did not hold.
        assert_eq!(gossip["dropped"]["unsealed"], 0, "{info}");
        assert_eq!(gossip["dropped"]["unknown_key"], 0, "{info}");
        // No node's own facts were refused: each signed what it sent.
        assert_eq!(gossip["dropped"]["facts_unsigned"], 0, "{info}");
    }

    assert_eq!(container_pids(&cluster), before, "no container restarted");
    let states: Vec<Value> = (0..3).map(|index| state_seen(&cluster, index)).collect();
    assert_eq!(states[0], states[1], "nodes 1 and 2 hold different states");
    assert_eq!(states[0], states[2], "nodes 1 and 3 hold different states");
    let apps = states[0]["apps"].as_array().map_or(0, Vec::len);
    assert_eq!(
        apps,
        1 + 3 + 3 + 3,
        "every acknowledged write is kept: {}",
        states[0]
    );
}

//! End-to-end tests of several real `shoal agent` processes on 127.X.Y.N
//! addresses forming one cluster, with real containerd (SHOAL_E2E=1).

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harness::cluster::Cluster;
use harness::registry::{Registry, Throttle};
use serde_json::Value;

const SLEEPERS: &str = r#"
name: sleepers
services:
  - name: zz
    image: shoal.test/busybox:latest
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; echo up on $(hostname); while true; do sleep 1; done"]
    replicas: 3
"#;

/// Voters and leader as node `index` sees them.
fn roles(cluster: &Cluster, index: usize) -> Option<(BTreeSet<String>, Option<String>)> {
    let nodes = cluster.nodes(index)?;
    let voters = nodes
        .iter()
        .filter(|node| node["role"] == "voter")
        .filter_map(|node| node["name"].as_str().map(str::to_string))
        .collect();
    let leader = nodes
        .iter()
        .find(|node| node["leader"] == true)
        .and_then(|node| node["name"].as_str().map(str::to_string));
    Some((voters, leader))
}

fn wait_voters(cluster: &Cluster, index: usize, count: usize) -> BTreeSet<String> {
    cluster.wait_for(&format!("{count} voters and a leader"), || {
        let (voters, leader) = roles(cluster, index)?;
        (voters.len() == count && leader.is_some()).then_some(voters)
    })
}

#[test]
fn three_nodes_form_one_cluster_with_three_voters() {
    let Some(cluster) = Cluster::start_or_skip("three", &[&[], &[], &[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    for index in 0..3 {
        let nodes = cluster.nodes(index).expect("nodes");
        assert_eq!(nodes.len(), 3, "node {index} lists {nodes:?}");
        for node in &nodes {
            assert_eq!(node["status"], "alive", "{node}");
            assert!(
                node["cpus"].as_u64().unwrap_or(0) > 0,
                "facts travel by gossip: {node}"
            );
        }
    }
    // Each node holds its own subnet of the cluster CIDR, chosen through the log.
    let subnets: BTreeSet<String> = cluster
        .nodes(1)
        .expect("nodes")
        .iter()
        .filter_map(|node| node["subnet"].as_str().map(str::to_string))
        .collect();
    assert_eq!(subnets.len(), 3, "three different subnets: {subnets:?}");
    assert!(
        subnets
            .iter()
            .all(|s| inside(&cluster.cluster_cidr, s) && s.ends_with(".0/24")),
        "{subnets:?} of {}",
        cluster.cluster_cidr
    );
    // Any node answers any call: apply on one, see it on the others.
    cluster.apply_ok(2, SLEEPERS);
    for index in 0..3 {
        let tasks = cluster.tasks(index);
        assert_eq!(
            tasks.iter().filter(|t| t["state"] == "running").count(),
            3,
            "{tasks:?}"
        );
    }
    let nodes: BTreeSet<String> = cluster
        .tasks(0)
        .iter()
        .map(|t| t["node"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(nodes.len(), 3, "one replica per node: {nodes:?}");
    // Logs of tasks on other nodes come through the node asked.
    let logs = cluster.wait_for("every replica's output", || {
        let logs = cluster.shoal_ok(0, &["logs", "sleepers.zz"]);
        (0..3)
            .all(|slot| logs.contains(&format!("up on zz-{slot}")))
            .then_some(logs)
    });
    assert!(
        logs.contains("sleepers.zz.2."),
        "lines carry their task: {logs}"
    );
}

#[test]
fn five_nodes_have_five_voters_over_their_zones() {
    let zones: [&[&str]; 5] = [
        &["zone=a"],
        &["zone=b"],
        &["zone=c"],
        &["zone=a"],
        &["zone=b"],
    ];
    let Some(cluster) = Cluster::start_or_skip("five", &zones) else {
        return;
    };
    let voters = wait_voters(&cluster, 0, 5);
    // The voter count is a cluster setting: lowered, voters step down.
    let refused = cluster.shoal(1, &["cluster", "set", "--voters-max", "4"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("voters_max: must be 1, 3, 5 or 7"));
    cluster.shoal_ok(1, &["cluster", "set", "--voters-max", "3"]);
    wait_voters(&cluster, 2, 3);
    let set = cluster.shoal_ok(3, &["cluster", "set", "--voters-max", "5", "-o", "json"]);
    assert!(set.contains("\"voters_max\": 5"), "{set}");
    // Another node answers `cluster info` from its own replica, which
    // follows within moments.
    cluster.wait_for("node 5 to see voters_max 5", || {
        let info = cluster.shoal_json(4, &["cluster", "info"])?;
        (info["settings"]["voters_max"] == 5).then_some(())
    });
    let nodes = cluster.nodes(0).expect("nodes");
    let zones: BTreeSet<String> = nodes
        .iter()
        .filter(|node| voters.contains(node["name"].as_str().unwrap_or("")))
        .filter_map(|node| node["labels"]["zone"].as_str().map(str::to_string))
        .collect();
    assert_eq!(zones, BTreeSet::from(["a".into(), "b".into(), "c".into()]));
}

#[test]
fn four_nodes_keep_three_voters_spread_over_zones() {
    let zones: [&[&str]; 4] = [&["zone=a"], &["zone=a"], &["zone=b"], &["zone=c"]];
    let Some(cluster) = Cluster::start_or_skip("four", &zones) else {
        return;
    };
    let zones_of_voters = |nodes: &[Value]| -> BTreeSet<String> {
        nodes
            .iter()
            .filter(|node| node["role"] == "voter")
            .filter_map(|node| node["labels"]["zone"].as_str().map(str::to_string))
            .collect()
    };
    let nodes = cluster.wait_for("three voters, one in each zone", || {
        let nodes = cluster.nodes(0)?;
        let voters = nodes.iter().filter(|node| node["role"] == "voter").count();
        (voters == 3 && zones_of_voters(&nodes).len() == 3).then_some(nodes)
    });
    let learners = nodes
        .iter()
        .filter(|node| node["role"] == "learner")
        .count();
    assert_eq!(learners, 1, "{nodes:?}");
}

#[test]
fn a_killed_leader_is_replaced_and_writes_go_on() {
    let Some(mut cluster) = Cluster::start_or_skip("failover", &[&[], &[], &[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    let leader = cluster.leader(0).expect("a leader");
    let leader_index = cluster.index_of(&leader);
    let other = (leader_index + 1) % 3;
    cluster.kill(leader_index);
    let killed = Instant::now();
    let spec =
        "name: after\nservices: [{name: a, image: shoal.test/busybox:latest, replicas: 0}]\n";
    cluster.wait_for("a write after the leader died", || {
        cluster.apply(other, spec).status.success().then_some(())
    });
    eprintln!(
        "failover: a write succeeded {:?} after kill -9 of the leader",
        killed.elapsed()
    );
    let new_leader = cluster.leader(other).expect("a new leader");
    assert_ne!(new_leader, leader);
    let apps = cluster.shoal_ok((other + 1) % 3, &["apps"]);
    assert!(apps.contains("after"), "{apps}");
}

#[test]
fn a_dead_node_s_tasks_run_elsewhere_and_it_stops_them_when_back() {
    let Some(mut cluster) = Cluster::start_or_skip("moves", &[&[], &[], &[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    cluster.apply_ok(0, SLEEPERS);
    let leader = cluster.leader(0).expect("leader");
    // Kill a node that is not the leader, with its container running.
    let victim = (0..3)
        .find(|i| cluster.members[*i].name != leader)
        .expect("a follower");
    let victim_name = cluster.members[victim].name.clone();
    let watcher = (0..3).find(|i| *i != victim).expect("another node");
    cluster.kill(victim);
    let killed = Instant::now();
    cluster.wait_for("three replicas running on the live nodes", || {
        (cluster.running_replicas(watcher, Some(&victim_name)) == 3).then_some(())
    });
    eprintln!(
        "tasks moved: all replicas running elsewhere {:?} after kill -9 of a node",
        killed.elapsed()
    );
    let nodes = cluster.nodes(watcher).expect("nodes");
    let dead = nodes
        .iter()
        .find(|n| n["name"] == victim_name.as_str())
        .expect("victim listed");
    assert_eq!(dead["status"], "dead", "{dead}");
    // The victim's container kept running while its agent was gone.
    assert!(
        cluster.containerd_runs_a_task(victim),
        "promises are kept while cut off"
    );
    // Back, it stops what now runs elsewhere: three replicas in all.
    cluster.start(victim, &[]);
    cluster.wait_for("the returned node to stop its old container", || {
        (!cluster.containerd_runs_a_task(victim)).then_some(())
    });
    assert_eq!(cluster.running_replicas(victim, None), 3);
}

#[test]
fn a_whole_cluster_restarted_without_peers_comes_back_with_its_apps() {
    let Some(mut cluster) = Cluster::start_or_skip("restart", &[&[], &[], &[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    cluster.apply_ok(1, SLEEPERS);
    for index in 0..3 {
        cluster.kill(index);
    }
    for index in 0..3 {
        cluster.start(index, &[]);
    }
    wait_voters(&cluster, 2, 3);
    cluster.wait_for("the app to run again", || {
        (cluster.running_replicas(2, None) == 3).then_some(())
    });
    let apps = cluster.shoal_ok(0, &["apps"]);
    assert!(apps.contains("sleepers"), "{apps}");
}

#[test]
fn no_acknowledged_write_is_lost_across_repeated_kills() {
    let Some(mut cluster) = Cluster::start_or_skip("history", &[&[], &[], &[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    // A client writes apps one after another (through any live node) while
    // nodes are killed and restarted; every write it saw acknowledged must
    // be in the final state of every node.
    let mut acknowledged: BTreeMap<String, usize> = BTreeMap::new();
    let mut attempted = 0;
    let mut rounds = 0;
    let mut seed: u64 = 0x5eed_u64 ^ u64::from(std::process::id());
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    while rounds < 4 {
        let victim = (next() % 3) as usize;
        cluster.kill(victim);
        for _ in 0..8 {
            attempted += 1;
            let name = format!("w{attempted}");
            let via = (victim + 1 + (next() % 2) as usize) % 3;
            let spec = format!("name: {name}\nservices: [{{name: a, image: shoal.test/busybox:latest, replicas: 0}}]\n");
            if cluster.apply(via, &spec).status.success() {
                acknowledged.insert(name, via);
            }
        }
        cluster.start(victim, &[]);
        wait_voters(&cluster, victim, 3);
        rounds += 1;
    }
    eprintln!(
        "history: {} of {attempted} writes acknowledged across {rounds} kills",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= attempted / 2,
        "most writes should succeed with a majority up"
    );
    for index in 0..3 {
        let apps: Vec<Value> = match cluster.shoal_json(index, &["apps"]) {
            Some(Value::Array(apps)) => apps,
            other => panic!("apps on node {index}: {other:?}"),
        };
        let names: BTreeSet<&str> = apps.iter().filter_map(|app| app["name"].as_str()).collect();
        for name in acknowledged.keys() {
            assert!(
                names.contains(name.as_str()),
                "acknowledged write {name} missing on node {index}"
            );
        }
    }
}

#[test]
fn a_node_that_leaves_hands_its_work_over() {
    let Some(cluster) = Cluster::start_or_skip("leave", &[&[], &[], &[], &[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    cluster.apply_ok(0, SLEEPERS);
    let leaver = 3;
    let name = cluster.members[leaver].name.clone();
    cluster.shoal_ok(leaver, &["node", "leave"]);
    cluster.wait_for("the node to be listed as left", || {
        let nodes = cluster.nodes(0)?;
        nodes
            .iter()
            .any(|n| n["name"] == name.as_str() && n["status"] == "left")
            .then_some(())
    });
    cluster.wait_for("three replicas on the others", || {
        (cluster.running_replicas(0, Some(&name)) == 3).then_some(())
    });
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10)
        && cluster.shoal(leaver, &["version"]).status.success()
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !cluster.shoal(leaver, &["nodes"]).status.success(),
        "the left node stopped"
    );
    // It took its bridge and masquerade chain with it.
    let bridge = cluster.members[leaver].bridge.clone();
    let link = cluster.on_node(leaver, "ip", &["link", "show", "dev", &bridge]);
    assert!(!link.status.success(), "bridge {bridge} is gone");
    let nat = text(&cluster.on_node(leaver, "iptables", &["-t", "nat", "-S"]));
    assert!(!nat.contains(&format!("SHOAL-{bridge}")), "{nat}");
}

#[test]
fn a_partitioned_minority_refuses_writes_and_the_majority_goes_on() {
    let Some(cluster) = Cluster::start_in_netns_or_skip("partition", &[&[], &[], &[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    cluster.apply_ok(0, SLEEPERS);
    let netns = cluster.netns.as_ref().expect("netns cluster");
    // Cut off the leader (it holds a replica, as every node does).
    let minority = cluster.index_of(&cluster.leader(0).expect("a leader"));
    let majority = (minority + 1) % 3;
    let minority_name = cluster.members[minority].name.clone();
    let others: Vec<usize> = (0..3).filter(|index| *index != minority).collect();
    let old_tasks: Vec<String> = cluster
        .tasks(minority)
        .iter()
        .filter(|t| t["node"] == minority_name.as_str())
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    assert!(!old_tasks.is_empty(), "the leader holds a replica");
    netns.cut(minority, &others);
    let cut = Instant::now();

    // The majority goes on: it writes, declares the node dead and places
    // its work elsewhere.
    let spec =
        "name: during\nservices: [{name: a, image: shoal.test/busybox:latest, replicas: 0}]\n";
    cluster.wait_for("a write on the majority", || {
        cluster.apply(majority, spec).status.success().then_some(())
    });
    cluster.wait_for("the replicas to run on the majority", || {
        (cluster.running_replicas(majority, Some(&minority_name)) == 3).then_some(())
    });
    eprintln!(
        "partition: majority runs all replicas {:?} after the cut",
        cut.elapsed()
    );

    // The minority refuses writes, never leads, and keeps its container.
    let refused = cluster.apply(
        minority,
        "name: lost\nservices: [{name: a, image: shoal.test/busybox:latest, replicas: 0}]\n",
    );
    assert!(!refused.status.success(), "the minority accepted a write");
    // It still lists what it sees, but serves no linearizable read; the
    // majority has a leader of its own.
    let nodes = cluster
        .nodes(minority)
        .expect("a cut-off node lists what it sees");
    assert!(nodes.iter().any(|n| n["status"] != "alive"), "{nodes:?}");
    assert!(
        !cluster.shoal(minority, &["apps"]).status.success(),
        "a read on the minority"
    );
    let new_leader = cluster.leader(majority).expect("a leader in the majority");
    assert_ne!(new_leader, minority_name);
    assert!(
        cluster.containerd_runs_a_task(minority),
        "the cut-off node keeps its promise"
    );

    // Healed, every node holds the same state and the old replica stops.
    netns.heal();
    cluster.wait_for("the same apps everywhere", || {
        let lists: Vec<Vec<String>> = (0..3)
            .map(|index| match cluster.shoal_json(index, &["apps"]) {
                Some(Value::Array(apps)) => apps
                    .iter()
                    .filter_map(|a| a["name"].as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        (lists[0].contains(&"during".to_string()) && lists.iter().all(|list| list == &lists[0]))
            .then_some(())
    });
    // Only the old containers: once healed, the node may rightly be given
    // new work (gossip verdicts can flap as the partition heals).
    cluster.wait_for("the rejoined node to stop its old container", || {
        (!old_tasks
            .iter()
            .any(|task| cluster.containerd_runs(minority, task)))
        .then_some(())
    });
    let apps = cluster.shoal_ok(minority, &["apps"]);
    assert!(!apps.contains("lost"), "{apps}");
}

#[test]
fn a_dead_node_is_forgotten_after_the_stated_time() {
    let Some(mut cluster) = Cluster::start_or_skip("forget", &[&[], &[], &[], &[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    // Restart every agent with a short forget time (the default is 5 min).
    for index in 0..4 {
        cluster.members[index].extra_args = vec!["--forget-dead-after".into(), "3s".into()];
        cluster.kill(index);
    }
    for index in 0..4 {
        cluster.start(index, &[]);
    }
    wait_voters(&cluster, 0, 3);
    let victim = (0..4)
        .find(|index| {
            cluster.nodes(0).is_some_and(|nodes| {
                nodes.iter().any(|n| {
                    n["name"] == cluster.members[*index].name.as_str() && n["role"] == "learner"
                })
            })
        })
        .expect("a learner");
    let name = cluster.members[victim].name.clone();
    cluster.kill(victim);
    let killed = std::time::Instant::now();
    cluster.wait_for("the dead node to be listed as dead", || {
        let nodes = cluster.nodes((victim + 1) % 4)?;
        nodes
            .iter()
            .any(|n| n["name"] == name.as_str() && n["status"] == "dead")
            .then_some(())
    });
    cluster.wait_for("the dead node to be forgotten", || {
        let nodes = cluster.nodes((victim + 1) % 4)?;
        (nodes.len() == 3 && nodes.iter().all(|n| n["name"] != name.as_str())).then_some(())
    });
    assert!(
        killed.elapsed() >= Duration::from_secs(3),
        "forgotten no sooner than stated"
    );
    eprintln!("forgotten {:?} after kill -9", killed.elapsed());
}

/// Desired-running tasks of `service` per node, as node `index` sees them;
/// with `running_only`, only those whose process runs.
fn per_node(
    cluster: &Cluster,
    index: usize,
    service: &str,
    running_only: bool,
) -> BTreeMap<String, usize> {
    let mut per_node = BTreeMap::new();
    for task in cluster.tasks(index) {
        let counted = task["service"] == service
            && task["desired"] == "running"
            && (!running_only || task["state"] == "running");
        if counted {
            *per_node
                .entry(task["node"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    per_node
}

fn placed(cluster: &Cluster, index: usize, service: &str) -> BTreeMap<String, usize> {
    per_node(cluster, index, service, false)
}

fn running_on(cluster: &Cluster, index: usize, service: &str) -> BTreeMap<String, usize> {
    per_node(cluster, index, service, true)
}

const PLACED: &str = r#"
name: placed
services:
  - name: pinned
    image: shoal.test/busybox:latest
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    replicas: 2
    resources: {cpu: 100m, memory: 16Mi}
    placement: {constraints: ["zone == b"]}
  - name: agent
    image: shoal.test/busybox:latest
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    kind: global
    tolerations: ["maint"]
"#;

const FREE: &str = r#"
name: free
services:
  - name: web
    image: shoal.test/busybox:latest
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    replicas: 3
"#;

/// Constraints, taints, drain and a global service on real agents and
/// containerd: work lands only where the rules allow, and moves when they
/// change.
#[test]
fn placement_rules_hold_on_a_real_cluster() {
    let Some(mut cluster) =
        Cluster::start_or_skip("rules", &[&["zone=a"], &["zone=b"], &["zone=b"]])
    else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    let (a, b1, b2) = ("rules-1", "rules-2", "rules-3");

    // `shoal plan` says where the tasks would go and changes nothing.
    let spec_path = cluster.scratch.path().join("placed.yaml");
    std::fs::write(&spec_path, PLACED).expect("write spec");
    let plan = cluster
        .shoal_json(1, &["plan", "-f", spec_path.to_str().expect("utf-8")])
        .expect("plan");
    let planned: Vec<&str> = plan["place"]
        .as_array()
        .expect("place")
        .iter()
        .filter(|task| task["service"] == "pinned")
        .filter_map(|task| task["node"].as_str())
        .collect();
    assert_eq!(planned.len(), 2, "{plan}");
    assert!(planned.iter().all(|node| *node != a), "{plan}");
    assert!(cluster.tasks(0).is_empty(), "plan changed nothing");

    // A constraint places work only on matching nodes; the global service
    // runs once on every node.
    cluster.apply_ok(0, PLACED);
    let pinned = placed(&cluster, 0, "pinned");
    assert_eq!(pinned.values().sum::<usize>(), 2, "{pinned:?}");
    assert!(!pinned.contains_key(a), "zone == b only: {pinned:?}");
    let one_each: BTreeMap<String, usize> =
        [a, b1, b2].iter().map(|n| (n.to_string(), 1)).collect();
    cluster.wait_for("the global service on every node", || {
        (running_on(&cluster, 0, "agent") == one_each).then_some(())
    });

    // A taint keeps new work off its node.
    cluster.shoal_ok(0, &["node", "taint", b2, "maint=yes:NoSchedule"]);
    cluster.apply_ok(1, FREE);
    let web = placed(&cluster, 0, "web");
    assert_eq!(web.values().sum::<usize>(), 3, "{web:?}");
    assert!(!web.contains_key(b2), "tainted node got work: {web:?}");
    let nodes = cluster.nodes(0).expect("nodes");
    let tainted = nodes.iter().find(|n| n["name"] == b2).expect("node listed");
    assert_eq!(tainted["taints"][0], "maint=yes:NoSchedule", "{tainted}");
    // A bad taint is refused with the fix, and changes nothing.
    let bad = cluster.shoal(0, &["node", "taint", b2, "maint=yes:Sometimes"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("NoSchedule, PreferNoSchedule or NoExecute"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Drain empties a node: its tasks stop (containerd runs none there) and
    // what cannot go elsewhere waits with the reason.
    cluster.shoal_ok(2, &["node", "drain", b1]);
    let drained = cluster.index_of(b1);
    cluster.wait_for("the drained node to run nothing", || {
        let tasks = cluster.tasks(0);
        let empty = !tasks
            .iter()
            .any(|t| t["node"] == b1 && (t["desired"] == "running" || t["state"] == "running"));
        (empty && !cluster.containerd_runs_a_task(drained)).then_some(())
    });
    let ps = cluster.shoal_ok(0, &["ps", "placed"]);
    assert!(
        ps.contains("not placed")
            && ps.contains("draining")
            && ps.contains("tainted `maint=yes:NoSchedule`"),
        "ps shows why pinned waits:\n{ps}"
    );
    let web = cluster.wait_for("web back to 3 replicas off the drained node", || {
        let web = running_on(&cluster, 0, "web");
        (web.values().sum::<usize>() == 3).then_some(web)
    });
    assert!(!web.contains_key(b1) && !web.contains_key(b2), "{web:?}");

    // A global service follows a node that joins.
    let joined = cluster.join(&["zone=c"]);
    let name = cluster.members[joined].name.clone();
    cluster.wait_for("the global service on the new node", || {
        running_on(&cluster, 0, "agent")
            .get(&name)
            .is_some_and(|count| *count == 1)
            .then_some(())
    });

    // Undrain: the constrained work comes back.
    cluster.shoal_ok(0, &["node", "undrain", b1]);
    cluster.wait_for("pinned running again on the undrained node", || {
        (running_on(&cluster, 0, "pinned").get(b1) == Some(&2)).then_some(())
    });

    // NoExecute moves running work that does not tolerate it off the node.
    cluster.shoal_ok(1, &["node", "taint", a, "gone=yes:NoExecute"]);
    let evicted = cluster.index_of(a);
    cluster.wait_for("the NoExecute node to run nothing", || {
        let tasks = cluster.tasks(0);
        let empty = !tasks
            .iter()
            .any(|t| t["node"] == a && (t["desired"] == "running" || t["state"] == "running"));
        (empty && !cluster.containerd_runs_a_task(evicted)).then_some(())
    });
    cluster.wait_for("web back to 3 replicas elsewhere", || {
        (running_on(&cluster, 0, "web").values().sum::<usize>() == 3).then_some(())
    });
}

/// The networking test's app: `web` (busybox httpd with a named port,
/// published on the node's port 8080 when `publish`) on node 3 or, once
/// node 3 is taken, node 2; a client on node 1.
fn net_app(web_replicas: u32, publish: bool) -> String {
    let host_port = if publish { ", host_port: 8080" } else { "" };
    format!(
        r#"
name: demo
services:
  - name: web
    image: shoal.test/busybox:latest
    command: ["/bin/sh", "-c", "echo hello from $(hostname) > /tmp/index.html; exec httpd -f -p 80 -h /tmp"]
    replicas: {web_replicas}
    stop_grace_period: 1s
    ports: [{{name: http, container_port: 80{host_port}}}]
    placement:
      constraints: ["node.name in (net-2, net-3)"]
      affinities: [{{expr: "node.name == net-3", weight: 100}}]
  - name: client
    image: shoal.test/busybox:latest
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    placement: {{constraints: ["node.name == net-1"]}}
"#
    )
}

/// Whether the CIDR `subnet` lies inside the CIDR `cluster`.
fn inside(cluster: &str, subnet: &str) -> bool {
    let parse = |cidr: &str| -> Option<(u32, u32)> {
        let (address, prefix) = cidr.split_once('/')?;
        let address: std::net::Ipv4Addr = address.parse().ok()?;
        Some((u32::from(address), prefix.parse().ok()?))
    };
    match (parse(cluster), parse(subnet)) {
        (Some((network, prefix)), Some((address, length))) => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            length >= prefix && address & mask == network & mask
        }
        _ => false,
    }
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Addresses of the running tasks of a service, as node `index` reports them.
fn addresses(cluster: &Cluster, index: usize, service: &str) -> BTreeSet<String> {
    cluster
        .tasks(index)
        .iter()
        .filter(|t| t["service"] == service && t["state"] == "running")
        .filter(|t| t["desired"] == "running")
        .filter_map(|t| t["address"].as_str().map(str::to_string))
        .collect()
}

/// What `dig +short` answers on node `index` from its own DNS server.
fn dig(cluster: &Cluster, index: usize, server: &str, args: &[&str]) -> BTreeSet<String> {
    let mut all = vec!["+short", "+time=2", "+tries=1"];
    let at = format!("@{server}");
    all.push(&at);
    all.extend(args);
    let output = cluster.on_node(index, "dig", &all);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn gateway(cluster: &Cluster, index: usize, name: &str) -> String {
    let nodes = cluster.nodes(index).expect("nodes");
    let subnet = nodes
        .iter()
        .find(|node| node["name"] == name)
        .and_then(|node| node["subnet"].as_str())
        .expect("the node has a subnet")
        .to_string();
    let network = subnet.split('/').next().expect("address");
    let (head, last) = network.rsplit_once('.').expect("IPv4");
    format!("{head}.{}", last.parse::<u8>().expect("octet") + 1)
}

/// Three nodes, each in a network namespace of its own: containers get
/// addresses from their node's subnet, reach each other across nodes by
/// name, the DNS follows replicas, and an agent killed while its work is
/// removed releases every address and rule when it comes back.
#[test]
fn containers_reach_each_other_across_nodes_by_name() {
    let Some(mut cluster) = Cluster::start_in_netns_or_skip("net", &[&[], &[], &[]]) else {
        return;
    };
    // Every node holds a subnet of its own.
    let subnets: BTreeSet<String> = cluster
        .wait_for("every node to hold a subnet", || {
            let nodes = cluster.nodes(0)?;
            let subnets: Vec<String> = nodes
                .iter()
                .filter_map(|node| node["subnet"].as_str().map(str::to_string))
                .collect();
            (subnets.len() == 3).then_some(subnets)
        })
        .into_iter()
        .collect();
    assert_eq!(subnets.len(), 3, "{subnets:?}");

    cluster.apply_ok(0, &net_app(1, true));
    let web = cluster.wait_for("web to run with an address", || {
        let web = addresses(&cluster, 0, "web");
        (web.len() == 1).then_some(web)
    });
    let web_address = web.iter().next().expect("one").clone();
    let client = cluster
        .tasks(0)
        .iter()
        .find(|t| t["service"] == "client" && t["state"] == "running")
        .and_then(|t| t["id"].as_str().map(str::to_string))
        .expect("client runs");

    // From a container on node 1: the name, then a page from node 3.
    let looked_up = cluster.wait_for("nslookup web.demo.shoal in a container", || {
        let output = cluster.exec(0, &client, &["nslookup", "web.demo.shoal"]);
        let answer = text(&output);
        answer.contains(&web_address).then_some(answer)
    });
    assert!(looked_up.contains("Name:"), "{looked_up}");
    let page = cluster.wait_for("wget of web from node 1", || {
        let output = cluster.exec(
            0,
            &client,
            &["timeout", "10", "wget", "-qO-", "http://web.demo.shoal/"],
        );
        output.status.success().then(|| text(&output))
    });
    assert_eq!(page.trim(), "hello from web-0");
    // The short name works through the search path, as does the node's DNS
    // for names outside the zone (answered, not timed out).
    let short = cluster.exec(
        0,
        &client,
        &["timeout", "10", "wget", "-qO-", "http://web/"],
    );
    assert_eq!(text(&short).trim(), "hello from web-0");

    // Inside the web container its loopback is up (the loopback plugin).
    let web_task = cluster
        .tasks(0)
        .iter()
        .find(|t| t["service"] == "web" && t["state"] == "running")
        .and_then(|t| t["id"].as_str().map(str::to_string))
        .expect("web runs");
    let local = cluster.exec(
        2,
        &web_task,
        &["timeout", "10", "wget", "-qO-", "http://127.0.0.1/"],
    );
    assert_eq!(text(&local).trim(), "hello from web-0");

    // dig on node 2 (no task of the app there) from its own server.
    let server = gateway(&cluster, 1, "net-2");
    assert_eq!(dig(&cluster, 1, &server, &["web.demo.shoal"]), web);
    let srv = dig(&cluster, 1, &server, &["_http._tcp.web.demo.shoal", "SRV"]);
    assert!(
        srv.len() == 1
            && srv
                .iter()
                .all(|r| r.starts_with("0 1 80 ") && r.ends_with(".web.demo.shoal.")),
        "{srv:?}"
    );
    // The published port, from node 2 with curl to node 3's address.
    let node3 = cluster.members[2].ip.clone();
    let published = cluster.on_node(
        1,
        "curl",
        &["-sS", "--max-time", "5", &format!("http://{node3}:8080/")],
    );
    assert_eq!(text(&published).trim(), "hello from web-0");
    let listed = cluster.shoal_ok(2, &["dns", "list"]);
    assert!(
        listed.contains("web.demo.shoal") && listed.contains(&web_address),
        "{listed}"
    );

    // A second replica cannot publish 8080 on node 3 too, so it runs on
    // node 2; it gets a record, and stopping it takes the record away.
    cluster.apply_ok(0, &net_app(2, true));
    let two = cluster.wait_for("two web replicas with addresses", || {
        let web = addresses(&cluster, 0, "web");
        (web.len() == 2).then_some(web)
    });
    cluster.wait_for("both records on node 2", || {
        (dig(&cluster, 1, &server, &["web.demo.shoal"]) == two).then_some(())
    });
    let on_nodes: BTreeSet<String> = cluster
        .tasks(0)
        .iter()
        .filter(|t| t["service"] == "web")
        .filter_map(|t| t["node"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        on_nodes.len(),
        2,
        "one publisher of 8080 per node: {on_nodes:?}"
    );
    let scaled = Instant::now();
    cluster.apply_ok(0, &net_app(1, true));
    let left = cluster.wait_for("the stopped replica's record to go", || {
        let answer = dig(&cluster, 1, &server, &["web.demo.shoal"]);
        (answer.len() == 1).then_some(answer)
    });
    eprintln!(
        "record of a stopped replica gone from node 2's DNS after {:?}",
        scaled.elapsed()
    );
    assert!(left.is_subset(&two), "{left:?} of {two:?}");

    // The zone is a cluster setting: every node's server follows it; a bad
    // one is refused with the field named and changes nothing.
    let refused = cluster.shoal(0, &["cluster", "set", "--dns-zone", "Bad_Zone"]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("dns_zone:"), "{}", text(&refused));
    cluster.shoal_ok(0, &["cluster", "set", "--dns-zone", "cluster.internal"]);
    cluster.wait_for("web.demo.cluster.internal on node 2", || {
        (dig(&cluster, 1, &server, &["web.demo.cluster.internal"]) == left).then_some(())
    });
    // The old name is outside the zone now (forwarded upstream, if anywhere).
    let old = dig(&cluster, 1, &server, &["web.demo.shoal"]);
    assert!(old.iter().all(|line| !left.contains(line)), "{old:?}");

    // Node 3's agent dies; the app is removed meanwhile. Back, the agent
    // stops the containers and releases their addresses and namespaces,
    // and adds no second rule or route.
    let data_dir = cluster.members[2].data_dir.clone();
    let leases = data_dir.join("net/cni/ipam/shoal");
    let lease_count = || {
        std::fs::read_dir(&leases)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .parse::<std::net::Ipv4Addr>()
                            .is_ok()
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(lease_count(), 1, "one replica holds one address");
    cluster.kill(2);
    cluster.shoal_ok(0, &["rm", "demo", "--detach"]);
    cluster.wait_for("the app's tasks on the live nodes to be gone", || {
        let tasks = cluster.tasks(0);
        tasks.iter().all(|t| t["node"] == "net-3").then_some(())
    });
    assert!(
        cluster.containerd_runs_a_task(2),
        "a dead agent stops nothing"
    );
    let peer = cluster.members[0].ip.clone();
    cluster.start(2, &[peer]);
    cluster.wait_for(
        "node 3 to stop its containers and free their addresses",
        || {
            let tasks_dir = std::fs::read_dir(data_dir.join("net/tasks"))
                .map(|entries| entries.count())
                .unwrap_or(0);
            (!cluster.containerd_runs_a_task(2) && lease_count() == 0 && tasks_dir == 0)
                .then_some(())
        },
    );
    let results = std::fs::read_dir(data_dir.join("net/cni/results"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(results, 0, "no CNI result is kept for a task that is gone");
    cluster.wait_for("the app's tasks to be gone", || {
        cluster.tasks(0).is_empty().then_some(())
    });
    let prefix = format!("{}-demo.", cluster.members[2].bridge);
    let netns = std::fs::read_dir("/var/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(netns, 0, "no task namespace is left");
    // Rules and routes converge to one of each, not one more per start.
    let bridge = cluster.members[2].bridge.clone();
    let chain = format!("SHOAL-{bridge}");
    let nat = text(&cluster.on_node(2, "iptables", &["-t", "nat", "-S"]));
    assert!(
        !nat.contains("id: \"demo."),
        "port mappings are gone: {nat}"
    );
    cluster.wait_for("node 3's routes and masquerade rule", || {
        let rules = text(&cluster.on_node(2, "iptables", &["-t", "nat", "-S"]));
        let jumps = rules
            .lines()
            .filter(|l| *l == format!("-A POSTROUTING -j {chain}"))
            .count();
        let masquerades = rules
            .lines()
            .filter(|l| l.starts_with(&format!("-A {chain} ")) && l.contains("MASQUERADE"))
            .count();
        let routes = text(&cluster.on_node(2, "ip", &["-4", "route", "show", "proto", "211"]));
        (jumps == 1 && masquerades == 1 && routes.lines().count() == 2).then_some(())
    });
}

/// Two nodes that join at the same moment get different subnets (each
/// subnet is handed out by one write through the log).
#[test]
fn nodes_joining_together_get_different_subnets() {
    let Some(mut cluster) = Cluster::start_or_skip("joins", &[&[]]) else {
        return;
    };
    cluster.join_together(2);
    let subnets = cluster.wait_for("three nodes with subnets", || {
        let nodes = cluster.nodes(0)?;
        let subnets: Vec<String> = nodes
            .iter()
            .filter_map(|node| node["subnet"].as_str().map(str::to_string))
            .collect();
        (subnets.len() == 3).then_some(subnets)
    });
    let distinct: BTreeSet<&String> = subnets.iter().collect();
    assert_eq!(distinct.len(), 3, "{subnets:?}");
    assert!(
        subnets.iter().all(|s| inside(&cluster.cluster_cidr, s)),
        "{subnets:?} inside {}",
        cluster.cluster_cidr
    );
}

/// Polls every 5 ms (each `dig` takes a few ms itself), for at most 30 s.
fn poll_fast<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Figures, not a check: how long after a task starts its name answers on
/// another node's DNS, and how long after a scale-down its record is gone
/// there. `SHOAL_E2E=1 cargo test -p shoal --test cluster dns_record_latency -- --ignored --nocapture`
#[test]
#[ignore = "timing report, run by hand (bench/README.md)"]
fn dns_record_latency() {
    let Some(cluster) = Cluster::start_in_netns_or_skip("net", &[&[], &[], &[]]) else {
        return;
    };
    let server = gateway(&cluster, 0, "net-1");
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let rounds = 10;
    let (mut appear, mut vanish) = (Vec::new(), Vec::new());
    let apply_detached = |replicas: u32| {
        let path = cluster
            .scratch
            .path()
            .join(format!("latency-{replicas}.yaml"));
        std::fs::write(&path, net_app(replicas, false)).expect("write spec");
        cluster.shoal_ok(
            0,
            &["apply", "-f", path.to_str().expect("utf-8"), "--detach"],
        );
    };
    for round in 1..=rounds {
        let before = dig(&cluster, 0, &server, &["web.demo.shoal"]);
        apply_detached(round);
        // Node 1's DNS is asked from the moment the apply is accepted.
        let (address, seen) = poll_fast("a new record on node 1", || {
            let answer = dig(&cluster, 0, &server, &["web.demo.shoal"]);
            let seen = now_ms();
            answer
                .into_iter()
                .find(|address| !before.contains(address))
                .map(|address| (address, seen))
        });
        // When the replica started, as its node reported it.
        let started = cluster.wait_for("the new replica's start time", || {
            cluster.tasks(0).iter().find_map(|t| {
                (t["address"].as_str() == Some(address.as_str()))
                    .then(|| t["started_at_ms"].as_u64())
                    .flatten()
            })
        });
        appear.push(seen.saturating_sub(started));
    }
    for round in (0..rounds).rev() {
        let before = dig(&cluster, 0, &server, &["web.demo.shoal"]);
        let asked = now_ms();
        apply_detached(round);
        poll_fast("a record to go from node 1", || {
            (dig(&cluster, 0, &server, &["web.demo.shoal"]).len() < before.len()).then_some(())
        });
        vanish.push(now_ms().saturating_sub(asked));
    }
    let summary = |mut values: Vec<u64>| {
        values.sort_unstable();
        format!(
            "median {} ms, max {} ms over {}",
            values[values.len() / 2],
            values[values.len() - 1],
            values.len()
        )
    };
    println!(
        "task running on node 3 → its A record answered by node 1's DNS: {}",
        summary(appear)
    );
    println!(
        "scale-down accepted → the stopped replica's record gone from node 1's DNS: {}",
        summary(vanish)
    );
}

/// Gossip is sealed from a new cluster's first datagram. A process that
/// knows the cluster id (it is in the CA's subject, which anyone may fetch)
/// and speaks plaintext SWIM to every node, under a new name and under a
/// node's own, is neither heard nor admitted: no node lists it, no learner
/// is added, no node's facts or status change; each node counts what it
/// dropped. A process that holds the keyring too (taken here from a node's
/// data dir, as any node holds it) and gossips under a node's name, with
/// newer facts signed by a key of its own, changes no node's facts, and
/// when it stops no node is found dead: every node records its facts key
/// and takes its facts only when signed by it. The keyring goes only to
/// node certificates, from a node that holds the data key; a worker that
/// lost its copy fetches it again. A removed worker's key is retired at
/// once, and it leaves the consensus.
#[test]
fn gossip_is_sealed_and_a_plaintext_member_is_not_heard() {
    use shoal_cluster::membership::{
        FactsSigner, GossipKeyring, GossipSealing, Membership, MembershipConfig, NodeFacts,
    };

    let Some(mut cluster) = Cluster::start_or_skip("sealed", &[&["zone=a"], &["zone=b"], &[]])
    else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    let infos: Vec<Value> = (0..3)
        .map(|index| {
            cluster.wait_for("gossip sealed and proven on every node", || {
                let info = cluster.shoal_json(index, &["cluster", "info"])?;
                (info["gossip"]["mode"] == "sealed" && info["gossip"]["identities"] == "proven")
                    .then_some(info)
            })
        })
        .collect();
    for info in &infos {
        let gossip = &info["gossip"];
        assert_eq!(info["log_version"], shoal_state::LOG_VERSION, "{info}");
        assert!(gossip["keyring_generation"].as_u64() >= Some(1), "{info}");
        assert_eq!(
            gossip["key_ids"].as_array().map(Vec::len),
            Some(1),
            "{info}"
        );
        // Nodes that form or join a cluster seal from their first datagram.
        assert_eq!(gossip["sealed_sent"], gossip["datagrams_sent"], "{info}");
        assert!(gossip["sealed_received"].as_u64() > Some(0), "{info}");
    }
    let before = cluster.nodes(0).expect("nodes");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster_id = infos[0]["cluster_id"].as_str().expect("cluster id");
    let gossip_addrs: Vec<std::net::SocketAddr> = infos
        .iter()
        .filter_map(|info| info["gossip_addr"].as_str()?.parse().ok())
        .collect();
    assert_eq!(gossip_addrs.len(), 3, "{infos:?}");
    let victim = cluster.members[1].name.clone();
    // What an intruder gossips: facts made up under `name`, and a member
    // of its own on a free port.
    let intruder_config = |name: &str, raft_id: u64| {
        let facts = NodeFacts {
            name: name.into(),
            api_addr: "127.0.0.1:1".into(),
            raft_id,
            os: "linux".into(),
            arch: "x86_64".into(),
            cpus: 512,
            memory_total_bytes: 1 << 40,
            memory_used_bytes: 0,
            labels: BTreeMap::from([("zone".to_string(), "forged".to_string())]),
            started_at_ms: u64::MAX / 2,
            release: "9.9.9".into(),
            log_version: 1,
            gossip_keys: 0,
            ca_generation: 0,
        };
        let bind: std::net::SocketAddr = format!("127.0.0.1:{}", harness::free_port())
            .parse()
            .expect("address");
        MembershipConfig::new(
            name,
            bind,
            cluster_id,
            facts,
            cluster.scratch.path().join(format!("{name}.peers.json")),
        )
    };
    let intruders: Vec<Membership> = [("intruder", 4_242), (victim.as_str(), 1)]
        .into_iter()
        .map(|(name, raft_id)| {
            let config = intruder_config(name, raft_id);
            runtime
                .block_on(Membership::start(config, gossip_addrs.clone()))
                .expect("the plaintext member starts")
        })
        .collect();
    cluster.wait_for("every node to drop the plaintext datagrams", || {
        (0..3)
            .all(|index| {
                cluster
                    .shoal_json(index, &["cluster", "info"])
                    .and_then(|info| info["gossip"]["dropped"]["unsealed"].as_u64())
                    > Some(0)
            })
            .then_some(())
    });
    // Several probe rounds and leader duty passes.
    std::thread::sleep(Duration::from_secs(5));
    for intruder in &intruders {
        let heard: Vec<String> = intruder
            .members()
            .into_iter()
            .map(|m| m.facts.name)
            .collect();
        assert_eq!(
            heard.len(),
            1,
            "a node answered the plaintext member: {heard:?}"
        );
    }
    for index in 0..3 {
        let nodes = cluster.nodes(index).expect("nodes");
        assert_eq!(nodes.len(), 3, "{nodes:?}");
        for (node, earlier) in nodes.iter().zip(&before) {
            assert_eq!(node["name"], earlier["name"], "{nodes:?}");
            assert_eq!(node["status"], "alive", "{node}");
            assert_eq!(node["cpus"], earlier["cpus"], "facts taken over: {node}");
            assert_eq!(
                node["labels"], earlier["labels"],
                "facts taken over: {node}"
            );
        }
        let info = cluster
            .shoal_json(index, &["cluster", "info"])
            .expect("info");
        assert_eq!(info["learners"], serde_json::json!([]), "{info}");
        assert_eq!(info["log_version"], shoal_state::LOG_VERSION, "{info}");
    }
    let text = cluster.shoal_ok(0, &["cluster", "info"]);
    assert!(text.contains("Gossip:      sealed"), "{text}");
    assert!(text.contains("unsealed "), "{text}");
    runtime.block_on(async {
        for intruder in &intruders {
            intruder.shutdown().await;
        }
    });

    // Every node records its facts key and checks the others' facts.
    for index in 0..3 {
        cluster.wait_for("every node to know every facts key", || {
            let info = cluster.shoal_json(index, &["cluster", "info"])?;
            (info["gossip"]["facts_keys"] == 3).then_some(())
        });
    }
    // A keyring holder gossips as node 1 at node 1's own gossip address,
    // newer (it starts later), proving that identity and signing its facts
    // with a key of its own: were it taken, node 1 would be replaced by an
    // identity it does not answer for.
    let held: Value = serde_json::from_slice(
        &std::fs::read(cluster.members[2].data_dir.join("pki/gossip.json")).expect("ring file"),
    )
    .expect("ring json");
    let ring: GossipKeyring = serde_json::from_value(held["keyring"].clone()).expect("ring");
    let pkcs8 = FactsSigner::generate_pkcs8().expect("key");
    let impostor = {
        let mut config = intruder_config(&victim, 1);
        config.advertise = gossip_addrs[1];
        config.sealing = GossipSealing::proven(ring);
        config.facts_signer = Some(std::sync::Arc::new(
            FactsSigner::from_pkcs8(&pkcs8).expect("key"),
        ));
        runtime
            .block_on(Membership::start(config, gossip_addrs.clone()))
            .expect("the impostor starts")
    };
    // It holds the ring, so every node opens what it sends; and drops it,
    // because node 1's key did not prove the identity it is sent under.
    cluster.wait_for("every node to refuse the impostor's identity", || {
        (0..3)
            .all(|index| {
                cluster
                    .shoal_json(index, &["cluster", "info"])
                    .and_then(|info| info["gossip"]["dropped"]["identities_unproven"].as_u64())
                    > Some(0)
            })
            .then_some(())
    });
    // Several probe rounds, facts broadcasts and leader duty passes.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(impostor.members().len(), 1, "a node answered the impostor");
    let still = |cluster: &Cluster| {
        for index in 0..3 {
            let nodes = cluster.nodes(index).expect("nodes");
            let node = nodes
                .iter()
                .find(|node| node["name"] == victim.as_str())
                .expect("victim listed");
            assert_eq!(node["status"], "alive", "{node}");
            assert_eq!(node["release"], env!("CARGO_PKG_VERSION"), "{node}");
            assert_eq!(node["log_version"], shoal_state::LOG_VERSION, "{node}");
            let info = cluster
                .shoal_json(index, &["cluster", "info"])
                .expect("info");
            assert_eq!(info["log_version"], shoal_state::LOG_VERSION, "{info}");
        }
    };
    still(&cluster);
    // It stops without a word: its identity is found dead, not node 1.
    runtime.block_on(impostor.shutdown());
    std::thread::sleep(Duration::from_secs(6));
    still(&cluster);

    // A worker gets the keyring with its certificate and seals at once.
    let worker = cluster.join_worker();
    let sealed_on = |cluster: &Cluster, index: usize| {
        cluster.wait_for("the node to seal its gossip", || {
            let info = cluster.shoal_json(index, &["cluster", "info"])?;
            let alive = cluster
                .nodes(0)?
                .iter()
                .all(|node| node["status"] == "alive");
            (info["gossip"]["mode"] == "sealed"
                && info["gossip"]["identities"] == "proven"
                && alive)
                .then_some(info)
        })
    };
    let info = sealed_on(&cluster, worker);
    assert_eq!(
        info["gossip"]["sealed_sent"], info["gossip"]["datagrams_sent"],
        "{info}"
    );
    // Who gets the keyring: node certificates only, from a voter.
    let (ca, admin) = harness::credential_parts(&cluster.credential());
    let ca_file = cluster.scratch.path().join("ca-for-gossip-keys.pem");
    std::fs::write(&ca_file, ca).expect("write CA");
    let pki = cluster.members[worker].data_dir.join("pki");
    let (cert, key) = (pki.join("node.pem"), pki.join("node.key"));
    let as_worker = [
        "--cert",
        cert.to_str().expect("path"),
        "--key",
        key.to_str().expect("path"),
    ];
    let ip = |index: usize| cluster.members[index].ip.clone();
    let path = "/v1/internal/gossip-keys";
    let (status, body) = harness::curl(&ip(0), 7950, path, &ca_file, &as_worker);
    assert_eq!(status, 200, "{body}");
    let keys: Value = serde_json::from_str(&body).expect("json");
    assert!(keys["generation"].as_u64() >= Some(1), "{keys}");
    assert_eq!(keys["sealed"], true, "{keys}");
    assert_eq!(keys["proven"], true, "{keys}");
    assert!(keys["keyring"]
        .as_str()
        .is_some_and(|ring| ring.contains("primary")));
    let (status, body) = harness::curl(&ip(worker), 7950, path, &ca_file, &as_worker);
    assert_eq!(status, 421, "a worker holds no data key: {body}");
    let bearer = format!("authorization: Bearer {admin}");
    let (status, body) = harness::curl(&ip(0), 7950, path, &ca_file, &["-H", &bearer]);
    assert_eq!(status, 403, "an API token, even an admin's: {body}");
    let (status, body) = harness::curl(&ip(0), 7950, path, &ca_file, &[]);
    assert_eq!(status, 401, "no credential: {body}");
    assert!(!body.contains("primary"), "{body}");

    // The worker loses its copy: it fetches the keyring from a voter again
    // (its Raft log arrives over TLS), and seals again.
    let file = pki.join("gossip.json");
    cluster.stop(worker);
    std::fs::remove_file(&file).expect("the worker kept the keyring");
    cluster.start(worker, &[]);
    sealed_on(&cluster, worker);
    let mode = std::fs::metadata(&file)
        .map(|meta| std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777)
        .expect("the keyring kept again");
    assert_eq!(mode, 0o600);

    // The worker is removed: it holds the key, so the leader rotates at
    // once (the default rotation is a day away), and the worker, refused
    // the new ring, is no longer heard.
    let generation = |cluster: &Cluster, index: usize| {
        cluster
            .shoal_json(index, &["cluster", "info"])
            .and_then(|info| info["gossip"]["keyring_generation"].as_u64())
    };
    let before = generation(&cluster, 0).expect("generation");
    let old_keys =
        cluster.shoal_json(0, &["cluster", "info"]).expect("info")["gossip"]["key_ids"].clone();
    let worker_name = cluster.members[worker].name.clone();
    cluster.shoal_ok(0, &["node", "rm", &worker_name]);
    for index in 0..3 {
        cluster.wait_for("a new key, and the old one gone", || {
            let info = cluster.shoal_json(index, &["cluster", "info"])?;
            let gossip = &info["gossip"];
            (gossip["keyring_generation"].as_u64()? >= before + 3
                && gossip["key_ids"].as_array()?.len() == 1
                && gossip["key_ids"] != old_keys)
                .then_some(())
        });
    }
    cluster.wait_for("the removed worker's gossip dropped", || {
        let info = cluster.shoal_json(0, &["cluster", "info"])?;
        (info["gossip"]["dropped"]["unknown_key"].as_u64()? > 0).then_some(())
    });
    // It leaves the consensus: the log no longer goes to it.
    cluster.wait_for("the removed worker out of the consensus", || {
        let info = cluster.shoal_json(0, &["cluster", "info"])?;
        (info["learners"] == serde_json::json!([])).then_some(())
    });
    // Unheard, the removed worker is seen dead (gossip lists it until it
    // forgets it); the others stay alive.
    cluster.wait_for("the removed worker seen dead, the others alive", || {
        let nodes = cluster.nodes(0)?;
        nodes
            .iter()
            .all(|node| (node["name"] == worker_name.as_str()) != (node["status"] == "alive"))
            .then_some(())
    });
}

/// The gossip keyring rotates by itself (here every 2 s): a key is
/// installed, then seals, then the old one goes, each step once every node
/// holds the last, so no node ever gets a datagram it cannot open and no
/// node is suspected meanwhile.
#[test]
fn the_gossip_keyring_rotates_without_a_node_suspected() {
    let Some(cluster) = Cluster::start_with_args_or_skip(
        "rotate",
        &[&[], &[], &[]],
        &["--gossip-key-rotation", "2s"],
    ) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    let info = |index: usize| cluster.shoal_json(index, &["cluster", "info"]);
    let generation = |index: usize| info(index)?["gossip"]["keyring_generation"].as_u64();
    let counts = || -> Vec<(Value, Value)> {
        (0..3)
            .map(|index| {
                let info = info(index).expect("info");
                let dropped = &info["gossip"]["dropped"];
                (dropped["unknown_key"].clone(), dropped["forged"].clone())
            })
            .collect()
    };
    // A node that joined while a rotation ran may have missed a key for a
    // moment; from the first whole rotation on, every node is in step.
    cluster.wait_for("a first whole rotation", || {
        (generation(0)? >= 4).then_some(())
    });
    let first = generation(0).expect("generation");
    let before = counts();
    let started = Instant::now();
    loop {
        let nodes = cluster.nodes(0).expect("nodes");
        assert!(
            nodes.len() == 3 && nodes.iter().all(|node| node["status"] == "alive"),
            "a node was suspected during a rotation: {nodes:?}"
        );
        if generation(0) >= Some(first + 6) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "two rotations did not complete in 60 s: {:?}",
            info(0)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(counts(), before, "a node got a datagram it could not open");
    for index in 0..3 {
        let info = info(index).expect("info");
        let gossip = &info["gossip"];
        assert_eq!(gossip["mode"], "sealed", "{info}");
        assert!(
            gossip["key_ids"]
                .as_array()
                .is_some_and(|ids| !ids.contains(&Value::from(1))),
            "{info}"
        );
    }
}

/// Joining is by CA-pinned tokens only: a wrong, reused, revoked or
/// expired token, a worker token asking to vote, and a peer of another
/// cluster (which never receives the secret) are refused with the reason;
/// a node that joined comes back after a restart without a token; a
/// removed node's certificate is refused by the others within 5 s.
#[test]
fn nodes_join_only_with_a_valid_token_that_pins_the_ca() {
    let Some(mut cluster) = Cluster::start_or_skip("join", &[&[]]) else {
        return;
    };
    let first = cluster.members[0].ip.clone();
    let make = |cluster: &Cluster, args: &[&str]| -> String {
        let mut all = vec!["cluster", "token", "create"];
        all.extend_from_slice(args);
        let output = cluster.shoal(0, &all);
        assert!(output.status.success(), "{}", text(&output));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let refused = |output: &std::process::Output, why: &str| {
        assert!(
            !output.status.success(),
            "the join was accepted: {}",
            text(output)
        );
        assert!(
            text(output).contains(why),
            "wanted `{why}`: {}",
            text(output)
        );
    };

    let worker = make(&cluster, &["--role", "worker"]);
    let (_, output) = cluster.try_join(&first, &worker, &["--role", "voter"]);
    refused(&output, "worker token and cannot admit a voter");

    let good = make(&cluster, &[]);
    let mut wrong = good.clone();
    let last = wrong.pop().expect("a character");
    wrong.push(if last == '0' { '1' } else { '0' });
    let (_, output) = cluster.try_join(&first, &wrong, &[]);
    refused(&output, "the secret is wrong");

    let revoked = make(&cluster, &[]);
    let id = revoked.split('-').nth(3).expect("token id").to_string();
    cluster.shoal_ok(0, &["cluster", "token", "rm", &id]);
    let (_, output) = cluster.try_join(&first, &revoked, &[]);
    refused(&output, "was revoked");

    let short = make(&cluster, &["--ttl", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (_, output) = cluster.try_join(&first, &short, &[]);
    refused(&output, "expired");

    // A good token admits one node, once.
    let joined = cluster.join_with_token(&good);
    let (_, output) = cluster.try_join(&first, &good, &[]);
    refused(&output, "already used 1 time(s)");

    // A rogue peer: a cluster of its own; the token of ours pins another CA.
    let Some(rogue) = Cluster::start_or_skip("rogue", &[&[]]) else {
        return;
    };
    let rogue_peer = rogue.members[0].ip.clone();
    let fresh = make(&cluster, &[]);
    let (_, output) = cluster.try_join(&rogue_peer, &fresh, &[]);
    refused(&output, "nothing secret was sent");
    let secret = fresh.rsplit('-').next().expect("secret");
    let rogue_audit =
        std::fs::read_to_string(rogue.members[0].data_dir.join("audit.log")).unwrap_or_default();
    assert!(
        !rogue_audit.contains("/v1/join"),
        "the rogue was asked to admit: {rogue_audit}"
    );
    assert!(!rogue.logs().contains(secret), "the rogue saw the secret");

    // A restarted node rejoins with its certificate, no token.
    let index = joined;
    cluster.stop(index);
    cluster.start(index, std::slice::from_ref(&first));
    cluster.wait_for("the restarted node alive", || {
        let nodes = cluster.nodes(0)?;
        nodes
            .iter()
            .any(|n| n["name"] == cluster.members[index].name.as_str() && n["status"] == "alive")
            .then_some(())
    });

    // Removed: its certificate is refused by the first node within 5 s.
    let name = cluster.members[index].name.clone();
    let pki = cluster.members[index].data_dir.join("pki");
    let (ca, _) = harness::credential_parts(&cluster.credential());
    let ca_file = cluster.members[index].data_dir.join("ca-for-test.pem");
    std::fs::write(&ca_file, ca).expect("write CA");
    let as_node = |cluster: &Cluster| {
        let _ = cluster;
        harness::curl(
            &first,
            7950,
            "/v1/nodes",
            &ca_file,
            &[
                "--cert",
                pki.join("node.pem").to_str().expect("path"),
                "--key",
                pki.join("node.key").to_str().expect("path"),
            ],
        )
        .0
    };
    assert_eq!(as_node(&cluster), 200, "a node's certificate reads");
    cluster.shoal_ok(0, &["node", "rm", &name]);
    let removed_at = std::time::Instant::now();
    while as_node(&cluster) != 401 {
        assert!(
            removed_at.elapsed() < std::time::Duration::from_secs(5),
            "the removed node's certificate is still accepted after 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Certificates of one minute renew themselves at 50-80 % of their life
/// while the cluster takes reads and writes through every node: 30
/// renewals across the nodes, not one failed request. Then the whole
/// cluster, a worker too, is switched off until every certificate has
/// expired, and comes back by itself: each voter issues itself a new one
/// from its replica's CA, the worker renews its own with a voter showing
/// the expired one, and writes go through every node again; with an
/// expired certificate nothing but a renewal is taken.
#[test]
fn short_lived_certificates_renew_without_a_failed_request() {
    const RENEWALS_WANTED: usize = 30;
    const WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(15 * 60);
    let Some(mut cluster) =
        Cluster::start_with_args_or_skip("renew", &[&[], &[], &[]], &["--cert-lifetime", "1m"])
    else {
        return;
    };
    let started = std::time::Instant::now();
    let mut requests = 0usize;
    let mut failures = Vec::new();
    let renewals = |cluster: &Cluster| {
        cluster
            .logs()
            .matches("renewed this node's certificate")
            .count()
    };
    while renewals(&cluster) < RENEWALS_WANTED {
        assert!(
            started.elapsed() < WAIT_MAX,
            "only {} renewals in {:?}",
            renewals(&cluster),
            WAIT_MAX
        );
        let index = requests % 3;
        let app = format!("name: r{requests}\nservices:\n  - name: a\n    image: shoal.test/busybox:latest\n    replicas: 0\n");
        let path = cluster.members[index].data_dir.join("renew-app.yaml");
        std::fs::write(&path, app).expect("write spec");
        for args in [
            vec!["apply", "--detach", "-f", path.to_str().expect("path")],
            vec!["nodes", "-o", "json"],
        ] {
            let output = cluster.shoal(index, &args);
            requests += 1;
            if !output.status.success() {
                failures.push(format!("{args:?} via node {index}: {}", text(&output)));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!(
        "{} renewals, {requests} requests in {:?}",
        renewals(&cluster),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let worker = cluster.join_worker();
    // The node that answers an apply pins the image it names.
    cluster.import_busybox(worker);
    let ends = |cluster: &Cluster, index: usize| {
        let pem =
            std::fs::read(cluster.members[index].data_dir.join("pki/node.pem")).expect("node.pem");
        let der = <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(&pem)
            .expect("a certificate");
        shoal_pki::identity::not_after(&der).expect("not after")
    };
    let leaf_pem = cluster.members[worker].data_dir.join("pki/node.pem");
    let worker_key = cluster.members[worker].data_dir.join("pki/node.key");
    for index in (0..=worker).rev() {
        cluster.stop(index);
    }
    let last_end = (0..=worker)
        .map(|index| ends(&cluster, index))
        .max()
        .expect("nodes");
    if let Ok(left) = last_end.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left + std::time::Duration::from_secs(2));
    }
    let expired_worker = (
        std::fs::read(&leaf_pem).expect("pem"),
        std::fs::read(&worker_key).expect("key"),
    );
    for index in 0..=worker {
        cluster.start(index, &[]);
    }
    let now = std::time::SystemTime::now();
    for index in 0..=worker {
        assert!(
            ends(&cluster, index) > now,
            "node {index} holds an expired certificate"
        );
    }
    let renewed_here = (0..3)
        .filter(|&index| {
            cluster
                .agent_log(index)
                .contains("renewed this node's expired certificate from its own replica")
        })
        .count();
    assert_eq!(renewed_here, 3, "each voter renews its own");
    for index in 0..=worker {
        let app = format!("name: back{index}\nservices:\n  - name: a\n    image: shoal.test/busybox:latest\n    replicas: 0\n");
        let path = cluster.members[index].data_dir.join("back-app.yaml");
        std::fs::write(&path, app).expect("write spec");
        let started = std::time::Instant::now();
        loop {
            let output = cluster.shoal(
                index,
                &["apply", "--detach", "-f", path.to_str().expect("path")],
            );
            if output.status.success() {
                break;
            }
            assert!(
                started.elapsed() < harness::WAIT_MAX,
                "no write through node {index} after the restart: {}",
                text(&output)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    // The worker's expired certificate, shown again: the gate takes it for
    // a renewal only (here one whose CSR does not read), nothing else.
    let scratch = cluster.scratch.path();
    let (pem, key) = (scratch.join("expired.pem"), scratch.join("expired.key"));
    std::fs::write(&pem, &expired_worker.0).expect("pem");
    std::fs::write(&key, &expired_worker.1).expect("key");
    let ca = cluster.members[0].data_dir.join("pki/roots.pem");
    let (pem, key) = (pem.to_str().expect("path"), key.to_str().expect("path"));
    let ask = |method: &str, path: &str| {
        harness::curl(
            &cluster.members[0].ip,
            7950,
            path,
            &ca,
            &[
                "--cert",
                pem,
                "--key",
                key,
                "-X",
                method,
                "-H",
                "content-type: application/json",
                "--data",
                r#"{"csr_pem":"x"}"#,
            ],
        )
    };
    let (status, body) = ask("GET", "/v1/nodes");
    assert_eq!(status, 401, "an expired certificate reads: {body}");
    assert!(body.contains("expired"), "{body}");
    let (status, body) = ask("POST", "/v1/raft/propose");
    assert_eq!(status, 401, "an expired certificate proposes: {body}");
    // Taken to the renewal handler, which refuses the CSR itself.
    let (status, body) = ask("POST", "/v1/internal/renew");
    assert_eq!(status, 400, "{body}");
}

/// `shoal cluster ca rotate` moves a cluster of three voters and a worker
/// to a new root: requests through every voter keep succeeding while it
/// runs (writes, and reads with a copy of the admin credential made before
/// it); the worker, frozen when it starts, holds the rotation's end until
/// it is back and has renewed onto the new root; no node joins again (each
/// keeps its admission), and once it has ended every node trusts the new
/// root alone and shows a certificate of it, and writes go through the
/// worker; a node certificate of the old root, which passed before, is
/// refused; a join token made before the rotation no longer joins, one
/// made after does.
#[test]
fn the_ca_rotates_to_a_new_root_without_a_failed_request_or_a_rejoin() {
    let Some(mut cluster) = Cluster::start_or_skip("carot", &[&[], &[], &[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    let worker = cluster.join_worker();
    // The node that answers an apply pins the image it names.
    cluster.import_busybox(worker);
    let pki = |cluster: &Cluster, index: usize, file: &str| {
        std::fs::read_to_string(cluster.members[index].data_dir.join("pki").join(file)).expect(file)
    };
    let leaf = |cluster: &Cluster, index: usize| {
        let pem = pki(cluster, index, "node.pem");
        let der = <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(pem.as_bytes())
            .expect("a certificate");
        (
            pem,
            shoal_pki::identity::Identity::from_cert_der(&der).expect("identity"),
        )
    };
    let nodes = [0, 1, 2, worker];
    let old_roots = pki(&cluster, 0, "roots.pem");
    let admissions: Vec<String> = nodes
        .iter()
        .map(|&index| leaf(&cluster, index).1.admission)
        .collect();
    let scratch = cluster.scratch.path().to_path_buf();
    let old_credential = scratch.join("admin-before.json");
    std::fs::copy(cluster.credential(), &old_credential).expect("credential");
    let (old_pem, old_key) = (scratch.join("old.pem"), scratch.join("old.key"));
    std::fs::write(&old_pem, pki(&cluster, worker, "node.pem")).expect("pem");
    std::fs::write(&old_key, pki(&cluster, worker, "node.key")).expect("key");
    let old_token = cluster.worker_token();
    let with_old_leaf = |cluster: &Cluster, roots: &std::path::Path| {
        harness::curl(
            &cluster.members[1].ip,
            7950,
            "/v1/nodes",
            roots,
            &[
                "--cert",
                old_pem.to_str().expect("path"),
                "--key",
                old_key.to_str().expect("path"),
            ],
        )
    };
    let old_roots_file = scratch.join("old-roots.pem");
    std::fs::write(&old_roots_file, &old_roots).expect("roots");
    let (status, body) = with_old_leaf(&cluster, &old_roots_file);
    assert_eq!(status, 200, "the worker's certificate reads before: {body}");

    // The worker is frozen (down, as gossip sees it) before the rotation
    // starts; requests go through every voter while it runs.
    let signal = |what: &str| {
        let pid = cluster.agent_pid(worker).expect("the worker runs");
        let status = std::process::Command::new("kill")
            .args([what, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {what} {pid}");
    };
    signal("-STOP");
    let running = std::sync::atomic::AtomicBool::new(true);
    let (rotation, requests, failures) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let (mut requests, mut failures) = (0usize, Vec::new());
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                for &index in &nodes[..3] {
                    let app = format!("name: rot{requests}\nservices:\n  - name: a\n    image: shoal.test/busybox:latest\n    replicas: 0\n");
                    let path = scratch.join(format!("rot-{index}.yaml"));
                    std::fs::write(&path, app).expect("write spec");
                    let write = cluster.shoal(
                        index,
                        &["apply", "--detach", "-f", path.to_str().expect("path")],
                    );
                    let read = std::process::Command::new(harness::binary())
                        .args(["nodes", "-o", "json"])
                        .env("SHOAL_ADDR", cluster.addr(index))
                        .env("SHOAL_CONFIG", &old_credential)
                        .output()
                        .expect("run shoal");
                    for (what, output) in [("write", write), ("read", read)] {
                        requests += 1;
                        if !output.status.success() {
                            failures.push(format!("{what} via node {index}: {}", text(&output)));
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            (requests, failures)
        });
        let rotate =
            scope.spawn(|| cluster.shoal(0, &["cluster", "ca", "rotate", "--timeout", "3m"]));
        // The voters renew onto the new root; the frozen worker holds the
        // end.
        let behind = cluster.wait_for("the voters on the new root, the worker behind", || {
            let view = cluster.shoal_json(0, &["cluster", "ca", "info"])?;
            let generation = |name: &str| {
                view["nodes"]
                    .as_array()?
                    .iter()
                    .find(|node| node["name"] == name)?["generation"]
                    .as_u64()
            };
            let voters = (0..3).all(|index| generation(&cluster.members[index].name) == Some(2));
            (view["rotating"] == true && voters).then_some(view.clone())
        });
        std::thread::sleep(std::time::Duration::from_secs(5));
        let still = cluster
            .shoal_json(0, &["cluster", "ca", "info"])
            .expect("ca");
        assert_eq!(
            still["rotating"], true,
            "ended without the worker: {still}\n{behind}"
        );
        signal("-CONT");
        let rotation = rotate.join().expect("rotate");
        // A little more load after the end, on the certificates of the
        // new root alone.
        std::thread::sleep(std::time::Duration::from_secs(3));
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        let (requests, failures) = load.join().expect("load");
        (rotation, requests, failures)
    });
    assert!(
        rotation.status.success(),
        "{}\n{}",
        text(&rotation),
        cluster.logs()
    );
    let said = text(&rotation);
    assert!(said.contains("rotation ended"), "{said}");
    eprintln!("{requests} requests during the rotation");
    assert!(requests >= 8, "{requests} requests");
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed during the rotation:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Every node trusts the new root alone and shows a certificate of it,
    // under the admission it had.
    let view = cluster
        .shoal_json(0, &["cluster", "ca", "info"])
        .expect("ca");
    assert_eq!(view["rotating"], false, "{view}");
    assert_eq!(view["generation"], 3, "{view}");
    let new_root = pki(&cluster, 0, "roots.pem");
    assert_ne!(
        shoal_pki::ca::bundle_hash(&new_root).unwrap(),
        shoal_pki::ca::bundle_hash(&old_roots).unwrap()
    );
    let app = "name: through-worker\nservices:\n  - name: a\n    image: shoal.test/busybox:latest\n    replicas: 0\n";
    let path = scratch.join("through-worker.yaml");
    std::fs::write(&path, app).expect("write spec");
    cluster.shoal_ok(
        worker,
        &["apply", "--detach", "-f", path.to_str().expect("path")],
    );
    for (at, &index) in nodes.iter().enumerate() {
        let roots = pki(&cluster, index, "roots.pem");
        assert_eq!(
            shoal_pki::ca::bundle_certificates(&roots).unwrap().len(),
            1,
            "node {index}: {roots}"
        );
        assert_eq!(
            shoal_pki::ca::bundle_hash(&roots).unwrap(),
            shoal_pki::ca::bundle_hash(&new_root).unwrap(),
            "node {index}"
        );
        let (pem, identity) = leaf(&cluster, index);
        assert!(shoal_pki::ca::issued_by(&pem, &new_root), "node {index}");
        assert_eq!(
            identity.admission, admissions[at],
            "node {index} joined again"
        );
        let node = view["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|node| node["name"] == cluster.members[index].name.as_str())
            .unwrap_or_else(|| panic!("node {index} in {view}"));
        assert_eq!(node["generation"], 3, "{view}");
    }
    // The credential of the node that formed the cluster trusts it too.
    let credential: Value =
        serde_json::from_slice(&std::fs::read(cluster.credential()).expect("credential"))
            .expect("json");
    assert_eq!(
        shoal_pki::ca::bundle_hash(credential["ca_pem"].as_str().expect("ca")).unwrap(),
        shoal_pki::ca::bundle_hash(&new_root).unwrap()
    );

    // The worker's certificate of the old root, fine before: refused at
    // the handshake now, whatever roots the client takes.
    let new_roots_file = scratch.join("new-roots.pem");
    std::fs::write(&new_roots_file, &new_root).expect("roots");
    for roots in [&new_roots_file, &old_roots_file] {
        let (status, body) = with_old_leaf(&cluster, roots);
        assert_eq!(status, 0, "an old-root certificate was answered: {body}");
    }
    // A join token made before the rotation pins the old root: refused by
    // the joiner itself, before anything is sent; one made now joins.
    let peer = cluster.members[0].ip.clone();
    let (_, joined) = cluster.try_join(&peer, &old_token, &[]);
    assert!(!joined.status.success(), "{}", text(&joined));
    assert!(text(&joined).contains("rotated"), "{}", text(&joined));
    let fresh = cluster.join_worker();
    let (pem, _) = leaf(&cluster, fresh);
    assert!(shoal_pki::ca::issued_by(&pem, &new_root));
}

/// Five nodes that start the same registry image at once fetch each of
/// its blobs from the registry once between them: every node asks the
/// blob's home node, which fetches it once and serves every node that asks
/// while the bytes still arrive. The registry answers slowly (a throttle
/// in front of it), so the five pulls overlap, and say how far they are.
#[test]
fn five_nodes_starting_one_image_fetch_each_blob_from_the_registry_once() {
    let labels: [&[&str]; 5] = [&[]; 5];
    let Some(cluster) = Cluster::start_or_skip("fetch1", &labels) else {
        return;
    };
    wait_voters(&cluster, 0, 5);
    let registry = Registry::start();
    // Busybox and 6 MiB that do not compress: a layer of about 7 MiB.
    let rootfs = busybox_rootfs();
    let noise: Vec<u8> = (0..6 << 20).map(|_| rand::random::<u8>()).collect();
    std::fs::write(rootfs.path().join("fs/noise"), noise).expect("noise");
    let digest = registry.push_rootfs(&rootfs.path().join("fs"), "demo/big", "v1");
    // About 7 s for the layer: long enough for pulls to say how far they are.
    let throttle = Throttle::start(registry.port, 1 << 20);
    // Registered, so that nodes fetch from it for each other from the
    // first blob on (they fetch for others only from registries the
    // cluster's state names).
    cluster.shoal_ok(0, &["registry", "add", &throttle.host(), "--insecure"]);
    let spec = format!(
        r#"
name: big
services:
  - name: everywhere
    image: {}/demo/big:v1
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    kind: global
"#,
        throttle.host()
    );
    // While the nodes pull, `shoal ps` says how far.
    let progress = std::thread::scope(|scope| {
        scope.spawn(|| cluster.apply_ok(0, &spec));
        cluster.wait_for("a task saying how far its pull is", || {
            cluster.tasks(1).into_iter().find_map(|t| {
                let message = t["message"].as_str()?.to_string();
                message.starts_with("pulling ").then_some(message)
            })
        })
    });
    assert!(
        progress.contains(" % (") && progress.contains(" of ") && progress.ends_with("/s)"),
        "{progress}"
    );
    let tasks = cluster.wait_for("the image running on all five nodes", || {
        let tasks = cluster.tasks(0);
        (tasks.len() == 5 && tasks.iter().all(|t| t["state"] == "running")).then_some(tasks)
    });
    for task in &tasks {
        assert_eq!(task["image_digest"], digest.as_str(), "{task}");
    }
    let log = registry.log();
    let blob_gets: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("http.request.method=GET")
                && l.contains("/v2/demo/big/blobs/")
                && l.contains("oci-client")
        })
        .collect();
    assert_eq!(
        blob_gets.len(),
        2,
        "the config and the layer, each once for the whole cluster:\n{}\n{}",
        blob_gets.join("\n"),
        cluster.logs()
    );

    // Images across the nodes: every node lists the pinned image, and none
    // removes it while its task runs it.
    let pinned = format!("{}/demo/big@{digest}", throttle.host());
    let listed = cluster
        .shoal_json(1, &["images", "--all-nodes"])
        .expect("images of all nodes");
    let holders: BTreeSet<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter(|i| i["name"] == pinned.as_str())
        .filter_map(|i| i["node"].as_str())
        .collect();
    assert_eq!(holders.len(), 5, "{listed}");
    let refused = cluster.shoal(2, &["image", "rm", &pinned, "--all-nodes"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(said.matches("is in use on node").count(), 5, "{said}");

    // An image pulled onto one named node is there only; removed over all
    // nodes, the others say it is not there.
    let extra_fs = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(extra_fs.path().join("etc")).expect("etc");
    std::fs::write(extra_fs.path().join("etc/motd"), "extra\n").expect("motd");
    registry.push_rootfs(extra_fs.path(), "demo/extra", "v1");
    let extra = format!("{}/demo/extra:v1", registry.host());
    let target = cluster.members[3].name.clone();
    cluster.shoal_ok(0, &["image", "pull", &extra, "--node", &target]);
    let on = |node: &str| -> bool {
        cluster
            .shoal_json(0, &["images", "--node", node])
            .expect("images")
            .as_array()
            .expect("list")
            .iter()
            .any(|i| i["name"] == extra.as_str())
    };
    assert!(on(&target));
    assert!(!on(&cluster.members[4].name));
    let removed = cluster.shoal_ok(0, &["image", "rm", &extra, "--all-nodes"]);
    assert!(removed.contains(&format!("{target}: removed")), "{removed}");
    assert_eq!(removed.matches("not there").count(), 4, "{removed}");
    assert!(!on(&target));
    let unknown = cluster.shoal(0, &["images", "--node", "nope"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("--node nope: no such node"),
        "{unknown:?}"
    );
}

/// With the registry gone, a task that moves off a dead node pulls its
/// image from the node that runs the other replica: the manifest (by the
/// digest pinned at apply), the config and the layer, each checked against
/// its digest, none of them from the registry.
#[test]
fn with_the_registry_gone_a_moved_task_pulls_its_image_from_the_nodes_that_run_it() {
    let Some((mut cluster, mut registry, digest)) = registry_cluster("outage") else {
        return;
    };
    // No node holds the image ahead (`prepull: none`): the spare node
    // (else the service's standby, which pulls within seconds) must get
    // it from the nodes that run it.
    cluster.apply_ok(
        0,
        &(registry_app(&registry, "outage", 2) + "    prepull: none\n"),
    );
    let tasks = cluster.wait_for("two replicas running", || {
        let tasks = cluster.tasks(0);
        (tasks.iter().filter(|t| t["state"] == "running").count() == 2).then_some(tasks)
    });
    let pinned = format!("{}/demo/outage@{digest}", registry.host());
    let running_on: BTreeSet<String> = tasks
        .iter()
        .filter_map(|t| t["node"].as_str().map(str::to_string))
        .collect();
    assert_eq!(running_on.len(), 2, "{tasks:?}");
    let leader = cluster.leader(0).expect("leader");
    let victim_name = running_on
        .iter()
        .find(|n| **n != leader)
        .expect("a replica off the leader")
        .clone();
    let spare_name = cluster
        .members
        .iter()
        .map(|m| m.name.clone())
        .find(|n| !running_on.contains(n))
        .expect("a node without a replica");
    let holds = |cluster: &Cluster, node: &str| holds_image(cluster, node, &pinned);
    assert!(
        !holds(&cluster, &spare_name),
        "the spare node has the image already"
    );

    registry.kill();
    let victim = cluster.index_of(&victim_name);
    let watcher = (0..3).find(|i| *i != victim).expect("another node");
    cluster.kill(victim);
    cluster.wait_for("two replicas running on the live nodes", || {
        (cluster.running_replicas(watcher, Some(&victim_name)) == 2).then_some(())
    });
    let moved: Vec<Value> = cluster
        .tasks(watcher)
        .into_iter()
        .filter(|t| t["state"] == "running" && t["node"] == spare_name.as_str())
        .collect();
    assert_eq!(moved.len(), 1, "the task moved to the spare node");
    assert_eq!(moved[0]["image_digest"], digest.as_str(), "{:?}", moved[0]);
    assert!(
        holds(&cluster, &spare_name),
        "the spare node does not list the image"
    );
}

/// A busybox root filesystem in `fs/` of a temporary directory.
fn busybox_rootfs() -> tempfile::TempDir {
    let rootfs = tempfile::tempdir().expect("rootfs dir");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/busybox-rootfs.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(rootfs.path().join("fs"))
        .status()
        .expect("busybox-rootfs.sh");
    assert!(status.success());
    rootfs
}

/// Ready before needed: the standby of a service (the node that ranks
/// first for it among those that run none of it) pulls its image ahead;
/// with the registry gone and the only node running the service killed,
/// the replica starts on the standby from the image it already holds.
#[test]
fn the_standby_of_a_service_holds_its_image_and_takes_the_replica_when_its_node_dies() {
    let Some((mut cluster, mut registry, digest)) = registry_cluster("standby") else {
        return;
    };
    cluster.apply_ok(0, &registry_app(&registry, "standby", 1));
    let pinned = format!("{}/demo/standby@{digest}", registry.host());
    let task = cluster.wait_for("the replica running", || {
        cluster
            .tasks(0)
            .into_iter()
            .find(|t| t["state"] == "running")
    });
    let home = task["node"].as_str().expect("node").to_string();
    let holds = |cluster: &Cluster, node: &str| holds_image(cluster, node, &pinned);
    // One of the two other nodes pulls the image ahead; the third does not.
    let standby = cluster.wait_for("the standby to hold the image", || {
        cluster
            .members
            .iter()
            .map(|m| m.name.clone())
            .filter(|n| *n != home)
            .find(|n| holds(&cluster, n))
    });
    std::thread::sleep(Duration::from_secs(6));
    let others: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.name.clone())
        .filter(|n| *n != home && *n != standby)
        .collect();
    assert!(
        others.iter().all(|n| !holds(&cluster, n)),
        "only the standby pulls ahead"
    );
    // The service reports itself protected, naming its standby.
    let prepull = prepull_view(&cluster, 0, "standby");
    assert_eq!(prepull["mode"], "successors", "{prepull}");
    assert_eq!(prepull["protected"], true, "{prepull}");
    assert_eq!(
        prepull["nodes"],
        serde_json::json!([{"node": standby, "holds": true}]),
        "{prepull}"
    );

    registry.kill();
    let victim = cluster.index_of(&home);
    let watcher = (0..3).find(|i| *i != victim).expect("another node");
    cluster.kill(victim);
    let moved = cluster.wait_for("the replica running on a live node", || {
        cluster
            .tasks(watcher)
            .into_iter()
            .find(|t| t["state"] == "running" && t["node"] != home.as_str())
    });
    assert_eq!(moved["node"], standby.as_str(), "{moved}");
    assert_eq!(moved["image_digest"], digest.as_str(), "{moved}");
    // The last node is the standby now: it takes the image from the node
    // that runs it (the registry is still gone), and the service is
    // protected again, two copies in the cluster.
    let last = others[0].clone();
    cluster.wait_for("the new standby to hold the image", || {
        let prepull = prepull_view(&cluster, watcher, "standby");
        (prepull["protected"] == true).then_some(())
    });
    let prepull = prepull_view(&cluster, watcher, "standby");
    assert_eq!(
        prepull["nodes"],
        serde_json::json!([{"node": last, "holds": true}]),
        "{prepull}"
    );
}

/// `prepull: all`: every node that may run the service holds its image
/// ahead and the service reports itself protected; `prepull: none` (a new
/// version of the app, no task restarted) holds it nowhere ahead.
#[test]
fn prepull_all_holds_the_image_on_every_node_and_none_on_none() {
    let Some((cluster, registry, digest)) = registry_cluster("prepullall") else {
        return;
    };
    let spec = registry_app(&registry, "prepullall", 1) + "    prepull: all\n";
    cluster.apply_ok(0, &spec);
    let pinned = format!("{}/demo/prepullall@{digest}", registry.host());
    let task = cluster.wait_for("the replica running", || {
        cluster
            .tasks(0)
            .into_iter()
            .find(|t| t["state"] == "running")
    });
    for member in &cluster.members {
        cluster.wait_for("every node to hold the image", || {
            holds_image(&cluster, &member.name, &pinned).then_some(())
        });
    }
    let prepull = cluster.wait_for("the service protected", || {
        let prepull = prepull_view(&cluster, 1, "prepullall");
        (prepull["protected"] == true).then_some(prepull)
    });
    assert_eq!(prepull["mode"], "all", "{prepull}");
    let mut named: Vec<String> = prepull["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["node"].as_str().expect("node").to_string())
        .collect();
    named.sort();
    let mut others: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.name.clone())
        .filter(|n| task["node"] != n.as_str())
        .collect();
    others.sort();
    assert_eq!(named, others, "the nodes that do not run it: {prepull}");
    let listed = cluster.shoal_ok(2, &["apps"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("prepullall") && l.contains(" yes ")),
        "{listed}"
    );
    let inspected = cluster.shoal_ok(2, &["app", "inspect", "prepullall"]);
    assert!(inspected.contains("all: protected"), "{inspected}");

    let spec = registry_app(&registry, "prepullall", 1) + "    prepull: none\n";
    cluster.apply_ok(0, &spec);
    // Some rounds of the scheduler (it runs at every change, and at least
    // every 0.5 s): a task it would replace is replaced by then.
    std::thread::sleep(Duration::from_secs(3));
    let prepull = prepull_view(&cluster, 0, "prepullall");
    assert_eq!(prepull["mode"], "none", "{prepull}");
    assert_eq!(prepull["protected"], false, "{prepull}");
    assert_eq!(prepull["nodes"], serde_json::json!([]), "{prepull}");
    let tasks = cluster.tasks(0);
    assert_eq!(tasks.len(), 1, "no task replaced: {tasks:?}");
    assert_eq!(tasks[0]["id"], task["id"], "{tasks:?}");
}

/// The `prepull` view of service `web` of app `app`, read through node
/// `index`.
fn prepull_view(cluster: &Cluster, index: usize, app: &str) -> Value {
    let app = cluster
        .shoal_json(index, &["app", "inspect", app])
        .expect("app inspect");
    app["services"][0]["prepull"].clone()
}

/// A worker holds no data key, yet pulls from a private registry: a voter
/// gives it the registry's credentials over mTLS because it is to run a
/// task of that registry's image, and, answering an operator's apply, on
/// the operator's token. The password is a secret of the secrets store,
/// which the voter opens for it. A node with no reason to pull from the
/// registry and no operator's token is refused them, and the password is
/// in no file of the worker's and not in any node's log.
#[test]
fn a_worker_pulls_from_a_private_registry_with_credentials_a_voter_gives_it() {
    let Some(mut cluster) = Cluster::start_or_skip("privw", &[&[], &[], &[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    let registry = Registry::start_tls();
    let (ca, password) = registry.tls.clone().expect("tls");
    let rootfs = busybox_rootfs();
    std::fs::write(
        rootfs.path().join("fs/etc/motd"),
        "from the private registry\n",
    )
    .expect("motd");
    registry.push_rootfs(&rootfs.path().join("fs"), "team/private", "v1");
    registry.push_rootfs(&rootfs.path().join("fs"), "team/second", "v1");
    let host = registry.host();
    let ca = ca.to_str().expect("utf-8").to_string();
    let output = cluster.shoal_with_stdin(
        0,
        &["secret", "create", "regpw", "-f", "-"],
        &format!("{password}\n"),
    );
    assert!(output.status.success(), "{output:?}");
    cluster.shoal_ok(
        0,
        &[
            "registry",
            "add",
            &host,
            "--ca-file",
            &ca,
            "--username",
            "docker",
            "--password-secret",
            "regpw",
        ],
    );
    let worker = cluster.join_worker();
    let worker_name = cluster.members[worker].name.clone();
    let app = |name: &str, repository: &str| {
        format!(
            r#"
name: {name}
services:
  - name: web
    image: {host}/team/{repository}:v1
    command: ["/bin/sh", "-c", "cat /etc/motd; trap 'exit 0' TERM; while true; do sleep 1; done"]
    prepull: none
    placement: {{constraints: ["node.name == {worker_name}"]}}
"#
        )
    };
    let runs = |cluster: &Cluster, app: &str| {
        cluster.wait_for("the worker to run the private image", || {
            let logs = cluster.shoal(0, &["logs", &format!("{app}.web")]);
            String::from_utf8_lossy(&logs.stdout)
                .contains("from the private registry")
                .then_some(())
        });
    };
    // Applied through the worker first: it pins the image with the
    // credentials the operator's token stands for (it runs nothing yet).
    cluster.apply_ok(worker, &app("privw", "private"));
    runs(&cluster, "privw");
    // Applied through a voter, once the worker's memory of them is gone
    // (restarted): it is to run a task of the registry's image, and a
    // voter gives it the credentials for that.
    cluster.stop(worker);
    cluster.start(worker, &[]);
    cluster.apply_ok(0, &app("privw2", "second"));
    runs(&cluster, "privw2");

    // Who gets them, asked straight with node certificates.
    let (_, admin) = harness::credential_parts(&cluster.credential());
    let path = "/v1/internal/registry-credentials";
    let ask = |asker: usize, body: String| cluster.post_to_node_0(path, &body, Some(asker), None);
    let plain = serde_json::json!({ "host": host }).to_string();
    let (status, body) = ask(worker, plain.clone());
    assert_eq!(status, 200, "the worker runs the registry's images: {body}");
    assert!(body.contains("\"docker\""), "{body}");
    // Node 2 runs nothing of it and holds nothing ahead (prepull: none).
    let (status, body) = ask(2, plain);
    assert_eq!(status, 403, "node 2 does not pull from it: {body}");
    assert!(!body.contains(&password), "{body}");
    let (status, body) = ask(
        2,
        serde_json::json!({ "host": host, "operator": "shoal_not-a-token" }).to_string(),
    );
    assert_eq!(
        status, 403,
        "a token that is none stands for nothing: {body}"
    );
    let (status, body) = ask(
        2,
        serde_json::json!({ "host": host, "operator": admin }).to_string(),
    );
    assert_eq!(status, 200, "an operator who may deploy: {body}");
    // No node certificate, an admin's bearer token: not a node.
    let (status, body) = cluster.post_to_node_0(
        path,
        &serde_json::json!({ "host": host }).to_string(),
        None,
        Some(&admin),
    );
    assert_eq!(status, 403, "an API token is no node: {body}");

    // The worker kept them in memory only.
    let seen = harness::assert_secret_in_no_file(&cluster.members[worker].data_dir, &password);
    assert!(seen > 3, "looked at {seen} files");
    for index in 0..cluster.members.len() {
        assert!(
            !cluster.agent_log(index).contains(&password),
            "the password is in node {index}'s log"
        );
    }
}

/// A TLS server of the test's own on `addr`, showing the certificate and
/// key kept in `pki` (a node's `DATA_DIR/pki`): it answers `GET
/// /v1/join/ca` with `roots` and every other request 503, noting each
/// (method, path and body). Stopped when the sender is dropped or sent.
fn impostor(
    runtime: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    pki: &std::path::Path,
    roots: &str,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let credentials = shoal_pki::tls::Credentials::new(roots).expect("roots");
    credentials
        .set_identity(
            &std::fs::read_to_string(pki.join("node.pem")).expect("certificate"),
            &std::fs::read_to_string(pki.join("node.key")).expect("key"),
        )
        .expect("identity");
    let tls = shoal_pki::tls::server_config(credentials).expect("TLS");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = seen.clone();
    let roots = roots.to_string();
    let router = axum::Router::new()
        .route(
            "/v1/join/ca",
            axum::routing::get(move || async move { roots }),
        )
        .fallback(move |request: axum::extract::Request| {
            let noted = noted.clone();
            async move {
                let line = format!("{} {}", request.method(), request.uri().path());
                let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                    .await
                    .unwrap_or_default();
                noted
                    .lock()
                    .unwrap()
                    .push(format!("{line} {}", String::from_utf8_lossy(&body)));
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            }
        });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("binding the impostor to {addr}: {error}"),
            }
        }
    });
    runtime.spawn(shoal_http::serve(
        listener,
        tls,
        router,
        shoal_http::ServeOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    (seen, stop)
}

/// Servers are who they claim (issue 24 point 5): at a voter's address, a
/// worker's certificate (of the cluster's CA, so it chains) gets no
/// request from the nodes that dial that voter, where the voter's own
/// certificate gets the leader's Raft calls at once; and a joiner sends
/// its join token to no worker's certificate.
#[test]
fn a_server_that_is_not_the_node_dialled_gets_nothing() {
    let Some(mut cluster) = Cluster::start_or_skip("posing", &[&[], &[], &[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    let worker = cluster.join_worker();
    let leader = cluster.wait_for("a leader", || cluster.leader(0));
    let leader = cluster.index_of(&leader);
    let victim = (0..3).find(|i| *i != leader).expect("a follower");
    let addr: std::net::SocketAddr = format!("{}:7950", cluster.members[victim].ip)
        .parse()
        .expect("address");
    let (roots, _) = harness::credential_parts(&cluster.credential());
    let worker_pki = cluster.members[worker].data_dir.join("pki");
    let victim_pki = cluster.members[victim].data_dir.join("pki");
    cluster.stop(victim);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");

    // The worker's certificate where the follower was: the leader keeps
    // dialling the follower, and sends it nothing. (Within the seconds
    // before gossip finds the follower dead and the leader demotes it.)
    let (seen, stop) = impostor(&runtime, addr, &worker_pki, &roots);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        seen.lock().unwrap().is_empty(),
        "a worker's certificate at a voter's address was sent {:?}",
        seen.lock().unwrap()
    );
    let _ = stop.send(());

    // The follower's own certificate there: the leader's calls arrive at
    // once (so it did dial this address all along).
    let (seen, stop) = impostor(&runtime, addr, &victim_pki, &roots);
    cluster.wait_for("the leader to call the follower's certificate", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|r| r.starts_with("POST /v1/raft/"))
            .then_some(())
    });
    let _ = stop.send(());

    // A joiner that is told the worker's certificate is its peer sends it
    // no token (at most a decoy, to learn where the leader is), and says
    // why.
    let (seen, stop) = impostor(&runtime, addr, &worker_pki, &roots);
    let voter_token = cluster
        .shoal_ok(0, &["cluster", "token", "create", "--role", "voter"])
        .trim()
        .to_string();
    let (_, output) = cluster.try_join(&addr.to_string(), &voter_token, &[]);
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("goes only to a voter"), "{said}");
    let secret = voter_token.rsplit('-').next().expect("the token's secret");
    assert!(secret.len() >= 16, "{voter_token}");
    assert!(
        !seen.lock().unwrap().iter().any(|r| r.contains(secret)),
        "the joiner sent its token: {:?}",
        seen.lock().unwrap()
    );
    let _ = stop.send(());

    // Through the worker itself: the joiner learns the leader's address
    // from it with a decoy token and joins there.
    let token = cluster.worker_token();
    let joined = cluster.join_via(worker, &token);
    let name = cluster.members[joined].name.clone();
    cluster.wait_for("the node joined through a worker listed alive", || {
        cluster
            .nodes(0)?
            .iter()
            .any(|node| node["name"] == name.as_str() && node["status"] == "alive")
            .then_some(())
    });
}

/// A 3-node cluster with a registry it knows (`registry add`) holding
/// busybox as `demo/TEST:v1`; the image's digest.
fn registry_cluster(test: &str) -> Option<(Cluster, Registry, String)> {
    let cluster = Cluster::start_or_skip(test, &[&[], &[], &[]])?;
    wait_voters(&cluster, 0, 3);
    let registry = Registry::start();
    let rootfs = busybox_rootfs();
    let digest = registry.push_rootfs(&rootfs.path().join("fs"), &format!("demo/{test}"), "v1");
    cluster.shoal_ok(0, &["registry", "add", &registry.host(), "--insecure"]);
    Some((cluster, registry, digest))
}

/// App TEST: one service `web` of `demo/TEST:v1` from the registry.
fn registry_app(registry: &Registry, test: &str, replicas: u32) -> String {
    format!(
        r#"
name: {test}
services:
  - name: web
    image: {}/demo/{test}:v1
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    replicas: {replicas}
"#,
        registry.host()
    )
}

/// Whether node `node` lists the image `name` (asked through node 0).
fn holds_image(cluster: &Cluster, node: &str, name: &str) -> bool {
    cluster
        .shoal_json(0, &["images", "--node", node])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .any(|i| i["name"] == name)
}

/// The caller is the proposer: a worker's certificate proposes only what a
/// worker writes about itself. A `create_api_token` sent with it straight
/// to the leader's `/v1/raft/propose`, naming the worker or a voter as its
/// proposer, is refused and written to the leader's audit log, and no
/// token is made; the membership routes refuse the worker outright. An
/// operator's command that the worker answers (the operator's token goes
/// with the proposal to the leader) is taken.
#[test]
fn a_worker_certificate_proposes_only_what_a_worker_may() {
    let Some(mut cluster) = Cluster::start_or_skip("proposer", &[&[], &[], &[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    let worker = cluster.join_worker();
    cluster.import_busybox(worker);
    let worker_name = cluster.members[worker].name.clone();
    cluster.wait_for("the worker alive in the state", || {
        cluster
            .nodes(0)?
            .iter()
            .any(|n| n["name"] == worker_name.as_str() && n["status"] == "alive")
            .then_some(())
    });
    let leader = cluster.leader(0).expect("a leader");
    let leader_index = cluster.index_of(&leader);
    let leader_ip = cluster.members[leader_index].ip.clone();
    let (ca, _) = harness::credential_parts(&cluster.credential());
    let ca_file = cluster.members[worker].data_dir.join("ca-for-test.pem");
    std::fs::write(&ca_file, ca).expect("write CA");
    let pki = cluster.members[worker].data_dir.join("pki");
    let (cert, key) = (pki.join("node.pem"), pki.join("node.key"));
    let post = |path: &str, body: &serde_json::Value| {
        harness::curl(
            &leader_ip,
            7950,
            path,
            &ca_file,
            &[
                "--cert",
                cert.to_str().expect("path"),
                "--key",
                key.to_str().expect("path"),
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data-binary",
                &body.to_string(),
            ],
        )
    };
    let rogue = "0123456789abcdef";
    let mint = |proposer: &str| {
        serde_json::json!({"timeout_ms": 2000, "entry": {
            "version": 3, "at_ms": 1, "proposer": proposer,
            "command": {"type": "create_api_token", "token": {
                "id": rogue, "name": "rogue", "role": "admin", "hash": "00".repeat(32),
                "created_at_ms": 1, "created_by": "rogue"}}}})
    };
    let (status, body) = post("/v1/raft/propose", &mint(&worker_name));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"failed\"") && body.contains("no voter"),
        "{body}"
    );
    let (status, body) = post("/v1/raft/propose", &mint(&leader));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"failed\"") && body.contains("as its proposer"),
        "{body}"
    );
    // The leader's decisions, and another node's reports, neither.
    let voter = cluster.members[(leader_index + 1) % 3].name.clone();
    for (command, why) in [
        (
            serde_json::json!({"type": "set_node_status", "name": voter, "status": "dead"}),
            "only the leader",
        ),
        (
            serde_json::json!({"type": "apply_plan", "plan": {"place": [], "stop": [], "remove": []}}),
            "only the leader",
        ),
        (
            serde_json::json!({"type": "report_tasks", "node": voter, "statuses": []}),
            "writes this about itself",
        ),
    ] {
        let forged = serde_json::json!({"timeout_ms": 2000, "entry": {
            "version": 3, "at_ms": 1, "proposer": worker_name, "command": command}});
        let (status, body) = post("/v1/raft/propose", &forged);
        assert!(
            status == 200 && body.contains(why),
            "{command}: {status} {body}"
        );
    }
    // A proposer that is no node name, as long as the body allows: refused
    // without being echoed.
    let (status, body) = post("/v1/raft/propose", &mint(&"x".repeat(100_000)));
    assert!(
        status == 200 && body.contains("no node name") && body.len() < 1000,
        "{status} {}",
        body.len()
    );
    let (status, body) = post(
        "/v1/raft/change-voters",
        &serde_json::json!({"timeout_ms": 1000, "voters": [1]}),
    );
    assert_eq!(status, 403, "{body}");
    let tokens = cluster.shoal_ok(0, &["token", "ls", "-o", "json"]);
    assert!(
        !tokens.contains(rogue),
        "the rogue token was made: {tokens}"
    );
    let audit = std::fs::read_to_string(cluster.members[leader_index].data_dir.join("audit.log"))
        .expect("the leader's audit log");
    let refusals: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("create_api_token") && l.contains(&worker_name))
        .filter(|l| l.contains("\"refused\""))
        .collect();
    assert_eq!(refusals.len(), 3, "{audit}");

    // The operator's own commands through the worker: taken, on the
    // operator's token.
    cluster.apply_ok(
        worker,
        "name: via-worker\nservices: [{name: a, image: shoal.test/busybox:latest, replicas: 0}]\n",
    );
    cluster.shoal_ok(
        worker,
        &[
            "token",
            "create",
            "--name",
            "via-worker",
            "--role",
            "reader",
        ],
    );
    // A deployer's token answered by the worker mints no token either.
    let deployer = cluster
        .shoal_ok(
            0,
            &["token", "create", "--name", "deploy", "--role", "deployer"],
        )
        .trim()
        .to_string();
    let output = std::process::Command::new(harness::binary())
        .args(["token", "create", "--name", "sneaky", "--role", "admin"])
        .env("SHOAL_ADDR", cluster.addr(worker))
        .env("SHOAL_CONFIG", cluster.credential())
        .env("SHOAL_TOKEN", &deployer)
        .output()
        .expect("run shoal");
    assert!(!output.status.success(), "{}", text(&output));
    let audit = std::fs::read_to_string(cluster.members[leader_index].data_dir.join("audit.log"))
        .expect("the leader's audit log");
    let (_, admin_token) = harness::credential_parts(&cluster.credential());
    let secret = admin_token.rsplit('-').next().expect("secret");
    assert!(!audit.contains(secret), "a token's secret in the audit log");
    for command in ["put_app_pinned", "create_api_token"] {
        assert!(
            audit.lines().any(|l| l.contains(command)
                && l.contains(&worker_name)
                && l.contains("\"operator\":\"token:")
                && !l.contains("\"refused\"")),
            "{command} through the worker: {audit}"
        );
    }
}

/// No name takeover: a join under the name of a node the cluster knows
/// (here a voter declared dead) is refused, saying how to free the name,
/// and that node comes back as itself.
#[test]
fn a_known_nodes_name_is_not_taken_by_another_join() {
    let Some(mut cluster) = Cluster::start_or_skip("takeover", &[&[], &[], &[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 3);
    let first = cluster.members[0].ip.clone();
    let victim = 2;
    let name = cluster.members[victim].name.clone();
    cluster.stop(victim);
    cluster.wait_for("the voter declared dead", || {
        cluster
            .nodes(0)?
            .iter()
            .any(|n| n["name"] == name.as_str() && n["status"] == "dead")
            .then_some(())
    });
    let token = cluster.worker_token();
    let (_, output) = cluster.try_join_as(&name, &first, &token);
    let said = text(&output);
    assert!(!output.status.success(), "joined under {name}: {said}");
    // "known to the cluster", or "alive in" it: the joiner's own gossip
    // may have spoken for the name already (gossip is not sealed yet).
    assert!(
        said.contains("refused the join") && said.contains(&format!("shoal node rm {name}")),
        "{said}"
    );
    // The voter keeps its identity: it comes back as itself.
    cluster.start(victim, std::slice::from_ref(&first));
    cluster.wait_for("the voter alive again", || {
        cluster
            .nodes(0)?
            .iter()
            .any(|n| n["name"] == name.as_str() && n["status"] == "alive")
            .then_some(())
    });
}

/// A worker holds no data key, yet runs a task with a secret: a voter
/// gives it the task's secrets over mTLS as it starts the task, because
/// the task is placed on it; a node the task is not placed on, and an API
/// token, are refused them; the worker keeps the value in memory only.
#[test]
fn a_worker_gets_the_secrets_of_its_tasks_from_a_voter_and_no_other_node_does() {
    let Some(mut cluster) = Cluster::start_or_skip("secretw", &[&[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 1);
    let canary = format!("SHOAL-CANARY-{}", std::process::id() as u64 * 6007 + 31);
    let output = cluster.shoal_with_stdin(0, &["secret", "create", "canary", "-f", "-"], &canary);
    assert!(output.status.success(), "{output:?}");
    let worker = cluster.join_worker();
    cluster.import_busybox(worker);
    let worker_name = cluster.members[worker].name.clone();
    cluster.apply_ok(
        0,
        &format!(
            r#"
name: vault
services:
  - name: web
    image: shoal.test/busybox:latest
    command: ["/bin/sh", "-c", "sha256sum /run/secrets/canary; trap 'exit 0' TERM; while true; do sleep 1; done"]
    secrets: [{{name: canary}}]
    placement: {{constraints: ["node.name == {worker_name}"]}}
"#
        ),
    );
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(canary.as_bytes()))
    };
    cluster.wait_for("the worker's task to read the secret", || {
        let logs = cluster.shoal(0, &["logs", "vault.web"]);
        String::from_utf8_lossy(&logs.stdout)
            .contains(&expected)
            .then_some(())
    });
    let task = cluster.shoal_json(0, &["ps", "vault"]).expect("ps")[0]["id"]
        .as_str()
        .expect("task id")
        .to_string();

    // Asked straight with node certificates and a token.
    let (_, admin) = harness::credential_parts(&cluster.credential());
    let body = serde_json::json!({ "task": task }).to_string();
    let path = "/v1/internal/task-secrets";
    let ask = |asker: usize| cluster.post_to_node_0(path, &body, Some(asker), None);
    let (status, answer) = ask(worker);
    assert_eq!(status, 200, "the task is placed on the worker: {answer}");
    assert!(answer.contains("\"canary\""), "{answer}");
    let (status, answer) = ask(0);
    assert_eq!(status, 403, "the task is not placed on node 0: {answer}");
    assert!(!answer.contains("data"), "{answer}");
    let (status, answer) = cluster.post_to_node_0(path, &body, None, Some(&admin));
    assert_eq!(status, 403, "an API token is no node: {answer}");

    // In memory only, on the node running the task.
    let files = harness::task_files_dir(&cluster.members[worker].data_dir);
    assert!(files.join(&task).is_dir(), "{files:?}");
    for index in 0..cluster.members.len() {
        let seen = harness::assert_secret_in_no_file(&cluster.members[index].data_dir, &canary);
        assert!(seen > 3, "looked at {seen} files");
        assert!(
            !harness::holds_secret(&cluster.agent_log(index), &canary),
            "the secret is in node {index}'s log"
        );
    }
}

/// Who may call a route, written from the rules the security issue sets
/// (not read from the access table): the health check and the join
/// routes are open (a join's token is in its body); Raft's own RPCs and
/// the membership changes take a node that may vote; other node-to-node
/// routes any admitted node; tokens and join tokens an admin only; other
/// reads any token or node; apps, plans, images, secrets and configs a
/// deployer or an admin; everything else an admin.
fn matrix_allowed(method: &reqwest::Method, path: &str) -> &'static [&'static str] {
    const EVERYONE: &[&str] = &["nothing", "reader", "deployer", "admin", "worker", "voter"];
    const NODES: &[&str] = &["worker", "voter"];
    const READERS: &[&str] = &["reader", "deployer", "admin", "worker", "voter"];
    const DEPLOYERS: &[&str] = &["deployer", "admin"];
    const ADMINS: &[&str] = &["admin"];
    let read = method == reqwest::Method::GET;
    let deployed = [
        "/v1/apps",
        "/v1/plan",
        "/v1/images",
        "/v1/images/pull",
        "/v1/secrets",
        "/v1/configs",
    ];
    match path {
        "/v1/health" | "/v1/join" | "/v1/join/ca" => EVERYONE,
        "/v1/raft/append"
        | "/v1/raft/vote"
        | "/v1/raft/snapshot"
        | "/v1/raft/add-learner"
        | "/v1/raft/change-voters"
        | "/v1/raft/remove-nodes" => &["voter"],
        p if p.starts_with("/v1/raft/") || p.starts_with("/v1/internal/") => NODES,
        p if p.starts_with("/v1/tokens") || p.starts_with("/v1/cluster/join-tokens") => ADMINS,
        _ if read => READERS,
        p if deployed.contains(&p) && method == reqwest::Method::POST => DEPLOYERS,
        "/v1/images" if method == reqwest::Method::DELETE => DEPLOYERS,
        "/v1/apps/nosuch" if method == reqwest::Method::DELETE => DEPLOYERS,
        "/v1/secrets/nosuch" | "/v1/configs/nosuch"
            if method == reqwest::Method::PUT || method == reqwest::Method::DELETE =>
        {
            DEPLOYERS
        }
        _ => ADMINS,
    }
}

/// The route × credential matrix on a real cluster over real TLS: every
/// operation of the OpenAPI document and every Raft route, called with no
/// credential, each API role's token, an expired and a revoked admin
/// token, a real worker's and the voter's own certificate, the
/// certificate of a node removed with `shoal node rm`, and a certificate
/// of another CA with this cluster's id. A cell the rules allow gets past
/// the gate (whatever the handler then says of the empty body); every
/// other is refused at the handshake or by the gate (401, or 403 saying
/// who may not).
#[test]
fn every_route_takes_only_the_credentials_the_rules_allow_over_real_tls() {
    let Some(mut cluster) = Cluster::start_or_skip("matrix", &[&[]]) else {
        return;
    };
    wait_voters(&cluster, 0, 1);
    let worker = cluster.join_worker();
    let gone = cluster.join_worker();
    let own = |cluster: &Cluster, index: usize| {
        let pki = cluster.members[index].data_dir.join("pki");
        let read = |file: &str| std::fs::read_to_string(pki.join(file)).expect("read");
        (read("node.pem"), read("node.key"))
    };
    let gone_cert = own(&cluster, gone);
    let gone_name = cluster.members[gone].name.clone();
    cluster.stop(gone);
    cluster.shoal_ok(0, &["node", "rm", &gone_name]);
    // The worker's facts (what it reads) have arrived: tokens can be made.
    cluster.wait_for("the cluster to write this release's log format", || {
        let info = cluster.shoal_json(0, &["cluster", "info"])?;
        (info["log_version"] == shoal_state::LOG_VERSION).then_some(())
    });
    let token = |name: &str, role: &str, ttl: Option<&str>| {
        let mut args = vec!["token", "create", "--name", name, "--role", role];
        if let Some(ttl) = ttl {
            args.extend(["--ttl", ttl]);
        }
        args.extend(["-o", "json"]);
        let output = cluster.shoal(0, &args);
        assert!(output.status.success(), "{output:?}");
        let created: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("token JSON");
        (
            created["token"].as_str().expect("token").to_string(),
            created["id"].as_str().expect("id").to_string(),
        )
    };
    let (reader, _) = token("r", "reader", None);
    let (deployer, _) = token("d", "deployer", None);
    let (admin, _) = token("a", "admin", None);
    let (expired, _) = token("expired", "admin", Some("1s"));
    let (revoked, revoked_id) = token("revoked", "admin", None);
    cluster.shoal_ok(0, &["token", "rm", &revoked_id]);
    std::thread::sleep(Duration::from_millis(1500));
    let (ca_pem, _) = harness::credential_parts(&cluster.credential());
    let cluster_id = cluster.shoal_json(0, &["cluster", "info"]).expect("info")["cluster_id"]
        .as_str()
        .expect("cluster id")
        .to_string();
    let foreign = {
        let ca =
            shoal_pki::ca::Ca::generate(&cluster_id, 1, std::time::SystemTime::now()).expect("CA");
        let identity = shoal_pki::identity::Identity {
            cluster_id: cluster_id.clone(),
            role: shoal_pki::identity::Role::Voter,
            name: cluster.members[0].name.clone(),
            admission: "00000000000000a1".into(),
        };
        let (chain, key) = ca
            .issue_new_key(
                &identity,
                Duration::from_secs(600),
                std::time::SystemTime::now(),
            )
            .expect("certificate");
        (chain, key.to_string())
    };

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = |token: Option<&str>, cert: Option<(&str, &str)>| {
        let credentials = shoal_pki::tls::Credentials::new(&ca_pem).expect("roots");
        if let Some((chain, key)) = cert {
            credentials.set_identity(chain, key).expect("identity");
        }
        let tls = shoal_pki::tls::client_config(credentials).expect("TLS");
        let _guard = runtime.enter();
        shoal_http::client_with_token(shoal_http::ClientOptions::default(), &tls, token)
            .expect("client")
    };
    let (worker_cert, voter_cert) = (own(&cluster, worker), own(&cluster, 0));
    // (label, client, the class the rules know it as: a certificate that
    // does not chain to the cluster's CA is "no one", refused at the
    // handshake, even where no credential is needed).
    let callers: Vec<(&str, reqwest::Client, &str)> = vec![
        ("no credential", client(None, None), "nothing"),
        ("reader token", client(Some(&reader), None), "reader"),
        ("deployer token", client(Some(&deployer), None), "deployer"),
        ("admin token", client(Some(&admin), None), "admin"),
        (
            "expired admin token",
            client(Some(&expired), None),
            "nothing",
        ),
        (
            "revoked admin token",
            client(Some(&revoked), None),
            "nothing",
        ),
        (
            "worker certificate",
            client(None, Some((&worker_cert.0, &worker_cert.1))),
            "worker",
        ),
        (
            "voter certificate",
            client(None, Some((&voter_cert.0, &voter_cert.1))),
            "voter",
        ),
        (
            "removed node's certificate",
            client(None, Some((&gone_cert.0, &gone_cert.1))),
            "nothing",
        ),
        (
            "another CA's certificate with this cluster's id",
            client(None, Some((&foreign.0, &foreign.1))),
            "no one",
        ),
    ];

    let document = shoal_api::openapi::document();
    let mut routes: Vec<(reqwest::Method, String)> = Vec::new();
    for (path, operations) in document["paths"].as_object().expect("paths") {
        for method in operations.as_object().expect("operations").keys() {
            let Ok(method) = method.to_uppercase().parse::<reqwest::Method>() else {
                continue;
            };
            if !["GET", "PUT", "POST", "DELETE", "PATCH"].contains(&method.as_str()) {
                continue;
            }
            let mut path = path.clone();
            for (param, value) in [
                ("{name}", "nosuch"),
                ("{host}", "r.example"),
                ("{id}", "00000000000000aa"),
                ("{key}", "gpu"),
                ("{target}", "nosuch.a"),
                (
                    "{digest}",
                    "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                ),
            ] {
                path = path.replace(param, value);
            }
            assert!(
                !path.contains('{'),
                "a path parameter this test does not fill: {path}"
            );
            routes.push((method, path));
        }
    }
    for path in shoal_cluster::raft::ROUTER_PATHS {
        routes.push((reqwest::Method::POST, path.to_string()));
    }
    assert!(routes.len() >= 40, "{} routes", routes.len());
    let endpoint =
        shoal_http::Endpoint::parse(&format!("{}:7950", cluster.members[0].ip)).expect("endpoint");
    let mut wrong = Vec::new();
    let mut cells = 0;
    for (method, path) in &routes {
        let allowed = matrix_allowed(method, path);
        for (label, client, class) in &callers {
            let should = allowed.contains(class);
            // Leaving would end the node, and a rotation would move the CA
            // from under the test's own certificates: their allowed cells
            // are not called (the rotation's test calls it).
            if (path == "/v1/node/leave" || path == "/v1/cluster/ca/rotate") && should {
                continue;
            }
            cells += 1;
            let answer = runtime.block_on(async {
                client
                    .request(method.clone(), endpoint.url(path))
                    .header("content-type", "application/json")
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
            });
            let (passed, said) = match answer {
                Err(error) if error.is_connect() || error.is_request() => {
                    (false, format!("no connection: {error}"))
                }
                Err(error) => (true, format!("{error}")),
                Ok(response) => {
                    let status = response.status();
                    let body = runtime.block_on(response.text()).unwrap_or_default();
                    let by_gate = status == reqwest::StatusCode::UNAUTHORIZED
                        || (status == reqwest::StatusCode::FORBIDDEN && body.contains(" may not "));
                    (!by_gate, format!("{status} {body}"))
                }
            };
            if passed != should {
                wrong.push(format!(
                    "{method} {path} with {label}: {} ({})",
                    if passed {
                        "got past the gate"
                    } else {
                        "refused"
                    },
                    said.chars().take(160).collect::<String>()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {cells} cells wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    eprintln!(
        "{cells} cells of {} routes × {} credentials as the rules say",
        routes.len(),
        callers.len()
    );
}

//! The simulator seen from outside: chaos runs pass and replay, the
//! benchmark places what it is asked to, and the checker does catch a
//! broken invariant.

use std::collections::BTreeMap;

use shoal_sim::bench::{Bench, BenchConfig};
use shoal_sim::chaos::{self, ChaosConfig};
use shoal_sim::check;
use shoal_sim::cluster::{self, Cluster};
use shoal_state::{Command, Outcome};
use shoal_types::{parse_app, DesiredState, NodeStatus, TaskState, TaskStatus};

fn short(seed: u64) -> ChaosConfig {
    ChaosConfig {
        nodes: 60,
        seed,
        steps: 150,
    }
}

#[test]
fn short_chaos_runs_pass() {
    for seed in 1..=3 {
        match chaos::run(&short(seed)) {
            Ok(summary) => {
                assert!(
                    summary.placements > 0,
                    "seed {seed} placed nothing: {summary}"
                );
                assert!(summary.kills > 0, "seed {seed} killed no node: {summary}");
            }
            Err(violation) => panic!("{violation}"),
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_summary() {
    let first = chaos::run(&short(11)).map_err(|v| v.to_string());
    let second = chaos::run(&short(11)).map_err(|v| v.to_string());
    assert_eq!(
        first.as_ref().map(ToString::to_string),
        second.as_ref().map(ToString::to_string)
    );
    let other = chaos::run(&short(12)).map_err(|v| v.to_string());
    assert_ne!(
        first.map(|s| s.state_hash),
        other.map(|s| s.state_hash),
        "two seeds gave the same final state"
    );
}

#[test]
fn a_violation_names_the_seed_and_the_replay_command() {
    let violation = chaos::run(&ChaosConfig {
        nodes: 0,
        seed: 5,
        steps: 10,
    })
    .expect_err("no nodes is refused");
    let text = violation.to_string();
    assert!(text.contains("seed=5"), "{text}");
    assert!(
        text.contains("cargo run --release -p shoal-sim -- chaos --nodes 0 --seed 5 --steps 10"),
        "{text}"
    );
}

#[test]
fn a_small_benchmark_places_every_task() {
    let mut bench = Bench::build(&BenchConfig {
        nodes: 200,
        tasks: 5_000,
        seed: 1,
    })
    .expect("benchmark builds");
    let mut marks = 0;
    let totals = bench.run(|_| marks += 1).expect("benchmark runs");
    assert_eq!(totals.placed, 5_000, "{totals:?}");
    assert_eq!(totals.rejected, 0, "{totals:?}");
    assert_eq!(totals.unplaced_reported, 0, "{totals:?}");
    assert!(marks >= 4, "the phases were not marked");
    let state = bench.state();
    assert_eq!(state.tasks.len(), 5_000);
    assert!(state.overcommitted_nodes().is_empty());
    state.check_invariants().expect("invariants hold");
}

/// A cluster of two nodes with one task placed (by the real scheduler) on
/// `a`, and the checker's view of it.
fn one_task_on_a() -> (Cluster, check::Previous, String) {
    let mut cluster = Cluster::default();
    for name in ["a", "b"] {
        cluster
            .apply(Command::RegisterNode {
                node: cluster::node(name, 4, 8 << 30, BTreeMap::new()),
            })
            .expect("node registers");
    }
    let spec = parse_app(
        br#"{"name": "app", "services": [{"name": "web", "image": "busybox", "resources": {"cpu": 3},
             "placement": {"constraints": ["node.name == a"]}}]}"#,
    )
    .expect("spec parses");
    cluster.apply(Command::PutApp { spec }).expect("app put");
    let plan = shoal_sched::reconcile(&cluster.state);
    cluster
        .apply(Command::ApplyPlan { plan })
        .expect("plan applies");
    let id = cluster
        .state
        .tasks
        .keys()
        .next()
        .expect("a task was placed")
        .clone();
    let previous = check::observe(&cluster.state);
    check::check_step(&cluster.state, &previous).expect("a fresh placement is fine");
    (cluster, previous, id)
}

#[test]
fn the_checker_catches_a_task_on_a_dead_node() {
    let (mut cluster, previous, id) = one_task_on_a();
    cluster
        .apply(Command::SetNodeStatus {
            name: "a".into(),
            status: NodeStatus::Dead,
        })
        .expect("node declared dead");
    // No scheduler ran, so the task is still wanted on the dead node.
    let error = check::check_step(&cluster.state, &previous).expect_err("violation found");
    assert!(error.contains(&id) && error.contains("dead"), "{error}");
    // Once the scheduler has run, the task is stopped and all is well.
    let plan = shoal_sched::reconcile(&cluster.state);
    cluster
        .apply(Command::ApplyPlan { plan })
        .expect("plan applies");
    check::check_step(&cluster.state, &previous).expect("scheduler moved the task");
}

#[test]
fn the_checker_catches_one_host_port_published_twice_on_a_node() {
    let (mut cluster, previous, id) = one_task_on_a();
    // The state machine refuses such a plan, so the state is bent by hand:
    // a second task on `a` publishing the port the first one does.
    let mut spec = (*cluster.state.tasks[&id].spec).clone();
    spec.resources.cpu = None;
    spec.ports = vec![shoal_types::spec::Port {
        name: None,
        container_port: 80,
        protocol: shoal_types::spec::Protocol::Tcp,
        host_port: Some(8080),
    }];
    let spec = std::sync::Arc::new(spec);
    let mut twin = cluster.state.tasks[&id].clone();
    twin.spec = spec.clone();
    twin.slot += 1;
    twin.id = format!("app.web.{}.0", twin.slot);
    cluster.state.tasks.get_mut(&id).expect("task").spec = spec;
    cluster.state.tasks.insert(twin.id.clone(), twin);
    let error = check::check_step(&cluster.state, &previous).expect_err("violation found");
    assert!(
        error.contains("publishes host port 8080/tcp for two tasks"),
        "{error}"
    );
}

#[test]
fn the_checker_catches_an_overcommitted_node() {
    let (mut cluster, previous, _) = one_task_on_a();
    // `a` registers again with 2 cpus while its task requests 3.
    cluster
        .apply(Command::RegisterNode {
            node: cluster::node("a", 2, 8 << 30, BTreeMap::new()),
        })
        .expect("node registers again");
    let error = check::check_step(&cluster.state, &previous).expect_err("violation found");
    assert!(error.contains("over-committed"), "{error}");
}

#[test]
fn the_checker_catches_a_status_moving_backwards() {
    let (mut cluster, _, id) = one_task_on_a();
    let report = |state: TaskState| TaskStatus {
        attempt: 1,
        state,
        ..TaskStatus::pending(0)
    };
    let outcome = cluster
        .apply(Command::ReportTasks {
            node: "a".into(),
            statuses: vec![(id.clone(), report(TaskState::Running))],
        })
        .expect("report applies");
    assert_eq!(
        outcome,
        Outcome::TasksReported {
            accepted: 1,
            stale: 0
        }
    );
    let previous = check::observe(&cluster.state);
    // The state machine drops backward reports; write one past it to see
    // the checker notice.
    if let Some(task) = cluster.state.tasks.get_mut(&id) {
        task.status = report(TaskState::Starting);
    }
    let error = check::check_step(&cluster.state, &previous).expect_err("violation found");
    assert!(error.contains("backwards"), "{error}");
}

#[test]
fn healing_needs_every_replica() {
    let (mut cluster, _, id) = one_task_on_a();
    check::check_healed(&cluster.state).expect("the one replica runs");
    if let Some(task) = cluster.state.tasks.get_mut(&id) {
        task.desired = DesiredState::Stopped;
    }
    let error = check::check_healed(&cluster.state).expect_err("violation found");
    assert!(error.contains("desired stopped"), "{error}");
    cluster.state.tasks.clear();
    let error = check::check_healed(&cluster.state).expect_err("violation found");
    assert!(error.contains("wants 1 tasks"), "{error}");
}

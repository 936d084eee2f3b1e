use shoal_state::{Command, Entry, Outcome, State, StopReason};
use shoal_types::{parse_app, Node, NodeStatus, PinSource, PinnedImage, TaskState, TaskStatus};

use super::reconcile;

mod rolling;

struct Cluster {
    state: State,
    index: u64,
}

impl Cluster {
    fn with_nodes(names: &[&str]) -> Self {
        let mut cluster = Cluster {
            state: State::default(),
            index: 0,
        };
        for name in names {
            cluster.apply(Command::RegisterNode {
                node: Node::sample(name, &format!("{name}:7950")),
            });
        }
        cluster
    }

    fn apply(&mut self, command: Command) -> Outcome {
        self.index += 1;
        let outcome = self
            .state
            .apply(self.index, &Entry::trusted(self.index * 10, &command))
            .expect("command applies");
        self.state.check_invariants().expect("invariants hold");
        outcome
    }

    /// The race of two schedulers: a plan made from a snapshot without the
    /// app `missing` is applied after `first` (that app's plan). Returns how
    /// many tasks the stale plan placed, then what applying it placed and
    /// rejected.
    fn apply_stale_plan(
        &mut self,
        first: shoal_state::Plan,
        missing: &str,
    ) -> (usize, Vec<String>, Vec<String>) {
        let stale = reconcile(&{
            let mut before = self.state.clone();
            before.apps.remove(missing);
            before
        });
        let planned = stale.place.len();
        self.apply(Command::ApplyPlan { plan: first });
        let Outcome::PlanApplied {
            placed, rejected, ..
        } = self.apply(Command::ApplyPlan { plan: stale })
        else {
            panic!("plan outcome");
        };
        (planned, placed, rejected)
    }

    fn put(&mut self, yaml: &str) {
        let spec = parse_app(yaml.as_bytes()).expect("valid spec");
        self.apply(Command::PutApp { spec });
    }

    /// Runs the scheduler once and applies its plan.
    fn schedule(&mut self) -> shoal_state::Plan {
        let plan = reconcile(&self.state);
        if let Outcome::PlanApplied { rejected, .. } =
            self.apply(Command::ApplyPlan { plan: plan.clone() })
        {
            assert!(rejected.is_empty(), "fresh plan rejected: {rejected:?}");
        }
        plan
    }

    fn report_all(&mut self, state: TaskState) {
        let mut by_node: std::collections::BTreeMap<String, Vec<(String, TaskStatus)>> =
            Default::default();
        for task in self.state.tasks.values() {
            let status = TaskStatus {
                attempt: 1,
                state,
                ..task.status.clone()
            };
            by_node
                .entry(task.node.clone())
                .or_default()
                .push((task.id.clone(), status));
        }
        for (node, statuses) in by_node {
            self.apply(Command::ReportTasks { node, statuses });
        }
    }

    fn running_per_node(&self) -> Vec<(String, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for task in self.state.tasks.values() {
            if task.desired == shoal_types::DesiredState::Running {
                *counts.entry(task.node.clone()).or_insert(0) += 1;
            }
        }
        counts.into_iter().collect()
    }
}

const WEB: &str = "name: web\nservices:\n  - name: hello\n    image: busybox\n    replicas: 3\n";
/// `WEB`, its tasks replaced at once when the spec changes.
const ALL_AT_ONCE: &str = "name: web\nservices:\n  - name: hello\n    image: busybox\n    replicas: 3\n    update: {parallelism: 0, order: stop-first}\n";

#[test]
fn places_every_replica_spread_over_nodes() {
    let mut cluster = Cluster::with_nodes(&["a", "b"]);
    cluster.put(WEB);
    let plan = cluster.schedule();
    assert_eq!(plan.place.len(), 3);
    assert_eq!(
        cluster.running_per_node(),
        vec![("a".into(), 2), ("b".into(), 1)]
    );
}

#[test]
fn a_scheduled_state_needs_no_further_plan() {
    let mut cluster = Cluster::with_nodes(&["a"]);
    cluster.put(WEB);
    cluster.schedule();
    assert!(reconcile(&cluster.state).changes_nothing(&cluster.state));
}

#[test]
fn scaling_down_stops_the_highest_slots() {
    let mut cluster = Cluster::with_nodes(&["a"]);
    cluster.put(WEB);
    cluster.schedule();
    cluster.put(&WEB.replace("replicas: 3", "replicas: 1"));
    let plan = cluster.schedule();
    assert!(plan.place.is_empty());
    let stopped: Vec<u32> = plan
        .stop
        .iter()
        .map(|id| cluster.state.tasks[id].slot)
        .collect();
    assert_eq!(stopped, vec![1, 2]);
    assert_eq!(
        plan.stop_why,
        vec![StopReason::ScaledDown; 2],
        "why travels with the plan"
    );
}

#[test]
fn a_changed_spec_replaces_every_task_when_its_update_takes_all_at_once() {
    let mut cluster = Cluster::with_nodes(&["a"]);
    cluster.put(ALL_AT_ONCE);
    cluster.schedule();
    cluster.put(&format!("{ALL_AT_ONCE}    env: {{COLOR: blue}}\n"));
    let plan = cluster.schedule();
    assert_eq!((plan.place.len(), plan.stop.len()), (3, 3));
    assert_eq!(plan.stop_why, vec![StopReason::SpecChanged; 3]);
    for placement in &plan.place {
        assert_eq!(placement.app_version, 2);
    }
}

#[test]
fn a_moved_image_replaces_pinned_tasks_and_spares_unpinned_ones() {
    let pinned = |digit: char| {
        let spec = parse_app(ALL_AT_ONCE.as_bytes()).expect("valid spec");
        let images = spec
            .services
            .iter()
            .map(|service| {
                let pin = PinnedImage {
                    digest: format!("sha256:{}", digit.to_string().repeat(64)),
                    source: PinSource::Registry,
                };
                (service.name.clone(), pin)
            })
            .collect();
        Command::PutAppPinned { spec, images }
    };
    // Tasks from before pins keep running when the app gets pinned.
    let mut cluster = Cluster::with_nodes(&["a"]);
    cluster.put(ALL_AT_ONCE);
    cluster.schedule();
    cluster.apply(pinned('1'));
    // No task to replace: the update is only marked done.
    let plan = reconcile(&cluster.state);
    assert!(plan.place.is_empty() && plan.stop.is_empty(), "{plan:?}");

    // Pinned tasks are replaced when the digest moves, kept when it does not.
    let mut cluster = Cluster::with_nodes(&["a"]);
    cluster.apply(pinned('1'));
    cluster.schedule();
    cluster.apply(pinned('1'));
    assert!(reconcile(&cluster.state).changes_nothing(&cluster.state));
    cluster.apply(pinned('2'));
    let plan = cluster.schedule();
    assert_eq!((plan.place.len(), plan.stop.len()), (3, 3));
    assert_eq!(plan.stop_why, vec![StopReason::ImageChanged; 3]);
}

#[test]
fn an_unchanged_spec_changes_nothing() {
    let mut cluster = Cluster::with_nodes(&["a"]);
    cluster.put(WEB);
    cluster.schedule();
    let spec = parse_app(WEB.as_bytes()).expect("valid");
    let outcome = cluster.apply(Command::PutApp { spec });
    assert_eq!(
        outcome,
        Outcome::AppPut {
            version: 1,
            changed: false
        }
    );
    assert!(reconcile(&cluster.state).changes_nothing(&cluster.state));
}

#[test]
fn removed_apps_are_stopped_then_forgotten() {
    let mut cluster = Cluster::with_nodes(&["a"]);
    cluster.put(WEB);
    cluster.schedule();
    cluster.apply(Command::RemoveApp { name: "web".into() });
    let plan = cluster.schedule();
    assert_eq!(plan.stop.len(), 3);
    assert_eq!(plan.stop_why, vec![StopReason::ServiceGone; 3]);
    assert!(
        plan.remove.is_empty(),
        "tasks are forgotten only once stopped"
    );
    cluster.report_all(TaskState::Stopped);
    let plan = cluster.schedule();
    assert_eq!(plan.remove.len(), 3);
    assert!(cluster.state.tasks.is_empty());
}

#[test]
fn without_a_live_node_replicas_stay_unplaced_with_a_reason() {
    let mut cluster = Cluster::with_nodes(&[]);
    cluster.put(WEB);
    let plan = reconcile(&cluster.state);
    assert!(plan.place.is_empty());
    assert_eq!(plan.unplaced.len(), 1);
    assert_eq!(plan.unplaced[0].count, 3);
    assert_eq!(
        plan.unplaced[0].why,
        Some(shoal_state::unplaced::UnplacedReason::NoNodes),
        "the reason is data"
    );
    assert_eq!(plan.unplaced[0].words(), "no node has joined the cluster");
    // Worded for a cluster that still writes format 1.
    let worded = plan.clone().worded();
    assert_eq!(worded.unplaced[0].reason, "no node has joined the cluster");
    assert_eq!(worded.unplaced[0].why, None);
    assert_eq!(Command::ApplyPlan { plan }.version_needed(), 2);
    assert_eq!(Command::ApplyPlan { plan: worded }.version_needed(), 1);
}

#[test]
fn a_stale_plan_is_rejected_where_it_no_longer_fits() {
    let mut cluster = Cluster::with_nodes(&["a"]);
    cluster.put(WEB);
    let stale = reconcile(&cluster.state);
    cluster.schedule();
    let outcome = cluster.apply(Command::ApplyPlan { plan: stale });
    match outcome {
        Outcome::PlanApplied {
            placed, rejected, ..
        } => {
            assert!(placed.is_empty());
            assert_eq!(rejected.len(), 3);
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    assert_eq!(cluster.state.tasks.len(), 3);
}

#[test]
fn status_reports_only_move_forward() {
    let mut cluster = Cluster::with_nodes(&["a"]);
    cluster.put(WEB);
    cluster.schedule();
    cluster.report_all(TaskState::Running);
    let id = cluster.state.tasks.keys().next().expect("a task").clone();
    let backwards = TaskStatus {
        attempt: 1,
        state: TaskState::Starting,
        ..cluster.state.tasks[&id].status.clone()
    };
    let outcome = cluster.apply(Command::ReportTasks {
        node: "a".into(),
        statuses: vec![(id.clone(), backwards)],
    });
    assert_eq!(
        outcome,
        Outcome::TasksReported {
            accepted: 0,
            stale: 1
        }
    );
    assert_eq!(cluster.state.tasks[&id].status.state, TaskState::Running);
}

#[test]
fn tasks_of_a_dead_node_are_placed_again_on_live_ones() {
    let mut cluster = Cluster::with_nodes(&["a", "b", "c"]);
    cluster.put(WEB);
    cluster.schedule();
    let on_b: Vec<String> = cluster.state.tasks_on("b").map(|t| t.id.clone()).collect();
    assert_eq!(on_b.len(), 1);
    cluster.apply(Command::SetNodeStatus {
        name: "b".into(),
        status: NodeStatus::Dead,
    });
    let plan = cluster.schedule();
    assert_eq!(plan.stop, on_b, "the lost task no longer wants to run");
    assert_eq!(plan.place.len(), 1);
    assert_ne!(plan.place[0].node, "b");
    // a and c score alike (one replica each): the tie goes to the node
    // that ranks first for the service.
    let key = crate::standby_key("web", "hello");
    let first = ["a", "c"]
        .into_iter()
        .max_by_key(|node| shoal_types::rendezvous_rank(&key, node))
        .expect("a node");
    assert_eq!(plan.place[0].node, first);
    let mut counts: Vec<usize> = cluster
        .running_per_node()
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    counts.sort();
    assert_eq!(counts, vec![1, 2]);
    // Back alive, b stops what it ran; the replacement stays.
    cluster.apply(Command::SetNodeStatus {
        name: "b".into(),
        status: NodeStatus::Alive,
    });
    assert!(reconcile(&cluster.state).place.is_empty());
}

#[test]
fn a_lost_replica_goes_to_the_node_holding_its_image_even_when_it_is_busier() {
    // Each case: how the standby's neighbour and the standby are loaded
    // (tasks that request nothing), and whether the standby should win.
    for (filler_on_standby, standby_wins) in [(0, true), (3, true)] {
        let mut cluster = Cluster::with_nodes(&["a", "b", "c"]);
        cluster.put("name: web\nservices: [{name: hello, image: busybox}]");
        cluster.schedule();
        let runner = cluster
            .state
            .tasks
            .values()
            .next()
            .expect("a task")
            .node
            .clone();
        let service = cluster.state.apps["web"].spec.services[0].clone();
        let standby = crate::standby(&cluster.state, "web", &service)
            .expect("a standby")
            .to_string();
        let other = ["a", "b", "c"]
            .into_iter()
            .find(|n| *n != runner && *n != standby)
            .expect("a third node");
        if filler_on_standby > 0 {
            cluster.put(&format!(
                "name: filler\nservices: [{{name: f, image: busybox, replicas: {filler_on_standby}, placement: {{constraints: [\"node.name == {standby}\"]}}}}]"
            ));
            cluster.schedule();
        }
        cluster.apply(Command::SetNodeStatus {
            name: runner.clone(),
            status: NodeStatus::Dead,
        });
        let plan = cluster.schedule();
        let placed: Vec<&str> = plan
            .place
            .iter()
            .filter(|p| p.app == "web")
            .map(|p| p.node.as_str())
            .collect();
        let expected = if standby_wins {
            standby.as_str()
        } else {
            other
        };
        assert_eq!(
            placed,
            [expected],
            "{filler_on_standby} filler tasks on the standby {standby}, {other} empty"
        );
    }
    // With `prepull: none` no node holds the image: the emptier node wins.
    let mut cluster = Cluster::with_nodes(&["a", "b"]);
    cluster.put("name: web\nservices: [{name: hello, image: busybox, prepull: none}]");
    cluster.schedule();
    let runner = cluster
        .state
        .tasks
        .values()
        .next()
        .expect("a task")
        .node
        .clone();
    let spare = if runner == "a" { "b" } else { "a" };
    cluster.put(&format!(
        "name: filler\nservices: [{{name: f, image: busybox, replicas: 3, placement: {{constraints: [\"node.name == {spare}\"]}}}}]"
    ));
    cluster.schedule();
    cluster.apply(Command::RegisterNode {
        node: Node::sample("c", "c:7950"),
    });
    cluster.apply(Command::SetNodeStatus {
        name: runner,
        status: NodeStatus::Dead,
    });
    let plan = cluster.schedule();
    let placed: Vec<&str> = plan
        .place
        .iter()
        .filter(|p| p.app == "web")
        .map(|p| p.node.as_str())
        .collect();
    assert_eq!(placed, ["c"]);
}

#[test]
fn a_stale_plan_never_publishes_one_host_port_twice_on_a_node() {
    let mut cluster = Cluster::with_nodes(&["a"]);
    let spec = |app: &str| {
        format!("name: {app}\nservices: [{{name: s, image: busybox, ports: [{{container_port: 80, host_port: 8080}}]}}]")
    };
    cluster.put(&spec("one"));
    let first = reconcile(&cluster.state);
    cluster.put(&spec("two"));
    // A plan for `two` made before `one` was placed thinks the port is free.
    let (stale, placed, rejected) = cluster.apply_stale_plan(first, "one");
    assert_eq!(stale, 1);
    assert!(placed.is_empty(), "{placed:?}");
    assert!(
        rejected.len() == 1 && rejected[0].contains("publishing host port 8080/tcp already"),
        "{rejected:?}"
    );
    // A fresh plan says why `two` waits.
    let plan = reconcile(&cluster.state);
    assert!(plan.place.is_empty(), "{plan:?}");
    assert!(
        plan.unplaced[0]
            .words()
            .contains("1 is publishing host port 8080/tcp already"),
        "{:?}",
        plan.unplaced
    );
}

#[test]
fn two_plans_from_one_snapshot_never_over_commit_a_node() {
    // One node with room for two tasks of 1 cpu; two apps scheduled from
    // the same snapshot each think they have it.
    let mut cluster = Cluster::with_nodes(&["a"]);
    cluster
        .put("name: one\nservices: [{name: s, image: busybox, replicas: 2, resources: {cpu: 1}}]");
    let first = reconcile(&cluster.state);
    cluster
        .put("name: two\nservices: [{name: s, image: busybox, replicas: 2, resources: {cpu: 1}}]");
    let second = reconcile(&cluster.state);
    assert_eq!(first.place.len(), 2);
    assert_eq!(
        second.place.iter().filter(|p| p.app == "two").count(),
        0,
        "{second:?}"
    );
    // Force the race: a plan for `two` made before `one` was placed.
    let (stale, placed, rejected) = cluster.apply_stale_plan(first, "one");
    assert_eq!(stale, 2);
    assert!(placed.is_empty(), "{placed:?}");
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(rejected[0].contains("less than 1 cpu free"), "{rejected:?}");
    assert!(cluster.state.overcommitted_nodes().is_empty());
}

#[test]
fn a_service_that_loosens_the_defaults_runs_only_where_the_operator_allows_it() {
    const HOSTNET: &str = "name: ops\nservices:\n  - {name: probe, image: busybox, replicas: 2, network: false, security: {host_network: true}}\n";
    let mut cluster = Cluster::with_nodes(&["a", "b", "c"]);
    cluster.put(HOSTNET);
    let plan = reconcile(&cluster.state);
    assert!(plan.place.is_empty(), "{:?}", plan.place);
    assert_eq!(
        plan.unplaced[0].words(),
        "0 of 3 nodes can take it: 3 do not allow tasks on the node's network (their agents lack --allow-host-network)"
    );
    assert_eq!(Command::ApplyPlan { plan }.version_needed(), 6);

    let allowing = |cluster: &mut Cluster, name: &str, host_network: bool| {
        let mut node = cluster.state.nodes[name].clone();
        node.allows.host_network = host_network;
        cluster.apply(Command::RegisterNode { node });
    };
    allowing(&mut cluster, "b", true);
    // A plan made now, applied after b's operator took the flag away, is
    // refused by the state machine.
    let stale = reconcile(&cluster.state);
    assert_eq!(stale.place.len(), 2);
    assert!(stale.place.iter().all(|placement| placement.node == "b"));
    allowing(&mut cluster, "b", false);
    let Outcome::PlanApplied {
        placed, rejected, ..
    } = cluster.apply(Command::ApplyPlan { plan: stale })
    else {
        panic!("plan outcome");
    };
    assert!(placed.is_empty(), "{placed:?}");
    assert_eq!(rejected.len(), 2);

    allowing(&mut cluster, "b", true);
    cluster.schedule();
    assert_eq!(cluster.running_per_node(), [("b".to_string(), 2)]);
    // A task that needs nothing is placed anywhere, as before.
    cluster.put(WEB);
    cluster.schedule();
    assert_eq!(cluster.state.tasks.len(), 5);

    // The flag taken away: its tasks are stopped, the others stay.
    allowing(&mut cluster, "b", false);
    let plan = reconcile(&cluster.state);
    assert_eq!(plan.stop.len(), 2, "{:?}", plan.stop);
    assert!(plan.stop.iter().all(|id| id.starts_with("ops.probe.")));
    assert!(plan
        .stop_why
        .iter()
        .all(|why| *why == StopReason::NotAllowed));
}

#[test]
fn what_a_service_needs_allowed_is_looked_at_even_after_a_service_with_the_same_rules() {
    // Same constraints and tolerations (none), planned in one run: the
    // first, which needs nothing, must not lend its nodes to the second.
    const PLAIN: &str = "name: aaa\nservices: [{name: s, image: busybox, replicas: 1}]\n";
    const ROOT: &str = "name: ops\nservices: [{name: root, image: busybox, replicas: 1, security: {privileged: true}}]\n";
    let mut cluster = Cluster::with_nodes(&["a", "b"]);
    cluster.put(PLAIN);
    cluster.put(ROOT);
    let plan = reconcile(&cluster.state);
    assert_eq!(plan.place.len(), 1, "{:?}", plan.place);
    assert_eq!(plan.place[0].app, "aaa");
    assert_eq!(plan.unplaced.len(), 1, "{:?}", plan.unplaced);
    assert!(
        plan.unplaced[0].words().contains("--allow-privileged"),
        "{}",
        plan.unplaced[0].words()
    );
}

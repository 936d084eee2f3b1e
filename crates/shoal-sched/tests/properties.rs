//! Properties of any plan, over random clusters and services: a fresh plan
//! applies without rejections, no node is over-committed, every task wants
//! to run only where its rules allow, spread limits hold, a global service
//! runs at most once per node, and each replicated service's tasks plus its
//! unplaced count make its replica count.

use std::collections::BTreeMap;

use proptest::prelude::*;
use shoal_state::{fit, Command, Entry, Outcome, State};
use shoal_types::{parse_app, DesiredState, Kind, Node, NodeStatus, Taint};

#[derive(Clone, Debug)]
struct NodeCase {
    cpus: u32,
    memory_gib: u64,
    zone: u8,
    tainted: bool,
    drained: bool,
    dead: bool,
}

#[derive(Clone, Debug)]
struct ServiceCase {
    kind: u8,
    replicas: u32,
    cpu_millis: u64,
    memory_mib: u64,
    zone: Option<u8>,
    max_per_node: Option<u32>,
    spread_zone: bool,
    tolerates: bool,
    priority: u32,
    strategy_spread: bool,
}

fn node_case() -> impl Strategy<Value = NodeCase> {
    (
        1u32..16,
        1u64..32,
        0u8..3,
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(cpus, memory_gib, zone, tainted, drained, dead)| NodeCase {
                cpus,
                memory_gib,
                zone,
                tainted,
                drained,
                dead,
            },
        )
}

fn service_case() -> impl Strategy<Value = ServiceCase> {
    (
        0u8..6,
        0u32..12,
        0u64..3000,
        0u64..4096,
        prop::option::weighted(0.3, 0u8..3),
        prop::option::weighted(0.3, 1u32..3),
        any::<bool>(),
        prop::bool::weighted(0.3),
        prop::sample::select(vec![0u32, 0, 10, 100]),
        any::<bool>(),
    )
        .prop_map(
            |(
                kind,
                replicas,
                cpu_millis,
                memory_mib,
                zone,
                max_per_node,
                spread_zone,
                tolerates,
                priority,
                strategy_spread,
            )| ServiceCase {
                kind,
                replicas,
                cpu_millis,
                memory_mib,
                zone,
                max_per_node,
                spread_zone,
                tolerates,
                priority,
                strategy_spread,
            },
        )
}

fn service_yaml(index: usize, case: &ServiceCase) -> String {
    let kind = match case.kind {
        0 => "global",
        1 => "batch",
        _ => "service",
    };
    let mut yaml = format!(
        "  - name: s{index}\n    image: busybox\n    kind: {kind}\n    replicas: {}\n    priority: {}\n",
        case.replicas, case.priority
    );
    if case.cpu_millis >= 100 || case.memory_mib >= 4 {
        yaml.push_str("    resources: {");
        if case.cpu_millis >= 100 {
            yaml.push_str(&format!("cpu: {}m", case.cpu_millis));
        }
        if case.memory_mib >= 4 {
            if case.cpu_millis >= 100 {
                yaml.push_str(", ");
            }
            yaml.push_str(&format!("memory: {}Mi", case.memory_mib));
        }
        yaml.push_str("}\n");
    }
    let mut constraints = Vec::new();
    if let Some(zone) = case.zone {
        constraints.push(format!("\"zone == z{zone}\""));
    }
    let mut spread = Vec::new();
    if let Some(max) = case.max_per_node {
        spread.push(format!("{{over: node.name, max_per: {max}}}"));
    }
    if case.spread_zone {
        spread.push("{over: zone}".to_string());
    }
    yaml.push_str(&format!(
        "    placement: {{strategy: {}, constraints: [{}], spread: [{}]}}\n",
        if case.strategy_spread {
            "spread"
        } else {
            "binpack"
        },
        constraints.join(", "),
        spread.join(", ")
    ));
    if case.tolerates {
        yaml.push_str("    tolerations: [\"special\"]\n");
    }
    yaml
}

struct Run {
    state: State,
    index: u64,
}

impl Run {
    fn apply(&mut self, command: Command) -> Outcome {
        self.index += 1;
        self.state
            .apply(self.index, &Entry::trusted(self.index, &command))
            .expect("applies")
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn plans_keep_the_rules(
        nodes in prop::collection::vec(node_case(), 0..12),
        services in prop::collection::vec(service_case(), 1..6),
    ) {
        let mut run = Run { state: State::default(), index: 0 };
        for (index, case) in nodes.iter().enumerate() {
            let name = format!("n{index}");
            run.apply(Command::RegisterNode { node: Node {
                name: name.clone(),
                addr: format!("{name}:7950"),
                os: "linux (6.1)".into(),
                arch: "x86_64".into(),
                cpus: case.cpus,
                memory_total_bytes: case.memory_gib << 30,
                cpu_allocatable_millis: u64::from(case.cpus) * 1000,
                memory_allocatable_bytes: case.memory_gib << 30,
                labels: [("zone".to_string(), format!("z{}", case.zone))].into(),
                started_at_ms: 0,
                status: NodeStatus::Alive,
                taints: Vec::new(),
                drain: false,
                subnet: None,
                allows: Default::default(),
            }});
            if case.tainted {
                let taint: Taint = "special=yes:NoSchedule".parse().expect("taint");
                run.apply(Command::TaintNode { name: name.clone(), taint });
            }
            if case.drained {
                run.apply(Command::SetNodeDrain { name: name.clone(), drain: true });
            }
            if case.dead {
                run.apply(Command::SetNodeStatus { name, status: NodeStatus::Dead });
            }
        }
        let mut yaml = "name: app\nservices:\n".to_string();
        for (index, case) in services.iter().enumerate() {
            yaml.push_str(&service_yaml(index, case));
        }
        let spec = parse_app(yaml.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        run.apply(Command::PutApp { spec });

        for _ in 0..5 {
            let plan = shoal_sched::reconcile(&run.state);
            prop_assert_eq!(plan.stop.len(), plan.stop_why.len(), "every stop says why");
            if plan.changes_nothing(&run.state) {
                break;
            }
            if let Outcome::PlanApplied { rejected, .. } = run.apply(Command::ApplyPlan { plan }) {
                prop_assert!(rejected.is_empty(), "fresh plan rejected: {:?}", rejected);
            }
            run.state.check_invariants().map_err(TestCaseError::fail)?;
            prop_assert!(run.state.overcommitted_nodes().is_empty());
        }
        prop_assert!(shoal_sched::reconcile(&run.state).changes_nothing(&run.state), "the scheduler settles");

        let state = &run.state;
        let mut per_node: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        let mut per_service: BTreeMap<&str, u32> = BTreeMap::new();
        for task in state.tasks.values().filter(|t| t.desired == DesiredState::Running) {
            let node = &state.nodes[&task.node];
            prop_assert!(fit::admits(node, &task.spec).is_ok(), "{} on {}: {:?}", task.id, task.node, fit::admits(node, &task.spec));
            *per_node.entry((task.service.as_str(), task.node.as_str())).or_default() += 1;
            *per_service.entry(task.service.as_str()).or_default() += 1;
        }
        let app = &state.apps["app"];
        for service in &app.spec.services {
            for ((name, _), count) in &per_node {
                if *name != service.name { continue; }
                if service.kind == Kind::Global {
                    prop_assert_eq!(*count, 1);
                }
                for spread in &service.placement.spread {
                    if let (Some(max), "node.name") = (spread.max_per, spread.over.as_str()) {
                        prop_assert!(*count as u32 <= max);
                    }
                }
            }
            if service.kind == Kind::Service {
                let unplaced: u32 = state.unplaced.iter().filter(|u| u.service == service.name).map(|u| u.count).sum();
                let placed = per_service.get(service.name.as_str()).copied().unwrap_or(0);
                prop_assert_eq!(placed + unplaced, service.replicas, "{}: placed {} unplaced {}", service.name, placed, unplaced);
            }
        }
    }
}

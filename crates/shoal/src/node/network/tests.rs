//! The network's pure parts over a small cluster's state: routes, DNS
//! records, a task's resolv.conf and the masquerade chain's name.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use shoal_net::subnet::Ipv4Cidr;
use shoal_state::{Command, Entry, State};
use shoal_types::{parse_app, Node, TaskState, TaskStatus};

use super::dns::{records_from_state, task_label};
use super::routes::{desired_routes, masquerade_chain};
use super::tasks::resolv_conf;

fn node(name: &str, addr: &str) -> Node {
    Node::sample(name, addr)
}

fn apply(state: &mut State, command: Command) {
    let index = state.applied_index + 1;
    state
        .apply(index, &Entry::trusted(index, &command))
        .expect("applies");
}

/// Three nodes (one on loopback) and an app of a networked service
/// with a named port, a second replica and a service without network.
fn cluster() -> State {
    let mut state = State::default();
    for (name, addr) in [
        ("a", "192.0.2.1:7950"),
        ("b", "127.0.0.2:7950"),
        ("c", "192.0.2.3:7950"),
    ] {
        apply(
            &mut state,
            Command::RegisterNode {
                node: node(name, addr),
            },
        );
    }
    let spec = parse_app(
        b"name: demo\nservices:\n  - {name: web, image: x, replicas: 3, ports: [{name: http, container_port: 80}, {container_port: 81}]}\n  - {name: host, image: x, network: false}\n",
    )
    .expect("spec");
    apply(&mut state, Command::PutApp { spec });
    let plan = shoal_sched::reconcile(&state);
    apply(&mut state, Command::ApplyPlan { plan });
    state
}

fn report(state: &mut State, task_id: &str, task_state: TaskState, address: Option<Ipv4Addr>) {
    let task = state.tasks[task_id].clone();
    let status = TaskStatus {
        attempt: 1,
        state: task_state,
        promise: shoal_types::Promise::Kept,
        message: String::new(),
        container_id: Some(task_id.into()),
        exit_code: None,
        restarts: 0,
        started_at_ms: Some(1),
        updated_at_ms: 1,
        address,
        health: None,
    };
    apply(
        state,
        Command::ReportTasks {
            node: task.node,
            statuses: vec![(task_id.to_string(), status)],
        },
    );
}

#[test]
fn routes_go_to_every_other_node_but_loopback_ones() {
    let state = cluster();
    let routes = desired_routes(&state, "a");
    let subnet = |name: &str| {
        Ipv4Cidr::parse(
            "subnet",
            state.nodes[name].subnet.as_deref().expect("subnet"),
        )
        .expect("cidr")
    };
    assert_eq!(
        routes,
        BTreeMap::from([(subnet("c"), Ipv4Addr::new(192, 0, 2, 3))]),
        "not to itself, not via 127.0.0.2"
    );
}

#[test]
fn records_name_running_networked_tasks_with_an_address() {
    let mut state = cluster();
    let mut web: Vec<String> = state
        .tasks
        .values()
        .filter(|task| task.service == "web")
        .map(|task| task.id.clone())
        .collect();
    web.sort();
    let host = state
        .tasks
        .values()
        .find(|task| task.service == "host")
        .map(|task| task.id.clone())
        .expect("host task");
    report(
        &mut state,
        &web[0],
        TaskState::Running,
        Some(Ipv4Addr::new(10, 42, 0, 2)),
    );
    report(
        &mut state,
        &web[1],
        TaskState::Running,
        Some(Ipv4Addr::new(10, 42, 1, 2)),
    );
    // Starting: no record yet. Exited: none any more.
    report(
        &mut state,
        &web[2],
        TaskState::Starting,
        Some(Ipv4Addr::new(10, 42, 2, 2)),
    );
    report(&mut state, &host, TaskState::Running, None);
    let rows = records_from_state(&state).rows("shoal");
    let listed: Vec<(String, &str, String)> = rows
        .into_iter()
        .map(|row| (row.name, row.record_type, row.value))
        .collect();
    let label = |id: &str| task_label(&state.tasks[id]);
    let (l0, l1) = (label(&web[0]), label(&web[1]));
    let mut expected = vec![
        (format!("{l0}.web.demo.shoal"), "A", "10.42.0.2".to_string()),
        (format!("{l1}.web.demo.shoal"), "A", "10.42.1.2".to_string()),
        (
            "_http._tcp.web.demo.shoal".into(),
            "SRV",
            format!("0 1 80 {l0}.web.demo.shoal"),
        ),
        (
            "_http._tcp.web.demo.shoal".into(),
            "SRV",
            format!("0 1 80 {l1}.web.demo.shoal"),
        ),
        ("web.demo.shoal".into(), "A", "10.42.0.2".into()),
        ("web.demo.shoal".into(), "A", "10.42.1.2".into()),
    ];
    expected.sort();
    assert_eq!(listed, expected);

    report(
        &mut state,
        &web[1],
        TaskState::Exited,
        Some(Ipv4Addr::new(10, 42, 1, 2)),
    );
    let rows = records_from_state(&state).rows("shoal");
    assert!(
        rows.iter()
            .all(|row| !row.value.contains("10.42.1.2") && !row.value.contains(&l1)),
        "{rows:?}"
    );

    // A task of a service with a check has a record only while its node
    // says it is healthy: not before its first check, nor once it failed.
    let listed = |state: &shoal_state::State| {
        records_from_state(state)
            .rows("shoal")
            .iter()
            .any(|row| row.value.contains("10.42.0.2"))
    };
    assert!(listed(&state), "no check: listed while it runs");
    if let Some(task) = state.tasks.get_mut(&web[0]) {
        let check: shoal_types::HealthSpec =
            serde_json::from_str(r#"{"tcp": {"port": 80}}"#).expect("a check");
        std::sync::Arc::make_mut(&mut task.spec).health = Some(check);
    }
    for (health, served) in [
        (None, false),
        (Some(shoal_types::Health::Starting), false),
        (Some(shoal_types::Health::Unhealthy), false),
        (Some(shoal_types::Health::Healthy), true),
    ] {
        if let Some(task) = state.tasks.get_mut(&web[0]) {
            task.status.health = health;
        }
        assert_eq!(listed(&state), served, "{health:?}");
    }
}

#[test]
fn a_task_finds_the_node_dns_and_its_app_first() {
    assert_eq!(
        resolv_conf(Ipv4Addr::new(10, 42, 3, 1), "demo", "shoal"),
        "nameserver 10.42.3.1\nsearch demo.shoal shoal\noptions ndots:2\n"
    );
    assert_eq!(masquerade_chain("shoal0"), "SHOAL-shoal0");
}

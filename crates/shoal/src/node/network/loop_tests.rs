//! The network loop over a fake host and an in-memory log: what it asks
//! of the host as nodes, tasks and settings change in the state.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_cluster::log::{MemoryLog, ReplicatedLog};
use shoal_net::dns::DnsRecords;
use shoal_net::subnet::Ipv4Cidr;
use shoal_state::{Command, State};
use shoal_types::{Node, NodeStatus, Promise, TaskState, TaskStatus};

use super::{run, HostNetwork, NetworkLoop};

const WAIT_MAX: Duration = Duration::from_secs(5);

/// What the loop asked of the host, in order.
#[derive(Clone, Debug, PartialEq)]
enum Call {
    PrepareBridge(Ipv4Cidr),
    SyncRoutes(Ipv4Cidr, BTreeMap<Ipv4Cidr, Ipv4Addr>),
    StartDns(Ipv4Cidr, String),
    /// The server's zone and the records as `name type value`.
    SetRecords(String, Vec<String>),
    /// The zone of the server stopped, if one ran.
    StopDns(Option<String>),
}

/// A host that does nothing but remember what it was asked.
#[derive(Default)]
struct FakeHost {
    calls: Mutex<Vec<Call>>,
    prepared: Mutex<Option<Ipv4Cidr>>,
    torn_down: AtomicBool,
    servers_started: AtomicU32,
}

/// A DNS server of the fake: its zone, and which one it is.
struct FakeDns {
    zone: String,
    serial: u32,
}

impl FakeHost {
    fn record(&self, call: Call) {
        self.calls.lock().expect("lock").push(call);
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }
}

impl HostNetwork for FakeHost {
    type Dns = FakeDns;

    fn is_torn_down(&self) -> bool {
        self.torn_down.load(Ordering::SeqCst)
    }

    fn prepared(&self) -> Option<Ipv4Cidr> {
        *self.prepared.lock().expect("lock")
    }

    fn prepare_bridge(&self, subnet: Ipv4Cidr) -> anyhow::Result<()> {
        self.record(Call::PrepareBridge(subnet));
        *self.prepared.lock().expect("lock") = Some(subnet);
        Ok(())
    }

    fn sync_routes(
        &self,
        cluster: Ipv4Cidr,
        wanted: &BTreeMap<Ipv4Cidr, Ipv4Addr>,
    ) -> anyhow::Result<()> {
        self.record(Call::SyncRoutes(cluster, wanted.clone()));
        Ok(())
    }

    async fn start_dns(&self, subnet: Ipv4Cidr, zone: &str) -> Option<FakeDns> {
        self.record(Call::StartDns(subnet, zone.to_string()));
        let serial = self.servers_started.fetch_add(1, Ordering::SeqCst);
        Some(FakeDns {
            zone: zone.to_string(),
            serial,
        })
    }

    fn set_records(&self, dns: &FakeDns, records: DnsRecords) -> anyhow::Result<()> {
        assert!(
            dns.serial < self.servers_started.load(Ordering::SeqCst),
            "records go to a server that was started"
        );
        let rows = records
            .rows(&dns.zone)
            .into_iter()
            .map(|row| format!("{} {} {}", row.name, row.record_type, row.value))
            .collect();
        self.record(Call::SetRecords(dns.zone.clone(), rows));
        Ok(())
    }

    async fn stop_dns(&self, dns: Option<FakeDns>) {
        self.record(Call::StopDns(dns.map(|dns| dns.zone)));
    }
}

fn node(name: &str, addr: &str) -> Node {
    Node::sample(name, addr)
}

fn register(log: &MemoryLog, name: &str, addr: &str) {
    log.apply(Command::RegisterNode {
        node: node(name, addr),
    });
}

/// The leader forgets a node: first it is dead, then gone.
fn forget(log: &MemoryLog, name: &str) {
    log.apply(Command::SetNodeStatus {
        name: name.into(),
        status: NodeStatus::Dead,
    });
    log.apply(Command::ForgetNode { name: name.into() });
}

fn subnet_of(log: &MemoryLog, name: &str) -> Ipv4Cidr {
    let text = log.read().nodes[name].subnet.clone().expect("a subnet");
    Ipv4Cidr::parse("subnet", &text).expect("a CIDR")
}

fn cluster_cidr(log: &MemoryLog) -> Ipv4Cidr {
    Ipv4Cidr::parse("cluster_cidr", &log.read().settings.cluster_cidr).expect("a CIDR")
}

/// Any change the loop has no host work for but the DNS records' rebuild:
/// each pass after it ends with a `SetRecords` while the server runs.
fn nudge(log: &MemoryLog) {
    log.apply(Command::SetSettings {
        voters_max: Some(3),
        cluster_cidr: None,
        node_prefix_len: None,
        dns_zone: None,
    });
}

/// The loop of node `n1` over `log` and a fake host, running.
fn start(log: &MemoryLog) -> (Arc<FakeHost>, tokio::task::JoinHandle<()>) {
    let host = Arc::new(FakeHost::default());
    let running = tokio::spawn(run(NetworkLoop {
        node: "n1".into(),
        log: log.clone(),
        host: host.clone(),
    }));
    (host, running)
}

/// Waits (at most `WAIT_MAX`) until the calls so far satisfy `check`.
async fn wait_for(host: &FakeHost, what: &str, check: impl Fn(&[Call]) -> bool) -> Vec<Call> {
    let started = Instant::now();
    loop {
        let calls = host.calls();
        if check(&calls) {
            return calls;
        }
        assert!(
            started.elapsed() < WAIT_MAX,
            "waited {WAIT_MAX:?} for {what}; calls: {calls:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count(calls: &[Call], wanted: impl Fn(&Call) -> bool) -> usize {
    calls.iter().filter(|call| wanted(call)).count()
}

fn is_set_records(call: &Call) -> bool {
    matches!(call, Call::SetRecords(..))
}

/// Waits for one more pass of the loop than `calls` show, with the DNS
/// server running: the records are rebuilt after each applied change.
async fn next_pass(host: &FakeHost, log: &MemoryLog, calls: &[Call]) -> Vec<Call> {
    let before = count(calls, is_set_records);
    nudge(log);
    wait_for(host, "the next pass", |calls| {
        count(calls, is_set_records) > before
    })
    .await
}

/// The node `n1`, registered (so holding a subnet), with its loop running
/// and its first pass done: DNS server started, routes synced.
async fn started_node() -> (MemoryLog, Arc<FakeHost>, tokio::task::JoinHandle<()>) {
    let log = MemoryLog::new("n1", State::default());
    register(&log, "n1", "192.0.2.1:7950");
    let (host, running) = start(&log);
    let calls = wait_for(&host, "the first pass", |calls| {
        calls
            .iter()
            .any(|call| matches!(call, Call::SyncRoutes(..)))
    })
    .await;
    assert!(calls.iter().any(is_set_records), "{calls:#?}");
    (log, host, running)
}

#[tokio::test]
async fn the_bridge_is_prepared_once_the_node_holds_a_subnet_and_again_when_it_changes() {
    let log = MemoryLog::new("n1", State::default());
    let (host, _running) = start(&log);
    let calls = wait_for(&host, "the first pass", |calls| {
        calls
            .iter()
            .any(|call| matches!(call, Call::SyncRoutes(..)))
    })
    .await;
    assert_eq!(
        calls,
        vec![Call::SyncRoutes(cluster_cidr(&log), BTreeMap::new())],
        "no subnet: no bridge, no DNS server; the masquerade rule is kept all the same"
    );

    register(&log, "n1", "192.0.2.1:7950");
    let first = subnet_of(&log, "n1");
    let calls = wait_for(&host, "the first records", |calls| {
        calls.iter().any(is_set_records)
    })
    .await;
    assert_eq!(
        calls[1..],
        [
            Call::PrepareBridge(first),
            Call::StopDns(None),
            Call::StartDns(first, "shoal".into()),
            Call::SetRecords("shoal".into(), Vec::new()),
        ]
    );

    let calls = next_pass(&host, &log, &calls).await;
    let calls = next_pass(&host, &log, &calls).await;
    assert_eq!(
        count(&calls, |call| matches!(call, Call::PrepareBridge(_))),
        1,
        "the same subnet is prepared once: {calls:#?}"
    );

    // Forgotten, its subnet taken by another node, it comes back with a new one.
    forget(&log, "n1");
    register(&log, "n2", "127.0.0.2:7950");
    register(&log, "n1", "192.0.2.1:7950");
    let second = subnet_of(&log, "n1");
    assert_ne!(first, second);
    let calls = wait_for(&host, "the bridge on the new subnet", |calls| {
        calls.contains(&Call::StartDns(second, "shoal".into()))
    })
    .await;
    let prepared: Vec<&Call> = calls
        .iter()
        .filter(|call| matches!(call, Call::PrepareBridge(_)))
        .collect();
    assert_eq!(
        prepared,
        [&Call::PrepareBridge(first), &Call::PrepareBridge(second)]
    );
    let moved = calls
        .iter()
        .position(|call| *call == Call::PrepareBridge(second))
        .expect("prepared");
    assert_eq!(
        calls[moved..moved + 3],
        [
            Call::PrepareBridge(second),
            Call::StopDns(Some("shoal".into())),
            Call::StartDns(second, "shoal".into()),
        ],
        "the DNS server moves to the new gateway"
    );
}

#[tokio::test]
async fn routes_follow_other_nodes_joining_and_being_forgotten() {
    let (log, host, _running) = started_node().await;
    let cluster = cluster_cidr(&log);
    let last_routes = |calls: &[Call]| {
        calls
            .iter()
            .rev()
            .find_map(|call| match call {
                Call::SyncRoutes(cidr, routes) => Some((*cidr, routes.clone())),
                _ => None,
            })
            .expect("routes synced")
    };
    assert_eq!(last_routes(&host.calls()), (cluster, BTreeMap::new()));

    register(&log, "n2", "192.0.2.2:7950");
    let n2 = subnet_of(&log, "n2");
    let with_n2 = BTreeMap::from([(n2, Ipv4Addr::new(192, 0, 2, 2))]);
    let wanted = Call::SyncRoutes(cluster, with_n2.clone());
    let calls = wait_for(&host, "a route to n2", |calls| calls.contains(&wanted)).await;

    // A node on loopback shares the host: no route to it, and nothing to sync.
    register(&log, "n3", "127.0.0.3:7950");
    assert!(log.read().nodes["n3"].subnet.is_some());
    let syncs = count(&calls, |call| matches!(call, Call::SyncRoutes(..)));
    let calls = next_pass(&host, &log, &calls).await;
    let calls = next_pass(&host, &log, &calls).await;
    assert_eq!(last_routes(&calls), (cluster, with_n2));
    assert_eq!(
        count(&calls, |call| matches!(call, Call::SyncRoutes(..))),
        syncs,
        "routes unchanged: not synced again before the resync interval: {calls:#?}"
    );

    forget(&log, "n2");
    let calls = wait_for(&host, "the route to n2 gone", |calls| {
        last_routes(calls) == (cluster, BTreeMap::new())
    })
    .await;
    assert!(!calls.iter().any(|call| matches!(
        call,
        Call::SyncRoutes(_, routes) if routes.values().any(|via| via.is_loopback())
    )));
}

#[tokio::test]
async fn dns_records_follow_a_task_running_with_an_address() {
    let (log, host, _running) = started_node().await;
    let spec =
        shoal_types::parse_app(b"name: demo\nservices: [{name: web, image: x, replicas: 1}]\n")
            .expect("spec");
    log.apply(Command::PutApp { spec });
    let plan = shoal_sched::reconcile(&log.read());
    log.apply(Command::ApplyPlan { plan });
    let task = log
        .read()
        .tasks
        .values()
        .find(|task| task.node == "n1")
        .map(|task| task.id.clone())
        .expect("a task placed on n1");
    let report = |state: TaskState| {
        let status = TaskStatus {
            attempt: 1,
            state,
            promise: Promise::Kept,
            message: String::new(),
            container_id: Some(task.clone()),
            exit_code: None,
            restarts: 0,
            started_at_ms: Some(1),
            updated_at_ms: 1,
            address: Some(Ipv4Addr::new(10, 42, 0, 2)),
            health: None,
        };
        log.apply(Command::ReportTasks {
            node: "n1".into(),
            statuses: vec![(task.clone(), status)],
        });
    };
    let last_records = |calls: &[Call]| {
        calls
            .iter()
            .rev()
            .find_map(|call| match call {
                Call::SetRecords(zone, rows) => Some((zone.clone(), rows.clone())),
                _ => None,
            })
            .expect("records set")
    };
    let service = "web.demo.shoal A 10.42.0.2".to_string();

    report(TaskState::Running);
    let calls = wait_for(&host, "the task's records", |calls| {
        last_records(calls).1.contains(&service)
    })
    .await;
    let (zone, rows) = last_records(&calls);
    assert_eq!(zone, "shoal");
    assert_eq!(rows.len(), 2, "the service's name and the task's: {rows:?}");
    assert!(rows
        .iter()
        .all(|row| row.ends_with(".web.demo.shoal A 10.42.0.2") || *row == service));

    report(TaskState::Exited);
    wait_for(&host, "the task's records gone", |calls| {
        last_records(calls) == ("shoal".into(), Vec::new())
    })
    .await;
}

#[tokio::test]
async fn a_zone_change_restarts_the_dns_server_with_the_new_zone() {
    let (log, host, _running) = started_node().await;
    let subnet = subnet_of(&log, "n1");
    let before = host.calls().len();
    log.apply(Command::SetSettings {
        voters_max: None,
        cluster_cidr: None,
        node_prefix_len: None,
        dns_zone: Some("cluster.internal".into()),
    });
    let calls = wait_for(&host, "records in the new zone", |calls| {
        calls[before..].iter().any(is_set_records)
    })
    .await;
    assert_eq!(
        calls[before..],
        [
            Call::StopDns(Some("shoal".into())),
            Call::StartDns(subnet, "cluster.internal".into()),
            Call::SetRecords("cluster.internal".into(), Vec::new()),
        ]
    );
}

#[tokio::test]
async fn the_loop_ends_after_teardown_and_stops_the_dns_server() {
    let (log, host, running) = started_node().await;
    host.torn_down.store(true, Ordering::SeqCst);
    nudge(&log);
    tokio::time::timeout(WAIT_MAX, running)
        .await
        .expect("the loop ends")
        .expect("the loop does not panic");
    assert_eq!(
        host.calls().last(),
        Some(&Call::StopDns(Some("shoal".into())))
    );
}

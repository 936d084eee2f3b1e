//! Scenario files: a cluster and apps in, the expected placement out.
//!
//! Each file in `tests/scenarios` describes nodes (resources, labels,
//! taints, drain, liveness), apps (as users write them) and optionally
//! `then` steps (taint, drain, kill or add a node, put an app) with their
//! own expectations. The scheduler runs until it has nothing left to do;
//! tasks it placed are reported running in between, as nodes would.

// The harness reads the scenario files; the crate itself does no I/O.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::Deserialize;
use shoal_state::{Command, Entry, Outcome, State};
use shoal_types::{parse_app, DesiredState, Node, NodeStatus, Taint, TaskState, TaskStatus};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    nodes: Vec<NodeSpec>,
    #[serde(default)]
    apps: Vec<serde_json::Value>,
    #[serde(default)]
    expect: Option<Expect>,
    #[serde(default)]
    then: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSpec {
    name: String,
    #[serde(default = "default_cpus")]
    cpus: u32,
    #[serde(default = "default_memory")]
    memory: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    taints: Vec<Taint>,
    #[serde(default)]
    drain: bool,
    #[serde(default)]
    dead: bool,
}

fn default_cpus() -> u32 {
    4
}
fn default_memory() -> String {
    "8Gi".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    #[serde(default)]
    taint: Option<(String, Taint)>,
    #[serde(default)]
    drain: Option<String>,
    #[serde(default)]
    kill: Option<String>,
    #[serde(default)]
    add: Option<NodeSpec>,
    #[serde(default)]
    put: Option<serde_json::Value>,
    /// Report these tasks' processes as exited with this code.
    #[serde(default)]
    exit: Option<(String, i32)>,
    expect: Expect,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `SERVICE: {NODE: COUNT}` of desired-running tasks (all apps).
    #[serde(default)]
    running: BTreeMap<String, BTreeMap<String, usize>>,
    /// `SERVICE: COUNT` of desired-running tasks, wherever they are.
    #[serde(default)]
    total: BTreeMap<String, usize>,
    /// `SERVICE: [COUNT, "words of the reason"]`.
    #[serde(default)]
    unplaced: BTreeMap<String, (u32, String)>,
    /// Node names whose tasks all belong to these services (others none).
    #[serde(default)]
    only: BTreeMap<String, Vec<String>>,
}

struct Run {
    state: State,
    index: u64,
}

impl Run {
    fn apply(&mut self, command: Command) -> Outcome {
        self.index += 1;
        let outcome = self
            .state
            .apply(self.index, &Entry::trusted(self.index * 10, &command))
            .unwrap_or_else(|error| panic!("command applies: {error}"));
        self.state.check_invariants().expect("invariants hold");
        assert!(
            self.state.overcommitted_nodes().is_empty(),
            "over-committed: {:?}",
            self.state.overcommitted_nodes()
        );
        outcome
    }

    fn add_node(&mut self, spec: &NodeSpec) {
        let memory = shoal_types::parse_memory_bytes(&spec.memory).expect("memory");
        let node = Node {
            name: spec.name.clone(),
            addr: format!("{}:7950", spec.name),
            os: "linux (6.1)".into(),
            arch: "x86_64".into(),
            cpus: spec.cpus,
            memory_total_bytes: memory,
            cpu_allocatable_millis: u64::from(spec.cpus) * 1000,
            memory_allocatable_bytes: memory,
            labels: spec.labels.clone(),
            started_at_ms: 0,
            status: NodeStatus::Alive,
            taints: Vec::new(),
            drain: false,
            subnet: None,
            allows: Default::default(),
        };
        self.apply(Command::RegisterNode { node });
        for taint in &spec.taints {
            self.apply(Command::TaintNode {
                name: spec.name.clone(),
                taint: taint.clone(),
            });
        }
        if spec.drain {
            self.apply(Command::SetNodeDrain {
                name: spec.name.clone(),
                drain: true,
            });
        }
        if spec.dead {
            self.apply(Command::SetNodeStatus {
                name: spec.name.clone(),
                status: NodeStatus::Dead,
            });
        }
    }

    fn put(&mut self, app: &serde_json::Value) {
        let spec = parse_app(app.to_string().as_bytes()).unwrap_or_else(|e| panic!("app: {e}"));
        self.apply(Command::PutApp { spec });
    }

    /// Schedules until the plan changes nothing, reporting placed tasks
    /// running and stopped ones stopped, as live nodes would.
    fn settle(&mut self) {
        for _ in 0..20 {
            let plan = shoal_sched::reconcile(&self.state);
            if plan.changes_nothing(&self.state) {
                return;
            }
            if let Outcome::PlanApplied { rejected, .. } = self.apply(Command::ApplyPlan { plan }) {
                assert!(rejected.is_empty(), "fresh plan rejected: {rejected:?}");
            }
            let mut reports: BTreeMap<String, Vec<(String, TaskStatus)>> = BTreeMap::new();
            for task in self.state.tasks.values() {
                let alive = self.state.nodes[&task.node].status == NodeStatus::Alive;
                let state = match task.desired {
                    DesiredState::Running if task.status.state == TaskState::Pending => {
                        TaskState::Running
                    }
                    DesiredState::Stopped if task.status.state != TaskState::Stopped => {
                        TaskState::Stopped
                    }
                    _ => continue,
                };
                if alive {
                    reports.entry(task.node.clone()).or_default().push((
                        task.id.clone(),
                        TaskStatus {
                            attempt: 1,
                            state,
                            ..task.status.clone()
                        },
                    ));
                }
            }
            for (node, statuses) in reports {
                self.apply(Command::ReportTasks { node, statuses });
            }
        }
        panic!("the scheduler did not settle in 20 rounds");
    }

    fn check(&self, expect: &Expect, what: &str) {
        let mut running: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for task in self.state.tasks.values() {
            if task.desired == DesiredState::Running {
                *running
                    .entry(task.service.clone())
                    .or_default()
                    .entry(task.node.clone())
                    .or_default() += 1;
            }
        }
        for (service, wanted) in &expect.running {
            let got = running.get(service).cloned().unwrap_or_default();
            assert_eq!(&got, wanted, "{what}: tasks of {service} per node");
        }
        for (service, wanted) in &expect.total {
            let got: usize = running.get(service).map_or(0, |nodes| nodes.values().sum());
            assert_eq!(got, *wanted, "{what}: tasks of {service}");
        }
        for (service, (count, words)) in &expect.unplaced {
            let found = self
                .state
                .unplaced
                .iter()
                .find(|unplaced| &unplaced.service == service)
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: {service} is not unplaced: {:?}",
                        self.state.unplaced
                    )
                });
            assert_eq!(found.count, *count, "{what}: unplaced {service}");
            assert!(
                found.words().contains(words.as_str()),
                "{what}: reason for {service} `{}` lacks `{words}`",
                found.words()
            );
        }
        if expect.unplaced.is_empty() {
            assert!(
                self.state.unplaced.is_empty(),
                "{what}: unexpected unplaced {:?}",
                self.state.unplaced
            );
        }
        for (node, services) in &expect.only {
            for task in self.state.tasks.values() {
                if &task.node == node && task.desired == DesiredState::Running {
                    assert!(
                        services.contains(&task.service),
                        "{what}: {} runs on {node}",
                        task.id
                    );
                }
            }
        }
    }
}

#[test]
fn scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .expect("scenario dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 8, "scenarios missing in {}", dir.display());
    for path in files {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let text = fs::read_to_string(&path).expect("read scenario");
        let scenario: Scenario =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut run = Run {
            state: State::default(),
            index: 0,
        };
        for node in &scenario.nodes {
            run.add_node(node);
        }
        for app in &scenario.apps {
            run.put(app);
        }
        run.settle();
        run.check(&scenario.expect.unwrap_or_default(), &name);
        for (number, step) in scenario.then.iter().enumerate() {
            let what = format!("{name} step {}", number + 1);
            if let Some((node, taint)) = &step.taint {
                run.apply(Command::TaintNode {
                    name: node.clone(),
                    taint: taint.clone(),
                });
            }
            if let Some(node) = &step.drain {
                run.apply(Command::SetNodeDrain {
                    name: node.clone(),
                    drain: true,
                });
            }
            if let Some(node) = &step.kill {
                run.apply(Command::SetNodeStatus {
                    name: node.clone(),
                    status: NodeStatus::Dead,
                });
            }
            if let Some(node) = &step.add {
                run.add_node(node);
            }
            if let Some(app) = &step.put {
                run.put(app);
            }
            if let Some((service, code)) = &step.exit {
                let mut reports: BTreeMap<String, Vec<(String, TaskStatus)>> = BTreeMap::new();
                for task in run.state.tasks.values() {
                    if &task.service == service && task.desired == DesiredState::Running {
                        reports.entry(task.node.clone()).or_default().push((
                            task.id.clone(),
                            TaskStatus {
                                state: if *code == 0 {
                                    TaskState::Exited
                                } else {
                                    TaskState::Failed
                                },
                                exit_code: Some(*code),
                                ..task.status.clone()
                            },
                        ));
                    }
                }
                for (node, statuses) in reports {
                    run.apply(Command::ReportTasks { node, statuses });
                }
            }
            run.settle();
            run.check(&step.expect, &what);
        }
    }
}

//! The chaos run: a seeded sequence of cluster events (apps applied,
//! scaled, updated and removed; nodes joining, dying, coming back, resized,
//! forgotten, tainted and drained), each step followed by the real scheduler
//! until it has nothing left to do, simulated nodes reporting what became of
//! their tasks, and the invariants of [`crate::check`]. At the end the
//! cluster is healed and every service must have its replicas.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{json, Value};
use shoal_sched::Options;
use shoal_state::{Command, Outcome, PLACEMENTS_PER_PLAN_MAX, REPORTS_PER_COMMAND_MAX};
use shoal_types::{
    parse_app, AppSpec, DesiredState, Kind, NodeStatus, Promise, Task, TaskState, TaskStatus,
};

use crate::check::{self, Previous};
use crate::cluster::{self, Cluster, NODE_SIZES};
use crate::rng::Rng;

/// Scheduler runs after one step's events at most; a scheduler that still
/// changes something after this many is reported as not settling.
pub const SETTLE_ROUNDS_MAX: u32 = 200;
/// Events in one step at most.
const EVENTS_PER_STEP_MAX: u64 = 3;
/// Virtual time between steps, and between scheduler rounds in a step.
const STEP_MS: u64 = 1_000;
const ROUND_MS: u64 = 50;
/// The taint some nodes start with and some services tolerate.
const INFRA_TAINT: &str = "dedicated=infra:NoSchedule";
/// Taints the chaos puts on and takes off nodes.
const CHAOS_TAINTS: [&str; 3] = [
    "chaos=on:NoSchedule",
    "evict=now:NoExecute",
    "old:PreferNoSchedule",
];

#[derive(Clone, Debug)]
pub struct ChaosConfig {
    pub nodes: usize,
    pub seed: u64,
    pub steps: u32,
}

/// The command that replays a run.
pub fn replay_command(config: &ChaosConfig) -> String {
    format!(
        "cargo run --release -p shoal-sim -- chaos --nodes {} --seed {} --steps {}",
        config.nodes, config.seed, config.steps
    )
}

/// A broken invariant (or a simulator failure), where it happened and how
/// to see it again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("chaos seed={seed} nodes={nodes} steps={steps}: FAILED at {at}: {what}\nreplay: {replay}")]
pub struct Violation {
    pub seed: u64,
    pub nodes: usize,
    pub steps: u32,
    /// `setup`, `step N` or `heal`.
    pub at: String,
    pub what: String,
    pub replay: String,
}

/// What a run did, counted; printed as one line that is the same for the
/// same seed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub seed: u64,
    pub nodes: usize,
    pub steps: u32,
    pub apps_created: u64,
    pub app_updates: u64,
    pub apps_removed: u64,
    pub kills: u64,
    pub revivals: u64,
    pub joins: u64,
    pub resizes: u64,
    pub forgets: u64,
    pub taints: u64,
    pub drains: u64,
    pub plans: u64,
    pub placements: u64,
    pub stops: u64,
    pub removals: u64,
    pub reports: u64,
    /// Reports the simulated nodes sent that the state had to drop (wrong
    /// node, status moving backwards), all dropped.
    pub bogus_reports: u64,
    pub preemptions_seen: u64,
    /// At the end, after healing.
    pub apps: usize,
    pub tasks: usize,
    pub unplaced: u64,
    pub state_hash: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chaos seed={} nodes={} steps={} apps={} tasks={} unplaced={} apps_created={} app_updates={} apps_removed={} \
             plans={} placements={} stops={} removals={} reports={} bogus_reports={} kills={} revivals={} joins={} \
             resizes={} forgets={} taints={} drains={} state_hash={:016x}",
            self.seed,
            self.nodes,
            self.steps,
            self.apps,
            self.tasks,
            self.unplaced,
            self.apps_created,
            self.app_updates,
            self.apps_removed,
            self.plans,
            self.placements,
            self.stops,
            self.removals,
            self.reports,
            self.bogus_reports,
            self.kills,
            self.revivals,
            self.joins,
            self.resizes,
            self.forgets,
            self.taints,
            self.drains,
            self.state_hash
        )
    }
}

/// Runs one chaos simulation.
pub fn run(config: &ChaosConfig) -> Result<Summary, Violation> {
    run_observed(config, |_, _| {})
}

/// Runs one chaos simulation, calling `on_step` after every step that
/// passed its checks (for progress output).
pub fn run_observed(
    config: &ChaosConfig,
    mut on_step: impl FnMut(u32, &Summary),
) -> Result<Summary, Violation> {
    let violation = |at: String, what: String| Violation {
        seed: config.seed,
        nodes: config.nodes,
        steps: config.steps,
        at,
        what,
        replay: replay_command(config),
    };
    if config.nodes == 0 {
        return Err(violation(
            "setup".into(),
            "--nodes must be at least 1".into(),
        ));
    }
    let mut chaos = Chaos::new(config);
    chaos
        .setup()
        .map_err(|what| violation("setup".into(), what))?;
    for step in 1..=config.steps {
        chaos
            .step()
            .map_err(|what| violation(format!("step {step}"), what))?;
        on_step(step, &chaos.summary);
    }
    chaos
        .heal()
        .map_err(|what| violation("heal".into(), what))?;
    Ok(chaos.finish())
}

struct Chaos {
    config: ChaosConfig,
    rng: Rng,
    cluster: Cluster,
    zones: u64,
    /// Serial of the next node to join.
    next_node: usize,
    next_app: u64,
    nodes_max: usize,
    apps_max: usize,
    previous: Previous,
    summary: Summary,
    /// Nodes report every change at once and nothing fails (while healing).
    quiet: bool,
}

/// A status report and whether the state must drop it.
struct Report {
    task: String,
    status: TaskStatus,
    bogus: bool,
}

impl Chaos {
    fn new(config: &ChaosConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let zones = rng.between(3, 5);
        Chaos {
            config: config.clone(),
            rng,
            cluster: Cluster::default(),
            zones,
            next_node: 0,
            next_app: 0,
            // Joins grow the cluster by a quarter at most.
            nodes_max: config.nodes + config.nodes / 4 + 1,
            apps_max: (config.nodes / 8).max(6),
            previous: Previous::new(),
            quiet: false,
            summary: Summary {
                seed: config.seed,
                nodes: config.nodes,
                steps: config.steps,
                ..Summary::default()
            },
        }
    }

    fn apply(&mut self, command: Command) -> Result<Outcome, String> {
        self.cluster
            .apply(command)
            .map_err(|error| error.to_string())
    }

    fn setup(&mut self) -> Result<(), String> {
        for _ in 0..self.config.nodes {
            self.join()?;
        }
        self.summary.joins = 0;
        self.settle()?;
        check::check_step(&self.cluster.state, &self.previous)?;
        self.previous = check::observe(&self.cluster.state);
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        self.cluster.now_ms += STEP_MS;
        let events = self.rng.between(1, EVENTS_PER_STEP_MAX);
        for _ in 0..events {
            self.event()?;
        }
        self.settle()?;
        check::check_step(&self.cluster.state, &self.previous)?;
        self.previous = check::observe(&self.cluster.state);
        Ok(())
    }

    /// Brings every node back, alive, untainted and undrained, lets the
    /// scheduler settle and checks that every service got its replicas.
    fn heal(&mut self) -> Result<(), String> {
        self.cluster.now_ms += STEP_MS;
        let nodes: Vec<(String, NodeStatus, Vec<String>, bool)> = self
            .cluster
            .state
            .nodes
            .values()
            .map(|node| {
                let mut keys: Vec<String> = node.taints.iter().map(|t| t.key.clone()).collect();
                keys.dedup();
                (node.name.clone(), node.status, keys, node.drain)
            })
            .collect();
        for (name, status, taint_keys, drain) in nodes {
            if status != NodeStatus::Alive {
                self.apply(Command::SetNodeStatus {
                    name: name.clone(),
                    status: NodeStatus::Alive,
                })?;
            }
            for key in taint_keys {
                self.apply(Command::UntaintNode {
                    name: name.clone(),
                    key,
                    effect: None,
                })?;
            }
            if drain {
                self.apply(Command::SetNodeDrain { name, drain: false })?;
            }
        }
        // Nodes now report everything, without lag or failures, so that
        // what the cluster wants stopped is stopped and forgotten.
        self.quiet = true;
        for _ in 0..SETTLE_ROUNDS_MAX {
            self.settle()?;
            if self.nodes_report()? == 0 {
                check::check_step(&self.cluster.state, &self.previous)?;
                return check::check_healed(&self.cluster.state);
            }
        }
        Err(format!(
            "nodes still had news after {SETTLE_ROUNDS_MAX} rounds of healing"
        ))
    }

    fn finish(mut self) -> Summary {
        let state = &self.cluster.state;
        self.summary.apps = state.apps.len();
        self.summary.tasks = state.tasks.len();
        self.summary.unplaced = state.unplaced.iter().map(|u| u64::from(u.count)).sum();
        self.summary.state_hash = crate::fnv1a(&state.snapshot());
        self.summary
    }

    fn event(&mut self) -> Result<(), String> {
        // Weights: apps change more often than nodes do, as in life.
        const WEIGHTS: [u64; 13] = [20, 15, 5, 7, 10, 10, 3, 3, 1, 6, 6, 4, 5];
        match self.rng.weighted(&WEIGHTS) {
            0 => self.create_app(),
            1 => self.scale_service(),
            2 => self.update_service(),
            3 => self.remove_app(),
            4 => self.kill_node(),
            5 => self.revive_node(),
            6 => self.join(),
            7 => self.resize_node(),
            8 => self.forget_node(),
            9 => self.taint_node(),
            10 => self.untaint_node(),
            11 => self.drain_node(true),
            _ => self.drain_node(false),
        }
    }

    // ----- apps -----

    fn create_app(&mut self) -> Result<(), String> {
        if self.cluster.state.apps.len() >= self.apps_max {
            return self.scale_service();
        }
        self.next_app += 1;
        let name = format!("app{:05}", self.next_app);
        let services = self.rng.between(1, 3);
        let services: Vec<Value> = (0..services).map(|at| self.random_service(at)).collect();
        let spec = parse(&json!({"name": name, "services": services}))?;
        self.apply(Command::PutApp { spec })?;
        self.summary.apps_created += 1;
        Ok(())
    }

    fn random_service(&mut self, at: u64) -> Value {
        let rng = &mut self.rng;
        let nodes = self.config.nodes as u64;
        let kind = ["service", "global", "batch"][rng.weighted(&[75, 8, 17])];
        let mut service = json!({
            "name": format!("s{at}"),
            "image": format!("busybox:1.{}", rng.below(3)),
            "kind": kind,
        });
        if kind != "global" {
            let replicas = match rng.weighted(&[80, 15, 5]) {
                0 => rng.between(1, 6),
                1 => rng.between(1, nodes / 5 + 1),
                // Big enough to fill the cluster and make tasks compete.
                _ => rng.between(nodes / 2 + 1, nodes * 2),
            };
            service["replicas"] = json!(replicas.min(u64::from(shoal_types::spec::REPLICAS_MAX)));
        }
        let (cpus, memories): (&[&str], &[&str]) = if kind == "global" {
            (&["", "100m"], &["", "64Mi"])
        } else {
            (
                &["", "100m", "250m", "500m", "1", "2"],
                &["", "64Mi", "256Mi", "1Gi", "2Gi"],
            )
        };
        let mut resources = json!({});
        if let Some(cpu) = rng.pick(cpus).filter(|cpu| !cpu.is_empty()) {
            resources["cpu"] = json!(cpu);
        }
        if let Some(memory) = rng.pick(memories).filter(|memory| !memory.is_empty()) {
            resources["memory"] = json!(memory);
        }
        service["resources"] = resources;
        let priority = [0, 100, 500, 1000][rng.weighted(&[70, 15, 10, 5])];
        service["priority"] = json!(priority);
        if kind == "batch" {
            service["command"] = json!(["true"]);
            service["restart"] = json!({"policy": "on-failure"});
        }
        let mut constraints = Vec::new();
        if rng.chance(150) {
            constraints.push(format!(
                "zone == {}",
                cluster::zone_name(rng.below(self.zones))
            ));
        }
        if rng.chance(50) {
            constraints.push("disk == ssd".to_string());
        }
        if rng.chance(50) {
            constraints.push(format!("zone != {}", cluster::zone_name(0)));
        }
        let mut spread = Vec::new();
        if rng.chance(200) {
            spread.push(json!({"over": "zone"}));
        }
        if rng.chance(100) {
            spread.push(json!({"over": "node.name", "max_per": rng.between(1, 3)}));
        }
        if rng.chance(50) {
            spread.push(json!({"over": "zone", "max_per": rng.between(1, nodes / 3 + 1)}));
        }
        let mut placement = json!({"constraints": constraints, "spread": spread});
        if rng.chance(150) {
            placement["strategy"] = json!("spread");
        }
        if rng.chance(100) {
            placement["affinities"] = json!([{"expr": "disk == ssd", "weight": 50}]);
        }
        service["placement"] = placement;
        let mut tolerations = Vec::new();
        if rng.chance(200) {
            tolerations.push(INFRA_TAINT);
        }
        if rng.chance(100) {
            tolerations.push("evict");
        }
        service["tolerations"] = json!(tolerations);
        // A few services publish a port from a small pool, so that they
        // compete for nodes.
        if rng.chance(60) {
            let (port, protocol) =
                [(8080, "tcp"), (8081, "tcp"), (8080, "udp")][rng.weighted(&[2, 1, 1])];
            service["ports"] =
                json!([{"container_port": 80, "host_port": port, "protocol": protocol}]);
        }
        service
    }

    /// An app picked at random, with its spec as JSON to edit.
    fn pick_app(&mut self) -> Option<(String, Value)> {
        let names: Vec<&String> = self.cluster.state.apps.keys().collect();
        let name = (*self.rng.pick(&names)?).clone();
        let spec = serde_json::to_value(&self.cluster.state.apps.get(&name)?.spec).ok()?;
        Some((name, spec))
    }

    /// A random app's spec and the index of one of its services, or None
    /// when there is no app.
    fn pick_service(&mut self) -> Result<Option<(Value, usize)>, String> {
        let Some((_, spec)) = self.pick_app() else {
            return Ok(None);
        };
        let Some(count) = spec["services"].as_array().map(Vec::len) else {
            return Err("an app spec serialized without services".into());
        };
        let at = self.rng.below(count as u64) as usize;
        Ok(Some((spec, at)))
    }

    fn scale_service(&mut self) -> Result<(), String> {
        let Some((mut spec, at)) = self.pick_service()? else {
            return self.create_app_if_room();
        };
        let service = &mut spec["services"][at];
        let replicas = service["replicas"].as_u64().unwrap_or(1);
        let nodes = self.config.nodes as u64;
        let scaled = match self.rng.weighted(&[45, 45, 10]) {
            0 => self.rng.between(0, replicas),
            1 => self.rng.between(replicas, replicas * 2 + 2),
            _ => self.rng.between(0, nodes),
        };
        service["replicas"] = json!(scaled.min(u64::from(shoal_types::spec::REPLICAS_MAX)));
        self.apply(Command::PutApp {
            spec: parse(&spec)?,
        })?;
        self.summary.app_updates += 1;
        Ok(())
    }

    /// Changes a service so that its tasks must be replaced (new image or
    /// new requests).
    fn update_service(&mut self) -> Result<(), String> {
        let Some((mut spec, at)) = self.pick_service()? else {
            return self.create_app_if_room();
        };
        let service = &mut spec["services"][at];
        if self.rng.chance(500) {
            service["image"] = json!(format!("busybox:1.{}", self.rng.below(5)));
        } else {
            let cpu = ["100m", "200m", "1"][self.rng.below(3) as usize];
            service["resources"]["cpu"] = json!(cpu);
        }
        self.apply(Command::PutApp {
            spec: parse(&spec)?,
        })?;
        self.summary.app_updates += 1;
        Ok(())
    }

    fn create_app_if_room(&mut self) -> Result<(), String> {
        if self.cluster.state.apps.len() < self.apps_max {
            self.create_app()
        } else {
            Ok(())
        }
    }

    fn remove_app(&mut self) -> Result<(), String> {
        let Some((name, _)) = self.pick_app() else {
            return Ok(());
        };
        self.apply(Command::RemoveApp { name })?;
        self.summary.apps_removed += 1;
        Ok(())
    }

    // ----- nodes -----

    fn pick_node(&mut self, wanted: impl Fn(&shoal_types::Node) -> bool) -> Option<String> {
        let names: Vec<&String> = self
            .cluster
            .state
            .nodes
            .values()
            .filter(|node| wanted(node))
            .map(|node| &node.name)
            .collect();
        self.rng.pick(&names).map(|name| (*name).clone())
    }

    fn join(&mut self) -> Result<(), String> {
        if self.cluster.state.nodes.len() >= self.nodes_max {
            return self.revive_node();
        }
        self.next_node += 1;
        let name = cluster::node_name(self.next_node);
        let (cpus, memory) = NODE_SIZES[self.rng.below(NODE_SIZES.len() as u64) as usize];
        let mut labels = BTreeMap::new();
        labels.insert(
            "zone".to_string(),
            cluster::zone_name(self.rng.below(self.zones)),
        );
        if self.rng.chance(300) {
            labels.insert("disk".to_string(), "ssd".to_string());
        }
        self.apply(Command::RegisterNode {
            node: cluster::node(&name, cpus, memory, labels),
        })?;
        if self.rng.chance(50) {
            self.apply(Command::TaintNode {
                name,
                taint: taint(INFRA_TAINT)?,
            })?;
        }
        self.summary.joins += 1;
        Ok(())
    }

    fn kill_node(&mut self) -> Result<(), String> {
        let Some(name) = self.pick_node(|node| node.status == NodeStatus::Alive) else {
            return Ok(());
        };
        let status = if self.rng.chance(200) {
            NodeStatus::Left
        } else {
            NodeStatus::Dead
        };
        self.apply(Command::SetNodeStatus { name, status })?;
        self.summary.kills += 1;
        Ok(())
    }

    fn revive_node(&mut self) -> Result<(), String> {
        let Some(name) = self.pick_node(|node| node.status != NodeStatus::Alive) else {
            return Ok(());
        };
        self.apply(Command::SetNodeStatus {
            name,
            status: NodeStatus::Alive,
        })?;
        self.summary.revivals += 1;
        Ok(())
    }

    /// The node registers again with another size, possibly smaller than
    /// what its tasks request: the scheduler must shed work from it.
    fn resize_node(&mut self) -> Result<(), String> {
        let Some(name) = self.pick_node(|_| true) else {
            return Ok(());
        };
        let Some(known) = self.cluster.state.nodes.get(&name) else {
            return Ok(());
        };
        let (cpus, memory) = NODE_SIZES[self.rng.below(NODE_SIZES.len() as u64) as usize];
        let mut node = cluster::node(&name, cpus, memory, known.labels.clone());
        node.status = known.status;
        node.started_at_ms = self.cluster.now_ms;
        self.apply(Command::RegisterNode { node })?;
        self.summary.resizes += 1;
        Ok(())
    }

    fn forget_node(&mut self) -> Result<(), String> {
        let Some(name) = self.pick_node(|node| node.status != NodeStatus::Alive) else {
            return Ok(());
        };
        self.apply(Command::ForgetNode { name })?;
        self.summary.forgets += 1;
        Ok(())
    }

    fn taint_node(&mut self) -> Result<(), String> {
        let Some(name) = self.pick_node(|_| true) else {
            return Ok(());
        };
        let text = CHAOS_TAINTS[self.rng.below(CHAOS_TAINTS.len() as u64) as usize];
        self.apply(Command::TaintNode {
            name,
            taint: taint(text)?,
        })?;
        self.summary.taints += 1;
        Ok(())
    }

    fn untaint_node(&mut self) -> Result<(), String> {
        let Some(name) = self.pick_node(|node| !node.taints.is_empty()) else {
            return Ok(());
        };
        let Some(key) = self
            .cluster
            .state
            .nodes
            .get(&name)
            .and_then(|node| node.taints.first())
            .map(|taint| taint.key.clone())
        else {
            return Ok(());
        };
        self.apply(Command::UntaintNode {
            name,
            key,
            effect: None,
        })?;
        Ok(())
    }

    fn drain_node(&mut self, drain: bool) -> Result<(), String> {
        let Some(name) = self.pick_node(|node| node.drain != drain) else {
            return Ok(());
        };
        self.apply(Command::SetNodeDrain { name, drain })?;
        if drain {
            self.summary.drains += 1;
        }
        Ok(())
    }

    // ----- scheduling and nodes at work -----

    /// Runs the scheduler and applies its plans until a plan changes
    /// nothing, with the nodes reporting in between.
    fn settle(&mut self) -> Result<(), String> {
        for _ in 0..SETTLE_ROUNDS_MAX {
            // Mostly whole plans; sometimes small ones, as a busy leader
            // would cut them, so that work is spread over several plans.
            let placements_max = if self.rng.chance(100) {
                self.rng.between(1, 50) as usize
            } else {
                PLACEMENTS_PER_PLAN_MAX
            };
            let options = Options {
                placements_max,
                seed: self.config.seed,
                ..Options::default()
            };
            let plan = shoal_sched::reconcile_with(&self.cluster.state, &options);
            if plan.changes_nothing(&self.cluster.state) {
                return Ok(());
            }
            self.cluster.now_ms += ROUND_MS;
            let stops = plan.stop.len();
            match self.apply(Command::ApplyPlan { plan })? {
                Outcome::PlanApplied {
                    placed,
                    stopped,
                    removed,
                    rejected,
                } => {
                    // The plan was made on exactly this state: anything the
                    // state refuses means the scheduler and the state's
                    // re-check disagree.
                    if !rejected.is_empty() {
                        return Err(format!(
                            "the state rejected {} parts of a plan made on it, e.g. {:?}",
                            rejected.len(),
                            &rejected[..rejected.len().min(3)]
                        ));
                    }
                    if stopped != stops {
                        return Err(format!(
                            "a plan asked {stops} stops but {stopped} tasks were stopped (a task stopped twice?)"
                        ));
                    }
                    self.summary.plans += 1;
                    self.summary.placements += placed.len() as u64;
                    self.summary.stops += stopped as u64;
                    self.summary.removals += removed as u64;
                }
                other => return Err(format!("applying a plan gave {other:?}")),
            }
            self.nodes_report()?;
        }
        Err(format!(
            "the scheduler still changed something after {SETTLE_ROUNDS_MAX} rounds"
        ))
    }

    /// Every alive node reports what became of its tasks: placed ones start
    /// (sometimes in stages), some fail and restart, batch tasks finish,
    /// unwanted ones stop. Some nodes lag a round. A few reports are bogus
    /// on purpose (late, backwards, or from the wrong node) and the state
    /// must drop exactly those.
    /// Returns how many honest reports were sent.
    fn nodes_report(&mut self) -> Result<usize, String> {
        let now_ms = self.cluster.now_ms;
        let mut reports: BTreeMap<String, Vec<Report>> = BTreeMap::new();
        let alive: Vec<String> = self
            .cluster
            .state
            .nodes
            .values()
            .filter(|node| node.status == NodeStatus::Alive)
            .map(|node| node.name.clone())
            .collect();
        for task in self.cluster.state.tasks.values() {
            if alive.binary_search(&task.node).is_err() || (!self.quiet && self.rng.chance(50)) {
                continue;
            }
            let Some(status) = next_status(task, now_ms, self.quiet, &mut self.rng) else {
                continue;
            };
            let list = reports.entry(task.node.clone()).or_default();
            list.push(Report {
                task: task.id.clone(),
                status,
                bogus: false,
            });
            if !self.quiet && self.rng.chance(10) && task.status.state.rank() > 0 {
                // A late report of an earlier state of this attempt.
                list.push(Report {
                    task: task.id.clone(),
                    status: TaskStatus {
                        state: TaskState::Pending,
                        ..task.status.clone()
                    },
                    bogus: true,
                });
            }
            if !self.quiet && self.rng.chance(5) && alive.len() > 1 {
                // Another node claims this task.
                let other = pick_other(&alive, &task.node, &mut self.rng);
                reports.entry(other).or_default().push(Report {
                    task: task.id.clone(),
                    status: TaskStatus {
                        attempt: task.status.attempt + 1,
                        state: TaskState::Running,
                        ..task.status.clone()
                    },
                    bogus: true,
                });
            }
        }
        let mut honest_total = 0;
        for (node, list) in reports {
            for chunk in list.chunks(REPORTS_PER_COMMAND_MAX) {
                let bogus = chunk.iter().filter(|report| report.bogus).count();
                let honest = chunk.len() - bogus;
                let statuses = chunk
                    .iter()
                    .map(|report| (report.task.clone(), report.status.clone()))
                    .collect();
                match self.apply(Command::ReportTasks {
                    node: node.clone(),
                    statuses,
                })? {
                    Outcome::TasksReported { accepted, stale } => {
                        if accepted != honest || stale != bogus {
                            return Err(format!(
                                "node {node} sent {honest} reports moving its tasks forward and {bogus} bogus ones; \
                                 the state accepted {accepted} and dropped {stale}"
                            ));
                        }
                        honest_total += honest;
                        self.summary.reports += accepted as u64;
                        self.summary.bogus_reports += stale as u64;
                    }
                    other => return Err(format!("reporting tasks gave {other:?}")),
                }
            }
        }
        Ok(honest_total)
    }
}

/// A node other than `own` among `alive` (which has at least two).
fn pick_other(alive: &[String], own: &str, rng: &mut Rng) -> String {
    let at = rng.below(alive.len() as u64) as usize;
    if alive[at] == own {
        alive[(at + 1) % alive.len()].clone()
    } else {
        alive[at].clone()
    }
}

/// What the node running `task` reports next, if anything changed.
/// When `quiet`, nothing fails.
fn next_status(task: &Task, now_ms: u64, quiet: bool, rng: &mut Rng) -> Option<TaskStatus> {
    let current = &task.status;
    let with = |attempt: u32, state: TaskState, promise: Promise, message: &str| TaskStatus {
        attempt,
        state,
        promise,
        message: message.to_string(),
        updated_at_ms: now_ms,
        ..current.clone()
    };
    match task.desired {
        DesiredState::Stopped => match current.state {
            TaskState::Stopped => None,
            state if state.rank() < TaskState::Stopping.rank() && rng.chance(300) => Some(with(
                current.attempt,
                TaskState::Stopping,
                Promise::Pending,
                "stopping",
            )),
            _ => Some(TaskStatus {
                exit_code: current.exit_code.or(Some(0)),
                ..with(
                    current.attempt,
                    TaskState::Stopped,
                    Promise::Kept,
                    "stopped on purpose",
                )
            }),
        },
        DesiredState::Running => match current.state {
            TaskState::Pending if rng.chance(300) => Some(with(
                1,
                if rng.chance(500) {
                    TaskState::Preparing
                } else {
                    TaskState::Starting
                },
                Promise::Pending,
                "starting",
            )),
            TaskState::Pending | TaskState::Preparing | TaskState::Starting => Some(TaskStatus {
                container_id: Some(task.id.clone()),
                started_at_ms: Some(now_ms),
                ..with(
                    current.attempt.max(1),
                    TaskState::Running,
                    Promise::Kept,
                    "running",
                )
            }),
            TaskState::Running if task.spec.kind == Kind::Batch && rng.chance(300) => {
                Some(TaskStatus {
                    exit_code: Some(0),
                    ..with(
                        current.attempt,
                        TaskState::Exited,
                        Promise::Kept,
                        "exited with 0",
                    )
                })
            }
            TaskState::Running if task.spec.kind != Kind::Batch && !quiet && rng.chance(10) => {
                Some(TaskStatus {
                    exit_code: Some(137),
                    ..with(
                        current.attempt,
                        TaskState::Failed,
                        Promise::Broken,
                        "killed",
                    )
                })
            }
            // A service restarts what failed, as a new attempt.
            TaskState::Failed if task.spec.kind != Kind::Batch => Some(TaskStatus {
                restarts: current.restarts + 1,
                exit_code: None,
                started_at_ms: Some(now_ms),
                ..with(
                    current.attempt + 1,
                    TaskState::Running,
                    Promise::Kept,
                    "restarted",
                )
            }),
            _ => None,
        },
    }
}

fn parse(spec: &Value) -> Result<AppSpec, String> {
    parse_app(spec.to_string().as_bytes())
        .map_err(|error| format!("generated spec is invalid: {error}"))
}

fn taint(text: &str) -> Result<shoal_types::Taint, String> {
    text.parse()
}

//! The chaos run: a seeded sequence of cluster events (apps applied,
//! scaled, updated and removed; nodes joining, dying, coming back, resized,
//! forgotten, tainted and drained), each step followed by the real scheduler
//! until it has nothing left to do, simulated nodes reporting what became of
//! their tasks, and the invariants of [`crate::check`]. At the end the
//! cluster is healed and every service must have its replicas.
//!
//! - `apps` and `nodes`: the events a step draws, on apps and on nodes.
//! - `reports`: the simulated nodes reporting what became of their tasks.
//! - `summary`: what a run did, counted, as one line.

mod apps;
mod nodes;
mod reports;
mod summary;

use shoal_sched::Options;
use shoal_state::{Command, Outcome, PLACEMENTS_PER_PLAN_MAX};
use shoal_types::NodeStatus;

use crate::check::{self, Previous};
use crate::cluster::Cluster;
use crate::rng::Rng;

pub use summary::Summary;

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
}

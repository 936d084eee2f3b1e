//! The chaos run: a seeded sequence of cluster events (apps applied,
//! scaled, updated and removed; nodes joining, going down, suspected,
//! coming back, resized, forgotten, tainted and drained), each step
//! followed by the leader's duties, the real scheduler until it has nothing
//! left to do, and the simulated nodes' agents keeping their promises and
//! reporting, with the invariants of [`crate::check`] checked. At the end
//! the cluster is healed and every service must have its replicas.
//!
//! - `apps` and `nodes`: the events a step draws, on apps and on nodes.
//! - `leader`: gossip's records of the nodes, the consensus's membership,
//!   and the leader's duties (`shoal_sched::duties`) carried out.
//! - `agents`: each node's real `shoal_agent::Reconciler` over a simulated
//!   container table.
//! - `reports`: what the agents report, proposed, with bogus reports mixed in.
//! - `summary`: what a run did, counted, as one line.

mod agents;
mod apps;
mod leader;
mod nodes;
mod reports;
mod summary;

use std::collections::{BTreeMap, BTreeSet};

use shoal_sched::duties::{Consensus, DutyBounds, Liveness};
use shoal_sched::Options;
use shoal_state::{Command, Outcome, PLACEMENTS_PER_PLAN_MAX};

use agents::SimNode;

use crate::check::{self, Previous};
use crate::cluster::Cluster;
use crate::rng::Rng;

pub use summary::Summary;

/// Scheduler runs after one step's events at most; a scheduler that still
/// changes something after this many is reported as not settling. A
/// rolling update takes about three runs a batch, and a service scaled up
/// after it was made may roll 120 tasks one at a time.
pub const SETTLE_ROUNDS_MAX: u32 = 600;
/// Events in one step at most.
const EVENTS_PER_STEP_MAX: u64 = 3;
/// Virtual time between steps, and between scheduler rounds in a step.
const STEP_MS: u64 = 1_000;
const ROUND_MS: u64 = 50;
/// Time let pass while a rolling update waits and nothing else happens:
/// the `monitor` the simulated services roll out with.
const ROLLING_WAIT_MS: u64 = 1_000;
/// Such waits in a row at most: a new task serves within one, unless its
/// node does not work.
const ROLLING_WAITS_MAX: u32 = 3;
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
    /// Every node gossip knows, by name: its facts, gossip's record, and
    /// its agent with its containers.
    nodes: BTreeMap<String, SimNode>,
    consensus: Consensus,
    bounds: DutyBounds,
    /// Serial of the next node to join.
    next_node: usize,
    next_app: u64,
    nodes_max: usize,
    apps_max: usize,
    previous: Previous,
    summary: Summary,
    /// Nothing fails, lags or is lost, and no report is bogus (while healing).
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
            nodes: BTreeMap::new(),
            consensus: Consensus {
                leader: 0,
                voters: BTreeSet::new(),
                members: BTreeSet::new(),
            },
            bounds: leader::bounds(),
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
        self.found_consensus()?;
        self.lead()?;
        self.nodes_work()?;
        self.settle()?;
        check::check_step(&self.cluster.state, &self.previous)?;
        self.previous = check::observe(&self.cluster.state);
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        self.cluster.now_ms += STEP_MS;
        self.gossip();
        let events = self.rng.between(1, EVENTS_PER_STEP_MAX);
        for _ in 0..events {
            self.event()?;
        }
        self.lead()?;
        // Every node's agent takes a turn each step, whether or not the
        // scheduler changes anything: time moves, containers exit.
        self.nodes_work()?;
        self.settle()?;
        check::check_step(&self.cluster.state, &self.previous)?;
        self.previous = check::observe(&self.cluster.state);
        Ok(())
    }

    /// Brings every node back up, alive in gossip, untainted and
    /// undrained, lets the leader, the scheduler and the agents settle and
    /// checks that every service got its replicas and the consensus its
    /// voters.
    fn heal(&mut self) -> Result<(), String> {
        self.cluster.now_ms += STEP_MS;
        let down: Vec<String> = self
            .nodes
            .values()
            .filter(|node| !node.up)
            .map(|node| node.facts.name.clone())
            .collect();
        for name in down {
            self.bring_back(&name, false)?;
        }
        self.gossip();
        let nodes: Vec<(String, Vec<String>, bool)> = self
            .cluster
            .state
            .nodes
            .values()
            .map(|node| {
                let mut keys: Vec<String> = node.taints.iter().map(|t| t.key.clone()).collect();
                keys.dedup();
                (node.name.clone(), keys, node.drain)
            })
            .collect();
        for (name, taint_keys, drain) in nodes {
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
        // Agents now act and report at once, without failures, so that
        // what the cluster wants stopped is stopped and forgotten.
        self.quiet = true;
        for _ in 0..SETTLE_ROUNDS_MAX {
            self.lead()?;
            self.settle()?;
            if self.nodes_work()? == 0 {
                check::check_step(&self.cluster.state, &self.previous)?;
                check::check_healed(&self.cluster.state)?;
                if let Some(node) = self
                    .cluster
                    .state
                    .nodes
                    .values()
                    .find(|node| node.status != shoal_types::NodeStatus::Alive)
                {
                    return Err(format!(
                        "after healing, node {} is still {} although gossip sees every node alive",
                        node.name,
                        node.status.as_str()
                    ));
                }
                let alive: BTreeSet<u64> = self
                    .nodes
                    .values()
                    .filter(|node| node.up && node.member.status == Liveness::Alive)
                    .map(|node| node.member.raft_id)
                    .collect();
                return check::check_healed_consensus(
                    &self.consensus,
                    self.cluster.state.settings.voters_max,
                    &alive,
                );
            }
        }
        Err(format!(
            "nodes still had work after {SETTLE_ROUNDS_MAX} rounds of healing"
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
        const WEIGHTS: [u64; 15] = [20, 15, 5, 7, 10, 10, 3, 3, 1, 6, 6, 4, 5, 3, 1];
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
            12 => self.drain_node(false),
            13 => self.suspect_node(),
            _ => self.set_voters_max(),
        }
    }

    /// Whether a rolling update is under way: a task meant to run has an
    /// older spec than its service's, in an app not paused.
    fn rolling(&self) -> bool {
        let state = &self.cluster.state;
        state.tasks.values().any(|task| {
            task.desired == shoal_types::DesiredState::Running
                && state.apps.get(&task.app).is_some_and(|app| {
                    let paused = app
                        .rollout_mark()
                        .is_some_and(|mark| mark.state == shoal_state::history::MarkState::Paused);
                    !paused
                        && app.spec.services.iter().any(|service| {
                            service.name == task.service && !task.spec.same_task_as(service)
                        })
                })
        })
    }

    /// Runs the scheduler and applies its plans until a plan changes
    /// nothing, with the nodes' agents at work in between.
    fn settle(&mut self) -> Result<(), String> {
        let mut waits = 0;
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
                now_ms: self.cluster.now_ms,
                ..Options::default()
            };
            let plan = shoal_sched::reconcile_with(&self.cluster.state, &options);
            if plan.changes_nothing(&self.cluster.state) {
                // A rolling update waits for its new tasks to serve for
                // their `monitor` (1s here): time goes on for it, unless it
                // waits for something else (a node that does not work).
                if waits >= ROLLING_WAITS_MAX || !self.rolling() {
                    return Ok(());
                }
                waits += 1;
                self.cluster.now_ms += ROLLING_WAIT_MS;
                self.nodes_work()?;
                continue;
            }
            waits = 0;
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
            self.nodes_work()?;
        }
        Err(format!(
            "the scheduler still changed something after {SETTLE_ROUNDS_MAX} rounds"
        ))
    }
}

//! The scheduling benchmark: many tasks on many simulated nodes, through
//! the real path: `reconcile_with` makes a plan, `State::apply` re-checks
//! and records it, until nothing more is placed. The caller times the
//! phases through [`Mark`]s; this module never reads a clock.

use std::collections::BTreeMap;

use serde_json::json;
use shoal_sched::Options;
use shoal_state::{Command, Outcome, State, PLACEMENTS_PER_PLAN_MAX};
use shoal_types::{parse_app, spec::REPLICAS_MAX};

use crate::cluster::{self, Cluster};
use crate::rng::Rng;
use crate::SimError;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const ZONES: u64 = 5;
/// Requests of the benchmark's services, drawn uniformly.
const CPU_REQUESTS_MILLIS: [u64; 4] = [100, 250, 500, 1000];
const MEMORY_REQUESTS_MIB: [u64; 5] = [64, 128, 256, 512, 1024];
/// Node sizes relative to the mean, in percent (mean 120 / 120).
const NODE_SIZE_PERCENT: [u64; 5] = [50, 100, 100, 150, 200];
/// Room nodes have beyond the mean request of the tasks, in percent: the
/// constrained services crowd some zones and nodes.
const HEADROOM_PERCENT: u64 = 160;
/// Replicas of one benchmark service.
const REPLICAS_LOW: u64 = 100;
const REPLICAS_HIGH: u64 = 1000;
/// The benchmark's sizes at most, so that a typo does not eat the machine.
pub const NODES_MAX: usize = 1_000_000;
/// Tasks (replicas over all apps) a benchmark run places at most.
pub const TASKS_MAX: u64 = 20_000_000;
const TAINT: &str = "dedicated=batch:NoSchedule";

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub nodes: usize,
    pub tasks: u64,
    pub seed: u64,
}

/// A point in the run, for the caller to time the phases between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    SchedulerStarts {
        round: u32,
    },
    ApplyStarts {
        round: u32,
        planned: usize,
    },
    RoundEnds {
        round: u32,
        placed: usize,
        placed_total: u64,
    },
    /// The last plan placed nothing (or the round bound was reached).
    Done,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub placed: u64,
    /// Placements the state refused though the plan was made on it.
    pub rejected: u64,
    pub rounds: u32,
    /// Tasks the last plan reported as fitting nowhere.
    pub unplaced_reported: u64,
}

pub struct Bench {
    cluster: Cluster,
    options: Options,
    pub config: BenchConfig,
    pub services: usize,
}

impl Bench {
    /// Registers the nodes (mixed sizes, 5 zones, some `disk=ssd`, about 5%
    /// tainted) and puts apps whose replicas total `config.tasks`.
    pub fn build(config: &BenchConfig) -> Result<Bench, SimError> {
        if config.nodes == 0 || config.nodes > NODES_MAX {
            return Err(SimError::Config(format!(
                "--nodes must be 1 to {NODES_MAX}, got {}",
                config.nodes
            )));
        }
        if config.tasks > TASKS_MAX {
            return Err(SimError::Config(format!(
                "--tasks must be at most {TASKS_MAX}, got {}",
                config.tasks
            )));
        }
        let mut rng = Rng::new(config.seed);
        let mut cluster = Cluster::default();
        let nodes = config.nodes as u64;
        let tasks_per_node = config.tasks.div_ceil(nodes);
        let mean_cpu = CPU_REQUESTS_MILLIS.iter().sum::<u64>() / CPU_REQUESTS_MILLIS.len() as u64;
        let mean_memory =
            MEMORY_REQUESTS_MIB.iter().sum::<u64>() * MIB / MEMORY_REQUESTS_MIB.len() as u64;
        let mean_size: u64 = NODE_SIZE_PERCENT.iter().sum::<u64>() / NODE_SIZE_PERCENT.len() as u64;
        let cpu_base = (tasks_per_node * mean_cpu * HEADROOM_PERCENT / 100).max(32_000);
        let memory_base = (tasks_per_node * mean_memory * HEADROOM_PERCENT / 100).max(64 * GIB);
        let taint: shoal_types::Taint = TAINT.parse().map_err(SimError::Config)?;
        for number in 1..=config.nodes {
            let name = cluster::node_name(number);
            let size = NODE_SIZE_PERCENT[rng.below(NODE_SIZE_PERCENT.len() as u64) as usize];
            let cpus = (cpu_base * size / mean_size).div_ceil(1000);
            let memory = memory_base / mean_size * size;
            let mut labels = BTreeMap::new();
            labels.insert("zone".to_string(), cluster::zone_name(rng.below(ZONES)));
            if rng.chance(300) {
                labels.insert("disk".to_string(), "ssd".to_string());
            }
            let cpus = u32::try_from(cpus).map_err(|_| {
                SimError::Config(format!("{cpus} cpus per node: too many tasks per node"))
            })?;
            cluster.apply(Command::RegisterNode {
                node: cluster::node(&name, cpus, memory, labels),
            })?;
            if rng.chance(50) {
                cluster.apply(Command::TaintNode {
                    name,
                    taint: taint.clone(),
                })?;
            }
        }
        let mut left = config.tasks;
        let mut services = 0;
        // Each app is one service; bounded by the task count (≥ 1 replica each).
        while left > 0 {
            services += 1;
            let replicas = rng
                .between(REPLICAS_LOW, REPLICAS_HIGH)
                .min(left)
                .min(u64::from(REPLICAS_MAX));
            left -= replicas;
            let mut service = json!({
                "name": "web",
                "image": "busybox",
                "replicas": replicas,
                "resources": {
                    "cpu": format!("{}m", CPU_REQUESTS_MILLIS[rng.below(CPU_REQUESTS_MILLIS.len() as u64) as usize]),
                    "memory": format!("{}Mi", MEMORY_REQUESTS_MIB[rng.below(MEMORY_REQUESTS_MIB.len() as u64) as usize]),
                },
            });
            let mut constraints = Vec::new();
            if rng.chance(200) {
                constraints.push(format!("zone == {}", cluster::zone_name(rng.below(ZONES))));
            } else if rng.chance(50) {
                constraints.push("disk == ssd".to_string());
            }
            let mut spread = Vec::new();
            match rng.weighted(&[75, 20, 3, 2]) {
                0 => {}
                1 => spread.push(json!({"over": "zone"})),
                // Limits only where all nodes are eligible, so that every
                // task has a place: few per node (the scheduler and the
                // state count per node), or at most 40% in a zone.
                2 if constraints.is_empty() => {
                    spread.push(json!({"over": "node.name", "max_per": 2 * replicas / nodes + 2}))
                }
                3 if constraints.is_empty() => {
                    spread.push(json!({"over": "zone", "max_per": 2 * replicas / 5 + 1}))
                }
                _ => spread.push(json!({"over": "zone"})),
            }
            let mut placement = json!({"constraints": constraints, "spread": spread});
            if rng.chance(200) {
                placement["strategy"] = json!("spread");
            }
            service["placement"] = placement;
            if rng.chance(50) {
                service["tolerations"] = json!([TAINT]);
            }
            if rng.chance(100) {
                service["priority"] = json!(100);
            }
            let app = json!({"name": format!("app{services:06}"), "services": [service]});
            let spec = parse_app(app.to_string().as_bytes())
                .map_err(|error| SimError::Spec(error.to_string()))?;
            cluster.apply(Command::PutApp { spec })?;
        }
        Ok(Bench {
            cluster,
            options: Options {
                placements_max: PLACEMENTS_PER_PLAN_MAX,
                seed: config.seed,
                ..Options::default()
            },
            config: config.clone(),
            services,
        })
    }

    pub fn state(&self) -> &State {
        &self.cluster.state
    }

    /// Schedules and applies plans until one places nothing, marking each
    /// phase for the caller's stopwatch.
    pub fn run(&mut self, mut mark: impl FnMut(&Mark)) -> Result<Totals, SimError> {
        // Each round places up to a plan's worth; a few more rounds for
        // what crowds out and the final empty plan.
        let rounds_max = self.config.tasks / PLACEMENTS_PER_PLAN_MAX as u64 + 20;
        let mut totals = Totals::default();
        for round in 1..=u32::try_from(rounds_max).unwrap_or(u32::MAX) {
            totals.rounds = round;
            mark(&Mark::SchedulerStarts { round });
            let plan = shoal_sched::reconcile_with(&self.cluster.state, &self.options);
            totals.unplaced_reported = plan.unplaced.iter().map(|u| u64::from(u.count)).sum();
            if plan.place.is_empty() {
                break;
            }
            mark(&Mark::ApplyStarts {
                round,
                planned: plan.place.len(),
            });
            let placed = match self.cluster.apply(Command::ApplyPlan { plan })? {
                Outcome::PlanApplied {
                    placed, rejected, ..
                } => {
                    totals.rejected += rejected.len() as u64;
                    placed.len()
                }
                _ => 0,
            };
            totals.placed += placed as u64;
            mark(&Mark::RoundEnds {
                round,
                placed,
                placed_total: totals.placed,
            });
            if placed == 0 {
                break;
            }
        }
        mark(&Mark::Done);
        Ok(totals)
    }
}

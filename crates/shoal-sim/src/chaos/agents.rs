//! The simulated nodes at work: each runs the real promise keeper,
//! `shoal_agent::Reconciler`, over a simulated container table in virtual
//! time, as `shoal`'s `node/keeper.rs` runs it over containerd. `Run`
//! creates a running container (or fails to start), `Destroy` removes one
//! (or fails to stop it); some containers exit by themselves later, with a
//! code; some actions take a while. Results go back through `on_result`;
//! what to report is handed to `reports`, which proposes it.

use std::collections::BTreeMap;

use shoal_agent::{Action, ActionResult, Observed, Reconciler, RunFailure};
use shoal_sched::duties::{Liveness, Member};
use shoal_types::{Kind, Node, Task, TaskStatus};

use super::{Summary, ROUND_MS, STEP_MS};
use crate::check;
use crate::rng::Rng;

/// Odds (per mille) of what goes wrong in a simulated runtime, outside
/// healing: a start that fails (the image cannot be pulled), a stop that
/// fails (the runtime times out), a service's container exiting by itself
/// some time after it started, a batch task's process failing.
const START_FAILURE_PER_MILLE: u64 = 20;
const STOP_FAILURE_PER_MILLE: u64 = 10;
const SERVICE_EXIT_PER_MILLE: u64 = 30;
const BATCH_FAILURE_PER_MILLE: u64 = 100;
/// How long a batch task's process runs, and how long a service's runs
/// before it exits (when it does), at most.
const BATCH_RUN_MS_MAX: u64 = 30_000;
const SERVICE_RUN_MS_MAX: u64 = 120_000;
/// An agent whose node comes back restarted (a new process, re-adopting
/// the containers) rather than merely reconnected.
const AGENT_RESTART_PER_MILLE: u64 = 500;

/// A container in a node's table.
#[derive(Clone, Copy, Debug)]
struct Container {
    observed: Observed,
    /// When a running container exits by itself, and with which code.
    exits: Option<(u64, i32)>,
}

/// An action the agent started whose result has not come back.
#[derive(Clone, Debug)]
struct InFlight {
    done_at_ms: u64,
    action: Action,
}

/// One simulated node: the facts it registers with, gossip's record of it,
/// whether it is really up, and its agent with the containers it runs.
/// A node that is down keeps its containers (they outlive the agent) but
/// takes no turns; when it comes back its agent carries on with them.
#[derive(Debug)]
pub(super) struct SimNode {
    pub facts: Node,
    /// Gossip's view of the node, which the leader's duties read.
    pub member: Member,
    /// The truth that gossip approximates: the node runs and can reach the
    /// cluster.
    pub up: bool,
    agent: Reconciler,
    containers: BTreeMap<String, Container>,
    in_flight: Vec<InFlight>,
}

/// What one turn of a node's agent did.
pub(super) struct Turn {
    /// Statuses to report, in the order the agent produced them.
    pub reports: Vec<(String, TaskStatus)>,
    /// Actions the agent asked for, and actions still under way.
    pub actions: usize,
    pub in_flight: usize,
}

/// How the simulated runtime behaves in one turn.
#[derive(Clone, Copy, Debug)]
pub(super) struct Runtime {
    pub now_ms: u64,
    /// Nothing fails or lags (while healing).
    pub quiet: bool,
}

impl SimNode {
    /// A node that has just joined, alive in gossip since `now_ms`.
    pub fn new(facts: Node, now_ms: u64) -> SimNode {
        let member = Member {
            name: facts.name.clone(),
            raft_id: shoal_types::consensus_id(&facts.name),
            api_addr: facts.addr.clone(),
            zone: facts.labels.get("zone").cloned().unwrap_or_default(),
            status: Liveness::Alive,
            since_ms: now_ms,
            may_vote: true,
        };
        SimNode {
            facts,
            member,
            up: true,
            agent: Reconciler::new(),
            containers: BTreeMap::new(),
            in_flight: Vec::new(),
        }
    }

    /// Gossip sees the member enter `status` at `since_ms`.
    pub fn gossip(&mut self, status: Liveness, since_ms: u64) {
        self.member.status = status;
        self.member.since_ms = since_ms;
    }

    /// Whether the node comes back with a restarted agent.
    pub fn comes_back_restarted(rng: &mut Rng) -> bool {
        rng.chance(AGENT_RESTART_PER_MILLE)
    }

    /// The agent restarts: a fresh reconciler, which must re-adopt the
    /// containers of the table from the cluster's task statuses. The
    /// actions it had under way took effect or not; their results are lost.
    pub fn restart_agent(&mut self, tasks: &BTreeMap<String, Task>, now_ms: u64, rng: &mut Rng) {
        self.agent = Reconciler::new();
        let runtime = Runtime {
            now_ms,
            quiet: true,
        };
        for flight in std::mem::take(&mut self.in_flight) {
            if rng.chance(500) {
                self.execute(flight.action, tasks, runtime, rng, &mut Summary::default());
            }
        }
    }

    /// One turn of the agent: the results of actions that finished, the
    /// containers that exited, one reconciler step (checked), and the
    /// results of the actions that finish at once.
    pub fn turn(
        &mut self,
        desired: &[&Task],
        tasks: &BTreeMap<String, Task>,
        runtime: Runtime,
        rng: &mut Rng,
        summary: &mut Summary,
    ) -> Result<Turn, String> {
        let now_ms = runtime.now_ms;
        let mut reports = self.finish_due(tasks, runtime, rng, summary);
        for container in self.containers.values_mut() {
            if let (Observed::Running, Some((at_ms, exit_code))) =
                (container.observed, container.exits)
            {
                if at_ms <= now_ms {
                    container.observed = Observed::Exited { exit_code };
                    container.exits = None;
                    summary.exits += 1;
                }
            }
        }
        let observed: BTreeMap<String, Observed> = self
            .containers
            .iter()
            .map(|(id, container)| (id.clone(), container.observed))
            .collect();
        let step = self.agent.step(desired, &observed, now_ms);
        check::check_agent_step(&self.facts.name, desired, &observed, &step.actions)?;
        reports.extend(step.reports);
        let actions = step.actions.len();
        for action in step.actions {
            match action {
                Action::Run { .. } => summary.runs += 1,
                Action::Destroy { .. } => summary.destroys += 1,
            }
            let delay_ms = if runtime.quiet {
                0
            } else {
                match rng.weighted(&[850, 120, 30]) {
                    0 => 0,
                    // An image pull or a stop grace period: a few rounds.
                    1 => rng.between(1, 10) * ROUND_MS,
                    _ => rng.between(1, 5) * STEP_MS,
                }
            };
            self.in_flight.push(InFlight {
                done_at_ms: now_ms + delay_ms,
                action,
            });
        }
        reports.extend(self.finish_due(tasks, runtime, rng, summary));
        Ok(Turn {
            reports,
            actions,
            in_flight: self.in_flight.len(),
        })
    }

    /// Its report was lost: the agent reports these statuses again.
    pub fn unreport(&mut self, task_ids: impl IntoIterator<Item = String>) {
        self.agent.unreport(task_ids);
    }

    /// Carries out the actions whose time has come (all of them when
    /// quiet) and feeds their results to the agent; returns its reports.
    fn finish_due(
        &mut self,
        tasks: &BTreeMap<String, Task>,
        runtime: Runtime,
        rng: &mut Rng,
        summary: &mut Summary,
    ) -> Vec<(String, TaskStatus)> {
        let (due, later): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|flight| runtime.quiet || flight.done_at_ms <= runtime.now_ms);
        self.in_flight = later;
        let mut reports = Vec::new();
        for flight in due {
            let result = self.execute(flight.action, tasks, runtime, rng, summary);
            reports.extend(self.agent.on_result(result, runtime.now_ms));
        }
        reports
    }

    /// What the runtime does for an action, on the container table.
    fn execute(
        &mut self,
        action: Action,
        tasks: &BTreeMap<String, Task>,
        runtime: Runtime,
        rng: &mut Rng,
        summary: &mut Summary,
    ) -> ActionResult {
        match action {
            Action::Run {
                task_id,
                attempt,
                replace,
            } => {
                // As the keeper does, the task is read from the node's
                // replica when the action runs.
                let result = match tasks.get(&task_id) {
                    None => Err(RunFailure::broken("the task is gone")),
                    Some(task) => {
                        if replace {
                            self.containers.remove(&task_id);
                        }
                        if !runtime.quiet && rng.chance(START_FAILURE_PER_MILLE) {
                            summary.start_failures += 1;
                            // A registry out of reach, as the keeper
                            // takes it: tried again without a restart.
                            Err(RunFailure::transient(format!(
                                "pulling image {}: simulated registry failure",
                                task.spec.image()
                            )))
                        } else {
                            // A container left in the way is removed and
                            // the run tried again, as on a conflict.
                            self.containers.insert(
                                task_id.clone(),
                                Container {
                                    observed: Observed::Running,
                                    exits: exit_of(task, runtime, rng),
                                },
                            );
                            Ok(None)
                        }
                    }
                };
                ActionResult::Ran {
                    task_id,
                    attempt,
                    result,
                }
            }
            Action::Destroy { container_id, .. } => {
                let result = if !runtime.quiet && rng.chance(STOP_FAILURE_PER_MILLE) {
                    summary.stop_failures += 1;
                    Err("stopping: simulated runtime timeout".to_string())
                } else {
                    Ok(self.containers.remove(&container_id).map(|container| {
                        match container.observed {
                            Observed::Running => 0,
                            Observed::Exited { exit_code } => exit_code,
                        }
                    }))
                };
                ActionResult::Destroyed {
                    container_id,
                    result,
                }
            }
        }
    }
}

/// When and how a container just started will exit by itself, if it does:
/// a batch task's process ends (mostly with 0), a few services crash.
fn exit_of(task: &Task, runtime: Runtime, rng: &mut Rng) -> Option<(u64, i32)> {
    match task.spec.kind {
        Kind::Batch => {
            let exit_code = if !runtime.quiet && rng.chance(BATCH_FAILURE_PER_MILLE) {
                1
            } else {
                0
            };
            Some((runtime.now_ms + rng.between(1, BATCH_RUN_MS_MAX), exit_code))
        }
        Kind::Service | Kind::Global if !runtime.quiet && rng.chance(SERVICE_EXIT_PER_MILLE) => {
            let exit_code = [1, 137][rng.below(2) as usize];
            Some((
                runtime.now_ms + rng.between(1, SERVICE_RUN_MS_MAX),
                exit_code,
            ))
        }
        Kind::Service | Kind::Global => None,
    }
}

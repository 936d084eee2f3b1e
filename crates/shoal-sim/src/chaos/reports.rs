//! The simulated nodes at work: what each reports of its tasks (placed
//! ones start, some fail and restart, batch tasks finish, unwanted ones
//! stop), some lagging, a few reports bogus on purpose.

use std::collections::BTreeMap;

use shoal_state::{Command, Outcome, REPORTS_PER_COMMAND_MAX};
use shoal_types::{DesiredState, Kind, NodeStatus, Promise, Task, TaskState, TaskStatus};

use super::Chaos;
use crate::rng::Rng;

/// A status report and whether the state must drop it.
struct Report {
    task: String,
    status: TaskStatus,
    bogus: bool,
}

impl Chaos {
    /// Every alive node reports what became of its tasks: placed ones start
    /// (sometimes in stages), some fail and restart, batch tasks finish,
    /// unwanted ones stop. Some nodes lag a round. A few reports are bogus
    /// on purpose (late, backwards, or from the wrong node) and the state
    /// must drop exactly those.
    /// Returns how many honest reports were sent.
    pub(super) fn nodes_report(&mut self) -> Result<usize, String> {
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

//! The simulated nodes reporting: every node that is up takes a turn of
//! its agent (`agents`), and what the agent reports is proposed as
//! `ReportTasks`; some proposals are lost (no leader for a moment) and the
//! agent reports those statuses again. A few reports are bogus on purpose
//! (late, backwards, or from the wrong node): the state must drop exactly
//! those, and accept every honest report of a task it still has.

use std::collections::BTreeMap;

use shoal_state::{Command, Outcome, State, REPORTS_PER_COMMAND_MAX};
use shoal_types::{Task, TaskState, TaskStatus};

use super::agents::Runtime;
use super::Chaos;
use crate::rng::Rng;

/// Odds (per mille) that a node's reports of one turn are lost, outside
/// healing.
const REPORTS_LOST_PER_MILLE: u64 = 20;

/// A status report and whether the state must drop it.
struct Report {
    task: String,
    status: TaskStatus,
    bogus: bool,
}

impl Chaos {
    /// Every node that is up takes one turn of its agent, and what the
    /// agents report is applied, with a few bogus reports mixed in.
    /// Returns what the agents did (reports, actions asked for and under
    /// way): 0 when every node is at rest.
    pub(super) fn nodes_work(&mut self) -> Result<usize, String> {
        let runtime = Runtime {
            now_ms: self.cluster.now_ms,
            quiet: self.quiet,
        };
        let state = &self.cluster.state;
        let mut desired: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
        for task in state.tasks.values() {
            desired.entry(task.node.as_str()).or_default().push(task);
        }
        let up: Vec<String> = self
            .nodes
            .values()
            .filter(|node| node.up)
            .map(|node| node.facts.name.clone())
            .collect();
        let mut reports: BTreeMap<String, Vec<Report>> = BTreeMap::new();
        let mut work = 0;
        for (name, node) in self.nodes.iter_mut().filter(|(_, node)| node.up) {
            let tasks = desired.get(name.as_str()).map_or(&[][..], Vec::as_slice);
            let turn = node.turn(
                tasks,
                &state.tasks,
                runtime,
                &mut self.rng,
                &mut self.summary,
            )?;
            work += turn.reports.len() + turn.actions + turn.in_flight;
            let reported: Vec<String> = turn.reports.iter().map(|(id, _)| id.clone()).collect();
            if !self.quiet && !turn.reports.is_empty() && self.rng.chance(REPORTS_LOST_PER_MILLE) {
                self.summary.lost_reports += turn.reports.len() as u64;
                node.unreport(reported.iter().cloned());
            } else {
                reports
                    .entry(name.clone())
                    .or_default()
                    .extend(turn.reports.into_iter().map(|(task, status)| Report {
                        task,
                        status,
                        bogus: false,
                    }));
            }
            if self.quiet {
                continue;
            }
            for id in &reported {
                let Some(task) = state.tasks.get(id) else {
                    continue;
                };
                bogus_reports(task, &up, &mut reports, &mut self.rng);
            }
        }
        for (node, list) in reports {
            for chunk in list.chunks(REPORTS_PER_COMMAND_MAX) {
                self.report(&node, chunk)?;
            }
        }
        Ok(work)
    }

    /// Proposes one node's reports and checks that the state took exactly
    /// the honest ones about tasks it still has.
    fn report(&mut self, node: &str, chunk: &[Report]) -> Result<(), String> {
        let (honest, bogus) = expected(&self.cluster.state, node, chunk)?;
        let statuses = chunk
            .iter()
            .map(|report| (report.task.clone(), report.status.clone()))
            .collect();
        match self.apply(Command::ReportTasks {
            node: node.to_string(),
            statuses,
        })? {
            Outcome::TasksReported { accepted, stale } => {
                let dropped = chunk.len() - honest;
                if accepted != honest || stale != dropped {
                    return Err(format!(
                        "node {node} sent {honest} reports moving its tasks forward, {bogus} bogus ones \
                         and {} about tasks gone; the state accepted {accepted} and dropped {stale}",
                        dropped - bogus
                    ));
                }
                self.summary.reports += accepted as u64;
                self.summary.bogus_reports += bogus as u64;
                Ok(())
            }
            other => Err(format!("reporting tasks gave {other:?}")),
        }
    }
}

/// How many reports of `chunk` the state must accept (honest ones about
/// tasks it has on `node`) and how many are bogus. An honest report that
/// does not move its task forward is the agent's fault, and a violation.
fn expected(state: &State, node: &str, chunk: &[Report]) -> Result<(usize, usize), String> {
    let mut latest: BTreeMap<&str, &TaskStatus> = BTreeMap::new();
    let (mut honest, mut bogus) = (0, 0);
    for report in chunk {
        if report.bogus {
            bogus += 1;
            continue;
        }
        let Some(task) = state.tasks.get(&report.task) else {
            // Forgotten or removed while the agent was still at it.
            continue;
        };
        if task.node != node {
            return Err(format!(
                "node {node}'s agent reported task {}, which is placed on {}",
                task.id, task.node
            ));
        }
        let current = latest
            .get(report.task.as_str())
            .copied()
            .unwrap_or(&task.status);
        if !report.status.may_follow(current) {
            return Err(format!(
                "node {node}'s agent reported task {} attempt {} {} after attempt {} {}: its status would move backwards",
                task.id,
                report.status.attempt,
                report.status.state.as_str(),
                current.attempt,
                current.state.as_str()
            ));
        }
        latest.insert(report.task.as_str(), &report.status);
        honest += 1;
    }
    Ok((honest, bogus))
}

/// Now and then a bogus report about `task`: a late one of an earlier
/// state of its attempt from its own node, or another node claiming it.
fn bogus_reports(
    task: &Task,
    up: &[String],
    reports: &mut BTreeMap<String, Vec<Report>>,
    rng: &mut Rng,
) {
    if rng.chance(10) && task.status.state.rank() > 0 {
        reports.entry(task.node.clone()).or_default().push(Report {
            task: task.id.clone(),
            status: TaskStatus {
                state: TaskState::Pending,
                ..task.status.clone()
            },
            bogus: true,
        });
    }
    if rng.chance(5) && up.len() > 1 {
        let other = pick_other(up, &task.node, rng);
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

/// A node other than `own` among `up` (which has at least two).
fn pick_other(up: &[String], own: &str, rng: &mut Rng) -> String {
    let at = rng.below(up.len() as u64) as usize;
    if up[at] == own {
        up[(at + 1) % up.len()].clone()
    } else {
        up[at].clone()
    }
}

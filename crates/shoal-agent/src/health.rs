//! A running task's health: the checks due, what they found, and the
//! restart of a task that stays unhealthy. The node runs the checks
//! ([`Reconciler::checks_due`]) and hands back their results
//! ([`Reconciler::on_check`]); only a change of health is reported.

use std::net::Ipv4Addr;

use shoal_types::{Health, HealthSpec, Probe, Task, TaskState, TaskStatus};

use super::{after_exit, format_ms, restart_delay_ms, Action, Local, Reconciler, Step};

/// A running task's health, as its checks found it.
#[derive(Clone, Debug)]
pub(crate) struct Checked {
    spec: HealthSpec,
    probe: Probe,
    pub(crate) health: Health,
    /// When the run started: failed checks before `start_period` after it
    /// do not count.
    pub(crate) started_ms: u64,
    /// Failed checks in a row.
    failures: u32,
    /// When it last turned unhealthy; `None` once a restart for it was
    /// declined (by the restart policy), so none is weighed again.
    unhealthy_since_ms: Option<u64>,
    /// When the last failed check that counted ended.
    failed_at_ms: Option<u64>,
    /// When the next check is due (while one runs: when it was due).
    next_ms: u64,
    /// A check runs now; its result comes through [`Reconciler::on_check`].
    checking: bool,
}

/// A check the node must run now, through [`Reconciler::checks_due`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckDue {
    pub task_id: String,
    /// The run it checks; a result for another run is dropped.
    pub attempt: u32,
    pub probe: Probe,
    /// The task's address on the cluster network (`None`: the check
    /// cannot reach it, and fails).
    pub address: Option<Ipv4Addr>,
    pub timeout_ms: u64,
}

impl Checked {
    pub(crate) fn new(
        spec: &HealthSpec,
        task: &Task,
        health: Health,
        now_ms: u64,
    ) -> Option<Checked> {
        Some(Checked {
            probe: spec.probe(&task.spec.ports)?,
            spec: spec.clone(),
            health,
            started_ms: now_ms,
            failures: 0,
            unhealthy_since_ms: (health == Health::Unhealthy).then_some(now_ms),
            failed_at_ms: None,
            next_ms: now_ms,
            checking: false,
        })
    }

    /// Takes a check's result at `now_ms`. The next check is due one
    /// interval after this one was (not after it ended, so a check that
    /// takes its whole timeout does not stretch the interval).
    pub(crate) fn record(&mut self, passed: bool, now_ms: u64) {
        self.checking = false;
        if passed {
            self.health = Health::Healthy;
            self.failures = 0;
            self.unhealthy_since_ms = None;
        } else if now_ms.saturating_sub(self.started_ms) >= self.spec.start_period.0 {
            self.failures = self.failures.saturating_add(1);
            self.failed_at_ms = Some(now_ms);
            if self.failures >= self.spec.retries && self.health != Health::Unhealthy {
                self.health = Health::Unhealthy;
                self.unhealthy_since_ms = Some(now_ms);
            }
        }
        let every = if self.health == Health::Starting {
            self.spec.start_interval()
        } else {
            self.spec.interval
        };
        self.next_ms = self.next_ms.saturating_add(every.0).max(now_ms);
    }

    /// When the reconciler must look again: the next check, unless one
    /// runs (a restart is decided on a check's result).
    pub(crate) fn wake_ms(&self) -> Option<u64> {
        (!self.checking).then_some(self.next_ms)
    }

    /// Whether an unhealthy task is due for a restart: unhealthy for
    /// `restart_after`, and a check at or after that time failed too (so
    /// a task is never restarted without a check between its turning
    /// unhealthy and its restart).
    fn restart_due(&self) -> bool {
        let Some(since) = self.unhealthy_since_ms else {
            return false;
        };
        let Some(after) = self.spec.restart_after() else {
            return false;
        };
        let due = since.saturating_add(after.0);
        self.failed_at_ms.is_some_and(|failed| failed >= due)
    }
}

impl Reconciler {
    /// The checks due at `now_ms`, each marked as running until its result
    /// comes back through [`Reconciler::on_check`].
    pub fn checks_due(&mut self, now_ms: u64) -> Vec<CheckDue> {
        let mut due = Vec::new();
        for (id, local) in &mut self.tasks {
            let Some(checked) = local.health.as_mut() else {
                continue;
            };
            if checked.checking || checked.next_ms > now_ms || local.in_flight {
                continue;
            }
            checked.checking = true;
            due.push(CheckDue {
                task_id: id.clone(),
                attempt: local.attempt,
                probe: checked.probe.clone(),
                address: local.address,
                timeout_ms: checked.spec.timeout.0,
            });
        }
        due
    }

    /// Records what a check of run `attempt` of `task_id` found; returns
    /// the statuses that changed (a task's health, when it did).
    pub fn on_check(
        &mut self,
        task_id: &str,
        attempt: u32,
        passed: bool,
        now_ms: u64,
    ) -> Vec<(String, TaskStatus)> {
        if let Some(local) = self.tasks.get_mut(task_id) {
            if local.attempt == attempt {
                if let Some(checked) = local.health.as_mut() {
                    checked.record(passed, now_ms);
                    // Healthy again after a restart it was refused.
                    if checked.health == Health::Healthy && local.state == TaskState::Running {
                        "running".clone_into(&mut local.message);
                    }
                }
            }
        }
        let mut step = Step::default();
        self.collect_reports(now_ms, &mut step);
        step.reports
    }
}

/// A running task of a service with a check: checked from its start on,
/// and restarted (with the service's back-off and policy) once it has
/// been unhealthy for `restart_after`.
pub(crate) fn keep_healthy(task: &Task, local: &mut Local, now_ms: u64, step: &mut Step) {
    let Some(spec) = &task.spec.health else {
        local.health = None;
        return;
    };
    let Some(checked) = local.health.as_mut() else {
        local.health = Checked::new(spec, task, Health::Starting, now_ms);
        return;
    };
    if !checked.restart_due() {
        return;
    }
    let unhealthy_ms = now_ms.saturating_sub(checked.unhealthy_since_ms.unwrap_or(now_ms));
    // Restarted like a process that failed, if its policy restarts one.
    let mut failed = local.clone();
    failed.exit_code = None;
    failed.state = TaskState::Failed;
    if restart_delay_ms(task, &failed).is_none() {
        // Kept, unhealthy and out of DNS, until a check passes; weighed
        // no more until it turns unhealthy again.
        if let Some(checked) = local.health.as_mut() {
            checked.unhealthy_since_ms = None;
        }
        local.message = format!(
            "unhealthy for {}; not restarted (restart policy {}{})",
            format_ms(unhealthy_ms),
            task.spec.restart.policy().as_str(),
            task.spec
                .restart
                .attempts_max
                .map(|most| format!(", at most {most} attempts"))
                .unwrap_or_default()
        );
        return;
    }
    // Running well (until it turned unhealthy) for longer than the
    // back-off's cap starts the back-off over, as a long run does for a
    // process that exits.
    let turned_ms = now_ms.saturating_sub(unhealthy_ms);
    let ran_well_ms = local
        .started_at_ms
        .map_or(0, |start| turned_ms.saturating_sub(start));
    if ran_well_ms > task.spec.restart.backoff_max.0 {
        local.restarts = 0;
    }
    local.state = TaskState::Failed;
    local.exit_code = None;
    local.health = None;
    local.message = format!("unhealthy for {}", format_ms(unhealthy_ms));
    after_exit(task, local, now_ms);
    // Stopped now, as any task is (SIGTERM, its grace, SIGKILL), and
    // started again after the back-off.
    local.in_flight = true;
    step.actions.push(Action::Destroy {
        container_id: task.id.clone(),
        grace_ms: task.spec.stop_grace_period.0,
    });
}

//! The node's promise keeper: a pure, level-triggered reconciler from the
//! tasks the cluster placed on this node and the containers the runtime
//! shows, to runtime actions and status reports.
//!
//! It never reads a clock or touches the runtime: the node process feeds it
//! `now`, what it observed, and the results of the actions it asked for, and
//! executes the [`Action`]s it returns. Because it only keeps what it can
//! rebuild from the cluster's task statuses and the runtime's containers, an
//! agent that restarts picks up where it was without restarting anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use shoal_types::{DesiredState, Promise, RestartPolicy, Task, TaskState, TaskStatus};

mod health;

pub use health::CheckDue;
use health::{keep_healthy, Checked};

/// A container as the runtime shows it, keyed by container id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    Running,
    /// Exited (or created and never started, reported as exit code -1).
    Exited {
        exit_code: i32,
    },
}

/// What the node process must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create and start the container of `task_id` for `attempt`, removing a
    /// container of an earlier attempt first when `replace` is set.
    Run {
        task_id: String,
        attempt: u32,
        replace: bool,
    },
    /// Stop (SIGTERM, grace, SIGKILL) and remove a container.
    Destroy { container_id: String, grace_ms: u64 },
}

/// How an [`Action`] ended, fed back through [`Reconciler::on_result`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionResult {
    Ran {
        task_id: String,
        attempt: u32,
        /// The task's address on the cluster network, when it has one.
        result: Result<Option<Ipv4Addr>, RunFailure>,
    },
    Destroyed {
        container_id: String,
        result: Result<Option<i32>, String>,
    },
}

/// Why a container did not start, and whether the same attempt may start
/// if it is only tried again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFailure {
    /// The reason, in the words the task's status shows.
    pub message: String,
    /// Something the task needs was not there for a moment (the runtime
    /// restarting, a registry or a voter out of reach): the attempt is
    /// tried again after a short wait, its promise kept pending and no
    /// restart counted, up to [`TRANSIENT_TRIES_MAX`] times in a row; then
    /// it fails as any other.
    pub transient: bool,
}

impl RunFailure {
    /// A failure that trying again may mend by itself.
    pub fn transient(message: impl Into<String>) -> RunFailure {
        RunFailure {
            message: message.into(),
            transient: true,
        }
    }

    /// A failure that breaks the promise at once (a spec the node cannot
    /// run, an image the registry does not have).
    pub fn broken(message: impl Into<String>) -> RunFailure {
        RunFailure {
            message: message.into(),
            transient: false,
        }
    }
}

/// Tries of one attempt in a row that fail transiently before the attempt
/// fails: with the waits between them (1 s doubling to 30 s), about a
/// minute and a half.
pub const TRANSIENT_TRIES_MAX: u32 = 8;
/// The wait before the first try again, doubled for each next one.
const TRANSIENT_WAIT_FIRST_MS: u64 = 1_000;
/// The longest wait between two tries.
const TRANSIENT_WAIT_LAST_MS: u64 = 30_000;

/// What one step decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub actions: Vec<Action>,
    /// Statuses that changed since they were last reported.
    pub reports: Vec<(String, TaskStatus)>,
    /// When the reconciler wants to run again even if nothing happens.
    pub wake_at_ms: Option<u64>,
}

#[derive(Clone, Debug)]
struct Local {
    attempt: u32,
    state: TaskState,
    promise: Promise,
    message: String,
    exit_code: Option<i32>,
    restarts: u32,
    started_at_ms: Option<u64>,
    /// The task's address, from its network attachment.
    address: Option<Ipv4Addr>,
    /// Set while in back-off: when the next attempt may start.
    restart_at_ms: Option<u64>,
    /// An action for this task is running; nothing else is started for it.
    in_flight: bool,
    /// A failure to start still waits for its restart decision.
    undecided_failure: bool,
    /// Tries of the current attempt that failed transiently, in a row.
    transient_failures: u32,
    /// Set while a transient failure waits: when the attempt is tried again.
    retry_at_ms: Option<u64>,
    /// What its checks found, while it runs and its service has a check.
    health: Option<Checked>,
    reported: Option<TaskStatus>,
}

#[derive(Debug, Default)]
pub struct Reconciler {
    tasks: BTreeMap<String, Local>,
    /// Containers being destroyed that belong to no known task.
    destroying: BTreeSet<String>,
}

impl Reconciler {
    pub fn new() -> Self {
        Self::default()
    }

    /// One level-triggered pass. `desired` are the tasks placed on this node;
    /// `observed` every shoal container the runtime has, by container id.
    pub fn step(
        &mut self,
        desired: &[&Task],
        observed: &BTreeMap<String, Observed>,
        now_ms: u64,
    ) -> Step {
        let mut step = Step::default();
        let wanted: BTreeSet<&str> = desired.iter().map(|task| task.id.as_str()).collect();
        self.tasks
            .retain(|id, local| wanted.contains(id.as_str()) || local.in_flight);

        for task in desired {
            let container = observed.get(&task.id).copied();
            let local = self
                .tasks
                .entry(task.id.clone())
                .or_insert_with(|| Local::resume(&task.status, container, now_ms, task));
            if local.in_flight {
                continue;
            }
            match task.desired {
                DesiredState::Running => keep_running(task, local, container, now_ms, &mut step),
                DesiredState::Stopped => keep_stopped(task, local, container, &mut step),
            }
            let check = local.health.as_ref().and_then(Checked::wake_ms);
            for at in [local.restart_at_ms, local.retry_at_ms, check]
                .into_iter()
                .flatten()
            {
                step.wake_at_ms = Some(step.wake_at_ms.map_or(at, |wake| wake.min(at)));
            }
        }

        for container_id in observed.keys() {
            if !wanted.contains(container_id.as_str())
                && self.destroying.insert(container_id.clone())
            {
                step.actions.push(Action::Destroy {
                    container_id: container_id.clone(),
                    grace_ms: 10_000,
                });
            }
        }
        self.collect_reports(now_ms, &mut step);
        step
    }

    /// Records how an action ended; the next [`step`](Self::step) acts on it.
    pub fn on_result(&mut self, result: ActionResult, now_ms: u64) -> Vec<(String, TaskStatus)> {
        match result {
            ActionResult::Ran {
                task_id,
                attempt,
                result,
            } => {
                if let Some(local) = self.tasks.get_mut(&task_id) {
                    if local.attempt == attempt {
                        local.in_flight = false;
                        match result {
                            Err(failure)
                                if failure.transient
                                    && local.transient_failures + 1 < TRANSIENT_TRIES_MAX =>
                            {
                                local.transient_failures += 1;
                                let wait = transient_wait_ms(local.transient_failures);
                                local.retry_at_ms = Some(now_ms.saturating_add(wait));
                                local.promise = Promise::Pending;
                                local.message = format!(
                                    "{}; trying again in {} (try {} of {TRANSIENT_TRIES_MAX})",
                                    failure.message,
                                    format_ms(wait),
                                    local.transient_failures + 1
                                );
                            }
                            Ok(address) => {
                                local.transient_failures = 0;
                                local.address = address;
                                local.state = TaskState::Running;
                                local.promise = Promise::Kept;
                                local.message = "running".into();
                                local.started_at_ms = Some(now_ms);
                                local.exit_code = None;
                            }
                            Err(failure) => {
                                local.state = TaskState::Failed;
                                local.promise = Promise::Broken;
                                local.message = if failure.transient {
                                    format!(
                                        "could not start: {} (tried {TRANSIENT_TRIES_MAX} times)",
                                        failure.message
                                    )
                                } else {
                                    format!("could not start: {}", failure.message)
                                };
                                local.transient_failures = 0;
                                local.undecided_failure = true;
                                local.exit_code = None;
                                local.started_at_ms = None;
                            }
                        }
                    }
                }
            }
            ActionResult::Destroyed {
                container_id,
                result,
            } => {
                self.destroying.remove(&container_id);
                if let Some(local) = self.tasks.get_mut(&container_id) {
                    local.in_flight = false;
                    match result {
                        Ok(_)
                            if local.state == TaskState::Failed
                                && local.restart_at_ms.is_some() =>
                        {
                            // Stopped for its health: it stays failed, with
                            // its reason, until its restart.
                            local.address = None;
                        }
                        Ok(exit_code) => {
                            local.state = TaskState::Stopped;
                            local.promise = Promise::Kept;
                            local.message = "stopped".into();
                            local.exit_code = exit_code.or(local.exit_code);
                            // The network attachment went with the container.
                            local.address = None;
                        }
                        Err(error) => {
                            // Stay in stopping; the next step tries again.
                            local.message = format!("could not stop: {error}");
                            local.promise = Promise::Broken;
                        }
                    }
                }
            }
        }
        let mut step = Step::default();
        self.collect_reports(now_ms, &mut step);
        step.reports
    }

    /// Forgets that these statuses were reported (their report was lost),
    /// so the next step reports them again.
    pub fn unreport(&mut self, task_ids: impl IntoIterator<Item = String>) {
        for id in task_ids {
            if let Some(local) = self.tasks.get_mut(&id) {
                local.reported = None;
            }
        }
    }

    fn collect_reports(&mut self, now_ms: u64, step: &mut Step) {
        for (id, local) in &mut self.tasks {
            let status = TaskStatus {
                address: local.address,
                attempt: local.attempt,
                state: local.state,
                promise: local.promise,
                message: local.message.clone(),
                container_id: (local.attempt > 0 && local.state != TaskState::Stopped)
                    .then(|| id.clone()),
                exit_code: local.exit_code,
                restarts: local.restarts,
                started_at_ms: local.started_at_ms,
                updated_at_ms: now_ms,
                health: local
                    .health
                    .as_ref()
                    .filter(|_| local.state == TaskState::Running)
                    .map(|checked| checked.health),
            };
            let changed = local.reported.as_ref().is_none_or(|reported| {
                TaskStatus {
                    updated_at_ms: now_ms,
                    ..reported.clone()
                } != status
            });
            if changed {
                local.reported = Some(status.clone());
                step.reports.push((id.clone(), status));
            }
        }
    }
}

impl Local {
    /// Rebuilds what the node knew of a task from the cluster's record of it
    /// and the container the runtime still has (after an agent restart).
    fn resume(status: &TaskStatus, container: Option<Observed>, now_ms: u64, task: &Task) -> Local {
        let mut local = Local {
            attempt: status.attempt,
            state: status.state,
            promise: status.promise,
            message: status.message.clone(),
            exit_code: status.exit_code,
            restarts: status.restarts,
            started_at_ms: status.started_at_ms,
            address: status.address,
            restart_at_ms: None,
            in_flight: false,
            undecided_failure: false,
            transient_failures: 0,
            retry_at_ms: None,
            health: None,
            reported: Some(status.clone()),
        };
        // A container that runs is adopted as it is, never restarted.
        if container == Some(Observed::Running) {
            if local.state.is_terminal() || local.attempt == 0 {
                // The container was restarted before its report was committed.
                local.attempt += 1;
            }
            local.state = TaskState::Running;
            local.promise = Promise::Kept;
            local.message = "running".into();
            local.started_at_ms = local.started_at_ms.or(Some(now_ms));
            // Its health as the cluster last heard it; checked again at once.
            if let (Some(spec), Some(health)) = (&task.spec.health, status.health) {
                local.health = Checked::new(spec, task, health, now_ms);
                if let Some(checked) = local.health.as_mut() {
                    checked.started_ms = local.started_at_ms.unwrap_or(now_ms);
                }
            }
        }
        if local.state.is_terminal() && task.desired == DesiredState::Running {
            local.restart_at_ms = restart_delay_ms(task, &local).map(|delay| now_ms + delay);
        }
        // Preparing, without a container: the agent stopped while the
        // attempt was under way or waited to be tried again; it is tried
        // again as it is, not taken for a container that vanished.
        if local.state == TaskState::Preparing
            && container.is_none()
            && task.desired == DesiredState::Running
        {
            local.retry_at_ms = Some(now_ms);
        }
        local
    }
}

fn keep_running(
    task: &Task,
    local: &mut Local,
    container: Option<Observed>,
    now_ms: u64,
    step: &mut Step,
) {
    // An attempt that failed transiently is tried again, as it is, when
    // its wait is over; unless its container runs after all (a call that
    // timed out may have been carried out): then it is adopted.
    if let Some(at) = local.retry_at_ms {
        if container == Some(Observed::Running) {
            local.retry_at_ms = None;
            local.transient_failures = 0;
            local.state = TaskState::Running;
            local.promise = Promise::Kept;
            local.message = "running".into();
            local.started_at_ms = Some(now_ms);
        } else if at <= now_ms {
            local.retry_at_ms = None;
            try_again(task, local, container.is_some(), step);
        }
        return;
    }
    if local.state != TaskState::Running {
        local.health = None;
    }
    match (local.state, container) {
        (TaskState::Running, Some(Observed::Running)) => keep_healthy(task, local, now_ms, step),
        (state, Some(Observed::Running)) if !state.is_terminal() => {
            local.state = TaskState::Running;
            local.promise = Promise::Kept;
            local.message = "running".into();
        }
        (TaskState::Running | TaskState::Starting | TaskState::Preparing, exited) => {
            let exit_code = match exited {
                Some(Observed::Exited { exit_code }) => Some(exit_code),
                _ => None,
            };
            let ran_ms = local
                .started_at_ms
                .map_or(0, |start| now_ms.saturating_sub(start));
            if ran_ms > task.spec.restart.backoff_max.0 {
                local.restarts = 0;
            }
            local.exit_code = exit_code;
            local.health = None;
            local.state = if exit_code == Some(0) {
                TaskState::Exited
            } else {
                TaskState::Failed
            };
            local.message = match exit_code {
                Some(code) => format!("exited with code {code}"),
                None => "the container disappeared".into(),
            };
            after_exit(task, local, now_ms);
        }
        (TaskState::Pending, _) => start(task, local, container.is_some(), step),
        (state, _) if state.is_terminal() => {
            if local.undecided_failure {
                local.undecided_failure = false;
                after_exit(task, local, now_ms);
            } else if local.restart_at_ms.is_some_and(|at| at <= now_ms) {
                local.restart_at_ms = None;
                local.restarts += 1;
                start(task, local, container.is_some(), step);
            }
        }
        // Stopping under a desired `running` only happens when a stop failed
        // before the cluster changed its mind: try the container again.
        _ => start(task, local, container.is_some(), step),
    }
}

/// Decides, once a task's process has ended, whether and when it restarts.
fn after_exit(task: &Task, local: &mut Local, now_ms: u64) {
    match restart_delay_ms(task, local) {
        Some(delay) => {
            local.restart_at_ms = Some(now_ms + delay);
            local.promise = Promise::Broken;
            local.message = format!(
                "{}; restarting in {} (restart {})",
                local.message,
                format_ms(delay),
                local.restarts + 1
            );
        }
        None => {
            local.restart_at_ms = None;
            let completed = local.exit_code == Some(0);
            local.promise = if completed {
                Promise::Kept
            } else {
                Promise::Broken
            };
            let restart = task.spec.restart;
            local.message = match restart.attempts_max {
                Some(most) if local.attempt >= most && restart_wanted(task, local) => format!(
                    "{}; not restarted: {} of at most {most} attempts made",
                    local.message, local.attempt
                ),
                _ if completed => format!("{}; completed", local.message),
                _ => format!(
                    "{}; restart policy {} does not restart it",
                    local.message,
                    restart.policy().as_str()
                ),
            };
        }
    }
}

fn restart_wanted(task: &Task, local: &Local) -> bool {
    match task.spec.restart.policy() {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => local.exit_code != Some(0),
        RestartPolicy::Never => false,
    }
}

fn restart_delay_ms(task: &Task, local: &Local) -> Option<u64> {
    let restart = task.spec.restart;
    let attempts_left = restart.attempts_max.is_none_or(|most| local.attempt < most);
    (restart_wanted(task, local) && attempts_left).then(|| {
        doubled_ms(
            restart.backoff_initial.0,
            local.restarts,
            restart.backoff_max.0,
        )
    })
}

/// `first` doubled `times` times, at most `last`.
fn doubled_ms(first: u64, times: u32, last: u64) -> u64 {
    let doubling = 1_u64.checked_shl(times.min(32)).unwrap_or(u64::MAX);
    first.saturating_mul(doubling).min(last)
}

/// The wait before try `failures + 1` of an attempt.
fn transient_wait_ms(failures: u32) -> u64 {
    doubled_ms(
        TRANSIENT_WAIT_FIRST_MS,
        failures.saturating_sub(1),
        TRANSIENT_WAIT_LAST_MS,
    )
}

fn start(task: &Task, local: &mut Local, replace: bool, step: &mut Step) {
    local.attempt += 1;
    local.transient_failures = 0;
    try_again(task, local, replace, step);
}

/// Asks for the container of the current attempt.
fn try_again(task: &Task, local: &mut Local, replace: bool, step: &mut Step) {
    local.state = TaskState::Preparing;
    local.promise = Promise::Pending;
    local.message = "creating the container".into();
    local.exit_code = None;
    local.started_at_ms = None;
    local.in_flight = true;
    step.actions.push(Action::Run {
        task_id: task.id.clone(),
        attempt: local.attempt,
        replace,
    });
}

fn keep_stopped(task: &Task, local: &mut Local, container: Option<Observed>, step: &mut Step) {
    local.restart_at_ms = None;
    local.retry_at_ms = None;
    // A task meant to stop is not checked any more.
    local.health = None;
    match container {
        Some(_) => {
            local.in_flight = true;
            if local.state.rank() < TaskState::Stopping.rank() {
                local.state = TaskState::Stopping;
            }
            local.promise = Promise::Pending;
            local.message = "stopping".into();
            step.actions.push(Action::Destroy {
                container_id: task.id.clone(),
                grace_ms: task.spec.stop_grace_period.0,
            });
        }
        None if local.state != TaskState::Stopped => {
            local.state = TaskState::Stopped;
            local.promise = Promise::Kept;
            local.message = "stopped".into();
        }
        None => {}
    }
}

fn format_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests;

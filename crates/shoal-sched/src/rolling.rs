//! Rolling updates: a service whose spec changed replaces its tasks batch
//! by batch (format 13). A pure function of the state and the run's
//! `now_ms`, like the rest: no timers of its own, only the times tasks
//! report and the app's mark.
//!
//! Per service with tasks of an older spec (*outdated*):
//!
//! - a slot whose new task has *settled* (served, that is ran and was
//!   healthy, for `monitor`) stops its outdated task;
//! - new tasks that have not settled are *in flight*; while fewer than
//!   `parallelism` are, and `delay` has passed since the last batch
//!   settled, the next outdated slots begin: start-first places a new task
//!   beside the outdated one (`Placement::beside`), stop-first stops the
//!   outdated one so that the slot is placed again; a start-first slot
//!   whose new task fits on no node beside falls back to stop-first where
//!   the new task fits in the outdated one's place;
//! - a new task that fails, exits, restarts or turns unhealthy before it
//!   settled has failed; more than `max_failure_ratio` of the new tasks
//!   failed and the update takes its `failure_action`: `continue` counts
//!   the slot as done, `pause` and `rollback` go into the plan as a
//!   [`RolloutStep`] (a rollback that fails pauses) and no batch begins;
//! - once no outdated task is left and every task of the update settled,
//!   a finish step marks the app's update done: failures after that are
//!   the restart policy's, not the update's.
//!
//! An app whose rollout is paused begins no batch until it is applied
//! again. Two tasks in a slot at most: more outdated tasks than one (the
//! app changed again mid-update) keep the one that serves.

use shoal_state::fit::{self, Request};
use shoal_state::history::{MarkState, RolloutAction, RolloutStep};
use shoal_state::FastMap as HashMap;
use shoal_types::{
    DesiredState, FailureAction, Health, Kind, ServiceSpec, Task, TaskState, UpdateOrder, RATIO_ONE,
};

use crate::{services_of, Scheduler, StopReason};

/// When a task began to serve: it runs and, if its service has a check,
/// its node said it is healthy (the time of that report).
fn serving_since(task: &Task) -> Option<u64> {
    if task.status.state != TaskState::Running {
        return None;
    }
    match task.health() {
        None => task.status.started_at_ms,
        Some(Health::Healthy) => Some(task.status.updated_at_ms),
        Some(_) => None,
    }
}

/// Whether a task that has not settled failed its update: it stopped,
/// restarted or turned unhealthy.
fn failed(task: &Task) -> bool {
    matches!(task.status.state, TaskState::Failed | TaskState::Exited)
        || task.status.attempt > 1
        || task.health() == Some(Health::Unhealthy)
}

/// What an update that failed does, and what it knows for it.
struct Failure<'t> {
    action: FailureAction,
    /// Whether the version failing is itself a rollback.
    rolled_back: bool,
    failed_task: Option<&'t Task>,
    /// The version its outdated tasks run, if the app keeps it.
    back_to: Option<u64>,
}

/// The first version of the app's run of versions (the current one and
/// those right before it) whose spec of `service` makes the same task.
fn first_version_of(app: &shoal_state::App, service: &ServiceSpec) -> u64 {
    let mut first = app.version;
    let pin = app.images.get(&service.name);
    for entry in &app.history {
        if !entry.makes(service, pin) {
            break;
        }
        first = entry.version;
    }
    first
}

/// The version a failing update of `service` goes back to: the newest
/// one the app keeps whose spec of the service, and pinned image, the
/// outdated tasks it keeps still run; with none kept (stop-first, the last
/// batch), the version before the update (`base`).
fn back_to(
    app: Option<&shoal_state::App>,
    kept: &[&Task],
    service: &ServiceSpec,
    base: u64,
) -> Option<u64> {
    let history = &app?.history;
    let Some(kept) = kept.iter().min_by_key(|task| (task.slot, task.id.as_str())) else {
        return history
            .iter()
            .find(|entry| entry.version < base)
            .map(|entry| entry.version);
    };
    // A kept task from before pins runs whatever its version pinned.
    history
        .iter()
        .find(|entry| {
            let pin = kept.image.as_ref().or(entry.images.get(&service.name));
            entry.makes(&kept.spec, pin)
        })
        .map(|entry| entry.version)
}

/// Whether an app's current version is an update under way: it replaced
/// another, and is neither done nor paused.
fn watched(app: &shoal_state::App) -> bool {
    !app.history.is_empty()
        && app
            .rollout_mark()
            .is_none_or(|mark| mark.state == MarkState::RolledBack)
}

/// How a new task failed, for the rollout's mark.
fn failure_words(task: &Task) -> String {
    let health = if task.health() == Some(Health::Unhealthy) {
        ", unhealthy"
    } else {
        ""
    };
    format!(
        "task {} {}{health} (attempt {}): {}",
        task.id,
        task.status.state.as_str(),
        task.status.attempt,
        task.status.message
    )
}

impl<'a> Scheduler<'a> {
    /// Whether this run rolls: the state holds a format-13 entry and the
    /// cluster's format, as the leader knows it, is 13 too.
    pub(crate) fn rolls(&self) -> bool {
        self.state.log_version >= shoal_state::format::ROLLOUTS
            && self.options.format >= shoal_state::format::ROLLOUTS
    }

    /// Rolls every service with outdated tasks one step on, watches the
    /// services of an update that is not done yet, and marks an app's
    /// update done once all its services are.
    pub(crate) fn roll(&mut self) {
        if !self.rolls() {
            return;
        }
        let state = self.state;
        if self.outdated.is_empty() && !state.apps.values().any(watched) {
            return;
        }
        let mut apps: Vec<(&'a str, u64, bool)> = Vec::new();
        for (app, version, service) in services_of(state) {
            let sid = self.sid(app, service);
            let watching = state.apps.get(app).is_some_and(watched);
            if !watching && !self.outdated.contains_key(&sid) {
                continue;
            }
            let done = self.roll_service(app, version, service, sid);
            match apps.last_mut() {
                Some((last, _, all)) if *last == app => *all &= done,
                _ => apps.push((app, version, done)),
            }
        }
        for (app, version, done) in apps {
            let stepped = self.plan.rollouts.iter().any(|step| step.app == app);
            if done && !stepped && state.apps.get(app).is_some_and(watched) {
                self.plan.rollouts.push(RolloutStep {
                    app: app.to_string(),
                    version,
                    action: RolloutAction::Finish,
                    reason: String::new(),
                    to_version: None,
                });
            }
        }
    }

    /// Rolls one service a step on; whether its update is done (no
    /// outdated task left, every task of the update served for `monitor`).
    fn roll_service(
        &mut self,
        app: &'a str,
        version: u64,
        service: &'a ServiceSpec,
        sid: u32,
    ) -> bool {
        let state = self.state;
        let update = service.update();
        let now = self.options.now_ms;
        let outdated = self.outdated.remove(&sid).unwrap_or_default();
        let had_old = !outdated.is_empty();
        let mut old: HashMap<u32, Vec<(&'a Task, StopReason)>> = HashMap::default();
        for (task, why) in outdated {
            old.entry(task.slot).or_default().push((task, why));
        }
        let new = self.new_tasks(app, service, &old);
        let app_state = state.apps.get(app);
        // The update's own tasks: placed since the service got this spec
        // (a later scale-only version included, a rollback's old tasks not).
        let base = app_state.map_or(version, |app| first_version_of(app, service));
        let ours = |task: &Task| task.app_version >= base;
        let settled = |task: &Task| {
            serving_since(task).is_some_and(|since| now >= since.saturating_add(update.monitor.0))
        };
        let (mut failures, mut updated, mut last_settled) = (0u64, 0u64, 0u64);
        for task in new.values().filter(|task| ours(task)) {
            updated += 1;
            if settled(task) {
                let since = serving_since(task).unwrap_or(0);
                last_settled = last_settled.max(since.saturating_add(update.monitor.0));
            } else if failed(task) {
                failures += 1;
            }
        }
        // Failures within `max_failure_ratio` (any, under `continue`) count
        // as done: the update goes on.
        let ratio = u64::from(update.max_failure_ratio.0);
        let failing = update.failure_action != FailureAction::Continue
            && failures * u64::from(RATIO_ONE) > ratio * updated.max(1);
        let done = |task: &Task| settled(task) || (!failing && ours(task) && failed(task));
        let mut in_flight = new.values().filter(|task| !done(task)).count();
        // Stop-first: a slot with no task at all (its new one fits nowhere
        // yet) is in flight too, so that no more than `parallelism` slots
        // are ever empty (as Kubernetes' `maxUnavailable`).
        if service.kind == Kind::Service && update.order == UpdateOrder::StopFirst {
            let held = (0..service.replicas)
                .filter(|slot| new.contains_key(slot) || old.contains_key(slot))
                .count();
            in_flight += (service.replicas as usize).saturating_sub(held);
        }
        let (waiting, kept) = self.retire_done(sid, old, &new, &done);
        let mark = app_state.and_then(|app| app.rollout_mark());
        if failing {
            // One step per version and app: a rollback that fails too
            // pauses.
            let rolled_back = mark.is_some_and(|mark| mark.state == MarkState::RolledBack);
            let stepped = self.plan.rollouts.iter().any(|step| step.app == app);
            if (mark.is_none() || rolled_back) && !stepped {
                let failed_task = new
                    .values()
                    .filter(|task| ours(task) && !settled(task) && failed(task))
                    .min_by_key(|task| task.id.as_str())
                    .copied();
                let step = Failure {
                    action: update.failure_action,
                    rolled_back,
                    failed_task,
                    back_to: back_to(app_state, &kept, service, base),
                };
                self.take_failure_action(app, version, step);
            }
            return false;
        }
        let paused = mark.is_some_and(|mark| mark.state == MarkState::Paused);
        if paused || (update.delay.0 > 0 && now < last_settled.saturating_add(update.delay.0)) {
            return false;
        }
        let budget = (update.parallelism as usize).saturating_sub(in_flight);
        self.begin(sid, service, update.order, waiting, budget);
        !had_old
            && new
                .values()
                .filter(|task| ours(task))
                .all(|task| settled(task))
    }

    /// Begins up to `budget` of the `waiting` slots.
    fn begin(
        &mut self,
        sid: u32,
        service: &ServiceSpec,
        order: UpdateOrder,
        waiting: Vec<u32>,
        budget: usize,
    ) {
        let mut begun = 0;
        for slot in waiting {
            if begun >= budget {
                break;
            }
            match order {
                UpdateOrder::StartFirst => {
                    self.filled.remove(&(sid, slot));
                    self.beside.insert((sid, slot));
                }
                UpdateOrder::StopFirst => {
                    let Some(&(outdated, why)) = self.rolling_old.get(&(sid, slot)) else {
                        continue;
                    };
                    // A global service's new task must fit where the old
                    // one runs, or its node would be left without one.
                    if service.kind == Kind::Global
                        && self.fits_instead(outdated, service).is_none()
                    {
                        continue;
                    }
                    self.rolling_old.remove(&(sid, slot));
                    self.unkeep(outdated);
                    self.stop(outdated, why);
                }
            }
            begun += 1;
        }
    }

    /// Stops the outdated task of each slot whose new task is done, keeps
    /// one outdated task in every other slot, and says which slots wait for
    /// a batch to begin them, lowest first, and which outdated tasks stay.
    fn retire_done(
        &mut self,
        sid: u32,
        mut old: HashMap<u32, Vec<(&'a Task, StopReason)>>,
        new: &HashMap<u32, &'a Task>,
        done: &dyn Fn(&Task) -> bool,
    ) -> (Vec<u32>, Vec<&'a Task>) {
        let mut waiting: Vec<u32> = Vec::new();
        let mut kept: Vec<&'a Task> = Vec::new();
        let mut slots: Vec<u32> = old.keys().copied().collect();
        slots.sort_unstable();
        for slot in slots {
            let mut tasks = old.remove(&slot).unwrap_or_default();
            // The one that serves, the newest first, stays.
            tasks.sort_by_key(|(task, _)| {
                (
                    std::cmp::Reverse(serving_since(task).is_some()),
                    std::cmp::Reverse(task.created_at_ms),
                )
            });
            for (extra, why) in tasks.drain(1..) {
                self.unkeep(extra);
                self.stop(extra, why);
            }
            let Some(&(outdated, why)) = tasks.first() else {
                continue;
            };
            match new.get(&slot) {
                Some(task) if done(task) => {
                    self.unkeep(outdated);
                    self.stop(outdated, why);
                }
                // Two tasks hold the slot until the new one is done.
                Some(_) => {
                    self.doubled.insert((sid, slot));
                    kept.push(outdated);
                }
                None => {
                    waiting.push(slot);
                    kept.push(outdated);
                    self.rolling_old.insert((sid, slot), (outdated, why));
                }
            }
            // Whatever stopped, the slot is held (by its new task or the
            // outdated one) until a batch begins it.
            self.filled.insert((sid, slot));
        }
        (waiting, kept)
    }

    /// The node a task of `service` would take instead of `outdated`: the
    /// one `outdated` runs on, if it admits the new spec and has room for
    /// it once `outdated` is gone.
    fn fits_instead(&self, outdated: &Task, service: &ServiceSpec) -> Option<u32> {
        // Spread limits count the same only if the new spec spreads alike.
        if self.stopped.contains(outdated.id.as_str())
            || outdated.spec.placement.spread != service.placement.spread
        {
            return None;
        }
        let at = *self.index.get(outdated.node.as_str())?;
        let info = &self.nodes[at as usize];
        fit::admits(info.node, service).ok()?;
        let mut used = info.used;
        used.subtract(Request::of(&outdated.spec));
        fit::fits_within(info.allocatable, used, Request::of(service)).ok()?;
        let mut ports = info.host_ports.clone();
        fit::release_host_ports(&mut ports, &outdated.spec);
        fit::host_port_taken(&ports, service).ok()?;
        Some(at)
    }

    /// The tasks of a service meant to run that are not outdated (nor
    /// stopped this run), by slot.
    fn new_tasks(
        &self,
        app: &str,
        service: &ServiceSpec,
        old: &HashMap<u32, Vec<(&'a Task, StopReason)>>,
    ) -> HashMap<u32, &'a Task> {
        let state: &'a shoal_state::State = self.state;
        // The service's tasks are one run of ids (`APP.SERVICE.SLOT.SERIAL`,
        // names without dots).
        let prefix = format!("{app}.{}.", service.name);
        let mut new: HashMap<u32, &'a Task> = HashMap::default();
        for (id, task) in state.tasks.range(prefix.clone()..) {
            if !id.starts_with(&prefix) {
                break;
            }
            if task.desired == DesiredState::Running
                && !self.stopped.contains(task.id.as_str())
                && !old
                    .get(&task.slot)
                    .is_some_and(|tasks| tasks.iter().any(|(other, _)| other.id == task.id))
            {
                new.insert(task.slot, task);
            }
        }
        new
    }

    /// A failed update's step into the plan: a rollback, or a pause (by
    /// the spec, as a rollback failed too, or with no version to go back
    /// to).
    fn take_failure_action(&mut self, app: &str, version: u64, failure: Failure<'_>) {
        let action = match (failure.action, failure.back_to) {
            (FailureAction::Rollback, Some(_)) if !failure.rolled_back => RolloutAction::Rollback,
            _ => RolloutAction::Pause,
        };
        let mut reason = failure.failed_task.map_or_else(String::new, failure_words);
        if failure.action == FailureAction::Rollback && failure.back_to.is_none() {
            reason.push_str("; no version before kept to roll back to, so paused");
        }
        self.plan.rollouts.push(RolloutStep {
            app: app.to_string(),
            version,
            action,
            reason,
            to_version: failure
                .back_to
                .filter(|_| action == RolloutAction::Rollback),
        });
    }

    /// A start-first slot whose new task fits on no node beside the
    /// outdated one: if it fits where the outdated one runs once that one
    /// is gone, the outdated task stops and that node is where the new one
    /// goes; otherwise both wait (the slot is reported unplaced).
    pub(crate) fn fall_back_to_stop_first(
        &mut self,
        sid: u32,
        slot: u32,
        service: &ServiceSpec,
    ) -> Option<u32> {
        if !self.beside.contains(&(sid, slot)) {
            return None;
        }
        let &(outdated, why) = self.rolling_old.get(&(sid, slot))?;
        let at = self.fits_instead(outdated, service)?;
        self.beside.remove(&(sid, slot));
        self.rolling_old.remove(&(sid, slot));
        self.unkeep(outdated);
        self.stop(outdated, why);
        Some(at)
    }
}

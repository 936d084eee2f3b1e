//! Rolling updates, run after run at times the test sets.

use shoal_state::history::{MarkState, RolloutAction};
use shoal_state::Plan;
use shoal_types::{DesiredState, Health, TaskState, TaskStatus};

use super::Cluster;
use crate::reconcile_at;

const ROLLING: &str =
    "name: web\nservices:\n  - name: hello\n    image: busybox\n    replicas: 3\n";
const BLUE: &str = "    env: {COLOR: blue}\n";
const MONITOR_MS: u64 = 5_000;

impl Cluster {
    /// Runs the scheduler at `now` and applies its plan.
    fn schedule_at(&mut self, now: u64) -> Plan {
        let plan = reconcile_at(&self.state, now, shoal_state::LOG_VERSION);
        if let shoal_state::Outcome::PlanApplied { rejected, .. } =
            self.apply(shoal_state::Command::ApplyPlan { plan: plan.clone() })
        {
            assert!(rejected.is_empty(), "fresh plan rejected: {rejected:?}");
        }
        plan
    }

    fn report(&mut self, id: &str, change: impl FnOnce(&mut TaskStatus)) {
        let task = &self.state.tasks[id];
        let mut status = task.status.clone();
        change(&mut status);
        let node = task.node.clone();
        self.apply(shoal_state::Command::ReportTasks {
            node,
            statuses: vec![(id.to_string(), status)],
        });
    }

    /// Every task placed and not yet taken up runs from `at` on (and is
    /// healthy then, if its service has a check); every task told to stop
    /// has stopped.
    fn settle_nodes(&mut self, at: u64) {
        let ids: Vec<(String, DesiredState, TaskState)> = self
            .state
            .tasks
            .values()
            .map(|task| (task.id.clone(), task.desired, task.status.state))
            .collect();
        for (id, desired, state) in ids {
            match (desired, state) {
                (DesiredState::Running, TaskState::Pending) => {
                    let checked = self.state.tasks[&id].spec.health.is_some();
                    self.report(&id, |status| {
                        status.attempt = 1;
                        status.state = TaskState::Running;
                        status.started_at_ms = Some(at);
                        status.updated_at_ms = at;
                        status.health = checked.then_some(Health::Healthy);
                    });
                }
                (DesiredState::Stopped, state) if state != TaskState::Stopped => {
                    self.report(&id, |status| status.state = TaskState::Stopped);
                }
                _ => {}
            }
        }
    }

    /// Desired-running tasks per slot of `hello`, as (slot, version) pairs.
    fn slots(&self) -> Vec<(u32, u64)> {
        let mut slots: Vec<(u32, u64)> = self
            .state
            .tasks
            .values()
            .filter(|task| task.desired == DesiredState::Running)
            .map(|task| (task.slot, task.app_version))
            .collect();
        slots.sort_unstable();
        slots
    }

    /// Whether a run at `now` would place, stop or mark nothing (it may
    /// forget stopped tasks).
    fn quiet_at(&self, now: u64) -> bool {
        let plan = reconcile_at(&self.state, now, shoal_state::LOG_VERSION);
        plan.place.is_empty() && plan.stop.is_empty() && plan.rollouts.is_empty()
    }

    /// The one task of `version` in `slot`.
    fn task_of(&self, slot: u32, version: u64) -> String {
        self.state
            .tasks
            .values()
            .find(|task| {
                task.slot == slot
                    && task.app_version == version
                    && task.desired == DesiredState::Running
            })
            .map(|task| task.id.clone())
            .expect("a task in the slot")
    }
}

fn rolled_out(update: &str) -> (Cluster, u64) {
    let mut cluster = Cluster::with_nodes(&["a", "b"]);
    let spec = format!("{ROLLING}    update: {update}\n");
    cluster.put(&spec);
    cluster.schedule_at(0);
    cluster.settle_nodes(0);
    cluster.put(&format!("{spec}{BLUE}"));
    // Version 1's tasks settled long ago.
    (cluster, 60_000)
}

#[test]
fn start_first_starts_one_new_task_and_stops_the_old_one_once_the_new_served_for_monitor() {
    let (mut cluster, mut now) = rolled_out("{}");
    let plan = cluster.schedule_at(now);
    assert_eq!(plan.place.len(), 1);
    assert!(plan.place[0].beside && plan.stop.is_empty(), "{plan:?}");
    assert_eq!(cluster.slots(), [(0, 1), (0, 2), (1, 1), (2, 1)]);
    for slot in 0..3 {
        // Not taken up yet: it waits, however long.
        assert!(cluster.quiet_at(now + 60_000), "slot {slot}");
        cluster.settle_nodes(now);
        assert!(cluster.quiet_at(now + MONITOR_MS - 1), "slot {slot}");
        now += MONITOR_MS;
        let plan = cluster.schedule_at(now);
        let stopped: Vec<(u32, u64)> = plan
            .stop
            .iter()
            .map(|id| {
                (
                    cluster.state.tasks[id].slot,
                    cluster.state.tasks[id].app_version,
                )
            })
            .collect();
        assert_eq!(stopped, [(slot, 1)], "{plan:?}");
        let placed: Vec<(u32, bool)> = plan.place.iter().map(|p| (p.slot, p.beside)).collect();
        if slot < 2 {
            assert_eq!(placed, [(slot + 1, true)]);
        } else {
            assert!(placed.is_empty());
        }
        // Every slot keeps a running task throughout.
        for held in 0..3 {
            assert!(cluster.state.tasks.values().any(|task| task.slot == held
                && task.desired == DesiredState::Running
                && task.status.state == TaskState::Running));
        }
    }
    cluster.settle_nodes(now);
    assert_eq!(cluster.slots(), [(0, 2), (1, 2), (2, 2)]);
    let rollout = cluster.state.rollout("web").expect("rollout");
    assert!(rollout.done, "{rollout:?}");
    // Done, as the last new task served for `monitor`: marked so, and a
    // task that fails later is its restart policy's, not the update's.
    let plan = cluster.schedule_at(now);
    assert_eq!(plan.rollouts[0].action, RolloutAction::Finish, "{plan:?}");
    let mark = cluster.state.apps["web"].rollout_mark().expect("mark");
    assert_eq!(mark.state, MarkState::Done);
    let task = cluster.task_of(1, 2);
    cluster.report(&task, |status| {
        status.attempt = 2;
        status.state = TaskState::Failed;
    });
    assert!(cluster.quiet_at(now + 60_000));
}

#[test]
fn stop_first_stops_a_batch_of_parallelism_then_places_it() {
    let (mut cluster, now) = rolled_out("{order: stop-first, parallelism: 2}");
    let plan = cluster.schedule_at(now);
    let stopped: Vec<u32> = plan
        .stop
        .iter()
        .map(|id| cluster.state.tasks[id].slot)
        .collect();
    assert_eq!(stopped, [0, 1]);
    let placed: Vec<(u32, bool)> = plan.place.iter().map(|p| (p.slot, p.beside)).collect();
    assert_eq!(placed, [(0, false), (1, false)]);
    cluster.settle_nodes(now);
    let plan = cluster.schedule_at(now + MONITOR_MS);
    assert_eq!(plan.stop.len(), 1);
    assert_eq!(plan.place.iter().map(|p| p.slot).collect::<Vec<_>>(), [2]);
}

#[test]
fn a_checked_task_settles_only_monitor_after_its_node_said_it_is_healthy() {
    let (mut cluster, now) = rolled_out("{}");
    let check = "    ports: [{name: http, container_port: 80}]\n    health: {http: {port: http}}\n";
    let spec = format!("{ROLLING}    update: {{}}\n{check}");
    cluster.put(&spec);
    cluster.schedule_at(now);
    let new = cluster.task_of(0, 3);
    cluster.report(&new, |status| {
        status.attempt = 1;
        status.state = TaskState::Running;
        status.started_at_ms = Some(now);
        status.updated_at_ms = now;
    });
    assert!(
        cluster.quiet_at(now + 600_000),
        "starting: it never settles"
    );
    let healthy_at = now + 20_000;
    cluster.report(&new, |status| {
        status.health = Some(Health::Healthy);
        status.updated_at_ms = healthy_at;
    });
    assert!(cluster.quiet_at(healthy_at + MONITOR_MS - 1));
    let plan = cluster.schedule_at(healthy_at + MONITOR_MS);
    assert_eq!(plan.stop.len(), 1);
}

#[test]
fn a_new_task_that_fails_rolls_the_app_back_to_the_version_before() {
    let (mut cluster, now) = rolled_out("{}");
    let before = cluster.state.apps["web"].history[0].spec.clone();
    cluster.schedule_at(now);
    let new = cluster.task_of(0, 2);
    cluster.report(&new, |status| {
        status.attempt = 1;
        status.state = TaskState::Failed;
        status.message = "exited with 1".into();
    });
    let plan = cluster.schedule_at(now + 100);
    assert_eq!(plan.rollouts.len(), 1, "{plan:?}");
    assert_eq!(
        (plan.rollouts[0].action, plan.rollouts[0].version),
        (RolloutAction::Rollback, 2)
    );
    assert!(plan.place.is_empty(), "no batch begins: {plan:?}");
    let app = &cluster.state.apps["web"];
    assert_eq!((app.version, &app.spec), (3, &before));
    let mark = app.rollout_mark().expect("a mark");
    assert_eq!(
        (mark.state, mark.failed_version),
        (MarkState::RolledBack, Some(2))
    );
    assert!(
        mark.reason.contains(&new) && mark.reason.contains("exited with 1"),
        "{mark:?}"
    );
    // The old tasks run the spec of version 3: only the failed one stops.
    let plan = cluster.schedule_at(now + 200);
    assert_eq!(plan.stop, [new]);
    assert!(
        plan.place.is_empty() && plan.rollouts.is_empty(),
        "{plan:?}"
    );
    cluster.settle_nodes(now + 200);
    assert_eq!(cluster.slots(), [(0, 1), (1, 1), (2, 1)]);
    assert!(cluster.state.rollout("web").expect("rollout").done);
}

#[test]
fn pause_stops_taking_batches_until_the_app_is_applied_again() {
    let (mut cluster, now) = rolled_out("{failure_action: pause}");
    cluster.schedule_at(now);
    let new = cluster.task_of(0, 2);
    cluster.report(&new, |status| {
        status.attempt = 2;
        status.state = TaskState::Running;
        status.started_at_ms = Some(now);
    });
    let plan = cluster.schedule_at(now + 100);
    assert_eq!(plan.rollouts[0].action, RolloutAction::Pause);
    let rollout = cluster.state.rollout("web").expect("rollout");
    assert_eq!(rollout.mark.map(|mark| mark.state), Some(MarkState::Paused));
    assert!(!rollout.done);
    // Once it settled, its slot's old task stops; no further batch begins.
    let plan = cluster.schedule_at(now + 600_000);
    assert!(plan.place.is_empty(), "{plan:?}");
    assert_eq!(plan.stop.len(), 1);
    assert!(cluster.quiet_at(now + 600_000));
    // The same spec applied again goes on from where it stopped.
    cluster.put(&format!(
        "{ROLLING}    update: {{failure_action: pause}}\n{BLUE}"
    ));
    assert_eq!(cluster.state.apps["web"].version, 2);
    assert!(cluster.state.apps["web"].rollout_mark().is_none());
    let plan = cluster.schedule_at(now + 600_001);
    assert_eq!(plan.place.iter().map(|p| p.slot).collect::<Vec<_>>(), [1]);
}

#[test]
fn continue_counts_a_failed_task_as_done_and_goes_on() {
    let (mut cluster, now) = rolled_out("{failure_action: continue}");
    cluster.schedule_at(now);
    let new = cluster.task_of(0, 2);
    cluster.report(&new, |status| {
        status.attempt = 1;
        status.state = TaskState::Failed;
    });
    let plan = cluster.schedule_at(now + 100);
    assert!(plan.rollouts.is_empty());
    assert_eq!(plan.stop.len(), 1, "the old task of slot 0 stops");
    let placed: Vec<(u32, bool)> = plan.place.iter().map(|p| (p.slot, p.beside)).collect();
    assert_eq!(placed, [(1, true)]);
}

#[test]
fn a_rollback_that_fails_too_pauses() {
    let (mut cluster, now) = rolled_out("{}");
    // Slot 0 goes to version 2; slot 1's version 2 fails: back to version
    // 1's spec as version 3, which slot 0 must roll back to in turn.
    cluster.schedule_at(now);
    cluster.settle_nodes(now);
    cluster.schedule_at(now + MONITOR_MS);
    let failing = cluster.task_of(1, 2);
    cluster.report(&failing, |status| {
        status.attempt = 1;
        status.state = TaskState::Failed;
    });
    let plan = cluster.schedule_at(now + MONITOR_MS + 100);
    assert_eq!(plan.rollouts[0].action, RolloutAction::Rollback);
    let plan = cluster.schedule_at(now + MONITOR_MS + 200);
    let placed: Vec<(u32, u64, bool)> = plan
        .place
        .iter()
        .map(|p| (p.slot, p.app_version, p.beside))
        .collect();
    assert_eq!(placed, [(0, 3, true)], "{plan:?}");
    let replacement = cluster.task_of(0, 3);
    cluster.report(&replacement, |status| {
        status.attempt = 1;
        status.state = TaskState::Failed;
    });
    let plan = cluster.schedule_at(now + MONITOR_MS + 300);
    assert_eq!(plan.rollouts[0].action, RolloutAction::Pause, "{plan:?}");
    let app = &cluster.state.apps["web"];
    let mark = app.rollout_mark().expect("mark");
    assert_eq!(
        (mark.state, mark.failed_version, app.version),
        (MarkState::Paused, Some(2), 3)
    );
    assert!(cluster.quiet_at(now + 600_000));
}

#[test]
fn no_room_beside_the_old_task_stops_it_first() {
    let mut cluster = Cluster::with_nodes(&["a"]);
    let spec = "name: web\nservices: [{name: hello, image: busybox, ports: [{container_port: 80, host_port: 8080}]}]\n";
    cluster.put(spec);
    cluster.schedule_at(0);
    cluster.settle_nodes(0);
    cluster.put(&spec.replace("image: busybox", "image: busybox, args: [x]"));
    let plan = cluster.schedule_at(1_000);
    assert_eq!(plan.stop.len(), 1);
    assert_eq!(plan.place.len(), 1);
    assert!(!plan.place[0].beside, "{plan:?}");
}

#[test]
fn a_change_mid_update_keeps_two_tasks_a_slot_at_most() {
    let (mut cluster, now) = rolled_out("{}");
    cluster.schedule_at(now);
    cluster.settle_nodes(now);
    // Version 2 of slot 0 serves but has not settled: version 3 comes.
    cluster.put(&format!(
        "{ROLLING}    update: {{}}\n    env: {{COLOR: green}}\n"
    ));
    let plan = cluster.schedule_at(now + 100);
    let stopped: Vec<(u32, u64)> = plan
        .stop
        .iter()
        .map(|id| {
            (
                cluster.state.tasks[id].slot,
                cluster.state.tasks[id].app_version,
            )
        })
        .collect();
    assert_eq!(stopped, [(0, 1)], "the older of the two outdated tasks");
    let placed: Vec<(u32, u64, bool)> = plan
        .place
        .iter()
        .map(|p| (p.slot, p.app_version, p.beside))
        .collect();
    assert_eq!(placed, [(0, 3, true)]);
    assert_eq!(cluster.slots(), [(0, 2), (0, 3), (1, 1), (2, 1)]);
}

#[test]
fn before_format_13_a_changed_service_is_replaced_at_once() {
    let (mut cluster, now) = rolled_out("{}");
    // A leader that knows an older node.
    let plan = reconcile_at(&cluster.state, now, shoal_state::format::ROLLOUTS - 1);
    assert_eq!((plan.stop.len(), plan.place.len()), (3, 3));
    assert!(plan.place.iter().all(|p| !p.beside) && plan.rollouts.is_empty());
    // A state that holds no format-13 entry yet.
    cluster.state.log_version = shoal_state::format::ROLLOUTS - 1;
    let plan = reconcile_at(&cluster.state, now, shoal_state::LOG_VERSION);
    assert_eq!((plan.stop.len(), plan.place.len()), (3, 3));
    assert!(plan.place.iter().all(|p| !p.beside));
}

#[test]
fn a_new_spec_that_fits_nowhere_stops_no_more_than_one_batch() {
    for order in ["stop-first", "start-first"] {
        let (mut cluster, now) = rolled_out(&format!("{{order: {order}}}"));
        cluster.put(&format!(
            "{ROLLING}    update: {{order: {order}}}\n    resources: {{cpu: 1000}}\n"
        ));
        let mut stopped = 0;
        for step in 0..5 {
            let plan = cluster.schedule_at(now + step * 10_000);
            stopped += plan.stop.len();
            assert!(plan.place.is_empty(), "{order}: {plan:?}");
            assert_eq!(
                cluster.state.unplaced.iter().map(|u| u.count).sum::<u32>(),
                1,
                "{order}"
            );
        }
        let wanted = if order == "stop-first" { 1 } else { 0 };
        assert_eq!(stopped, wanted, "{order}");
    }
}

#[test]
fn a_rollback_goes_back_to_the_version_the_old_tasks_run() {
    // Version 2 changes the spec; version 3 only scales it, mid-update.
    let (mut cluster, now) = rolled_out("{}");
    let first = cluster.state.apps["web"].history[0].spec.clone();
    cluster.schedule_at(now);
    let scaled = format!("{ROLLING}    update: {{}}\n{BLUE}").replace("replicas: 3", "replicas: 4");
    cluster.put(&scaled);
    let new = cluster.task_of(0, 2);
    cluster.report(&new, |status| {
        status.attempt = 1;
        status.state = TaskState::Failed;
    });
    let plan = cluster.schedule_at(now + 100);
    assert_eq!(
        (plan.rollouts[0].action, plan.rollouts[0].to_version),
        (RolloutAction::Rollback, Some(1)),
        "{plan:?}"
    );
    let app = &cluster.state.apps["web"];
    assert_eq!((app.version, &app.spec), (4, &first));
    assert_eq!(
        app.rollout_mark().and_then(|mark| mark.failed_version),
        Some(3)
    );
}

#[test]
fn the_last_batch_failing_rolls_back_too() {
    // One replica, start-first: the failing batch is the last one.
    let mut cluster = Cluster::with_nodes(&["a"]);
    let spec = "name: web\nservices:\n  - name: hello\n    image: busybox\n";
    cluster.put(spec);
    cluster.schedule_at(0);
    cluster.settle_nodes(0);
    cluster.put(&format!("{spec}{BLUE}"));
    cluster.schedule_at(60_000);
    let new = cluster.task_of(0, 2);
    cluster.report(&new, |status| {
        status.attempt = 1;
        status.state = TaskState::Failed;
    });
    let plan = cluster.schedule_at(60_100);
    assert_eq!(
        (plan.rollouts[0].action, plan.rollouts[0].to_version),
        (RolloutAction::Rollback, Some(1)),
        "{plan:?}"
    );

    // Stop-first, all at once: no old task is left while the new ones run,
    // and a failing one still rolls the app back.
    let (mut cluster, now) = rolled_out("{order: stop-first, parallelism: 0}");
    let plan = cluster.schedule_at(now);
    assert_eq!((plan.stop.len(), plan.place.len()), (3, 3));
    cluster.settle_nodes(now);
    let new = cluster.task_of(2, 2);
    cluster.report(&new, |status| {
        status.attempt = 2;
        status.started_at_ms = Some(now + 500);
    });
    let plan = cluster.schedule_at(now + 1_000);
    assert_eq!(
        (plan.rollouts[0].action, plan.rollouts[0].to_version),
        (RolloutAction::Rollback, Some(1)),
        "{plan:?}"
    );
}

#[test]
fn a_slot_that_fits_nowhere_before_the_update_does_not_hold_a_start_first_one_back() {
    // One task per node on two nodes: the third replica is never placed.
    let mut cluster = Cluster::with_nodes(&["a", "b"]);
    let spec = format!("{ROLLING}    placement: {{spread: [{{over: node.name, max_per: 1}}]}}\n");
    cluster.put(&spec);
    cluster.schedule_at(0);
    cluster.settle_nodes(0);
    assert_eq!(cluster.slots().len(), 2);
    cluster.put(&format!("{spec}{BLUE}"));
    // No room beside under the spread limit: each slot stops first, in
    // place, one at a time.
    let plan = cluster.schedule_at(60_000);
    assert_eq!((plan.stop.len(), plan.place.len()), (1, 1), "{plan:?}");
    assert!(!plan.place[0].beside);
}

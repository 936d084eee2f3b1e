use std::collections::BTreeMap;

use shoal_types::{
    parse_app, DesiredState, Health, Probe, Promise, RestartPolicy, Task, TaskState, TaskStatus,
};

use super::*;

fn task(policy: RestartPolicy) -> Task {
    let spec = parse_app(b"name: web\nservices:\n  - name: hello\n    image: busybox\n    restart: {backoff_initial: 1s, backoff_max: 8s}\n")
        .expect("valid spec");
    let mut service = spec.services[0].clone();
    service.restart.policy = Some(policy);
    Task {
        id: "web.hello.0.1".into(),
        app: "web".into(),
        service: "hello".into(),
        slot: 0,
        app_version: 1,
        node: "a".into(),
        desired: DesiredState::Running,
        spec: std::sync::Arc::new(service),
        created_at_ms: 0,
        status: TaskStatus::pending(0),
        image: None,
    }
}

fn observed(state: Option<Observed>) -> BTreeMap<String, Observed> {
    state
        .map(|state| BTreeMap::from([("web.hello.0.1".to_string(), state)]))
        .unwrap_or_default()
}

const ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 42, 0, 7);

fn ran(reconciler: &mut Reconciler, attempt: u32, now_ms: u64) -> Vec<(String, TaskStatus)> {
    reconciler.on_result(
        ActionResult::Ran {
            task_id: "web.hello.0.1".into(),
            attempt,
            result: Ok(Some(ADDRESS)),
        },
        now_ms,
    )
}

#[test]
fn a_new_task_is_started_once_and_reported_running() {
    let task = task(RestartPolicy::Always);
    let mut reconciler = Reconciler::new();
    let step = reconciler.step(&[&task], &observed(None), 0);
    assert_eq!(
        step.actions,
        vec![Action::Run {
            task_id: task.id.clone(),
            attempt: 1,
            replace: false
        }]
    );
    assert_eq!(step.reports[0].1.state, TaskState::Preparing);
    // While the action runs, nothing else is asked for.
    assert!(reconciler
        .step(&[&task], &observed(None), 10)
        .actions
        .is_empty());
    let reports = ran(&mut reconciler, 1, 20);
    assert_eq!(reports[0].1.state, TaskState::Running);
    assert_eq!(reports[0].1.promise, Promise::Kept);
    assert_eq!(reports[0].1.address, Some(ADDRESS));
    let step = reconciler.step(&[&task], &observed(Some(Observed::Running)), 30);
    assert!(step.actions.is_empty() && step.reports.is_empty());
}

#[test]
fn an_exited_task_restarts_with_doubling_back_off_up_to_the_cap() {
    let task = task(RestartPolicy::Always);
    let mut reconciler = Reconciler::new();
    reconciler.step(&[&task], &observed(None), 0);
    ran(&mut reconciler, 1, 0);
    let mut now = 100;
    let mut delays = Vec::new();
    for attempt in 1..=6 {
        let step = reconciler.step(
            &[&task],
            &observed(Some(Observed::Exited { exit_code: 1 })),
            now,
        );
        assert!(
            step.actions.is_empty(),
            "no restart before the back-off ends"
        );
        let (_, status) = &step.reports[0];
        assert_eq!(
            (status.state, status.promise),
            (TaskState::Failed, Promise::Broken)
        );
        assert!(
            status.message.contains("exited with code 1; restarting in"),
            "{}",
            status.message
        );
        let wake = step.wake_at_ms.expect("a wake-up for the restart");
        delays.push(wake - now);
        assert!(reconciler
            .step(
                &[&task],
                &observed(Some(Observed::Exited { exit_code: 1 })),
                wake - 1
            )
            .actions
            .is_empty());
        let step = reconciler.step(
            &[&task],
            &observed(Some(Observed::Exited { exit_code: 1 })),
            wake,
        );
        assert_eq!(
            step.actions,
            vec![Action::Run {
                task_id: task.id.clone(),
                attempt: attempt + 1,
                replace: true
            }]
        );
        now = wake + 10;
        ran(&mut reconciler, attempt + 1, now);
        now += 100;
    }
    assert_eq!(delays, vec![1000, 2000, 4000, 8000, 8000, 8000]);
}

#[test]
fn a_task_that_ran_longer_than_the_cap_starts_its_back_off_over() {
    let task = task(RestartPolicy::Always);
    let mut reconciler = Reconciler::new();
    reconciler.step(&[&task], &observed(None), 0);
    ran(&mut reconciler, 1, 0);
    let step = reconciler.step(
        &[&task],
        &observed(Some(Observed::Exited { exit_code: 1 })),
        100,
    );
    let wake = step.wake_at_ms.expect("restart planned");
    reconciler.step(
        &[&task],
        &observed(Some(Observed::Exited { exit_code: 1 })),
        wake,
    );
    ran(&mut reconciler, 2, wake);
    let later = wake + 60_000;
    let step = reconciler.step(
        &[&task],
        &observed(Some(Observed::Exited { exit_code: 1 })),
        later,
    );
    assert_eq!(step.wake_at_ms, Some(later + 1000));
}

#[test]
fn on_failure_keeps_a_task_that_exited_cleanly() {
    let task = task(RestartPolicy::OnFailure);
    let mut reconciler = Reconciler::new();
    reconciler.step(&[&task], &observed(None), 0);
    ran(&mut reconciler, 1, 0);
    let step = reconciler.step(
        &[&task],
        &observed(Some(Observed::Exited { exit_code: 0 })),
        50,
    );
    let status = &step.reports[0].1;
    assert_eq!(
        (status.state, status.promise),
        (TaskState::Exited, Promise::Kept)
    );
    assert_eq!(step.wake_at_ms, None);
    assert!(reconciler
        .step(
            &[&task],
            &observed(Some(Observed::Exited { exit_code: 0 })),
            99_999
        )
        .actions
        .is_empty());
}

#[test]
fn never_leaves_a_failed_task_failed_and_says_why() {
    let task = task(RestartPolicy::Never);
    let mut reconciler = Reconciler::new();
    reconciler.step(&[&task], &observed(None), 0);
    let reports = reconciler.on_result(
        ActionResult::Ran {
            task_id: task.id.clone(),
            attempt: 1,
            result: Err(RunFailure::broken(
                "image docker.io/library/nope:latest is not on this node",
            )),
        },
        5,
    );
    assert_eq!(reports[0].1.state, TaskState::Failed);
    let step = reconciler.step(&[&task], &observed(None), 10);
    assert!(step.actions.is_empty());
    let status = &step.reports[0].1;
    assert_eq!(status.promise, Promise::Broken);
    assert!(
        status.message.contains("does not restart"),
        "{}",
        status.message
    );
}

#[test]
fn a_restarted_agent_adopts_running_containers_without_restarting_them() {
    let mut task = task(RestartPolicy::Always);
    task.status = TaskStatus {
        address: None,
        health: None,
        attempt: 3,
        state: TaskState::Running,
        promise: Promise::Kept,
        message: "running".into(),
        container_id: Some(task.id.clone()),
        exit_code: None,
        restarts: 2,
        started_at_ms: Some(5),
        updated_at_ms: 5,
    };
    let mut reconciler = Reconciler::new();
    let step = reconciler.step(&[&task], &observed(Some(Observed::Running)), 1000);
    assert!(step.actions.is_empty(), "{:?}", step.actions);
    assert!(
        step.reports.is_empty(),
        "nothing changed: {:?}",
        step.reports
    );
}

#[test]
fn stopping_destroys_the_container_then_reports_stopped() {
    let mut task = task(RestartPolicy::Always);
    let mut reconciler = Reconciler::new();
    reconciler.step(&[&task], &observed(None), 0);
    ran(&mut reconciler, 1, 0);
    task.desired = DesiredState::Stopped;
    let step = reconciler.step(&[&task], &observed(Some(Observed::Running)), 10);
    assert_eq!(
        step.actions,
        vec![Action::Destroy {
            container_id: task.id.clone(),
            grace_ms: 10_000
        }]
    );
    assert_eq!(step.reports[0].1.state, TaskState::Stopping);
    let reports = reconciler.on_result(
        ActionResult::Destroyed {
            container_id: task.id.clone(),
            result: Ok(Some(143)),
        },
        20,
    );
    assert_eq!(reports[0].1.state, TaskState::Stopped);
    assert_eq!(reports[0].1.container_id, None);
    assert_eq!(
        reports[0].1.address, None,
        "the address went with the container"
    );
    assert!(reconciler
        .step(&[&task], &observed(None), 30)
        .actions
        .is_empty());
}

#[test]
fn containers_of_unknown_tasks_are_destroyed_once() {
    let mut reconciler = Reconciler::new();
    let orphans = BTreeMap::from([("old.app.0.9".to_string(), Observed::Running)]);
    let step = reconciler.step(&[], &orphans, 0);
    assert_eq!(
        step.actions,
        vec![Action::Destroy {
            container_id: "old.app.0.9".into(),
            grace_ms: 10_000
        }]
    );
    assert!(reconciler.step(&[], &orphans, 1).actions.is_empty());
}

#[test]
fn every_report_moves_forward() {
    let task = task(RestartPolicy::Always);
    let mut reconciler = Reconciler::new();
    let mut last: Option<TaskStatus> = None;
    let mut check = |reports: Vec<(String, TaskStatus)>| {
        for (_, status) in reports {
            if let Some(previous) = &last {
                assert!(status.may_follow(previous), "{previous:?} -> {status:?}");
            }
            last = Some(status);
        }
    };
    let mut now = 0;
    for round in 0..5 {
        let step = reconciler.step(&[&task], &observed(None), now);
        check(step.reports);
        for action in step.actions {
            if let Action::Run { attempt, .. } = action {
                check(ran(&mut reconciler, attempt, now));
            }
        }
        now += 10;
        let step = reconciler.step(
            &[&task],
            &observed(Some(Observed::Exited { exit_code: round })),
            now,
        );
        check(step.reports);
        now = step.wake_at_ms.unwrap_or(now) + 1;
    }
}

#[test]
fn a_lost_report_is_sent_again() {
    let task = task(RestartPolicy::Always);
    let mut reconciler = Reconciler::new();
    reconciler.step(&[&task], &observed(None), 0);
    let reports = ran(&mut reconciler, 1, 5);
    assert_eq!(reports.len(), 1);
    assert!(reconciler
        .step(&[&task], &observed(Some(Observed::Running)), 6)
        .reports
        .is_empty());
    reconciler.unreport(reports.into_iter().map(|(id, _)| id));
    let step = reconciler.step(&[&task], &observed(Some(Observed::Running)), 7);
    assert_eq!(step.reports.len(), 1);
    assert_eq!(step.reports[0].1.state, TaskState::Running);
}

#[test]
fn attempts_max_bounds_the_retries_of_a_failing_task() {
    let mut task = task(RestartPolicy::OnFailure);
    std::sync::Arc::make_mut(&mut task.spec)
        .restart
        .attempts_max = Some(2);
    let mut reconciler = Reconciler::new();
    reconciler.step(&[&task], &observed(None), 0);
    ran(&mut reconciler, 1, 0);
    let failed = observed(Some(Observed::Exited { exit_code: 3 }));
    let step = reconciler.step(&[&task], &failed, 10);
    assert!(
        step.reports[0].1.message.contains("restarting in"),
        "{step:?}"
    );
    // The second attempt starts after the back-off and fails too.
    let step = reconciler.step(&[&task], &failed, 1_010);
    assert!(
        step.actions
            .iter()
            .any(|a| matches!(a, Action::Run { attempt: 2, .. })),
        "{step:?}"
    );
    ran(&mut reconciler, 2, 1_010);
    let step = reconciler.step(&[&task], &failed, 1_020);
    let status = &step.reports[0].1;
    assert_eq!(
        (status.state, status.promise),
        (TaskState::Failed, Promise::Broken)
    );
    assert!(
        status.message.contains("2 of at most 2 attempts"),
        "{status:?}"
    );
    // No third attempt, however long one waits.
    assert!(reconciler
        .step(&[&task], &failed, 999_999)
        .actions
        .is_empty());
}

/// The result of attempt `attempt` failing transiently.
fn failed_transiently(
    reconciler: &mut Reconciler,
    attempt: u32,
    now_ms: u64,
) -> Vec<(String, TaskStatus)> {
    reconciler.on_result(
        ActionResult::Ran {
            task_id: "web.hello.0.1".into(),
            attempt,
            result: Err(RunFailure::transient("containerd did not answer")),
        },
        now_ms,
    )
}

#[test]
fn a_transient_failure_tries_the_same_attempt_again_without_breaking_the_promise() {
    // `never`: a failure that broke the promise would leave the task failed.
    let task = task(RestartPolicy::Never);
    let mut reconciler = Reconciler::new();
    reconciler.step(&[&task], &observed(None), 0);
    let reports = failed_transiently(&mut reconciler, 1, 100);
    let status = &reports[0].1;
    assert_eq!(
        (
            status.state,
            status.promise,
            status.attempt,
            status.restarts
        ),
        (TaskState::Preparing, Promise::Pending, 1, 0)
    );
    assert!(
        status.message.contains("containerd did not answer")
            && status.message.contains("trying again in 1s (try 2 of 8)"),
        "{}",
        status.message
    );
    // Nothing before the wait is over; the step asks to be woken for it.
    let step = reconciler.step(&[&task], &observed(None), 600);
    assert!(step.actions.is_empty(), "{:?}", step.actions);
    assert_eq!(step.wake_at_ms, Some(1100));
    // Then the same attempt, once.
    let step = reconciler.step(&[&task], &observed(None), 1100);
    assert_eq!(
        step.actions,
        vec![Action::Run {
            task_id: task.id.clone(),
            attempt: 1,
            replace: false
        }]
    );
    assert!(reconciler
        .step(&[&task], &observed(None), 1200)
        .actions
        .is_empty());
    // It starts: kept, no restart counted; a later transient failure
    // starts its count afresh.
    let reports = ran(&mut reconciler, 1, 1300);
    let status = &reports[0].1;
    assert_eq!(
        (
            status.state,
            status.promise,
            status.attempt,
            status.restarts
        ),
        (TaskState::Running, Promise::Kept, 1, 0)
    );
}

#[test]
fn transient_failures_in_a_row_end_as_a_failure_with_the_reason() {
    let task = task(RestartPolicy::Never);
    let mut reconciler = Reconciler::new();
    reconciler.step(&[&task], &observed(None), 0);
    let mut now = 0;
    let mut waits = Vec::new();
    for _ in 1..TRANSIENT_TRIES_MAX {
        failed_transiently(&mut reconciler, 1, now);
        let step = reconciler.step(&[&task], &observed(None), now);
        let wake = step.wake_at_ms.expect("a wait");
        waits.push(wake - now);
        now = wake;
        let step = reconciler.step(&[&task], &observed(None), now);
        assert_eq!(step.actions.len(), 1, "try again at {now}");
    }
    assert_eq!(
        waits,
        vec![1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]
    );
    let reports = failed_transiently(&mut reconciler, 1, now);
    let status = &reports[0].1;
    assert_eq!(
        (status.state, status.promise),
        (TaskState::Failed, Promise::Broken)
    );
    assert!(
        status
            .message
            .contains("could not start: containerd did not answer (tried 8 times)"),
        "{}",
        status.message
    );
    // The restart policy decides from there: `never` leaves it failed.
    let step = reconciler.step(&[&task], &observed(None), now + 100_000);
    assert!(step.actions.is_empty());
}

#[test]
fn a_task_stopped_while_it_waits_to_try_again_is_not_tried() {
    let mut task = task(RestartPolicy::Always);
    let mut reconciler = Reconciler::new();
    reconciler.step(&[&task], &observed(None), 0);
    failed_transiently(&mut reconciler, 1, 0);
    task.desired = DesiredState::Stopped;
    let step = reconciler.step(&[&task], &observed(None), 5_000);
    assert!(step.actions.is_empty(), "{:?}", step.actions);
    assert_eq!(step.reports[0].1.state, TaskState::Stopped);
    assert_eq!(step.wake_at_ms, None);
}

#[test]
fn a_restarted_agent_tries_a_preparing_attempt_again_instead_of_failing_it() {
    let mut task = task(RestartPolicy::Never);
    task.status = TaskStatus {
        address: None,
        health: None,
        attempt: 2,
        state: TaskState::Preparing,
        promise: Promise::Pending,
        message: "containerd did not answer; trying again in 4s (try 3 of 8)".into(),
        container_id: Some(task.id.clone()),
        exit_code: None,
        restarts: 1,
        started_at_ms: None,
        updated_at_ms: 5,
    };
    let mut reconciler = Reconciler::new();
    let step = reconciler.step(&[&task], &observed(None), 1000);
    assert_eq!(
        step.actions,
        vec![Action::Run {
            task_id: task.id.clone(),
            attempt: 2,
            replace: false
        }]
    );
    let status = &step.reports[0].1;
    assert_eq!(
        (status.state, status.promise, status.restarts),
        (TaskState::Preparing, Promise::Pending, 1)
    );
}

#[test]
fn a_container_that_started_after_all_while_its_attempt_waits_is_adopted() {
    let task = task(RestartPolicy::Always);
    let mut reconciler = Reconciler::new();
    reconciler.step(&[&task], &observed(None), 0);
    // The run timed out, but containerd carried it out.
    failed_transiently(&mut reconciler, 1, 0);
    let step = reconciler.step(&[&task], &observed(Some(Observed::Running)), 500);
    assert!(step.actions.is_empty(), "{:?}", step.actions);
    let status = &step.reports[0].1;
    assert_eq!(
        (
            status.state,
            status.promise,
            status.attempt,
            status.restarts
        ),
        (TaskState::Running, Promise::Kept, 1, 0)
    );
    // And never run again when the wait would have ended.
    let step = reconciler.step(&[&task], &observed(Some(Observed::Running)), 5_000);
    assert!(step.actions.is_empty(), "{:?}", step.actions);
}

fn checked_task(health: &str) -> Task {
    let yaml = format!(
        "name: web\nservices:\n  - name: hello\n    image: busybox\n    restart: {{backoff_initial: 1s, backoff_max: 8s}}\n    ports: [{{name: http, container_port: 8080}}]\n    health: {health}\n"
    );
    let spec = parse_app(yaml.as_bytes()).expect("valid spec");
    Task {
        spec: std::sync::Arc::new(spec.services[0].clone()),
        ..task(RestartPolicy::Always)
    }
}

/// Runs the task to running at 0 and returns the reconciler.
fn running(task: &Task) -> Reconciler {
    let mut reconciler = Reconciler::new();
    reconciler.step(&[task], &observed(None), 0);
    ran(&mut reconciler, 1, 0);
    reconciler
}

fn health_of(reports: &[(String, TaskStatus)]) -> Vec<Option<Health>> {
    reports.iter().map(|(_, status)| status.health).collect()
}

#[test]
fn a_checked_task_starts_starting_and_turns_healthy_then_unhealthy_by_its_checks() {
    let task =
        checked_task("{http: {path: /ready, port: http}, interval: 2s, timeout: 1s, retries: 2}");
    let mut reconciler = running(&task);
    let up = observed(Some(Observed::Running));
    // Its first step while running: starting, and a check due at once, of
    // the named port at the task's address.
    let step = reconciler.step(&[&task], &up, 10);
    assert_eq!(health_of(&step.reports), [Some(Health::Starting)]);
    let due = reconciler.checks_due(10);
    assert_eq!(
        due,
        [CheckDue {
            task_id: task.id.clone(),
            attempt: 1,
            probe: Probe::Http {
                path: "/ready".into(),
                port: 8080
            },
            address: Some(ADDRESS),
            timeout_ms: 1_000,
        }]
    );
    assert!(reconciler.checks_due(10).is_empty(), "one check at a time");
    // Passed: healthy, reported once; the next check an interval after
    // this one was due (not after it ended).
    assert_eq!(
        health_of(&reconciler.on_check(&task.id, 1, true, 20)),
        [Some(Health::Healthy)]
    );
    let step = reconciler.step(&[&task], &up, 30);
    assert_eq!(step.wake_at_ms, Some(2_010));
    assert!(reconciler.checks_due(2_009).is_empty());
    assert_eq!(reconciler.checks_due(2_010).len(), 1);
    // One failure is not enough (retries: 2); two in a row are.
    assert!(reconciler.on_check(&task.id, 1, false, 2_030).is_empty());
    assert_eq!(reconciler.checks_due(4_010).len(), 1);
    assert_eq!(
        health_of(&reconciler.on_check(&task.id, 1, false, 4_040)),
        [Some(Health::Unhealthy)]
    );
    // A result for another run of the task changes nothing.
    assert_eq!(reconciler.checks_due(6_010).len(), 1);
    assert!(reconciler.on_check(&task.id, 7, true, 6_050).is_empty());
    // Passing again: healthy.
    assert_eq!(
        reconciler.checks_due(8_050).len(),
        0,
        "the check of run 1 still runs"
    );
    assert_eq!(
        health_of(&reconciler.on_check(&task.id, 1, true, 8_060)),
        [Some(Health::Healthy)]
    );
    // A task without a check reports no health at all.
    let plain = task_without_check();
    let mut reconciler = running(&plain);
    let step = reconciler.step(&[&plain], &up, 10);
    assert!(step
        .reports
        .iter()
        .all(|(_, status)| status.health.is_none()));
    assert!(reconciler.checks_due(10).is_empty());
}

fn task_without_check() -> Task {
    task(RestartPolicy::Always)
}

#[test]
fn failed_checks_in_the_start_period_do_not_count_and_the_start_interval_applies() {
    let task = checked_task(
        "{tcp: {port: 9000}, interval: 10s, start_interval: 1s, retries: 1, start_period: 5s}",
    );
    let mut reconciler = running(&task);
    let up = observed(Some(Observed::Running));
    reconciler.step(&[&task], &up, 0);
    let mut now = 0;
    // Failing all through the start period: still starting, checked every
    // second (the start interval).
    while now < 5_000 {
        let due = reconciler.checks_due(now);
        assert_eq!(due.len(), 1, "at {now}");
        assert_eq!(due[0].probe, Probe::Tcp { port: 9000 });
        assert!(
            reconciler.on_check(&task.id, 1, false, now).is_empty(),
            "at {now}"
        );
        now += 1_000;
    }
    // After it, one failure (retries: 1) makes it unhealthy.
    assert_eq!(reconciler.checks_due(now).len(), 1);
    assert_eq!(
        health_of(&reconciler.on_check(&task.id, 1, false, now)),
        [Some(Health::Unhealthy)]
    );
    // Unhealthy, it is checked at the interval, not the start interval.
    assert!(reconciler.checks_due(now + 9_999).is_empty());
}

/// Fails every check of run `attempt` from `from` to `to` (each at its due
/// time, ending 10 ms later), stepping after each; the last step, with
/// what the last check's result reported first.
fn fail_checks(
    reconciler: &mut Reconciler,
    task: &Task,
    attempt: u32,
    from: u64,
    to: u64,
    every: u64,
) -> Step {
    let up = observed(Some(Observed::Running));
    let mut now = from;
    let mut last = Step::default();
    while now <= to {
        let due = reconciler.checks_due(now);
        assert_eq!(due.len(), 1, "a check due at {now}");
        let checked = reconciler.on_check(&task.id, attempt, false, now + 10);
        last = reconciler.step(&[task], &up, now + 20);
        last.reports.splice(0..0, checked);
        now += every;
    }
    last
}

#[test]
fn a_task_unhealthy_for_restart_after_is_restarted_with_the_back_off() {
    let task = checked_task("{tcp: {port: 80}, interval: 1s, retries: 1, restart_after: 3500ms}");
    let mut reconciler = running(&task);
    let up = observed(Some(Observed::Running));
    reconciler.step(&[&task], &up, 0);
    // Unhealthy from its first check (at 0, ended at 10); checked on every
    // second, and not restarted by a check that ended before 3.51 s.
    let step = fail_checks(&mut reconciler, &task, 1, 0, 3_000, 1_000);
    assert!(step.actions.is_empty(), "{step:?}");
    assert_eq!(step.wake_at_ms, Some(4_000), "the next check, not sooner");
    // The first check after it failed too: it fails as if it had exited,
    // and is restarted after the back-off (1 s), replacing the container
    // that still runs.
    let step = fail_checks(&mut reconciler, &task, 1, 4_000, 4_000, 1_000);
    let status = &step.reports[0].1;
    assert_eq!(status.state, TaskState::Failed);
    assert_eq!(status.health, None);
    assert!(
        status.message.starts_with("unhealthy for 4.0s"),
        "{}",
        status.message
    );
    assert!(
        status.message.contains("restarting in 1s"),
        "{}",
        status.message
    );
    // Its container is stopped now, as any task's is (with its grace),
    // and the task stays failed, with its reason, through the back-off.
    assert_eq!(
        step.actions,
        [Action::Destroy {
            container_id: task.id.clone(),
            grace_ms: task.spec.stop_grace_period.0,
        }]
    );
    assert!(
        reconciler.checks_due(5_000).is_empty(),
        "not checked while it waits"
    );
    let reports = reconciler.on_result(
        ActionResult::Destroyed {
            container_id: task.id.clone(),
            result: Ok(Some(143)),
        },
        4_500,
    );
    assert!(
        reports
            .iter()
            .all(|(_, status)| status.state == TaskState::Failed
                && status.message.starts_with("unhealthy for")
                && status.address.is_none()),
        "{reports:?}"
    );
    let step = reconciler.step(&[&task], &observed(None), 4_600);
    assert!(step.actions.is_empty(), "{step:?}");
    let step = reconciler.step(&[&task], &observed(None), 5_020);
    assert_eq!(
        step.actions,
        [Action::Run {
            task_id: task.id.clone(),
            attempt: 2,
            replace: false
        }]
    );
    // `never`: it stays, unhealthy.
    let task = checked_task("{tcp: {port: 80}, interval: 1s, retries: 1, restart_after: never}");
    let mut reconciler = running(&task);
    reconciler.step(&[&task], &up, 0);
    let step = fail_checks(&mut reconciler, &task, 1, 0, 100_000, 1_000);
    assert!(
        step.actions.is_empty() && step.reports.is_empty(),
        "{step:?}"
    );
}

#[test]
fn a_restart_its_policy_declines_leaves_the_task_unhealthy_and_the_keeper_idle() {
    let mut task = checked_task("{tcp: {port: 80}, interval: 1s, retries: 1, restart_after: 1s}");
    std::sync::Arc::make_mut(&mut task.spec).restart.policy = Some(RestartPolicy::Never);
    let mut reconciler = running(&task);
    let up = observed(Some(Observed::Running));
    reconciler.step(&[&task], &up, 0);
    let step = fail_checks(&mut reconciler, &task, 1, 0, 0, 1_000);
    assert_eq!(health_of(&step.reports), [Some(Health::Unhealthy)]);
    // Due for a restart at 1.01 s, which its policy declines.
    let step = fail_checks(&mut reconciler, &task, 1, 1_000, 1_000, 1_000);
    assert!(step.actions.is_empty());
    let status = &step.reports[0].1;
    assert_eq!(
        (status.state, status.health),
        (TaskState::Running, Some(Health::Unhealthy))
    );
    assert!(
        status
            .message
            .contains("not restarted (restart policy never)"),
        "{}",
        status.message
    );
    // Nothing more to weigh: it wakes for its next check only, and says
    // nothing new while it stays unhealthy.
    let step = reconciler.step(&[&task], &up, 1_500);
    assert_eq!(step.wake_at_ms, Some(2_000));
    let step = fail_checks(&mut reconciler, &task, 1, 2_000, 6_000, 1_000);
    assert!(
        step.actions.is_empty() && step.reports.is_empty(),
        "{step:?}"
    );
    // Healthy again: running, as before.
    assert_eq!(reconciler.checks_due(7_000).len(), 1);
    let reports = reconciler.on_check(&task.id, 1, true, 7_010);
    assert_eq!(health_of(&reports), [Some(Health::Healthy)]);
    assert_eq!(reports[0].1.message, "running");
    // A task meant to stop is not checked any more, also once its
    // container is gone.
    let mut stopping = task.clone();
    stopping.desired = DesiredState::Stopped;
    reconciler.step(&[&stopping], &up, 8_000);
    reconciler.on_result(
        ActionResult::Destroyed {
            container_id: task.id.clone(),
            result: Ok(Some(0)),
        },
        8_100,
    );
    reconciler.step(&[&stopping], &observed(None), 8_200);
    assert!(reconciler.checks_due(100_000).is_empty());
}

#[test]
fn a_restarted_agent_keeps_the_health_the_cluster_knows() {
    let mut task = checked_task("{tcp: {port: 80}, interval: 1s}");
    task.status = TaskStatus {
        attempt: 1,
        state: TaskState::Running,
        promise: Promise::Kept,
        started_at_ms: Some(0),
        address: Some(ADDRESS),
        health: Some(Health::Healthy),
        message: "running".into(),
        container_id: Some(task.id.clone()),
        ..TaskStatus::pending(0)
    };
    let mut reconciler = Reconciler::new();
    let step = reconciler.step(&[&task], &observed(Some(Observed::Running)), 50_000);
    assert!(step.actions.is_empty());
    assert!(step.reports.is_empty(), "nothing new to say: {step:?}");
    // Checked again at once; a pass changes nothing.
    assert_eq!(reconciler.checks_due(50_000).len(), 1);
    assert!(reconciler.on_check(&task.id, 1, true, 50_010).is_empty());
}

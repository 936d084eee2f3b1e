//! The promise keeper: drives the pure [`Reconciler`] with what the runtime
//! shows and the cluster wants, executes its actions concurrently, and
//! reports task statuses back to the cluster in batches.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use shoal_agent::{Action, ActionResult, Observed, Reconciler};
use shoal_runtime::{
    ContainerConfig, ContainerStatus, ErrorKind, Runtime, RuntimeError, LABEL_ATTEMPT, LABEL_TASK,
};
use shoal_state::Command;
use shoal_types::{DesiredState, Task, TaskStatus};
use tokio::sync::{mpsc, Semaphore};

use super::network::Attached;
use super::Shared;
use crate::output::now_ms;

/// How often the runtime is looked at when nothing else happens (how soon
/// an exited container is noticed).
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Containers being created and started at once (each costs CPU).
const RUNS_IN_FLIGHT_MAX: usize = 16;
/// Containers being stopped at once (mostly waiting out grace periods).
const DESTROYS_IN_FLIGHT_MAX: usize = 512;
/// Results waiting to be folded in.
const RESULTS_QUEUE_MAX: usize = 1024;
/// Statuses in one report command.
const REPORT_BATCH_MAX: usize = 1024;
/// How often task networks that nothing owns any more are looked for.
const GARBAGE_INTERVAL: Duration = Duration::from_secs(10);

pub async fn run<R: Runtime>(shared: Arc<Shared<R>>) {
    let mut reconciler = Reconciler::new();
    let mut changes = shared.raft.subscribe();
    let (results_tx, mut results_rx) = mpsc::channel::<ActionResult>(RESULTS_QUEUE_MAX);
    let run_permits = Arc::new(Semaphore::new(RUNS_IN_FLIGHT_MAX));
    let destroy_permits = Arc::new(Semaphore::new(DESTROYS_IN_FLIGHT_MAX));
    let mut runtime_failing = false;
    // The first pass looks for leftovers of a crash at once.
    let mut garbage_at = std::time::Instant::now();
    loop {
        changes.borrow_and_update();
        let observed = match shared.runtime.list().await {
            Ok(containers) => {
                if runtime_failing {
                    tracing::info!("container runtime reachable again");
                    runtime_failing = false;
                }
                observe(containers)
            }
            Err(error) => {
                if !runtime_failing {
                    tracing::warn!(%error, "cannot list containers; keeping promises as they are");
                    runtime_failing = true;
                }
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
        };
        let desired: Vec<Task> = shared
            .raft
            .read()
            .tasks_on(&shared.config.name)
            .cloned()
            .collect();
        if std::time::Instant::now() >= garbage_at {
            garbage_at = std::time::Instant::now() + GARBAGE_INTERVAL;
            let live: BTreeSet<String> = observed
                .keys()
                .cloned()
                .chain(
                    desired
                        .iter()
                        .filter(|task| task.desired == DesiredState::Running)
                        .map(|task| task.id.clone()),
                )
                .collect();
            let network = shared.network.clone();
            let _ = tokio::task::spawn_blocking(move || network.collect_garbage(&live)).await;
        }
        let now = now_ms();
        let step = reconciler.step(&desired.iter().collect::<Vec<_>>(), &observed, now);
        if !step.actions.is_empty() || !step.reports.is_empty() {
            tracing::debug!(
                desired = desired.len(),
                observed = observed.len(),
                actions = step.actions.len(),
                reports = step.reports.len(),
                "promise keeper step"
            );
        }
        // Actions first: reporting waits for the cluster, which a node cut
        // off from it does not hear; its promises do not wait for that.
        for action in step.actions {
            tracing::debug!(?action, "runtime action");
            let permits = match action {
                Action::Run { .. } => run_permits.clone(),
                Action::Destroy { .. } => destroy_permits.clone(),
            };
            let (shared, results) = (shared.clone(), results_tx.clone());
            tokio::spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                let result = execute(&shared, action).await;
                let _ = results.send(result).await;
            });
        }
        if let Some(lost) = report(&shared, step.reports).await {
            reconciler.unreport(lost);
        }

        let wake = step
            .wake_at_ms
            .map(|at| Duration::from_millis(at.saturating_sub(now)))
            .unwrap_or(POLL_INTERVAL)
            .min(POLL_INTERVAL);
        tokio::select! {
            Some(result) = results_rx.recv() => {
                tracing::debug!(?result, "runtime action done");
                let mut reports = reconciler.on_result(result, now_ms());
                while let Ok(more) = results_rx.try_recv() {
                    reports.extend(reconciler.on_result(more, now_ms()));
                }
                if let Some(lost) = report(&shared, reports).await {
                    reconciler.unreport(lost);
                }
            }
            _ = changes.changed() => {}
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

fn observe(containers: Vec<shoal_runtime::ContainerInfo>) -> BTreeMap<String, Observed> {
    containers
        .into_iter()
        .map(|container| {
            let observed = match container.status {
                ContainerStatus::Running { .. } => Observed::Running,
                ContainerStatus::Stopped { exit_code } => Observed::Exited { exit_code },
                ContainerStatus::Created => Observed::Exited { exit_code: -1 },
            };
            (container.id, observed)
        })
        .collect()
}

/// Proposes the reports in batches; returns the ids whose report was lost.
async fn report<R>(shared: &Shared<R>, reports: Vec<(String, TaskStatus)>) -> Option<Vec<String>> {
    let mut lost = Vec::new();
    for batch in reports.chunks(REPORT_BATCH_MAX) {
        let command = Command::ReportTasks {
            node: shared.config.name.clone(),
            statuses: batch.to_vec(),
        };
        if let Err(error) = shared.raft.propose(now_ms(), command).await {
            tracing::warn!(%error, "reporting task statuses; will report them again");
            lost.extend(batch.iter().map(|(id, _)| id.clone()));
        }
    }
    (!lost.is_empty()).then_some(lost)
}

async fn execute<R: Runtime>(shared: &Shared<R>, action: Action) -> ActionResult {
    match action {
        Action::Run {
            task_id,
            attempt,
            replace,
        } => {
            let task = shared.raft.read().tasks.get(&task_id).cloned();
            let result = match task {
                Some(task) => run_task(shared, &task, attempt, replace).await,
                None => Err("the task is gone".to_string()),
            };
            ActionResult::Ran {
                task_id,
                attempt,
                result,
            }
        }
        Action::Destroy {
            container_id,
            grace_ms,
        } => {
            let runtime = &shared.runtime;
            let result = async {
                let exit_code = runtime
                    .stop(&container_id, Duration::from_millis(grace_ms))
                    .await?;
                runtime.remove(&container_id).await?;
                Ok::<_, RuntimeError>(exit_code)
            }
            .await
            .map_err(|error| failure(&container_id, "stopping", error));
            // The address is freed once the container is gone.
            let result = match result {
                Ok(exit_code) => {
                    let (network, id) = (shared.network.clone(), container_id.clone());
                    match tokio::task::spawn_blocking(move || network.detach(&id)).await {
                        Ok(Ok(())) => Ok(exit_code),
                        Ok(Err(error)) => Err(format!("releasing its network: {error:#}")),
                        Err(error) => Err(format!("releasing its network: {error}")),
                    }
                }
                Err(error) => Err(error),
            };
            ActionResult::Destroyed {
                container_id,
                result,
            }
        }
    }
}

async fn run_task<R: Runtime>(
    shared: &Shared<R>,
    task: &Task,
    attempt: u32,
    replace: bool,
) -> Result<Option<Ipv4Addr>, String> {
    let zone = shared.raft.read().settings.dns_zone.clone();
    let (network, owned) = (shared.network.clone(), task.clone());
    let attached = tokio::task::spawn_blocking(move || network.attach(&owned, &zone))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| format!("setting up its network: {error:#}"))?;
    let address = attached.address;
    let config = container_config(shared, task, attempt, attached);
    let removing = |error| failure(&task.id, "removing", error);
    if replace {
        shared.runtime.remove(&task.id).await.map_err(removing)?;
    }
    match shared.runtime.run(&config).await {
        Ok(_pid) => Ok(address),
        // The id is taken (left over from a crash between create and
        // report) or its container is in the way: start afresh, once.
        Err(error) if error.kind() == ErrorKind::Conflict => {
            shared.runtime.remove(&task.id).await.map_err(removing)?;
            shared
                .runtime
                .run(&config)
                .await
                .map(|_| address)
                .map_err(|error| failure(&task.id, "running", error))
        }
        Err(error) => Err(failure(&task.id, "running", error)),
    }
}

/// The message the task's status carries (the error's own words); its kind
/// goes to the node's log beside it.
fn failure(id: &str, doing: &str, error: RuntimeError) -> String {
    tracing::warn!(id, doing, kind = %error.kind(), %error, "container runtime call failed");
    error.to_string()
}

fn container_config<R>(
    shared: &Shared<R>,
    task: &Task,
    attempt: u32,
    attached: Attached,
) -> ContainerConfig {
    let spec = &task.spec;
    let labels = BTreeMap::from([
        (LABEL_TASK.to_string(), task.id.clone()),
        (LABEL_ATTEMPT.to_string(), attempt.to_string()),
        ("io.shoal.app".to_string(), task.app.clone()),
        ("io.shoal.service".to_string(), task.service.clone()),
    ]);
    ContainerConfig {
        id: task.id.clone(),
        image: spec.image.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: spec.env.clone(),
        working_dir: spec.working_dir.clone(),
        user: spec.user.map(|user| (user.uid, user.gid)),
        cpu_millis: spec.resources.cpu.map(|cpu| cpu.0),
        memory_bytes: spec.resources.memory.map(|memory| memory.0),
        labels,
        log_path: shared.logs_dir().join(format!("{}.log", task.id)),
        hostname: super::network::hostname(task),
        network: attached.network,
        mounts: attached.mounts,
    }
}

//! The promise keeper: drives the pure [`Reconciler`] with what the runtime
//! shows and the cluster wants, executes its actions concurrently, and
//! reports task statuses back to the cluster in batches.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_agent::{Action, ActionResult, CheckDue, Observed, Reconciler, RunFailure};
use shoal_cluster::log::ReplicatedLog;
use shoal_runtime::{
    ContainerConfig, ContainerStatus, ErrorKind, ImageStore, Privileges, Runtime, RuntimeError,
    LABEL_ATTEMPT, LABEL_TASK,
};
use shoal_state::Command;
use shoal_types::{PinnedImage, Task, TaskState, TaskStatus, Workload};
use tokio::sync::{mpsc, Semaphore};

use super::network::{Attached, NodeNetwork};
use crate::clock::Clock;

/// How often the runtime is looked at when nothing else happens (how soon
/// an exited container is noticed).
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Containers being created and started at once (each costs CPU).
const RUNS_IN_FLIGHT_MAX: usize = 16;
/// Containers being stopped at once (mostly waiting out grace periods).
const DESTROYS_IN_FLIGHT_MAX: usize = 512;
/// Results waiting to be folded in.
const RESULTS_QUEUE_MAX: usize = 1024;
/// Health checks running at once (each task has at most one running).
const CHECKS_IN_FLIGHT_MAX: usize = 256;
/// Check results waiting to be folded in.
const CHECKS_QUEUE_MAX: usize = 1024;
/// Statuses in one report command.
const REPORT_BATCH_MAX: usize = 1024;
/// How often task networks that nothing owns any more are looked for.
pub(super) const GARBAGE_INTERVAL: Duration = Duration::from_secs(10);
/// How often the files of tasks that stopped are looked for (a task's
/// secrets go within 5 s of it stopping).
pub(super) const FILES_GARBAGE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a networked task waits for the node's own network to come up
/// (a node that has just joined sets it up from the subnet the cluster
/// gave it) before its attempt fails.
const NETWORK_READY_WAIT_MAX: Duration = Duration::from_secs(30);
/// A pull says how far it is after this long, then this often.
const PULL_PROGRESS_FIRST: Duration = Duration::from_secs(2);
const PULL_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// A progress report that the cluster does not take in this long is
/// skipped (the pull goes on meanwhile).
const PULL_PROGRESS_REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the keeper uses, and nothing else: the node's name and log
/// directory, the replicated log, the runtime, the node's task networking
/// and a clock.
pub struct Keeper<L, R, N, C> {
    pub node: String,
    pub logs_dir: PathBuf,
    pub log: L,
    pub runtime: Arc<R>,
    pub network: Arc<N>,
    pub clock: C,
    /// Opens registry passwords (voter-capable nodes only).
    /// The registry passwords pulls use.
    pub credentials: Arc<super::pull_credentials::PullCredentials>,
    /// What this node's operator lets tasks do beyond the hardened
    /// defaults: a task that needs more is not run, whatever the state says.
    pub allows: shoal_types::Allows,
    /// Its tasks' secrets and configs, as files in memory.
    pub files: Arc<super::task_files::TaskFiles>,
}

/// A task's network, as the keeper needs it: made before its container
/// runs, released once the container is gone, and leftovers collected.
/// Blocking calls (the keeper runs them off the async workers).
pub trait TaskNetwork: Send + Sync + 'static {
    /// Whether the node's own network (its bridge, from the subnet the
    /// cluster gave it) is up, so that a networked task can be attached.
    fn is_ready(&self) -> bool;
    fn attach(&self, task: &Task, zone: &str) -> anyhow::Result<Attached>;
    fn detach(&self, task_id: &str) -> anyhow::Result<()>;
    /// Releases task networks of tasks not in `live`; returns how many.
    fn collect_garbage(&self, live: &BTreeSet<String>) -> usize;
}

impl TaskNetwork for NodeNetwork {
    fn is_ready(&self) -> bool {
        NodeNetwork::is_ready(self)
    }
    fn attach(&self, task: &Task, zone: &str) -> anyhow::Result<Attached> {
        NodeNetwork::attach(self, task, zone)
    }
    fn detach(&self, task_id: &str) -> anyhow::Result<()> {
        NodeNetwork::detach(self, task_id)
    }
    fn collect_garbage(&self, live: &BTreeSet<String>) -> usize {
        NodeNetwork::collect_garbage(self, live)
    }
}

pub async fn run<L, R, N, C>(shared: Arc<Keeper<L, R, N, C>>)
where
    L: ReplicatedLog + Clone,
    R: Runtime + ImageStore,
    N: TaskNetwork,
    C: Clock,
{
    let mut reconciler = Reconciler::new();
    let mut changes = shared.log.subscribe();
    let (results_tx, mut results_rx) = mpsc::channel::<ActionResult>(RESULTS_QUEUE_MAX);
    let run_permits = Arc::new(Semaphore::new(RUNS_IN_FLIGHT_MAX));
    let destroy_permits = Arc::new(Semaphore::new(DESTROYS_IN_FLIGHT_MAX));
    let (checks_tx, mut checks_rx) = mpsc::channel::<(CheckDue, bool)>(CHECKS_QUEUE_MAX);
    let checks =
        super::health::Checks::new(CHECKS_IN_FLIGHT_MAX, checks_tx, shared.runtime.clone());
    let mut looking = Looking::default();
    let mut garbage = super::leftovers::Garbage::new();
    loop {
        changes.borrow_and_update();
        let Some(observed) = looking.look(&*shared.runtime).await else {
            tokio::time::sleep(POLL_INTERVAL).await;
            continue;
        };
        let observed = observed.clone();
        let desired: Vec<Task> = shared.log.read().tasks_on(&shared.node).cloned().collect();
        garbage.collect(&shared, &observed, &desired).await;
        let now = shared.clock.now_ms();
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
        checks.start(reconciler.checks_due(shared.clock.now_ms()));

        let wake = step
            .wake_at_ms
            .map(|at| Duration::from_millis(at.saturating_sub(now)))
            .unwrap_or(POLL_INTERVAL)
            .min(POLL_INTERVAL);
        tokio::select! {
            Some(result) = results_rx.recv() => {
                tracing::debug!(?result, "runtime action done");
                // A container started or went: look at the runtime again.
                looking.stale = true;
                let mut reports = reconciler.on_result(result, shared.clock.now_ms());
                while let Ok(more) = results_rx.try_recv() {
                    reports.extend(reconciler.on_result(more, shared.clock.now_ms()));
                }
                if let Some(lost) = report(&shared, reports).await {
                    reconciler.unreport(lost);
                }
            }
            Some(checked) = checks_rx.recv() => {
                let now = || shared.clock.now_ms();
                let reports = super::health::take(&mut reconciler, checked, &mut checks_rx, now);
                if let Some(lost) = report(&shared, reports).await {
                    reconciler.unreport(lost);
                }
            }
            _ = changes.changed() => {}
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// The containers the runtime showed last, looked at again once they are
/// [`POLL_INTERVAL`] old or an action changed them (not for every health
/// check's result, which only the reconciler needs).
#[derive(Default)]
struct Looking {
    observed: BTreeMap<String, Observed>,
    at: Option<std::time::Instant>,
    stale: bool,
    failing: bool,
}

impl Looking {
    /// What the runtime shows, fresh enough; `None` while it cannot be
    /// listed.
    async fn look<R: Runtime>(&mut self, runtime: &R) -> Option<&BTreeMap<String, Observed>> {
        let fresh = self
            .at
            .is_some_and(|at| !self.stale && at.elapsed() < POLL_INTERVAL);
        if !fresh {
            match runtime.list().await {
                Ok(containers) => {
                    if self.failing {
                        tracing::info!("container runtime reachable again");
                        self.failing = false;
                    }
                    self.observed = observe(containers);
                    self.at = Some(std::time::Instant::now());
                    self.stale = false;
                }
                Err(error) => {
                    if !self.failing {
                        tracing::warn!(%error, "cannot list containers; keeping promises as they are");
                        self.failing = true;
                    }
                    return None;
                }
            }
        }
        Some(&self.observed)
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
async fn report<L: ReplicatedLog, R, N, C: Clock>(
    shared: &Keeper<L, R, N, C>,
    reports: Vec<(String, TaskStatus)>,
) -> Option<Vec<String>> {
    let mut lost = Vec::new();
    // A task's health needs format 12, which the cluster takes only once
    // it knows every node reads it (a node that has just started, or a
    // leader that has just taken over, may not know yet): statuses with a
    // health go in batches of their own, kept back while this node does
    // not know the cluster's format to be 12, so the others never wait
    // for them.
    let (checked, plain): (Vec<_>, Vec<_>) = reports
        .into_iter()
        .partition(|(_, status)| status.health.is_some());
    let format_known = shared.log.cluster_log_version() >= shoal_state::format::HEALTH;
    if !format_known && !checked.is_empty() {
        tracing::debug!(
            statuses = checked.len(),
            "task health kept back until every node is known to read it"
        );
        lost.extend(checked.iter().map(|(id, _)| id.clone()));
    }
    let sent = if format_known { &checked[..] } else { &[] };
    for batch in plain
        .chunks(REPORT_BATCH_MAX)
        .chain(sent.chunks(REPORT_BATCH_MAX))
    {
        let command = Command::ReportTasks {
            node: shared.node.clone(),
            statuses: batch.to_vec(),
        };
        if let Err(error) = shared.log.propose(shared.clock.now_ms(), command).await {
            tracing::warn!(%error, "reporting task statuses; will report them again");
            lost.extend(batch.iter().map(|(id, _)| id.clone()));
        }
    }
    (!lost.is_empty()).then_some(lost)
}

async fn execute<L: ReplicatedLog, R: Runtime + ImageStore, N: TaskNetwork, C: Clock>(
    shared: &Keeper<L, R, N, C>,
    action: Action,
) -> ActionResult {
    match action {
        Action::Run {
            task_id,
            attempt,
            replace,
        } => {
            let task = shared.log.read().tasks.get(&task_id).cloned();
            let result = match task {
                Some(task) => run_task(shared, &task, attempt, replace).await,
                None => Err(RunFailure::broken("the task is gone")),
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
            .map_err(|error| failure(&container_id, "stopping", error).message);
            // The address is freed once the container is gone, and its
            // files go.
            let result = match result {
                Ok(exit_code) => {
                    let (network, id) = (shared.network.clone(), container_id.clone());
                    let files = shared.files.clone();
                    let released = tokio::task::spawn_blocking(move || {
                        if let Err(error) = files.release(&id) {
                            tracing::warn!(task = %id, %error, "removing a task's files");
                        }
                        network.detach(&id)
                    });
                    match released.await {
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

async fn run_task<L: ReplicatedLog, R: Runtime + ImageStore, N: TaskNetwork, C: Clock>(
    shared: &Keeper<L, R, N, C>,
    task: &Task,
    attempt: u32,
    replace: bool,
) -> Result<Option<Ipv4Addr>, RunFailure> {
    // The node's own promise: nothing beyond what its operator allows.
    if let Some(allowance) = shared.allows.lacks(task.spec.needs()) {
        return Err(RunFailure::broken(format!(
            "this node does not allow {} (its agent runs without {})",
            allowance.what(),
            allowance.flag()
        )));
    }
    // A node that has only just joined sets up its network: a task placed
    // on it at once waits for that instead of failing its first attempt.
    if task.spec.network {
        let waited = std::time::Instant::now();
        while !shared.network.is_ready() && waited.elapsed() < NETWORK_READY_WAIT_MAX {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let zone = shared.log.read().settings.dns_zone.clone();
    let (network, owned) = (shared.network.clone(), task.clone());
    // The network and the files wait on the node's own setup and the
    // voters (a task's secrets): tried again, as a runtime out of reach is.
    let attached = tokio::task::spawn_blocking(move || network.attach(&owned, &zone))
        .await
        .map_err(|error| RunFailure::broken(error.to_string()))?
        .map_err(|error| RunFailure::transient(format!("setting up its network: {error:#}")))?;
    let address = attached.address;
    // Its files stay until its container runs (or failed to).
    let _starting = shared.files.starting(&task.id);
    let files = shared
        .files
        .prepare(&shared.log, task)
        .await
        .map_err(|error| RunFailure::transient(format!("its secrets and configs: {error}")))?;
    let mut config = container_config(shared, task, attempt, attached);
    config.mounts.extend(files);
    let removing = |error| failure(&task.id, "removing", error);
    if replace {
        // The container of the attempt before may still run (one whose
        // stop for its health failed): it is stopped as any task is, then
        // removed.
        let grace = task.spec.stop_grace_period.as_duration();
        if let Err(error) = shared.runtime.stop(&task.id, grace).await {
            tracing::debug!(task = %task.id, %error, "stopping the container it replaces");
        }
        shared.runtime.remove(&task.id).await.map_err(removing)?;
    }
    match shared.runtime.run(&config).await {
        Ok(_pid) => return Ok(address),
        // Not on this node yet: pulled from its registry, then run once
        // more; a pull that fails is the attempt's failure, and the
        // restart back-off spaces the next.
        Err(error) if error.kind() == ErrorKind::ImageMissing => {
            let access = super::pull_credentials::access_for(
                &shared.log,
                &shared.credentials,
                &config.image,
            )
            .await;
            // A long pull says how far it is in the task's message.
            let pull = shared.runtime.pull(&config.image, &access);
            tokio::pin!(pull);
            let mut next = tokio::time::Instant::now() + PULL_PROGRESS_FIRST;
            let pulled = loop {
                tokio::select! {
                    pulled = &mut pull => break pulled,
                    () = tokio::time::sleep_until(next) => {
                        next += PULL_PROGRESS_INTERVAL;
                        report_pull_progress(shared, task, attempt, &config.image).await;
                    }
                }
            };
            pulled.map_err(|error| failure(&task.id, "pulling its image", error))?;
        }
        // The id is taken (left over from a crash between create and
        // report) or its container is in the way: start afresh, once.
        Err(error) if error.kind() == ErrorKind::Conflict => {
            shared.runtime.remove(&task.id).await.map_err(removing)?;
        }
        Err(error) => return Err(failure(&task.id, "running", error)),
    }
    shared
        .runtime
        .run(&config)
        .await
        .map(|_| address)
        .map_err(|error| failure(&task.id, "running", error))
}

/// The task's status while its image is pulled, with how far the pull is
/// in its message; proposed at most every [`PULL_PROGRESS_INTERVAL`], and
/// only while the task is still preparing this attempt (a report that
/// arrives late is dropped by the state machine, as it would move the
/// status back).
async fn report_pull_progress<L: ReplicatedLog, R: ImageStore, N, C: Clock>(
    shared: &Keeper<L, R, N, C>,
    task: &Task,
    attempt: u32,
    image: &str,
) {
    let Some(progress) = shared.runtime.pull_progress(image) else {
        return;
    };
    if progress.total_bytes == 0 {
        return;
    }
    let status = {
        let state = shared.log.read();
        let Some(current) = state.tasks.get(&task.id) else {
            return;
        };
        let status = &current.status;
        if status.attempt != attempt || status.state.rank() > TaskState::Preparing.rank() {
            return;
        }
        TaskStatus {
            state: TaskState::Preparing,
            message: pulling_message(&progress),
            updated_at_ms: shared.clock.now_ms(),
            ..status.clone()
        }
    };
    let command = Command::ReportTasks {
        node: shared.node.clone(),
        statuses: vec![(task.id.clone(), status)],
    };
    let proposed = tokio::time::timeout(
        PULL_PROGRESS_REPORT_TIMEOUT,
        shared.log.propose(shared.clock.now_ms(), command),
    )
    .await;
    if !matches!(proposed, Ok(Ok(_))) {
        tracing::debug!(task = %task.id, "pull progress not reported");
    }
}

/// `pulling 43 % (12.1 MiB of 28 MiB at 5.2 MiB/s)`, in the one byte
/// format (`shoal_state::fit::format_bytes`).
fn pulling_message(progress: &shoal_runtime::PullProgress) -> String {
    use shoal_state::fit::format_bytes;
    let percent = progress.done_bytes.saturating_mul(100) / progress.total_bytes.max(1);
    format!(
        "pulling {percent} % ({} of {} at {}/s)",
        format_bytes(progress.done_bytes),
        format_bytes(progress.total_bytes),
        format_bytes(progress.bytes_per_s)
    )
}

/// What the task's status carries (the error's own words) and whether the
/// attempt is tried again ([`transient`]); the kind goes to the node's log
/// beside it.
fn failure(id: &str, doing: &str, error: RuntimeError) -> RunFailure {
    tracing::warn!(id, doing, kind = %error.kind(), %error, "container runtime call failed");
    RunFailure {
        message: error.to_string(),
        transient: transient(error.kind()),
    }
}

/// Whether a runtime error of this kind leaves the attempt to be tried
/// again as it is (the runtime or a registry out of reach for a moment:
/// the promise stays pending), or fails it with the reason (the restart
/// policy decides from there). Every kind states its answer, so a new
/// kind does not compile until it does.
fn transient(kind: ErrorKind) -> bool {
    match kind {
        ErrorKind::Transient => true,
        // A config the runtime cannot run, or an image its registry does
        // not have (the pull was made): the same call fails the same way.
        ErrorKind::Invalid | ErrorKind::ImageMissing => false,
        // A container that vanished under the call, an id still taken
        // after it was cleared (the keeper clears it once), or a runtime
        // broken in a way not known to mend: a failed attempt, which the
        // restart policy and its back-off take from there.
        ErrorKind::NotFound | ErrorKind::Conflict | ErrorKind::Internal => false,
    }
}

fn container_config<L, R, N, C>(
    shared: &Keeper<L, R, N, C>,
    task: &Task,
    attempt: u32,
    attached: Attached,
) -> ContainerConfig {
    let spec = &task.spec;
    // containerd is the only runtime: every workload is a container today.
    let Workload::Container(container) = &spec.workload;
    // A registry image runs at the digest pinned when its app version was
    // applied, whatever its tag names now.
    let image = PinnedImage::run_reference(task.image.as_ref(), &container.image);
    let labels = BTreeMap::from([
        (LABEL_TASK.to_string(), task.id.clone()),
        (LABEL_ATTEMPT.to_string(), attempt.to_string()),
        ("io.shoal.app".to_string(), task.app.clone()),
        ("io.shoal.service".to_string(), task.service.clone()),
    ]);
    ContainerConfig {
        id: task.id.clone(),
        image,
        command: container.command.clone(),
        args: container.args.clone(),
        env: container.env.clone(),
        working_dir: container.working_dir.clone(),
        user: container.user.map(|user| (user.uid, user.gid)),
        cpu_millis: spec.resources.cpu.map(|cpu| cpu.0),
        memory_bytes: spec.resources.memory.map(|memory| memory.0),
        labels,
        log_path: shared.logs_dir.join(format!("{}.log", task.id)),
        hostname: super::network::hostname(task),
        network: attached.network,
        mounts: attached.mounts,
        privileges: privileges(spec.security()),
    }
}

/// What the runtime is asked to give a container beyond the defaults.
fn privileges(security: &shoal_types::Security) -> Privileges {
    let changed = !security.capabilities.add.is_empty() || !security.capabilities.drop.is_empty();
    Privileges {
        privileged: security.privileged,
        host_pid: security.host_pid,
        capabilities: changed.then(|| {
            security
                .effective_capabilities()
                .into_iter()
                .map(String::from)
                .collect()
        }),
        read_only_root: security.read_only_root,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use shoal_cluster::log::MemoryLog;
    use shoal_cluster::raft::ProposeError;
    use shoal_runtime::fake::{FakeOp, FakeRuntime};
    use shoal_runtime::{ContainerInfo, NetworkMode};
    use shoal_state::{Placement, Plan, State};
    use shoal_types::{Node, TaskState};

    use super::*;
    use crate::clock::{ManualClock, SystemClock};

    const WAIT_MAX: Duration = Duration::from_secs(10);

    /// Task networks in memory: an address per attached task.
    #[derive(Default)]
    struct FakeNetwork {
        attached: Mutex<BTreeSet<String>>,
        /// The node's network is not up yet (a node that has just joined).
        unready: std::sync::atomic::AtomicBool,
    }

    impl TaskNetwork for FakeNetwork {
        fn is_ready(&self) -> bool {
            !self.unready.load(std::sync::atomic::Ordering::SeqCst)
        }
        fn attach(&self, task: &Task, _zone: &str) -> anyhow::Result<Attached> {
            assert!(self.is_ready(), "attached before the node's network was up");
            self.attached.lock().expect("lock").insert(task.id.clone());
            Ok(Attached {
                network: NetworkMode::Isolated,
                mounts: Vec::new(),
                address: Some(Ipv4Addr::new(10, 42, 0, 2)),
            })
        }
        fn detach(&self, task_id: &str) -> anyhow::Result<()> {
            self.attached.lock().expect("lock").remove(task_id);
            Ok(())
        }
        fn collect_garbage(&self, live: &BTreeSet<String>) -> usize {
            let mut attached = self.attached.lock().expect("lock");
            let before = attached.len();
            attached.retain(|id| live.contains(id));
            before - attached.len()
        }
    }

    /// A log holding node `n1` and app `web` (one replica of busybox)
    /// placed on it; returns the log and the task id.
    fn placed() -> (MemoryLog, String) {
        placed_with(
            "name: web\nservices: [{name: hello, image: busybox, replicas: 1}]\n",
            shoal_types::Allows::default(),
        )
    }

    /// A log holding node `n1` (registered with `allows`) and the app of
    /// `spec` (a service `hello` of app `web`) placed on it.
    fn placed_with(spec: &str, allows: shoal_types::Allows) -> (MemoryLog, String) {
        let log = MemoryLog::new("n1", State::default());
        let mut node = Node::sample("n1", "n1:7950");
        node.allows = allows;
        log.apply(Command::RegisterNode { node });
        let spec = shoal_types::parse_app(spec.as_bytes()).expect("spec");
        log.apply(Command::PutApp { spec });
        let outcome = log.apply(Command::ApplyPlan {
            plan: Plan {
                place: vec![Placement {
                    app: "web".into(),
                    service: "hello".into(),
                    slot: 0,
                    app_version: 1,
                    node: "n1".into(),
                    beside: false,
                }],
                ..Plan::default()
            },
        });
        let shoal_state::Outcome::PlanApplied { placed, .. } = outcome else {
            panic!("{outcome:?}");
        };
        (log, placed[0].clone())
    }

    fn keeper<C: Clock>(
        log: &MemoryLog,
        runtime: &Arc<FakeRuntime>,
        clock: C,
    ) -> Arc<Keeper<MemoryLog, FakeRuntime, FakeNetwork, C>> {
        Arc::new(Keeper {
            node: "n1".into(),
            logs_dir: std::env::temp_dir(),
            log: log.clone(),
            runtime: runtime.clone(),
            network: Arc::new(FakeNetwork::default()),
            clock,
            credentials: Arc::new(crate::node::pull_credentials::PullCredentials::local(None)),
            allows: Default::default(),
            // These tasks list no secrets or configs: nothing is written.
            files: Arc::new(crate::node::task_files::TaskFiles::new(
                std::env::temp_dir().join("shoal-keeper-tests-write-no-files"),
                None,
                None,
            )),
        })
    }

    async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(
                started.elapsed() < WAIT_MAX,
                "waited {WAIT_MAX:?} for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn containers(runtime: &FakeRuntime) -> Vec<ContainerInfo> {
        runtime.list().await.expect("the fake lists")
    }

    fn status(log: &MemoryLog, task: &str) -> TaskStatus {
        log.read().tasks[task].status.clone()
    }

    /// Waits until `task` is reported in `state`; its status then.
    async fn reported(log: &MemoryLog, task: &str, state: TaskState) -> TaskStatus {
        wait_for(&format!("the task reported {state:?}"), || {
            let status = status(log, task);
            (status.state == state).then_some(status)
        })
        .await
    }

    #[tokio::test]
    async fn a_placed_task_runs_and_is_reported() {
        let (log, task) = placed();
        let runtime = Arc::new(FakeRuntime::new());
        runtime.add_image("busybox");
        let keeper = keeper(&log, &runtime, ManualClock::at(1_000_000));
        let network = keeper.network.clone();
        let running = tokio::spawn(run(keeper));
        reported(&log, &task, TaskState::Running).await;
        let listed = containers(&runtime).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].id, task);
        let config = runtime.config(&task).expect("its config");
        assert_eq!(config.image, "docker.io/library/busybox:latest");
        let reported = status(&log, &task);
        assert_eq!(reported.address, Some(Ipv4Addr::new(10, 42, 0, 2)));
        assert_eq!(
            reported.updated_at_ms, 1_000_000,
            "stamped by the keeper's clock"
        );
        assert!(network.attached.lock().expect("lock").contains(&task));
        running.abort();
    }

    /// A task placed on a node whose own network is not up yet (it has
    /// just joined) waits for it: its first attempt runs, nothing fails.
    #[tokio::test]
    async fn a_task_waits_for_the_node_s_network_instead_of_failing() {
        let (log, task) = placed();
        let runtime = Arc::new(FakeRuntime::new());
        runtime.add_image("busybox");
        let keeper = keeper(&log, &runtime, SystemClock);
        keeper
            .network
            .unready
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let network = keeper.network.clone();
        let running = tokio::spawn(run(keeper));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            containers(&runtime).await.is_empty(),
            "ran without a network"
        );
        network
            .unready
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let ran = reported(&log, &task, TaskState::Running).await;
        assert_eq!((ran.attempt, ran.restarts), (1, 0), "{ran:?}");
        running.abort();
    }

    /// The node keeps its own promise: a task that needs more than its
    /// operator allows is not run, even when the state says the node
    /// allows it (a stale or forged record); with the flag it runs with
    /// what it asked for.
    #[tokio::test]
    async fn a_task_beyond_what_the_node_allows_is_not_run() {
        const PRIVILEGED: &str = "name: web\nservices: [{name: hello, image: busybox, replicas: 1, security: {privileged: true, read_only_root: true}}]\n";
        let claimed = shoal_types::Allows {
            privileged: true,
            host_network: false,
        };
        let (log, task) = placed_with(PRIVILEGED, claimed);
        let runtime = Arc::new(FakeRuntime::new());
        runtime.add_image("busybox");
        let running = tokio::spawn(run(keeper(&log, &runtime, SystemClock)));
        let failed = reported(&log, &task, TaskState::Failed).await;
        assert!(
            failed.message.contains("does not allow privileged tasks")
                && failed.message.contains("--allow-privileged"),
            "{failed:?}"
        );
        assert!(
            containers(&runtime).await.is_empty(),
            "a container was made"
        );
        running.abort();

        let (log, task) = placed_with(PRIVILEGED, claimed);
        let runtime = Arc::new(FakeRuntime::new());
        runtime.add_image("busybox");
        let mut allowed = keeper(&log, &runtime, SystemClock);
        Arc::get_mut(&mut allowed).expect("one owner").allows = claimed;
        let running = tokio::spawn(run(allowed));
        reported(&log, &task, TaskState::Running).await;
        let privileges = runtime.config(&task).expect("its config").privileges;
        assert!(
            privileges.privileged && privileges.read_only_root,
            "{privileges:?}"
        );
        running.abort();
    }

    #[test]
    fn each_runtime_error_kind_is_tried_again_or_fails_the_attempt() {
        use shoal_runtime::ErrorKind::*;
        for (kind, again) in [
            (Transient, true),
            (Invalid, false),
            (ImageMissing, false),
            (NotFound, false),
            (Conflict, false),
            (Internal, false),
        ] {
            assert_eq!(transient(kind), again, "{kind}");
        }
    }

    #[tokio::test]
    async fn a_runtime_or_registry_out_of_reach_for_a_moment_does_not_fail_the_attempt() {
        // containerd does not answer the first run.
        let (log, task) = placed();
        let runtime = Arc::new(FakeRuntime::new());
        runtime.add_image("busybox");
        runtime.fail_next(FakeOp::Run, "connection refused");
        let running = tokio::spawn(run(keeper(&log, &runtime, SystemClock)));
        let status = reported(&log, &task, TaskState::Running).await;
        assert_eq!(
            (status.attempt, status.restarts, status.promise),
            (1, 0, shoal_types::Promise::Kept),
            "{status:?}"
        );
        running.abort();

        // The registry is out of reach for the first pull.
        let (log, task) = placed();
        let runtime = Arc::new(FakeRuntime::new());
        runtime.add_registry_image("busybox");
        runtime.fail_next_with(
            FakeOp::Pull,
            RuntimeError::Registry {
                kind: ErrorKind::Transient,
                message: "docker.io: connection timed out".into(),
            },
        );
        let running = tokio::spawn(run(keeper(&log, &runtime, SystemClock)));
        let status = reported(&log, &task, TaskState::Running).await;
        assert_eq!((status.attempt, status.restarts), (1, 0), "{status:?}");
        running.abort();

        // A config the runtime refuses fails the attempt at once.
        let (log, task) = placed();
        let runtime = Arc::new(FakeRuntime::new());
        runtime.add_image("busybox");
        runtime.fail_next_with(
            FakeOp::Run,
            RuntimeError::InvalidConfig("no command".into()),
        );
        let running = tokio::spawn(run(keeper(&log, &runtime, SystemClock)));
        let failed = reported(&log, &task, TaskState::Failed).await;
        assert!(
            failed.attempt == 1 && failed.message.contains("no command"),
            "{failed:?}"
        );
        running.abort();
    }

    #[tokio::test]
    async fn a_missing_image_is_pulled_and_an_unpullable_one_fails_the_task() {
        let (log, task) = placed();
        let runtime = Arc::new(FakeRuntime::new());
        let name = runtime.add_registry_image("busybox");
        let running = tokio::spawn(run(keeper(&log, &runtime, SystemClock)));
        reported(&log, &task, TaskState::Running).await;
        assert_eq!(runtime.pulled(), std::slice::from_ref(&name));
        running.abort();

        // Neither here nor in the registry: the attempt fails with the
        // registry's reason.
        let (log, task) = placed();
        let runtime = Arc::new(FakeRuntime::new());
        let running = tokio::spawn(run(keeper(&log, &runtime, SystemClock)));
        let failed = reported(&log, &task, TaskState::Failed).await;
        assert!(
            failed.message.contains("no such image") && failed.message.contains(&name),
            "{failed:?}"
        );
        running.abort();
    }

    #[tokio::test]
    async fn a_long_pull_says_how_far_it_is_in_the_task_message() {
        let (log, task) = placed();
        let runtime = Arc::new(FakeRuntime::new());
        let name = runtime.add_registry_image("busybox");
        runtime.hold_pull(
            &name,
            shoal_runtime::PullProgress {
                done_bytes: 12 << 20,
                total_bytes: 28 << 20,
                bytes_per_s: 5 << 20,
                layers: Vec::new(),
            },
        );
        let running = tokio::spawn(run(keeper(&log, &runtime, SystemClock)));
        let preparing = wait_for("the pull's progress in the task's status", || {
            let status = status(&log, &task);
            status.message.starts_with("pulling").then_some(status)
        })
        .await;
        assert_eq!(preparing.state, TaskState::Preparing);
        assert_eq!(
            preparing.message,
            "pulling 42 % (12 MiB of 28 MiB at 5 MiB/s)"
        );
        runtime.release_pull(&name);
        wait_for("the task running once pulled", || {
            (status(&log, &task).state == TaskState::Running).then_some(())
        })
        .await;
        running.abort();
    }

    #[tokio::test]
    async fn a_leftover_container_is_replaced_and_a_stray_one_destroyed() {
        let (log, task) = placed();
        let runtime = Arc::new(FakeRuntime::new());
        runtime.add_image("busybox");
        // Left by an agent that died: the task's container, exited, and a
        // container of a task the cluster no longer has.
        let mut leftover = ContainerConfig {
            labels: BTreeMap::from([
                (LABEL_TASK.to_string(), task.clone()),
                (LABEL_ATTEMPT.to_string(), "1".to_string()),
            ]),
            ..ContainerConfig::new(
                task.clone(),
                "busybox",
                std::env::temp_dir().join("leftover.log"),
            )
        };
        runtime.run(&leftover).await.expect("leftover runs");
        assert!(runtime.exit(&task, 1));
        leftover.id = "web.gone.0.9".into();
        leftover
            .labels
            .insert(LABEL_TASK.into(), "web.gone.0.9".into());
        runtime.run(&leftover).await.expect("stray runs");

        let running = tokio::spawn(run(keeper(&log, &runtime, SystemClock)));
        wait_for("the leftover replaced and the stray gone", || {
            let reported = status(&log, &task);
            (reported.state == TaskState::Running).then_some(())
        })
        .await;
        let listed = wait_for("the stray container destroyed", || {
            let listed = futures::executor::block_on(containers(&runtime));
            (listed.len() == 1).then_some(listed)
        })
        .await;
        assert_eq!(listed[0].id, task);
        assert!(
            matches!(listed[0].status, ContainerStatus::Running { .. }),
            "{listed:?}"
        );
        running.abort();
    }

    #[tokio::test]
    async fn a_lost_report_is_sent_again() {
        let (log, task) = placed();
        log.refuse(Some(ProposeError::NoLeader("an election".into())));
        let runtime = Arc::new(FakeRuntime::new());
        runtime.add_image("busybox");
        let running = tokio::spawn(run(keeper(&log, &runtime, SystemClock)));
        // The node keeps its promise without the cluster: the container runs.
        wait_for("the container running while reports fail", || {
            let listed = futures::executor::block_on(containers(&runtime));
            listed
                .iter()
                .any(|c| c.id == task && matches!(c.status, ContainerStatus::Running { .. }))
                .then_some(())
        })
        .await;
        assert_eq!(status(&log, &task).state, TaskState::Pending);
        log.refuse(None);
        wait_for("the report sent again", || {
            (status(&log, &task).state == TaskState::Running).then_some(())
        })
        .await;
        running.abort();
    }
}

//! Rolling updates on a calm cluster, round by round: the real state
//! machine and scheduler, and nodes that start what is placed on them
//! within a second and report it healthy, or failed when its version is a
//! bad one.
//! Services get new versions, good and bad, with random update settings,
//! sometimes while an update is under way; settled tasks flap unhealthy
//! for a round. After every round it checks:
//!
//! - the state's invariants (two tasks a slot at most, of two versions);
//! - a service rolling start-first serves every slot, once all its slots
//!   served since it last rolled stop-first (a flapping task counted as
//!   serving: the flap is not the update's doing), which is stricter than
//!   the `replicas - parallelism` the issue asks;
//! - a bad version (by the spec its tasks run, a rollback's too) never
//!   gets more than one batch (`parallelism` slots).

use std::collections::{BTreeMap, BTreeSet};

use shoal_sched::Options;
use shoal_state::{Command, Outcome};
use shoal_types::{parse_app, DesiredState, Health, TaskState, TaskStatus};

use crate::cluster::{self, Cluster};
use crate::rng::Rng;

/// Virtual time of one round.
const ROUND_MS: u64 = 250;
/// The `monitor` every simulated update waits.
const MONITOR_MS: u64 = 1_000;
/// Longest time a simulated task takes to start.
const START_MS_MAX: u64 = 1_000;

#[derive(Clone, Debug)]
pub struct RolloutConfig {
    pub seed: u64,
    pub nodes: usize,
    pub apps: usize,
    pub rounds: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutSummary {
    pub versions: u64,
    pub bad_versions: u64,
    pub rollbacks: u64,
    pub pauses: u64,
    pub finished: u64,
    pub flaps: u64,
    /// Bad versions that got tasks placed.
    pub bad_placed: u64,
    /// Service-rounds the serving bound was checked in.
    pub bound_checks: u64,
}

/// One app's service as the run changes it.
struct Service {
    app: String,
    replicas: u64,
    parallelism: u64,
    start_first: bool,
    version: u64,
}

impl Service {
    fn spec(&self, bad: bool, pause: bool) -> String {
        let order = if self.start_first {
            "start-first"
        } else {
            "stop-first"
        };
        let action = if pause { "pause" } else { "rollback" };
        format!(
            "name: {}\nservices:\n  - name: s\n    image: busybox:1.0\n    replicas: {}\n    env: {{VERSION: \"{}\", BAD: \"{}\"}}\n    health: {{tcp: {{port: 80}}}}\n    update: {{parallelism: {}, order: {order}, monitor: {MONITOR_MS}ms, failure_action: {action}}}\n",
            self.app, self.replicas, self.version, u8::from(bad), self.parallelism
        )
    }
}

pub fn run(config: &RolloutConfig) -> Result<RolloutSummary, String> {
    let mut rng = Rng::new(config.seed);
    let mut cluster = Cluster::default();
    let mut summary = RolloutSummary::default();
    for number in 0..config.nodes {
        let node = cluster::node(&cluster::node_name(number), 8, 32 << 30, BTreeMap::new());
        apply(&mut cluster, Command::RegisterNode { node })?;
    }
    let mut services: Vec<Service> = (0..config.apps)
        .map(|at| Service {
            app: format!("app{at}"),
            replicas: rng.between(1, 6),
            parallelism: rng.between(1, 3),
            start_first: !rng.chance(250),
            version: 0,
        })
        .collect();
    // The slots each bad version (by the spec its tasks run) was placed
    // in, and the parallelism it rolls out with, by (app, app version).
    let mut bad: BTreeMap<(String, u64), (BTreeSet<u32>, u32)> = BTreeMap::new();
    let mut settled_once: BTreeSet<String> = BTreeSet::new();
    for service in &mut services {
        put(&mut cluster, service, false, false)?;
    }
    for round in 0..config.rounds {
        cluster.now_ms += ROUND_MS;
        // A new version now and then, a bad one at times, also mid-update.
        if rng.chance(60) {
            let at = rng.below(services.len() as u64) as usize;
            let service = &mut services[at];
            let is_bad = rng.chance(300);
            service.parallelism = rng.between(1, 3);
            service.start_first = !rng.chance(250);
            put(&mut cluster, service, is_bad, rng.chance(300))?;
            summary.versions += 1;
            summary.bad_versions += u64::from(is_bad);
        }
        let plan = shoal_sched::reconcile_with(
            &cluster.state,
            &Options {
                now_ms: cluster.now_ms,
                seed: config.seed,
                ..Options::default()
            },
        );
        for step in &plan.rollouts {
            match step.action {
                shoal_state::history::RolloutAction::Rollback => summary.rollbacks += 1,
                shoal_state::history::RolloutAction::Pause => summary.pauses += 1,
                shoal_state::history::RolloutAction::Finish => summary.finished += 1,
            }
        }
        let placed = match apply(&mut cluster, Command::ApplyPlan { plan })? {
            Outcome::PlanApplied { rejected, .. } if !rejected.is_empty() => {
                return Err(format!(
                    "round {round}: a plan made on this state was refused: {rejected:?}"
                ))
            }
            Outcome::PlanApplied { placed, .. } => placed,
            other => return Err(format!("round {round}: a plan gave {other:?}")),
        };
        for id in placed {
            let Some(task) = cluster.state.tasks.get(&id).filter(|task| runs_bad(task)) else {
                continue;
            };
            let (slots, _) = bad
                .entry((task.app.clone(), task.app_version))
                .or_insert_with(|| (BTreeSet::new(), task.spec.update().parallelism));
            slots.insert(task.slot);
        }
        summary.flaps += nodes_act(&mut cluster, &mut rng)?;
        cluster
            .state
            .check_invariants()
            .map_err(|broken| format!("round {round}: {broken}"))?;
        summary.bound_checks += check_serving(&cluster, &services, &mut settled_once)
            .map_err(|broken| format!("round {round}: {broken}"))?;
        for (key, (slots, most)) in &bad {
            if slots.len() > *most as usize {
                return Err(format!(
                    "round {round}: bad version {} of {} got {} slots: {slots:?}",
                    key.1,
                    key.0,
                    slots.len()
                ));
            }
        }
    }
    summary.bad_placed = bad.len() as u64;
    Ok(summary)
}

fn apply(cluster: &mut Cluster, command: Command) -> Result<Outcome, String> {
    cluster.apply(command).map_err(|error| error.to_string())
}

fn put(
    cluster: &mut Cluster,
    service: &mut Service,
    is_bad: bool,
    pause: bool,
) -> Result<(), String> {
    service.version += 1;
    let spec = parse_app(service.spec(is_bad, pause).as_bytes()).map_err(|e| e.to_string())?;
    apply(cluster, Command::PutApp { spec })?;
    Ok(())
}

/// Whether a task runs a bad version: its spec says so.
fn runs_bad(task: &shoal_types::Task) -> bool {
    let shoal_types::Workload::Container(container) = &task.spec.workload;
    container.env.get("BAD").is_some_and(|bad| bad == "1")
}

/// Every node does what the state asks at once: a placed task runs and
/// is healthy (or fails, in a bad version), a task told to stop stops.
/// A settled task sometimes flaps unhealthy for a round. How many flapped.
fn nodes_act(cluster: &mut Cluster, rng: &mut Rng) -> Result<u64, String> {
    let now = cluster.now_ms;
    let mut reports: BTreeMap<String, Vec<(String, TaskStatus)>> = BTreeMap::new();
    let mut flaps = 0;
    for task in cluster.state.tasks.values() {
        let mut status = task.status.clone();
        match (task.desired, task.status.state) {
            // A task takes up to a second to start, by its id.
            (DesiredState::Running, TaskState::Pending)
                if now >= task.created_at_ms + crate::fnv1a(task.id.as_bytes()) % START_MS_MAX =>
            {
                status.attempt = 1;
                status.updated_at_ms = now;
                if runs_bad(task) {
                    status.state = TaskState::Failed;
                    status.message = "exited with 1".into();
                } else {
                    status.state = TaskState::Running;
                    status.started_at_ms = Some(now);
                    status.health = Some(Health::Healthy);
                }
            }
            (DesiredState::Running, TaskState::Running) => {
                let since = status.started_at_ms.unwrap_or(now);
                let flapping = status.health == Some(Health::Unhealthy);
                if flapping {
                    status.health = Some(Health::Healthy);
                    status.updated_at_ms = now;
                } else if now > since + 10 * MONITOR_MS && rng.chance(5) {
                    status.health = Some(Health::Unhealthy);
                    status.updated_at_ms = now;
                    flaps += 1;
                } else {
                    continue;
                }
            }
            (DesiredState::Stopped, state) if state != TaskState::Stopped => {
                status.state = TaskState::Stopped;
                status.health = None;
                status.updated_at_ms = now;
            }
            _ => continue,
        }
        reports
            .entry(task.node.clone())
            .or_default()
            .push((task.id.clone(), status));
    }
    for (node, statuses) in reports {
        apply(cluster, Command::ReportTasks { node, statuses })?;
    }
    Ok(flaps)
}

/// A service rolling start-first serves every one of its slots, once it
/// had served them all since it last rolled stop-first (which takes slots
/// down by design): old tasks stop only after their new ones serve, and a
/// failed new task leaves its old one serving. A flapping task counts as
/// serving: the flap is not the update's doing. How many services it
/// checked.
fn check_serving(
    cluster: &Cluster,
    services: &[Service],
    settled_once: &mut BTreeSet<String>,
) -> Result<u64, String> {
    let mut checked = 0;
    for service in services {
        let Some(app) = cluster.state.apps.get(&service.app) else {
            continue;
        };
        let Some(spec) = app.spec.services.first() else {
            continue;
        };
        if spec.update().order != shoal_types::UpdateOrder::StartFirst {
            settled_once.remove(&service.app);
            continue;
        }
        let serving = cluster
            .state
            .tasks
            .values()
            .filter(|task| {
                task.app == service.app
                    && task.desired == DesiredState::Running
                    && task.status.state == TaskState::Running
                    && task.slot < spec.replicas
            })
            .map(|task| task.slot)
            .collect::<BTreeSet<u32>>()
            .len() as u64;
        let replicas = u64::from(spec.replicas);
        if !settled_once.contains(&service.app) {
            if serving >= replicas {
                settled_once.insert(service.app.clone());
            }
            continue;
        }
        checked += 1;
        if serving < replicas {
            return Err(format!(
                "{} serves {serving} of {replicas} slots while rolling start-first",
                service.app
            ));
        }
    }
    Ok(checked)
}

//! How far an app's current version has rolled out: computed here once,
//! from the state alone, for the API to serve and `shoal apply` to follow.

use shoal_types::{DesiredState, FailureAction, Health, Kind, Promise, Task, TaskState};

use crate::history::{MarkState, RolloutMark};
use crate::{format, State};

/// An app's rollout of its current version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    pub app: String,
    pub version: u64,
    pub services: Vec<ServiceRollout>,
    /// Every service is done and no task of an older spec is still
    /// stopping.
    pub done: bool,
    /// The first task whose promise is broken for good: the rollout will
    /// not finish by itself (while a rolling update would react to it, by
    /// its `failure_action`, it is not named here).
    pub broken: Option<BrokenTask>,
    /// What became of the current version's rolling update, when it was
    /// paused or is a rollback (format 13).
    pub mark: Option<RolloutMark>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRollout {
    pub service: String,
    pub kind: Kind,
    /// Tasks wanted: `replicas`, or for a global service the nodes that
    /// may run it.
    pub wanted: u32,
    /// Tasks of the current spec that run.
    pub running: u32,
    /// Of those, the ones that serve: healthy, or without a check.
    pub healthy: u32,
    /// Tasks of an older spec meant to run still, until a rolling update
    /// replaces them.
    pub outdated: u32,
    /// Batch tasks that exited with 0.
    pub completed: u32,
    /// Batch tasks that failed and will not run again.
    pub failed: u32,
    /// Tasks of this service (of any spec) told to stop that still run.
    pub stopping: u32,
    /// The service has what it wants: `wanted` healthy and no outdated
    /// task (a batch job: completed).
    pub done: bool,
    /// Why tasks of it fit on no node, when some do not.
    pub unplaced: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenTask {
    pub task: String,
    pub state: TaskState,
    pub message: String,
}

/// Whether a task runs the current spec of its service, and the image its
/// app pins now (a task from before pins runs what it runs).
fn current(task: &Task, app: &crate::App, service: &shoal_types::ServiceSpec) -> bool {
    task.desired == DesiredState::Running && task.spec.same_task_as(service) && !app.pin_moved(task)
}

impl State {
    /// The rollout of app `name`'s current version, if the app exists.
    pub fn rollout(&self, name: &str) -> Option<Rollout> {
        let app = self.apps.get(name)?;
        let tasks: Vec<&Task> = self.tasks.values().filter(|t| t.app == name).collect();
        let mut broken = None;
        let services: Vec<ServiceRollout> = app
            .spec
            .services
            .iter()
            .map(|service| {
                let mine = tasks.iter().filter(|t| t.service == service.name);
                let (mut running, mut completed, mut failed, mut stopping) = (0, 0, 0, 0);
                let (mut healthy, mut outdated) = (0, 0);
                let mut first_broken = None;
                // A rolling update under way reacts to a failed new task
                // itself.
                let rolls = self.log_version >= format::ROLLOUTS
                    && service.kind != Kind::Batch
                    && service.update().failure_action != FailureAction::Continue;
                for task in mine {
                    if task.desired == DesiredState::Stopped && !task.status.state.is_terminal() {
                        stopping += 1;
                    }
                    if !current(task, app, service) {
                        if task.desired == DesiredState::Running {
                            outdated += 1;
                        }
                        continue;
                    }
                    match task.status.state {
                        TaskState::Running => {
                            running += 1;
                            if matches!(task.health(), None | Some(Health::Healthy)) {
                                healthy += 1;
                            }
                        }
                        TaskState::Exited if task.status.exit_code == Some(0) => completed += 1,
                        _ if task.finished_for_good() => failed += 1,
                        _ => {}
                    }
                    let broken_for_good = task.status.promise == Promise::Broken
                        && matches!(task.status.state, TaskState::Failed | TaskState::Exited);
                    if broken_for_good && first_broken.is_none() {
                        first_broken = Some(BrokenTask {
                            task: task.id.clone(),
                            state: task.status.state,
                            message: task.status.message.clone(),
                        });
                    }
                }
                if !(rolls && outdated > 0) && broken.is_none() {
                    broken = first_broken;
                }
                let wanted = match service.kind {
                    Kind::Global => self
                        .nodes
                        .values()
                        .filter(|node| crate::fit::admits(node, service).is_ok())
                        .count() as u32,
                    Kind::Service | Kind::Batch => service.replicas,
                };
                let batch = service.kind == Kind::Batch;
                ServiceRollout {
                    service: service.name.clone(),
                    kind: service.kind,
                    wanted,
                    running,
                    healthy,
                    outdated,
                    completed: if batch { completed } else { 0 },
                    failed: if batch { failed } else { 0 },
                    stopping,
                    done: if batch {
                        completed == wanted
                    } else {
                        healthy == wanted && outdated == 0
                    },
                    unplaced: self
                        .unplaced
                        .iter()
                        .find(|u| u.app == name && u.service == service.name)
                        .map(|u| u.reason.clone()),
                }
            })
            .collect();
        // Tasks of services the spec no longer has must stop too.
        let gone_stopping = tasks.iter().any(|task| {
            task.desired == DesiredState::Stopped
                && !task.status.state.is_terminal()
                && !app.spec.services.iter().any(|s| s.name == task.service)
        });
        let mark = app.rollout_mark().cloned();
        let paused = mark
            .as_ref()
            .is_some_and(|mark| mark.state == MarkState::Paused);
        let done = services.iter().all(|s| s.done && s.stopping == 0)
            && !gone_stopping
            && broken.is_none()
            && !paused;
        Some(Rollout {
            app: name.to_string(),
            version: app.version,
            services,
            done,
            broken,
            mark,
        })
    }
}

#[cfg(test)]
mod tests {
    use shoal_types::{Node, TaskStatus};

    use crate::{Command, Meta, Outcome, Placement, Plan, State};

    use super::*;

    struct Cluster {
        state: State,
        index: u64,
    }

    impl Cluster {
        fn apply(&mut self, command: Command) -> Outcome {
            self.index += 1;
            let meta = Meta::trusted(self.index, "n1", &command);
            self.state
                .apply_command(self.index, meta, &command)
                .expect("applies")
        }

        fn new(nodes: &[&str], spec: &str) -> Cluster {
            let mut cluster = Cluster {
                state: State::default(),
                index: 0,
            };
            for name in nodes {
                cluster.apply(Command::RegisterNode {
                    node: Node::sample(name, &format!("{name}:7950")),
                });
            }
            cluster.put(spec);
            cluster
        }

        fn put(&mut self, spec: &str) {
            let spec = shoal_types::parse_app(spec.as_bytes()).expect("spec");
            self.apply(Command::PutApp { spec });
        }

        /// Places slot `slot` of `service` on `node` for the app's version.
        fn place(&mut self, service: &str, slot: u32, node: &str) -> String {
            let version = self.state.apps["web"].version;
            let outcome = self.apply(Command::ApplyPlan {
                plan: Plan {
                    place: vec![Placement {
                        app: "web".into(),
                        service: service.into(),
                        slot,
                        app_version: version,
                        node: node.into(),
                        beside: false,
                    }],
                    ..Plan::default()
                },
            });
            match outcome {
                Outcome::PlanApplied { placed, .. } => placed[0].clone(),
                other => panic!("{other:?}"),
            }
        }

        fn report(&mut self, task: &str, state: TaskState, exit_code: Option<i32>) {
            let node = self.state.tasks[task].node.clone();
            let attempt = self.state.tasks[task].status.attempt.max(1);
            let promise = match state {
                TaskState::Running => Promise::Kept,
                TaskState::Exited if exit_code == Some(0) => Promise::Kept,
                TaskState::Exited | TaskState::Failed => Promise::Broken,
                _ => Promise::Pending,
            };
            self.apply(Command::ReportTasks {
                node,
                statuses: vec![(
                    task.to_string(),
                    TaskStatus {
                        attempt,
                        state,
                        promise,
                        exit_code,
                        message: format!("{state:?}"),
                        ..TaskStatus::pending(self.index)
                    },
                )],
            });
        }

        fn rollout(&self) -> Rollout {
            self.state.rollout("web").expect("the app exists")
        }
    }

    const SERVICE: &str = "name: web\nservices: [{name: a, image: busybox, replicas: 2}]\n";

    #[test]
    fn a_service_is_done_when_every_replica_of_the_new_spec_runs_and_the_old_ones_stopped() {
        let mut cluster = Cluster::new(&["n1"], SERVICE);
        let first = cluster.place("a", 0, "n1");
        assert!(!cluster.rollout().done, "nothing runs yet");
        cluster.report(&first, TaskState::Running, None);
        let second = cluster.place("a", 1, "n1");
        cluster.report(&second, TaskState::Running, None);
        let rollout = cluster.rollout();
        assert!(rollout.done, "{rollout:?}");
        assert_eq!(
            (rollout.services[0].wanted, rollout.services[0].running),
            (2, 2)
        );

        // A new spec: the old tasks no longer count, and while one of them
        // is told to stop but still runs, the rollout is not done.
        cluster.put("name: web\nservices: [{name: a, image: busybox, replicas: 1, args: [x]}]\n");
        let rollout = cluster.rollout();
        assert_eq!((rollout.version, rollout.services[0].running), (2, 0));
        cluster.apply(Command::ApplyPlan {
            plan: Plan {
                stop: vec![first.clone(), second.clone()],
                ..Plan::default()
            },
        });
        let new = cluster.place("a", 0, "n1");
        cluster.report(&new, TaskState::Running, None);
        let rollout = cluster.rollout();
        assert_eq!(rollout.services[0].stopping, 2, "{rollout:?}");
        assert!(!rollout.done);
        cluster.report(&first, TaskState::Exited, Some(0));
        cluster.report(&second, TaskState::Exited, Some(0));
        assert!(cluster.rollout().done);
    }

    #[test]
    fn a_broken_task_of_the_new_spec_says_why() {
        let mut cluster = Cluster::new(&["n1"], SERVICE);
        let task = cluster.place("a", 0, "n1");
        cluster.report(&task, TaskState::Failed, None);
        let rollout = cluster.rollout();
        let broken = rollout.broken.expect("broken");
        assert_eq!(
            (broken.task.as_str(), broken.state),
            (task.as_str(), TaskState::Failed)
        );
        assert!(!rollout.done);
    }

    #[test]
    fn a_global_service_wants_one_task_on_each_node_that_admits_it() {
        let mut cluster = Cluster::new(
            &["n1", "n2", "n3"],
            "name: web\nservices: [{name: g, image: busybox, kind: global, placement: {constraints: ['node.name != n3']}}]\n",
        );
        assert_eq!(cluster.rollout().services[0].wanted, 2);
        for (slot, node) in [(0, "n1"), (1, "n2")] {
            let task = cluster.place("g", slot, node);
            cluster.report(&task, TaskState::Running, None);
        }
        assert!(cluster.rollout().done);
    }

    #[test]
    fn a_batch_job_is_done_once_it_completed_not_while_it_runs() {
        let mut cluster = Cluster::new(
            &["n1"],
            "name: web\nservices: [{name: job, image: busybox, kind: batch, replicas: 1}]\n",
        );
        let task = cluster.place("job", 0, "n1");
        cluster.report(&task, TaskState::Running, None);
        let rollout = cluster.rollout();
        assert!(
            !rollout.done,
            "a running batch task is not done: {rollout:?}"
        );
        assert_eq!(rollout.services[0].completed, 0);
        cluster.report(&task, TaskState::Exited, Some(0));
        let rollout = cluster.rollout();
        assert!(rollout.done, "{rollout:?}");
        assert_eq!(rollout.services[0].completed, 1);
    }

    #[test]
    fn a_batch_job_that_fails_for_good_is_broken() {
        let mut cluster = Cluster::new(
            &["n1"],
            "name: web\nservices: [{name: job, image: busybox, kind: batch, replicas: 1, restart: {policy: never}}]\n",
        );
        let task = cluster.place("job", 0, "n1");
        cluster.report(&task, TaskState::Exited, Some(3));
        let rollout = cluster.rollout();
        assert_eq!(rollout.services[0].failed, 1);
        assert!(rollout.broken.is_some() && !rollout.done, "{rollout:?}");
    }

    #[test]
    fn no_app_no_rollout() {
        assert!(State::default().rollout("web").is_none());
    }
}

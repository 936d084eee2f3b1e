//! Reconcile, the first half of a run: which desired-running tasks the plan
//! keeps and which it stops (lost with their node, drained, tainted
//! `NoExecute`, outdated, scaled down, or shed by a node that came back
//! smaller), and which stopped tasks it forgets.

use shoal_state::fit::{self, Request};
use shoal_state::{State, StopReason, CHANGES_PER_PLAN_MAX};
use shoal_types::{DesiredState, Kind, ServiceSpec, TaintEffect, Task, TaskState};

use crate::Scheduler;

impl<'a> Scheduler<'a> {
    /// Decides for every task whether it stays, stops or is forgotten.
    pub(crate) fn classify_tasks(&mut self) {
        let state = self.state;
        for task in state.tasks.values() {
            match task.desired {
                DesiredState::Running => {
                    let at = self.index.get(task.node.as_str()).copied();
                    if let Some(at) = at {
                        let info = &mut self.nodes[at as usize];
                        info.used.add(Request::of(&task.spec));
                        info.tasks += 1;
                        info.host_ports.extend(fit::host_ports(&task.spec));
                    }
                    match self.keeps(task, at) {
                        Ok((sid, outdated)) => {
                            self.keep(sid, task.slot, at);
                            if let Some(why) = outdated {
                                self.outdated.entry(sid).or_default().push((task, why));
                            }
                        }
                        Err(why) => self.stop(task, why),
                    }
                }
                DesiredState::Stopped => {
                    if task.status.state == TaskState::Stopped
                        && self.plan.remove.len() < CHANGES_PER_PLAN_MAX
                    {
                        self.plan.remove.push(task.id.clone());
                    }
                }
            }
        }
        self.most_tasks = self.nodes.iter().map(|info| info.tasks).max().unwrap_or(0);
    }

    /// The current spec and version of a task's service. Tasks come in id
    /// order, so runs of them share a service: the last answer is kept.
    fn service_of(&self, task: &Task) -> Option<(&'a ServiceSpec, u64, u32)> {
        if let Some((app, service, found)) = self.last_service.get() {
            if app == task.app && service == task.service {
                return found;
            }
        }
        let state: &'a State = self.state;
        let (app_name, found) = match state.apps.get_key_value(&task.app) {
            Some((name, app)) => (
                name.as_str(),
                app.spec
                    .services
                    .iter()
                    .find(|spec| spec.name == task.service)
                    .and_then(|spec| {
                        let sid = self.service_ids.get(&(name.as_str(), spec.name.as_str()))?;
                        Some((spec, app.version, *sid))
                    }),
            ),
            None => return None,
        };
        if let Some((spec, _, _)) = found {
            self.last_service
                .set(Some((app_name, spec.name.as_str(), found)));
        }
        found
    }

    /// Whether a task pinned to a digest belongs to an app whose current
    /// version pins its service to another one. A task from before pins
    /// (none) keeps running what it runs.
    fn image_changed(&self, task: &Task) -> bool {
        self.state
            .apps
            .get(&task.app)
            .is_some_and(|app| app.pin_moved(task))
    }

    /// Whether the plan keeps a desired-running task (on node index `at`):
    /// its service's number when it does, and whether it runs an older
    /// spec that a rolling update replaces in turn; why it stops when it
    /// does not.
    fn keeps(&self, task: &Task, at: Option<u32>) -> Result<(u32, Option<StopReason>), StopReason> {
        let (service, version, sid) = self.service_of(task).ok_or(StopReason::ServiceGone)?;
        let outdated = self.outdated_why(task, service, version);
        // From format 13 a service (not a batch job) rolls: its outdated
        // tasks stay until `rolling` replaces them, if nothing else stops them.
        let rolls = self.rolls() && service.kind != Kind::Batch;
        match outdated {
            Some(why) if !rolls => Err(why),
            _ => self
                .keeps_as(task, at, service, sid)
                .map(|()| (sid, outdated)),
        }
    }

    /// Why a task no longer runs its service's current spec, if it does not.
    fn outdated_why(&self, task: &Task, service: &ServiceSpec, version: u64) -> Option<StopReason> {
        // A task of the current version runs the current spec by
        // construction; older ones run it when only `replicas` changed.
        if task.app_version == version {
            return None;
        }
        if !task.spec.same_task_as(service) {
            return Some(StopReason::SpecChanged);
        }
        self.image_changed(task).then_some(StopReason::ImageChanged)
    }

    fn keeps_as(
        &self,
        task: &Task,
        at: Option<u32>,
        service: &'a ServiceSpec,
        sid: u32,
    ) -> Result<(), StopReason> {
        let scaled = |slot_kept: bool| {
            if slot_kept {
                Ok(())
            } else {
                Err(StopReason::ScaledDown)
            }
        };
        let node = at.map(|at| self.nodes[at as usize].node);
        // A batch task that is done stays done, whatever became of its node.
        if service.kind == Kind::Batch && task.finished_for_good() {
            return scaled(task.slot < service.replicas);
        }
        let Some(node) = node.filter(|node| node.status == shoal_types::NodeStatus::Alive) else {
            // Lost with its node: the slot is free (and the node stops the
            // task if it comes back).
            return Err(StopReason::NodeLost);
        };
        if node.drain {
            return Err(StopReason::NodeDrained);
        }
        if fit::untolerated(node, service, |effect| effect == TaintEffect::NoExecute).is_some() {
            return Err(StopReason::NodeTainted);
        }
        if node.allows.lacks(service.needs()).is_some() {
            return Err(StopReason::NotAllowed);
        }
        match service.kind {
            Kind::Service | Kind::Batch => scaled(task.slot < service.replicas),
            // A global task follows its node's labels and taints, and one per
            // node is enough.
            Kind::Global => {
                if fit::admits(node, service).is_err() {
                    return Err(StopReason::NotAdmitted);
                }
                let duplicate = self
                    .per_node
                    .get(&sid)
                    .is_some_and(|counts| at.is_some_and(|at| counts.contains_key(&at)));
                if duplicate {
                    return Err(StopReason::DuplicateOnNode);
                }
                Ok(())
            }
        }
    }

    fn keep(&mut self, sid: u32, slot: u32, at: Option<u32>) {
        self.filled.insert((sid, slot));
        if let Some(at) = at {
            *self.per_node.entry(sid).or_default().entry(at).or_default() += 1;
        }
    }

    pub(crate) fn stop(&mut self, task: &'a Task, why: StopReason) {
        if self.plan.stop.len() >= CHANGES_PER_PLAN_MAX || !self.stopped.insert(&task.id) {
            return;
        }
        self.plan.stop.push(task.id.clone());
        self.plan.stop_why.push(why);
        if matches!(
            why,
            StopReason::NodeLost
                | StopReason::NodeDrained
                | StopReason::NodeTainted
                | StopReason::NotAllowed
                | StopReason::NodeShrank
        ) {
            if let Some((_, _, sid)) = self.service_of(task) {
                self.displaced.insert(sid);
            }
        }
        if let Some(at) = self.index.get(task.node.as_str()) {
            let info = &mut self.nodes[*at as usize];
            info.used.subtract(Request::of(&task.spec));
            info.tasks = info.tasks.saturating_sub(1);
            fit::release_host_ports(&mut info.host_ports, &task.spec);
        }
    }

    /// A node whose tasks request more than it has (it came back smaller)
    /// sheds its lowest-priority tasks until the rest fit.
    pub(crate) fn relieve_overcommitted_nodes(&mut self) {
        let over: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|at| self.overcommitted(*at))
            .collect();
        if over.is_empty() {
            return;
        }
        let state = self.state;
        for at in over {
            let name = self.nodes[at as usize].node.name.as_str();
            let mut tasks: Vec<&Task> = state
                .tasks
                .values()
                .filter(|task| {
                    task.node == name
                        && task.desired == DesiredState::Running
                        && !self.stopped.contains(task.id.as_str())
                        && Request::of(&task.spec) != Request::default()
                })
                .collect();
            tasks.sort_by_key(|task| (task.spec.priority, std::cmp::Reverse(task.id.as_str())));
            for task in tasks {
                if !self.overcommitted(at) {
                    break;
                }
                self.unkeep(task);
                self.stop(task, StopReason::NodeShrank);
            }
        }
    }

    fn overcommitted(&self, at: u32) -> bool {
        let info = &self.nodes[at as usize];
        info.used.cpu_millis > info.node.cpu_allocatable_millis
            || info.used.memory_bytes > info.node.memory_allocatable_bytes
    }

    pub(crate) fn unkeep(&mut self, task: &'a Task) {
        let Some(&sid) = self
            .service_ids
            .get(&(task.app.as_str(), task.service.as_str()))
        else {
            return;
        };
        // The other task of a slot two hold still holds it.
        if !self.doubled.remove(&(sid, task.slot)) {
            self.filled.remove(&(sid, task.slot));
        }
        if let (Some(counts), Some(at)) = (
            self.per_node.get_mut(&sid),
            self.index.get(task.node.as_str()),
        ) {
            if let Some(count) = counts.get_mut(at) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(at);
                }
            }
        }
    }
}

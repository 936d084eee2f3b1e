//! Preemption: a task of some priority that fits nowhere takes the room of
//! lower-priority tasks on one node, which are stopped.

use shoal_state::fit::{self, Request};
use shoal_types::{DesiredState, ServiceSpec, Task};

use crate::spread::SpreadContext;
use crate::Scheduler;

/// A kept task another one of higher priority may displace.
pub(crate) struct Victim<'a> {
    task: &'a Task,
    priority: u32,
    request: Request,
}

impl<'a> Scheduler<'a> {
    /// Makes room for a task by stopping tasks of lower priority on one node:
    /// the node where the highest priority displaced is lowest, then where
    /// fewest are displaced.
    // Rare: inlined into `place_replicas` it slows the loop over candidates.
    #[inline(never)]
    pub(crate) fn preempt(
        &mut self,
        service: &'a ServiceSpec,
        request: Request,
        admitting: &[u32],
        context: &SpreadContext<'a>,
    ) -> Option<u32> {
        if service.priority == 0
            || request == Request::default()
            || self.preemptions >= self.options.preemptions_max
        {
            return None;
        }
        if self.victims.is_none() {
            let mut victims: Vec<Vec<Victim>> = (0..self.nodes.len()).map(|_| Vec::new()).collect();
            for task in self.state.tasks.values() {
                if task.desired != DesiredState::Running || self.stopped.contains(task.id.as_str())
                {
                    continue;
                }
                if let Some(at) = self.index.get(task.node.as_str()) {
                    victims[*at as usize].push(Victim {
                        task,
                        priority: task.spec.priority,
                        request: Request::of(&task.spec),
                    });
                }
            }
            for list in &mut victims {
                list.sort_by_key(|victim| {
                    (victim.priority, std::cmp::Reverse(victim.task.id.as_str()))
                });
            }
            self.victims = Some(victims);
        }
        let victims = self.victims.as_ref()?;
        let mut best: Option<((u32, usize), u32, Vec<&'a Task>)> = None;
        for &at in admitting {
            if context.refuses(at).is_some() {
                continue;
            }
            let info = &self.nodes[at as usize];
            // Preemption makes room, not ports.
            if fit::host_port_taken(&info.host_ports, service).is_err() {
                continue;
            }
            let mut used = info.used;
            let mut taken: Vec<&'a Task> = Vec::new();
            let mut highest = 0;
            for victim in &victims[at as usize] {
                if fit::fits(info.node, used, request).is_ok()
                    || victim.priority >= service.priority
                {
                    break;
                }
                if victim.request == Request::default()
                    || self.stopped.contains(victim.task.id.as_str())
                {
                    continue;
                }
                used.subtract(victim.request);
                highest = highest.max(victim.priority);
                taken.push(victim.task);
            }
            if taken.is_empty() || fit::fits(info.node, used, request).is_err() {
                continue;
            }
            let cost = (highest, taken.len());
            if best
                .as_ref()
                .is_none_or(|(best_cost, _, _)| cost < *best_cost)
            {
                best = Some((cost, at, taken));
            }
        }
        let (_, at, chosen) = best?;
        for task in chosen {
            self.unkeep(task);
            self.stop(task, shoal_state::StopReason::Preempted);
        }
        self.preemptions += 1;
        Some(at)
    }
}

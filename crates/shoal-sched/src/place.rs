//! Place, the second half of a run: a node for each missing slot of every
//! service, higher priorities first, chosen among a seeded sample of the
//! admitting nodes that have room.

use shoal_state::fit::{self, Reject, Request};
use shoal_state::unplaced::UnplacedReason;
use shoal_state::{Placement, Unplaced};
use shoal_types::{Kind, ServiceSpec};

use crate::spread::SpreadContext;
use crate::{services_of, Scheduler};

/// Up to this many admitting nodes are all scored, whatever
/// `Options::candidates` says: a placement in a cluster this small costs at
/// most four times the default sample, and gets the exact best node.
const SCORE_ALL_NODES_MAX: usize = 64;

/// Nodes named at most in the reason a global service lacks room on some;
/// the rest are counted ("and 12 more"), so the reason stays one line.
const LACKING_ROOM_NAMED_MAX: usize = 5;

impl<'a> Scheduler<'a> {
    /// Places the missing slots of every service, higher priorities first.
    pub(crate) fn place_missing(&mut self) {
        let state = self.state;
        let mut services: Vec<(&'a str, u64, &'a ServiceSpec)> = services_of(state).collect();
        services.sort_by_key(|(app, _, service)| {
            (
                std::cmp::Reverse(service.priority),
                *app,
                service.name.as_str(),
            )
        });
        for (app, version, service) in services {
            // A full plan leaves the rest to the next one, at no cost.
            if self.plan.place.len() >= self.options.placements_max {
                break;
            }
            // An app this plan rolls back gets its tasks from the version
            // it goes back to, in the next run.
            if self.plan.rollouts.iter().any(|step| {
                step.app == app && step.action == shoal_state::history::RolloutAction::Rollback
            }) {
                continue;
            }
            match service.kind {
                Kind::Service | Kind::Batch => self.place_replicas(app, version, service),
                Kind::Global => self.place_global(app, version, service),
            }
        }
    }

    fn place_replicas(&mut self, app: &'a str, version: u64, service: &'a ServiceSpec) {
        let sid = self.sid(app, service);
        let missing: Vec<u32> = (0..service.replicas)
            .filter(|slot| !self.filled.contains(&(sid, *slot)))
            .collect();
        if missing.is_empty() {
            return;
        }
        let admitting = self.admitting(service);
        let request = Request::of(service);
        let mut context = SpreadContext::new(self, app, service, &admitting);
        let mut holder = self.image_holder(app, service, &admitting);
        for (done, slot) in missing.iter().enumerate() {
            if self.plan.place.len() >= self.options.placements_max {
                return;
            }
            let mut chosen = self.choose(app, service, request, &admitting, &context, holder);
            // No room beside the outdated task: it stops first instead,
            // where it fits, before a task of a lower priority is preempted.
            if chosen.is_none() {
                chosen = self.fall_back_to_stop_first(sid, *slot, service);
            }
            let chosen = chosen.or_else(|| self.preempt(service, request, &admitting, &context));
            match chosen {
                Some(at) => {
                    self.place(app, version, service, *slot, at, request);
                    context.placed(at);
                    // It holds one copy, for one task.
                    if holder == Some(at) {
                        holder = None;
                    }
                }
                None => {
                    let left = (missing.len() - done) as u32;
                    let why = self.explain(service, request, &context);
                    self.plan.unplaced.push(Unplaced {
                        app: app.to_string(),
                        service: service.name.clone(),
                        count: left,
                        reason: String::new(),
                        why: Some(why),
                    });
                    return;
                }
            }
        }
    }

    fn place_global(&mut self, app: &'a str, version: u64, service: &'a ServiceSpec) {
        let admitting = self.admitting(service);
        let request = Request::of(service);
        let key = self.sid(app, service);
        let mut next_slot = 0;
        let mut lacking_room = Vec::new();
        let mut limited: Vec<Reject> = Vec::new();
        let mut context = SpreadContext::new(self, app, service, &admitting);
        for &at in admitting.iter() {
            let has_one = self
                .per_node
                .get(&key)
                .is_some_and(|counts| counts.contains_key(&at));
            if has_one {
                continue;
            }
            if self.plan.place.len() >= self.options.placements_max {
                return;
            }
            if fit::fits(self.nodes[at as usize].node, self.used(at), request).is_err() {
                lacking_room.push(at);
                continue;
            }
            if let Err(reject) = fit::host_port_taken(&self.nodes[at as usize].host_ports, service)
            {
                limited.push(reject);
                continue;
            }
            // A global service's spread limits cap it below one per node.
            if let Some(reject) = context.refuses(at) {
                limited.push(reject);
                continue;
            }
            while self.filled.contains(&(key, next_slot)) {
                next_slot += 1;
            }
            self.place(app, version, service, next_slot, at, request);
            context.placed(at);
        }
        if let Some(first) = limited.first() {
            self.plan.unplaced.push(Unplaced {
                app: app.to_string(),
                service: service.name.clone(),
                count: limited.len() as u32,
                reason: String::new(),
                why: Some(UnplacedReason::AdmittedButLimited {
                    nodes: limited.len() as u32,
                    first: first.clone(),
                }),
            });
        }
        if !lacking_room.is_empty() {
            let named: Vec<String> = lacking_room
                .iter()
                .take(LACKING_ROOM_NAMED_MAX)
                .map(|at| self.nodes[*at as usize].node.name.clone())
                .collect();
            let more = lacking_room.len().saturating_sub(named.len()) as u32;
            self.plan.unplaced.push(Unplaced {
                app: app.to_string(),
                service: service.name.clone(),
                count: lacking_room.len() as u32,
                reason: String::new(),
                why: Some(UnplacedReason::AdmittedButNoRoom {
                    named,
                    more,
                    cpu_millis: request.cpu_millis,
                    memory_bytes: request.memory_bytes,
                }),
            });
        }
    }

    fn place(
        &mut self,
        app: &'a str,
        version: u64,
        service: &'a ServiceSpec,
        slot: u32,
        at: u32,
        request: Request,
    ) {
        let sid = self.sid(app, service);
        let info = &mut self.nodes[at as usize];
        info.used.add(request);
        info.tasks += 1;
        info.host_ports.extend(fit::host_ports(service));
        self.most_tasks = self.most_tasks.max(info.tasks);
        self.filled.insert((sid, slot));
        *self.per_node.entry(sid).or_default().entry(at).or_default() += 1;
        let beside = self.beside.remove(&(sid, slot));
        self.plan.place.push(Placement {
            app: app.to_string(),
            service: service.name.clone(),
            slot,
            app_version: version,
            node: info.node.name.clone(),
            beside,
        });
    }

    /// Why a node that admits the service cannot take one more task now.
    pub(crate) fn refuses(
        &self,
        at: u32,
        service: &ServiceSpec,
        request: Request,
        context: &SpreadContext<'a>,
    ) -> Option<Reject> {
        let info = &self.nodes[at as usize];
        if let Err(reject) = fit::fits_within(info.allocatable, info.used, request) {
            return Some(reject);
        }
        if let Err(reject) = fit::host_port_taken(&info.host_ports, service) {
            return Some(reject);
        }
        context.refuses(at)
    }

    /// The node that holds `service`'s image ahead of need as this run
    /// begins, when the service lost a task to its node: its standby
    /// (`prepull: successors`, the default), the admitting node running
    /// none of it that ranks first for it. `None` for other kinds and
    /// `prepull` values (with `all` every admitting node holds it, with
    /// `none` none does), and for new or scaled services (their image is
    /// on no node yet, or on every node that runs one).
    fn image_holder(
        &self,
        app: &'a str,
        service: &'a ServiceSpec,
        admitting: &[u32],
    ) -> Option<u32> {
        if !self.displaced.contains(&self.sid(app, service))
            || service.kind != Kind::Service
            || service.replicas == 0
            || service.prepull != shoal_types::Prepull::Successors
        {
            return None;
        }
        // The standby as the state names it, which is the node that
        // pulled the image ahead (not one that merely runs none of it now,
        // as a node shedding tasks does).
        let name = crate::standby(self.state, app, service)?;
        let at = *self.index.get(name)?;
        admitting.contains(&at).then_some(at)
    }

    /// The best node for one more task of `service`, if any has room.
    fn choose(
        &mut self,
        app: &'a str,
        service: &'a ServiceSpec,
        request: Request,
        admitting: &[u32],
        context: &SpreadContext<'a>,
        holder: Option<u32>,
    ) -> Option<u32> {
        if admitting.is_empty() {
            return None;
        }
        let wanted = if admitting.len() <= SCORE_ALL_NODES_MAX {
            admitting.len()
        } else {
            self.options.candidates.max(1)
        };
        let start = (self.rng.next_u64() % admitting.len() as u64) as usize;
        // Ties go to the node that ranks first for the service: among the
        // nodes that run none of it, that is its standby, which every node
        // names alike and which pulls the service's image ahead
        // (`shoal_sched::standby`).
        let key = crate::standby_key(app, &service.name);
        let rank = |at: u32| shoal_types::rendezvous_rank(&key, &self.nodes[at as usize].node.name);
        let mut best: Option<(f64, u32)> = None;
        let mut found = 0;
        // The node holding the image is scored whether or not the sample
        // takes it, then the sample.
        let holder = holder.filter(|at| self.refuses(*at, service, request, context).is_none());
        let sample = (0..admitting.len()).map(|step| admitting[(start + step) % admitting.len()]);
        for at in holder
            .into_iter()
            .chain(sample.filter(|at| Some(*at) != holder))
        {
            if Some(at) != holder && self.refuses(at, service, request, context).is_some() {
                continue;
            }
            let mut score = self.score(app, service, request, at, context);
            if Some(at) == holder {
                score += crate::score::IMAGE_HELD_SCORE;
            }
            let better = match best {
                None => true,
                Some((best_score, best_at)) => {
                    score > best_score
                        || (score == best_score && (rank(at), best_at) > (rank(best_at), at))
                }
            };
            if better {
                best = Some((score, at));
            }
            found += 1;
            if found >= wanted {
                break;
            }
        }
        best.map(|(_, at)| at)
    }
}

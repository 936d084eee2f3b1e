//! Scoring: how well a node with room suits one more task of a service
//! (strategy, affinities, spread, replicas already there, soft taints).

use shoal_state::fit::{self, Request};
use shoal_types::placement::AFFINITY_WEIGHT_MAX;
use shoal_types::{ServiceSpec, Strategy, TaintEffect};

use crate::spread::SpreadContext;
use crate::Scheduler;

// The weights below are points of one score, measured against the
// strategy's range: what matters is how they compare.

/// Points the strategy gives at most: to a node the task would fill for
/// bin-packing, to an empty one for spread. The unit of the others.
const STRATEGY_SCORE_MAX: f64 = 10.0;

/// Points an affinity of the highest weight (`AFFINITY_WEIGHT_MAX`) gives,
/// or takes when negative; lower weights give their share. As much as the
/// strategy's whole range, so that a strong preference outweighs fullness.
const AFFINITY_SCORE_MAX: f64 = 10.0;

/// Points taken per replica of the same service already on the node (for
/// `spread` and for tasks that request nothing): half the strategy's range,
/// so that a node holding one replica counts as if half full.
const SAME_SERVICE_PENALTY_PER_REPLICA: f64 = 5.0;

/// Points taken per task a node's label value holds above an even share of
/// the service's tasks: twice the strategy's range, so that evenness over a
/// `spread` label wins over how full the nodes are.
pub(crate) const SPREAD_EXCESS_PENALTY_PER_TASK: f64 = 20.0;

/// Points taken per task a node's label value holds at all, even below its
/// even share: leans towards the emptier values before any is above it.
pub(crate) const SPREAD_PENALTY_PER_TASK: f64 = 2.0;

/// Points given to the node that holds the service's image ahead of need
/// (its standby): the strategy's whole range, so that a replica lost with
/// its node starts where no pull is needed (and none can fail while the
/// registry is away) unless affinities, spread or soft taints say
/// otherwise, not for being a little fuller than another node.
pub(crate) const IMAGE_HELD_SCORE: f64 = 10.0;

/// Points taken from a node with a `PreferNoSchedule` taint the service
/// does not tolerate: five times the strategy's range, so that such a node
/// is chosen only when every other one scores far worse.
const SOFT_TAINT_PENALTY: f64 = 50.0;

impl<'a> Scheduler<'a> {
    pub(crate) fn score(
        &self,
        app: &'a str,
        service: &'a ServiceSpec,
        request: Request,
        at: u32,
        context: &SpreadContext<'a>,
    ) -> f64 {
        let info = &self.nodes[at as usize];
        let node = info.node;
        let mut score = 0.0;
        let has_request = request != Request::default();
        if has_request {
            let used = self.used(at);
            let share = |used: u64, asked: u64, total: u64| {
                if total == 0 {
                    1.0
                } else {
                    (used.saturating_add(asked)) as f64 / total as f64
                }
            };
            let fullness = (share(
                used.cpu_millis,
                request.cpu_millis,
                info.allocatable.cpu_millis,
            ) + share(
                used.memory_bytes,
                request.memory_bytes,
                info.allocatable.memory_bytes,
            )) / 2.0;
            score += match service.placement.strategy {
                Strategy::Binpack => STRATEGY_SCORE_MAX * fullness,
                Strategy::Spread => STRATEGY_SCORE_MAX * (1.0 - fullness),
            };
        } else {
            // Tasks that ask for nothing are spread by count.
            score -= f64::from(info.tasks) / (1.0 + f64::from(self.most_tasks));
        }
        // Replicas of one service on one node fail together; bin-packing
        // accepts that (`spread` over `node.name` says otherwise).
        if !has_request || service.placement.strategy == Strategy::Spread {
            let same = self
                .per_node
                .get(&self.sid(app, service))
                .and_then(|counts| counts.get(&at))
                .copied()
                .unwrap_or(0);
            score -= SAME_SERVICE_PENALTY_PER_REPLICA * f64::from(same);
        }
        for affinity in &service.placement.affinities {
            if affinity.expr.matches(node) {
                score += AFFINITY_SCORE_MAX * f64::from(affinity.weight)
                    / f64::from(AFFINITY_WEIGHT_MAX);
            }
        }
        score -= context.spread_penalty(at);
        if info.soft_tainted
            && fit::untolerated(node, service, |effect| {
                effect == TaintEffect::PreferNoSchedule
            })
            .is_some()
        {
            score -= SOFT_TAINT_PENALTY;
        }
        score
    }
}

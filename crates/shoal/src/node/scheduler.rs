//! The scheduler loop: whenever the state changes, compute a plan from it
//! and propose the plan. The state machine re-checks the plan on apply.
//! What is proposed is the pure [`plan`]; the loop runs over any
//! [`ReplicatedLog`], so its tests drive it over a `MemoryLog`.

use std::time::Duration;

use shoal_cluster::log::ReplicatedLog;
use shoal_state::{Command, Outcome, Plan, State};

use crate::clock::now_ms;

/// Leadership changes do not touch the state: the loop looks again this
/// often.
const IDLE_INTERVAL: Duration = Duration::from_millis(500);

/// Schedules while this node leads `log`'s cluster, for good.
pub async fn run<L: ReplicatedLog>(log: L) {
    let mut changes = log.subscribe();
    loop {
        changes.borrow_and_update();
        // Only the leader schedules: one writer of placements.
        if !log.leads() {
            let _ = tokio::time::timeout(IDLE_INTERVAL, changes.changed()).await;
            continue;
        }
        let plan = plan(&log.read(), log.cluster_log_version(), now_ms());
        if let Some(plan) = plan {
            let progressed = match log.propose(now_ms(), Command::ApplyPlan { plan }).await {
                Ok(Outcome::PlanApplied {
                    placed,
                    stopped,
                    removed,
                    rejected,
                }) => {
                    if !rejected.is_empty() {
                        tracing::debug!(?rejected, "parts of a plan no longer fit");
                    }
                    !placed.is_empty() || stopped > 0 || removed > 0
                }
                Ok(_) => false,
                Err(error) => {
                    tracing::warn!(%error, "proposing a plan");
                    false
                }
            };
            // A plan that changed something may enable the next one: plan
            // again at once; one that changed nothing waits for news.
            if progressed {
                continue;
            }
        }
        let _ = tokio::time::timeout(IDLE_INTERVAL, changes.changed()).await;
    }
}

/// What the leader proposes for `state` at `now_ms` in a cluster whose
/// oldest node reads log `format`: the scheduler's plan, its reasons in words where
/// that node reads no data (format 2 for reasons, 6 for a reason naming a
/// node's allowance); `None` when it would change nothing.
pub fn plan(state: &State, format: u32, now_ms: u64) -> Option<Plan> {
    // The state rolls once it holds a format-13 entry, but the cluster's
    // format as this node knows it may be lower for a while (a new
    // leader): the scheduler replaces at once meanwhile, as 0.12 does.
    let mut plan = shoal_sched::reconcile_at(state, now_ms, format);
    if format < shoal_state::format::REASONS {
        plan = plan.worded();
    } else if format < shoal_state::format::ALLOWS {
        plan.unplaced = plan
            .unplaced
            .iter()
            .map(|unplaced| {
                if unplaced.names_an_allowance() {
                    unplaced.worded()
                } else {
                    unplaced.clone()
                }
            })
            .collect();
    }
    (!plan.changes_nothing(state)).then_some(plan)
}

#[cfg(test)]
mod tests {
    use shoal_cluster::log::MemoryLog;
    use shoal_cluster::raft::ProposeError;
    use shoal_state::format::{ALLOWS, REASONS};
    use shoal_state::LOG_VERSION;
    use shoal_types::{Node, TaskState};

    use super::*;

    /// A state of one node `n1` and the apps of `specs`.
    fn state(specs: &[&str]) -> MemoryLog {
        let log = MemoryLog::new("n1", State::default());
        let mut node = Node::sample("n1", "n1:7950");
        node.allows = shoal_types::Allows::default();
        log.apply(Command::RegisterNode { node });
        for spec in specs {
            let spec = shoal_types::parse_app(spec.as_bytes()).expect("spec");
            log.apply(Command::PutApp { spec });
        }
        log
    }

    const WEB: &str = "name: web\nservices: [{name: hello, image: busybox, replicas: 2}]\n";
    /// Needs what `n1` does not allow, and more cpus than it has.
    const UNPLACEABLE: &str = "name: big\nservices:\n  - name: root\n    image: busybox\n    security: {privileged: true}\n  - name: huge\n    image: busybox\n    resources: {cpu: 1000}\n";

    #[test]
    fn the_plan_is_worded_for_the_oldest_node_and_none_when_nothing_changes() {
        let log = state(&[WEB, UNPLACEABLE]);
        let newest = plan(&log.read(), LOG_VERSION, 0).expect("a plan");
        assert_eq!(newest.place.len(), 2, "{newest:?}");
        assert_eq!(newest.unplaced.len(), 2, "{:?}", newest.unplaced);
        let allowance = |plan: &Plan| {
            plan.unplaced
                .iter()
                .find(|unplaced| unplaced.service == "root")
                .cloned()
                .expect("root unplaced")
        };
        let other = |plan: &Plan| {
            plan.unplaced
                .iter()
                .find(|unplaced| unplaced.service == "huge")
                .cloned()
                .expect("huge unplaced")
        };
        assert!(allowance(&newest).names_an_allowance());
        assert!(allowance(&newest).why.is_some() && other(&newest).why.is_some());
        // A node of format 2 to 5 reads reasons as data, but not one that
        // names an allowance.
        let middle = plan(&log.read(), ALLOWS - 1, 0).expect("a plan");
        assert!(allowance(&middle).why.is_none() && !allowance(&middle).reason.is_empty());
        assert!(other(&middle).why.is_some());
        // A node of format 1 reads words only.
        let oldest = plan(&log.read(), REASONS - 1, 0).expect("a plan");
        assert!(oldest
            .unplaced
            .iter()
            .all(|unplaced| unplaced.why.is_none() && !unplaced.reason.is_empty()));
        // Applied, the same plan changes nothing more.
        log.apply(Command::ApplyPlan { plan: newest });
        assert_eq!(plan(&log.read(), LOG_VERSION, 0), None);
    }

    #[tokio::test]
    async fn the_loop_places_what_the_state_asks_and_waits_out_a_cluster_without_a_leader() {
        let log = state(&[]);
        // Proposals refused, as without a leader: nothing is placed, and
        // the loop keeps going.
        log.refuse(Some(ProposeError::NoLeader("none elected yet".into())));
        let running = tokio::spawn(run(log.clone()));
        let spec = shoal_types::parse_app(WEB.as_bytes()).expect("spec");
        log.apply(Command::PutApp { spec });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(log.read().tasks.is_empty());
        log.refuse(None);
        let started = std::time::Instant::now();
        loop {
            let placed = log
                .read()
                .tasks
                .values()
                .filter(|task| task.node == "n1" && task.status.state == TaskState::Pending)
                .count();
            if placed == 2 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the loop placed {placed} of 2 tasks"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Nothing left to do: no plan is proposed again and again.
        let proposed = log.commands().len();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(log.commands().len(), proposed, "{:?}", log.commands());
        running.abort();
    }
}

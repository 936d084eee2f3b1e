//! The scheduler loop: whenever the state changes, compute a plan from it
//! and propose the plan. The state machine re-checks the plan on apply.

use std::sync::Arc;
use std::time::Duration;

use shoal_state::{Command, Outcome};

use super::Shared;
use crate::clock::now_ms;

pub async fn run<R: Send + Sync + 'static>(shared: Arc<Shared<R>>) {
    // Leadership changes do not touch the state: look again this often.
    const IDLE_INTERVAL: Duration = Duration::from_millis(500);
    let mut changes = shared.raft.subscribe();
    loop {
        changes.borrow_and_update();
        // Only the leader schedules: one writer of placements.
        if !shared.is_leader() {
            let _ = tokio::time::timeout(IDLE_INTERVAL, changes.changed()).await;
            continue;
        }
        let plan = {
            let state = shared.raft.read();
            let mut plan = shoal_sched::reconcile(&state);
            // Reasons as data need format 2; older nodes read words.
            let format = shared.raft.cluster_log_version();
            if format < shoal_state::format::REASONS {
                plan = plan.worded();
            } else if format < shoal_state::format::ALLOWS {
                // A reason naming a node's allowance needs format 6; older
                // nodes read it in words.
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
            (!plan.changes_nothing(&state)).then_some(plan)
        };
        if let Some(plan) = plan {
            let progressed = match shared
                .raft
                .propose(now_ms(), Command::ApplyPlan { plan })
                .await
            {
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

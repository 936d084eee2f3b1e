//! The summary of a chaos run: what it did, counted, printed as one line
//! that is the same for the same seed.

use std::fmt;

/// What a run did, counted; printed as one line that is the same for the
/// same seed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub seed: u64,
    pub nodes: usize,
    pub steps: u32,
    pub apps_created: u64,
    pub app_updates: u64,
    pub apps_removed: u64,
    pub kills: u64,
    pub revivals: u64,
    pub joins: u64,
    pub resizes: u64,
    pub forgets: u64,
    pub taints: u64,
    pub drains: u64,
    pub plans: u64,
    pub placements: u64,
    pub stops: u64,
    pub removals: u64,
    pub reports: u64,
    /// Reports the simulated nodes sent that the state had to drop (wrong
    /// node, status moving backwards), all dropped.
    pub bogus_reports: u64,
    pub preemptions_seen: u64,
    /// At the end, after healing.
    pub apps: usize,
    pub tasks: usize,
    pub unplaced: u64,
    pub state_hash: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chaos seed={} nodes={} steps={} apps={} tasks={} unplaced={} apps_created={} app_updates={} apps_removed={} \
             plans={} placements={} stops={} removals={} reports={} bogus_reports={} kills={} revivals={} joins={} \
             resizes={} forgets={} taints={} drains={} state_hash={:016x}",
            self.seed,
            self.nodes,
            self.steps,
            self.apps,
            self.tasks,
            self.unplaced,
            self.apps_created,
            self.app_updates,
            self.apps_removed,
            self.plans,
            self.placements,
            self.stops,
            self.removals,
            self.reports,
            self.bogus_reports,
            self.kills,
            self.revivals,
            self.joins,
            self.resizes,
            self.forgets,
            self.taints,
            self.drains,
            self.state_hash
        )
    }
}

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
    /// Nodes the leader forgot (a `Forget` duty), and members gossip
    /// forgot before.
    pub forgets: u64,
    pub gossip_forgets: u64,
    pub taints: u64,
    pub drains: u64,
    /// False suspicions, agents restarted (re-adopting their containers),
    /// voter count settings changed.
    pub suspicions: u64,
    pub agent_restarts: u64,
    pub settings: u64,
    /// The leader's duties carried out: learners admitted, node statuses
    /// set, voter changes; and leaders elected after one went down.
    pub learners: u64,
    pub verdicts: u64,
    pub voter_changes: u64,
    pub elections: u64,
    pub plans: u64,
    pub placements: u64,
    pub stops: u64,
    pub removals: u64,
    /// Containers the agents asked to run and to destroy, starts and stops
    /// the simulated runtime failed, containers that exited by themselves.
    pub runs: u64,
    pub destroys: u64,
    pub start_failures: u64,
    pub stop_failures: u64,
    pub exits: u64,
    /// Agents' reports the state accepted, and those lost on the way (the
    /// agent reports them again).
    pub reports: u64,
    pub lost_reports: u64,
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
             plans={} placements={} stops={} removals={} runs={} destroys={} start_failures={} stop_failures={} \
             exits={} reports={} lost_reports={} bogus_reports={} kills={} suspicions={} revivals={} joins={} \
             resizes={} agent_restarts={} forgets={} gossip_forgets={} taints={} drains={} settings={} \
             learners={} verdicts={} voter_changes={} elections={} state_hash={:016x}",
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
            self.runs,
            self.destroys,
            self.start_failures,
            self.stop_failures,
            self.exits,
            self.reports,
            self.lost_reports,
            self.bogus_reports,
            self.kills,
            self.suspicions,
            self.revivals,
            self.joins,
            self.resizes,
            self.agent_restarts,
            self.forgets,
            self.gossip_forgets,
            self.taints,
            self.drains,
            self.settings,
            self.learners,
            self.verdicts,
            self.voter_changes,
            self.elections,
            self.state_hash
        )
    }
}

//! Node events: nodes joining, going down or leaving, suspected, coming
//! back, resized, forgotten by gossip, tainted and untainted, drained and
//! undrained, and the voter count changed. Whether a node is down is the
//! simulator's truth; the cluster learns it only through gossip's records
//! and the leader's duties (`leader`).

use std::collections::BTreeMap;

use shoal_sched::duties::Liveness;
use shoal_state::Command;
use shoal_types::NodeStatus;

use super::agents::SimNode;
use super::{Chaos, INFRA_TAINT};
use crate::cluster::{self, NODE_SIZES};

/// Taints the chaos puts on and takes off nodes.
const CHAOS_TAINTS: [&str; 3] = [
    "chaos=on:NoSchedule",
    "evict=now:NoExecute",
    "old:PreferNoSchedule",
];

impl Chaos {
    fn pick_node(&mut self, wanted: impl Fn(&shoal_types::Node) -> bool) -> Option<String> {
        let names: Vec<&String> = self
            .cluster
            .state
            .nodes
            .values()
            .filter(|node| wanted(node))
            .map(|node| &node.name)
            .collect();
        self.rng.pick(&names).map(|name| (*name).clone())
    }

    pub(super) fn join(&mut self) -> Result<(), String> {
        if self.cluster.state.nodes.len() >= self.nodes_max {
            return self.revive_node();
        }
        self.next_node += 1;
        let name = cluster::node_name(self.next_node);
        let (cpus, memory) = NODE_SIZES[self.rng.below(NODE_SIZES.len() as u64) as usize];
        let mut labels = BTreeMap::new();
        labels.insert(
            "zone".to_string(),
            cluster::zone_name(self.rng.below(self.zones)),
        );
        if self.rng.chance(300) {
            labels.insert("disk".to_string(), "ssd".to_string());
        }
        let mut facts = cluster::node(&name, cpus, memory, labels);
        facts.started_at_ms = self.cluster.now_ms;
        self.apply(Command::RegisterNode {
            node: facts.clone(),
        })?;
        self.nodes
            .insert(name.clone(), SimNode::new(facts, self.cluster.now_ms));
        if self.rng.chance(50) {
            self.apply(Command::TaintNode {
                name,
                taint: taint(INFRA_TAINT)?,
            })?;
        }
        self.summary.joins += 1;
        Ok(())
    }

    /// A node that is up, picked at random among those `wanted`.
    fn pick_up(&mut self, wanted: impl Fn(&Chaos, &SimNode) -> bool) -> Option<String> {
        let names: Vec<&String> = self
            .nodes
            .values()
            .filter(|node| node.up && wanted(self, node))
            .map(|node| &node.facts.name)
            .collect();
        self.rng.pick(&names).map(|name| (*name).clone())
    }

    /// A node goes down (its machine stops or it is cut off), or now and
    /// then leaves on purpose. Gossip suspects it first and declares it
    /// dead later; its containers stay as they are. Never a majority of the
    /// voters: the simulated cluster keeps its quorum.
    pub(super) fn kill_node(&mut self) -> Result<(), String> {
        let Some(name) =
            self.pick_up(|chaos, node| chaos.keeps_quorum_without(node.member.raft_id))
        else {
            return Ok(());
        };
        let left = self.rng.chance(200);
        let now_ms = self.cluster.now_ms;
        if let Some(node) = self.nodes.get_mut(&name) {
            node.up = false;
            node.gossip(
                if left {
                    Liveness::Left
                } else {
                    Liveness::Suspect
                },
                now_ms,
            );
        }
        self.summary.kills += 1;
        Ok(())
    }

    /// Gossip suspects a node that is up; it refutes the suspicion at the
    /// next round of gossip. Suspicion alone must move no work.
    pub(super) fn suspect_node(&mut self) -> Result<(), String> {
        let Some(name) = self.pick_up(|_, node| node.member.status == Liveness::Alive) else {
            return Ok(());
        };
        let now_ms = self.cluster.now_ms;
        if let Some(node) = self.nodes.get_mut(&name) {
            node.gossip(Liveness::Suspect, now_ms);
        }
        self.summary.suspicions += 1;
        Ok(())
    }

    /// A node that is down comes back with its containers, its agent
    /// carrying on or restarted; one the cluster forgot registers again.
    pub(super) fn revive_node(&mut self) -> Result<(), String> {
        let names: Vec<&String> = self
            .nodes
            .values()
            .filter(|node| !node.up)
            .map(|node| &node.facts.name)
            .collect();
        let Some(name) = self.rng.pick(&names).map(|name| (*name).clone()) else {
            return Ok(());
        };
        let restarted = SimNode::comes_back_restarted(&mut self.rng);
        self.bring_back(&name, restarted)?;
        self.summary.revivals += 1;
        Ok(())
    }

    /// Brings a node that is down back up, alive in gossip.
    pub(super) fn bring_back(&mut self, name: &str, restarted: bool) -> Result<(), String> {
        let now_ms = self.cluster.now_ms;
        let forgotten = !self.cluster.state.nodes.contains_key(name);
        let Some(node) = self.nodes.get_mut(name) else {
            return Ok(());
        };
        node.up = true;
        node.gossip(Liveness::Alive, now_ms);
        if restarted {
            node.restart_agent(&self.cluster.state.tasks, now_ms, &mut self.rng);
            self.summary.agent_restarts += 1;
        }
        if forgotten {
            node.facts.started_at_ms = now_ms;
            let facts = node.facts.clone();
            self.apply(Command::RegisterNode { node: facts })?;
        }
        Ok(())
    }

    /// The node restarts with another size, possibly smaller than what its
    /// tasks request (the scheduler must shed work from it), and registers
    /// again; its agent re-adopts its containers.
    pub(super) fn resize_node(&mut self) -> Result<(), String> {
        let Some(name) =
            self.pick_up(|chaos, node| chaos.cluster.state.nodes.contains_key(&node.facts.name))
        else {
            return Ok(());
        };
        let (cpus, memory) = NODE_SIZES[self.rng.below(NODE_SIZES.len() as u64) as usize];
        let now_ms = self.cluster.now_ms;
        let Some(node) = self.nodes.get_mut(&name) else {
            return Ok(());
        };
        let mut facts = cluster::node(&name, cpus, memory, node.facts.labels.clone());
        facts.started_at_ms = now_ms;
        node.facts = facts.clone();
        node.restart_agent(&self.cluster.state.tasks, now_ms, &mut self.rng);
        self.apply(Command::RegisterNode { node: facts })?;
        self.summary.resizes += 1;
        self.summary.agent_restarts += 1;
        Ok(())
    }

    /// Gossip forgets a member that is down and that the leader has
    /// declared dead or gone (as foca does after `remove_down_after`); the
    /// leader then forgets the node. It never comes back. Never a voter:
    /// gossip forgets a member minutes after it went down, long after the
    /// leader replaced it as a voter (`voter_dead_grace_ms`), and
    /// `choose_voters` never replaces a voter that gossip does not know.
    pub(super) fn forget_node(&mut self) -> Result<(), String> {
        let names: Vec<&String> = self
            .nodes
            .values()
            .filter(|node| {
                !node.up
                    && !self.consensus.voters.contains(&node.member.raft_id)
                    && self
                        .cluster
                        .state
                        .nodes
                        .get(&node.facts.name)
                        .is_none_or(|known| known.status != NodeStatus::Alive)
            })
            .map(|node| &node.facts.name)
            .collect();
        let Some(name) = self.rng.pick(&names).map(|name| (*name).clone()) else {
            return Ok(());
        };
        self.nodes.remove(&name);
        self.summary.gossip_forgets += 1;
        Ok(())
    }

    /// The operator changes how many voters the cluster may have, also
    /// below the voters it has (seed 1 with 60 nodes and 150 steps found,
    /// at step 107, that the voters did not always shrink to it).
    pub(super) fn set_voters_max(&mut self) -> Result<(), String> {
        let voters_max = [1, 3, 5, 7][self.rng.weighted(&[1, 3, 4, 2])];
        self.apply(Command::SetSettings {
            voters_max: Some(voters_max),
            cluster_cidr: None,
            node_prefix_len: None,
            dns_zone: None,
        })?;
        self.summary.settings += 1;
        Ok(())
    }

    pub(super) fn taint_node(&mut self) -> Result<(), String> {
        let Some(name) = self.pick_node(|_| true) else {
            return Ok(());
        };
        let text = CHAOS_TAINTS[self.rng.below(CHAOS_TAINTS.len() as u64) as usize];
        self.apply(Command::TaintNode {
            name,
            taint: taint(text)?,
        })?;
        self.summary.taints += 1;
        Ok(())
    }

    pub(super) fn untaint_node(&mut self) -> Result<(), String> {
        let Some(name) = self.pick_node(|node| !node.taints.is_empty()) else {
            return Ok(());
        };
        let Some(key) = self
            .cluster
            .state
            .nodes
            .get(&name)
            .and_then(|node| node.taints.first())
            .map(|taint| taint.key.clone())
        else {
            return Ok(());
        };
        self.apply(Command::UntaintNode {
            name,
            key,
            effect: None,
        })?;
        Ok(())
    }

    pub(super) fn drain_node(&mut self, drain: bool) -> Result<(), String> {
        let Some(name) = self.pick_node(|node| node.drain != drain) else {
            return Ok(());
        };
        self.apply(Command::SetNodeDrain { name, drain })?;
        if drain {
            self.summary.drains += 1;
        }
        Ok(())
    }
}

fn taint(text: &str) -> Result<shoal_types::Taint, String> {
    text.parse()
}

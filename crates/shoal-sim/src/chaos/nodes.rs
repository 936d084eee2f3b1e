//! Node events: nodes joining, dying or leaving, coming back, resized,
//! forgotten, tainted and untainted, drained and undrained.

use std::collections::BTreeMap;

use shoal_state::Command;
use shoal_types::NodeStatus;

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
        self.apply(Command::RegisterNode {
            node: cluster::node(&name, cpus, memory, labels),
        })?;
        if self.rng.chance(50) {
            self.apply(Command::TaintNode {
                name,
                taint: taint(INFRA_TAINT)?,
            })?;
        }
        self.summary.joins += 1;
        Ok(())
    }

    pub(super) fn kill_node(&mut self) -> Result<(), String> {
        let Some(name) = self.pick_node(|node| node.status == NodeStatus::Alive) else {
            return Ok(());
        };
        let status = if self.rng.chance(200) {
            NodeStatus::Left
        } else {
            NodeStatus::Dead
        };
        self.apply(Command::SetNodeStatus { name, status })?;
        self.summary.kills += 1;
        Ok(())
    }

    pub(super) fn revive_node(&mut self) -> Result<(), String> {
        let Some(name) = self.pick_node(|node| node.status != NodeStatus::Alive) else {
            return Ok(());
        };
        self.apply(Command::SetNodeStatus {
            name,
            status: NodeStatus::Alive,
        })?;
        self.summary.revivals += 1;
        Ok(())
    }

    /// The node registers again with another size, possibly smaller than
    /// what its tasks request: the scheduler must shed work from it.
    pub(super) fn resize_node(&mut self) -> Result<(), String> {
        let Some(name) = self.pick_node(|_| true) else {
            return Ok(());
        };
        let Some(known) = self.cluster.state.nodes.get(&name) else {
            return Ok(());
        };
        let (cpus, memory) = NODE_SIZES[self.rng.below(NODE_SIZES.len() as u64) as usize];
        let mut node = cluster::node(&name, cpus, memory, known.labels.clone());
        node.status = known.status;
        node.started_at_ms = self.cluster.now_ms;
        self.apply(Command::RegisterNode { node })?;
        self.summary.resizes += 1;
        Ok(())
    }

    pub(super) fn forget_node(&mut self) -> Result<(), String> {
        let Some(name) = self.pick_node(|node| node.status != NodeStatus::Alive) else {
            return Ok(());
        };
        self.apply(Command::ForgetNode { name })?;
        self.summary.forgets += 1;
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

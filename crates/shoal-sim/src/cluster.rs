//! A cluster in one process: the replicated state with its log index and a
//! virtual clock, and the makings of simulated nodes.

use std::collections::BTreeMap;

use shoal_state::{Command, Meta, Outcome, State};
use shoal_types::{Node, NodeStatus};

use crate::SimError;

const GIB: u64 = 1 << 30;
/// The name the simulated leader stamps on the entries it appends.
const LEADER: &str = "leader";

/// The state machine as one replica applies its log, with the proposer's
/// clock replaced by a virtual one.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub state: State,
    /// Index of the last entry applied.
    pub index: u64,
    pub now_ms: u64,
}

impl Cluster {
    /// Applies one command as the next log entry, stamped with the virtual clock.
    pub fn apply(&mut self, command: Command) -> Result<Outcome, SimError> {
        self.index += 1;
        // Decoded already: the simulator skips the JSON a log would carry.
        let meta = Meta::trusted(self.now_ms, LEADER, &command);
        self.state
            .apply_command(self.index, meta, &command)
            .map_err(|error| SimError::Command {
                command: describe(&command),
                error,
            })
    }
}

/// A command named for an error message, without its (possibly huge) body.
pub fn describe(command: &Command) -> String {
    match command {
        Command::RegisterNode { node } => format!("register node {}", node.name),
        Command::PutApp { spec } | Command::PutAppPinned { spec, .. } => {
            format!("put app {}", spec.name)
        }
        Command::RemoveApp { name } => format!("remove app {name}"),
        Command::SetRegistry { registry } => format!("set registry {}", registry.host),
        Command::RemoveRegistry { host } => format!("remove registry {host}"),
        Command::PutSecret { secret } => format!("put secret {}", secret.name),
        Command::RemoveSecret { name } => format!("remove secret {name}"),
        Command::PutConfig { config } => format!("put config {}", config.name),
        Command::RemoveConfig { name } => format!("remove config {name}"),
        Command::ApplyPlan { plan } => format!(
            "apply plan ({} placements, {} stops, {} removals)",
            plan.place.len(),
            plan.stop.len(),
            plan.remove.len()
        ),
        Command::SetNodeStatus { name, status } => {
            format!("set node {name} {}", status.as_str())
        }
        Command::SetSettings { .. } => "set settings".into(),
        Command::ForgetNode { name } => format!("forget node {name}"),
        Command::TaintNode { name, taint } => format!("taint node {name} {taint}"),
        Command::UntaintNode { name, key, .. } => format!("untaint node {name} {key}"),
        Command::SetNodeDrain { name, drain } => format!("drain node {name} {drain}"),
        Command::ReportTasks { node, statuses } => {
            format!("report {} tasks from {node}", statuses.len())
        }
        Command::RemoveNode { name } => format!("remove node {name}"),
        Command::AdmitNode { node, .. } => format!("admit node {node}"),
        Command::SetFactsKey { node, .. } => format!("set the facts key of node {node}"),
        Command::SetCa { .. }
        | Command::CreateJoinToken { .. }
        | Command::RevokeJoinToken { .. }
        | Command::CreateApiToken { .. }
        | Command::RevokeApiToken { .. }
        | Command::SetGossipKeys { .. } => "change security".into(),
    }
}

/// A simulated node as it registers: alive, with the given size and labels.
pub fn node(name: &str, cpus: u32, memory_bytes: u64, labels: BTreeMap<String, String>) -> Node {
    Node {
        name: name.to_string(),
        addr: format!("{name}:7950"),
        os: "linux 6.1.0".into(),
        arch: "x86_64".into(),
        cpus,
        memory_total_bytes: memory_bytes,
        cpu_allocatable_millis: u64::from(cpus) * 1000,
        memory_allocatable_bytes: memory_bytes,
        labels,
        started_at_ms: 0,
        status: NodeStatus::Alive,
        taints: Vec::new(),
        drain: false,
        // The state machine assigns it on first registration.
        subnet: None,
        allows: Default::default(),
    }
}

/// Node sizes of a mixed fleet, small to large: (cpus, memory).
pub const NODE_SIZES: [(u32, u64); 6] = [
    (2, 4 * GIB),
    (4, 8 * GIB),
    (4, 16 * GIB),
    (8, 32 * GIB),
    (16, 32 * GIB),
    (16, 64 * GIB),
];

/// Name of the `number`th simulated node; zero-padded so that the state's
/// name order is the join order.
pub fn node_name(number: usize) -> String {
    format!("n{number:06}")
}

pub fn zone_name(zone: u64) -> String {
    format!("z{zone}")
}

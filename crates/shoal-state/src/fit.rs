//! Whether a task of a service may run on a node: the rules the scheduler
//! places by and the state machine checks every placement against again.
//! One definition for both, so a plan the scheduler thinks valid is only
//! refused when the state moved on, never because the two disagree.

use std::fmt;

use shoal_types::{
    Allowance, Constraint, DesiredState, Labels, Node, Protocol, ServiceSpec, Taint, TaintEffect,
    Task,
};

/// What a task of a service asks of a node, in millicores and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Request {
    pub fn of(spec: &ServiceSpec) -> Request {
        Request {
            cpu_millis: spec.resources.cpu.map_or(0, |cpu| cpu.0),
            memory_bytes: spec.resources.memory.map_or(0, |memory| memory.0),
        }
    }

    pub fn add(&mut self, other: Request) {
        self.cpu_millis = self.cpu_millis.saturating_add(other.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
    }

    pub fn subtract(&mut self, other: Request) {
        self.cpu_millis = self.cpu_millis.saturating_sub(other.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_sub(other.memory_bytes);
    }
}

/// Why a node cannot take a task.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reject {
    NotAlive,
    Draining,
    Constraint(Constraint),
    Tainted(Taint),
    Cpu {
        request_millis: u64,
    },
    Memory {
        request_bytes: u64,
    },
    SpreadLimit {
        over: String,
        max_per: u32,
    },
    AlreadyRunsOne,
    HostPort {
        port: u16,
        protocol: Protocol,
    },
    /// The node's operator does not allow what the task needs (format 6).
    NotAllowed(Allowance),
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::NotAlive => write!(f, "not alive"),
            Reject::Draining => write!(f, "draining"),
            Reject::Constraint(constraint) => write!(f, "not `{constraint}`"),
            Reject::Tainted(taint) => write!(f, "tainted `{taint}`"),
            Reject::Cpu { request_millis } => {
                write!(f, "less than {} cpu free", format_cpu(*request_millis))
            }
            Reject::Memory { request_bytes } => {
                write!(f, "less than {} memory free", format_bytes(*request_bytes))
            }
            Reject::SpreadLimit { over, max_per } => {
                write!(f, "at the limit of {max_per} per `{over}`")
            }
            Reject::AlreadyRunsOne => write!(f, "already running one (global)"),
            Reject::NotAllowed(allowance) => write!(
                f,
                "not allowing {} (its agent lacks {})",
                allowance.what(),
                allowance.flag()
            ),
            Reject::HostPort { port, protocol } => {
                write!(
                    f,
                    "publishing host port {port}/{} already",
                    protocol.as_str()
                )
            }
        }
    }
}

/// The checks that depend only on the node and the spec, not on what else
/// runs there: liveness, drain, constraints, taints (NoSchedule and
/// NoExecute; PreferNoSchedule is a preference), and what the node's
/// operator allows.
pub fn admits(node: &Node, spec: &ServiceSpec) -> Result<(), Reject> {
    if node.status != shoal_types::NodeStatus::Alive {
        return Err(Reject::NotAlive);
    }
    if node.drain {
        return Err(Reject::Draining);
    }
    for constraint in &spec.placement.constraints {
        if !constraint.matches(node) {
            return Err(Reject::Constraint(constraint.clone()));
        }
    }
    if let Some(taint) = untolerated(node, spec, |effect| effect != TaintEffect::PreferNoSchedule) {
        return Err(Reject::Tainted(taint.clone()));
    }
    if let Some(allowance) = node.allows.lacks(spec.needs()) {
        return Err(Reject::NotAllowed(allowance));
    }
    Ok(())
}

/// The first taint of `node` with an effect `considered` picks that the
/// spec does not tolerate.
pub fn untolerated<'a>(
    node: &'a Node,
    spec: &ServiceSpec,
    considered: impl Fn(TaintEffect) -> bool,
) -> Option<&'a Taint> {
    node.taints.iter().find(|taint| {
        considered(taint.effect)
            && !spec
                .tolerations
                .iter()
                .any(|toleration| toleration.tolerates(taint))
    })
}

/// Whether `request` fits in what `node` has left after `used`.
pub fn fits(node: &Node, used: Request, request: Request) -> Result<(), Reject> {
    fits_within(allocatable(node), used, request)
}

/// What a node offers tasks in all.
pub fn allocatable(node: &Node) -> Request {
    Request {
        cpu_millis: node.cpu_allocatable_millis,
        memory_bytes: node.memory_allocatable_bytes,
    }
}

/// Whether `request` fits in `allocatable` after `used`.
pub fn fits_within(allocatable: Request, used: Request, request: Request) -> Result<(), Reject> {
    if used.cpu_millis.saturating_add(request.cpu_millis) > allocatable.cpu_millis
        && request.cpu_millis > 0
    {
        return Err(Reject::Cpu {
            request_millis: request.cpu_millis,
        });
    }
    if used.memory_bytes.saturating_add(request.memory_bytes) > allocatable.memory_bytes
        && request.memory_bytes > 0
    {
        return Err(Reject::Memory {
            request_bytes: request.memory_bytes,
        });
    }
    Ok(())
}

/// A host port and its protocol, as a task publishes it on its node.
pub type HostPort = (u16, Protocol);

/// The host ports a task of the service publishes.
pub fn host_ports(spec: &ServiceSpec) -> impl Iterator<Item = HostPort> + '_ {
    spec.ports
        .iter()
        .filter_map(|port| Some((port.host_port?, port.protocol)))
}

/// The first host port of the service that a node already publishes.
pub fn host_port_taken(taken: &[HostPort], spec: &ServiceSpec) -> Result<(), Reject> {
    if taken.is_empty() {
        return Ok(());
    }
    match host_ports(spec).find(|port| taken.contains(port)) {
        Some((port, protocol)) => Err(Reject::HostPort { port, protocol }),
        None => Ok(()),
    }
}

/// Forgets one task's host ports from a node's list.
pub fn release_host_ports(taken: &mut Vec<HostPort>, spec: &ServiceSpec) {
    for port in host_ports(spec) {
        if let Some(at) = taken.iter().position(|p| *p == port) {
            taken.swap_remove(at);
        }
    }
}

/// The requests of the tasks the cluster wants running, per node.
pub fn usage_by_node(tasks: &[&Task]) -> crate::FastMap<String, Request> {
    let mut usage: crate::FastMap<String, Request> = crate::FastMap::default();
    for task in tasks {
        if task.desired == DesiredState::Running {
            usage
                .entry(task.node.clone())
                .or_default()
                .add(Request::of(&task.spec));
        }
    }
    usage
}

/// The value of a spread label on a node; nodes without it share "".
pub fn spread_value<'a>(node: &'a Node, over: &str) -> &'a str {
    node.label(over).unwrap_or("")
}

pub fn format_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            let whole = bytes / size;
            let tenths = (bytes % size) * 10 / size;
            return if tenths == 0 {
                format!("{whole} {unit}B")
            } else {
                format!("{whole}.{tenths} {unit}B")
            };
        }
    }
    format!("{bytes} B")
}

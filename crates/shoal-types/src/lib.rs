//! shoal's domain model: what users declare (apps of services), what the
//! cluster decides (tasks placed on nodes) and what nodes report.
//!
//! Pure: no clock, no I/O. Parsing and validation return errors that name the
//! field path and the fix.

pub mod node;
pub mod placement;
pub mod quantity;
pub mod spec;
pub mod stable;
mod stellar;
pub mod subnet;
pub mod task;

pub use node::{consensus_id, rendezvous_rank, Allowance, Allows, Node, NodeStatus};
pub use placement::{Affinity, Constraint, Labels, Spread, Taint, TaintEffect, Toleration};
pub use quantity::{parse_cpu_millis, parse_memory_bytes};
pub use spec::{
    app_schema, check_dns_label, check_object_name, parse_app, AppSpec, ContainerSpec,
    FailureAction, FieldError, FileKind, FileMode, FileRef, Health, HealthSpec, HttpCheck, Kind,
    Needs, PlacementSpec, Port, PortRef, Prepull, Probe, Protocol, Ratio, RestartAfter,
    RestartPolicy, RestartSpec, Security, ServiceSpec, SpecError, Strategy, TcpCheck, Update,
    UpdateOrder, UpdateSpec, UserSpec, Workload, RATIO_ONE, SPEC_BYTES_MAX,
};
pub use task::{DesiredState, PinSource, PinnedImage, Promise, Task, TaskState, TaskStatus};

//! Container networking for a shoal node.
//!
//! Every node gets a subnet of the cluster CIDR ([`subnet`]); tasks get a
//! network namespace of their own ([`netns`]) that the CNI plugins
//! ([`cni`], configured by [`bridge`]) wire to a per-node bridge; nodes reach
//! each other's subnets through plain host-gateway routes and traffic leaving
//! the cluster is masqueraded ([`routes`]); services find each other through
//! the cluster's DNS zone ([`dns`]).
//!
//! Only [`subnet`] and the planning halves of [`routes`] are pure; the rest
//! talk to the kernel, to plugin binaries or to the network, each through a
//! bounded, timed-out edge ([`exec`]).

pub mod bridge;
pub mod cni;
pub mod dns;
pub mod exec;
pub mod netns;
pub mod routes;
/// Node subnets are chosen by the replicated state machine, so the
/// (pure) CIDR arithmetic lives with the domain types.
pub use shoal_types::subnet;

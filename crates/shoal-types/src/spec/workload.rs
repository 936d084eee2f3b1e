//! What a service's tasks run: a [`Workload`], today always a container.
//!
//! Other runtimes (processes, wasm, virtual machines) come as new variants,
//! each with a spec of its own; the written and stored form of a service is
//! flat (`flat.rs`), so a new variant also needs fields there.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Security;

/// What each task of a service runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// An OCI image run as a container.
    Container(ContainerSpec),
}

/// A container: an image and how its process starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Image reference, normalized when the spec is validated
    /// (`busybox` becomes `docker.io/library/busybox:latest`).
    pub image: String,
    /// Replaces the image's entrypoint.
    pub command: Option<Vec<String>>,
    /// Replaces the image's cmd.
    pub args: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Absolute path; the image's working directory when unset.
    pub working_dir: Option<String>,
    /// The image's user when unset.
    pub user: Option<UserSpec>,
    /// What the container may do beyond the hardened defaults, and what it
    /// gives up.
    pub security: Security,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
}

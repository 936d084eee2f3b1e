//! What a container may do beyond the hardened defaults every task runs
//! with, and what it gives up.
//!
//! Loosening (`privileged`, `host_network`, `host_pid`, capabilities added
//! beyond the default set) needs a node whose operator allows it
//! (`--allow-privileged`, `--allow-host-network`) and an admin token;
//! tightening (`read_only_root`, capabilities dropped) needs nothing.
//! Written only when not the default (shoal 0.6, log format 6), so a spec
//! without it is the bytes older formats read.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The capabilities a container's root has by default: Docker's set
/// without `NET_RAW`.
pub const DEFAULT_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Every Linux capability by name (capabilities(7)), without `CAP_`.
pub const CAPABILITIES: [&str; 41] = [
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// Capabilities listed per container, at most.
pub const CAPABILITIES_LISTED_MAX: usize = 64;

/// A container's departures from the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// Every capability, no seccomp filter, no masked kernel paths, `/sys`
    /// writable, every device allowed: the node's root. Needs a node started
    /// with `--allow-privileged` and an admin token.
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// The node's network namespace (its interfaces, addresses, ports)
    /// instead of one of its own; needs `network: false`, a node started
    /// with `--allow-host-network` and an admin token.
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_network: bool,
    /// The node's PID namespace: the task sees and may signal the node's
    /// processes. Needs `--allow-privileged` and an admin token.
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_pid: bool,
    /// Capabilities added to or dropped from the default set
    /// (`NET_ADMIN`; `CAP_NET_ADMIN` and lowercase are read too). Adding
    /// one beyond the default set needs `--allow-privileged` and an admin
    /// token; dropping (`ALL` drops every one) needs nothing.
    #[serde(default, skip_serializing_if = "Capabilities::is_empty")]
    pub capabilities: Capabilities,
    /// The image's files are read-only; only mounts are writable.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only_root: bool,
}

/// Capabilities added to and dropped from the default set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

impl Capabilities {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.drop.is_empty()
    }
}

/// What a node's operator must allow before a task may run there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Needs {
    /// `--allow-privileged`: privileged, the host's PID namespace, added
    /// capabilities.
    pub privileged: bool,
    /// `--allow-host-network`.
    pub host_network: bool,
}

impl Needs {
    pub fn any(self) -> bool {
        self.privileged || self.host_network
    }
}

impl Security {
    pub fn is_default(&self) -> bool {
        *self == Security::default()
    }

    /// What a node must allow to run this container.
    pub fn needs(&self) -> Needs {
        Needs {
            privileged: self.privileged
                || self.host_pid
                || self
                    .capabilities
                    .add
                    .iter()
                    .any(|name| !DEFAULT_CAPABILITIES.contains(&name.as_str())),
            host_network: self.host_network,
        }
    }

    /// The field that loosens the defaults first, for messages:
    /// `security.privileged`.
    pub fn first_loosening(&self) -> Option<&'static str> {
        if self.privileged {
            Some("security.privileged")
        } else if self.host_network {
            Some("security.host_network")
        } else if self.host_pid {
            Some("security.host_pid")
        } else if self.needs().privileged {
            Some("security.capabilities.add")
        } else {
            None
        }
    }

    /// The capability set a container runs with: the defaults, less what
    /// is dropped (`ALL`: every one), plus what is added; names without
    /// `CAP_`, sorted. A privileged container has every capability.
    pub fn effective_capabilities(&self) -> Vec<&'static str> {
        if self.privileged {
            return CAPABILITIES.to_vec();
        }
        let drops_all = self.capabilities.drop.iter().any(|name| name == "ALL");
        let mut set: Vec<&'static str> = CAPABILITIES
            .iter()
            .copied()
            .filter(|name| {
                let default = DEFAULT_CAPABILITIES.contains(name)
                    && !drops_all
                    && !self.capabilities.drop.iter().any(|dropped| dropped == name);
                default || self.capabilities.add.iter().any(|added| added == name)
            })
            .collect();
        set.sort_unstable();
        set
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// A capability name as stored: upper case, without `CAP_`; `ALL` is kept
/// for `drop`.
pub(super) fn normalize_capability(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    upper
        .strip_prefix("CAP_")
        .map(str::to_string)
        .unwrap_or(upper)
}

/// Checks and normalizes a container's `security`, naming each field.
pub(super) fn validate_security(
    security: &mut Security,
    network: bool,
    at: &dyn Fn(&str) -> String,
    fail: &mut dyn FnMut(String, String),
) {
    if security.host_network && network {
        fail(
            at("security.host_network"),
            "puts the task on the node's network, which needs `network: false` beside it (the task gets no cluster address of its own)".into(),
        );
    }
    for (list, field) in [
        (&mut security.capabilities.add, "add"),
        (&mut security.capabilities.drop, "drop"),
    ] {
        if list.len() > CAPABILITIES_LISTED_MAX {
            fail(
                at(&format!("security.capabilities.{field}")),
                format!(
                    "at most {CAPABILITIES_LISTED_MAX} capabilities, got {}",
                    list.len()
                ),
            );
            continue;
        }
        for (index, name) in list.iter_mut().enumerate() {
            let normalized = normalize_capability(name);
            let known = CAPABILITIES.contains(&normalized.as_str())
                || (field == "drop" && normalized == "ALL");
            if field == "add" && normalized == "ALL" {
                fail(
                    at(&format!("security.capabilities.add[{index}]")),
                    "`ALL` is only for drop; to give every capability write `privileged: true`"
                        .into(),
                );
            } else if !known {
                let mut shown: String = name.chars().take(64).collect();
                if shown.len() < name.len() {
                    shown.push('…');
                }
                fail(
                    at(&format!("security.capabilities.{field}[{index}]")),
                    format!(
                        "`{shown}` is no Linux capability; write a name from capabilities(7) such as NET_ADMIN or SYS_PTRACE{}",
                        if field == "drop" { ", or ALL" } else { "" }
                    ),
                );
            } else {
                *name = normalized;
            }
        }
        list.sort();
        list.dedup();
    }
}

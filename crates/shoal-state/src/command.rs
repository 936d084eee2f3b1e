//! The commands of the replicated log, what applying one gives, and why
//! applying can fail.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use shoal_types::{AppSpec, Node, NodeStatus, PinnedImage, Taint, TaintEffect, TaskStatus};

use crate::files::FileRecord;
use crate::registries::RegistryRecord;
use crate::security::{ApiTokenRecord, CaRecord, GossipKeysRecord, JoinTokenRecord, NodeRole};
use crate::{format, State};

/// Status reports accepted in one command.
pub const REPORTS_PER_COMMAND_MAX: usize = 4096;
/// Placements accepted in one plan.
pub const PLACEMENTS_PER_PLAN_MAX: usize = 100_000;
/// Stops or removals accepted in one plan.
pub const CHANGES_PER_PLAN_MAX: usize = 100_000;
/// Unplaced groups (app, service, reason) recorded from one plan.
pub const UNPLACED_MAX: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// A node announces itself (or its new facts).
    RegisterNode {
        node: Node,
    },
    /// Create or update an app; a spec equal to the current one is a no-op.
    PutApp {
        spec: AppSpec,
    },
    /// How to reach a registry and who to be there (its password sealed),
    /// set by an operator; replaces the host's settings (format 4).
    SetRegistry {
        registry: RegistryRecord,
    },
    RemoveRegistry {
        host: String,
    },
    /// A secret created (version 1) or given a new value (the next
    /// version), its value sealed with the data key (format 8).
    PutSecret {
        secret: FileRecord,
    },
    /// A secret no service lists removed (format 8).
    RemoveSecret {
        name: String,
    },
    /// A config created or given a new value (format 8).
    PutConfig {
        config: FileRecord,
    },
    RemoveConfig {
        name: String,
    },
    /// The same, with the image each service runs pinned to the digest its
    /// reference named at apply (format 4); the same spec with other
    /// digests is a new version.
    PutAppPinned {
        spec: AppSpec,
        /// Service name → its pinned image.
        images: BTreeMap<String, PinnedImage>,
    },
    RemoveApp {
        name: String,
    },
    /// A scheduler's decision, re-checked against the state it lands on.
    ApplyPlan {
        plan: Plan,
    },
    /// The cluster's verdict on a node's liveness (from gossip, by the
    /// leader): tasks on a node that is not alive are placed again elsewhere.
    SetNodeStatus {
        name: String,
        status: NodeStatus,
    },
    /// Change cluster-wide settings; fields left out keep their value.
    SetSettings {
        voters_max: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster_cidr: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node_prefix_len: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dns_zone: Option<String>,
    },
    /// Forget a node that is not alive, with every task placed on it.
    ForgetNode {
        name: String,
    },
    /// Add a taint to a node, replacing one with the same key and effect.
    TaintNode {
        name: String,
        taint: Taint,
    },
    /// Remove a node's taints with this key (and effect, when given).
    UntaintNode {
        name: String,
        key: String,
        effect: Option<TaintEffect>,
    },
    /// Drain a node (no new work; its work moves away) or undo that.
    SetNodeDrain {
        name: String,
        drain: bool,
    },
    /// A node reports what became of the tasks placed on it.
    ReportTasks {
        node: String,
        statuses: Vec<(String, TaskStatus)>,
    },
    /// The cluster's CA, set when the cluster forms and at each rotation
    /// (format 3; by the leader).
    SetCa {
        ca: CaRecord,
    },
    /// A join token, by the hash of its secret (format 3).
    CreateJoinToken {
        token: JoinTokenRecord,
    },
    RevokeJoinToken {
        id: String,
    },
    /// A node joins with a join token, which this uses (format 3; by the
    /// leader, which signs its certificate once this is applied).
    AdmitNode {
        /// Empty only for the node that forms the cluster.
        token: String,
        node: String,
        role: NodeRole,
        admission: String,
    },
    /// An API token, by the hash of its secret (format 3).
    CreateApiToken {
        token: ApiTokenRecord,
    },
    RevokeApiToken {
        id: String,
    },
    /// The gossip keyring, sealed (format 3; by the leader).
    SetGossipKeys {
        keys: GossipKeysRecord,
    },
    /// The public key a node signs its gossip facts with, for its current
    /// admission (format 9; by the node itself).
    SetFactsKey {
        node: String,
        admission: String,
        /// Ed25519, 64 lowercase hex digits.
        key: String,
    },
    /// Remove a node for good: no node accepts its certificate any more,
    /// and its tasks are placed again (format 3).
    RemoveNode {
        name: String,
    },
}

/// What a scheduler wants changed. Computed from a snapshot, so anything in
/// it may be stale by the time it is applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub place: Vec<Placement>,
    /// Tasks to move to desired `stopped`.
    pub stop: Vec<String>,
    /// Stopped tasks to forget.
    pub remove: Vec<String>,
    /// Tasks that could not be placed, and why; recorded in the state as
    /// they are for users to see (replacing the previous list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unplaced: Vec<Unplaced>,
    /// Why each task of `stop` stops, in the same order: the scheduler's
    /// decision as data, for the edge to word (`shoal plan`). Not part of
    /// the log: applying a plan does not depend on it.
    #[serde(skip)]
    pub stop_why: Vec<StopReason>,
    /// Rolling updates that failed: paused or rolled back (format 13).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<crate::history::RolloutStep>,
}

impl Plan {
    /// The plan as a format-1 entry must carry it: reasons in words.
    pub fn worded(mut self) -> Plan {
        self.unplaced = self.unplaced.iter().map(Unplaced::worded).collect();
        self
    }

    /// Whether applying the plan to `state` would change nothing.
    pub fn changes_nothing(&self, state: &State) -> bool {
        self.place.is_empty()
            && self.stop.is_empty()
            && self.remove.is_empty()
            && self.rollouts.is_empty()
            && self.unplaced == state.unplaced
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub app: String,
    pub service: String,
    pub slot: u32,
    pub app_version: u64,
    pub node: String,
    /// Started beside the older task of its slot, which stops once this
    /// one has been healthy for the update's `monitor` (a start-first
    /// rolling update, format 13).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub beside: bool,
}

/// Why the scheduler stops a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Its app or service is gone.
    ServiceGone,
    /// Its service's spec changed (more than its replica count).
    SpecChanged,
    /// Its app was applied again and its image reference names another
    /// digest now (a tag moved).
    ImageChanged,
    /// Its node is not alive (or not known).
    NodeLost,
    NodeDrained,
    /// Its node has a `NoExecute` taint it does not tolerate.
    NodeTainted,
    /// Its node's operator no longer allows what it needs.
    NotAllowed,
    /// Its slot is beyond the replica count.
    ScaledDown,
    /// A global task whose node no longer admits its service.
    NotAdmitted,
    /// A second task of a global service on one node.
    DuplicateOnNode,
    /// A task of a higher priority takes its room.
    Preempted,
    /// Its node came back smaller and sheds its lowest priorities.
    NodeShrank,
}

/// Tasks of one service that fit nowhere, for one reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unplaced {
    pub app: String,
    pub service: String,
    pub count: u32,
    /// Why, in words: what format-1 entries carry (empty from format 2,
    /// which carries `why`); see [`Unplaced::words`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Why, as data (format 2 on), worded only at the edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<crate::unplaced::UnplacedReason>,
}

impl Unplaced {
    /// Whether the reason names a node's allowance (format 6).
    pub fn names_an_allowance(&self) -> bool {
        use crate::fit::Reject;
        use crate::unplaced::UnplacedReason;
        match &self.why {
            Some(UnplacedReason::FitsNowhere { rejects, .. }) => rejects
                .iter()
                .any(|rejected| matches!(rejected.reject, Reject::NotAllowed(_))),
            Some(UnplacedReason::AdmittedButLimited { first, .. }) => {
                matches!(first, Reject::NotAllowed(_))
            }
            _ => false,
        }
    }
}

/// What applying an entry did, returned to whoever proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    NodeRegistered,
    NodeStatusSet {
        changed: bool,
    },
    SettingsSet,
    NodeForgotten {
        tasks: usize,
    },
    NodeUpdated {
        changed: bool,
    },
    AppPut {
        version: u64,
        changed: bool,
    },
    AppRemoved,
    PlanApplied {
        placed: Vec<String>,
        stopped: usize,
        removed: usize,
        /// Parts of the plan that no longer fit the state, with the reason.
        rejected: Vec<String>,
    },
    TasksReported {
        accepted: usize,
        stale: usize,
    },
    /// A change to the CA, tokens, admissions or gossip keys.
    SecurityChanged,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApplyError {
    /// The entry is of a log format this build does not read, or its
    /// command does not decode: the node must stop applying (skipping the
    /// entry would let replicas diverge) until it is upgraded.
    #[error("{0}")]
    NeedsUpgrade(String),
    /// The command changes what only another node may write.
    #[error("{0}")]
    WrongWriter(String),
    #[error("app `{0}` not found")]
    AppNotFound(String),
    #[error("node `{0}` not found")]
    NodeNotFound(String),
    #[error("{0}")]
    InvalidSetting(String),
    #[error("node `{0}` is alive; only a node that is not can be forgotten")]
    NodeAlive(String),
    #[error("{0}")]
    TooLarge(String),
    /// A credential or trust change the state refuses (an expired or
    /// used-up join token, a removed identity, an older CA).
    #[error("{0}")]
    Refused(String),
}

impl ApplyError {
    /// Whether the node must stop applying the log here.
    pub fn halts(&self) -> bool {
        matches!(self, ApplyError::NeedsUpgrade(_))
    }
}

/// Who may have a command appended: what the leader checks when another
/// node forwards it (the proposer's certificate, and for an operator's
/// command the operator's own credential).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority<'a> {
    /// The node the command is about, and only it: its registration, its
    /// tasks' status, its leave.
    Node(&'a str),
    /// The leader, from its own duties: plans, verdicts on nodes, the CA,
    /// admissions, gossip keys.
    Leader,
    /// An operator with a deployer or admin token: apps.
    Deployer,
    /// An operator with an admin token: everything else.
    Admin,
}

impl Command {
    /// Who may have this command appended. Every command is named, so a
    /// new one cannot be added without deciding.
    pub fn authority(&self) -> Authority<'_> {
        match self {
            Command::RegisterNode { node } => Authority::Node(&node.name),
            Command::ReportTasks { node, .. } => Authority::Node(node),
            Command::SetFactsKey { node, .. } => Authority::Node(node),
            Command::SetNodeStatus { name, status } if *status == NodeStatus::Left => {
                Authority::Node(name)
            }
            // A rotation is an operator's (the leader's own duty ends it).
            Command::SetCa { ca } if ca.generation > 1 => Authority::Admin,
            Command::SetNodeStatus { .. }
            | Command::ApplyPlan { .. }
            | Command::ForgetNode { .. }
            | Command::SetCa { .. }
            | Command::AdmitNode { .. }
            | Command::SetGossipKeys { .. } => Authority::Leader,
            // A container that loosens the defaults runs with the node's
            // privileges: an admin's decision.
            Command::PutApp { spec } | Command::PutAppPinned { spec, .. }
                if spec.services.iter().any(|service| service.needs().any()) =>
            {
                Authority::Admin
            }
            Command::PutApp { .. }
            | Command::PutAppPinned { .. }
            | Command::RemoveApp { .. }
            | Command::PutSecret { .. }
            | Command::RemoveSecret { .. }
            | Command::PutConfig { .. }
            | Command::RemoveConfig { .. } => Authority::Deployer,
            Command::SetRegistry { .. }
            | Command::RemoveRegistry { .. }
            | Command::SetSettings { .. }
            | Command::TaintNode { .. }
            | Command::UntaintNode { .. }
            | Command::SetNodeDrain { .. }
            | Command::CreateJoinToken { .. }
            | Command::RevokeJoinToken { .. }
            | Command::CreateApiToken { .. }
            | Command::RevokeApiToken { .. }
            | Command::RemoveNode { .. } => Authority::Admin,
        }
    }

    /// The command's name as the log writes it (`create_api_token`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::RegisterNode { .. } => "register_node",
            Command::PutApp { .. } => "put_app",
            Command::SetRegistry { .. } => "set_registry",
            Command::RemoveRegistry { .. } => "remove_registry",
            Command::PutSecret { .. } => "put_secret",
            Command::RemoveSecret { .. } => "remove_secret",
            Command::PutConfig { .. } => "put_config",
            Command::RemoveConfig { .. } => "remove_config",
            Command::PutAppPinned { .. } => "put_app_pinned",
            Command::RemoveApp { .. } => "remove_app",
            Command::ApplyPlan { .. } => "apply_plan",
            Command::SetNodeStatus { .. } => "set_node_status",
            Command::SetSettings { .. } => "set_settings",
            Command::ForgetNode { .. } => "forget_node",
            Command::TaintNode { .. } => "taint_node",
            Command::UntaintNode { .. } => "untaint_node",
            Command::SetNodeDrain { .. } => "set_node_drain",
            Command::ReportTasks { .. } => "report_tasks",
            Command::SetCa { .. } => "set_ca",
            Command::CreateJoinToken { .. } => "create_join_token",
            Command::RevokeJoinToken { .. } => "revoke_join_token",
            Command::AdmitNode { .. } => "admit_node",
            Command::CreateApiToken { .. } => "create_api_token",
            Command::RevokeApiToken { .. } => "revoke_api_token",
            Command::SetGossipKeys { .. } => "set_gossip_keys",
            Command::SetFactsKey { .. } => "set_facts_key",
            Command::RemoveNode { .. } => "remove_node",
        }
    }

    /// The one node that may propose this command, for commands a node
    /// writes about itself (its registration, its tasks' status).
    pub fn writer(&self) -> Option<&str> {
        match self {
            Command::RegisterNode { node } => Some(&node.name),
            Command::ReportTasks { node, .. } => Some(node),
            Command::SetFactsKey { node, .. } => Some(node),
            _ => None,
        }
    }

    /// The oldest log format that holds this command. A new command, or a
    /// new field in use, raises it; the leader appends the entry only once
    /// every node reads that format.
    pub fn version_needed(&self) -> u32 {
        match self {
            // Rolling updates came with format 13.
            Command::PutApp { spec } | Command::PutAppPinned { spec, .. }
                if spec.services.iter().any(|service| service.update.is_some()) =>
            {
                format::ROLLOUTS
            }
            Command::ApplyPlan { plan }
                if !plan.rollouts.is_empty() || plan.place.iter().any(|p| p.beside) =>
            {
                format::ROLLOUTS
            }
            // Health checks, and a task's health, came with format 12.
            Command::PutApp { spec } | Command::PutAppPinned { spec, .. }
                if spec.services.iter().any(|service| service.health.is_some()) =>
            {
                format::HEALTH
            }
            Command::ReportTasks { statuses, .. }
                if statuses.iter().any(|(_, status)| status.health.is_some()) =>
            {
                format::HEALTH
            }
            // A node's facts key came with format 9.
            Command::SetFactsKey { .. } => format::FACTS_KEYS,
            // Secrets and configs, and services that list them, came with
            // format 8.
            Command::PutSecret { .. }
            | Command::RemoveSecret { .. }
            | Command::PutConfig { .. }
            | Command::RemoveConfig { .. } => format::FILES,
            Command::PutApp { spec } | Command::PutAppPinned { spec, .. }
                if spec
                    .services
                    .iter()
                    .any(|service| service.files().next().is_some()) =>
            {
                format::FILES
            }
            // A container's security, a node's allowances and the reason a
            // node lacks one came with format 6.
            Command::PutApp { spec } | Command::PutAppPinned { spec, .. }
                if spec
                    .services
                    .iter()
                    .any(|service| !service.security().is_default()) =>
            {
                format::ALLOWS
            }
            Command::RegisterNode { node } if !node.allows.is_none() => format::ALLOWS,
            Command::ApplyPlan { plan }
                if plan.unplaced.iter().any(Unplaced::names_an_allowance) =>
            {
                format::ALLOWS
            }
            // Reasons as data came with format 2.
            Command::ApplyPlan { plan } if plan.unplaced.iter().any(|u| u.why.is_some()) => {
                format::REASONS
            }
            // A CA record after the first, a rotation, came with format 11.
            Command::SetCa { ca } if ca.generation > 1 => format::CA_ROTATION,
            // Security came with format 3.
            Command::SetCa { .. }
            | Command::CreateJoinToken { .. }
            | Command::RevokeJoinToken { .. }
            | Command::AdmitNode { .. }
            | Command::CreateApiToken { .. }
            | Command::RevokeApiToken { .. }
            | Command::SetGossipKeys { .. }
            | Command::RemoveNode { .. } => format::SECURITY,
            // Pinned images and registry settings came with format 4.
            // A service's `prepull` other than the default came with format 5.
            Command::PutApp { spec } | Command::PutAppPinned { spec, .. }
                if spec
                    .services
                    .iter()
                    .any(|service| service.prepull != shoal_types::Prepull::default()) =>
            {
                format::PREPULL
            }
            // A registry's password in the secrets store came with format 10.
            Command::SetRegistry { registry } if registry.password_secret.is_some() => {
                format::REGISTRY_SECRETS
            }
            Command::PutAppPinned { .. }
            | Command::SetRegistry { .. }
            | Command::RemoveRegistry { .. } => format::PINS,
            // Named one by one: a new command must say its format here.
            Command::RegisterNode { .. }
            | Command::PutApp { .. }
            | Command::RemoveApp { .. }
            | Command::ApplyPlan { .. }
            | Command::SetNodeStatus { .. }
            | Command::SetSettings { .. }
            | Command::ForgetNode { .. }
            | Command::TaintNode { .. }
            | Command::UntaintNode { .. }
            | Command::SetNodeDrain { .. }
            | Command::ReportTasks { .. } => format::FIRST,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_checks_and_a_tasks_health_need_format_12() {
        let parse = |service: &str| {
            shoal_types::parse_app(format!("name: a\nservices: [{service}]").as_bytes())
                .expect("valid")
        };
        let checked = parse("{name: web, image: busybox, health: {tcp: {port: 80}}}");
        let plain = parse("{name: web, image: busybox}");
        assert_eq!(
            Command::PutApp { spec: checked }.version_needed(),
            format::HEALTH
        );
        assert!(Command::PutApp { spec: plain }.version_needed() < format::HEALTH);
        let report = |health| Command::ReportTasks {
            node: "a".into(),
            statuses: vec![(
                "a.web.0.1".into(),
                shoal_types::TaskStatus {
                    health,
                    ..shoal_types::TaskStatus::pending(0)
                },
            )],
        };
        assert_eq!(
            report(Some(shoal_types::Health::Healthy)).version_needed(),
            format::HEALTH
        );
        assert_eq!(report(None).version_needed(), format::FIRST);
    }

    #[test]
    fn a_commands_name_is_the_one_the_log_writes() {
        let commands = [
            Command::RemoveApp { name: "web".into() },
            Command::RevokeApiToken { id: "abc".into() },
            Command::ForgetNode { name: "n1".into() },
            Command::SetNodeStatus {
                name: "n1".into(),
                status: NodeStatus::Left,
            },
        ];
        for command in commands {
            let json = serde_json::to_value(&command).expect("serializes");
            assert_eq!(json["type"], command.name(), "{json}");
        }
        assert_eq!(
            Command::SetNodeStatus {
                name: "n1".into(),
                status: NodeStatus::Left
            }
            .authority(),
            Authority::Node("n1")
        );
        assert_eq!(
            Command::SetNodeStatus {
                name: "n1".into(),
                status: NodeStatus::Dead
            }
            .authority(),
            Authority::Leader
        );
    }

    #[test]
    fn secrets_configs_and_apps_that_list_them_need_format_8() {
        let app = |files: &str| {
            shoal_types::parse_app(
                format!("name: a\nservices: [{{name: web, image: busybox{files}}}]").as_bytes(),
            )
            .expect("valid")
        };
        for (files, needed) in [
            ("", 1),
            (", secrets: [{name: db}]", 8),
            (", configs: [{name: app.toml}]", 8),
            (", prepull: all, secrets: [{name: db}]", 8),
        ] {
            assert_eq!(
                Command::PutApp { spec: app(files) }.version_needed(),
                needed,
                "{files}"
            );
        }
        let record = FileRecord {
            name: "db".into(),
            version: 1,
            data: String::new(),
            bytes: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        for command in [
            Command::PutSecret {
                secret: record.clone(),
            },
            Command::RemoveSecret { name: "db".into() },
            Command::PutConfig { config: record },
            Command::RemoveConfig { name: "db".into() },
        ] {
            assert_eq!(command.version_needed(), 8, "{}", command.name());
            // Deployers create what their apps use.
            assert_eq!(command.authority(), Authority::Deployer);
        }
    }

    #[test]
    fn a_registry_password_in_the_secrets_store_is_format_10() {
        let record = |secret: Option<&str>| crate::registries::RegistryRecord {
            host: "r.example".into(),
            insecure: false,
            ca_pem: None,
            username: Some("ci".into()),
            password_sealed: secret.is_none().then(|| "v1.sealed".into()),
            password_secret: secret.map(str::to_string),
            updated_at_ms: 1,
        };
        let sealed = Command::SetRegistry {
            registry: record(None),
        };
        assert_eq!(sealed.version_needed(), 4);
        let json = serde_json::to_string(&sealed).expect("serializes");
        assert!(!json.contains("password_secret"), "{json}");
        let named = Command::SetRegistry {
            registry: record(Some("regpw")),
        };
        assert_eq!(named.version_needed(), 10);
        assert_eq!(named.authority(), sealed.authority());
    }

    #[test]
    fn a_rotated_ca_is_format_11() {
        let ca = |generation| Command::SetCa {
            ca: CaRecord {
                roots_pem: "roots".into(),
                signer_pem: "signer".into(),
                chain_pem: String::new(),
                key_sealed: "sealed".into(),
                generation,
            },
        };
        assert_eq!(ca(1).version_needed(), 3);
        assert_eq!(ca(2).version_needed(), 11);
        assert_eq!(ca(3).version_needed(), 11);
        // The first CA is the forming leader's; a rotation an admin's.
        assert_eq!(ca(1).authority(), Authority::Leader);
        assert_eq!(ca(2).authority(), Authority::Admin);
    }

    #[test]
    fn a_facts_key_is_format_9_and_its_node_is_its_one_writer() {
        let command = Command::SetFactsKey {
            node: "n2".into(),
            admission: "00000000000000b2".into(),
            key: "ab".repeat(32),
        };
        assert_eq!(command.version_needed(), 9);
        assert_eq!(command.authority(), Authority::Node("n2"));
        assert_eq!(command.writer(), Some("n2"));
        assert_eq!(command.name(), "set_facts_key");
        let json = serde_json::to_string(&command).expect("serializes");
        assert!(
            json.starts_with(r#"{"type":"set_facts_key","node":"n2""#),
            "{json}"
        );
    }

    #[test]
    fn a_prepull_other_than_the_default_needs_format_5() {
        let app = |prepull: &str| {
            shoal_types::parse_app(
                format!("name: a\nservices: [{{name: web, image: busybox, prepull: {prepull}}}]")
                    .as_bytes(),
            )
            .expect("valid")
        };
        for (prepull, needed) in [("successors", 4), ("all", 5), ("none", 5)] {
            let pinned = Command::PutAppPinned {
                spec: app(prepull),
                images: Default::default(),
            };
            assert_eq!(pinned.version_needed(), needed, "{prepull}");
            let plain = Command::PutApp { spec: app(prepull) };
            // Unpinned (a cluster with a node older than 0.4) needs format 1
            // for the default.
            let plain_needed = if needed == 5 { 5 } else { 1 };
            assert_eq!(plain.version_needed(), plain_needed, "{prepull}");
        }
    }

    #[test]
    fn security_allowances_and_their_reasons_need_format_6_and_loosening_an_admin() {
        let app = |security: &str| {
            shoal_types::parse_app(
                format!(
                    "name: a\nservices: [{{name: web, image: busybox, network: false, security: {security}}}]"
                )
                .as_bytes(),
            )
            .expect("valid")
        };
        for (security, admin) in [
            ("{}", false),
            ("{read_only_root: true}", false),
            ("{capabilities: {drop: [ALL]}}", false),
            ("{capabilities: {add: [SYS_ADMIN]}}", true),
            ("{privileged: true}", true),
            ("{host_pid: true}", true),
            ("{host_network: true}", true),
        ] {
            let default = security == "{}";
            for command in [
                Command::PutApp {
                    spec: app(security),
                },
                Command::PutAppPinned {
                    spec: app(security),
                    images: Default::default(),
                },
            ] {
                let floor = if matches!(command, Command::PutApp { .. }) {
                    1
                } else {
                    4
                };
                let needed = if default { floor } else { 6 };
                assert_eq!(command.version_needed(), needed, "{security}");
                let expected = if admin {
                    Authority::Admin
                } else {
                    Authority::Deployer
                };
                assert_eq!(command.authority(), expected, "{security}");
            }
        }

        let mut node = shoal_types::Node::sample("n1", "127.0.0.1:7950");
        let register = |node: &shoal_types::Node| Command::RegisterNode { node: node.clone() };
        assert_eq!(register(&node).version_needed(), 1);
        node.allows.host_network = true;
        assert_eq!(register(&node).version_needed(), 6);
        let json = serde_json::to_string(&node).expect("serializes");
        assert!(
            json.ends_with(r#""allows":{"host_network":true}}"#),
            "{json}"
        );
        node.allows = Default::default();
        let json = serde_json::to_string(&node).expect("serializes");
        assert!(!json.contains("allows"), "{json}");

        let plan = |reject: crate::fit::Reject| Command::ApplyPlan {
            plan: crate::Plan {
                unplaced: vec![Unplaced {
                    app: "a".into(),
                    service: "web".into(),
                    count: 1,
                    reason: String::new(),
                    why: Some(crate::unplaced::UnplacedReason::FitsNowhere {
                        nodes: 1,
                        rejects: vec![crate::unplaced::Rejected { reject, nodes: 1 }],
                        no_lower_priority: false,
                    }),
                }],
                ..Default::default()
            },
        };
        assert_eq!(plan(crate::fit::Reject::Draining).version_needed(), 2);
        assert_eq!(
            plan(crate::fit::Reject::NotAllowed(
                shoal_types::Allowance::Privileged
            ))
            .version_needed(),
            6
        );
    }
}

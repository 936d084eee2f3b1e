//! Bodies on the wire. Listings are JSON arrays of these.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal_types::{AppSpec, DesiredState, FieldError, NodeStatus, Promise, Task, TaskState};

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct VersionInfo {
    pub version: String,
    pub commit: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct NodeView {
    pub name: String,
    pub addr: String,
    pub status: NodeStatus,
    /// `voter` or `learner` in the cluster's consensus (`-` when not a member).
    pub role: String,
    /// Whether this node leads the consensus now.
    #[serde(default)]
    pub leader: bool,
    pub os: String,
    pub arch: String,
    pub uptime_s: u64,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Operators' taints (`KEY=VALUE:EFFECT`).
    #[serde(default)]
    pub taints: Vec<String>,
    /// Whether the node is drained: no new work, its work moved away.
    #[serde(default)]
    pub drain: bool,
    /// What the node's operator lets its tasks do beyond the hardened
    /// defaults: `privileged`, `host_network` (`--allow-…`).
    #[serde(default)]
    pub allows: Vec<String>,
    /// The node's subnet of the cluster CIDR, for its tasks' addresses.
    #[serde(default)]
    pub subnet: Option<String>,
    /// What tasks may request in all, and what the placed ones request.
    #[serde(default)]
    pub cpu_allocatable_millis: u64,
    #[serde(default)]
    pub memory_allocatable_bytes: u64,
    #[serde(default)]
    pub cpu_requested_millis: u64,
    #[serde(default)]
    pub memory_requested_bytes: u64,
    /// Tasks the cluster wants running on the node.
    #[serde(default)]
    pub tasks: u32,
    /// The node's shoal release as it gossips it (empty when unknown:
    /// shoal 0.1 did not gossip it, or the node is not heard from).
    #[serde(default)]
    pub release: String,
    /// The newest log format the node reads (0 when unknown).
    #[serde(default)]
    pub log_version: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ServiceView {
    pub name: String,
    pub image: String,
    /// The digest `image` named when this version was applied (what every
    /// replica runs); absent for versions applied before shoal 0.4 or
    /// while some node was older.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// `registry`, or `node` for an image imported by hand (run by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_source: Option<shoal_types::PinSource>,
    /// `service`, `global` or `batch`.
    #[serde(default)]
    pub kind: shoal_types::Kind,
    /// Tasks wanted: `replicas`, or for a global service the nodes it may run on.
    pub replicas: u32,
    /// Tasks of the service whose promise is kept and that run.
    pub running: u32,
    /// Batch tasks that exited with 0.
    #[serde(default)]
    pub completed: u32,
    /// Batch tasks that failed for good.
    #[serde(default)]
    pub failed: u32,
    /// Whether the nodes named by the service's `prepull` hold its image
    /// (asked of them when the app is read); absent for an image imported
    /// by hand, which is never pulled ahead, and from nodes before 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepull: Option<PrepullView>,
}

/// A service's image held ahead of need, as the nodes holding it say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PrepullView {
    /// The service's `prepull`: `successors`, `all` or `none`.
    pub mode: shoal_types::Prepull,
    /// Every node named to hold the image ahead holds it, and for
    /// `successors` one is named: a replica lost with its node starts
    /// elsewhere without a pull. Never for `none`.
    pub protected: bool,
    /// The nodes named to hold the image ahead (the service's standby, or
    /// every node that may run it and does not), and whether they do.
    pub nodes: Vec<PrepullNodeView>,
    /// Why the service is not protected, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PrepullNodeView {
    pub node: String,
    /// Whether the node holds the image; absent when it could not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<bool>,
    /// Why the node could not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Tasks of a service that fit on no node now, and why.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct UnplacedView {
    pub app: String,
    pub service: String,
    pub count: u32,
    pub reason: String,
}

/// What applying a spec would do, computed without changing anything.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlanView {
    pub app: String,
    /// The app version the spec would become.
    pub version: u64,
    /// False when the spec equals the one applied.
    pub changed: bool,
    /// Service → the image digest it would run (what apply would pin now).
    #[serde(default)]
    pub images: std::collections::BTreeMap<String, shoal_types::PinnedImage>,
    pub place: Vec<PlannedTask>,
    /// Tasks that would stop, with their nodes.
    pub stop: Vec<PlannedStop>,
    pub unplaced: Vec<UnplacedView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlannedTask {
    pub service: String,
    pub slot: u32,
    pub node: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlannedStop {
    pub task: String,
    pub node: String,
    /// Why: the spec changed, scaled down, the node is lost, drained, or a
    /// higher priority needs the room.
    pub reason: String,
}

/// Body of `POST /v1/nodes/{name}/taints`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaintRequest {
    /// `KEY=VALUE:EFFECT` or `KEY:EFFECT`.
    pub taint: String,
}

/// Body of `PUT /v1/nodes/{name}/drain`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub drain: bool,
}

/// The answer to a change of a node: whether anything changed, and the node.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct NodeUpdate {
    pub changed: bool,
    pub node: NodeView,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct AppView {
    pub name: String,
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub services: Vec<ServiceView>,
    pub spec: AppSpec,
    /// Tasks the scheduler could not place, and why.
    #[serde(default)]
    pub unplaced: Vec<UnplacedView>,
    /// How far the current version has rolled out (absent from shoal 0.1).
    #[serde(default)]
    pub rollout: Option<RolloutView>,
}

/// An app's rollout of its current version, as the cluster computes it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct RolloutView {
    pub version: u64,
    /// Every service has what it wants and no older task is still stopping.
    pub done: bool,
    /// A task of the current version broken for good: the rollout will not
    /// finish by itself.
    #[serde(default)]
    pub broken: Option<BrokenTaskView>,
    pub services: Vec<ServiceRolloutView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ServiceRolloutView {
    pub service: String,
    /// `replicas`, or for a global service the nodes that may run it.
    pub wanted: u32,
    /// Tasks of the current spec that run.
    pub running: u32,
    /// Batch tasks that exited with 0, and that failed for good.
    pub completed: u32,
    pub failed: u32,
    /// Tasks told to stop that still run.
    pub stopping: u32,
    pub done: bool,
    /// Why tasks of the service fit on no node, when some do not.
    #[serde(default)]
    pub unplaced: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct BrokenTaskView {
    pub task: String,
    pub state: TaskState,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TaskView {
    pub id: String,
    pub app: String,
    pub service: String,
    pub slot: u32,
    pub app_version: u64,
    pub node: String,
    pub image: String,
    /// The digest the task runs, pinned when its app version was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    pub desired: DesiredState,
    pub state: TaskState,
    pub promise: Promise,
    pub message: String,
    /// The containerd container id, while a container exists.
    pub container_id: Option<String>,
    pub exit_code: Option<i32>,
    pub attempt: u32,
    pub restarts: u32,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub updated_at_ms: u64,
    /// The task's address on the cluster network, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
}

impl From<&Task> for TaskView {
    fn from(task: &Task) -> Self {
        TaskView {
            id: task.id.clone(),
            app: task.app.clone(),
            service: task.service.clone(),
            slot: task.slot,
            app_version: task.app_version,
            node: task.node.clone(),
            image: task.spec.image().to_string(),
            image_digest: task.image.as_ref().map(|pin| pin.digest.clone()),
            desired: task.desired,
            state: task.status.state,
            promise: task.status.promise,
            message: task.status.message.clone(),
            container_id: task.status.container_id.clone(),
            exit_code: task.status.exit_code,
            attempt: task.status.attempt,
            restarts: task.status.restarts,
            address: task.status.address,
            created_at_ms: task.created_at_ms,
            started_at_ms: task.status.started_at_ms,
            updated_at_ms: task.status.updated_at_ms,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ApplyResponse {
    pub app: String,
    pub version: u64,
    /// False when the spec equals the one already applied.
    pub changed: bool,
}

/// `POST /v1/registries`: how to reach a registry and who to be there.
/// Replaces the host's settings.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryAdd {
    /// `HOST[:PORT]` as image references name it (`docker.io` for Docker Hub).
    pub host: String,
    /// Allow plain HTTP (without settings, only loopback registries get it).
    #[serde(default)]
    pub insecure: bool,
    /// CA certificates (PEM) to trust for this registry besides the host's.
    #[serde(default)]
    pub ca_pem: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// Sealed with the cluster's data key as it arrives; never shown again.
    #[serde(default)]
    pub password: Option<String>,
    /// The secret (`shoal secret create`) whose value is the password,
    /// instead of `password`: each new version of it is used from then on,
    /// and it cannot be removed while the registry names it. One line
    /// ending at the end of the value is not part of the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
}

impl std::fmt::Debug for RegistryAdd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAdd")
            .field("host", &self.host)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("password_secret", &self.password_secret)
            .finish_non_exhaustive()
    }
}

/// `GET /v1/cluster/ca`, and what `POST /v1/cluster/ca/rotate` answers:
/// the cluster's CA and how far a rotation is.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct CaView {
    /// Grows with every change of the CA record: two per rotation (its
    /// start, then its end).
    pub generation: u32,
    /// A rotation is under way: every node trusts both roots and renews
    /// onto the new one; it ends by itself once every node has.
    pub rotating: bool,
    /// The roots every node trusts, the oldest first.
    pub roots: Vec<CaCertView>,
    /// The CA that signs node certificates now.
    pub signer: CaCertView,
    /// Every node the cluster holds, with the generation of the CA record
    /// it has taken in full (trusting its roots, its certificate of its
    /// signer; 0: none yet). During a rotation, one behind holds its end.
    pub nodes: Vec<CaNodeView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct CaCertView {
    pub subject: String,
    /// SHA-256 of the certificate's DER, hex: what a join token pins.
    pub sha256: String,
    pub not_after_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct CaNodeView {
    pub name: String,
    pub generation: u32,
}

/// A registry's settings as listed: never its password.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct RegistryView {
    pub host: String,
    pub insecure: bool,
    /// Whether a CA of its own is trusted for it.
    pub ca: bool,
    pub username: Option<String>,
    /// Whether a password is kept (sealed, or as a secret).
    pub password: bool,
    /// The secret whose value is the password, when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
    pub updated_at_ms: u64,
}

/// `POST /v1/secrets`, `POST /v1/configs`: a new secret or config.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileCreate {
    /// 1 to 64 letters, digits, `-`, `_` and `.`, starting with a letter
    /// or digit.
    pub name: String,
    /// The value, base64 (standard alphabet, padded); at most 256 KiB
    /// once decoded. A secret's is sealed with the cluster's data key as
    /// it arrives and never shown again.
    pub data: String,
}

/// `PUT /v1/secrets/{name}`, `PUT /v1/configs/{name}`: a new value, which
/// makes the next version.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileUpdate {
    /// The value, base64; as in `FileCreate`.
    pub data: String,
}

impl std::fmt::Debug for FileCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCreate")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for FileUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileUpdate").finish_non_exhaustive()
    }
}

/// A secret or config as listed: never a secret's value.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct FileView {
    pub name: String,
    /// 1 when created, one more with each new value.
    pub version: u64,
    /// The value's length.
    pub bytes: u64,
    /// The services (`APP/SERVICE`) that list it.
    pub used_by: Vec<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// `POST /v1/images/pull`: the image the answering node pulls.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePull {
    /// `HOST[:PORT]/REPOSITORY:TAG` or `…@sha256:…`; Docker Hub names may be
    /// short (`redis:alpine`).
    pub reference: String,
}

/// The disk a node's images are on, and when the node collects them.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ImageDiskView {
    /// containerd's root directory.
    pub path: String,
    pub used_bytes: u64,
    /// Used plus what is still free to use.
    pub total_bytes: u64,
    pub used_percent: u64,
    /// Above this, pulled images no app names are removed, the oldest pull
    /// first, down to `gc_low_percent`.
    pub gc_high_percent: u8,
    pub gc_low_percent: u8,
}

/// A pull under way on a node: how far it is.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PullView {
    /// The image's name, as it will be listed once pulled.
    pub name: String,
    /// Bytes of its layers stored, and in all.
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Bytes fetched per second since its layers began to come.
    pub bytes_per_s: u64,
    pub layers: Vec<LayerPullView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct LayerPullView {
    pub digest: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ImageView {
    pub name: String,
    pub digest: String,
    pub size_bytes: u64,
    pub created_s: Option<i64>,
}

/// Every error answer: a message for people, and for a rejected spec the
/// fields at fault.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<FieldErrorSchema>")]
    pub errors: Vec<FieldError>,
}

#[derive(JsonSchema)]
#[allow(dead_code)]
struct FieldErrorSchema {
    path: String,
    message: String,
}

/// What a node tells another that wants to join its cluster.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ClusterInfo {
    /// Identity of the cluster, carried by every gossip packet.
    pub cluster_id: String,
    /// The answering node.
    pub name: String,
    /// Where the answering node gossips (UDP).
    pub gossip_addr: String,
    pub leader: Option<String>,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub settings: ClusterSettings,
    /// The log format the answering node appends in when it leads: the
    /// newest one every voter and learner reads (0 from shoal 0.1).
    #[serde(default)]
    pub log_version: u32,
    /// The answering node's release (empty from shoal 0.1).
    #[serde(default)]
    pub release: String,
    /// The answering node's gossip: whether it seals, its keyring's ids,
    /// what it sent, took and dropped (absent before shoal 0.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip: Option<GossipView>,
}

/// One node's gossip since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GossipView {
    /// `sealed` (only sealed datagrams sent and taken), `sealing` (sealed
    /// sent, plaintext still taken for a moment after the switch),
    /// `plaintext` (the cluster has a node that reads no sealed gossip, or
    /// this node holds no keyring yet).
    pub mode: String,
    /// The generation of the keyring this node holds (0: none).
    pub keyring_generation: u64,
    pub key_ids: Vec<u32>,
    /// The key this node seals with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<u32>,
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    pub sealed_received: u64,
    pub sealed_sent: u64,
    /// Datagrams dropped, by reason: `malformed`, `other_cluster`,
    /// `unsealed` (plaintext where only sealed ones are taken),
    /// `truncated`, `unknown_key`, `forged`, `replayed`, `stale`,
    /// `oversize`, `members_full`; and facts broadcasts about a node that
    /// its facts key did not sign, `facts_unsigned`; and identities that
    /// claimed another node's gossip address (a datagram sent under one is
    /// dropped, an update about one taken out), `identities_foreign`.
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// The nodes whose gossip facts this node takes only when signed by
    /// their facts key (those that recorded one).
    #[serde(default)]
    pub facts_keys: u64,
}

/// `GET /v1/internal/gossip-keys` (node certificates only; answered by
/// nodes that hold the data key), and part of a join's answer: the gossip
/// keyring the cluster's state holds now.
/// Unknown fields are ignored: a newer voter may add some.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct GossipKeys {
    /// Grows with every change of the ring.
    pub generation: u64,
    /// The keyring (JSON: keys by id, and the primary). Secret: it travels
    /// only over mTLS and is kept in a 0600 file.
    pub keyring: String,
    /// Whether the cluster seals its gossip already (every node reads
    /// format 7): a node that joins then speaks sealed from the start.
    #[serde(default)]
    pub sealed: bool,
}

impl std::fmt::Debug for GossipKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GossipKeys(generation {}, sealed {}, keys secret)",
            self.generation, self.sealed
        )
    }
}

/// `POST /v1/internal/task-secrets` (node certificates only; answered by
/// nodes that hold the data key): a node that holds no data key asks for
/// the secrets of a task placed on it, as it starts the task.
/// Unknown fields are ignored: a newer node may add some.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TaskSecretsRequest {
    /// The task's id (`APP.SERVICE.SLOT.SERIAL`).
    pub task: String,
}

/// The values of the secrets a task's service lists, each at the version
/// the state holds now. They travel only over the nodes' mTLS.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct TaskSecrets {
    pub secrets: Vec<SecretValue>,
}

#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct SecretValue {
    pub name: String,
    pub version: u64,
    /// The value, base64.
    pub data: String,
}

impl std::fmt::Debug for TaskSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.secrets.iter().map(|s| (&s.name, s.version)))
            .finish()
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data);
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecretValue({} version {}, value secret)",
            self.name, self.version
        )
    }
}

/// `POST /v1/internal/registry-credentials` (node certificates only;
/// answered by nodes that hold the data key): a node that holds no data
/// key asks for the credentials of a registry it is to pull from.
/// Unknown fields are ignored: a newer node may add some.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct RegistryCredentialsRequest {
    /// The registry's host as `shoal registry add` named it.
    pub host: String,
    /// The API token of the operator whose call the asking node answers
    /// (an apply or a pull through a worker), which may stand for the
    /// reason to pull; it travels only over the nodes' mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
}

impl std::fmt::Debug for RegistryCredentialsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentialsRequest")
            .field("host", &self.host)
            .field("operator", &self.operator.as_ref().map(|_| "…"))
            .finish()
    }
}

/// A registry's credentials, opened for a node that pulls from it.
/// Secret: they travel only over mTLS and are kept only in the memory of
/// the node that asked.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryCredentials({}, password secret)", self.username)
    }
}

/// One record the cluster's DNS serves (`shoal dns list`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DnsRecordView {
    /// Fully qualified, without the trailing dot: `web.demo.shoal`.
    pub name: String,
    /// `A` or `SRV`.
    #[serde(rename = "type")]
    pub record_type: String,
    /// An IPv4 address, or `PRIORITY WEIGHT PORT TARGET` for SRV.
    pub value: String,
}

/// Cluster-wide settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Voters the cluster aims for (1, 3, 5 or 7): every node up to 2
    /// nodes, 3 from 3 nodes on, 5 from 5 on, never more than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voters_max: Option<u32>,
    /// Where tasks' addresses come from (default 10.42.0.0/16); each node
    /// gets a subnet of it. Changes only before nodes hold subnets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,
    /// Prefix length of each node's subnet (default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_prefix_len: Option<u8>,
    /// The DNS zone of service names, `SERVICE.APP.ZONE` (default `shoal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_zone: Option<String>,
}

/// `POST /v1/tokens`: a new API token.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// What it is for (shown in listings).
    pub name: String,
    /// `admin`, `deployer` (apps and images) or `reader`.
    pub role: String,
    /// Lifetime in seconds; none for a token that lasts until removed.
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// A token as it is listed: never its secret.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at_ms: u64,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    pub created_by: String,
}

/// A token just made: the only time its secret is shown.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct TokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub view: TokenView,
}

/// `POST /v1/cluster/join-tokens`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenCreate {
    /// `voter` (may vote; admits workers too) or `worker`.
    pub role: String,
    /// Lifetime in seconds (default 3600).
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// How many nodes may join with it (default 1).
    #[serde(default)]
    pub uses: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct JoinTokenView {
    pub id: String,
    pub role: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub uses: u32,
    pub uses_max: u32,
    /// `valid`, `expired`, `used` or `revoked`.
    pub state: String,
    pub created_by: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct JoinTokenCreated {
    /// `SHOAL-1-…`: give it to `shoal agent --token`.
    pub token: String,
    #[serde(flatten)]
    pub view: JoinTokenView,
}

/// `POST /v1/join`: a node asks to join with a token, after it checked
/// the CA the token pins.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    pub name: String,
    /// `voter` or `worker`; by default what the token allows.
    #[serde(default)]
    pub role: Option<String>,
    /// Only its public key is used.
    pub csr_pem: String,
}

#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub chain_pem: String,
    pub roots_pem: String,
    /// Where the answering node gossips (UDP).
    pub gossip_addr: String,
    /// The data key (hex), for voters only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
    /// The keys gossip is sealed with (absent from a leader older than
    /// shoal 0.7, or before the cluster has a keyring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip_keys: Option<GossipKeys>,
}

/// Never shows the data key.
impl std::fmt::Debug for JoinResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinResponse")
            .field("cluster_id", &self.cluster_id)
            .field("gossip_addr", &self.gossip_addr)
            .field("data_key", &self.data_key.as_ref().map(|_| "(secret)"))
            .field("gossip_keys", &self.gossip_keys)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/internal/renew`: a node renews its certificate.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct RenewResponse {
    pub chain_pem: String,
    pub roots_pem: String,
}

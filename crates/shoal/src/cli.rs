//! The command line: one subcommand per job.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "shoal", about = "A masterless container orchestrator", version = crate::commands::version::LONG)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Target {
    /// Address of any shoal node's API (default: the credential's).
    #[arg(long, env = "SHOAL_ADDR", global = true)]
    pub addr: Option<String>,
    /// The CLI's credentials: a config of contexts, or a node's admin.json
    /// (default $HOME/.config/shoal/config.json).
    #[arg(long, env = "SHOAL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Clone)]
pub struct Output {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print the version and git commit of this binary.
    Version,
    /// Run a node of a cluster in the foreground.
    Agent(AgentArgs),
    /// Run a one-node cluster on this machine in the foreground, for trying shoal out.
    Dev(DevArgs),
    /// Create or update an app from a spec file, and follow it until it runs.
    Apply(ApplyArgs),
    /// List apps.
    Apps(ListArgs),
    /// Look at one app.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// List tasks, of every app or of one.
    Ps(PsArgs),
    /// Print the output of a task or of every task of a service.
    Logs(LogsArgs),
    /// Remove an app and stop its containers.
    Rm(RmArgs),
    /// Show what applying a spec would do (where tasks go, what stops, what
    /// cannot be placed and why), without changing anything.
    Plan(PlanArgs),
    /// List the cluster's nodes.
    Nodes(ListArgs),
    /// List the images on the node, or on the nodes named (`--node`,
    /// `--all-nodes`).
    Images(ImagesArgs),
    /// Manage images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// The cluster's DNS: the names of services and their tasks.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// Look at or change the cluster as a whole.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Run by containerd's shim beside each container: appends its stdout
    /// (fd 3) and stderr (fd 4) to PATH.
    #[command(hide = true)]
    LogWriter { path: PathBuf },
    /// Act on the node you talk to.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// API tokens: create, list, revoke.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Registry settings: how nodes reach a registry and who they are there.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Secrets: values services get as files in memory, sealed in the
    /// cluster's state and never shown again.
    Secret {
        #[command(subcommand)]
        command: FileCommand,
    },
    /// Configs: values services get as read-only files.
    Config {
        #[command(subcommand)]
        command: FileCommand,
    },
    /// The CLI's contexts: which cluster and credential it uses.
    Context {
        #[command(subcommand)]
        command: ContextCommand,
    },
}

#[derive(Subcommand)]
pub enum DnsCommand {
    /// The records every node's DNS server answers: SERVICE.APP.ZONE and
    /// SLOT-SERIAL.SERVICE.APP.ZONE (A) of running tasks, SRV of named ports.
    List(ListArgs),
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The cluster's id, leader, voters, learners and settings.
    Info {
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// Join tokens, for nodes to join with.
    Token {
        #[command(subcommand)]
        command: JoinTokenCommand,
    },
    /// The cluster's CA: its roots, and moving to a new one.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Change cluster-wide settings.
    Set {
        /// Voters the cluster aims for: 1, 3, 5 or 7 (default 5).
        #[arg(long)]
        voters_max: Option<u32>,
        /// Where tasks' addresses come from (default 10.42.0.0/16); only
        /// before nodes hold subnets.
        #[arg(long)]
        cluster_cidr: Option<String>,
        /// Prefix length of each node's subnet (default 24).
        #[arg(long)]
        node_prefix_len: Option<u8>,
        /// The DNS zone of service names, SERVICE.APP.ZONE (default shoal).
        #[arg(long)]
        dns_zone: Option<String>,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// The roots every node trusts, the CA that signs, and the generation
    /// of the CA each node has taken (how far a rotation is).
    Info {
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// Move the cluster to a new root, cross-signed by the current one:
    /// every node trusts both and renews onto the new one, then the old
    /// one is trusted no more. No node joins again and no request fails;
    /// join tokens made before it work until it ends. Waits until it has
    /// ended, then this CLI's credential trusts the new root.
    Rotate {
        /// Return once the rotation has started.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long (the rotation goes on).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// The node leaves the cluster: its work moves to other nodes, then it stops.
    Leave {
        #[command(flatten)]
        target: Target,
    },
    /// Taint a node: KEY=VALUE:EFFECT or KEY:EFFECT, EFFECT one of NoSchedule,
    /// PreferNoSchedule, NoExecute (which also moves away work that does
    /// not tolerate it).
    Taint {
        /// The node's name (see `shoal nodes`).
        name: String,
        /// e.g. `gpu=true:NoSchedule`
        taint: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a node's taints: KEY (every effect) or KEY:EFFECT.
    Untaint {
        name: String,
        /// e.g. `gpu` or `gpu:NoSchedule`
        taint: String,
        #[command(flatten)]
        target: Target,
    },
    /// Move a node's work away and keep new work off it.
    Drain {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Let a drained node take work again.
    Undrain {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a node for good: every node refuses its certificate from
    /// now on, and its work is placed elsewhere. It may join again only
    /// with a new join token.
    Rm {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make an API token; its secret is printed once and kept nowhere.
    Create {
        /// What it is for, e.g. `ci`.
        #[arg(long)]
        name: String,
        /// admin (everything), deployer (apps and images) or reader.
        #[arg(long, value_parser = ["admin", "deployer", "reader"])]
        role: String,
        /// How long it lasts, e.g. 30d (default: until removed).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// The API tokens (never their secrets).
    Ls(ListArgs),
    /// Revoke an API token: every node refuses it from now on.
    Rm {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum FileCommand {
    /// Create one from a file, or from stdin with `-f -`.
    Create {
        /// 1 to 64 letters, digits, `-`, `_` and `.`; the file's name in
        /// the container by default.
        name: String,
        /// The value: a file of at most 256 KiB, or `-` for stdin.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// Give one a new value, its next version.
    Update {
        name: String,
        /// The value: a file of at most 256 KiB, or `-` for stdin.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// List them: name, version, size, the services that use them.
    Ls(ListArgs),
    /// Remove one no service lists.
    Rm {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Set how to reach HOST[:PORT] (replacing what was set): plain HTTP
    /// with --insecure, a CA of its own, credentials (the password a
    /// secret of `shoal secret create`, or read from stdin and sealed with
    /// the cluster's data key; never shown again).
    Add {
        /// `HOST[:PORT]` as image references name it, e.g. `registry.example:5000`.
        host: String,
        /// Allow plain HTTP (loopback registries without settings get it anyway).
        #[arg(long)]
        insecure: bool,
        /// A CA certificate (PEM) to trust for this registry.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        #[arg(long, requires = "password")]
        username: Option<String>,
        /// The secret whose value is the password (one line ending at its
        /// end is dropped): a new version of it is used from then on.
        #[arg(long, value_name = "SECRET", group = "password", requires = "username")]
        password_secret: Option<String>,
        /// Read the password from stdin (one line).
        #[arg(long, group = "password", requires = "username")]
        password_stdin: bool,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// The registries with settings (never their passwords).
    Ls(ListArgs),
    /// Forget a registry's settings.
    Rm {
        host: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum JoinTokenCommand {
    /// Make a join token (`SHOAL-1-…`) for `shoal agent --peer ADDR --token TOKEN`.
    Create {
        /// voter (may vote; admits workers too) or worker.
        #[arg(long, default_value = "voter", value_parser = ["voter", "worker"])]
        role: String,
        /// How long it is good for.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// The join tokens: valid, expired, used or revoked.
    Ls(ListArgs),
    /// Revoke a join token.
    Rm {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum ContextCommand {
    /// The contexts in the CLI's config; `*` marks the current one.
    Ls {
        #[arg(long, env = "SHOAL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Make a context the current one.
    Use {
        name: String,
        #[arg(long, env = "SHOAL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Add (or replace) a context from a credential file, e.g. a node's admin.json.
    Add {
        name: String,
        /// The credential file.
        #[arg(long = "from")]
        from: PathBuf,
        #[arg(long, env = "SHOAL_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct AgentArgs {
    /// Name of this node; unique in the cluster.
    #[arg(long, env = "SHOAL_NAME")]
    pub name: Option<String>,
    /// Where the node keeps its state, logs and uploads.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "/var/lib/shoal")]
    pub data_dir: PathBuf,
    /// Address other nodes and clients reach this node at.
    #[arg(long, default_value = "127.0.0.1")]
    pub advertise: String,
    /// Address to bind the API to (defaults to the advertised address).
    #[arg(long)]
    pub bind: Option<String>,
    /// Port of the API and node-to-node RPC.
    #[arg(long, default_value_t = shoal_api::DEFAULT_API_PORT)]
    pub api_port: u16,
    /// Port of gossip (UDP).
    #[arg(long, default_value_t = 7946)]
    pub gossip_port: u16,
    /// How long a dead or departed node stays listed before the cluster
    /// forgets it (and the tasks it had).
    // The default is `shoal_cluster::membership::DEFAULT_FORGET_DEAD_AFTER`
    // (a test holds them equal).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub forget_dead_after: std::time::Duration,
    /// A node of the cluster to join, HOST or HOST:API_PORT; repeat for more.
    /// Not needed when the data dir already belongs to a cluster.
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// The join token (`SHOAL-1-…`, from `shoal cluster token create`) a
    /// new node joins with; a node that joined once rejoins without it.
    #[arg(long, env = "SHOAL_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// What a joining node asks to be: voter (may vote) or worker; by
    /// default what its token allows.
    #[arg(long, value_parser = ["voter", "worker"])]
    pub role: Option<String>,
    #[command(flatten)]
    pub pki: PkiArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Node labels, KEY=VALUE; repeat for more. Constraints, affinities and
    /// spreads match them (`zone` spreads voters too).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub reserve: ReserveArgs,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub allow: AllowArgs,
}

/// What the node lets its tasks do beyond the hardened defaults; each also
/// needs an admin token on the app that asks for it.
#[derive(Args, Clone, Default)]
pub struct AllowArgs {
    /// Run privileged tasks, tasks in the node's PID namespace and tasks
    /// with capabilities beyond the default set.
    #[arg(long)]
    pub allow_privileged: bool,
    /// Run tasks on the node's own network (`security.host_network`).
    #[arg(long)]
    pub allow_host_network: bool,
}

impl AllowArgs {
    pub fn allows(&self) -> shoal_types::Allows {
        shoal_types::Allows {
            privileged: self.allow_privileged,
            host_network: self.allow_host_network,
        }
    }
}

/// The node's container network.
#[derive(Args, Clone)]
pub struct NetworkArgs {
    /// The Linux bridge of this node's tasks (one per node when several
    /// nodes share a host).
    #[arg(long, default_value = shoal_net::bridge::BRIDGE_NAME_DEFAULT)]
    pub bridge: String,
    /// Directory of the CNI plugin binaries; repeat for more.
    #[arg(long = "cni-plugin-dir", default_value = shoal_net::cni::PLUGIN_DIR_DEFAULT)]
    pub cni_plugin_dirs: Vec<PathBuf>,
    /// A CNI conflist (JSON) to use instead of the built-in bridge +
    /// host-local + portmap one; `$SUBNET`, `$GATEWAY`, `$BRIDGE` and
    /// `$IPAM_DIR` in it stand for the node's subnet, its first address,
    /// the bridge and a lease directory in the data dir. Tasks must sit
    /// behind the bridge on the node's subnet (the DNS server is on it).
    #[arg(long)]
    pub cni_config: Option<PathBuf>,
    /// Address range of a new cluster's tasks (default 10.42.0.0/16); each
    /// node gets a /24 of it. Used when this node forms the cluster.
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// The host's resolver config; names outside the cluster's DNS zone
    /// are forwarded to its nameservers.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
}

/// What the node keeps back from tasks for itself and the system.
#[derive(Args, Clone)]
pub struct ReserveArgs {
    /// Cpu not offered to tasks, in cores (`0.5`) or millicores (`500m`).
    #[arg(long, default_value = "100m", value_parser = parse_cpu)]
    pub reserve_cpu: u64,
    /// Memory not offered to tasks (`256Mi`, `1G`).
    #[arg(long, default_value = "256Mi", value_parser = parse_memory)]
    pub reserve_memory: u64,
}

#[derive(Args)]
pub struct DevArgs {
    /// Where the node keeps its state, logs and uploads.
    #[arg(long, default_value = "/var/lib/shoal-dev")]
    pub data_dir: PathBuf,
    /// Address of the API.
    #[arg(long, default_value = "127.0.0.1:7950")]
    pub api: String,
    /// Port of gossip (UDP) on the API's host.
    #[arg(long, default_value_t = 7946)]
    pub gossip_port: u16,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub reserve: ReserveArgs,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub pki: PkiArgs,
    #[command(flatten)]
    pub allow: AllowArgs,
}

#[derive(Args, Clone)]
pub struct PkiArgs {
    /// How long the node certificates this node signs last (1m to 23d);
    /// each renews itself at a random 50–80 % of it, and a node that was
    /// off longer renews it as it starts (up to 7 days after its end).
    #[arg(long, default_value = "12h", value_parser = parse_duration, hide = true)]
    pub cert_lifetime: std::time::Duration,
    /// How old the gossip keyring's key gets before the leader (when this
    /// node leads) rotates it (1s to 90d); removing a node rotates it at once.
    #[arg(long, default_value = "1d", value_parser = parse_duration)]
    pub gossip_key_rotation: std::time::Duration,
}

#[derive(Args, Clone)]
pub struct RuntimeArgs {
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub containerd_socket: PathBuf,
    /// containerd namespace of this node's containers (one per node when
    /// several nodes share a host).
    #[arg(long, default_value = "shoal")]
    pub containerd_namespace: String,
    /// containerd snapshotter for container filesystems.
    #[arg(long, default_value = "overlayfs")]
    pub snapshotter: String,
    /// containerd's root directory: when its filesystem is fuller than
    /// --image-gc-high (percent), pulled images no app names are removed,
    /// the oldest pull first, down to --image-gc-low.
    #[arg(long, default_value = "/var/lib/containerd")]
    pub containerd_root: PathBuf,
    #[arg(long, default_value_t = 85)]
    pub image_gc_high: u8,
    #[arg(long, default_value_t = 80)]
    pub image_gc_low: u8,
    /// How often the image garbage collector looks at the disk.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub image_gc_interval: std::time::Duration,
}

#[derive(Args)]
pub struct ApplyArgs {
    /// The app spec, YAML or JSON (`-` reads standard input).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Return once the spec is accepted, without following the rollout.
    #[arg(long)]
    pub detach: bool,
    /// Give up following after this long (e.g. 90s, 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct PlanArgs {
    /// The app spec, YAML or JSON (`-` reads standard input).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Subcommand)]
pub enum AppCommand {
    /// Show an app's spec, services and tasks.
    Inspect {
        name: String,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args)]
pub struct PsArgs {
    /// Only tasks of this app.
    pub app: Option<String>,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct LogsArgs {
    /// A task id (APP.SERVICE.SLOT.SERIAL) or APP.SERVICE for all its tasks.
    pub target: String,
    /// Keep printing new output.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines of each task.
    #[arg(long)]
    pub tail: Option<usize>,
    #[command(flatten)]
    pub node: Target,
}

#[derive(Args)]
pub struct RmArgs {
    pub app: String,
    /// Return once removal is accepted, without waiting for containers to stop.
    #[arg(long)]
    pub detach: bool,
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Load an image into the node: an OCI layout or `docker save` tarball,
    /// or (with --rootfs) a root filesystem directory made into a one-layer image.
    Import(ImportArgs),
    /// Pull an image from its registry onto the node (`--addr` picks which):
    /// `HOST[:PORT]/REPO:TAG` or `…@sha256:…`. Plain HTTP only for loopback
    /// registries.
    Pull(PullArgs),
    /// Remove an image (by the name `shoal images` lists) from the node, or
    /// from the nodes named; refused where a task runs it or is meant to.
    Rm(ImageRmArgs),
    /// Write a root filesystem directory as a one-layer OCI image layout
    /// tarball, to push to a registry (`skopeo copy oci-archive:FILE:TAG
    /// docker://HOST/REPO:TAG`) or import; no node is asked.
    Pack(PackArgs),
}

#[derive(Args)]
pub struct PackArgs {
    /// The root filesystem directory.
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Image name, e.g. `demo/busybox:latest` (its tag names the image in the layout).
    #[arg(long)]
    pub name: String,
    /// The tarball to write.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
}

#[derive(Args)]
pub struct PullArgs {
    /// The image reference, e.g. `127.0.0.1:5000/web:1.2`.
    pub reference: String,
    #[command(flatten)]
    pub nodes: NodeSelection,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

/// Which nodes an image command acts on; by default the node answering
/// (the credential's, or `--addr`).
#[derive(Args, Clone, Default)]
pub struct NodeSelection {
    /// A node, by name (repeat for several).
    #[arg(long = "node", value_name = "NAME", conflicts_with = "all_nodes")]
    pub nodes: Vec<String>,
    /// Every node alive.
    #[arg(long)]
    pub all_nodes: bool,
}

#[derive(Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub nodes: NodeSelection,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct ImageRmArgs {
    /// The image's name as `shoal images` lists it.
    pub name: String,
    #[command(flatten)]
    pub nodes: NodeSelection,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The tarball (OCI image layout or `docker save`).
    #[arg(required_unless_present = "rootfs", conflicts_with = "rootfs")]
    pub file: Option<PathBuf>,
    /// Make a one-layer image of this root filesystem directory.
    #[arg(long, requires = "name")]
    pub rootfs: Option<PathBuf>,
    /// Image name, e.g. `busybox:latest`; required with --rootfs.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

fn parse_cpu(text: &str) -> Result<u64, String> {
    shoal_types::parse_cpu_millis(text)
}

fn parse_memory(text: &str) -> Result<u64, String> {
    shoal_types::parse_memory_bytes(text)
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("`{text}` is not a duration ({error}); write e.g. 90s or 5m"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    #[test]
    fn the_agents_defaults_are_the_named_ones() {
        let cli = Cli::try_parse_from(["shoal", "agent", "--name", "n1"]).expect("parses");
        let Command::Agent(args) = cli.command else {
            panic!("not the agent");
        };
        assert_eq!(
            args.forget_dead_after,
            shoal_cluster::membership::DEFAULT_FORGET_DEAD_AFTER
        );
        assert_eq!(
            args.gossip_port,
            shoal_cluster::membership::DEFAULT_GOSSIP_PORT
        );
    }
}

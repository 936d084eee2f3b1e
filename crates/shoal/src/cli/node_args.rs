//! The flags of the node process: `shoal agent` and `shoal dev`, what the
//! node allows, its network, what it keeps back, its PKI and runtime.

use std::path::PathBuf;

use clap::Args;

use super::{parse_cpu, parse_duration, parse_label, parse_memory};

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

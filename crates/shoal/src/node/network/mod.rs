//! The node's part of the cluster network: its bridge on the subnet the
//! cluster gave it, each task's namespace wired up by CNI, routes to the
//! other nodes' subnets, masquerading of traffic that leaves the cluster,
//! and the DNS server on the bridge address.
//!
//! Everything here is made from two sources the node has locally, so it
//! keeps working when the node is cut off: the replicated state (subnets,
//! node addresses, running tasks and their addresses) and the node's own
//! records in `DATA_DIR/net` (which task namespaces it made). Only what
//! those records name is ever torn down, so nodes sharing a host (tests,
//! `shoal dev` beside an agent) never touch each other's namespaces.
//!
//! - `bridge`: the bridge on the node's subnet and its CNI conflist.
//! - `tasks`: each task's namespace, CNI attachment, resolv.conf and hosts,
//!   and the garbage pass over leftover ones.
//! - `routes`: routes to the other nodes' subnets and the masquerade rule.
//! - `dns`: the DNS server's records, made from the state.

mod bridge;
mod dns;
mod routes;
mod tasks;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_cluster::log::ReplicatedLog;
use shoal_net::cni::{Cni, NetworkConfigList};
use shoal_net::dns::{DnsConfig, DnsRecords, DnsServer};
use shoal_net::exec::{args, CommandRunner, SystemRunner};
use shoal_net::netns::NetnsManager;
use shoal_net::routes::{HostRoutes, Masquerade};
use shoal_net::subnet::Ipv4Cidr;

pub use bridge::{render_conflist, CNI_CONFIG_BYTES_MAX};
pub use dns::records_from_state;
pub use tasks::{hostname, Attached};

use routes::{desired_routes, masquerade_chain};
use tasks::netns_prefix;

/// How often routes and the masquerade rule are checked again when
/// nothing changes (someone may have flushed them).
const RESYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Tries at taking the routes and the masquerade chain down on leaving.
const TEARDOWN_ATTEMPTS_MAX: u32 = 5;
/// Pause between two of them.
const TEARDOWN_RETRY_PAUSE: Duration = Duration::from_millis(300);
/// Least time between two rebuilds of the DNS records (each walks every task).
const RECORDS_REBUILD_MIN: Duration = Duration::from_millis(100);

/// How the node's network is set up (agent flags).
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// The Linux bridge of this node's tasks.
    pub bridge: String,
    /// Where the CNI plugin binaries are.
    pub cni_plugin_dirs: Vec<PathBuf>,
    /// The cluster CIDR a new cluster starts with (only when this node
    /// forms the cluster).
    pub cluster_cidr: Option<String>,
    /// The host's resolver config: names outside the zone go to its
    /// nameservers.
    pub resolv_conf: PathBuf,
    /// The DNS server's port on the bridge address (53 unless testing).
    pub dns_port: u16,
    /// A CNI conflist to use instead of the generated one, with `$SUBNET`,
    /// `$GATEWAY`, `$BRIDGE` and `$IPAM_DIR` standing for the node's values.
    pub cni_config: Option<String>,
}

/// The bridge as set up for the node's subnet.
#[derive(Clone, Debug, PartialEq)]
struct Ready {
    subnet: Ipv4Cidr,
    list: NetworkConfigList,
}

pub struct NodeNetwork {
    config: NetworkConfig,
    /// `DATA_DIR/net`: `tasks/ID/` for each task namespace this node made
    /// (with its resolv.conf and hosts), `cni/` for results and leases.
    dir: PathBuf,
    cni: Cni,
    netns: NetnsManager<SystemRunner>,
    runner: SystemRunner,
    ready: Mutex<Option<Ready>>,
    /// The zone the DNS server answers from, once it runs.
    served: Mutex<Option<shoal_net::dns::Zone>>,
    /// Set when the node left the cluster and took its network down.
    torn_down: std::sync::atomic::AtomicBool,
}

impl NodeNetwork {
    pub fn new(config: NetworkConfig, data_dir: &Path) -> Self {
        let dir = data_dir.join("net");
        let prefix = netns_prefix(&config.bridge);
        let mut cni = Cni::new(dir.join("cni").join("results"));
        cni.plugin_dirs = config.cni_plugin_dirs.clone();
        Self {
            config,
            dir,
            cni,
            // Named after the bridge too: task ids are unique in a cluster,
            // not on a host that runs nodes of several clusters.
            netns: NetnsManager::with_prefix(SystemRunner::default(), &prefix),
            runner: SystemRunner::default(),
            ready: Mutex::new(None),
            served: Mutex::new(None),
            torn_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn ready(&self) -> Option<Ready> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the node's network (bridge and subnet) is up.
    pub fn is_ready(&self) -> bool {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Takes down what the node set up for the cluster once it has left:
    /// its routes, its masquerade chain and (when no task network is left
    /// on it) its bridge. Blocking.
    pub fn teardown(&self, cluster: Option<Ipv4Cidr>) -> anyhow::Result<()> {
        self.torn_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(cluster) = cluster {
            // The network loop may be adding a rule back as the flag is set
            // (it stops at its next look): what is left busy is tried again.
            let mut attempt = 0;
            loop {
                attempt += 1;
                let done = HostRoutes::new(self.runner.clone(), cluster)
                    .remove_all()
                    .and_then(|_| {
                        Masquerade::new(self.runner.clone(), cluster)
                            .with_chain(&masquerade_chain(&self.config.bridge))
                            .cleanup()
                    });
                match done {
                    Ok(()) => break,
                    Err(error) if attempt >= TEARDOWN_ATTEMPTS_MAX => return Err(error.into()),
                    Err(error) => {
                        tracing::debug!(%error, attempt, "taking the node's network down; again");
                        std::thread::sleep(TEARDOWN_RETRY_PAUSE);
                    }
                }
            }
        }
        if self.attached()?.is_empty() {
            let bridge = self.config.bridge.as_str();
            if self
                .runner
                .run("ip", &args(&["link", "show", "dev", bridge]))?
                .success()
            {
                self.ip(&["link", "del", bridge])?;
            }
        }
        Ok(())
    }

    fn is_torn_down(&self) -> bool {
        self.torn_down.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What the network loop uses, and nothing else: the node's name, the
/// replicated log and the host's network.
pub struct NetworkLoop<L, H> {
    pub node: String,
    pub log: L,
    pub host: Arc<H>,
}

/// What the network loop does to the host: the bridge, the routes and the
/// masquerade rule, the DNS server. [`NodeNetwork`] is the real one.
pub trait HostNetwork: Send + Sync + 'static {
    /// A running DNS server.
    type Dns: Send + Sync + 'static;
    /// Set once the node left the cluster and took its network down.
    fn is_torn_down(&self) -> bool;
    /// The subnet the bridge is ready for, once it is.
    fn prepared(&self) -> Option<Ipv4Cidr>;
    /// Makes the bridge ready for `subnet`. Blocking.
    fn prepare_bridge(&self, subnet: Ipv4Cidr) -> anyhow::Result<()>;
    /// Routes to the other nodes' subnets, and the masquerade rule.
    /// Blocking.
    fn sync_routes(
        &self,
        cluster: Ipv4Cidr,
        wanted: &BTreeMap<Ipv4Cidr, Ipv4Addr>,
    ) -> anyhow::Result<()>;
    /// A DNS server for `zone` on the gateway address of `subnet`, or
    /// `None` (said in the log) when it does not start.
    fn start_dns(
        &self,
        subnet: Ipv4Cidr,
        zone: &str,
    ) -> impl Future<Output = Option<Self::Dns>> + Send;
    /// Replaces every record the server answers with.
    fn set_records(&self, dns: &Self::Dns, records: DnsRecords) -> anyhow::Result<()>;
    /// Stops the DNS server, if one runs, and forgets the zone it served.
    fn stop_dns(&self, dns: Option<Self::Dns>) -> impl Future<Output = ()> + Send;
}

impl HostNetwork for NodeNetwork {
    type Dns = DnsServer;

    fn is_torn_down(&self) -> bool {
        NodeNetwork::is_torn_down(self)
    }

    fn prepared(&self) -> Option<Ipv4Cidr> {
        self.ready().map(|ready| ready.subnet)
    }

    fn prepare_bridge(&self, subnet: Ipv4Cidr) -> anyhow::Result<()> {
        let ready = self.prepare(subnet)?;
        tracing::info!(%subnet, bridge = %self.config.bridge, "node network ready");
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = Some(ready);
        Ok(())
    }

    fn sync_routes(
        &self,
        cluster: Ipv4Cidr,
        wanted: &BTreeMap<Ipv4Cidr, Ipv4Addr>,
    ) -> anyhow::Result<()> {
        NodeNetwork::sync_routes(self, cluster, wanted)
    }

    async fn start_dns(&self, subnet: Ipv4Cidr, zone: &str) -> Option<DnsServer> {
        let listen = SocketAddr::new(subnet.gateway().into(), self.config.dns_port);
        let upstreams = shoal_net::dns::upstreams_from_resolv_conf(&self.config.resolv_conf)
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "no upstream nameservers; names outside the zone get SERVFAIL");
                Vec::new()
            });
        let mut config = DnsConfig::new(listen, upstreams);
        config.zone = zone.to_string();
        match DnsServer::start(config).await {
            Ok(server) => {
                tracing::info!(%listen, %zone, "DNS server started");
                *self.served.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(server.zone().clone());
                Some(server)
            }
            Err(error) => {
                tracing::warn!(%error, %listen, "starting the DNS server");
                None
            }
        }
    }

    fn set_records(&self, dns: &DnsServer, records: DnsRecords) -> anyhow::Result<()> {
        Ok(dns.zone().replace(records)?)
    }

    async fn stop_dns(&self, dns: Option<DnsServer>) {
        NodeNetwork::stop_dns(self, dns).await
    }
}

/// Keeps the node's network in line with the cluster state: the bridge
/// once the node has a subnet, routes to the other nodes' subnets, the
/// masquerade rule, and the DNS server with the records of running tasks.
/// Ends once the node's network is torn down.
pub async fn run<L: ReplicatedLog, H: HostNetwork>(network: NetworkLoop<L, H>) {
    let NetworkLoop { node, log, host } = network;
    let mut changes = log.subscribe();
    let mut dns: Option<(H::Dns, String)> = None;
    let mut synced: Option<(BTreeMap<Ipv4Cidr, Ipv4Addr>, Ipv4Cidr)> = None;
    let mut last_resync = Instant::now();
    let mut records_built_at: Option<u64> = None;
    loop {
        changes.borrow_and_update();
        if host.is_torn_down() {
            stop_dns(&*host, &mut dns).await;
            return;
        }
        let (subnet, cluster, zone, routes, applied) = {
            let state = log.read();
            let subnet = state
                .nodes
                .get(&node)
                .and_then(|node| node.subnet.as_deref())
                .and_then(|text| Ipv4Cidr::parse("subnet", text).ok());
            let cluster = Ipv4Cidr::parse("cluster_cidr", &state.settings.cluster_cidr).ok();
            (
                subnet,
                cluster,
                state.settings.dns_zone.clone(),
                desired_routes(&state, &node),
                state.applied_index,
            )
        };

        if let Some(subnet) = subnet {
            if host.prepared() != Some(subnet) {
                let preparing = host.clone();
                match tokio::task::spawn_blocking(move || preparing.prepare_bridge(subnet)).await {
                    Ok(Ok(())) => {
                        // A new gateway address: the DNS server moves with it.
                        stop_dns(&*host, &mut dns).await;
                    }
                    Ok(Err(error)) => tracing::warn!(%error, %subnet, "setting up the bridge"),
                    Err(error) => tracing::warn!(%error, "setting up the bridge"),
                }
            }
        }

        if let Some(prepared) = host.prepared() {
            if dns.as_ref().is_some_and(|(_, served)| *served != zone) {
                stop_dns(&*host, &mut dns).await;
            }
            if dns.is_none() {
                if let Some(server) = host.start_dns(prepared, &zone).await {
                    dns = Some((server, zone.clone()));
                    records_built_at = None;
                }
            }
        }
        if let Some((server, _)) = &dns {
            if records_built_at != Some(applied) {
                let records = records_from_state(&log.read());
                match host.set_records(server, records) {
                    Ok(()) => records_built_at = Some(applied),
                    Err(error) => tracing::warn!(%error, "updating the DNS records"),
                }
            }
        }

        if let Some(cluster) = cluster {
            let due = last_resync.elapsed() >= RESYNC_INTERVAL;
            if due || synced.as_ref() != Some(&(routes.clone(), cluster)) {
                let (host, wanted) = (host.clone(), routes.clone());
                let outcome =
                    tokio::task::spawn_blocking(move || host.sync_routes(cluster, &wanted)).await;
                match outcome {
                    Ok(Ok(())) => synced = Some((routes, cluster)),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "syncing routes to other nodes");
                        synced = None;
                    }
                    Err(error) => tracing::warn!(%error, "syncing routes"),
                }
                last_resync = Instant::now();
            }
        }

        let passed = Instant::now();
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(RESYNC_INTERVAL) => {}
        }
        // A burst of changes costs one pass per RECORDS_REBUILD_MIN; a lone
        // change is acted on at once.
        tokio::time::sleep(RECORDS_REBUILD_MIN.saturating_sub(passed.elapsed())).await;
    }
}

/// Stops the DNS server the loop runs, if any.
async fn stop_dns<H: HostNetwork>(host: &H, dns: &mut Option<(H::Dns, String)>) {
    host.stop_dns(dns.take().map(|(server, _)| server)).await;
}

#[cfg(test)]
mod loop_tests;
#[cfg(test)]
mod tests;

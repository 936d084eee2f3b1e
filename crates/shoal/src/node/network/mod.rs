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
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_net::cni::{Cni, NetworkConfigList};
use shoal_net::dns::{DnsConfig, DnsServer};
use shoal_net::exec::{args, CommandRunner, SystemRunner};
use shoal_net::netns::NetnsManager;
use shoal_net::routes::{HostRoutes, Masquerade};
use shoal_net::subnet::Ipv4Cidr;

use super::Shared;

pub use bridge::{render_conflist, CNI_CONFIG_BYTES_MAX};
pub use dns::records_from_state;
pub use tasks::{hostname, Attached};

use dns::stop_dns;
use routes::{desired_routes, masquerade_chain};
use tasks::netns_prefix;

/// How often routes and the masquerade rule are checked again when
/// nothing changes (someone may have flushed them).
const RESYNC_INTERVAL: Duration = Duration::from_secs(10);
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

    /// Takes down what the node set up for the cluster once it has left:
    /// its routes, its masquerade chain and (when no task network is left
    /// on it) its bridge. Blocking.
    pub fn teardown(&self, cluster: Option<Ipv4Cidr>) -> anyhow::Result<()> {
        self.torn_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(cluster) = cluster {
            HostRoutes::new(self.runner.clone(), cluster).remove_all()?;
            Masquerade::new(self.runner.clone(), cluster)
                .with_chain(&masquerade_chain(&self.config.bridge))
                .cleanup()?;
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

/// Keeps the node's network in line with the cluster state: the bridge
/// once the node has a subnet, routes to the other nodes' subnets, the
/// masquerade rule, and the DNS server with the records of running tasks.
pub async fn run<R: Send + Sync + 'static>(shared: Arc<Shared<R>>) {
    let network = shared.network.clone();
    let mut changes = shared.raft.subscribe();
    let mut dns: Option<(DnsServer, String)> = None;
    let mut synced: Option<(BTreeMap<Ipv4Cidr, Ipv4Addr>, Ipv4Cidr)> = None;
    let mut last_resync = Instant::now();
    let mut records_built_at: Option<u64> = None;
    loop {
        changes.borrow_and_update();
        if network.is_torn_down() {
            stop_dns(&mut dns, &network).await;
            return;
        }
        let (subnet, cluster, zone, routes, applied) = {
            let state = shared.raft.read();
            let subnet = state
                .nodes
                .get(&shared.config.name)
                .and_then(|node| node.subnet.as_deref())
                .and_then(|text| Ipv4Cidr::parse("subnet", text).ok());
            let cluster = Ipv4Cidr::parse("cluster_cidr", &state.settings.cluster_cidr).ok();
            (
                subnet,
                cluster,
                state.settings.dns_zone.clone(),
                desired_routes(&state, &shared.config.name),
                state.applied_index,
            )
        };

        if let Some(subnet) = subnet {
            let prepared = network.ready().map(|ready| ready.subnet);
            if prepared != Some(subnet) {
                let preparing = network.clone();
                match tokio::task::spawn_blocking(move || preparing.prepare(subnet)).await {
                    Ok(Ok(ready)) => {
                        tracing::info!(%subnet, bridge = %shared.network.config.bridge, "node network ready");
                        *shared
                            .network
                            .ready
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(ready);
                        // A new gateway address: the DNS server moves with it.
                        stop_dns(&mut dns, &network).await;
                    }
                    Ok(Err(error)) => tracing::warn!(%error, %subnet, "setting up the bridge"),
                    Err(error) => tracing::warn!(%error, "setting up the bridge"),
                }
            }
        }

        if let Some(ready) = network.ready() {
            if dns.as_ref().is_some_and(|(_, served)| *served != zone) {
                stop_dns(&mut dns, &network).await;
            }
            if dns.is_none() {
                let listen =
                    SocketAddr::new(ready.subnet.gateway().into(), network.config.dns_port);
                let upstreams =
                    shoal_net::dns::upstreams_from_resolv_conf(&network.config.resolv_conf)
                        .unwrap_or_else(|error| {
                            tracing::warn!(%error, "no upstream nameservers; names outside the zone get SERVFAIL");
                            Vec::new()
                        });
                let mut config = DnsConfig::new(listen, upstreams);
                config.zone = zone.clone();
                match DnsServer::start(config).await {
                    Ok(server) => {
                        tracing::info!(%listen, %zone, "DNS server started");
                        *network.served.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(server.zone().clone());
                        dns = Some((server, zone.clone()));
                        records_built_at = None;
                    }
                    Err(error) => tracing::warn!(%error, %listen, "starting the DNS server"),
                }
            }
        }
        if let Some((server, _)) = &dns {
            if records_built_at != Some(applied) {
                let records = records_from_state(&shared.raft.read());
                match server.zone().replace(records) {
                    Ok(()) => records_built_at = Some(applied),
                    Err(error) => tracing::warn!(%error, "updating the DNS records"),
                }
            }
        }

        if let Some(cluster) = cluster {
            let due = last_resync.elapsed() >= RESYNC_INTERVAL;
            if due || synced.as_ref() != Some(&(routes.clone(), cluster)) {
                let (network, wanted) = (network.clone(), routes.clone());
                let outcome =
                    tokio::task::spawn_blocking(move || network.sync_routes(cluster, &wanted))
                        .await;
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

#[cfg(test)]
mod tests;

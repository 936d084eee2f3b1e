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

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_net::bridge::{port_mappings, BridgeNetwork, PublishedPort};
use shoal_net::cni::{Attachment, Cni, NetworkConfigList};
use shoal_net::dns::{DnsConfig, DnsRecords, DnsRow, DnsServer, ServicePort};
use shoal_net::exec::{args, CommandRunner, SystemRunner};
use shoal_net::netns::NetnsManager;
use shoal_net::routes::{HostRoutes, Masquerade};
use shoal_net::subnet::Ipv4Cidr;
use shoal_runtime::{BindMount, NetworkMode};
use shoal_state::State;
use shoal_types::{DesiredState, Task, TaskState};

use super::Shared;

/// The interface of a task inside its namespace.
pub const TASK_IFNAME: &str = "eth0";
/// How often routes and the masquerade rule are checked again when
/// nothing changes (someone may have flushed them).
const RESYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Least time between two rebuilds of the DNS records (each walks every task).
const RECORDS_REBUILD_MIN: Duration = Duration::from_millis(100);
/// Leftover attachments torn down in one garbage pass.
const GARBAGE_PER_PASS_MAX: usize = 256;
/// Task records listed at most in one pass.
const RECORDS_LISTED_MAX: usize = 65_536;

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

/// Largest `--cni-config` file read.
pub const CNI_CONFIG_BYTES_MAX: u64 = 64 * 1024;

/// A conflist template made into the node's conflist.
pub fn render_conflist(
    template: &str,
    subnet: Ipv4Cidr,
    bridge: &str,
    ipam_dir: &Path,
) -> anyhow::Result<NetworkConfigList> {
    let text = template
        .replace("$SUBNET", &subnet.to_string())
        .replace("$GATEWAY", &subnet.gateway().to_string())
        .replace("$BRIDGE", bridge)
        .replace("$IPAM_DIR", &ipam_dir.to_string_lossy());
    let list: NetworkConfigList = serde_json::from_str(&text).map_err(|error| {
        anyhow::anyhow!("not a CNI conflist ({error}); see `shoal agent --help`")
    })?;
    list.validate()?;
    Ok(list)
}

/// What a task's container needs from its attachment.
pub struct Attached {
    pub network: NetworkMode,
    pub mounts: Vec<BindMount>,
    pub address: Option<Ipv4Addr>,
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

    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.dir.join("tasks").join(task_id)
    }

    fn ready(&self) -> Option<Ready> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The records this node's DNS server answers with, when it runs.
    pub fn served_rows(&self) -> Option<Vec<DnsRow>> {
        self.served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|zone| zone.rows())
    }

    /// Makes the bridge with the subnet's first address (the tasks'
    /// gateway and the DNS server's address) and brings it up. Blocking.
    fn prepare(&self, subnet: Ipv4Cidr) -> anyhow::Result<Ready> {
        let ipam_dir = self.dir.join("cni").join("ipam");
        let list = match &self.config.cni_config {
            Some(template) => render_conflist(template, subnet, &self.config.bridge, &ipam_dir)?,
            None => {
                let mut network = BridgeNetwork::new(subnet, ipam_dir);
                network.bridge = self.config.bridge.clone();
                network.conflist()?
            }
        };
        let bridge = self.config.bridge.as_str();
        let exists = self
            .runner
            .run("ip", &args(&["link", "show", "dev", bridge]))?
            .success();
        if !exists {
            self.ip(&["link", "add", "name", bridge, "type", "bridge"])?;
        }
        let address = format!("{}/{}", subnet.gateway(), subnet.prefix_len());
        // A subnet given anew (the node was forgotten and came back) replaces the old one.
        let shown = self
            .runner
            .run("ip", &args(&["-4", "-o", "addr", "show", "dev", bridge]))?;
        if !shown.stdout_text().contains(&format!(" {address} ")) {
            self.ip(&["addr", "flush", "dev", bridge])?;
            self.ip(&["addr", "add", &address, "dev", bridge])?;
        }
        self.ip(&["link", "set", bridge, "up"])?;
        Ok(Ready { subnet, list })
    }

    fn ip(&self, parts: &[&str]) -> anyhow::Result<()> {
        let output = self.runner.run("ip", &args(parts))?;
        anyhow::ensure!(
            output.success(),
            "`ip {}` failed: {}",
            parts.join(" "),
            output.stderr_text().trim()
        );
        Ok(())
    }

    /// Gives a task what its container needs: for a networked service a
    /// namespace of its own wired to the bridge by CNI (the same one again
    /// when the task restarts), a resolv.conf naming the node's DNS server
    /// and a hosts file; else the node's own network. Blocking.
    pub fn attach(&self, task: &Task, zone: &str) -> anyhow::Result<Attached> {
        if !task.spec.network {
            let resolv = self.config.resolv_conf.clone();
            let mounts = if resolv.exists() {
                vec![BindMount {
                    source: resolv,
                    destination: "/etc/resolv.conf".into(),
                    read_only: true,
                }]
            } else {
                Vec::new()
            };
            return Ok(Attached {
                network: NetworkMode::Host,
                mounts,
                address: None,
            });
        }
        let Some(ready) = self.ready() else {
            anyhow::bail!(
                "the node's network is not ready yet (it has no subnet from the cluster); the task is retried"
            );
        };
        let dir = self.task_dir(&task.id);
        // The record comes first: whatever happens next, a later pass
        // knows to tear it down.
        std::fs::create_dir_all(&dir)?;
        match self.wire(task, zone, &ready, &dir) {
            Ok(attached) => Ok(attached),
            Err(error) => {
                if let Err(cleanup) = self.detach(&task.id) {
                    tracing::warn!(task = %task.id, error = %cleanup, "undoing a failed attachment");
                }
                Err(error)
            }
        }
    }

    fn wire(&self, task: &Task, zone: &str, ready: &Ready, dir: &Path) -> anyhow::Result<Attached> {
        let netns = self.netns.for_task(&task.id)?;
        if !shoal_net::cni::is_namespace(&netns.path) {
            // A plain file is what remains when the namespace's mount went.
            self.netns.delete(&netns.name)?;
            self.netns.create(&task.id)?;
        }
        // The loopback plugin first, as a network of its own (as runtimes do).
        let loopback = loopback_list();
        if self.cni.cached_result(&loopback.name, &task.id)?.is_none() {
            self.cni
                .add(&loopback, &Attachment::new(&task.id, &netns.path, "lo"))?;
        }
        let attachment = Attachment::new(&task.id, &netns.path, TASK_IFNAME)
            .with_port_mappings(&port_mappings(&published_ports(task))?);
        let result = match self.cni.cached_result(&ready.list.name, &task.id)? {
            // A restart of the task: the same interface and address.
            Some(cached) if cached.config == ready.list => cached.result,
            // Set up under another configuration (the node's subnet or
            // --cni-config changed): undone with that one, then anew.
            Some(cached) => {
                self.cni.del(&cached.config, &attachment)?;
                self.cni.add(&ready.list, &attachment)?
            }
            None => self.cni.add(&ready.list, &attachment)?,
        };
        let address = match result.container_ip(TASK_IFNAME) {
            Some(IpAddr::V4(address)) => address,
            other => anyhow::bail!("CNI gave task {} no IPv4 address ({other:?})", task.id),
        };
        let gateway = ready.subnet.gateway();
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, resolv_conf(gateway, &task.app, zone))?;
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, hosts_file(address, &hostname(task)))?;
        Ok(Attached {
            network: NetworkMode::Path(netns.path),
            mounts: vec![
                BindMount {
                    source: resolv,
                    destination: "/etc/resolv.conf".into(),
                    read_only: true,
                },
                BindMount {
                    source: hosts,
                    destination: "/etc/hosts".into(),
                    read_only: true,
                },
            ],
            address: Some(address),
        })
    }

    /// Tears down what [`attach`](Self::attach) made for a task: CNI DEL
    /// (which frees its address), the namespace, the record. Nothing when
    /// the node made nothing for it. Blocking.
    pub fn detach(&self, task_id: &str) -> anyhow::Result<()> {
        let dir = self.task_dir(task_id);
        if !dir.exists() {
            return Ok(());
        }
        let netns = self.netns.for_task(task_id)?;
        let ready = self.ready();
        let name = ready
            .as_ref()
            .map_or(shoal_net::bridge::NETWORK_NAME_DEFAULT, |ready| {
                ready.list.name.as_str()
            });
        // With no cached result an ADD may have died half way: DEL with the
        // current list still frees a lease held under the task's id.
        let list = match self.cni.cached_result(name, task_id)? {
            Some(cached) => Some(cached.config),
            None => ready.map(|ready| ready.list),
        };
        if let Some(list) = list {
            self.cni
                .del(&list, &Attachment::new(task_id, &netns.path, TASK_IFNAME))?;
        }
        self.cni.del(
            &loopback_list(),
            &Attachment::new(task_id, &netns.path, "lo"),
        )?;
        self.netns.delete(&netns.name)?;
        std::fs::remove_dir_all(&dir)?;
        Ok(())
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

    /// The tasks this node holds an attachment for.
    fn attached(&self) -> anyhow::Result<Vec<String>> {
        let entries = match std::fs::read_dir(self.dir.join("tasks")) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        Ok(entries
            .flatten()
            .take(RECORDS_LISTED_MAX)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect())
    }

    /// Tears down attachments of tasks that are neither wanted here nor
    /// have a container (left by a crash between steps). Blocking.
    pub fn collect_garbage(&self, live: &BTreeSet<String>) -> usize {
        let attached = match self.attached() {
            Ok(attached) => attached,
            Err(error) => {
                tracing::warn!(%error, "listing task network records");
                return 0;
            }
        };
        let mut removed = 0;
        for task_id in attached
            .iter()
            .filter(|id| !live.contains(*id))
            .take(GARBAGE_PER_PASS_MAX)
        {
            match self.detach(task_id) {
                Ok(()) => {
                    tracing::info!(task = %task_id, "released a leftover task network");
                    removed += 1;
                }
                Err(error) => {
                    tracing::warn!(task = %task_id, %error, "releasing a leftover task network")
                }
            }
        }
        removed
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

impl NodeNetwork {
    /// Routes to the other nodes' subnets, and the masquerade rule of the
    /// node's own chain. Blocking.
    fn sync_routes(
        &self,
        cluster: Ipv4Cidr,
        wanted: &BTreeMap<Ipv4Cidr, Ipv4Addr>,
    ) -> anyhow::Result<()> {
        let changes = HostRoutes::new(self.runner.clone(), cluster).sync(wanted)?;
        for change in &changes {
            tracing::info!(?change, "route to another node's subnet");
        }
        if self.ready().is_some() {
            Masquerade::new(self.runner.clone(), cluster)
                .with_chain(&masquerade_chain(&self.config.bridge))
                .ensure()?;
        }
        Ok(())
    }
}

/// The prefix of the node's task namespaces: `shoal0-` for `shoal0-APP.SERVICE.SLOT.SERIAL`.
pub fn netns_prefix(bridge: &str) -> String {
    format!("{bridge}-")
}

/// The CNI network that brings a task's loopback interface up.
fn loopback_list() -> NetworkConfigList {
    NetworkConfigList {
        cni_version: shoal_net::cni::CNI_VERSION.into(),
        // A dot, which no app name has: cache files never collide with a
        // task of the bridge network.
        name: "shoal.loopback".into(),
        plugins: vec![serde_json::json!({"type": "loopback"})],
    }
}

/// Stops the DNS server, if one runs, and forgets the zone it served.
async fn stop_dns(dns: &mut Option<(DnsServer, String)>, network: &NodeNetwork) {
    *network.served.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if let Some((server, _)) = dns.take() {
        if let Err(error) = server.shutdown().await {
            tracing::warn!(%error, "stopping the DNS server");
        }
    }
}

/// The node's own iptables chain for masquerading, named after its bridge.
pub fn masquerade_chain(bridge: &str) -> String {
    format!("SHOAL-{bridge}")
}

/// Routes this node needs: every other node's subnet via its advertised
/// address. Nodes advertising a loopback address share this host, so their
/// bridges are reachable directly and need no route.
pub fn desired_routes(state: &State, me: &str) -> BTreeMap<Ipv4Cidr, Ipv4Addr> {
    state
        .nodes
        .values()
        .filter(|node| node.name != me)
        .filter_map(|node| {
            let subnet = Ipv4Cidr::parse("subnet", node.subnet.as_deref()?).ok()?;
            let host = node
                .addr
                .rsplit_once(':')
                .map_or(node.addr.as_str(), |(h, _)| h);
            let via: Ipv4Addr = host.parse().ok()?;
            (!via.is_loopback() && !via.is_unspecified()).then_some((subnet, via))
        })
        .collect()
}

/// The DNS records of every task that runs with an address and is meant
/// to: `SERVICE.APP`, `N-SERIAL.SERVICE.APP` and SRV for named ports.
pub fn records_from_state(state: &State) -> DnsRecords {
    let mut records = DnsRecords::new();
    for task in state.tasks.values() {
        let Some(address) = task.status.address else {
            continue;
        };
        if task.desired != DesiredState::Running
            || task.status.state != TaskState::Running
            || !task.spec.network
        {
            continue;
        }
        let ports: Vec<ServicePort> = task
            .spec
            .ports
            .iter()
            .filter_map(|port| {
                Some(ServicePort {
                    name: port.name.clone()?,
                    protocol: port.protocol,
                    port: port.container_port,
                })
            })
            .collect();
        let label = task_label(task);
        if let Err(error) = records.add_task(&task.app, &task.service, &label, address, &ports) {
            tracing::warn!(task = %task.id, %error, "no DNS record for the task");
        }
    }
    records
}

/// A task's own DNS label: its slot and serial, `2-17` for `app.web.2.17`.
pub fn task_label(task: &Task) -> String {
    let serial = task.id.rsplit('.').next().unwrap_or_default();
    format!("{}-{serial}", task.slot)
}

/// The host name inside a task's container: `SERVICE-SLOT`.
pub fn hostname(task: &Task) -> String {
    format!("{}-{}", task.service, task.slot)
}

/// A task's resolv.conf: the node's DNS server, and search domains so
/// that `web` finds the app's own service and `web.other` another app's.
pub fn resolv_conf(nameserver: Ipv4Addr, app: &str, zone: &str) -> String {
    format!("nameserver {nameserver}\nsearch {app}.{zone} {zone}\noptions ndots:2\n")
}

/// The ports a task publishes on its node, for CNI's `portmap`.
fn published_ports(task: &Task) -> Vec<PublishedPort> {
    task.spec
        .ports
        .iter()
        .filter_map(|port| {
            Some(PublishedPort {
                host_port: port.host_port?,
                container_port: port.container_port,
                protocol: port.protocol,
            })
        })
        .collect()
}

fn hosts_file(address: Ipv4Addr, hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"
    )
}

#[cfg(test)]
mod tests {
    use shoal_state::{Command, Entry};
    use shoal_types::{parse_app, Node, NodeStatus, TaskStatus};

    use super::*;

    fn node(name: &str, addr: &str) -> Node {
        Node {
            name: name.into(),
            addr: addr.into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            cpus: 2,
            memory_total_bytes: 1 << 30,
            cpu_allocatable_millis: 2000,
            memory_allocatable_bytes: 1 << 30,
            labels: Default::default(),
            started_at_ms: 0,
            status: NodeStatus::Alive,
            taints: Vec::new(),
            drain: false,
            subnet: None,
        }
    }

    fn apply(state: &mut State, command: Command) {
        let index = state.applied_index + 1;
        state
            .apply(index, &Entry::trusted(index, &command))
            .expect("applies");
    }

    /// Three nodes (one on loopback) and an app of a networked service
    /// with a named port, a second replica and a service without network.
    fn cluster() -> State {
        let mut state = State::default();
        for (name, addr) in [
            ("a", "192.0.2.1:7950"),
            ("b", "127.0.0.2:7950"),
            ("c", "192.0.2.3:7950"),
        ] {
            apply(
                &mut state,
                Command::RegisterNode {
                    node: node(name, addr),
                },
            );
        }
        let spec = parse_app(
            b"name: demo\nservices:\n  - {name: web, image: x, replicas: 3, ports: [{name: http, container_port: 80}, {container_port: 81}]}\n  - {name: host, image: x, network: false}\n",
        )
        .expect("spec");
        apply(&mut state, Command::PutApp { spec });
        let plan = shoal_sched::reconcile(&state);
        apply(&mut state, Command::ApplyPlan { plan });
        state
    }

    fn report(state: &mut State, task_id: &str, task_state: TaskState, address: Option<Ipv4Addr>) {
        let task = state.tasks[task_id].clone();
        let status = TaskStatus {
            attempt: 1,
            state: task_state,
            promise: shoal_types::Promise::Kept,
            message: String::new(),
            container_id: Some(task_id.into()),
            exit_code: None,
            restarts: 0,
            started_at_ms: Some(1),
            updated_at_ms: 1,
            address,
        };
        apply(
            state,
            Command::ReportTasks {
                node: task.node,
                statuses: vec![(task_id.to_string(), status)],
            },
        );
    }

    #[test]
    fn routes_go_to_every_other_node_but_loopback_ones() {
        let state = cluster();
        let routes = desired_routes(&state, "a");
        let subnet = |name: &str| {
            Ipv4Cidr::parse(
                "subnet",
                state.nodes[name].subnet.as_deref().expect("subnet"),
            )
            .expect("cidr")
        };
        assert_eq!(
            routes,
            BTreeMap::from([(subnet("c"), Ipv4Addr::new(192, 0, 2, 3))]),
            "not to itself, not via 127.0.0.2"
        );
    }

    #[test]
    fn records_name_running_networked_tasks_with_an_address() {
        let mut state = cluster();
        let mut web: Vec<String> = state
            .tasks
            .values()
            .filter(|task| task.service == "web")
            .map(|task| task.id.clone())
            .collect();
        web.sort();
        let host = state
            .tasks
            .values()
            .find(|task| task.service == "host")
            .map(|task| task.id.clone())
            .expect("host task");
        report(
            &mut state,
            &web[0],
            TaskState::Running,
            Some(Ipv4Addr::new(10, 42, 0, 2)),
        );
        report(
            &mut state,
            &web[1],
            TaskState::Running,
            Some(Ipv4Addr::new(10, 42, 1, 2)),
        );
        // Starting: no record yet. Exited: none any more.
        report(
            &mut state,
            &web[2],
            TaskState::Starting,
            Some(Ipv4Addr::new(10, 42, 2, 2)),
        );
        report(&mut state, &host, TaskState::Running, None);
        let rows = records_from_state(&state).rows("shoal");
        let listed: Vec<(String, &str, String)> = rows
            .into_iter()
            .map(|row| (row.name, row.record_type, row.value))
            .collect();
        let label = |id: &str| task_label(&state.tasks[id]);
        let (l0, l1) = (label(&web[0]), label(&web[1]));
        let mut expected = vec![
            (format!("{l0}.web.demo.shoal"), "A", "10.42.0.2".to_string()),
            (format!("{l1}.web.demo.shoal"), "A", "10.42.1.2".to_string()),
            (
                "_http._tcp.web.demo.shoal".into(),
                "SRV",
                format!("0 1 80 {l0}.web.demo.shoal"),
            ),
            (
                "_http._tcp.web.demo.shoal".into(),
                "SRV",
                format!("0 1 80 {l1}.web.demo.shoal"),
            ),
            ("web.demo.shoal".into(), "A", "10.42.0.2".into()),
            ("web.demo.shoal".into(), "A", "10.42.1.2".into()),
        ];
        expected.sort();
        assert_eq!(listed, expected);

        report(
            &mut state,
            &web[1],
            TaskState::Exited,
            Some(Ipv4Addr::new(10, 42, 1, 2)),
        );
        let rows = records_from_state(&state).rows("shoal");
        assert!(
            rows.iter()
                .all(|row| !row.value.contains("10.42.1.2") && !row.value.contains(&l1)),
            "{rows:?}"
        );
    }

    #[test]
    fn a_task_finds_the_node_dns_and_its_app_first() {
        assert_eq!(
            resolv_conf(Ipv4Addr::new(10, 42, 3, 1), "demo", "shoal"),
            "nameserver 10.42.3.1\nsearch demo.shoal shoal\noptions ndots:2\n"
        );
        assert_eq!(masquerade_chain("shoal0"), "SHOAL-shoal0");
    }
}

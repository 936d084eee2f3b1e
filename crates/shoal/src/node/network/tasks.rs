//! Each task's network: a namespace of its own wired to the bridge by CNI
//! (with its published ports), its resolv.conf and hosts file, undone when
//! the task stops or by the garbage pass when a crash left one behind.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use shoal_net::bridge::{port_mappings, PublishedPort};
use shoal_net::cni::{Attachment, NetworkConfigList};
use shoal_runtime::{BindMount, NetworkMode};
use shoal_types::Task;

use super::{NodeNetwork, Ready};

/// The interface of a task inside its namespace.
pub const TASK_IFNAME: &str = "eth0";
/// Leftover attachments torn down in one garbage pass.
const GARBAGE_PER_PASS_MAX: usize = 256;
/// Task records listed at most in one pass.
const RECORDS_LISTED_MAX: usize = 65_536;

/// What a task's container needs from its attachment.
pub struct Attached {
    pub network: NetworkMode,
    pub mounts: Vec<BindMount>,
    pub address: Option<Ipv4Addr>,
}

impl NodeNetwork {
    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.dir.join("tasks").join(task_id)
    }

    /// Gives a task what its container needs: for a networked service a
    /// namespace of its own wired to the bridge by CNI (the same one again
    /// when the task restarts), a resolv.conf naming the node's DNS server
    /// and a hosts file; with `security.host_network` the node's network
    /// and resolv.conf; else a namespace of its own that holds only its
    /// loopback (the runtime makes it, with the container). Blocking.
    pub fn attach(&self, task: &Task, zone: &str) -> anyhow::Result<Attached> {
        if !task.spec.network && task.spec.security().host_network {
            // On the node's own network (its operator allows it): the
            // node's resolver config too.
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
        if !task.spec.network {
            return Ok(Attached {
                network: NetworkMode::Isolated,
                mounts: Vec::new(),
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

    /// The tasks this node holds an attachment for.
    pub(super) fn attached(&self) -> anyhow::Result<Vec<String>> {
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

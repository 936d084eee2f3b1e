//! The DNS records the node's server answers with, made from its own
//! replica of the state, and the zone it serves.

use shoal_net::dns::{DnsRecords, DnsRow, DnsServer, ServicePort};
use shoal_state::State;
use shoal_types::{DesiredState, Task, TaskState};

use super::NodeNetwork;

impl NodeNetwork {
    /// The records this node's DNS server answers with, when it runs.
    pub fn served_rows(&self) -> Option<Vec<DnsRow>> {
        self.served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|zone| zone.rows())
    }

    /// Stops the DNS server, if one runs, and forgets the zone it served.
    pub(super) async fn stop_dns(&self, dns: Option<DnsServer>) {
        *self.served.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(server) = dns {
            if let Err(error) = server.shutdown().await {
                tracing::warn!(%error, "stopping the DNS server");
            }
        }
    }
}

/// The DNS records of every task that runs with an address and is meant
/// to: `SERVICE.APP`, `N-SERIAL.SERVICE.APP` and SRV for named ports. A
/// task of a service with a check has records only while its node says it
/// is healthy (not before its first check, nor once checks fail).
pub fn records_from_state(state: &State) -> DnsRecords {
    let mut records = DnsRecords::new();
    for task in state.tasks.values() {
        let Some(address) = task.status.address else {
            continue;
        };
        if task.desired != DesiredState::Running
            || task.status.state != TaskState::Running
            || !task.spec.network
            || task
                .health()
                .is_some_and(|health| health != shoal_types::Health::Healthy)
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

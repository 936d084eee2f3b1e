//! The record set the caller builds: A and SRV records by names relative
//! to the zone, each name checked, at most [`RECORDS_MAX`] records, listed
//! as the rows of `shoal dns list`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use shoal_types::Protocol;

use super::{DnsError, RECORDS_MAX};

/// An SRV record's data; `target` is a name inside the zone (relative).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SrvValue {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// A named port of a service, published as an SRV record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One row of `shoal dns list`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DnsRow {
    /// Fully qualified, without the trailing dot, e.g. `web.demo.shoal`.
    pub name: String,
    /// `A` or `SRV`.
    pub record_type: &'static str,
    /// `10.42.0.2`, or `PRIORITY WEIGHT PORT TARGET` for SRV.
    pub value: String,
}

/// The records of the zone, by names relative to the zone (`web.demo`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsRecords {
    pub(super) a: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    pub(super) srv: BTreeMap<String, BTreeSet<SrvValue>>,
    count: usize,
}

impl DnsRecords {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an A record for `name` (relative to the zone, e.g. `web.demo`).
    pub fn add_a(&mut self, name: &str, address: Ipv4Addr) -> Result<(), DnsError> {
        let name = relative_name(name)?;
        if self.a.get(&name).is_some_and(|set| set.contains(&address)) {
            return Ok(());
        }
        self.count_one()?;
        self.a.entry(name).or_default().insert(address);
        Ok(())
    }

    /// Adds an SRV record for `name` pointing at `target` (both relative).
    pub fn add_srv(&mut self, name: &str, value: SrvValue) -> Result<(), DnsError> {
        let name = relative_srv_name(name)?;
        let value = SrvValue {
            target: relative_name(&value.target)?,
            ..value
        };
        if self.srv.get(&name).is_some_and(|set| set.contains(&value)) {
            return Ok(());
        }
        self.count_one()?;
        self.srv.entry(name).or_default().insert(value);
        Ok(())
    }

    /// Adds one running task of a service: `SERVICE.APP` and
    /// `TASK.SERVICE.APP` resolve to its address, and each named port gets
    /// `_PORT._PROTO.SERVICE.APP SRV 0 1 PORT TASK.SERVICE.APP`.
    pub fn add_task(
        &mut self,
        app: &str,
        service: &str,
        task_id: &str,
        address: Ipv4Addr,
        ports: &[ServicePort],
    ) -> Result<(), DnsError> {
        let service_name = format!("{service}.{app}");
        let task_name = format!("{task_id}.{service_name}");
        self.add_a(&service_name, address)?;
        self.add_a(&task_name, address)?;
        for port in ports {
            self.add_srv(
                &format!("_{}._{}.{service_name}", port.name, port.protocol),
                SrvValue {
                    priority: 0,
                    weight: 1,
                    port: port.port,
                    target: task_name.clone(),
                },
            )?;
        }
        Ok(())
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Every record as a row, names qualified with `zone`, sorted.
    pub fn rows(&self, zone: &str) -> Vec<DnsRow> {
        let zone = zone.trim_end_matches('.');
        let mut rows = Vec::with_capacity(self.count);
        for (name, addresses) in &self.a {
            for address in addresses {
                rows.push(DnsRow {
                    name: format!("{name}.{zone}"),
                    record_type: "A",
                    value: address.to_string(),
                });
            }
        }
        for (name, values) in &self.srv {
            for v in values {
                rows.push(DnsRow {
                    name: format!("{name}.{zone}"),
                    record_type: "SRV",
                    value: format!("{} {} {} {}.{zone}", v.priority, v.weight, v.port, v.target),
                });
            }
        }
        rows.sort();
        rows
    }

    fn count_one(&mut self) -> Result<(), DnsError> {
        if self.count >= RECORDS_MAX {
            return Err(DnsError::TooManyRecords);
        }
        self.count += 1;
        Ok(())
    }
}

/// A host name relative to the zone: labels of letters, digits and `-`.
pub(super) fn relative_name(name: &str) -> Result<String, DnsError> {
    check_labels(name, false)
}

/// SRV owner names also have `_port._proto` labels.
fn relative_srv_name(name: &str) -> Result<String, DnsError> {
    check_labels(name, true)
}

fn check_labels(name: &str, underscore: bool) -> Result<String, DnsError> {
    const NAME_BYTES_MAX: usize = 200;
    let invalid = |reason: &str| DnsError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    if lower.is_empty() || lower.len() > NAME_BYTES_MAX {
        return Err(invalid("must be 1 to 200 characters"));
    }
    for label in lower.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid("every label must be 1 to 63 characters"));
        }
        let ok = label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || (underscore && c == '_'));
        if !ok {
            return Err(invalid("labels hold letters, digits and `-` only"));
        }
    }
    Ok(lower)
}

//! The zone as served: the record set compiled into records by name (with
//! the names that exist between them and the apex), swapped as one value,
//! and the lookup of one name in it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use super::records::relative_name;
use super::{DnsError, DnsRecords, DnsRow};

/// The zone's records compiled for lookups, swapped as one value.
struct ZoneData {
    source: DnsRecords,
    by_name: HashMap<LowerName, Vec<Record>>,
    /// Every name that exists, with the names between it and the zone
    /// ("empty non-terminals" answer NODATA, not NXDOMAIN).
    existing: HashSet<LowerName>,
}

/// What a lookup in the zone found.
pub(super) struct Answer {
    pub(super) code: ResponseCode,
    pub(super) answers: Vec<Record>,
    pub(super) additionals: Vec<Record>,
    /// The SOA goes in the authority section of negative answers.
    pub(super) negative: bool,
}

/// The zone's name, TTL and current records; cheap to clone, shared with
/// the server. `replace` swaps the whole set at once.
#[derive(Clone)]
pub struct Zone {
    origin: Name,
    ttl_s: u32,
    pub(super) soa: Record,
    data: Arc<RwLock<Arc<ZoneData>>>,
}

impl Zone {
    /// An empty zone named `origin` (e.g. `shoal`).
    pub fn new(origin: &str, ttl_s: u32) -> Result<Self, DnsError> {
        let relative = relative_name(origin)?;
        let origin = fqdn(&relative)?;
        let mname = fqdn(&format!("ns.{relative}"))?;
        let rname = fqdn(&format!("hostmaster.{relative}"))?;
        // Serial, refresh, retry, expire mean nothing without zone
        // transfers; minimum is the negative-answer TTL.
        let soa = SOA::new(mname, rname, 1, 3600, 600, 86400, ttl_s);
        let soa = Record::from_rdata(origin.clone(), ttl_s, RData::SOA(soa));
        let zone = Self {
            origin,
            ttl_s,
            soa,
            data: Arc::new(RwLock::new(Arc::new(ZoneData {
                source: DnsRecords::new(),
                by_name: HashMap::new(),
                existing: HashSet::new(),
            }))),
        };
        zone.replace(DnsRecords::new())?;
        Ok(zone)
    }

    /// The zone's name without the trailing dot.
    pub fn origin(&self) -> String {
        self.origin.to_ascii().trim_end_matches('.').to_owned()
    }

    /// Replaces every record at once; queries see the old or the new set.
    pub fn replace(&self, records: DnsRecords) -> Result<(), DnsError> {
        let data = self.compile(records)?;
        let mut slot = self.data.write().unwrap_or_else(|e| e.into_inner());
        *slot = Arc::new(data);
        Ok(())
    }

    /// The records served now.
    pub fn records(&self) -> DnsRecords {
        self.current().source.clone()
    }

    /// The records served now, as rows for `shoal dns list`.
    pub fn rows(&self) -> Vec<DnsRow> {
        self.current().source.rows(&self.origin())
    }

    /// The records of `query_type` at `name`, with the A records of SRV
    /// targets as additionals.
    pub(super) fn lookup(&self, name: &LowerName, query_type: RecordType) -> Answer {
        let data = self.current();
        let at_name = data.by_name.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let mut answers: Vec<Record> = at_name
            .iter()
            .filter(|r| query_type == RecordType::ANY || r.record_type() == query_type)
            .cloned()
            .collect();
        if *name == LowerName::from(&self.origin)
            && matches!(query_type, RecordType::SOA | RecordType::ANY)
        {
            answers.push(self.soa.clone());
        }
        // Give the addresses of SRV targets along, saving a round trip.
        let mut additionals = Vec::new();
        for record in &answers {
            if let RData::SRV(srv) = &record.data {
                if let Some(targets) = data.by_name.get(&LowerName::from(&srv.target)) {
                    additionals.extend(
                        targets
                            .iter()
                            .filter(|r| r.record_type() == RecordType::A)
                            .cloned(),
                    );
                }
            }
        }
        let exists = data.existing.contains(name);
        Answer {
            code: if exists {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            },
            negative: answers.is_empty(),
            answers,
            additionals,
        }
    }

    fn current(&self) -> Arc<ZoneData> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn compile(&self, source: DnsRecords) -> Result<ZoneData, DnsError> {
        let mut by_name: HashMap<LowerName, Vec<Record>> = HashMap::new();
        let mut existing = HashSet::new();
        existing.insert(LowerName::from(&self.origin));
        for (name, addresses) in &source.a {
            let owner = self.absolute(name)?;
            for address in addresses {
                by_name
                    .entry(LowerName::from(&owner))
                    .or_default()
                    .push(Record::from_rdata(
                        owner.clone(),
                        self.ttl_s,
                        RData::A(A(*address)),
                    ));
            }
        }
        for (name, values) in &source.srv {
            let owner = self.absolute(name)?;
            for v in values {
                let srv = SRV::new(v.priority, v.weight, v.port, self.absolute(&v.target)?);
                by_name
                    .entry(LowerName::from(&owner))
                    .or_default()
                    .push(Record::from_rdata(
                        owner.clone(),
                        self.ttl_s,
                        RData::SRV(srv),
                    ));
            }
        }
        for name in by_name.keys() {
            let mut name = name.clone();
            // Walk up to the zone: at most one step per label.
            for _ in 0..=name.num_labels() {
                if !existing.insert(name.clone()) || !self.contains(&name) {
                    break;
                }
                name = name.base_name();
            }
        }
        Ok(ZoneData {
            source,
            by_name,
            existing,
        })
    }

    fn absolute(&self, relative: &str) -> Result<Name, DnsError> {
        let name = Name::from_ascii(relative).map_err(|e| DnsError::InvalidName {
            name: relative.to_owned(),
            reason: e.to_string(),
        })?;
        name.append_domain(&self.origin)
            .map_err(|e| DnsError::InvalidName {
                name: relative.to_owned(),
                reason: e.to_string(),
            })
    }

    pub(super) fn contains(&self, name: &LowerName) -> bool {
        LowerName::from(&self.origin).zone_of(name)
    }
}

fn fqdn(name: &str) -> Result<Name, DnsError> {
    let mut parsed = Name::from_ascii(name).map_err(|e| DnsError::InvalidName {
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

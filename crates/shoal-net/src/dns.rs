//! The cluster's DNS server: one zone (`shoal` by default) answered from
//! memory, everything else forwarded to the host's resolvers.
//!
//! Tasks point their resolver at their node's server. Inside the zone,
//! `SERVICE.APP.shoal` has an A record per running task,
//! `TASK.SERVICE.APP.shoal` names one task, and
//! `_PORT._PROTO.SERVICE.APP.shoal` has SRV records pointing at those task
//! names. The caller (the node, following the replicated state) replaces the
//! whole record set at once, so a query sees either the old set or the new
//! one; TTLs are short because tasks come and go within seconds.
//!
//! The wire format and the UDP/TCP serving are hickory's (`Server` with our
//! own `RequestHandler`). Forwarding is ours: the query goes as it came (with
//! a fresh id) to each upstream in turn over UDP with a bounded wait. We do
//! not use hickory's forwarder, which needs the whole hickory resolver and
//! its configuration for what is one datagram out and one back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

use shoal_types::Protocol;

/// The zone served when the operator names none (not `.local`, which is
/// multicast DNS's).
pub const ZONE_DEFAULT: &str = "shoal";
/// TTL of our records: records change within a second of a task moving.
pub const TTL_S_DEFAULT: u32 = 5;
/// How long to wait for one upstream resolver.
pub const FORWARD_TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// Upstreams used at most, as glibc's resolver does (MAXNS).
pub const UPSTREAMS_MAX: usize = 3;
/// Records in one record set.
pub const RECORDS_MAX: usize = 1_000_000;
/// Bytes of a DNS message over UDP we accept from an upstream.
pub const UDP_MESSAGE_BYTES_MAX: usize = 65_535;
/// Bytes of a resolv.conf we agree to read.
pub const RESOLV_CONF_BYTES_MAX: u64 = 64 * 1024;
/// Datagrams from an upstream ignored (wrong id) while waiting for the answer.
const STRAY_DATAGRAMS_MAX: usize = 16;
/// An idle TCP client is dropped after this long.
const TCP_IDLE_TIMEOUT_MS: u64 = 5_000;
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER_MAX: usize = 16;
/// Tries at finding one port free for both UDP and TCP.
const PORT_TRIES_MAX: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns name `{name}`: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("the record set holds more than {RECORDS_MAX} records; split the cluster or raise the limit")]
    TooManyRecords,
    #[error("cannot bind the DNS server to {addr} ({protocol}): {source}; is the port taken or privileged?")]
    Bind {
        addr: SocketAddr,
        protocol: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {reason}")]
    ResolvConf { path: String, reason: String },
    #[error("DNS server stopped with an error: {0}")]
    Server(String),
}

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
    a: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    srv: BTreeMap<String, BTreeSet<SrvValue>>,
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
fn relative_name(name: &str) -> Result<String, DnsError> {
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

/// The zone's records compiled for lookups, swapped as one value.
struct ZoneData {
    source: DnsRecords,
    by_name: HashMap<LowerName, Vec<Record>>,
    /// Every name that exists, with the names between it and the zone
    /// ("empty non-terminals" answer NODATA, not NXDOMAIN).
    existing: HashSet<LowerName>,
}

/// The zone's name, TTL and current records; cheap to clone, shared with
/// the server. `replace` swaps the whole set at once.
#[derive(Clone)]
pub struct Zone {
    origin: Name,
    ttl_s: u32,
    soa: Record,
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

    fn contains(&self, name: &LowerName) -> bool {
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

/// The nameservers of a resolv.conf, as port-53 socket addresses, at most
/// [`UPSTREAMS_MAX`]. Scoped IPv6 addresses (`fe80::1%eth0`) are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let address = IpAddr::from_str(words.next()?).ok()?;
            Some(SocketAddr::new(address, 53))
        })
        .take(UPSTREAMS_MAX)
        .collect()
}

/// The upstreams of the host, from a resolv.conf file.
pub fn upstreams_from_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    let error = |reason: String| DnsError::ResolvConf {
        path: path.display().to_string(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| error(e.to_string()))?
        .len();
    if size > RESOLV_CONF_BYTES_MAX {
        return Err(error(format!("larger than {RESOLV_CONF_BYTES_MAX} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    Ok(parse_resolv_conf(&text))
}

/// How the server runs.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Where to serve, UDP and TCP; port 0 picks one free for both.
    pub listen: SocketAddr,
    /// The zone answered from memory, e.g. `shoal`.
    pub zone: String,
    /// Where other names go; none means SERVFAIL for them.
    pub upstreams: Vec<SocketAddr>,
    pub forward_timeout_ms: u64,
    pub ttl_s: u32,
}

impl DnsConfig {
    pub fn new(listen: SocketAddr, upstreams: Vec<SocketAddr>) -> Self {
        Self {
            listen,
            zone: ZONE_DEFAULT.into(),
            upstreams,
            forward_timeout_ms: FORWARD_TIMEOUT_MS_DEFAULT,
            ttl_s: TTL_S_DEFAULT,
        }
    }
}

/// A running DNS server.
pub struct DnsServer {
    server: Server<Handler>,
    zone: Zone,
    local_addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP on the configured address and starts serving an
    /// empty zone. Must run inside a tokio runtime.
    pub async fn start(config: DnsConfig) -> Result<Self, DnsError> {
        let zone = Zone::new(&config.zone, config.ttl_s)?;
        let (udp, tcp) = bind_both(config.listen).await?;
        let local_addr = udp.local_addr().map_err(|source| DnsError::Bind {
            addr: config.listen,
            protocol: "udp",
            source,
        })?;
        // Never forward to ourselves: that would loop until the timeout.
        let upstreams: Vec<SocketAddr> = config
            .upstreams
            .iter()
            .copied()
            .filter(|u| *u != local_addr)
            .take(UPSTREAMS_MAX)
            .collect();
        let handler = Handler {
            zone: zone.clone(),
            upstreams,
            forward_timeout_ms: config.forward_timeout_ms,
        };
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(
            tcp,
            Duration::from_millis(TCP_IDLE_TIMEOUT_MS),
            TCP_RESPONSE_BUFFER_MAX,
        );
        Ok(Self {
            server,
            zone,
            local_addr,
        })
    }

    /// The zone; `zone().replace(records)` changes what is served.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// The address served (UDP and TCP share the port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and waits for the server's tasks to end.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|e| DnsError::Server(e.to_string()))
    }
}

async fn bind_both(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let bind_error = |addr, protocol, source| DnsError::Bind {
        addr,
        protocol,
        source,
    };
    let tries = if listen.port() == 0 {
        PORT_TRIES_MAX
    } else {
        1
    };
    let mut last_error = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| bind_error(listen, "udp", e))?;
        let addr = udp.local_addr().map_err(|e| bind_error(listen, "udp", e))?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_error = Some(bind_error(addr, "tcp", e)),
        }
    }
    Err(last_error
        .unwrap_or_else(|| bind_error(listen, "tcp", std::io::Error::other("no port was tried"))))
}

struct Handler {
    zone: Zone,
    upstreams: Vec<SocketAddr>,
    forward_timeout_ms: u64,
}

/// What a lookup in the zone found.
struct Answer {
    code: ResponseCode,
    answers: Vec<Record>,
    additionals: Vec<Record>,
    /// The SOA goes in the authority section of negative answers.
    negative: bool,
}

impl Handler {
    fn lookup(&self, name: &LowerName, query_type: RecordType) -> Answer {
        let data = self.zone.current();
        let at_name = data.by_name.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let mut answers: Vec<Record> = at_name
            .iter()
            .filter(|r| query_type == RecordType::ANY || r.record_type() == query_type)
            .cloned()
            .collect();
        if *name == LowerName::from(&self.zone.origin)
            && matches!(query_type, RecordType::SOA | RecordType::ANY)
        {
            answers.push(self.zone.soa.clone());
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

    /// Sends the query to each upstream in turn; `None` when none answered.
    async fn forward(&self, raw: &[u8]) -> Option<Message> {
        for upstream in &self.upstreams {
            match forward_once(raw, *upstream, self.forward_timeout_ms).await {
                Ok(message) => return Some(message),
                Err(reason) => tracing::debug!(%upstream, reason, "DNS forward failed"),
            }
        }
        None
    }
}

/// One query to one upstream over UDP, with a fresh random id (so an
/// off-path spoofer cannot reuse the client's) and a bounded wait.
async fn forward_once(
    raw: &[u8],
    upstream: SocketAddr,
    timeout_ms: u64,
) -> Result<Message, String> {
    if raw.len() < 12 {
        return Err("query shorter than a DNS header".into());
    }
    let id = random_id();
    let mut query = raw.to_vec();
    query[..2].copy_from_slice(&id.to_be_bytes());
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    socket.connect(upstream).await.map_err(|e| e.to_string())?;
    socket.send(&query).await.map_err(|e| e.to_string())?;
    let wait = async {
        let mut buffer = vec![0u8; UDP_MESSAGE_BYTES_MAX];
        for _ in 0..STRAY_DATAGRAMS_MAX {
            let length = socket.recv(&mut buffer).await.map_err(|e| e.to_string())?;
            let Ok(message) = Message::from_vec(&buffer[..length]) else {
                continue;
            };
            if message.metadata.id == id && message.metadata.message_type == MessageType::Response {
                return Ok(message);
            }
        }
        Err("too many stray datagrams".to_owned())
    };
    tokio::time::timeout(Duration::from_millis(timeout_ms), wait)
        .await
        .map_err(|_| format!("no answer within {timeout_ms} ms"))?
}

fn random_id() -> u16 {
    // RandomState is seeded from the OS once per process and stepped per
    // instance: enough to make ids unpredictable off-path, without a dep.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    (hasher.finish() & 0xffff) as u16
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let response_edns = request.edns.as_ref().map(|edns| {
            let mut ours = Edns::new();
            ours.set_max_payload(edns.max_payload().max(512));
            ours
        });
        let builder = MessageResponseBuilder::new(&request.queries, response_edns.as_ref());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = !self.upstreams.is_empty();

        let query = match request.queries.queries() {
            [query] if request.metadata.message_type == MessageType::Query => query,
            _ => {
                metadata.response_code = ResponseCode::FormErr;
                return send(&mut response_handle, builder.build_no_records(metadata)).await;
            }
        };
        if request.metadata.op_code != OpCode::Query {
            metadata.response_code = ResponseCode::NotImp;
            return send(&mut response_handle, builder.build_no_records(metadata)).await;
        }

        if self.zone.contains(query.name()) {
            let mut answer = self.lookup(query.name(), query.query_type());
            // Additional records are a courtesy: over UDP only to clients
            // that take more than 512 bytes (EDNS), and only as many as fit
            // with room to spare, so that an answer is never marked
            // truncated (and asked again over TCP) for their sake.
            if !answer.additionals.is_empty() && request.protocol().is_datagram() {
                let fitting = match &request.edns {
                    None => 0,
                    Some(edns) => additionals_fitting(
                        query.original(),
                        &answer.answers,
                        &answer.additionals,
                        usize::from(edns.max_payload().max(512))
                            .saturating_sub(ENCODING_SLACK_BYTES),
                    ),
                };
                answer.additionals.truncate(fitting);
            }
            metadata.authoritative = true;
            metadata.response_code = answer.code;
            let soa: &[Record] = if answer.negative {
                std::slice::from_ref(&self.zone.soa)
            } else {
                &[]
            };
            let response = builder.build(
                metadata,
                answer.answers.iter(),
                std::iter::empty(),
                soa.iter(),
                answer.additionals.iter(),
            );
            return send(&mut response_handle, response).await;
        }

        match self.forward(request.as_slice()).await {
            Some(upstream) => {
                metadata.response_code = upstream.metadata.response_code;
                metadata.truncation = upstream.metadata.truncation;
                let response = builder.build(
                    metadata,
                    upstream.answers.iter(),
                    upstream.authorities.iter(),
                    std::iter::empty(),
                    upstream.additionals.iter(),
                );
                send(&mut response_handle, response).await
            }
            None => {
                metadata.response_code = ResponseCode::ServFail;
                send(&mut response_handle, builder.build_no_records(metadata)).await
            }
        }
    }
}

/// Room kept free when sizing additional records: the server's encoder
/// compresses names less than `Message::to_vec` (the question's name is
/// written out again in the first answer).
const ENCODING_SLACK_BYTES: usize = 64;

/// How many of `additionals` (in order) fit with the answers into a UDP
/// message of at most `limit` bytes.
fn additionals_fitting(
    query: &hickory_proto::op::Query,
    answers: &[Record],
    additionals: &[Record],
    limit: usize,
) -> usize {
    // The OPT record of the reply: root name, type, class, TTL, length.
    let opt_bytes = 11;
    let size = |count: usize| {
        let mut message = Message::new(0, MessageType::Response, OpCode::Query);
        message.add_query(query.clone());
        message.add_answers(answers.iter().cloned());
        message.add_additionals(additionals[..count].iter().cloned());
        message
            .to_vec()
            .map_or(usize::MAX, |bytes| bytes.len().saturating_add(opt_bytes))
    };
    if size(additionals.len()) <= limit {
        return additionals.len();
    }
    // The largest count that fits, by halving (a message is encoded at
    // most log2(count) + 1 more times).
    let (mut fits, mut too_many) = (0, additionals.len());
    while too_many - fits > 1 {
        let middle = fits + (too_many - fits) / 2;
        if size(middle) <= limit {
            fits = middle;
        } else {
            too_many = middle;
        }
    }
    fits
}

async fn send<'a, R: ResponseHandler>(
    response_handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    let metadata = *response.metadata();
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, "sending a DNS response failed");
            let mut header = hickory_proto::op::Header {
                metadata,
                counts: Default::default(),
            };
            header.metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(header)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web_records() -> DnsRecords {
        let mut records = DnsRecords::new();
        let http = ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        };
        records
            .add_task(
                "demo",
                "web",
                "t1",
                Ipv4Addr::new(10, 42, 0, 2),
                std::slice::from_ref(&http),
            )
            .unwrap();
        records
            .add_task("demo", "web", "t2", Ipv4Addr::new(10, 42, 1, 2), &[http])
            .unwrap();
        records
    }

    #[test]
    fn tasks_become_a_and_srv_rows() {
        let rows = web_records().rows("shoal");
        let text: Vec<String> = rows
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.record_type, r.value))
            .collect();
        assert_eq!(
            text,
            vec![
                "_http._tcp.web.demo.shoal SRV 0 1 8080 t1.web.demo.shoal",
                "_http._tcp.web.demo.shoal SRV 0 1 8080 t2.web.demo.shoal",
                "t1.web.demo.shoal A 10.42.0.2",
                "t2.web.demo.shoal A 10.42.1.2",
                "web.demo.shoal A 10.42.0.2",
                "web.demo.shoal A 10.42.1.2",
            ]
        );
        assert_eq!(web_records().len(), 6);
    }

    #[test]
    fn names_are_lowercased_and_checked() {
        let mut records = DnsRecords::new();
        records.add_a("Web.Demo", Ipv4Addr::LOCALHOST).unwrap();
        records.add_a("web.demo.", Ipv4Addr::LOCALHOST).unwrap();
        assert_eq!(records.len(), 1);
        let err = records.add_a("we b.demo", Ipv4Addr::LOCALHOST).unwrap_err();
        assert_eq!(
            err.to_string(),
            "dns name `we b.demo`: labels hold letters, digits and `-` only"
        );
        assert!(records.add_a("a..b", Ipv4Addr::LOCALHOST).is_err());
        assert!(records.add_a(&"a".repeat(64), Ipv4Addr::LOCALHOST).is_err());
        assert!(records
            .add_a("_http._tcp.web", Ipv4Addr::LOCALHOST)
            .is_err());
    }

    #[test]
    fn lookups_answer_nodata_and_nxdomain() {
        let zone = Zone::new("shoal", 5).unwrap();
        zone.replace(web_records()).unwrap();
        let handler = Handler {
            zone: zone.clone(),
            upstreams: Vec::new(),
            forward_timeout_ms: 100,
        };
        let name = |n: &str| LowerName::from(Name::from_ascii(n).unwrap());
        let a = handler.lookup(&name("web.demo.shoal."), RecordType::A);
        assert_eq!((a.code, a.answers.len()), (ResponseCode::NoError, 2));
        assert!(a.answers.iter().all(|r| r.ttl == 5));
        let srv = handler.lookup(&name("_http._tcp.web.demo.shoal."), RecordType::SRV);
        assert_eq!(srv.answers.len(), 2);
        assert_eq!(srv.additionals.len(), 2, "the targets' A records go along");
        // An empty non-terminal exists but has no records.
        let demo = handler.lookup(&name("demo.shoal."), RecordType::A);
        assert_eq!(
            (demo.code, demo.answers.len(), demo.negative),
            (ResponseCode::NoError, 0, true)
        );
        let aaaa = handler.lookup(&name("web.demo.shoal."), RecordType::AAAA);
        assert_eq!((aaaa.code, aaaa.negative), (ResponseCode::NoError, true));
        let missing = handler.lookup(&name("db.demo.shoal."), RecordType::A);
        assert_eq!(missing.code, ResponseCode::NXDomain);
        let apex = handler.lookup(&name("shoal."), RecordType::SOA);
        assert_eq!((apex.code, apex.answers.len()), (ResponseCode::NoError, 1));
        // Replacing is seen at once.
        zone.replace(DnsRecords::new()).unwrap();
        let gone = handler.lookup(&name("web.demo.shoal."), RecordType::A);
        assert_eq!(gone.code, ResponseCode::NXDomain);
        assert!(zone.rows().is_empty());
    }

    #[test]
    fn resolv_conf_nameservers_are_read() {
        let text = "# generated\nsearch example.com\nnameserver 192.168.1.1 # router\n\
                    nameserver   2001:db8::53\n;nameserver 9.9.9.9\nnameserver fe80::1%eth0\n\
                    options edns0\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "192.168.1.1:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "1.1.1.1:53".parse().unwrap(),
            ]
        );
        assert!(parse_resolv_conf("nameserver\nnameserver x\n").is_empty());
    }
}

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
//!
//! This module binds the sockets and runs the server; the rest is split by
//! job:
//!
//! - `records`: the record set the caller builds (A and SRV records by
//!   relative name, checked names, the rows of `shoal dns list`).
//! - `zone`: the record set compiled for lookups, swapped as one value, and
//!   the lookup of one name.
//! - `answer`: answering a request: from the zone, forwarded, or an error;
//!   how many additional records fit a UDP reply.
//! - `forward`: sending a query to the upstream resolvers, and reading them
//!   from a resolv.conf.

mod answer;
mod forward;
mod records;
#[cfg(test)]
mod tests;
mod zone;

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

pub use forward::{parse_resolv_conf, upstreams_from_resolv_conf};
pub use records::{DnsRecords, DnsRow, ServicePort, SrvValue};
pub use zone::Zone;

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

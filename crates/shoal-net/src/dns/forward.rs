//! Forwarding a query to the upstream resolvers, one after the other over
//! UDP with a fresh id and a bounded wait, and finding those upstreams in a
//! resolv.conf.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use tokio::net::UdpSocket;

use super::{DnsError, Handler, RESOLV_CONF_BYTES_MAX, UDP_MESSAGE_BYTES_MAX, UPSTREAMS_MAX};

/// Datagrams from an upstream ignored (wrong id) while waiting for the answer.
const STRAY_DATAGRAMS_MAX: usize = 16;

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

impl Handler {
    /// Sends the query to each upstream in turn; `None` when none answered.
    pub(super) async fn forward(&self, raw: &[u8]) -> Option<Message> {
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

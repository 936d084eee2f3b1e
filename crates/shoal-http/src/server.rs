//! Serving a router over TLS: every connection is handshaken in its own
//! task (a slow or silent client never holds up `accept`), within a time
//! limit and a bound on connections at once; the peer's certificate chain,
//! as TLS verified it, rides on every request as a [`Peer`] extension for
//! the routes to decide who may do what.
//!
//! Connections cannot be hoarded: one source address holds at most
//! [`ServeOptions::connections_per_source_max`]; after the handshake,
//! nodes (a client certificate) and clients (none) draw on bounds of their
//! own, so clients cannot take the nodes' share; a request's headers must
//! arrive within [`ServeOptions::header_read_timeout`] (HTTP/1), a
//! request body that a handler waits on sends its next bytes within
//! [`ServeOptions::body_stall_timeout`] or the read fails (a request held
//! in flight by a client that never finishes its body would keep the
//! connection from ever being idle), a response whose next bytes the peer
//! has not taken for [`ServeOptions::send_stall_timeout`], while the
//! connection wrote nothing, cuts the connection (a peer that stops
//! reading, or over HTTP/2 opens no window for it, would hold it in flight
//! for good), and a connection with no
//! request in flight for [`ServeOptions::idle_timeout`] is closed, whatever
//! its protocol.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use bodies::{Activity, BodyPace, InFlight, InFlightBody, StallBody, Written};

mod bodies;

/// Reads when a certificate (DER) ends.
pub type CertEnd = fn(&[u8]) -> Option<std::time::SystemTime>;

/// Which source addresses are nodes' (known to the caller, from its
/// state): their handshakes draw on a share of their own.
#[derive(Clone)]
pub struct NodeSources(pub Arc<dyn Fn(std::net::IpAddr) -> bool + Send + Sync>);

impl std::fmt::Debug for NodeSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSources(..)")
    }
}

/// How a server bounds its connections.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// A client that has not finished its TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// TLS handshakes under way at once from addresses that are not
    /// nodes'; a connection beyond them is closed as it comes, so that a
    /// flood of handshakes takes neither the handshaken connections'
    /// share nor the nodes' handshakes.
    pub handshakes_max: usize,
    /// The same from addresses `node_sources` says are nodes'.
    pub node_handshakes_max: usize,
    /// Which source addresses are nodes' (`None`: none known).
    pub node_sources: Option<NodeSources>,
    /// Handshaken connections open at once.
    pub connections_max: usize,
    /// Connections open at once from one source address; more are closed
    /// as they come.
    pub connections_per_source_max: usize,
    /// Of `connections_max`, what handshaken connections without a client
    /// certificate (API clients) may hold; the rest is the nodes'.
    pub client_connections_max: usize,
    /// HTTP/1: a request's headers (the first, and each next one on a kept
    /// connection) must arrive within this.
    pub header_read_timeout: Duration,
    /// A handler that waits this long for the next bytes of a request's
    /// body gets an error instead.
    pub body_stall_timeout: Duration,
    /// A handler whose waits for a request's body add up to more than
    /// `body_stall_timeout` and a second for every this many bytes that
    /// came gets an error instead (a body trickled a byte at a time);
    /// 0 asks for no pace.
    pub body_min_bytes_per_s: u64,
    /// A response whose body has a frame ready that the connection has not
    /// taken for this long, while the connection wrote no byte, cuts it
    /// (the peer stopped reading, or over HTTP/2 gives the stream no window
    /// and nothing else flows). A body that waits for its own next bytes
    /// (a log followed) is not stalled.
    pub send_stall_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Once told to stop, how long requests in flight may finish.
    pub grace: Duration,
    /// Reads when a client certificate (DER) ends; `None`: ends are not
    /// looked at. A connection whose certificate had already ended when it
    /// was shown (the TLS config may take one, for its node to renew it)
    /// is closed after `expired_client_lifetime`, so that its node comes
    /// back on a new connection with the renewed one.
    pub client_cert_end: Option<CertEnd>,
    pub expired_client_lifetime: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: Duration::from_secs(10),
            handshakes_max: 1024,
            node_handshakes_max: 256,
            node_sources: None,
            connections_max: 4096,
            connections_per_source_max: 256,
            client_connections_max: 3072,
            header_read_timeout: Duration::from_secs(10),
            body_stall_timeout: Duration::from_secs(30),
            body_min_bytes_per_s: 1024,
            send_stall_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            grace: Duration::from_secs(3),
            client_cert_end: None,
            expired_client_lifetime: Duration::from_secs(5),
        }
    }
}

/// TLS handshakes under way from one source address at once.
const HANDSHAKES_PER_SOURCE_MAX: usize = 64;

/// How often a connection looks whether it has been idle, or a response
/// stalled, too long.
const IDLE_CHECK_INTERVAL_MAX: Duration = Duration::from_secs(5);

/// Connections open per source address.
#[derive(Default)]
struct Sources {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection counted against its source; uncounted when dropped.
struct SourceSlot {
    sources: Arc<Sources>,
    ip: std::net::IpAddr,
}

impl Sources {
    /// A slot for a connection from `ip`, unless it holds `max` already.
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<SourceSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Who is at the other end of the connection a request came on.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The client's certificate chain (leaf first) as TLS verified it
    /// against the trusted roots; empty when the client showed none.
    pub certificates: Arc<Vec<CertificateDer<'static>>>,
    /// When the handshake that verified them ended: a certificate that
    /// expires while its connection is open still speaks for its client
    /// there (it was valid when shown); one shown expired did not.
    pub handshake_at: std::time::SystemTime,
}

/// What every connection of one server shares.
struct Server {
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    options: ServeOptions,
    /// Handshaken connections without a client certificate, and with one.
    clients: Arc<Semaphore>,
    nodes: Arc<Semaphore>,
    /// Client connections open per source address.
    sources: Arc<Sources>,
}

/// What an accepted connection holds until its handshake ends, and its
/// place among the open connections until it closes.
struct Accepted {
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    open: tokio::sync::OwnedSemaphorePermit,
    handshaking: (SourceSlot, tokio::sync::OwnedSemaphorePermit),
}

/// Serves `router` on `listener` over TLS until `shutdown` completes, then
/// lets requests in flight finish for [`ServeOptions::grace`].
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Every connection open, handshaken or not: what `accept` waits for
    // (never, while the shares below hold) and what stopping waits to
    // come back.
    let open_max = options
        .connections_max
        .max(1)
        .saturating_add(options.handshakes_max.max(1))
        .saturating_add(options.node_handshakes_max.max(1))
        .min(Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(open_max));
    let handshaking_clients = Arc::new(Semaphore::new(options.handshakes_max.max(1)));
    let handshaking_nodes = Arc::new(Semaphore::new(options.node_handshakes_max.max(1)));
    let server = Arc::new(Server {
        acceptor: tokio_rustls::TlsAcceptor::from(tls),
        router,
        clients: Arc::new(Semaphore::new(
            options
                .client_connections_max
                .clamp(1, options.connections_max.max(1)),
        )),
        nodes: Arc::new(Semaphore::new(
            options
                .connections_max
                .saturating_sub(options.client_connections_max)
                .max(1),
        )),
        sources: Arc::new(Sources::default()),
        options,
    });
    let options = &server.options;
    let handshakes = Arc::new(Sources::default());
    // Told to stop: every connection finishes what is in flight and closes.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let open = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(%error, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Handshakes under way from one address are bounded here; its
        // clients' connections once they are known to be clients (a node's
        // own traffic may share an address with its workloads, masqueraded).
        let Some(per_source) = handshakes.take(addr.ip(), HANDSHAKES_PER_SOURCE_MAX) else {
            tracing::debug!(%addr, "closed: its address has as many handshakes under way as one may");
            continue;
        };
        // Handshakes from nodes' addresses and from any other draw on
        // shares of their own, neither on the handshaken connections'.
        let node_source = options
            .node_sources
            .as_ref()
            .is_some_and(|sources| (sources.0)(addr.ip()));
        let share = if node_source {
            &handshaking_nodes
        } else {
            &handshaking_clients
        };
        let Ok(handshake) = share.clone().try_acquire_owned() else {
            tracing::debug!(%addr, node_source, "closed: as many handshakes are under way as may be");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let accepted = Accepted {
            tcp,
            addr,
            open,
            handshaking: (per_source, handshake),
        };
        tokio::spawn(connection(server.clone(), accepted, stopping.clone()));
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection gives its permit back when it has closed.
    let all = u32::try_from(open_max).unwrap_or(u32::MAX);
    if tokio::time::timeout(server.options.grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::debug!("requests still in flight when the grace ended");
    }
    Ok(())
}

/// One connection: its handshake, its share, then its requests until it
/// closes, idles, stalls or the server stops.
async fn connection(
    server: Arc<Server>,
    accepted: Accepted,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    let Accepted {
        tcp,
        addr,
        open: _open,
        handshaking,
    } = accepted;
    let options = &server.options;
    let stream =
        match tokio::time::timeout(options.handshake_timeout, server.acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%addr, %error, "TLS handshake refused");
                return;
            }
            Err(_) => {
                tracing::debug!(%addr, "TLS handshake timed out");
                return;
            }
        };
    let certificates: Vec<CertificateDer<'static>> = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    // Nodes and clients each draw on their own share.
    drop(handshaking);
    let client = certificates.is_empty();
    let _slot = if client {
        let Some(slot) = server
            .sources
            .take(addr.ip(), options.connections_per_source_max.max(1))
        else {
            tracing::debug!(%addr, "closed: its address holds as many connections as one may");
            return;
        };
        Some(slot)
    } else {
        None
    };
    let class = if client {
        &server.clients
    } else {
        &server.nodes
    };
    let Ok(_class_permit) = class.clone().try_acquire_owned() else {
        tracing::debug!(%addr, "closed: as many connections of its kind are open as may be");
        return;
    };
    let handshake_at = std::time::SystemTime::now();
    let shown_expired = options
        .client_cert_end
        .zip(certificates.first())
        .and_then(|(end, leaf)| end(leaf.as_ref()))
        .is_some_and(|end| end <= handshake_at);
    let peer = Peer {
        addr,
        certificates: Arc::new(certificates),
        handshake_at,
    };
    let activity = Activity::new();
    let counted = activity.clone();
    let router = server.router.clone();
    let pace = BodyPace {
        stall: options.body_stall_timeout,
        min_bytes_per_s: options.body_min_bytes_per_s,
    };
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(peer.clone());
        let in_flight = InFlight::start(&counted);
        let answer = router.clone().oneshot({
            // Only HTTP/1 closes a connection under a body left
            // unread; a client that asked whether to send its body
            // (`Expect: 100-continue`) is not made to send it.
            let drain = request.version() <= hyper::Version::HTTP_11
                && !request.headers().contains_key(hyper::header::EXPECT);
            request.map(|inner| Body::new(StallBody::new(inner, pace, drain)))
        });
        async move {
            let response = answer.await;
            // Until the response's body is sent: the request is in flight
            // as long as the body is.
            response
                .map(|response| response.map(|body| Body::new(InFlightBody::new(body, in_flight))))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Some(options.header_read_timeout));
    let connection = builder
        .serve_connection_with_upgrades(
            TokioIo::new(Written {
                inner: stream,
                activity: activity.clone(),
            }),
            service,
        )
        .into_owned();
    drive(
        connection,
        options,
        &activity,
        addr,
        shown_expired,
        stopping,
    )
    .await;
}

/// Serves `connection` until it ends; closes it gracefully when it idles,
/// when the server stops or when its certificate was shown expired, and
/// cuts it when a response stalls or a close takes longer than the grace.
async fn drive<C>(
    connection: C,
    options: &ServeOptions,
    activity: &Activity,
    addr: SocketAddr,
    shown_expired: bool,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    C: hyper_util::server::graceful::GracefulConnection<
        Error = Box<dyn std::error::Error + Send + Sync>,
    >,
{
    tokio::pin!(connection);
    let check = options
        .idle_timeout
        .min(options.send_stall_timeout)
        .clamp(Duration::from_millis(10), IDLE_CHECK_INTERVAL_MAX);
    let mut closing = false;
    // Once closing, the peer has the grace to let go; then the connection
    // is dropped (an HTTP/2 peer that never answers the shutdown's ping
    // would hold it forever).
    let cut = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(cut);
    let expired = tokio::time::sleep(options.expired_client_lifetime);
    tokio::pin!(expired);
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%addr, %error, "connection ended");
                }
                break;
            }
            () = &mut cut, if closing => {
                tracing::debug!(%addr, "cut: it did not close within the grace");
                break;
            }
            () = &mut expired, if shown_expired && !closing => {
                tracing::debug!(%addr, "closing a connection shown an expired certificate");
                closing = true;
                cut.as_mut().reset(tokio::time::Instant::now() + options.grace);
                connection.as_mut().graceful_shutdown();
            }
            _ = stopping.changed(), if !closing => {
                closing = true;
                cut.as_mut().reset(tokio::time::Instant::now() + options.grace);
                connection.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(check), if !closing => {
                // A peer that takes no bytes would not take a graceful
                // close either.
                if activity.send_stalled() >= options.send_stall_timeout {
                    tracing::debug!(%addr, "cut: a response's bytes were not taken for the send stall timeout");
                    break;
                }
                if activity.idle() >= options.idle_timeout {
                    tracing::debug!(%addr, "closing an idle connection");
                    closing = true;
                    cut.as_mut().reset(tokio::time::Instant::now() + options.grace);
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

//! The server loop against real TLS clients on loopback: one source
//! address cannot hoard connections, idle ones are closed, clients cannot
//! take the nodes' share, and neither a stalled request body nor a
//! response the peer does not take holds a connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_http::{serve, NodeSources, ServeOptions};
use shoal_pki::ca::Ca;
use shoal_pki::identity::{Identity, Role};
use shoal_pki::tls::Credentials;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

fn ca() -> &'static Ca {
    static CA: std::sync::OnceLock<Ca> = std::sync::OnceLock::new();
    CA.get_or_init(|| Ca::generate("test", 1, SystemTime::now()).expect("CA"))
}

/// Credentials of node `name`, or none (an API client) for `None`.
fn credentials(name: Option<&str>) -> Arc<Credentials> {
    let credentials = Credentials::new(ca().cert_pem()).expect("roots");
    if let Some(name) = name {
        let identity = Identity {
            cluster_id: "test".into(),
            role: Role::Voter,
            name: name.into(),
            admission: Identity::new_admission(),
        };
        let (chain, key) = ca()
            .issue_new_key(&identity, Duration::from_secs(3600), SystemTime::now())
            .expect("certificate");
        credentials.set_identity(&chain, &key).expect("identity");
    }
    credentials
}

/// A server of one route (`GET /hello`) on a loopback port.
async fn start(options: ServeOptions) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = axum::Router::new()
        .route("/hello", axum::routing::get(|| async { "hi" }))
        .route(
            "/refuse",
            axum::routing::post(|| async { axum::http::StatusCode::UNAUTHORIZED }),
        )
        .route(
            "/echo",
            axum::routing::post(|body: axum::body::Bytes| async move { body }),
        )
        .route(
            "/big",
            axum::routing::get(|| async { axum::body::Body::new(Chunks(BIG_CHUNKS)) }),
        )
        .route(
            "/late",
            axum::routing::get(|| async {
                axum::body::Body::new(Late(Some(Box::pin(tokio::time::sleep(
                    Duration::from_secs(1),
                )))))
            }),
        );
    let tls = shoal_pki::tls::server_config(credentials(Some("server"))).expect("TLS");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, tls, router, options, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// 64 KiB frames of a response body, as many as asked.
struct Chunks(usize);

const BIG_CHUNKS: usize = 1024;

impl hyper::body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(None);
        }
        self.0 -= 1;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes::Bytes::from(
            vec![b'x'; 64 * 1024],
        )))))
    }
}

/// A body that has its one frame only after a while (a log followed).
struct Late(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl hyper::body::Body for Late {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future;
        let Some(sleep) = self.0.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        std::task::ready!(sleep.as_mut().poll(cx));
        self.0 = None;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(
            bytes::Bytes::from_static(b"late"),
        ))))
    }
}

/// A TLS connection to `addr` from `source`, handshaken and left idle.
async fn connect(
    addr: SocketAddr,
    source: &str,
    node: Option<&str>,
) -> std::io::Result<TlsStream<TcpStream>> {
    connect_alpn(addr, source, node, b"http/1.1").await
}

/// [`connect`], offering one application protocol.
async fn connect_alpn(
    addr: SocketAddr,
    source: &str,
    node: Option<&str>,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let source: IpAddr = source.parse().expect("source address");
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(addr).await?;
    let mut tls = (*shoal_pki::tls::client_config(credentials(node)).expect("client TLS")).clone();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let tls = Arc::new(tls);
    let name = rustls::pki_types::ServerName::try_from("shoal-node").expect("name");
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("handshake timed out")))
}

/// Whether the server closes `stream` within `wait`.
async fn closed_within(stream: &mut TlsStream<TcpStream>, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(wait, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Whether a connection from `source` is taken and served: HTTP/1 by hand.
async fn served(addr: SocketAddr, source: &str) -> bool {
    served_as(addr, source, None).await
}

/// [`served`], showing the certificate of node `node` (`None`: none).
async fn served_as(addr: SocketAddr, source: &str, node: Option<&str>) -> bool {
    use tokio::io::AsyncWriteExt;
    let Ok(mut stream) = connect(addr, source, node).await else {
        return false;
    };
    let request = b"GET /hello HTTP/1.1\r\nhost: shoal-node\r\nconnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    // A peer that closes without TLS close_notify is fine here.
    let _ = read;
    String::from_utf8_lossy(&answer).ends_with("hi")
}

#[tokio::test]
async fn one_source_cannot_hoard_connections_and_idle_ones_close() {
    let (addr, _stop) = start(ServeOptions {
        connections_per_source_max: 4,
        // Longer than the fifth connection is watched below, so that only
        // the per-source bound can close that one.
        idle_timeout: Duration::from_secs(3),
        ..ServeOptions::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            connect(addr, "127.0.0.2", None)
                .await
                .expect("within the bound"),
        );
    }
    // One more from the same address is closed.
    match connect(addr, "127.0.0.2", None).await {
        Err(_) => {}
        Ok(mut fifth) => assert!(
            closed_within(&mut fifth, Duration::from_millis(500)).await,
            "a fifth connection from one address was kept"
        ),
    }
    // Everyone else is served meanwhile.
    assert!(
        served(addr, "127.0.0.3").await,
        "another address was not served"
    );
    // Idle, the four are closed; the address may connect again.
    for (index, stream) in held.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(8)).await,
            "idle connection {index} still open"
        );
    }
    assert!(
        served(addr, "127.0.0.2").await,
        "the address was not served again"
    );
}

#[tokio::test]
async fn clients_cannot_take_the_nodes_share() {
    let (addr, _stop) = start(ServeOptions {
        connections_max: 8,
        client_connections_max: 3,
        ..ServeOptions::default()
    })
    .await;
    let mut clients = Vec::new();
    for index in 0..3 {
        let source = format!("127.0.1.{}", index + 1);
        clients.push(connect(addr, &source, None).await.expect("a client"));
    }
    // The clients' share is full: a fourth is closed...
    let mut fourth = connect(addr, "127.0.1.9", None)
        .await
        .expect("the handshake completes before the share is looked at");
    assert!(
        closed_within(&mut fourth, Duration::from_secs(2)).await,
        "a fourth client connection was kept"
    );
    // ...while a node still gets in, and stays.
    let mut node = connect(addr, "127.0.2.1", Some("peer"))
        .await
        .expect("a node");
    assert!(
        !closed_within(&mut node, Duration::from_secs(1)).await,
        "a node's connection was closed"
    );
    for (index, client) in clients.iter_mut().enumerate() {
        assert!(
            !closed_within(client, Duration::from_millis(100)).await,
            "client {index} was closed"
        );
    }
}

#[tokio::test]
async fn a_nodes_connections_do_not_count_against_its_address() {
    // A node's workloads leave through the node's address (masqueraded):
    // their connections filling the address's bound must not lock the
    // node itself out.
    let (addr, _stop) = start(ServeOptions {
        connections_per_source_max: 2,
        ..ServeOptions::default()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(connect(addr, "127.0.3.1", None).await.expect("a client"));
    }
    let mut third = connect(addr, "127.0.3.1", None)
        .await
        .expect("the handshake completes before the bound is looked at");
    assert!(
        closed_within(&mut third, Duration::from_secs(2)).await,
        "a third client connection from the address was kept"
    );
    let mut node = connect(addr, "127.0.3.1", Some("peer"))
        .await
        .expect("the node");
    assert!(
        !closed_within(&mut node, Duration::from_secs(1)).await,
        "the node was closed for its address's clients"
    );
}

/// A client that sends a request's headers and part of its body, then
/// nothing: the handler reading the body gets an error after the stall
/// timeout, the request ends, and the connection, idle now, is closed.
/// Without the bound the request stayed in flight and the connection open
/// for good.
#[tokio::test]
async fn a_request_whose_body_stalls_does_not_hold_its_connection() {
    use tokio::io::AsyncWriteExt;
    let (addr, _stop) = start(ServeOptions {
        body_stall_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(500),
        ..ServeOptions::default()
    })
    .await;
    let mut stream = connect(addr, "127.0.0.4", None).await.expect("connect");
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nhost: shoal-node\r\ncontent-length: 100\r\n\r\n0123456789",
        )
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the connection stayed open with its body stalled"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A body that arrives whole, if slowly, is read.
    assert!(served(addr, "127.0.0.4").await);
    let mut stream = connect(addr, "127.0.0.4", None).await.expect("connect");
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: shoal-node\r\nconnection: close\r\ncontent-length: 6\r\n\r\nabc")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(150)).await;
    stream.write_all(b"def").await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("abcdef"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_response_the_peer_does_not_take_does_not_hold_its_connection() {
    use tokio::io::AsyncWriteExt;
    let (addr, _stop) = start(ServeOptions {
        connections_per_source_max: 1,
        send_stall_timeout: Duration::from_millis(300),
        // Longer than anything below waits: only the stall can free it.
        idle_timeout: Duration::from_secs(30),
        ..ServeOptions::default()
    })
    .await;
    // HTTP/1: 64 MiB asked for and never read; the socket's buffers fill
    // and the server has a frame it cannot send.
    let mut stalled = connect(addr, "127.0.0.5", None).await.expect("connect");
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nhost: shoal-node\r\n\r\n")
        .await
        .expect("write");
    let freed = async {
        loop {
            if served(addr, "127.0.0.5").await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), freed)
            .await
            .is_ok(),
        "a response nobody read held the address's one connection"
    );
    drop(stalled);
    // A body that waits for its own bytes longer than the stall timeout
    // is not stalled: the peer takes what there is.
    let mut stream = connect(addr, "127.0.0.5", None).await.expect("connect");
    stream
        .write_all(b"GET /late HTTP/1.1\r\nhost: shoal-node\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("late"),
        "{answer}"
    );
    drop(stream);
    // HTTP/2: a client that opens no window for the stream, so the
    // server cannot send a byte of the body; it answers pings all along.
    let tls = connect_alpn(addr, "127.0.0.5", None, b"h2")
        .await
        .expect("connect");
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("https://shoal-node/hello")
        .body(())
        .expect("request");
    let (response, _) = client.send_request(request, true).expect("send");
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("the answer's head")
        .expect("the answer's head");
    assert_eq!(response.status(), 200);
    // While other streams on the connection flow, the one stalled stream
    // cuts nothing: 1.5 s of requests, five times the stall timeout.
    for _ in 0..15 {
        let request = hyper::Request::get("https://shoal-node/nowhere")
            .body(())
            .expect("request");
        let (answer, _) = client.send_request(request, true).expect("send");
        let answer = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("an answer while the other stream stalls")
            .expect("an answer while the other stream stalls");
        assert_eq!(answer.status(), 404);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !connection.is_finished(),
        "the connection was cut while streams flowed"
    );
    // Then nothing flows: cut.
    assert!(
        tokio::time::timeout(Duration::from_secs(10), connection)
            .await
            .is_ok(),
        "a stream without window held its connection"
    );
    assert!(
        served(addr, "127.0.0.5").await,
        "the address was not served after the HTTP/2 connection was cut"
    );
}

#[tokio::test]
async fn a_request_body_trickled_within_the_stall_time_does_not_hold_its_connection() {
    use tokio::io::AsyncWriteExt;
    let (addr, _stop) = start(ServeOptions {
        body_stall_timeout: Duration::from_millis(400),
        body_min_bytes_per_s: 100,
        idle_timeout: Duration::from_secs(30),
        ..ServeOptions::default()
    })
    .await;
    // One byte every 200 ms: each within the stall time, 5 bytes/s in all.
    let stream = connect(addr, "127.0.0.6", None).await.expect("connect");
    let (mut reader, mut writer) = tokio::io::split(stream);
    writer
        .write_all(b"POST /echo HTTP/1.1\r\nhost: shoal-node\r\ncontent-length: 100\r\n\r\n")
        .await
        .expect("write");
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), reader.read_to_end(&mut answer)).await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok() && answer.starts_with("HTTP/1.1 400"),
        "a trickled body was still read after 8 s: {answer}"
    );
    // A body at the pace asked for is read whole: 100 bytes in 5 pieces,
    // 150 ms apart.
    let mut stream = connect(addr, "127.0.0.6", None).await.expect("connect");
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: shoal-node\r\nconnection: close\r\ncontent-length: 100\r\n\r\n")
        .await
        .expect("write");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        stream.write_all(&[b'y'; 20]).await.expect("write");
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with(&"y".repeat(100)),
        "{answer}"
    );
}

#[tokio::test]
async fn a_flood_of_handshakes_from_many_addresses_leaves_the_nodes_theirs() {
    let node_address: IpAddr = "127.0.0.8".parse().expect("address");
    let (addr, _stop) = start(ServeOptions {
        connections_max: 8,
        client_connections_max: 4,
        handshakes_max: 4,
        node_handshakes_max: 4,
        node_sources: Some(NodeSources(Arc::new(move |ip| ip == node_address))),
        // Longer than the test: the flood's handshakes stay under way.
        handshake_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    })
    .await;
    // As many silent connections as connections may be open, one from
    // each of 8 addresses: each sends no byte of a handshake.
    let mut flood = Vec::new();
    for i in 1..=8 {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(
                format!("127.0.1.{i}").parse().expect("address"),
                0,
            ))
            .expect("bind");
        flood.push(socket.connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A node's address still gets its handshake, and is served.
    assert!(
        served_as(addr, "127.0.0.8", Some("node-b")).await,
        "a node was not served during a flood of handshakes"
    );
    // Another address shares the flood's lot: refused while it lasts.
    assert!(
        !served(addr, "127.0.0.9").await,
        "a client's handshake got past a full share"
    );
    drop(flood);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        served(addr, "127.0.0.9").await,
        "clients were not served once the flood was gone"
    );
}

#[tokio::test]
async fn an_answer_given_before_the_body_came_keeps_the_connection() {
    use tokio::io::AsyncWriteExt;
    let (addr, _stop) = start(ServeOptions::default()).await;
    let mut stream = connect(addr, "127.0.0.9", None).await.expect("connect");
    // The headers first, and the body only once the answer is read (as a
    // client that writes them apart, refused before its body arrives).
    stream
        .write_all(b"POST /refuse HTTP/1.1\r\nhost: shoal-node\r\ncontent-length: 2000\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    stream
        .write_all(&[b'x'; 2000])
        .await
        .expect("write the body");
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: shoal-node\r\nconnection: close\r\n\r\n")
        .await
        .expect("write the next request");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("hi"),
        "the connection was closed under the late body: {answer:?}"
    );
    // A body too large to wait for is not read: its connection closes.
    let mut stream = connect(addr, "127.0.0.9", None).await.expect("connect");
    stream
        .write_all(b"POST /refuse HTTP/1.1\r\nhost: shoal-node\r\ncontent-length: 10000000\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_body_the_client_waits_to_be_asked_for_is_not_asked_for_after_a_refusal() {
    use tokio::io::AsyncWriteExt;
    let (addr, _stop) = start(ServeOptions::default()).await;
    let mut stream = connect(addr, "127.0.0.10", None).await.expect("connect");
    stream
        .write_all(b"POST /refuse HTTP/1.1\r\nhost: shoal-node\r\nexpect: 100-continue\r\ncontent-length: 2000\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    // Not asked for the body, the client sends none, and the connection
    // (whose next bytes would be that body) closes.
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
}

/// A response's head (up to its blank line), read a byte at a time.
async fn read_head(stream: &mut TlsStream<TcpStream>) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

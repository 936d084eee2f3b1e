//! A blob's download: from the peers first, then the registry, resumed
//! with a Range request after a cut or stalled connection, the sha256
//! checked over every byte before the last one is handed on.

use super::*;

pub(super) type Body = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

pub(super) struct BlobDownload {
    pub(super) client: Result<Arc<RegistryClient>>,
    pub(super) reference: ImageRef,
    pub(super) desc: Descriptor,
    pub(super) offset: u64,
    pub(super) hasher: Sha256,
    pub(super) body: Option<Body>,
    pub(super) stall: Duration,
    pub(super) peers: Option<Arc<dyn BlobPeers>>,
    pub(super) distrusted: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Connections to peers so far.
    pub(super) peer_connections: u32,
    /// Whether the connection open now is a peer's.
    pub(super) from_peer: bool,
    /// Bytes that came from peers.
    pub(super) peer_bytes: u64,
    /// When the current pace window of a peer connection began, and the
    /// bytes it has brought since.
    pub(super) window: (tokio::time::Instant, u64),
    /// Registry connections in a row without a byte; and in all.
    pub(super) attempts: u32,
    pub(super) connections: u32,
    pub(super) done: bool,
}

impl BlobDownload {
    pub(super) async fn next_chunk(&mut self) -> Result<Bytes> {
        loop {
            if self.body.is_none() {
                self.body = Some(self.connect().await?);
            }
            let body = self.body.as_mut().expect("set above");
            let why = match tokio::time::timeout(self.stall, body.next()).await {
                Ok(Some(Ok(chunk))) if self.from_peer => match self.peer_misbehaves(chunk.len()) {
                    None => {
                        self.peer_bytes += chunk.len() as u64;
                        return self.take(chunk);
                    }
                    Some(why) => {
                        // Nothing of this chunk is handed on: the registry
                        // gives the rest.
                        self.peer_connections = PEER_CONNECTIONS_MAX;
                        why
                    }
                },
                Ok(Some(Ok(chunk))) => return self.take(chunk),
                Ok(None) => format!(
                    "the connection ended after {} of {} bytes",
                    self.offset, self.desc.size
                ),
                Ok(Some(Err(e))) => e.to_string(),
                Err(_) => format!("no byte for {:?}", self.stall),
            };
            tracing::warn!(
                image = %self.reference,
                blob = %self.desc.digest,
                offset = self.offset,
                reason = %why,
                "blob download interrupted; resuming"
            );
            self.body = None;
        }
    }

    /// Why a peer's next chunk of `len` bytes is not taken: more than the
    /// blob holds, or a pace below [`PEER_BYTES_PER_S_MIN`] over a window.
    pub(super) fn peer_misbehaves(&mut self, len: usize) -> Option<String> {
        if self.offset + len as u64 > self.desc.size {
            return Some(format!(
                "the peer sent more than the blob's {} bytes",
                self.desc.size
            ));
        }
        let (started, bytes) = &mut self.window;
        *bytes += len as u64;
        let elapsed = started.elapsed();
        if elapsed >= self.stall {
            if *bytes < PEER_BYTES_PER_S_MIN * elapsed.as_secs().max(1) {
                return Some(format!(
                    "the peer sent {bytes} bytes in {elapsed:?}, slower than {PEER_BYTES_PER_S_MIN} bytes/s"
                ));
            }
            *started = tokio::time::Instant::now();
            *bytes = 0;
        }
        None
    }

    /// Counts and hashes a chunk; at the end, checks the digest.
    pub(super) fn take(&mut self, chunk: Bytes) -> Result<Bytes> {
        let end = self.offset + chunk.len() as u64;
        if end > self.desc.size {
            return Err(RuntimeError::InvalidImage(format!(
                "{}: blob {} is longer than the {} bytes its descriptor says",
                self.reference, self.desc.digest, self.desc.size
            )));
        }
        self.hasher.update(&chunk);
        self.offset = end;
        if !chunk.is_empty() {
            // Progress: the next cut starts a fresh run of attempts.
            self.attempts = 0;
        }
        if end == self.desc.size {
            self.done = true;
            let digest = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
            if digest != self.desc.digest {
                let mut from = "";
                if self.peer_bytes > 0 {
                    // Some bytes came from a peer: the next download of
                    // this blob asks the registry alone.
                    let mut distrusted = self.distrusted.lock().unwrap_or_else(|p| p.into_inner());
                    if distrusted.len() >= PEERS_DISTRUSTED_MAX {
                        distrusted.clear();
                    }
                    distrusted.insert(self.desc.digest.clone());
                    from = " (partly from a peer; the next attempt asks the registry alone)";
                }
                return Err(RuntimeError::InvalidImage(format!(
                    "{}: blob {} arrived with digest {digest}{from}; not stored",
                    self.reference, self.desc.digest
                )));
            }
        }
        Ok(chunk)
    }

    /// Opens a connection for the bytes from `offset` on, after the
    /// back-off that its attempt number earns.
    pub(super) async fn connect(&mut self) -> Result<Body> {
        if let Some(peers) = &self.peers {
            if self.peer_connections < PEER_CONNECTIONS_MAX {
                self.peer_connections += 1;
                match peers.open(&self.reference, &self.desc, self.offset).await {
                    Some(body) => {
                        self.from_peer = true;
                        self.window = (tokio::time::Instant::now(), 0);
                        return Ok(body);
                    }
                    // No peer offers it: straight to the registry.
                    None => self.peer_connections = PEER_CONNECTIONS_MAX,
                }
            }
        }
        self.from_peer = false;
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(e) => return Err(RuntimeError::InvalidImage(e.to_string())),
        };
        loop {
            if self.attempts >= BLOB_ATTEMPTS_MAX || self.connections >= BLOB_CONNECTIONS_MAX {
                return Err(RuntimeError::Registry {
                    kind: ErrorKind::Transient,
                    message: format!(
                        "{}: blob {} still incomplete after {} connections ({} of {} bytes)",
                        self.reference,
                        self.desc.digest,
                        self.connections,
                        self.offset,
                        self.desc.size
                    ),
                });
            }
            if self.attempts > 0 {
                let backoff = RETRY_BACKOFF_FIRST * 2u32.pow(self.attempts - 1);
                tokio::time::sleep(backoff).await;
            }
            self.attempts += 1;
            self.connections += 1;
            let layer = OciDescriptor {
                media_type: self.desc.media_type.clone(),
                digest: self.desc.digest.clone(),
                size: i64::try_from(self.desc.size).unwrap_or(i64::MAX),
                ..OciDescriptor::default()
            };
            // Authorized as `ready` decided: oci-client holds no password
            // to hand to a token service of its choosing.
            let client = match client.ready(&self.reference).await {
                Ok(client) => client,
                Err(e) if e.kind() == ErrorKind::Transient => {
                    tracing::warn!(image = %self.reference, blob = %self.desc.digest, error = %e, "registry unreachable; retrying");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let opened: std::result::Result<Body, _> = if self.offset == 0 {
                client
                    .pull_blob_stream(&self.reference.inner, &layer)
                    .await
                    .map(|s| Box::pin(s.stream) as Body)
            } else {
                match client
                    .pull_blob_stream_partial(&self.reference.inner, &layer, self.offset, None)
                    .await
                {
                    Ok(BlobResponse::Partial(s)) => Ok(Box::pin(s.stream) as Body),
                    // The registry ignored the Range: its bytes up to the
                    // offset are dropped, as they are already stored.
                    Ok(BlobResponse::Full(s)) => {
                        tracing::warn!(
                            image = %self.reference,
                            blob = %self.desc.digest,
                            "the registry does not serve ranges; skipping what is already stored"
                        );
                        Ok(skip_bytes(Box::pin(s.stream), self.offset))
                    }
                    Err(e) => Err(e),
                }
            };
            match opened {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    let e = registry_error(&self.reference, "fetching a blob", e);
                    if e.kind() != ErrorKind::Transient {
                        return Err(e);
                    }
                    tracing::warn!(image = %self.reference, blob = %self.desc.digest, error = %e, "blob request failed; retrying");
                }
            }
        }
    }
}

/// The stream without its first `skip` bytes.
pub(super) fn skip_bytes(stream: Body, skip: u64) -> Body {
    let mut left = skip;
    Box::pin(stream.filter_map(move |item| {
        let out = match item {
            Ok(chunk) if left >= chunk.len() as u64 => {
                left -= chunk.len() as u64;
                None
            }
            Ok(mut chunk) => {
                let rest = chunk.split_off(left as usize);
                left = 0;
                Some(Ok(rest))
            }
            Err(e) => Some(Err(e)),
        };
        std::future::ready(out)
    }))
}

/// The blob download against a small registry of the test's own that cuts,
/// stalls, ignores ranges or lies, without containerd.
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};

    use super::*;

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Fault {
        /// Every response ends after this many bytes of what it owes.
        CutEvery(usize),
        /// The first response stalls after half the blob.
        StallOnce,
        /// Ranges are ignored; the first response is cut after half.
        NoRanges,
        /// One byte is wrong.
        Lie,
        /// Every response ends before a byte.
        Nothing,
    }

    struct Server {
        blob: Vec<u8>,
        fault: Fault,
        requests: AtomicUsize,
        served: AtomicUsize,
    }

    async fn blob(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
        let n = server.requests.fetch_add(1, Ordering::SeqCst);
        let from: usize = headers
            .get("range")
            .and_then(|r| {
                r.to_str()
                    .ok()?
                    .strip_prefix("bytes=")?
                    .strip_suffix('-')?
                    .parse()
                    .ok()
            })
            .filter(|_| server.fault != Fault::NoRanges)
            .unwrap_or(0);
        let mut body = server.blob[from..].to_vec();
        if server.fault == Fault::Lie {
            body[0] ^= 1;
        }
        let half = server.blob.len() / 2;
        let (keep, stall) = match server.fault {
            Fault::CutEvery(n) => (n.min(body.len()), false),
            Fault::StallOnce if n == 0 => (half, true),
            Fault::NoRanges if n == 0 => (half, false),
            Fault::Nothing => (0, false),
            _ => (body.len(), false),
        };
        let status = if from > 0 {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let total = body.len();
        body.truncate(keep);
        server.served.fetch_add(keep, Ordering::SeqCst);
        let cut = keep < total;
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(body))]).chain(
            futures::stream::once(async move {
                if stall {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                if cut {
                    // Let what was sent leave before the connection drops.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(std::io::Error::other("cut"))
                } else {
                    Ok(Bytes::new())
                }
            }),
        );
        let mut response = (status, axum::body::Body::from_stream(stream)).into_response();
        response
            .headers_mut()
            .insert("content-length", total.to_string().parse().expect("number"));
        response
    }

    async fn serve(fault: Fault) -> (ImageRef, Descriptor, Arc<Server>) {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let desc = Descriptor {
            media_type: "application/octet-stream".into(),
            digest: image::sha256_digest(&data),
            size: data.len() as u64,
            ..Descriptor::default()
        };
        let server = Arc::new(Server {
            blob: data,
            fault,
            requests: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/v2/", axum::routing::get(|| async { "{}" }))
            .route("/v2/t/blobs/{digest}", axum::routing::get(blob))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let host = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (
            ImageRef::parse(&format!("{host}/t:1")).expect("ref"),
            desc,
            server,
        )
    }

    async fn fetch(fault: Fault) -> (Result<Vec<u8>>, Descriptor, Arc<Server>) {
        let (reference, desc, server) = serve(fault).await;
        let registries = Registries::with_stall_timeout(Duration::from_millis(300));
        (download(&registries, &reference, &desc).await, desc, server)
    }

    async fn download(
        registries: &Registries,
        reference: &ImageRef,
        desc: &Descriptor,
    ) -> Result<Vec<u8>> {
        let mut stream =
            std::pin::pin!(registries.blob(reference, &RegistryAccess::default(), desc));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(e) => return Err(from_io(e, String::new)),
            }
        }
        Ok(out)
    }

    /// A peer that serves the blob up to `upto` bytes (with one byte
    /// flipped when it lies), then drops the connection; asked again past
    /// that point, it has nothing.
    struct Peer {
        blob: Vec<u8>,
        upto: usize,
        lie: bool,
        /// Bytes sent past the end of what it serves.
        extra: usize,
        offsets: Mutex<Vec<u64>>,
    }

    impl BlobPeers for Peer {
        fn held_document(
            &self,
            _reference: &ImageRef,
            _digest: &str,
        ) -> BoxFuture<'static, Option<Bytes>> {
            Box::pin(std::future::ready(None))
        }

        fn open(
            &self,
            _reference: &ImageRef,
            _desc: &Descriptor,
            offset: u64,
        ) -> BoxFuture<'static, Option<BlobBody>> {
            self.offsets.lock().expect("offsets").push(offset);
            let from = offset as usize;
            let mut bytes = self.blob[from.min(self.upto)..self.upto].to_vec();
            if self.lie && !bytes.is_empty() {
                bytes[0] ^= 1;
            }
            if !bytes.is_empty() {
                bytes.extend(std::iter::repeat_n(0u8, self.extra));
            }
            Box::pin(async move {
                if bytes.is_empty() {
                    return None;
                }
                let body = futures::stream::iter([
                    Ok(Bytes::from(bytes)),
                    Err(std::io::Error::other("the peer went away")),
                ]);
                Some(Box::pin(body) as BlobBody)
            })
        }
    }

    async fn fetch_with_peer(upto: usize, lie: bool) -> (Arc<Peer>, Arc<Server>, Registries) {
        fetch_with_peer_sending(upto, lie, 0).await
    }

    async fn fetch_with_peer_sending(
        upto: usize,
        lie: bool,
        extra: usize,
    ) -> (Arc<Peer>, Arc<Server>, Registries) {
        let (reference, desc, server) = serve(Fault::CutEvery(usize::MAX)).await;
        let peer = Arc::new(Peer {
            blob: server.blob.clone(),
            upto,
            lie,
            extra,
            offsets: Mutex::default(),
        });
        let registries = Registries::with_stall_timeout(Duration::from_millis(300));
        registries.fetch_through(peer.clone());
        let got = download(&registries, &reference, &desc).await;
        if lie {
            let err = got.expect_err("wrong bytes from the peer");
            assert!(err.to_string().contains("partly from a peer"), "{err}");
            // The next download asks the registry alone.
            let got = download(&registries, &reference, &desc).await;
            assert_eq!(image::sha256_digest(&got.expect("complete")), desc.digest);
        } else {
            assert_eq!(image::sha256_digest(&got.expect("complete")), desc.digest);
        }
        (peer, server, registries)
    }

    #[tokio::test]
    async fn what_a_peer_did_not_deliver_comes_from_the_registry_by_range() {
        let (peer, server, _) = fetch_with_peer(120_000, false).await;
        // The peer was asked from 0, then from where it stopped, and had
        // nothing more: the registry served the rest, once.
        assert_eq!(*peer.offsets.lock().expect("offsets"), vec![0, 120_000]);
        assert_eq!(server.requests.load(Ordering::SeqCst), 1);
        assert_eq!(server.served.load(Ordering::SeqCst), 80_000);
    }

    #[tokio::test]
    async fn a_whole_blob_from_a_peer_asks_nothing_of_the_registry() {
        let (peer, server, _) = fetch_with_peer(200_000, false).await;
        assert_eq!(*peer.offsets.lock().expect("offsets"), vec![0]);
        assert_eq!(server.requests.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_peer_that_sends_too_much_is_left_for_the_registry() {
        let (peer, server, _) = fetch_with_peer_sending(200_000, false, 10).await;
        // Its chunk ran past the blob's end: nothing of it was taken, and
        // the registry served the whole blob.
        assert_eq!(*peer.offsets.lock().expect("offsets"), vec![0]);
        assert_eq!(server.requests.load(Ordering::SeqCst), 1);
        assert_eq!(server.served.load(Ordering::SeqCst), 200_000);
    }

    /// A peer that sends one byte every 100 ms, never silent for a whole
    /// stall timeout.
    struct Trickle(Vec<u8>);

    impl BlobPeers for Trickle {
        fn held_document(
            &self,
            _reference: &ImageRef,
            _digest: &str,
        ) -> BoxFuture<'static, Option<Bytes>> {
            Box::pin(std::future::ready(None))
        }

        fn open(
            &self,
            _reference: &ImageRef,
            _desc: &Descriptor,
            offset: u64,
        ) -> BoxFuture<'static, Option<BlobBody>> {
            let bytes = self.0[offset as usize..].to_vec();
            Box::pin(async move {
                let body = futures::stream::iter(bytes).then(|byte| async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(Bytes::from(vec![byte]))
                });
                Some(Box::pin(body) as BlobBody)
            })
        }
    }

    #[tokio::test]
    async fn a_peer_that_trickles_is_left_for_the_registry() {
        let (reference, desc, server) = serve(Fault::CutEvery(usize::MAX)).await;
        let registries = Registries::with_stall_timeout(Duration::from_millis(300));
        registries.fetch_through(Arc::new(Trickle(server.blob.clone())));
        let got = download(&registries, &reference, &desc).await;
        assert_eq!(image::sha256_digest(&got.expect("complete")), desc.digest);
        // A few bytes came from the peer, the rest from the registry.
        let served = server.served.load(Ordering::SeqCst);
        assert!((199_990..200_000).contains(&served), "{served}");
    }

    #[tokio::test]
    async fn a_peer_that_lies_is_caught_and_not_asked_again_for_that_blob() {
        let (peer, server, _) = fetch_with_peer(120_000, true).await;
        // Asked for the first download only; the second went to the
        // registry for the whole blob.
        assert_eq!(*peer.offsets.lock().expect("offsets"), vec![0, 120_000]);
        assert_eq!(server.requests.load(Ordering::SeqCst), 2);
        assert_eq!(server.served.load(Ordering::SeqCst), 80_000 + 200_000);
    }

    #[tokio::test]
    async fn cut_connections_resume_while_each_makes_progress() {
        let (got, desc, server) = fetch(Fault::CutEvery(30_000)).await;
        let got = got.expect("complete");
        assert_eq!(image::sha256_digest(&got), desc.digest);
        // 200,000 bytes in pieces of 30,000: 7 connections, more than the
        // 6 in a row allowed without progress, and no byte sent twice.
        assert_eq!(server.requests.load(Ordering::SeqCst), 7);
        assert_eq!(server.served.load(Ordering::SeqCst), 200_000);
    }

    #[tokio::test]
    async fn a_stalled_connection_is_replaced() {
        let (got, desc, server) = fetch(Fault::StallOnce).await;
        assert_eq!(image::sha256_digest(&got.expect("complete")), desc.digest);
        assert_eq!(server.requests.load(Ordering::SeqCst), 2);
        assert_eq!(server.served.load(Ordering::SeqCst), 200_000);
    }

    #[tokio::test]
    async fn a_registry_that_ignores_ranges_still_gives_the_right_bytes() {
        let (got, desc, server) = fetch(Fault::NoRanges).await;
        assert_eq!(image::sha256_digest(&got.expect("complete")), desc.digest);
        assert_eq!(server.requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn wrong_bytes_fail_before_the_last_chunk() {
        let (got, _, _) = fetch(Fault::Lie).await;
        let err = got.expect_err("a wrong digest");
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        assert!(err.to_string().contains("not stored"), "{err}");
    }

    #[tokio::test]
    async fn connections_that_deliver_nothing_give_up() {
        let (got, _, server) = fetch(Fault::Nothing).await;
        let err = got.expect_err("gives up");
        assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
        assert_eq!(
            server.requests.load(Ordering::SeqCst),
            BLOB_ATTEMPTS_MAX as usize
        );
    }
}

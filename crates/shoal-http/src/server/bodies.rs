//! What a connection knows of its requests: how many are in flight and
//! since when none is (for the idle timeout), which response has a frame
//! the peer has not taken (for the send stall timeout), and request bodies
//! that must come at a pace.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::{Body as _, Incoming};

/// Requests in flight on one connection, and when the last one ended.
pub(super) struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds since the connection was accepted.
    last_ms: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
    /// Response bodies with a frame ready that the connection has not
    /// taken yet, by body, since when (at most one entry per request in
    /// flight, which the protocol bounds).
    unsent: std::sync::Mutex<std::collections::HashMap<u64, std::time::Instant>>,
    next_body: std::sync::atomic::AtomicU64,
    /// Milliseconds since the connection was accepted, when it last wrote
    /// bytes to the peer.
    wrote_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            last_ms: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
            unsent: std::sync::Mutex::default(),
            next_body: std::sync::atomic::AtomicU64::new(0),
            wrote_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn ms_now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The connection wrote bytes to the peer.
    fn wrote(&self) {
        self.wrote_ms
            .store(self.ms_now(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Body `id` has a frame ready for the connection to take, or not.
    fn set_unsent(&self, id: u64, ready: bool) {
        let mut unsent = self.unsent.lock().unwrap_or_else(|p| p.into_inner());
        if ready {
            unsent.insert(id, std::time::Instant::now());
        } else {
            unsent.remove(&id);
        }
    }

    /// How long a frame ready has waited to be taken while the connection
    /// wrote nothing (zero: none waits, or bytes went out since). One
    /// stream an HTTP/2 peer reads slowly while the others flow stalls
    /// nothing; a peer that takes no byte at all does.
    pub(super) fn send_stalled(&self) -> Duration {
        let oldest = {
            let unsent = self.unsent.lock().unwrap_or_else(|p| p.into_inner());
            unsent
                .values()
                .map(std::time::Instant::elapsed)
                .max()
                .unwrap_or(Duration::ZERO)
        };
        let wrote = self.wrote_ms.load(std::sync::atomic::Ordering::Relaxed);
        let since_write = Duration::from_millis(self.ms_now().saturating_sub(wrote));
        oldest.min(since_write)
    }

    fn touch(&self) {
        self.last_ms
            .store(self.ms_now(), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long no request has been in flight (zero while one is).
    pub(super) fn idle(&self) -> Duration {
        if self.in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// A connection's stream that tells its [`Activity`] when bytes went out.
pub(super) struct Written<S> {
    pub(super) inner: S,
    pub(super) activity: Arc<Activity>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Written<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Written<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        written
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Counts a request in flight until dropped (its response sent, or the
/// request abandoned).
pub(super) struct InFlight(pub(super) Arc<Activity>);

impl InFlight {
    pub(super) fn start(activity: &Arc<Activity>) -> InFlight {
        activity
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        activity.touch();
        InFlight(activity.clone())
    }
}

/// A response's body that keeps its request counted in flight until it
/// is sent (or dropped), and tells its connection while a frame of it is
/// ready and not sent: from when the handler answered until the first
/// poll, and from each frame handed over until the next poll or the
/// body's drop (a protocol drops a body once all of it is sent; one that
/// answers a poll with "not yet" waits for itself, not for the peer).
pub(super) struct InFlightBody {
    body: Body,
    in_flight: InFlight,
    id: u64,
}

impl InFlightBody {
    pub(super) fn new(body: Body, in_flight: InFlight) -> InFlightBody {
        let activity = &in_flight.0;
        let id = activity
            .next_body
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        activity.set_unsent(id, !hyper::body::Body::is_end_stream(&body));
        InFlightBody {
            body,
            in_flight,
            id,
        }
    }
}

impl Drop for InFlightBody {
    fn drop(&mut self) {
        self.in_flight.0.set_unsent(self.id, false);
    }
}

impl hyper::body::Body for InFlightBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        // A frame handed over may wait in the connection's buffers (HTTP/2
        // holds the last one until the stream has window): taken once the
        // body is polled again, or dropped.
        let handed = matches!(polled, std::task::Poll::Ready(Some(Ok(_))));
        this.in_flight.0.set_unsent(this.id, handed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A request's body whose reader gets an error once it has waited
/// `pace.stall` for the next frame, or once its waits add up to more than
/// `pace.stall` plus a second for every `pace.min_bytes_per_s` bytes that
/// came (a body trickled a byte at a time, each within the stall time).
/// Only the reader's waits count, so a handler that reads late loses
/// nothing the client sent.
pub(super) struct StallBody {
    /// Taken on drop, to be drained (see [`drain`]).
    inner: Option<Incoming>,
    /// The body failed (stalled, trickled, or broken): nothing to drain.
    failed: bool,
    /// Whether a rest left unread is drained (HTTP/1 without `Expect`).
    drain: bool,
    pace: BodyPace,
    /// Set while the reader waits: when the wait gives up.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// When the wait under way began, and how long it may last.
    waiting: Option<(tokio::time::Instant, Duration)>,
    /// The reader's earlier waits, added up.
    waited: Duration,
    received: u64,
}

/// How fast a request body must come.
#[derive(Clone, Copy, Debug)]
pub(super) struct BodyPace {
    pub(super) stall: Duration,
    pub(super) min_bytes_per_s: u64,
}

impl StallBody {
    pub(super) fn new(inner: Incoming, pace: BodyPace, drain: bool) -> StallBody {
        StallBody {
            inner: Some(inner),
            failed: false,
            drain,
            pace,
            deadline: None,
            waiting: None,
            waited: Duration::ZERO,
            received: 0,
        }
    }

    /// What the waits may add up to, given what came.
    fn allowance(&self) -> Duration {
        let earned_ms = self
            .received
            .saturating_mul(1000)
            .checked_div(self.pace.min_bytes_per_s)
            .unwrap_or(u64::MAX);
        self.pace
            .stall
            .saturating_add(Duration::from_millis(earned_ms))
    }
}

/// The error a stalled or trickled body's reader gets.
#[derive(Debug)]
enum BodyTooSlow {
    Stalled(Duration),
    Trickled { min_bytes_per_s: u64 },
}

impl std::fmt::Display for BodyTooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyTooSlow::Stalled(stall) => {
                write!(f, "no byte of the request body arrived for {stall:?}")
            }
            BodyTooSlow::Trickled { min_bytes_per_s } => write!(
                f,
                "the request body came slower than {min_bytes_per_s} bytes/s"
            ),
        }
    }
}

impl std::error::Error for BodyTooSlow {}

impl hyper::body::Body for StallBody {
    type Data = axum::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match std::pin::Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if matches!(frame, Some(Err(_))) {
                    this.failed = true;
                }
                this.deadline = None;
                if let Some((since, _)) = this.waiting.take() {
                    this.waited = this.waited.saturating_add(since.elapsed());
                }
                if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
                    let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    this.received = this.received.saturating_add(len);
                }
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.deadline.is_none() {
                    let left = this.allowance().saturating_sub(this.waited);
                    let wait = this.pace.stall.min(left);
                    this.waiting = Some((tokio::time::Instant::now(), wait));
                    this.deadline = Some(Box::pin(tokio::time::sleep(wait)));
                }
                let Some(deadline) = this.deadline.as_mut() else {
                    return Poll::Pending;
                };
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.deadline = None;
                        // The failed wait counts too: a reader that asks
                        // again gets no fresh allowance.
                        let waiting = this.waiting.take();
                        if let Some((since, _)) = waiting {
                            this.waited = this.waited.saturating_add(since.elapsed());
                        }
                        let stalled = waiting.is_none_or(|(_, wait)| wait >= this.pace.stall);
                        let error = if stalled {
                            BodyTooSlow::Stalled(this.pace.stall)
                        } else {
                            BodyTooSlow::Trickled {
                                min_bytes_per_s: this.pace.min_bytes_per_s,
                            }
                        };
                        this.failed = true;
                        Poll::Ready(Some(Err(Box::new(error))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| hyper::body::SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// The most of a request body left unread by its handler that is read
/// after the answer, and for how long at most (see [`drain`]).
const DRAIN_BYTES_MAX: u64 = 64 * 1024;
const DRAIN_TIME_MAX: Duration = Duration::from_secs(2);

impl Drop for StallBody {
    /// A handler that answers without reading the body (a request refused
    /// by the gate) leaves the rest of it on its way. hyper then reads what
    /// has already come and, if the body is not whole, closes the
    /// connection once the answer is written: a client still writing the
    /// body (one that writes headers and body apart, as Python's urllib3
    /// does) finds the connection broken under it and never reads the
    /// answer. So a small rest is read and dropped, within a bound of bytes
    /// and time, and the connection is kept; a large or failed one is not.
    /// HTTP/2 resets the one stream and keeps the connection, so its
    /// bodies are not drained, nor is one whose client waits to be asked
    /// for it (`Expect: 100-continue`: hyper would ask).
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if !self.drain
            || self.failed
            || inner.is_end_stream()
            || inner.size_hint().lower() > DRAIN_BYTES_MAX
        {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(inner));
        }
    }
}

/// Reads `body` to its end and drops it, up to [`DRAIN_BYTES_MAX`] and
/// [`DRAIN_TIME_MAX`]; beyond them it is dropped unread (hyper closes the
/// connection).
async fn drain(mut body: Incoming) {
    let read_all = async {
        let mut read: u64 = 0;
        while let Some(Ok(frame)) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            let len = frame.data_ref().map_or(0, |data| data.len());
            read = read.saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
            if read > DRAIN_BYTES_MAX {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME_MAX, read_all).await;
}

//! Raft RPCs between nodes: HTTP with JSON bodies, to the target node's API
//! address (`/v1/raft/append`, `/vote`, `/snapshot`). A snapshot travels
//! whole in one binary body. [`Peers`] remembers which nodes answered
//! lately, to tell users which voters are unreachable.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{RPCTypes, Snapshot, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{NodeInfo, TypeConfig, APPEND_BODY_MAX_BYTES, SNAPSHOT_BODY_MAX_BYTES};

pub(crate) const PATH_APPEND: &str = "/v1/raft/append";
pub(crate) const PATH_VOTE: &str = "/v1/raft/vote";
pub(crate) const PATH_SNAPSHOT: &str = "/v1/raft/snapshot";

/// Largest answer read from a peer (an answer to a Raft RPC is small; a
/// forwarded call answers with one outcome).
pub(crate) const RESPONSE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Time to open a TCP connection to a peer.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Wait before retrying a peer that did not answer.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// Why a request to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum SendError {
    /// The request never reached the peer (connection refused, no route,
    /// connect timeout): safe to retry anything.
    #[error("{0}")]
    NotSent(String),
    /// No complete answer in time; the peer may have acted on it.
    #[error("{0}")]
    Timeout(String),
    /// The peer answered with an error or the connection broke mid-way;
    /// the peer may have acted on it.
    #[error("{0}")]
    Failed(String),
}

/// One error type for openraft's `Unreachable`/`NetworkError`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerError(String);

/// Builds the HTTP client used for Raft RPCs and forwarded calls.
pub(crate) fn http_client(
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> Result<reqwest::Client, String> {
    shoal_http::client(
        shoal_http::ClientOptions {
            connect_timeout: CONNECT_TIMEOUT,
            ..shoal_http::ClientOptions::default()
        },
        tls,
    )
}

/// What this node last saw of each peer.
#[derive(Default)]
pub(crate) struct Peers {
    seen: Mutex<BTreeMap<u64, Seen>>,
}

#[derive(Default, Clone)]
struct Seen {
    last_ok: Option<Instant>,
    last_error: Option<(Instant, String)>,
}

impl Peers {
    pub(crate) fn ok(&self, id: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entry(id).or_default().last_ok = Some(Instant::now());
    }

    pub(crate) fn failed(&self, id: u64, error: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entry(id).or_default().last_error = Some((Instant::now(), error.to_string()));
    }

    /// Whether `id` answered within `window`.
    pub(crate) fn answered_within(&self, id: u64, window: Duration) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&id)
            .and_then(|seen| seen.last_ok)
            .is_some_and(|at| at.elapsed() <= window)
    }

    /// Why `id` looks unreachable: its last request failed (and none
    /// succeeded since), or it has not answered within `window`.
    pub(crate) fn why_unreachable(&self, id: u64, window: Duration) -> Option<String> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let seen = seen.get(&id).cloned().unwrap_or_default();
        if let Some((failed_at, error)) = seen.last_error {
            if seen.last_ok.is_none_or(|ok| ok < failed_at) {
                return Some(error);
            }
        }
        match seen.last_ok {
            Some(ok) if ok.elapsed() <= window => None,
            Some(ok) => Some(format!("no answer for {} ms", ok.elapsed().as_millis())),
            None => Some("not heard from yet".to_string()),
        }
    }
}

/// POSTs `body` to `path` on the peer at `addr` and reads a JSON answer of at most
/// [`RESPONSE_MAX_BYTES`].
pub(crate) async fn post<R: DeserializeOwned>(
    client: &reqwest::Client,
    addr: &str,
    path: &str,
    body: Vec<u8>,
    content_type: &'static str,
    timeout: Duration,
) -> Result<R, SendError> {
    let url = shoal_http::Endpoint::parse(addr)
        .map_err(|error| SendError::NotSent(format!("peer address: {error}")))?
        .url(path);
    let response = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .timeout(timeout)
        .send()
        .await
        .map_err(|error| classify(&url, timeout, &error))?;
    let status = response.status();
    let bytes = read_limited(response, &url, timeout).await?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
        return Err(SendError::Failed(format!("{url}: HTTP {status}: {text}")));
    }
    serde_json::from_slice(&bytes)
        .map_err(|error| SendError::Failed(format!("{url}: unreadable answer: {error}")))
}

pub(crate) async fn post_json<T: Serialize, R: DeserializeOwned>(
    client: &reqwest::Client,
    addr: &str,
    path: &str,
    body: &T,
    timeout: Duration,
) -> Result<R, SendError> {
    let body = serde_json::to_vec(body)
        .map_err(|error| SendError::NotSent(format!("encoding the request: {error}")))?;
    post(client, addr, path, body, "application/json", timeout).await
}

async fn read_limited(
    mut response: reqwest::Response,
    url: &str,
    timeout: Duration,
) -> Result<Vec<u8>, SendError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| classify(url, timeout, &error))?
    {
        if bytes.len() + chunk.len() > RESPONSE_MAX_BYTES {
            return Err(SendError::Failed(format!(
                "{url}: answer larger than {RESPONSE_MAX_BYTES} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn classify(url: &str, timeout: Duration, error: &reqwest::Error) -> SendError {
    // The innermost cause says it best ("Connection refused (os error 111)").
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    if error.is_connect() {
        SendError::NotSent(format!("{url}: cannot connect: {cause}"))
    } else if error.is_timeout() {
        SendError::Timeout(format!(
            "{url}: no answer within {} ms",
            timeout.as_millis()
        ))
    } else {
        SendError::Failed(format!("{url}: {error}: {cause}"))
    }
}

/// Creates one [`PeerClient`] per target node.
#[derive(Clone)]
pub(crate) struct Network {
    pub(crate) id: u64,
    pub(crate) client: reqwest::Client,
    pub(crate) peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> PeerClient {
        PeerClient {
            network: self.clone(),
            target,
            addr: node.api_addr.clone(),
        }
    }
}

pub(crate) struct PeerClient {
    network: Network,
    target: u64,
    addr: String,
}

/// The header of a snapshot body: `u32` big-endian length, then this as
/// JSON, then the snapshot data.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotHeader {
    pub(crate) vote: Vote<u64>,
    pub(crate) meta: openraft::SnapshotMeta<u64, NodeInfo>,
}

impl PeerClient {
    /// Sends one RPC and records whether the peer answered.
    async fn call<R: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &'static str,
        timeout: Duration,
    ) -> Result<R, SendError> {
        let result = post(
            &self.network.client,
            &self.addr,
            path,
            body,
            content_type,
            timeout,
        )
        .await;
        match &result {
            Ok(_) => self.network.peers.ok(self.target),
            Err(error) => self.network.peers.failed(self.target, &error.to_string()),
        }
        result
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        timeout: Duration,
        error: SendError,
    ) -> RPCError<u64, NodeInfo, E> {
        match error {
            SendError::Timeout(_) => RPCError::Timeout(Timeout {
                action,
                id: self.network.id,
                target: self.target,
                timeout,
            }),
            // Both back off before the next try: a peer that answers with an
            // error (e.g. 503 while it stops) is not hammered.
            SendError::NotSent(message) | SendError::Failed(message) => {
                RPCError::Unreachable(Unreachable::new(&PeerError(message)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        let timeout = option.hard_ttl();
        let entries = rpc.entries.len() as u64;
        let body = serde_json::to_vec(&rpc)
            .map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
        if body.len() > APPEND_BODY_MAX_BYTES {
            if entries > 1 {
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(entries / 2),
                ));
            }
            return Err(RPCError::Unreachable(Unreachable::new(&PeerError(format!(
                "one log entry of {} bytes is larger than the {APPEND_BODY_MAX_BYTES} bytes a node accepts",
                body.len()
            )))));
        }
        let answer: Result<AppendEntriesResponse<u64>, RaftError<u64>> = self
            .call(PATH_APPEND, body, "application/json", timeout)
            .await
            .map_err(|error| self.rpc_error(RPCTypes::AppendEntries, timeout, error))?;
        answer.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, NodeInfo, RaftError<u64, InstallSnapshotError>>,
    > {
        // Snapshots go whole through `full_snapshot`; openraft 0.9 does not
        // call the chunked RPC when `full_snapshot` is implemented.
        Err(RPCError::Unreachable(Unreachable::new(&PeerError(
            "chunked snapshot transfer is not supported; snapshots are sent whole".to_string(),
        ))))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        let timeout = option.hard_ttl();
        let body = serde_json::to_vec(&rpc)
            .map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
        let answer: Result<VoteResponse<u64>, RaftError<u64>> = self
            .call(PATH_VOTE, body, "application/json", timeout)
            .await
            .map_err(|error| self.rpc_error(RPCTypes::Vote, timeout, error))?;
        answer.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let timeout = option.hard_ttl();
        let data = snapshot.snapshot.into_inner();
        let header = serde_json::to_vec(&SnapshotHeader {
            vote,
            meta: snapshot.meta,
        })
        .map_err(|error| StreamingError::Network(NetworkError::new(&error)))?;
        let too_large = || {
            StreamingError::Unreachable(Unreachable::new(&PeerError(format!(
                "snapshot of {} bytes is larger than the {SNAPSHOT_BODY_MAX_BYTES} bytes a node accepts",
                data.len()
            ))))
        };
        let header_len = u32::try_from(header.len()).map_err(|_| too_large())?;
        if 4 + header.len() + data.len() > SNAPSHOT_BODY_MAX_BYTES {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(4 + header.len() + data.len());
        body.extend_from_slice(&header_len.to_be_bytes());
        body.extend_from_slice(&header);
        body.extend_from_slice(&data);
        drop(data);
        let answer: Result<SnapshotResponse<u64>, Fatal<u64>> = tokio::select! {
            answer = self.call(PATH_SNAPSHOT, body, "application/octet-stream", timeout) => {
                answer.map_err(|error| match self.rpc_error::<Fatal<u64>>(RPCTypes::InstallSnapshot, timeout, error) {
                    RPCError::Timeout(timeout) => StreamingError::Timeout(timeout),
                    RPCError::Unreachable(error) => StreamingError::Unreachable(error),
                    RPCError::Network(error) => StreamingError::Network(error),
                    RPCError::PayloadTooLarge(error) => StreamingError::Network(NetworkError::new(&error)),
                    RPCError::RemoteError(error) => StreamingError::RemoteError(error),
                })?
            }
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        answer.map_err(|error| StreamingError::RemoteError(RemoteError::new(self.target, error)))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}

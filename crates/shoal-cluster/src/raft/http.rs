//! The routes under `/v1/raft/*`: Raft RPCs from peers (`append`, `vote`,
//! `snapshot`) and calls forwarded to the leader (`propose`, `read-index`,
//! `add-learner`, `change-voters`, `remove-nodes`). A forwarded call is run
//! on this node only, never forwarded again: a node that is not the leader
//! answers `not_leader` and the caller looks for the leader again.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use openraft::error::RaftError as OpenRaftError;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::Snapshot;
use serde::{Deserialize, Serialize};
use shoal_state::{ApplyError, Entry};

use super::network::{post_json, SendError, SnapshotHeader, PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE};
use super::{
    leader::LocalError, Forwarded, ForwardedBy, LeaderOp, LeaderResult, NodeInfo, ProposeError,
    RaftNode, TypeConfig, APPEND_BODY_MAX_BYTES, FORWARD_BODY_MAX_BYTES, SNAPSHOT_BODY_MAX_BYTES,
};

const PATH_PROPOSE: &str = "/v1/raft/propose";
const PATH_READ_INDEX: &str = "/v1/raft/read-index";
const PATH_ADD_LEARNER: &str = "/v1/raft/add-learner";
const PATH_CHANGE_VOTERS: &str = "/v1/raft/change-voters";
const PATH_REMOVE_NODES: &str = "/v1/raft/remove-nodes";
/// Every path the router serves (all `POST`), for the node's access table
/// and its tests.
pub const PATHS: [&str; 8] = [
    PATH_APPEND,
    PATH_VOTE,
    PATH_SNAPSHOT,
    PATH_PROPOSE,
    PATH_READ_INDEX,
    PATH_ADD_LEARNER,
    PATH_CHANGE_VOTERS,
    PATH_REMOVE_NODES,
];

/// Extra time a forwarder waits past the deadline it gives the leader, so
/// the leader's own answer (even a timeout) arrives first.
const FORWARD_MARGIN: Duration = Duration::from_secs(1);
/// Voters or nodes named in one membership call.
const MEMBERS_PER_CALL_MAX: usize = 1000;

pub(crate) fn router(node: RaftNode) -> Router {
    Router::new()
        .route(
            PATH_APPEND,
            post(append).layer(DefaultBodyLimit::max(APPEND_BODY_MAX_BYTES)),
        )
        .route(PATH_VOTE, post(vote))
        .route(
            PATH_SNAPSHOT,
            post(snapshot).layer(DefaultBodyLimit::max(SNAPSHOT_BODY_MAX_BYTES)),
        )
        .route(
            PATH_PROPOSE,
            post(propose).layer(DefaultBodyLimit::max(FORWARD_BODY_MAX_BYTES)),
        )
        .route(PATH_READ_INDEX, post(read_index))
        .route(PATH_ADD_LEARNER, post(add_learner))
        .route(PATH_CHANGE_VOTERS, post(change_voters))
        .route(PATH_REMOVE_NODES, post(remove_nodes))
        .with_state(node)
}

fn stopped(error: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("raft node stopped: {error}"),
    )
        .into_response()
}

async fn append(
    State(node): State<RaftNode>,
    Json(rpc): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    if let Some(leader) = rpc.vote.leader_id().voted_for() {
        node.peers().ok(leader);
    }
    match node.raft().append_entries(rpc).await {
        Err(OpenRaftError::Fatal(error)) => stopped(error),
        answer => Json(answer).into_response(),
    }
}

async fn vote(State(node): State<RaftNode>, Json(rpc): Json<VoteRequest<u64>>) -> Response {
    if let Some(candidate) = rpc.vote.leader_id().voted_for() {
        node.peers().ok(candidate);
    }
    match node.raft().vote(rpc).await {
        Err(OpenRaftError::Fatal(error)) => stopped(error),
        answer => Json(answer).into_response(),
    }
}

/// Body: `u32` big-endian header length, the [`SnapshotHeader`] JSON, then
/// the snapshot data.
async fn snapshot(State(node): State<RaftNode>, body: Bytes) -> Response {
    let bad = |why: String| (StatusCode::BAD_REQUEST, why).into_response();
    let Some((len, rest)) = body.split_first_chunk::<4>() else {
        return bad("snapshot body shorter than its header length".to_string());
    };
    let len = u32::from_be_bytes(*len) as usize;
    if len > rest.len() {
        return bad(format!(
            "snapshot header of {len} bytes in a body of {} bytes",
            body.len()
        ));
    }
    let (header, data) = rest.split_at(len);
    let header: SnapshotHeader = match serde_json::from_slice(header) {
        Ok(header) => header,
        Err(error) => return bad(format!("snapshot header: {error}")),
    };
    if let Some(leader) = header.vote.leader_id().voted_for() {
        node.peers().ok(leader);
    }
    let snapshot = Snapshot {
        meta: header.meta,
        snapshot: Box::new(std::io::Cursor::new(data.to_vec())),
    };
    match node
        .raft()
        .install_full_snapshot(header.vote, snapshot)
        .await
    {
        Err(error) => stopped(error),
        Ok(answer) => Json(Ok::<_, openraft::error::Fatal<u64>>(answer)).into_response(),
    }
}

/// A forwarded call's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(crate) enum ForwardReply {
    Done { result: LeaderResult },
    NotLeader { leader: Option<u64> },
    Failed { error: ProposeError },
}

#[derive(Serialize, Deserialize)]
struct ProposeRequest {
    timeout_ms: u64,
    entry: Entry,
    /// The bearer token of the API call the forwarding node answers, for
    /// the leader to check the operator's role (never logged or stored;
    /// absent from nodes before 0.5, whose voters are taken at their word).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    operator: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ReadIndexRequest {
    timeout_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct AddLearnerRequest {
    timeout_ms: u64,
    node_id: u64,
    name: String,
    api_addr: String,
}

#[derive(Serialize, Deserialize)]
struct ChangeVotersRequest {
    timeout_ms: u64,
    voters: BTreeSet<u64>,
}

#[derive(Serialize, Deserialize)]
struct RemoveNodesRequest {
    timeout_ms: u64,
    ids: BTreeSet<u64>,
}

/// Sends `op` to the leader `leader` at `addr`, giving it `remaining`.
pub(crate) async fn forward(
    node: &RaftNode,
    leader: u64,
    addr: &str,
    op: &LeaderOp,
    remaining: Duration,
) -> Result<ForwardReply, SendError> {
    let timeout_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
    let timeout = remaining + FORWARD_MARGIN;
    let client = node.client();
    let result = match op {
        LeaderOp::Propose(entry) => {
            let body = ProposeRequest {
                timeout_ms,
                entry: entry.clone(),
                operator: super::forward::operator_token(),
            };
            post_json(client, addr, PATH_PROPOSE, &body, timeout).await
        }
        LeaderOp::ReadIndex => {
            let body = ReadIndexRequest { timeout_ms };
            post_json(client, addr, PATH_READ_INDEX, &body, timeout).await
        }
        LeaderOp::AddLearner(node_id, info) => {
            let body = AddLearnerRequest {
                timeout_ms,
                node_id: *node_id,
                name: info.name.clone(),
                api_addr: info.api_addr.clone(),
            };
            post_json(client, addr, PATH_ADD_LEARNER, &body, timeout).await
        }
        LeaderOp::ChangeVoters(voters) => {
            let body = ChangeVotersRequest {
                timeout_ms,
                voters: voters.clone(),
            };
            post_json(client, addr, PATH_CHANGE_VOTERS, &body, timeout).await
        }
        LeaderOp::RemoveNodes(ids) => {
            let body = RemoveNodesRequest {
                timeout_ms,
                ids: ids.clone(),
            };
            post_json(client, addr, PATH_REMOVE_NODES, &body, timeout).await
        }
    };
    match &result {
        Ok(_) => node.peers().ok(leader),
        Err(error) => node.peers().failed(leader, &error.to_string()),
    }
    result
}

/// Runs a forwarded call here, with the caller's deadline (at most this
/// node's own wait bound).
async fn run_forwarded(node: &RaftNode, op: LeaderOp, timeout_ms: u64) -> Json<ForwardReply> {
    let timeout = Duration::from_millis(timeout_ms).min(node.wait_max());
    Json(match node.run_local(op, timeout).await {
        Ok(result) => ForwardReply::Done { result },
        Err(LocalError::NotLeader(leader)) => ForwardReply::NotLeader { leader },
        Err(LocalError::Failed(error)) => ForwardReply::Failed { error },
    })
}

fn too_many(count: usize) -> Option<Response> {
    (count > MEMBERS_PER_CALL_MAX).then(|| {
        (
            StatusCode::BAD_REQUEST,
            format!("{count} nodes in one membership call, limit {MEMBERS_PER_CALL_MAX}"),
        )
            .into_response()
    })
}

/// A proposal forwarded by another node: appended only if the node's
/// forward policy lets the node that sent it (by its certificate) propose
/// that command, checked against the state of this node, the leader.
async fn propose(
    State(node): State<RaftNode>,
    by: Option<Extension<ForwardedBy>>,
    Json(mut request): Json<ProposeRequest>,
) -> Json<ForwardReply> {
    let refused = |why: String| {
        Json(ForwardReply::Failed {
            error: ProposeError::Rejected(ApplyError::WrongWriter(why)),
        })
    };
    // A follower answers `not_leader` before anything is checked: the
    // leader checks against the state it appends to.
    let leader = node.inner.metrics.borrow().current_leader;
    if leader != Some(node.inner.id) {
        return Json(ForwardReply::NotLeader { leader });
    }
    let command = match request.entry.command.decode() {
        Ok(command) => command,
        Err(error) => return refused(format!("the command does not decode here: {error}")),
    };
    // The format the command needs is this node's to say, not the
    // sender's: an entry labelled older than its command would be appended
    // in a format the cluster's older nodes cannot decode, and halt them.
    request.entry.version = request.entry.version.max(command.version_needed());
    let forwarded = Forwarded {
        by: by.as_ref().map(|Extension(by)| by),
        entry: &request.entry,
        command: &command,
        operator: request.operator.as_deref(),
    };
    let decision = {
        let state = node.read();
        node.forward_policy().check(&state, &forwarded)
    };
    node.forward_policy().decided(&forwarded, &decision);
    if let Err(why) = decision {
        return refused(why);
    }
    run_forwarded(&node, LeaderOp::Propose(request.entry), request.timeout_ms).await
}

async fn read_index(
    State(node): State<RaftNode>,
    Json(request): Json<ReadIndexRequest>,
) -> Json<ForwardReply> {
    run_forwarded(&node, LeaderOp::ReadIndex, request.timeout_ms).await
}

async fn add_learner(
    State(node): State<RaftNode>,
    Json(request): Json<AddLearnerRequest>,
) -> Json<ForwardReply> {
    let info = NodeInfo {
        name: request.name,
        api_addr: request.api_addr,
    };
    run_forwarded(
        &node,
        LeaderOp::AddLearner(request.node_id, info),
        request.timeout_ms,
    )
    .await
}

async fn change_voters(
    State(node): State<RaftNode>,
    Json(request): Json<ChangeVotersRequest>,
) -> Response {
    if let Some(refused) = too_many(request.voters.len()) {
        return refused;
    }
    run_forwarded(
        &node,
        LeaderOp::ChangeVoters(request.voters),
        request.timeout_ms,
    )
    .await
    .into_response()
}

async fn remove_nodes(
    State(node): State<RaftNode>,
    Json(request): Json<RemoveNodesRequest>,
) -> Response {
    if let Some(refused) = too_many(request.ids.len()) {
        return refused;
    }
    run_forwarded(
        &node,
        LeaderOp::RemoveNodes(request.ids),
        request.timeout_ms,
    )
    .await
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_replies_round_trip() {
        let replies = [
            ForwardReply::Failed {
                error: ProposeError::NoLeader("x".into()),
            },
            ForwardReply::Done {
                result: LeaderResult::Applied(Err(shoal_state::ApplyError::AppNotFound(
                    "web".into(),
                ))),
            },
            ForwardReply::NotLeader { leader: Some(2) },
        ];
        for reply in replies {
            let json = serde_json::to_string(&reply).expect("encodes");
            let back: ForwardReply = serde_json::from_str(&json).expect("decodes");
            assert_eq!(format!("{back:?}"), format!("{reply:?}"));
        }
    }
}

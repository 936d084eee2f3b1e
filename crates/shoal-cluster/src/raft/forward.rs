//! Who may have a forwarded proposal appended. A node that is not the
//! leader forwards what it proposes to the leader (`/v1/raft/propose`);
//! the leader takes the proposer from the certificate of the node that
//! forwarded it, never from the body, and asks the node's
//! [`ForwardPolicy`] whether that node may propose that command, with the
//! bearer token of the API call being answered when there is one, so that
//! an operator's command is checked against the operator's own role.
//!
//! The token travels only from the node that answered the API call to the
//! leader, over the nodes' mTLS; it is never written to the log.

use shoal_state::{Command, Entry, State};

tokio::task_local! {
    /// The bearer token of the API call this task is answering, set by the
    /// node's gate around the call's handler; a proposal forwarded from
    /// the handler carries it to the leader.
    pub static OPERATOR_TOKEN: Option<String>;
}

/// The bearer token of the API call this task answers, if any.
pub(crate) fn operator_token() -> Option<String> {
    OPERATOR_TOKEN.try_with(Clone::clone).ok().flatten()
}

/// The node that forwarded a call, as its verified TLS client certificate
/// names it; the node's gate puts it in the request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardedBy {
    pub node: String,
    /// Its certificate is a voter's.
    pub voter: bool,
}

/// A proposal forwarded to this node, the leader, as the policy sees it.
#[derive(Debug)]
pub struct Forwarded<'a> {
    /// `None` when the request came through no gate (nothing vouches for
    /// the sender).
    pub by: Option<&'a ForwardedBy>,
    pub entry: &'a Entry,
    pub command: &'a Command,
    /// The bearer token of the API call the forwarding node answers.
    pub operator: Option<&'a str>,
}

/// Decides whether the leader appends a forwarded proposal: `Err` says why
/// not, in words for the proposer; `Ok(Some(who))` names who vouched for
/// it beyond the sender (an operator).
pub trait ForwardPolicy: Send + Sync + 'static {
    /// Decided with the state's read lock held: no I/O here.
    fn check(&self, state: &State, forwarded: &Forwarded<'_>) -> Result<Option<String>, String>;

    /// Called with what `check` decided once the lock is released (to
    /// audit it, say).
    fn decided(&self, _forwarded: &Forwarded<'_>, _decision: &Result<Option<String>, String>) {}
}

/// The policy of a node that was given none: it appends no forwarded
/// proposal.
pub(crate) struct RefuseForwarded;

impl ForwardPolicy for RefuseForwarded {
    fn check(&self, _: &State, _: &Forwarded<'_>) -> Result<Option<String>, String> {
        Err("this node takes no forwarded proposals (it has no forward policy)".into())
    }
}

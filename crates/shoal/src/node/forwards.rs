//! The caller is the proposer: which node may have which command appended
//! when it forwards it to this node, the leader.
//!
//! - The proposer is the node whose certificate forwarded the entry; an
//!   entry that names another is refused.
//! - What a node writes about itself (its registration, its tasks, its
//!   leave) only that node may forward.
//! - What only the leader decides (plans, verdicts on nodes, the CA,
//!   admissions, gossip keys) is never taken from another node.
//! - An operator's command (apps, tokens, settings, registries, nodes)
//!   carries the bearer token of the API call the forwarding node
//!   answered, and the leader checks that token's role itself. A voter
//!   that forwards one without a token is taken at its word (shoal 0.4's
//!   voters send none, and a voter holds the data key anyway); any other
//!   node is refused.
//!
//! Every refusal, and every operator's command taken, is written to the
//! audit log with both identities.

use std::sync::Arc;

use shoal_api::access::Access;
use shoal_cluster::raft::{ForwardPolicy, Forwarded};
use shoal_state::{Authority, State};

use super::gate::{allowed, identify, Audit, Caller, Refusal};
use crate::clock::now_ms;

pub struct NodeForwardPolicy {
    pub cluster_id: String,
    pub audit: Arc<Audit>,
}

impl ForwardPolicy for NodeForwardPolicy {
    fn check(&self, state: &State, forwarded: &Forwarded<'_>) -> Result<(), String> {
        let decided = decide(state, &self.cluster_id, forwarded, now_ms());
        let by = forwarded.by.map_or_else(
            || "an unverified sender".to_string(),
            |by| {
                format!(
                    "node {} ({})",
                    by.node,
                    if by.voter { "voter" } else { "worker" }
                )
            },
        );
        match &decided {
            Err(why) => self
                .audit
                .record_forward(&by, forwarded.command.name(), None, Some(why)),
            Ok(Some(operator)) => {
                self.audit
                    .record_forward(&by, forwarded.command.name(), Some(operator), None)
            }
            Ok(None) => {}
        }
        decided.map(|_| ())
    }
}

/// Whether the forwarded entry may be appended: `Ok(Some(operator))` for
/// an operator's command (who vouched for it), `Ok(None)` for a node's own.
pub fn decide(
    state: &State,
    cluster_id: &str,
    forwarded: &Forwarded<'_>,
    now_ms: u64,
) -> Result<Option<String>, String> {
    let command = forwarded.command;
    let name = command.name();
    let Some(by) = forwarded.by else {
        return Err(format!(
            "{name}: no verified node certificate names who forwarded it"
        ));
    };
    if forwarded.entry.proposer != by.node {
        return Err(format!(
            "{name}: the entry names `{}` as its proposer but node `{}` forwarded it",
            forwarded.entry.proposer, by.node
        ));
    }
    let access = match command.authority() {
        Authority::Node(node) if node == by.node => return Ok(None),
        Authority::Node(node) => {
            return Err(format!(
                "{name}: only node `{node}` writes this about itself, and node `{}` forwarded it",
                by.node
            ))
        }
        Authority::Leader => {
            return Err(format!(
                "{name}: only the leader decides this, and node `{}` is not the leader",
                by.node
            ))
        }
        Authority::Deployer => Access::Deploy,
        Authority::Admin => Access::Admin,
    };
    match forwarded.operator {
        Some(token) => {
            let caller = identify(
                state,
                cluster_id,
                None,
                Some(&format!("Bearer {token}")),
                now_ms,
            )
            .map_err(|Refusal(why)| format!("{name}: the operator's credential: {why}"))?;
            if matches!(caller, Caller::Token { .. }) && allowed(access, &caller) {
                Ok(Some(caller.label()))
            } else {
                Err(format!(
                    "{name}: {} may not do this; it needs {}",
                    caller.label(),
                    if access == Access::Deploy {
                        "a deployer or admin token"
                    } else {
                        "an admin token"
                    }
                ))
            }
        }
        None if by.voter => Ok(Some(format!("voter {}", by.node))),
        None => Err(format!(
            "{name}: node `{}` is no voter and forwarded it without the credential of an operator who may",
            by.node
        )),
    }
}

#[cfg(test)]
mod tests {
    use shoal_cluster::log::{MemoryLog, ReplicatedLog};
    use shoal_cluster::raft::ForwardedBy;
    use shoal_pki::token::ApiToken;
    use shoal_state::security::{ApiRole, ApiTokenRecord};
    use shoal_state::{Command, Entry};
    use shoal_types::{NodeStatus, TaskStatus};

    use super::*;

    const CLUSTER: &str = "test-cluster";

    fn token(log: &MemoryLog, role: ApiRole) -> ApiToken {
        let token = ApiToken::generate();
        log.apply(Command::CreateApiToken {
            token: ApiTokenRecord {
                id: token.id.clone(),
                name: format!("{role:?}"),
                role,
                hash: token.hash().to_hex(),
                created_at_ms: 1,
                expires_at_ms: None,
                created_by: "test".into(),
            },
        });
        token
    }

    /// What the leader decides for `command` forwarded by `node` (a voter
    /// or not) with `operator`'s token, the entry naming `proposer`.
    fn decided(
        state: &State,
        node: &str,
        voter: bool,
        proposer: &str,
        command: &Command,
        operator: Option<&ApiToken>,
    ) -> Result<Option<String>, String> {
        let by = ForwardedBy {
            node: node.into(),
            voter,
        };
        let entry = Entry::proposed(1, proposer, command);
        let secret = operator.map(|t| t.to_string());
        decide(
            state,
            CLUSTER,
            &Forwarded {
                by: Some(&by),
                entry: &entry,
                command,
                operator: secret.as_deref(),
            },
            10,
        )
    }

    #[test]
    fn a_worker_proposes_only_what_it_writes_about_itself_or_an_operator_may() {
        let log = MemoryLog::new("leader", State::default());
        let admin = token(&log, ApiRole::Admin);
        let deployer = token(&log, ApiRole::Deployer);
        let reader = token(&log, ApiRole::Reader);
        let state = log.read().clone();
        let mint = Command::CreateApiToken {
            token: ApiTokenRecord {
                id: "0123456789abcdef".into(),
                name: "rogue".into(),
                role: ApiRole::Admin,
                hash: "00".repeat(32),
                created_at_ms: 1,
                expires_at_ms: None,
                created_by: "w1".into(),
            },
        };
        let app = Command::RemoveApp { name: "web".into() };
        let own = Command::ReportTasks {
            node: "w1".into(),
            statuses: Vec::<(String, TaskStatus)>::new(),
        };
        let other = Command::ReportTasks {
            node: "v1".into(),
            statuses: Vec::new(),
        };
        let leave = Command::SetNodeStatus {
            name: "w1".into(),
            status: NodeStatus::Left,
        };
        let verdict = Command::SetNodeStatus {
            name: "v1".into(),
            status: NodeStatus::Dead,
        };

        // The worker's hole: minting an admin token with no operator.
        let refused = decided(&state, "w1", false, "w1", &mint, None).expect_err("minted");
        assert!(
            refused.contains("create_api_token") && refused.contains("no voter"),
            "{refused}"
        );
        // Its own writes, and its leave.
        assert_eq!(decided(&state, "w1", false, "w1", &own, None), Ok(None));
        assert_eq!(decided(&state, "w1", false, "w1", &leave, None), Ok(None));
        // Not about another node, not the leader's decisions.
        assert!(decided(&state, "w1", false, "w1", &other, None).is_err());
        assert!(decided(&state, "w1", true, "w1", &verdict, None).is_err());
        // The proposer is the certificate, not the body.
        let refused = decided(&state, "w1", false, "v1", &own, None).expect_err("posed");
        assert!(refused.contains("names `v1` as its proposer"), "{refused}");
        // An operator's command: the token's role decides, for any node.
        assert!(decided(&state, "w1", false, "w1", &mint, Some(&admin))
            .is_ok_and(|by| by.is_some_and(|by| by.contains(&admin.id))));
        assert!(decided(&state, "w1", false, "w1", &mint, Some(&deployer)).is_err());
        assert!(decided(&state, "w1", false, "w1", &app, Some(&deployer)).is_ok());
        assert!(decided(&state, "w1", false, "w1", &app, Some(&reader)).is_err());
        assert!(decided(&state, "v1", true, "v1", &mint, Some(&reader)).is_err());
        // A token the cluster does not know.
        let stranger = ApiToken::generate();
        let refused =
            decided(&state, "w1", false, "w1", &app, Some(&stranger)).expect_err("stranger");
        assert!(refused.contains("not known"), "{refused}");
        // A voter without a token (shoal 0.4's voters send none).
        assert!(decided(&state, "v1", true, "v1", &mint, None).is_ok());
        // Nothing vouches for a sender that came through no gate.
        let entry = Entry::proposed(1, "w1", &own);
        assert!(decide(
            &state,
            CLUSTER,
            &Forwarded {
                by: None,
                entry: &entry,
                command: &own,
                operator: None,
            },
            10
        )
        .is_err());
    }
}

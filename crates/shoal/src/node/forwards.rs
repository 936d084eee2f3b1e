//! The caller is the proposer: which node may have which command appended
//! when it forwards it to this node, the leader.
//!
//! - The proposer is the node whose certificate forwarded the entry; an
//!   entry that names another is refused.
//! - What a node writes about itself (its registration, its tasks, its
//!   leave) only that node may forward.
//! - What only the leader decides (plans, verdicts on nodes, the first
//!   CA and the end of a rotation, admissions, gossip keys) is never taken
//!   from another node. The start of a CA rotation is an operator's (the
//!   state machine takes from another node than the leader only a record
//!   that starts one).
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

use super::audit::{Audit, LineRate};
use super::gate::{operator_may, token_needed, OperatorRefusal, Refusal};
use crate::clock::now_ms;

/// Refused forwards written to the audit log one by one per second at
/// most; the rest are counted in one line.
const REFUSALS_AUDITED_PER_SECOND: u32 = 20;

pub struct NodeForwardPolicy {
    cluster_id: String,
    audit: Arc<Audit>,
    /// Refusals written.
    refusals: std::sync::Mutex<LineRate>,
}

impl NodeForwardPolicy {
    pub fn new(cluster_id: String, audit: Arc<Audit>) -> NodeForwardPolicy {
        NodeForwardPolicy {
            cluster_id,
            audit,
            refusals: std::sync::Mutex::new(LineRate::new()),
        }
    }

    /// Whether this refusal is written on its own line (else counted);
    /// the count of a second that ended is written first.
    fn audit_refusal(&self) -> bool {
        let (fits, ended) = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(REFUSALS_AUDITED_PER_SECOND);
        self.audit
            .note_suppressed("several nodes", "forwards", ended);
        fits
    }
}

impl ForwardPolicy for NodeForwardPolicy {
    fn check(&self, state: &State, forwarded: &Forwarded<'_>) -> Result<Option<String>, String> {
        decide(state, &self.cluster_id, forwarded, now_ms())
    }

    fn decided(&self, forwarded: &Forwarded<'_>, decision: &Result<Option<String>, String>) {
        let by = forwarded.by.map_or_else(
            || "an unverified sender".to_string(),
            |by| {
                format!(
                    "node:{} ({})",
                    by.node,
                    if by.voter { "voter" } else { "worker" }
                )
            },
        );
        let command = forwarded.command.name();
        match decision {
            Err(why) => {
                if self.audit_refusal() {
                    self.audit.record_forward(&by, command, None, Some(why));
                }
            }
            Ok(Some(operator)) => self
                .audit
                .record_forward(&by, command, Some(operator), None),
            Ok(None) => {}
        }
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
    // A proposer is a node's name: anything else is not echoed back.
    if shoal_types::check_dns_label(&forwarded.entry.proposer).is_err() {
        return Err(format!(
            "{name}: the entry's proposer is no node name, and node `{}` forwarded it",
            by.node
        ));
    }
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
        Some(token) => match operator_may(state, cluster_id, token, access, now_ms) {
            Ok(caller) => Ok(Some(caller.label())),
            Err(OperatorRefusal::Credential(Refusal(why))) => {
                Err(format!("{name}: the operator's credential: {why}"))
            }
            Err(OperatorRefusal::Role(caller)) => Err(format!(
                "{name}: {} may not do this; it needs {}",
                caller.label(),
                token_needed(access)
            )),
        },
        None if by.voter => Ok(Some(format!("voter {}", by.node))),
        None => Err(format!(
            "{name}: node `{}` is no voter and forwarded it without the credential of an operator who may (a worker of shoal 0.4 sends none: upgrade it, or send this to a voter)",
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
        // Not about another node, not the leader's decisions, whoever
        // vouches for it.
        let refused = decided(&state, "w1", false, "w1", &other, None).expect_err("other");
        assert!(refused.contains("only node `v1`"), "{refused}");
        let register_other = Command::RegisterNode {
            node: shoal_types::Node::sample("v1", "v1:7950"),
        };
        assert!(decided(&state, "w1", false, "w1", &register_other, Some(&admin)).is_err());
        for leaders in [
            verdict.clone(),
            Command::ApplyPlan {
                plan: Default::default(),
            },
            Command::ForgetNode { name: "v1".into() },
        ] {
            for (voter, operator) in [(true, None), (false, Some(&admin))] {
                let refused = decided(&state, "w1", voter, "w1", &leaders, operator)
                    .expect_err("the leader's decision");
                assert!(refused.contains("only the leader"), "{refused}");
            }
        }
        // A proposer that is no node name is not echoed back.
        let long = "x".repeat(10_000);
        let refused = decided(&state, "w1", false, &long, &own, None).expect_err("long");
        assert!(
            refused.len() < 200 && refused.contains("no node name"),
            "{refused}"
        );
        // The proposer is the certificate, not the body.
        let refused = decided(&state, "w1", false, "v1", &own, None).expect_err("posed");
        assert!(refused.contains("names `v1` as its proposer"), "{refused}");
        // An operator's command: the token's role decides, for any node.
        assert!(decided(&state, "w1", false, "w1", &mint, Some(&admin))
            .is_ok_and(|by| by.is_some_and(|by| by.contains(&admin.id))));
        let refused =
            decided(&state, "w1", false, "w1", &mint, Some(&deployer)).expect_err("deployer");
        assert!(refused.contains("needs an admin token"), "{refused}");
        assert!(decided(&state, "w1", false, "w1", &app, Some(&deployer)).is_ok());
        let refused = decided(&state, "w1", false, "w1", &app, Some(&reader)).expect_err("reader");
        assert!(
            refused.contains("needs a deployer or admin token"),
            "{refused}"
        );
        // An app that loosens the hardened defaults: an admin's only.
        let privileged = Command::PutApp {
            spec: shoal_types::parse_app(
                b"name: ops\nservices: [{name: root, image: busybox, security: {privileged: true}}]\n",
            )
            .expect("valid"),
        };
        let refused = decided(&state, "w1", false, "w1", &privileged, Some(&deployer))
            .expect_err("a deployer's privileged app");
        assert!(refused.contains("needs an admin token"), "{refused}");
        assert!(decided(&state, "w1", false, "w1", &privileged, Some(&admin)).is_ok());
        // A voter's word does not outweigh a token that says otherwise.
        assert!(decided(&state, "v1", true, "v1", &mint, Some(&reader)).is_err());
        // An expired token.
        let expired = ApiToken::generate();
        log.apply(Command::CreateApiToken {
            token: ApiTokenRecord {
                id: expired.id.clone(),
                name: "old".into(),
                role: ApiRole::Admin,
                hash: expired.hash().to_hex(),
                created_at_ms: 1,
                expires_at_ms: Some(5),
                created_by: "test".into(),
            },
        });
        let later = log.read().clone();
        let refused =
            decided(&later, "w1", false, "w1", &mint, Some(&expired)).expect_err("expired");
        assert!(refused.contains("expired"), "{refused}");
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

    #[test]
    fn refusals_are_audited_one_by_one_up_to_a_rate_then_counted() {
        let dir = tempfile::tempdir().expect("dir");
        let audit = Arc::new(Audit::open(dir.path()).expect("audit"));
        let policy = NodeForwardPolicy::new(CLUSTER.into(), audit);
        let written = (0..REFUSALS_AUDITED_PER_SECOND + 5)
            .filter(|_| policy.audit_refusal())
            .count();
        assert_eq!(written, REFUSALS_AUDITED_PER_SECOND as usize);
        // The next second: the count is written, and refusals again.
        if let Ok(mut refusals) = policy.refusals.lock() {
            refusals.end_second();
        }
        assert!(policy.audit_refusal());
        let log = std::fs::read_to_string(dir.path().join("audit.log")).expect("audit log");
        assert!(log.contains("5 more refused forwards"), "{log}");
    }
}

//! The cluster's CA over time. The state holds one CA record: the roots
//! every node trusts, the CA that signs node certificates, what a node's
//! chain carries above its certificate, the signer's key sealed with the
//! data key, and a generation that grows with every change of the record.
//!
//! A rotation (`shoal cluster ca rotate`: an admin's call, answered by a
//! node that holds the data key) records a new root beside the old one,
//! signing from then on, with the new root cross-signed by the old one in
//! every chain. A node that still trusts only the old root takes the new
//! certificates through the cross-signed one, a node that trusts both takes
//! either, so there is no moment when two nodes cannot talk. Every node
//! follows the record: it trusts the roots the record names, renews its
//! certificate onto the signer it names (soon, at a moment drawn within
//! the renewal loop's spread), and gossips the generation it has taken in
//! full. The leader ends the rotation once every node the cluster holds
//! has taken it: the record then names the new root alone, and a
//! certificate of the old root (a node that was off the whole time, a
//! leaked key of the old CA) is taken by no node. The chain keeps the
//! cross-signed certificate, so a client that trusts only the old root
//! still verifies the nodes until the next rotation. No node joins again;
//! a join token made before the rotation pins the old root and joins
//! until the rotation ends.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use shoal_api::server::{ApiError, Audited};
use shoal_api::wire::{CaCertView, CaNodeView, CaView};
use shoal_cluster::log::ReplicatedLog;
use shoal_cluster::membership::Member;
use shoal_cluster::raft::ProposeError;
use shoal_pki::ca::Ca;
use shoal_pki::seal::DataKey;
use shoal_state::security::CaRecord;
use shoal_state::{ApplyError, Command};
use shoal_types::{consensus_id, NodeStatus};

use super::gate::Caller;
use super::Shared;
use crate::clock::now_ms;

/// How often a node looks at the state's CA record.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// A node whose certificate is still not of the record's signer asks its
/// renewal loop again after this (the loop retries failures by itself).
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(60);

pub fn router<R: Send + Sync + 'static>(shared: Arc<Shared<R>>) -> Router {
    Router::new()
        .route("/v1/cluster/ca", get(show::<R>))
        .route("/v1/cluster/ca/rotate", post(rotate::<R>))
        .with_state(shared)
}

/// Whether a rotation is under way: the record names more than one root.
pub fn rotating(record: &CaRecord) -> bool {
    shoal_pki::ca::bundle_certificates(&record.roots_pem).is_ok_and(|roots| roots.len() > 1)
}

/// The record that starts a rotation from `record`, whose signer is
/// `current`: a new root of the next generation, signing from now on, its
/// key sealed with the data key, trusted beside the roots of `record`,
/// and cross-signed by `current` for every chain.
pub fn started(
    record: &CaRecord,
    current: &Ca,
    data_key: &DataKey,
    cluster_id: &str,
    now: SystemTime,
) -> anyhow::Result<CaRecord> {
    let generation = record
        .generation
        .checked_add(1)
        .context("the CA's generation is at its end")?;
    let next = Ca::generate(cluster_id, generation, now)?;
    let cross = current.cross_sign(&next, cluster_id, generation, now)?;
    let key_sealed = super::trust::seal_ca_key(data_key, &next)?;
    Ok(CaRecord {
        roots_pem: format!("{}\n{}", record.roots_pem.trim_end(), next.cert_pem()),
        signer_pem: next.cert_pem().to_string(),
        chain_pem: cross,
        key_sealed,
        generation,
    })
}

/// The record that ends the rotation `record` is in: the signer's root
/// alone, the chain kept (a client that trusts only the old root still
/// verifies the nodes by it), the next generation.
pub fn ended(record: &CaRecord) -> Option<CaRecord> {
    Some(CaRecord {
        roots_pem: record.signer_pem.clone(),
        generation: record.generation.checked_add(1)?,
        ..record.clone()
    })
}

/// Whether a node that trusts `roots_pem` and shows `chain_pem` has taken
/// `record` in full: the same roots, its certificate of the signer.
pub fn taken(record: &CaRecord, roots_pem: &str, chain_pem: &str) -> bool {
    same_bundle(&record.roots_pem, roots_pem)
        && shoal_pki::ca::issued_by(chain_pem, &record.signer_pem)
}

fn same_bundle(a: &str, b: &str) -> bool {
    // The same text, as it is every second but the one after a change.
    if a == b {
        return true;
    }
    match (shoal_pki::ca::bundle_hash(a), shoal_pki::ca::bundle_hash(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The nodes whose word counts for a rotation: every node the cluster
/// admitted and has not removed (`shoal node rm`), whether the state holds
/// its record or has forgotten it (a node down for a while comes back
/// with its certificate and must be able to renew it), but not one whose
/// record says it left; with the generation each gossips it has taken (0
/// when not heard). A member counts only under its own consensus id.
pub fn held_by_nodes(
    state: &shoal_state::State,
    members: &[Member],
    own: (&str, u32),
) -> BTreeMap<String, u32> {
    let heard: BTreeMap<&str, u32> = members
        .iter()
        .filter(|member| member.facts.raft_id == consensus_id(&member.facts.name))
        .map(|member| (member.facts.name.as_str(), member.facts.ca_generation))
        .chain(std::iter::once(own))
        .collect();
    state
        .security
        .admissions
        .keys()
        .filter(|name| {
            state
                .nodes
                .get(*name)
                .is_none_or(|node| node.status != NodeStatus::Left)
        })
        .map(|name| (name.clone(), heard.get(name.as_str()).copied().unwrap_or(0)))
        .collect()
}

/// The nodes that have not taken `generation` yet.
pub fn behind(held: &BTreeMap<String, u32>, generation: u32) -> Vec<String> {
    held.iter()
        .filter(|(_, taken)| **taken < generation)
        .map(|(name, _)| name.clone())
        .collect()
}

/// The roots the state names now (the node's own before the state holds a
/// CA): what a joiner, a renewing node and a join token are given.
pub fn roots_now<R, L: ReplicatedLog>(shared: &Shared<R, L>) -> String {
    shared.raft.read().security.ca.as_ref().map_or_else(
        || shared.trust.credentials.roots_pem(),
        |record| record.roots_pem.clone(),
    )
}

/// What a join token made now pins: the root that signs (the newest), so
/// that the token joins during a rotation and after its end.
pub fn pin_now<R, L: ReplicatedLog>(shared: &Shared<R, L>) -> anyhow::Result<String> {
    let signer = shared
        .raft
        .read()
        .security
        .ca
        .as_ref()
        .map(|record| record.signer_pem.clone());
    let pinned = signer.unwrap_or_else(|| shared.trust.credentials.roots_pem());
    Ok(shoal_pki::ca::bundle_hash(&pinned)?)
}

/// Follows the state's CA record for as long as the node runs; the leader
/// also ends a rotation once every node has taken it.
pub async fn run<R: Send + Sync + 'static>(shared: Arc<Shared<R>>) {
    let mut asked = None;
    loop {
        if let Err(error) = follow(&shared, &mut asked).await {
            tracing::warn!(error = %format!("{error:#}"), "following the cluster's CA");
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

async fn follow<R>(shared: &Shared<R>, asked: &mut Option<(u32, Instant)>) -> anyhow::Result<()> {
    let Some(record) = shared.raft.read().security.ca.clone() else {
        return Ok(());
    };
    // A replica that has not caught up yet (at start, its snapshot before
    // the log is applied again) may hold an older record: roots never go
    // back to an older generation.
    if record.generation < shared.trust.roots_generation() {
        return Ok(());
    }
    if !same_bundle(&record.roots_pem, &shared.trust.credentials.roots_pem()) {
        shared
            .trust
            .adopt_roots(&record.roots_pem, record.generation)?;
        rewrite_admin_credential(&shared.config.data_dir, &record.roots_pem)?;
        tracing::info!(
            generation = record.generation,
            roots = shoal_pki::ca::bundle_certificates(&record.roots_pem).map_or(0, |r| r.len()),
            "now trusting the roots of the cluster's CA record"
        );
    }
    let chain = shared.trust.chain_pem();
    if taken(&record, &shared.trust.credentials.roots_pem(), &chain) {
        if shared.ca_generation.load(Ordering::Relaxed) != record.generation {
            shared
                .ca_generation
                .store(record.generation, Ordering::Relaxed);
            super::cluster::spread_facts(shared);
        }
    } else if !shoal_pki::ca::issued_by(&chain, &record.signer_pem) {
        let due = asked.is_none_or(|(generation, at): (u32, Instant)| {
            generation != record.generation || at.elapsed() >= ASK_AGAIN_AFTER
        });
        if due {
            tracing::info!(
                generation = record.generation,
                "this node's certificate is not of the CA that signs now: renewing"
            );
            shared.renew_now.notify_one();
            *asked = Some((record.generation, Instant::now()));
        }
    }
    if rotating(&record) && shared.trust.data_key.is_some() && shared.is_leader() {
        let held = held_by_nodes(
            &shared.raft.read(),
            &shared.membership.members(),
            (
                &shared.config.name,
                shared.ca_generation.load(Ordering::Relaxed),
            ),
        );
        let behind = behind(&held, record.generation);
        if !behind.is_empty() {
            tracing::debug!(
                ?behind,
                generation = record.generation,
                "nodes still renew onto the new CA"
            );
            return Ok(());
        }
        let end = ended(&record).context("the CA's generation is at its end")?;
        shared
            .raft
            .propose(now_ms(), Command::SetCa { ca: end.clone() })
            .await?;
        tracing::info!(
            generation = end.generation,
            "every node holds a certificate of the new CA: the rotation ended, the old root is trusted no more"
        );
    }
    Ok(())
}

/// The node that formed the cluster keeps the first admin credential in
/// `DATA_DIR/admin.json`: it trusts the roots of the moment too.
fn rewrite_admin_credential(data_dir: &std::path::Path, roots_pem: &str) -> anyhow::Result<()> {
    let path = data_dir.join("admin.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => zeroize::Zeroizing::new(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    let mut credential: shoal_api::client::Credential = serde_json::from_slice(&bytes)?;
    if credential.ca_pem != roots_pem {
        credential.ca_pem = roots_pem.to_string();
        super::trust::write_admin(data_dir, &credential)?;
    }
    Ok(())
}

fn cert_view(pem: &str) -> Result<CaCertView, ApiError> {
    let summary = shoal_pki::ca::summary(pem).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(CaCertView {
        subject: summary.subject,
        sha256: summary.sha256,
        not_after_ms: summary
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    })
}

fn view<R>(shared: &Shared<R>, record: &CaRecord) -> Result<CaView, ApiError> {
    let roots = shoal_pki::ca::bundle_certificates(&record.roots_pem)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .iter()
        .map(|pem| cert_view(pem))
        .collect::<Result<Vec<_>, _>>()?;
    let held = held_by_nodes(
        &shared.raft.read(),
        &shared.membership.members(),
        (
            &shared.config.name,
            shared.ca_generation.load(Ordering::Relaxed),
        ),
    );
    Ok(CaView {
        generation: record.generation,
        rotating: roots.len() > 1,
        roots,
        signer: cert_view(&record.signer_pem)?,
        nodes: held
            .into_iter()
            .map(|(name, generation)| CaNodeView { name, generation })
            .collect(),
    })
}

fn record_of<R>(shared: &Shared<R>) -> Result<CaRecord, ApiError> {
    shared
        .raft
        .read()
        .security
        .ca
        .clone()
        .ok_or_else(|| ApiError::unavailable("the cluster has no CA yet; try again"))
}

/// `GET /v1/cluster/ca`.
async fn show<R>(State(shared): State<Arc<Shared<R>>>) -> Result<Json<CaView>, ApiError> {
    super::gate::caught_up(&shared.raft).await?;
    Ok(Json(view(&shared, &record_of(&shared)?)?))
}

/// `POST /v1/cluster/ca/rotate` (admin; on a node that holds the data key).
async fn rotate<R>(
    State(shared): State<Arc<Shared<R>>>,
    Extension(caller): Extension<Caller>,
) -> Result<(Extension<Audited>, Json<CaView>), ApiError> {
    super::gate::caught_up(&shared.raft).await?;
    let record = record_of(&shared)?;
    if rotating(&record) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "a rotation of the cluster's CA is under way (generation {}): it ends by itself once every node holds a certificate of the new root; see `shoal cluster ca info`",
                record.generation
            ),
        ));
    }
    let Some(data_key) = &shared.trust.data_key else {
        return Err(ApiError::unavailable(
            "this node holds no data key to make a CA with (workers never do): send the request to a voter node",
        ));
    };
    let current = shared
        .trust
        .signer(&record)
        .map_err(|e| ApiError::internal(format!("{e:#}")))?
        .ok_or_else(|| ApiError::internal("the CA does not open with this node's data key"))?;
    let next = started(
        &record,
        &current,
        data_key,
        &shared.cluster_id,
        SystemTime::now(),
    )
    .map_err(|e| ApiError::internal(format!("making the new root: {e:#}")))?;
    shared
        .raft
        .propose(now_ms(), Command::SetCa { ca: next.clone() })
        .await
        .map_err(|error| match error {
            ProposeError::MixedVersions(why) => ApiError::new(StatusCode::CONFLICT, why),
            // Another rotation was recorded first.
            ProposeError::Rejected(ApplyError::Refused(why)) => {
                ApiError::new(StatusCode::CONFLICT, why)
            }
            ProposeError::Rejected(error) => ApiError::bad_request(error.to_string()),
            other => ApiError::unavailable(other.to_string()),
        })?;
    tracing::info!(
        generation = next.generation,
        by = %caller.label(),
        "started a rotation of the cluster's CA"
    );
    Ok((
        Extension(Audited(format!("ca generation {}", next.generation))),
        Json(view(&shared, &next)?),
    ))
}

#[cfg(test)]
mod tests {
    use shoal_cluster::membership::{MemberStatus, NodeFacts};
    use shoal_state::security::{Admission, NodeRole};
    use shoal_types::Node;

    use super::super::trust::{CA_KEY_AAD, DATA_KEY_ID};
    use super::*;

    fn member(name: &str, raft_id: u64, ca_generation: u32) -> Member {
        Member {
            facts: NodeFacts {
                name: name.into(),
                raft_id,
                ca_generation,
                ..NodeFacts::default()
            },
            gossip_addr: "127.0.0.1:7946".parse().expect("addr"),
            status: MemberStatus::Alive,
            since_ms: 0,
        }
    }

    /// A rotation starts with both roots, the new signer and the
    /// cross-signed root in every chain; it ends with the new root alone,
    /// the chain kept; a node has taken a record only with its roots and a
    /// certificate of its signer.
    #[test]
    fn a_rotation_starts_with_both_roots_and_ends_with_the_new_one() {
        let now = SystemTime::now();
        let data_key = DataKey::generate();
        let old = Ca::generate("c1", 1, now).expect("ca");
        let first = CaRecord {
            roots_pem: old.cert_pem().to_string(),
            signer_pem: old.cert_pem().to_string(),
            chain_pem: String::new(),
            key_sealed: String::new(),
            generation: 1,
        };
        assert!(!rotating(&first));
        let next = started(&first, &old, &data_key, "c1", now).expect("started");
        assert_eq!(next.generation, 2);
        assert!(rotating(&next));
        let roots = shoal_pki::ca::bundle_certificates(&next.roots_pem).expect("roots");
        assert_eq!(roots.len(), 2);
        assert!(same_bundle(&roots[0], old.cert_pem()));
        assert!(same_bundle(&roots[1], &next.signer_pem));
        assert!(shoal_pki::ca::issued_by(&next.chain_pem, old.cert_pem()));
        // The new key, sealed with the data key, opens as the signer's.
        let sealed = hex::decode(&next.key_sealed).expect("hex");
        let key = shoal_pki::seal::open(
            |id| (id == DATA_KEY_ID).then_some(&data_key),
            CA_KEY_AAD,
            &sealed,
        )
        .expect("opens");
        let signer = Ca::from_pem(&next.signer_pem, std::str::from_utf8(&key).expect("pem"))
            .expect("the key is the signer's");

        let identity = shoal_pki::identity::Identity {
            cluster_id: "c1".into(),
            role: shoal_pki::identity::Role::Worker,
            name: "n1".into(),
            admission: shoal_pki::identity::Identity::new_admission(),
        };
        let (old_leaf, _) = old
            .issue_new_key(&identity, Duration::from_secs(600), now)
            .expect("leaf");
        let (new_leaf, _) = signer
            .issue_new_key(&identity, Duration::from_secs(600), now)
            .expect("leaf");
        let new_chain = format!("{new_leaf}{}", next.chain_pem);
        assert!(taken(&first, old.cert_pem(), &old_leaf));
        assert!(!taken(&next, old.cert_pem(), &new_chain), "old roots");
        assert!(!taken(&next, &next.roots_pem, &old_leaf), "old leaf");
        assert!(taken(&next, &next.roots_pem, &new_chain));

        let end = ended(&next).expect("a generation left");
        assert_eq!(end.generation, 3);
        assert!(!rotating(&end));
        assert!(same_bundle(&end.roots_pem, &next.signer_pem));
        assert_eq!(end.chain_pem, next.chain_pem);
        assert_eq!(end.key_sealed, next.key_sealed);
        assert!(taken(&end, &end.roots_pem, &new_chain));
        let last = CaRecord {
            generation: u32::MAX,
            ..end
        };
        assert_eq!(ended(&last), None);
        assert!(started(&last, &signer, &data_key, "c1", now).is_err());
    }

    /// Who holds a rotation from ending: every admitted node that has not
    /// gossiped the generation (not heard: 0), under its own consensus id,
    /// also one the state has forgotten (down a while); not a node that
    /// left, not one never admitted.
    #[test]
    fn a_rotation_waits_for_every_admitted_node() {
        let mut state = shoal_state::State::default();
        for (name, status) in [
            ("a", NodeStatus::Alive),
            ("b", NodeStatus::Dead),
            ("c", NodeStatus::Alive),
            ("d", NodeStatus::Left),
            ("e", NodeStatus::Alive),
            ("f", NodeStatus::Dead),
        ] {
            let mut node = Node::sample(name, &format!("{name}:7950"));
            node.status = status;
            // f was down long enough to be forgotten.
            if name != "f" {
                state.nodes.insert(name.into(), node);
            }
            if name != "e" {
                state.security.admissions.insert(
                    name.into(),
                    Admission {
                        role: NodeRole::Voter,
                        admission: "00000000000000a1".into(),
                        admitted_at_ms: 1,
                        token: String::new(),
                        facts_key: String::new(),
                    },
                );
            }
        }
        let members = [
            member("b", consensus_id("b"), 2),
            // Another process naming itself c under another id.
            member("c", 7, 2),
            member("d", consensus_id("d"), 0),
        ];
        let held = held_by_nodes(&state, &members, ("a", 2));
        assert_eq!(
            held,
            BTreeMap::from([
                ("a".into(), 2),
                ("b".into(), 2),
                ("c".into(), 0),
                ("f".into(), 0)
            ])
        );
        assert_eq!(behind(&held, 2), vec!["c".to_string(), "f".to_string()]);
        assert_eq!(behind(&held, 1), vec!["c".to_string(), "f".to_string()]);
        let members = [
            member("b", consensus_id("b"), 2),
            member("c", consensus_id("c"), 2),
            member("f", consensus_id("f"), 2),
        ];
        assert!(behind(&held_by_nodes(&state, &members, ("a", 2)), 2).is_empty());
        assert_eq!(
            behind(&held_by_nodes(&state, &members, ("a", 1)), 2),
            vec!["a".to_string()]
        );
    }
}

//! This node's facts key: the Ed25519 key its gossip facts are signed
//! with, so that no other holder of the gossip keyring can speak for it.
//!
//! The key is made at the node's first start and kept beside its TLS key
//! (`pki/facts.key`, 0600, PKCS#8); it stays the same across certificate
//! renewals. Once every node reads format 9 the node records its public
//! half for its admission in the state (`SetFactsKey`, which only the node
//! itself may have appended: the leader takes the proposer from the
//! certificate that forwarded it), and every node checks the facts of a
//! node whose key the state holds against that key (`shoal_cluster`'s
//! `membership::signing`). A node that joins again under its name (a new
//! admission) records its key again; until a node's key is recorded its
//! facts are taken unsigned, as before 0.9.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use shoal_cluster::membership::{parse_facts_key, FactsKeys, FactsSigner};
use shoal_state::format::FACTS_KEYS;
use shoal_state::{Command, State};
use zeroize::Zeroizing;

use super::trust::write_private;
use super::Shared;
use crate::clock::now_ms;

/// The key's file in the node's PKI directory.
pub const FILE: &str = "facts.key";
/// How often the state is looked at without a change.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);
/// The least time between two looks: the log may apply thousands of
/// entries a second, and the keys are rebuilt from every admission.
const FOLLOW_GAP: Duration = Duration::from_millis(500);
/// The first and the longest wait after recording the key failed.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The node's facts key: read from `pki_dir`, or made and kept there.
pub fn load_or_make(pki_dir: &Path) -> anyhow::Result<Arc<FactsSigner>> {
    let path = pki_dir.join(FILE);
    let pkcs8 = match std::fs::read(&path) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let pkcs8 = FactsSigner::generate_pkcs8()?;
            write_private(&path, &pkcs8)?;
            tracing::info!(path = %path.display(), "made this node's facts key");
            pkcs8
        }
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let signer = FactsSigner::from_pkcs8(&pkcs8)
        .with_context(|| format!("reading {} (this node's facts key)", path.display()))?;
    Ok(Arc::new(signer))
}

/// The facts keys the state holds, by node name.
pub fn keys(state: &State) -> FactsKeys {
    state
        .security
        .admissions
        .iter()
        .filter_map(|(name, admission)| {
            parse_facts_key(&admission.facts_key).map(|key| (name.clone(), key))
        })
        .collect()
}

/// What this node should propose about its key, if anything: the state
/// holds its admission with another key (or none), and the cluster writes
/// format 9.
pub fn to_record(
    state: &State,
    cluster_format: u32,
    node: &str,
    admission: &str,
    key: &str,
) -> Option<Command> {
    if state.log_version.max(cluster_format) < FACTS_KEYS {
        return None;
    }
    let known = state.security.admissions.get(node)?;
    (known.admission == admission && known.facts_key != key).then(|| Command::SetFactsKey {
        node: node.to_string(),
        admission: admission.to_string(),
        key: key.to_string(),
    })
}

/// Hands gossip the state's facts keys whenever they change, and records
/// this node's key when the state lacks it.
pub async fn run<R: Send + Sync + 'static>(shared: Arc<Shared<R>>, signer: Arc<FactsSigner>) {
    let mut changes = shared.raft.subscribe();
    let own = signer.public_hex();
    let mut given: Option<FactsKeys> = None;
    let mut retry_at = Instant::now();
    let mut backoff = RETRY_MIN;
    loop {
        let (keys, record) = {
            let state = shared.raft.read();
            (
                keys(&state),
                to_record(
                    &state,
                    shared.raft.cluster_log_version(),
                    &shared.config.name,
                    &shared.trust.identity.admission,
                    &own,
                ),
            )
        };
        if given.as_ref() != Some(&keys) {
            shared.membership.set_facts_keys(keys.clone());
            given = Some(keys);
        }
        if let Some(command) = record.filter(|_| Instant::now() >= retry_at) {
            match shared.raft.propose(now_ms(), command).await {
                Ok(_) => {
                    tracing::info!(key = %own, "recorded this node's facts key");
                    backoff = RETRY_MIN;
                }
                Err(error) => {
                    tracing::warn!(%error, "recording this node's facts key");
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
        tokio::time::sleep(FOLLOW_GAP).await;
        let _ = tokio::time::timeout(FOLLOW_INTERVAL - FOLLOW_GAP, changes.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_state::security::{Admission, NodeRole};

    fn state(log_version: u32, key: &str) -> State {
        let mut state = State {
            log_version,
            ..State::default()
        };
        state.security.admissions.insert(
            "n1".into(),
            Admission {
                admission: "00000000000000a1".into(),
                role: NodeRole::Worker,
                admitted_at_ms: 1,
                token: String::new(),
                facts_key: key.into(),
            },
        );
        state
    }

    #[test]
    fn the_key_is_made_once_kept_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let made = load_or_make(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_make(dir.path()).unwrap();
        assert_eq!(made.public_hex(), again.public_hex());
        std::fs::write(dir.path().join(FILE), b"garbage").unwrap();
        let error = load_or_make(dir.path()).unwrap_err();
        assert!(format!("{error:#}").contains("facts key"), "{error:#}");
    }

    #[test]
    fn a_node_records_its_key_once_the_cluster_writes_format_9_for_its_admission() {
        let key = "ab".repeat(32);
        let record = |state: &State, format, admission: &str| {
            to_record(state, format, "n1", admission, &key)
        };
        assert_eq!(
            record(&state(8, ""), 8, "00000000000000a1"),
            None,
            "format 8"
        );
        let wanted = Some(Command::SetFactsKey {
            node: "n1".into(),
            admission: "00000000000000a1".into(),
            key: key.clone(),
        });
        assert_eq!(record(&state(8, ""), 9, "00000000000000a1"), wanted);
        assert_eq!(record(&state(9, ""), 8, "00000000000000a1"), wanted);
        // Another key recorded (the node lost its file): recorded again.
        assert_eq!(
            record(&state(9, &"cd".repeat(32)), 9, "00000000000000a1"),
            wanted
        );
        // Recorded already, another admission, or not admitted: nothing.
        assert_eq!(record(&state(9, &key), 9, "00000000000000a1"), None);
        assert_eq!(record(&state(9, ""), 9, "00000000000000b1"), None);
        assert_eq!(
            to_record(&state(9, ""), 9, "n2", "00000000000000a1", &key),
            None
        );
        // Only well-formed keys are handed to gossip.
        assert_eq!(keys(&state(9, &key)).len(), 1);
        assert!(keys(&state(9, "")).is_empty());
        assert!(keys(&state(9, "xyz")).is_empty());
    }
}

//! The leader's part in the gossip keyring: a ring when the state holds
//! none, the ring again once the cluster seals, and a key rotation step by
//! step (install, seal with, remove), each step only once every live
//! member holds the ring as it is.

use std::time::Duration;

use anyhow::Context;
use shoal_cluster::membership::{GossipKeyring, MemberStatus};
use shoal_state::format::{PROVEN_IDENTITIES, SEALED_GOSSIP};
use shoal_state::security::GossipKeysRecord;
use shoal_state::Command;

use super::gossip_keys::{open_record, seal_record, Held};
use super::Shared;
use crate::clock::now_ms;

/// The leader's part: a ring when the state holds none (a cluster formed
/// before shoal 0.7); the ring again once the cluster's format is 7, and
/// again once it is 12, so that an entry of that format is applied
/// everywhere even when nothing else is written (nodes seal, and then
/// prove their identities, once they have applied one); and, in a cluster
/// that seals, the next step of a key rotation once every live member
/// holds the ring as it is.
pub async fn lead<R>(shared: &Shared<R>, held: &Held) -> anyhow::Result<()> {
    let Some(data_key) = &shared.trust.data_key else {
        return Ok(());
    };
    let now = now_ms();
    let (record, applied, removed_at) = {
        let state = shared.raft.read();
        (
            state.security.gossip.clone(),
            state.log_version,
            state
                .security
                .removed
                .values()
                .map(|removed| removed.removed_at_ms)
                .max(),
        )
    };
    // The ring this node follows is the state's, unless it has not taken
    // the newest yet: opened once per generation, not on every pass.
    let ring_of = |record: &GossipKeysRecord| match &held.keyring {
        Some(ring) if held.generation == record.generation => Ok(ring.clone()),
        _ => open_record(data_key, record),
    };
    let cluster = shared.raft.cluster_log_version();
    let passed = |format: u32| applied < format && cluster >= format;
    let keys = match record {
        None => seal_record(data_key, 1, &GossipKeyring::generate(1, now), now)?,
        Some(record) if passed(SEALED_GOSSIP) || passed(PROVEN_IDENTITIES) => {
            seal_record(data_key, record.generation + 1, &ring_of(&record)?, now)?
        }
        Some(_) if applied < SEALED_GOSSIP => return Ok(()),
        Some(record) => {
            let Some(next) = rotation_step(
                &ring_of(&record)?,
                removed_at,
                shared.config.gossip_key_rotation,
                now,
            ) else {
                return Ok(());
            };
            // Due: only once every live member the cluster admits holds the
            // ring as it is (a removed node never gets it again).
            let behind: Vec<String> = {
                let state = shared.raft.read();
                shared
                    .membership
                    .members()
                    .into_iter()
                    .filter(|member| {
                        matches!(member.status, MemberStatus::Alive | MemberStatus::Suspect)
                            && state.security.admissions.contains_key(&member.facts.name)
                            && member.facts.gossip_keys < record.generation
                    })
                    .map(|member| member.facts.name)
                    .collect()
            };
            if !behind.is_empty() {
                tracing::debug!(
                    ?behind,
                    generation = record.generation,
                    "members still take the gossip keyring"
                );
                return Ok(());
            }
            seal_record(data_key, record.generation + 1, &next, now)?
        }
    };
    let (generation, ids, primary) = (keys.generation, keys.ids.clone(), keys.primary);
    shared
        .raft
        .propose(now, Command::SetGossipKeys { keys })
        .await
        .context("recording the gossip keyring")?;
    tracing::info!(
        generation,
        ?ids,
        primary,
        "recorded the cluster's gossip keyring"
    );
    Ok(())
}

/// The next step of a rotation of `ring`, if one is due. A rotation
/// installs a new key (every node opens with it, the old key still seals),
/// then makes it the primary (every node opens with both), then removes
/// the old keys (every node seals with the new one); the caller takes a
/// step only once every live member holds the ring as it is, so no member
/// ever gets a datagram it cannot open. A rotation starts when the newest
/// key is `every` old, and at once when a node was removed after the
/// newest key was made (it may hold it).
pub fn rotation_step(
    ring: &GossipKeyring,
    removed_at_ms: Option<u64>,
    every: Duration,
    now_ms: u64,
) -> Option<GossipKeyring> {
    let newest = ring.keys.iter().max_by_key(|key| key.id)?;
    let mut next = ring.clone();
    if ring.keys.len() > 1 && ring.primary != newest.id {
        next.primary = newest.id;
        return Some(next);
    }
    if ring.keys.len() > 1 {
        next.keys.retain(|key| key.id == newest.id);
        return Some(next);
    }
    let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
    let due = now_ms.saturating_sub(newest.created_ms) >= every_ms
        || removed_at_ms.is_some_and(|at| at >= newest.created_ms);
    if !due {
        return None;
    }
    let fresh = GossipKeyring::generate(newest.id.wrapping_add(1).max(1), now_ms);
    next.keys.extend(fresh.keys.iter().cloned());
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_installs_then_seals_with_then_removes_a_new_key() {
        const DAY: u64 = 86_400_000;
        let every = Duration::from_millis(DAY);
        let ring = GossipKeyring::generate(1, 1_000);
        assert!(
            rotation_step(&ring, None, every, 1_000 + DAY - 1).is_none(),
            "not due"
        );
        assert!(
            rotation_step(&ring, Some(999), every, 2_000).is_none(),
            "removed before the key was made"
        );
        // Due by age: a new key joins, the old one still seals.
        let installed = rotation_step(&ring, None, every, 1_000 + DAY).expect("due");
        assert_eq!((installed.ids(), installed.primary), (vec![1, 2], 1));
        assert_eq!(installed.keys[1].created_ms, 1_000 + DAY);
        assert_ne!(installed.keys[0].key, installed.keys[1].key);
        // Then it seals, then the old one goes; then nothing until due.
        let sealing = rotation_step(&installed, None, every, 1_000 + DAY).expect("step 2");
        assert_eq!((sealing.ids(), sealing.primary), (vec![1, 2], 2));
        let rotated = rotation_step(&sealing, None, every, 1_000 + DAY).expect("step 3");
        assert_eq!((rotated.ids(), rotated.primary), (vec![2], 2));
        assert_eq!(rotated.keys[0].key, installed.keys[1].key);
        assert!(rotation_step(&rotated, None, every, 2_000 + DAY).is_none());
        // A node removed after the newest key was made: at once.
        let at_once = rotation_step(&rotated, Some(1_000 + DAY), every, 2_000 + DAY)
            .expect("a removed node may hold the key");
        assert_eq!((at_once.ids(), at_once.primary), (vec![2, 3], 2));
        for ring in [&installed, &sealing, &rotated, &at_once] {
            assert!(ring.check().is_ok(), "{ring:?}");
        }
    }
}

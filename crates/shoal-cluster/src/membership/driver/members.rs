//! foca's notifications, and the member list the handle returns: the
//! newest identity per name, its status (left or dead by the facts' flag)
//! and since when, with its facts.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use foca::{OwnedNotification, State};
use tokio::time::Instant;

use super::super::facts;
use super::super::identity::NodeId;
use super::super::{wall_ms, Member, MemberStatus, MEMBERS_MAX};
use super::{Driver, Tracked, JOIN_RETRY_MIN};

impl Driver {
    pub(super) fn notified(&mut self, notification: OwnedNotification<NodeId>) {
        match notification {
            OwnedNotification::MemberUp(id) => {
                tracing::info!(node = %self.name, member = ?id, "member up");
                // Whoever is new learns this node's facts.
                self.rebroadcast_facts = true;
            }
            OwnedNotification::MemberDown(id) => {
                tracing::info!(node = %self.name, member = ?id, "member down");
            }
            OwnedNotification::Rename(old, new) => {
                tracing::debug!(node = %self.name, ?old, ?new, "member restarted");
            }
            OwnedNotification::Active => {
                tracing::info!(node = %self.name, "joined the cluster");
                self.seed_backoff = JOIN_RETRY_MIN;
            }
            OwnedNotification::Idle => {
                tracing::info!(node = %self.name, "no other live member known");
                self.seed_backoff = JOIN_RETRY_MIN;
                self.seed_retry_at = Instant::now() + JOIN_RETRY_MIN;
            }
            OwnedNotification::Defunct if self.own_status != MemberStatus::Left => {
                tracing::warn!(node = %self.name, "declared down by the cluster");
            }
            OwnedNotification::Rejoin(id) => {
                tracing::info!(node = %self.name, identity = ?id, "declared down, rejoined");
                self.rebroadcast_facts = true;
            }
            #[allow(unreachable_patterns)] // with foca's `unstable-notifications`
            _ => {}
        }
    }

    /// Rebuilds the member list if foca's members or the facts changed.
    pub(super) fn publish(&mut self) {
        let table = facts::lock(&self.facts);
        let mut hasher = DefaultHasher::new();
        table.generation.hash(&mut hasher);
        self.own_status.hash(&mut hasher);
        for member in self.foca.iter_membership_state() {
            member.id().hash(&mut hasher);
            (member.state() as u8).hash(&mut hasher);
        }
        let fingerprint = hasher.finish();
        if self.fingerprint == Some(fingerprint) {
            return;
        }
        self.fingerprint = Some(fingerprint);

        let own = self.foca.identity();
        // The newest identity per name; a node restarted on another address
        // leaves its old identity behind until the old one is forgotten.
        // Where the node's signed facts name its address, only an identity
        // at that address speaks for it: another member announcing itself
        // under the node's name elsewhere does not. (A newer identity at
        // that address is the node restarted or rejoined, whose new facts
        // follow its announce; it is listed with the signed facts it had.)
        let mut newest: HashMap<&str, (&NodeId, State)> = HashMap::new();
        for member in self.foca.iter_membership_state() {
            let id = member.id();
            if id.addr == own.addr || id.name == own.name {
                continue;
            }
            let vouched = table.entries.get(&id.name).is_none_or(|entry| {
                !entry.verified || entry.msg.addr.is_none_or(|addr| addr == id.addr)
            });
            if !vouched {
                continue;
            }
            let slot = newest
                .entry(id.name.as_str())
                .or_insert((id, member.state()));
            if id.boot > slot.0.boot {
                *slot = (id, member.state());
            }
        }

        let now_ms = wall_ms();
        let mut tracked = HashMap::with_capacity(newest.len());
        let mut members = Vec::with_capacity(newest.len() + 1);
        for (name, (id, state)) in newest {
            let known = table.entries.get(name).map(|entry| &entry.msg);
            let status = match state {
                State::Alive => MemberStatus::Alive,
                State::Suspect => MemberStatus::Suspect,
                State::Down if known.is_some_and(|msg| msg.left && msg.boot == id.boot) => {
                    MemberStatus::Left
                }
                State::Down => MemberStatus::Dead,
            };
            let since_ms = match self.tracked.get(name) {
                Some(before) if before.status == status && before.boot == id.boot => {
                    before.since_ms
                }
                _ => now_ms,
            };
            tracked.insert(
                name.to_owned(),
                Tracked {
                    boot: id.boot,
                    addr: id.addr,
                    status,
                    since_ms,
                },
            );
            if let Some(msg) = known {
                members.push(Member {
                    facts: msg.facts.clone(),
                    gossip_addr: id.addr,
                    status,
                    since_ms,
                });
            }
        }
        drop(table);
        self.tracked = tracked;
        self.peers_changed = true;
        members.sort_by(|a, b| a.facts.name.cmp(&b.facts.name));
        members.truncate(MEMBERS_MAX - 1);
        let own = Member {
            facts: self.own_facts.clone(),
            gossip_addr: self.foca.identity().addr,
            status: self.own_status,
            since_ms: self.started_ms,
        };
        let at = members.partition_point(|m| m.facts.name < own.facts.name);
        members.insert(at, own);
        self.shared.publish(members);
    }
}

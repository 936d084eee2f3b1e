//! foca's timers, due by tokio's monotonic clock, and the housekeeping
//! tick: announcing again while no member is known, refreshing this node's
//! facts, forgetting the facts of nodes foca forgot.

use std::cmp::Reverse;
use std::collections::HashSet;

use tokio::time::Instant;

use super::super::facts;
use super::super::FACTS_REFRESH_INTERVAL;
use super::{Driver, FACTS_ORPHAN_TTL, JOIN_RETRY_MAX};

impl Driver {
    pub(super) fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while self
            .timers
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            let Some(Reverse((_, _, timer))) = self.timers.pop() else {
                break;
            };
            if let Err(err) = self.foca.handle_timer(timer, &mut self.runtime) {
                tracing::debug!("gossip timer: {err}");
            }
        }
    }

    pub(super) fn housekeeping(&mut self) {
        let now = Instant::now();
        if self.foca.num_members() == 0 && !self.seeds.is_empty() && now >= self.seed_retry_at {
            tracing::debug!(
                seeds = self.seeds.len(),
                "no member known: announcing again"
            );
            let seeds = self.seeds.clone();
            self.announce(&seeds);
            self.seed_backoff = (self.seed_backoff * 2).min(JOIN_RETRY_MAX);
            self.seed_retry_at = now + self.seed_backoff;
        }
        if self.foca.num_members() > 0 && now >= self.facts_refresh_at {
            self.rebroadcast_facts = true;
            self.facts_refresh_at = now + FACTS_REFRESH_INTERVAL;
        }
        // Forget the facts of nodes foca forgot.
        let listed: HashSet<&str> = self
            .foca
            .iter_membership_state()
            .map(|member| member.id().name.as_str())
            .collect();
        let mut table = facts::lock(&self.facts);
        for (name, entry) in table.entries.iter_mut() {
            if listed.contains(name.as_str()) {
                entry.seen = now;
            }
        }
        if let Some(before) = now.checked_sub(FACTS_ORPHAN_TTL) {
            table.evict_unseen(before, &self.name);
        }
        drop(table);
        self.forget_proofs();
    }
}

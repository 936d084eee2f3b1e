//! The peers this node announces itself to (its seeds at start and while
//! alone, the peers of a join) and the peer cache, written from the members
//! it has seen.

use std::net::SocketAddr;

use tokio::time::Instant;

use super::super::identity::NodeId;
use super::super::{peer_cache, wall_ms, MemberStatus, PEERS_MAX, PEER_CACHE_WRITE_INTERVAL};
use super::Driver;

impl Driver {
    pub(super) fn announce(&mut self, peers: &[SocketAddr]) {
        let own = self.foca.identity().addr;
        for peer in peers.iter().filter(|peer| **peer != own) {
            if let Err(err) = self
                .foca
                .announce(NodeId::probe_target(*peer), &mut self.runtime)
            {
                tracing::debug!(%peer, "announce failed: {err}");
            }
        }
    }

    pub(super) fn join(&mut self, peers: Vec<SocketAddr>) {
        let own = self.foca.identity().addr;
        for peer in &peers {
            if *peer != own && !self.seeds.contains(peer) && self.seeds.len() < PEERS_MAX {
                self.seeds.push(*peer);
            }
        }
        self.announce(&peers);
    }

    /// Writes the peer cache if the peers changed and the last write is old
    /// enough (or `now`). Never replaces the file with an empty list.
    pub(super) fn write_peer_cache(&mut self, now: bool) {
        if !self.peers_changed {
            return;
        }
        let instant = Instant::now();
        if !now
            && self
                .peer_cache_written_at
                .is_some_and(|at| instant.duration_since(at) < PEER_CACHE_WRITE_INTERVAL)
        {
            return;
        }
        let mut peers: Vec<(bool, SocketAddr)> = self
            .tracked
            .values()
            .filter(|t| t.status != MemberStatus::Left)
            .map(|t| (t.status == MemberStatus::Dead, t.addr))
            .collect();
        // Live ones first, then the dead ones, while there is room.
        peers.sort_unstable();
        let mut peers: Vec<SocketAddr> = peers
            .into_iter()
            .map(|(_, addr)| addr)
            .take(PEERS_MAX)
            .collect();
        peers.sort_unstable();
        self.peers_changed = false;
        if peers.is_empty() || peers == self.peer_cache_last {
            return;
        }
        self.peer_cache_written_at = Some(instant);
        match peer_cache::write(
            &self.peer_cache,
            &self.cluster_id,
            &self.name,
            wall_ms(),
            &peers,
        ) {
            Ok(()) => {
                tracing::debug!(path = %self.peer_cache.display(), peers = peers.len(), "peer cache written");
                self.peer_cache_last = peers;
            }
            Err(err) => {
                tracing::warn!("{err}");
                self.peers_changed = true; // retry after the interval
            }
        }
    }
}

//! How to run one Raft node: its identity, timings and bounds, and the
//! openraft configuration made from them.

use std::path::PathBuf;
use std::time::Duration;

use openraft::SnapshotPolicy;

use super::{RaftError, APPEND_ENTRIES_PER_BATCH_MAX, SNAPSHOT_SEND_TIMEOUT_MS};

/// How to run one node.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// Unique and stable for the life of the node's data dir.
    pub node_id: u64,
    pub name: String,
    /// `host:port` where this node's HTTP server listens.
    pub api_addr: String,
    /// Holds `raft.redb`.
    pub data_dir: PathBuf,
    /// Leader heartbeat; also openraft's timeout for one AppendEntries.
    pub heartbeat_ms: u64,
    /// A node picks its election timeout at random in this range, once. A
    /// follower campaigns when it has not heard from the leader for
    /// `election_timeout_max_ms` (the leader's lease) plus that timeout.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Snapshot after this many applied entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot (a follower behind by less
    /// catches up from the log instead of a snapshot).
    pub log_kept_after_snapshot: u64,
    /// How long `propose`, `linearizable_read` and membership calls wait for
    /// a leader and for their answer.
    pub wait_max: Duration,
    /// How this node speaks TLS to its peers: whom it trusts, which
    /// certificate it shows (`shoal_pki::tls::client_config`).
    pub tls: std::sync::Arc<rustls::ClientConfig>,
}

impl RaftConfig {
    /// Defaults for a LAN: heartbeat 100 ms, election timeout 300–600 ms,
    /// a snapshot every 1024 entries, 5 s waits.
    ///
    /// openraft lets a follower that heard from a leader campaign only after
    /// the leader's lease (`election_timeout_max`) *plus* its own random
    /// election timeout, so a failed leader is replaced after 0.9–1.2 s
    /// (plus one tick of 150 ms) with these defaults.
    pub fn new(
        node_id: u64,
        name: impl Into<String>,
        api_addr: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> Self {
        RaftConfig {
            node_id,
            name: name.into(),
            api_addr: api_addr.into(),
            data_dir: data_dir.into(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_every_entries: crate::SNAPSHOT_EVERY_ENTRIES,
            log_kept_after_snapshot: 128,
            wait_max: Duration::from_secs(5),
            tls,
        }
    }

    pub(crate) fn openraft_config(&self) -> Result<openraft::Config, RaftError> {
        openraft::Config {
            cluster_name: "shoal".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: SNAPSHOT_SEND_TIMEOUT_MS,
            max_payload_entries: APPEND_ENTRIES_PER_BATCH_MAX,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries.max(1)),
            max_in_snapshot_log_to_keep: self.log_kept_after_snapshot,
            // Followers further behind than this get a snapshot.
            replication_lag_threshold: self.snapshot_every_entries.max(1) * 4,
            ..Default::default()
        }
        .validate()
        .map_err(|error| RaftError::Config(error.to_string()))
    }
}

//! Where the state machine meets the disk and the network.
//!
//! [`raft`] orders every change to the cluster state through Raft
//! (openraft) among the voters, keeps the log and snapshots in one redb file
//! in the data dir, and answers reads after a linearizable barrier.
//! [`membership`] is SWIM gossip (foca) over UDP: who is alive, and each
//! node's facts. [`log`] is the small trait the node's loops use, with an
//! in-memory log for their tests.

pub mod log;
pub mod membership;
pub mod raft;

/// Entries applied between two snapshots (the log is cut at each).
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 1024;

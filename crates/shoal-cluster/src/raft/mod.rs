//! Consensus by Raft (openraft) over the state machine; see mod docs to come.

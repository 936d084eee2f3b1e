//! Where the state machine meets the disk and, later, the network.
//!
//! [`Store`] keeps the log and the latest snapshot in one redb database in
//! the data dir. [`Consensus`] is the single entry point for changes: it
//! orders proposals into the log, makes each durable before applying it, and
//! only then answers the proposer. On one node it is its own log; the
//! cluster's Raft takes its place behind the same `propose`.

pub mod membership;
pub mod raft;
mod store;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use shoal_state::{ApplyError, Command, Entry, Outcome, State};
use tokio::sync::watch;

pub use store::{Store, StoreError};

/// Entries applied between two snapshots (the log is cut at each).
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("the proposer stopped")]
    Stopped,
}

#[derive(Clone)]
pub struct Consensus {
    inner: Arc<Inner>,
}

struct Inner {
    /// Serializes writers: one entry is appended and applied at a time.
    store: Mutex<Store>,
    state: RwLock<State>,
    applied: watch::Sender<u64>,
}

impl Consensus {
    /// Opens the database in `data_dir` and replays it into memory.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let store = Store::open(&data_dir.join("state.redb"))?;
        let state = store.load()?;
        let (applied, _) = watch::channel(state.applied_index);
        Ok(Consensus {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                state: RwLock::new(state),
                applied,
            }),
        })
    }

    /// Appends a command to the log, durably, applies it and returns what it
    /// did. Returns only after the entry is on disk.
    pub async fn propose(&self, at_ms: u64, command: Command) -> Result<Outcome, ProposeError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.propose(Entry::new(at_ms, command)))
            .await
            .map_err(|_| ProposeError::Stopped)?
    }

    /// A read view of the state; hold it briefly (writers wait for it).
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes every time an entry is applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }
}

impl Inner {
    fn propose(&self, entry: Entry) -> Result<Outcome, ProposeError> {
        let store = self
            .store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = self.read_state().applied_index + 1;
        store.append(index, &entry)?;
        let (outcome, snapshot) = {
            let mut state = self
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let outcome = state.apply(index, &entry);
            debug_assert_eq!(state.check_invariants(), Ok(()));
            let snapshot = index
                .is_multiple_of(SNAPSHOT_EVERY_ENTRIES)
                .then(|| state.snapshot());
            (outcome, snapshot)
        };
        if let Some(bytes) = snapshot {
            store.save_snapshot(index, &bytes)?;
        }
        self.applied.send_replace(index);
        Ok(outcome?)
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests;

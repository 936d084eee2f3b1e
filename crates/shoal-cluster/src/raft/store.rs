//! Raft's log, vote and state machine snapshot in one redb file,
//! `<data_dir>/raft.redb`.
//!
//! Tables: `raft_log` maps index → openraft entry (JSON); `raft_meta` holds
//! the vote, the committed and last purged log ids, and the latest snapshot
//! (its meta and the `State` JSON). The state machine itself lives in memory
//! and is persisted through snapshots: on open it is the latest snapshot, and
//! openraft re-applies the log from there up to the saved committed id.
//!
//! Every write that Raft's safety depends on (log appends, truncation, vote,
//! snapshots) is a durable redb commit before openraft is told it happened.

// openraft's traits fix the error type (`StorageError`, 200+ bytes); the
// helpers here return it too rather than convert at every call.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shoal_state::State;
use tokio::sync::watch;

use super::{Applied, NodeInfo, TypeConfig};

type LogEntry = openraft::Entry<TypeConfig>;
type StorageResult<T> = Result<T, StorageError<u64>>;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";
const SNAPSHOT_META: &str = "snapshot_meta";
const SNAPSHOT_DATA: &str = "snapshot_data";

/// Opens (or creates) the database and its tables.
pub(crate) fn open_database(path: &Path) -> Result<Database, String> {
    let db = Database::create(path).map_err(|error| error.to_string())?;
    let txn = db.begin_write().map_err(|error| error.to_string())?;
    txn.open_table(LOG).map_err(|error| error.to_string())?;
    txn.open_table(META).map_err(|error| error.to_string())?;
    txn.commit().map_err(|error| error.to_string())?;
    Ok(db)
}

fn read_err(error: impl ToString) -> StorageError<u64> {
    StorageIOError::read(AnyError::error(error)).into()
}

fn write_err(error: impl ToString) -> StorageError<u64> {
    StorageIOError::write(AnyError::error(error)).into()
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> StorageResult<Option<T>> {
    let txn = db.begin_read().map_err(read_err)?;
    let meta = txn.open_table(META).map_err(read_err)?;
    match meta.get(key).map_err(read_err)? {
        Some(bytes) => serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|error| read_err(format!("corrupt `{key}` in raft store: {error}"))),
        None => Ok(None),
    }
}

/// Runs a blocking write on the blocking pool so a disk flush never stalls
/// the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| write_err(format!("storage task failed: {error}")))?
}

/// The log and the vote.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> Self {
        LogStore { db }
    }

    fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> impl std::future::Future<Output = StorageResult<()>> + Send + 'static {
        let db = self.db.clone();
        let bytes = serde_json::to_vec(value);
        async move {
            let bytes = bytes.map_err(write_err)?;
            blocking(move || {
                let mut txn = db.begin_write().map_err(write_err)?;
                txn.set_durability(durability).map_err(write_err)?;
                {
                    let mut meta = txn.open_table(META).map_err(write_err)?;
                    meta.insert(key, bytes.as_slice()).map_err(write_err)?;
                }
                txn.commit().map_err(write_err)
            })
            .await
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<LogEntry>> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let txn = self.db.begin_read().map_err(read_err)?;
        let log = txn.open_table(LOG).map_err(read_err)?;
        let mut entries = Vec::new();
        for item in log.range::<u64>(bounds).map_err(read_err)? {
            let (index, bytes) = item.map_err(read_err)?;
            let entry: LogEntry = serde_json::from_slice(bytes.value()).map_err(|error| {
                read_err(format!("corrupt log entry {}: {error}", index.value()))
            })?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<u64>> = read_meta(&self.db, LAST_PURGED)?;
        let txn = self.db.begin_read().map_err(read_err)?;
        let log = txn.open_table(LOG).map_err(read_err)?;
        let last = match log.last().map_err(read_err)? {
            Some((_, bytes)) => {
                let entry: LogEntry = serde_json::from_slice(bytes.value())
                    .map_err(|error| read_err(format!("corrupt last log entry: {error}")))?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.write_meta(VOTE, vote, Durability::Immediate).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        read_meta(&self.db, VOTE)
    }

    /// The committed id is a hint for replay on restart: losing the latest
    /// one only means replaying less, so it is written without a flush (the
    /// next durable commit carries it).
    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        self.write_meta(COMMITTED, &committed, Durability::None)
            .await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(read_meta::<Option<LogId<u64>>>(&self.db, COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = LogEntry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(write_err)?;
            encoded.push((entry.log_id.index, bytes));
        }
        let db = self.db.clone();
        let result = blocking(move || {
            let txn = db.begin_write().map_err(write_err)?;
            {
                let mut log = txn.open_table(LOG).map_err(write_err)?;
                for (index, bytes) in &encoded {
                    log.insert(*index, bytes.as_slice()).map_err(write_err)?;
                }
            }
            txn.commit().map_err(write_err)
        })
        .await;
        // Durable (or failed) before openraft hears about it.
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(error) => callback.log_io_completed(Err(std::io::Error::other(error.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(write_err)?;
            {
                let mut log = txn.open_table(LOG).map_err(write_err)?;
                log.retain_in(log_id.index.., |_, _| false)
                    .map_err(write_err)?;
            }
            txn.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let db = self.db.clone();
        let purged = serde_json::to_vec(&log_id).map_err(write_err)?;
        blocking(move || {
            let txn = db.begin_write().map_err(write_err)?;
            {
                let mut meta = txn.open_table(META).map_err(write_err)?;
                meta.insert(LAST_PURGED, purged.as_slice())
                    .map_err(write_err)?;
                let mut log = txn.open_table(LOG).map_err(write_err)?;
                log.retain_in(..=log_id.index, |_, _| false)
                    .map_err(write_err)?;
            }
            txn.commit().map_err(write_err)
        })
        .await
    }
}

/// What a snapshot holds besides the `State` JSON.
#[derive(Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta<u64, NodeInfo>,
}

/// The state machine: the shared `State`, the last applied log id and the
/// last applied membership.
pub(crate) struct StateMachine {
    db: Arc<Database>,
    state: Arc<RwLock<State>>,
    applied_tx: watch::Sender<u64>,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, NodeInfo>,
    snapshots_built: u64,
}

impl StateMachine {
    /// Loads the latest snapshot (or an empty state).
    pub(crate) fn open(
        db: Arc<Database>,
    ) -> StorageResult<(StateMachine, Arc<RwLock<State>>, watch::Receiver<u64>)> {
        let (state, last_applied, membership) = match load_snapshot(&db)? {
            Some((meta, data)) => {
                let mut state = State::restore(&data)
                    .map_err(|error| read_err(format!("corrupt snapshot state: {error}")))?;
                state.applied_index = meta.last_log_id.map(|id| id.index).unwrap_or(0);
                (state, meta.last_log_id, meta.last_membership)
            }
            None => (State::default(), None, StoredMembership::default()),
        };
        let (applied_tx, applied_rx) = watch::channel(state.applied_index);
        let state = Arc::new(RwLock::new(state));
        Ok((
            StateMachine {
                db,
                state: state.clone(),
                applied_tx,
                last_applied,
                membership,
                snapshots_built: 0,
            },
            state,
            applied_rx,
        ))
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A snapshot's meta and its `State` JSON.
type StoredSnapshot = (SnapshotMeta<u64, NodeInfo>, Vec<u8>);

fn load_snapshot(db: &Database) -> StorageResult<Option<StoredSnapshot>> {
    let Some(stored) = read_meta::<StoredSnapshotMeta>(db, SNAPSHOT_META)? else {
        return Ok(None);
    };
    let txn = db.begin_read().map_err(read_err)?;
    let meta = txn.open_table(META).map_err(read_err)?;
    let data = meta
        .get(SNAPSHOT_DATA)
        .map_err(read_err)?
        .ok_or_else(|| read_err("raft store has a snapshot's meta but not its data"))?
        .value()
        .to_vec();
    Ok(Some((stored.meta, data)))
}

async fn save_snapshot(
    db: Arc<Database>,
    meta: SnapshotMeta<u64, NodeInfo>,
    data: Vec<u8>,
) -> StorageResult<()> {
    let encoded = serde_json::to_vec(&StoredSnapshotMeta { meta }).map_err(write_err)?;
    blocking(move || {
        let txn = db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(META).map_err(write_err)?;
            table
                .insert(SNAPSHOT_META, encoded.as_slice())
                .map_err(write_err)?;
            table
                .insert(SNAPSHOT_DATA, data.as_slice())
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    })
    .await
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<u64>>, StoredMembership<u64, NodeInfo>)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Applied>>
    where
        I: IntoIterator<Item = LogEntry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        let mut last = None;
        {
            let shared = self.state.clone();
            let mut state = shared
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for entry in entries {
                let log_id = entry.log_id;
                let index = log_id.index;
                if let Some(applied) = self.last_applied.filter(|applied| index <= applied.index) {
                    return Err(StorageIOError::apply(
                        log_id,
                        AnyError::error(format!(
                            "entry {index} applied after {}: the log went backwards",
                            applied.index
                        )),
                    )
                    .into());
                }
                match entry.payload {
                    EntryPayload::Normal(command) => match state.apply(index, &command) {
                        Err(error) if error.halts() => {
                            // Never skip what this node cannot read: stop
                            // applying here (openraft stops this node's Raft)
                            // and say what to do.
                            tracing::error!(%error, "stopped applying the log");
                            if let Some(index) = last {
                                self.applied_tx.send_replace(index);
                            }
                            return Err(
                                StorageIOError::apply(log_id, AnyError::error(error)).into()
                            );
                        }
                        result => {
                            results.push(Some(result));
                            debug_assert_eq!(state.check_invariants(), Ok(()));
                        }
                    },
                    EntryPayload::Blank => {
                        state.applied_index = index;
                        results.push(None);
                    }
                    EntryPayload::Membership(membership) => {
                        self.membership = StoredMembership::new(Some(log_id), membership);
                        state.applied_index = index;
                        results.push(None);
                    }
                }
                self.last_applied = Some(log_id);
                last = Some(index);
            }
        }
        if let Some(index) = last {
            self.applied_tx.send_replace(index);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        let data = self
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .snapshot();
        let snapshot_id = match self.last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.index, self.snapshots_built
            ),
            None => format!("0-0-{}", self.snapshots_built),
        };
        SnapshotBuilder {
            db: self.db.clone(),
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            data,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let mut state = State::restore(&data).map_err(|error| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error(format!("snapshot from the leader is not a state: {error}")),
            ))
        })?;
        let index = meta.last_log_id.map(|id| id.index).unwrap_or(0);
        state.applied_index = index;
        save_snapshot(self.db.clone(), meta.clone(), data).await?;
        *self.write_state() = state;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.applied_tx.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(load_snapshot(&self.db)?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// A copy of the state taken between two applies, persisted when built.
pub(crate) struct SnapshotBuilder {
    db: Arc<Database>,
    meta: SnapshotMeta<u64, NodeInfo>,
    data: Vec<u8>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let data = std::mem::take(&mut self.data);
        save_snapshot(self.db.clone(), self.meta.clone(), data.clone()).await?;
        tracing::debug!(snapshot = %self.meta, "raft snapshot saved");
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

//! The log and snapshot on redb: table `log` maps index → entry (JSON),
//! table `meta` holds the latest snapshot and the index it covers.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};
use shoal_state::{Entry, State};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT: &str = "snapshot";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Database(String),
    #[error("corrupt state store: {0}")]
    Corrupt(String),
}

fn db_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Database(error.to_string())
}

pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|error| {
            StoreError::Database(format!("opening {}: {error}", path.display()))
        })?;
        let txn = db.begin_write().map_err(db_error)?;
        txn.open_table(LOG).map_err(db_error)?;
        txn.open_table(META).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(Store { db })
    }

    /// Appends one entry and makes it durable.
    pub fn append(&self, index: u64, entry: &Entry) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(entry).map_err(db_error)?;
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut log = txn.open_table(LOG).map_err(db_error)?;
            log.insert(index, bytes.as_slice()).map_err(db_error)?;
        }
        txn.commit().map_err(db_error)
    }

    /// Stores a snapshot covering entries up to `index` and cuts them from the log.
    pub fn save_snapshot(&self, index: u64, snapshot: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut meta = txn.open_table(META).map_err(db_error)?;
            meta.insert(SNAPSHOT, snapshot).map_err(db_error)?;
            let mut log = txn.open_table(LOG).map_err(db_error)?;
            log.retain_in(..=index, |_, _| false).map_err(db_error)?;
        }
        txn.commit().map_err(db_error)
    }

    /// The snapshot with every later entry applied.
    pub fn load(&self) -> Result<State, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let meta = txn.open_table(META).map_err(db_error)?;
        let mut state = match meta.get(SNAPSHOT).map_err(db_error)? {
            Some(bytes) => State::restore(bytes.value())
                .map_err(|error| StoreError::Corrupt(format!("snapshot: {error}")))?,
            None => State::default(),
        };
        let log = txn.open_table(LOG).map_err(db_error)?;
        for item in log.range(state.applied_index + 1..).map_err(db_error)? {
            let (index, bytes) = item.map_err(db_error)?;
            let index = index.value();
            if index != state.applied_index + 1 {
                return Err(StoreError::Corrupt(format!(
                    "log jumps from {} to {index}",
                    state.applied_index
                )));
            }
            let entry: Entry = serde_json::from_slice(bytes.value())
                .map_err(|error| StoreError::Corrupt(format!("entry {index}: {error}")))?;
            // A rejected command was rejected the first time too: same outcome.
            let _ = state.apply(index, &entry);
        }
        Ok(state)
    }
}

//! The spool: a blob fetched from the registry once, into a file that every
//! node that asks (this one included) reads as it grows, kept a while
//! after, within a bound of fetches and bytes.

use super::*;

/// How far a spooled fetch is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Progress {
    /// Bytes in the file so far.
    Running(u64),
    Done,
    Failed(String),
}

/// One blob being fetched into (or just fetched into) a spool file.
pub struct Fetch {
    pub(super) path: PathBuf,
    pub(super) size: u64,
    /// Opened when the fetch began, so that a reader never finds the file
    /// gone; read at offsets.
    pub(super) file: Arc<std::fs::File>,
    /// Its writer, the task that fetches, holds the sender: when that task
    /// is gone, readers know.
    pub(super) progress: watch::Receiver<Progress>,
}

impl Fetch {
    /// Whether joining it gives the blob: done, or running with its writer.
    pub(super) fn usable(&self) -> bool {
        match *self.progress.borrow() {
            Progress::Done => true,
            Progress::Failed(_) => false,
            Progress::Running(_) => self.progress.has_changed().is_ok(),
        }
    }

    pub(super) fn running(&self) -> bool {
        matches!(*self.progress.borrow(), Progress::Running(_)) && self.usable()
    }
}

/// Why a node will not fetch a blob for the cluster now.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Too many fetches or bytes under way.
    Busy,
    /// The rest of a blob (an offset) whose fetch is no longer under way:
    /// a new fetch would start from the first byte.
    NotUnderWay,
    /// The blob is being fetched with another size.
    SizeDiffers,
    /// The registry is one the cluster's state does not name.
    UnknownRegistry,
    /// The spool file could not be made.
    Disk(String),
}

/// The fetches a home makes for the cluster, by digest.
pub struct Spool {
    pub(super) dir: PathBuf,
    pub(super) fetches: Mutex<HashMap<String, Arc<Fetch>>>,
    pub(super) made: std::sync::atomic::AtomicU64,
}

impl Spool {
    /// A spool in `dir`, emptied of what an earlier run left.
    pub fn open(dir: PathBuf) -> std::io::Result<Spool> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Spool {
            dir,
            fetches: Mutex::default(),
            made: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The fetch of `desc` under way (or finished a moment ago), else a new
    /// one of the bytes `source` gives; the latter only for a reader from
    /// the first byte.
    pub fn join(
        self: &Arc<Self>,
        desc: &Descriptor,
        offset: u64,
        source: impl FnOnce() -> BlobBody,
    ) -> Result<Arc<Fetch>, Refused> {
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fetch) = fetches.get(&desc.digest) {
            if fetch.size != desc.size {
                return Err(Refused::SizeDiffers);
            }
            if fetch.usable() {
                return Ok(fetch.clone());
            }
        }
        if offset > 0 {
            return Err(Refused::NotUnderWay);
        }
        fetches.remove(&desc.digest);
        let bytes: u64 = fetches.values().map(|f| f.size).sum();
        let running = fetches.values().filter(|f| f.running()).count();
        if running >= FETCHES_MAX || bytes.saturating_add(desc.size) > SPOOL_BYTES_MAX {
            return Err(Refused::Busy);
        }
        let n = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hex = desc.digest.trim_start_matches("sha256:");
        let path = self.dir.join(format!("{hex}.{n}"));
        let disk = |e: std::io::Error| Refused::Disk(format!("{}: {e}", path.display()));
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(disk)?;
        let reader = std::fs::File::open(&path).map_err(disk)?;
        let (sender, progress) = watch::channel(Progress::Running(0));
        let fetch = Arc::new(Fetch {
            path,
            size: desc.size,
            file: Arc::new(reader),
            progress,
        });
        fetches.insert(desc.digest.clone(), fetch.clone());
        drop(fetches);
        let spool = self.clone();
        let digest = desc.digest.clone();
        let body = source();
        let running = fetch.clone();
        tokio::spawn(async move {
            let writer = tokio::fs::File::from_std(writer);
            match spool_into(writer, body, &running, &sender).await {
                Ok(()) => {
                    sender.send_replace(Progress::Done);
                    tracing::debug!(blob = %digest, "blob fetched for the cluster");
                    tokio::time::sleep(SPOOL_KEEP).await;
                }
                Err(mut why) => {
                    tracing::warn!(blob = %digest, error = %why, "fetching a blob for the cluster failed");
                    why.truncate(why.floor_char_boundary(FAILURE_BYTES_MAX));
                    sender.send_replace(Progress::Failed(why));
                }
            }
            spool.forget(&digest, &running);
        });
        Ok(fetch)
    }

    /// Removes a fetch and its file (readers hold it open and read on).
    pub(super) fn forget(&self, digest: &str, fetch: &Arc<Fetch>) {
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        if fetches.get(digest).is_some_and(|f| Arc::ptr_eq(f, fetch)) {
            fetches.remove(digest);
        }
        drop(fetches);
        let _ = std::fs::remove_file(&fetch.path);
    }
}

/// Writes `body` into `file`, telling readers how far it is.
pub(super) async fn spool_into(
    mut file: tokio::fs::File,
    mut body: BlobBody,
    fetch: &Fetch,
    progress: &watch::Sender<Progress>,
) -> Result<(), String> {
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        written += chunk.len() as u64;
        if written > fetch.size {
            return Err(format!(
                "more bytes than the {} the descriptor says",
                fetch.size
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("writing {}: {e}", fetch.path.display()))?;
        // Readers read what the file holds: flushed before it is said.
        file.flush()
            .await
            .map_err(|e| format!("writing {}: {e}", fetch.path.display()))?;
        progress.send_replace(Progress::Running(written));
    }
    if written != fetch.size {
        return Err(format!(
            "the blob ended after {written} of {} bytes",
            fetch.size
        ));
    }
    Ok(())
}

impl Fetch {
    /// The blob's bytes from `offset` on, as they reach the file.
    pub fn body(self: &Arc<Self>, offset: u64) -> BlobBody {
        let reader = SpoolReader {
            fetch: self.clone(),
            progress: self.progress.clone(),
            pos: offset,
            over: false,
        };
        Box::pin(futures::stream::unfold(reader, |mut r| async move {
            if r.over {
                return None;
            }
            let item = r.next().await?;
            if item.is_err() {
                r.over = true;
            }
            Some((item, r))
        }))
    }
}

/// One reader of a spool file, following the fetch that writes it.
pub(super) struct SpoolReader {
    pub(super) fetch: Arc<Fetch>,
    pub(super) progress: watch::Receiver<Progress>,
    pub(super) pos: u64,
    pub(super) over: bool,
}

impl SpoolReader {
    /// The next bytes the file holds, waiting for them; `None` at the end.
    pub(super) async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        loop {
            let progress = self.progress.borrow_and_update().clone();
            let available = match &progress {
                Progress::Running(n) => *n,
                Progress::Done => self.fetch.size,
                Progress::Failed(why) => {
                    return Some(Err(std::io::Error::other(format!(
                        "the home's fetch failed: {why}"
                    ))))
                }
            };
            if self.pos < available {
                let len = (available - self.pos).min(READ_CHUNK_BYTES as u64);
                return Some(self.read(len).await);
            }
            if progress == Progress::Done {
                return None;
            }
            // The writer gone without a word (it cannot be, short of a
            // panic): the reader ends rather than wait.
            if self.progress.changed().await.is_err() {
                return Some(Err(std::io::Error::other("the home's fetch was dropped")));
            }
        }
    }

    pub(super) async fn read(&mut self, len: u64) -> std::io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let (file, pos) = (self.fetch.file.clone(), self.pos);
        let buf = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, pos).map(|()| buf)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.pos += len;
        Ok(Bytes::from(buf))
    }
}

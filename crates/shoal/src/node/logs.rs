//! Task logs: the runtime's shim appends each task's stdout and stderr to
//! `DATA_DIR/logs/TASK.log`; these read (and follow) them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures::StreamExt;
use shoal_api::server::{ApiError, ApiResult, LogOptions, LogStream};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::Shared;

/// Without `tail`, at most this much of the end of each file is sent.
const LOG_BYTES_MAX: u64 = 16 << 20;
const FOLLOW_POLL: Duration = Duration::from_millis(200);
const CHUNK_BYTES_MAX: usize = 64 << 10;

pub async fn stream<R: Send + Sync + 'static>(
    shared: Arc<Shared<R>>,
    target: String,
    options: LogOptions,
) -> ApiResult<LogStream> {
    let ids = resolve(&shared, &target)?;
    let prefix = ids.len() > 1;
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let mut cursors = Vec::new();
        for id in &ids {
            let path = shared.logs_dir().join(format!("{id}.log"));
            let (text, end) = read_start(&path, options.tail).await;
            if !text.is_empty() && sender.send(Ok(label(id, prefix, &text))).await.is_err() {
                return;
            }
            cursors.push((id.clone(), path, end));
        }
        if !options.follow {
            return;
        }
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            let mut any_alive = false;
            for (id, path, offset) in cursors.iter_mut() {
                any_alive |= shared.consensus.read().tasks.contains_key(id.as_str());
                let Some(text) = read_from(path, offset).await else {
                    continue;
                };
                if sender.send(Ok(label(id, prefix, &text))).await.is_err() {
                    return;
                }
            }
            if !any_alive || sender.is_closed() {
                return;
            }
        }
    });
    Ok(tokio_stream_from(receiver))
}

fn tokio_stream_from(mut receiver: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> LogStream {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed()
}

/// A task id, or `APP.SERVICE` for every task of the service.
fn resolve<R>(shared: &Shared<R>, target: &str) -> ApiResult<Vec<String>> {
    let state = shared.consensus.read();
    if state.tasks.contains_key(target) {
        return Ok(vec![target.to_string()]);
    }
    let ids: Vec<String> = match target.split_once('.') {
        Some((app, service)) if !service.contains('.') => state
            .tasks
            .values()
            .filter(|task| task.app == app && task.service == service)
            .map(|task| task.id.clone())
            .collect(),
        _ => Vec::new(),
    };
    if ids.is_empty() {
        return Err(ApiError::not_found(format!(
            "no task or service `{target}`; give a task id or APP.SERVICE as `shoal ps` lists them"
        )));
    }
    Ok(ids)
}

fn label(id: &str, prefix: bool, text: &[u8]) -> Bytes {
    if !prefix {
        return Bytes::copy_from_slice(text);
    }
    let mut out = Vec::with_capacity(text.len() + 32);
    for line in text.split_inclusive(|byte| *byte == b'\n') {
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b" | ");
        out.extend_from_slice(line);
    }
    Bytes::from(out)
}

/// The start of a log: all of it (up to a limit) or its last `tail` lines.
async fn read_start(path: &PathBuf, tail: Option<usize>) -> (Vec<u8>, u64) {
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return (Vec::new(), 0);
    };
    let end = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let start = end.saturating_sub(LOG_BYTES_MAX);
    let mut text = Vec::new();
    if file.seek(std::io::SeekFrom::Start(start)).await.is_err()
        || file.take(end - start).read_to_end(&mut text).await.is_err()
    {
        return (Vec::new(), end);
    }
    if let Some(tail) = tail {
        let mut newlines = 0;
        let body = text.strip_suffix(b"\n").unwrap_or(&text);
        let cut = body.iter().rposition(|byte| {
            if *byte == b'\n' {
                newlines += 1;
            }
            newlines == tail
        });
        text = match (tail, cut) {
            (0, _) => Vec::new(),
            (_, Some(position)) => text[position + 1..].to_vec(),
            (_, None) => text,
        };
    }
    (text, end)
}

/// New bytes appended since `offset`, if any.
async fn read_from(path: &PathBuf, offset: &mut u64) -> Option<Vec<u8>> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let end = file.metadata().await.ok()?.len();
    if end < *offset {
        *offset = 0;
    }
    if end == *offset {
        return None;
    }
    file.seek(std::io::SeekFrom::Start(*offset)).await.ok()?;
    let mut text = vec![0; ((end - *offset) as usize).min(CHUNK_BYTES_MAX)];
    let read = file.read(&mut text).await.ok()?;
    text.truncate(read);
    *offset += read as u64;
    Some(text)
}

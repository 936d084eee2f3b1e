//! Task logs: the runtime's shim appends each task's stdout and stderr to
//! `DATA_DIR/logs/TASK.log` on the task's node; these read (and follow)
//! them, and ask other nodes for the logs of their tasks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures::StreamExt;
use shoal_api::server::{ApiError, ApiResult, LogOptions, LogStream};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use shoal_cluster::log::ReplicatedLog;

use super::Shared;

/// Without `tail`, at most this much of the end of each file is sent.
const LOG_BYTES_MAX: u64 = 16 << 20;
const FOLLOW_POLL: Duration = Duration::from_millis(200);
const CHUNK_BYTES_MAX: usize = 64 << 10;

pub async fn stream<R: Send + Sync + 'static, L: ReplicatedLog>(
    shared: Arc<Shared<R, L>>,
    target: String,
    options: LogOptions,
) -> ApiResult<LogStream> {
    let sources = resolve(&shared, &target, options.local)?;
    let prefix = sources.len() > 1;
    let (sender, mut receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    if options.follow {
        for source in sources {
            let (shared, sender, options) = (shared.clone(), sender.clone(), options.clone());
            tokio::spawn(async move { pump(&shared, source, prefix, &options, &sender).await });
        }
    } else {
        // One task after the other, so that each task's lines stay together.
        tokio::spawn(async move {
            for source in sources {
                pump(&shared, source, prefix, &options, &sender).await;
            }
        });
    }
    Ok(futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed())
}

/// Where one task's log is: this node's file, or another node's API.
struct Source {
    task_id: String,
    /// `None` for a task of this node, else the API address of its node.
    remote: Option<String>,
}

/// A task id, or `APP.SERVICE` for every task of the service.
fn resolve<R, L: ReplicatedLog>(
    shared: &Shared<R, L>,
    target: &str,
    local_only: bool,
) -> ApiResult<Vec<Source>> {
    let state = shared.raft.read();
    let mut tasks: Vec<&shoal_types::Task> = match state.tasks.get(target) {
        Some(task) => vec![task],
        None => match target.split_once('.') {
            Some((app, service)) if !service.contains('.') => state
                .tasks
                .values()
                .filter(|task| task.app == app && task.service == service)
                .collect(),
            _ => Vec::new(),
        },
    };
    let me = &shared.config.name;
    if local_only {
        tasks.retain(|task| &task.node == me);
    }
    if tasks.is_empty() {
        return Err(ApiError::not_found(format!(
            "no task or service `{target}`; give a task id or APP.SERVICE as `shoal ps` lists them"
        )));
    }
    Ok(tasks
        .into_iter()
        .map(|task| Source {
            task_id: task.id.clone(),
            remote: (&task.node != me).then(|| {
                state
                    .nodes
                    .get(&task.node)
                    .map(|node| node.addr.clone())
                    .unwrap_or_default()
            }),
        })
        .collect())
}

async fn pump<R, L: ReplicatedLog>(
    shared: &Shared<R, L>,
    source: Source,
    prefix: bool,
    options: &LogOptions,
    sender: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut labeler = Labeler::new(&source.task_id, prefix);
    match &source.remote {
        None => {
            let path = shared.logs_dir().join(format!("{}.log", source.task_id));
            let (text, mut offset) = read_start(&path, options.tail).await;
            if !send(sender, labeler.feed(&text)).await {
                return;
            }
            if !options.follow {
                send(sender, labeler.finish()).await;
                return;
            }
            loop {
                tokio::time::sleep(FOLLOW_POLL).await;
                if let Some(text) = read_from(&path, &mut offset).await {
                    if !send(sender, labeler.feed(&text)).await {
                        return;
                    }
                }
                let alive = shared.raft.read().tasks.contains_key(&source.task_id);
                if !alive || sender.is_closed() {
                    break;
                }
            }
        }
        Some(addr) => {
            let mut query = vec![
                ("follow", options.follow.to_string()),
                ("local", "true".to_string()),
            ];
            if let Some(tail) = options.tail {
                query.push(("tail", tail.to_string()));
            }
            let endpoint = match shoal_http::Endpoint::parse(addr) {
                Ok(endpoint) => endpoint,
                Err(error) => {
                    let note = format!("[{}: logs unavailable: {error}]\n", source.task_id);
                    let _ = sender.send(Ok(Bytes::from(note))).await;
                    return;
                }
            };
            let request = shared
                .http
                .get(endpoint.url(&format!("/v1/logs/{}", source.task_id)))
                .query(&query)
                // Following has no end of its own; the client hanging up ends it.
                .timeout(Duration::from_secs(if options.follow {
                    24 * 3600
                } else {
                    30
                }));
            let mut body = match request.send().await.and_then(|r| r.error_for_status()) {
                Ok(response) => response.bytes_stream(),
                Err(error) => {
                    let note = format!(
                        "[{}: logs unavailable from {addr}: {error}]\n",
                        source.task_id
                    );
                    let _ = sender.send(Ok(Bytes::from(note))).await;
                    return;
                }
            };
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { break };
                if !send(sender, labeler.feed(&chunk)).await {
                    return;
                }
            }
        }
    }
    send(sender, labeler.finish()).await;
}

async fn send(sender: &mpsc::Sender<Result<Bytes, std::io::Error>>, bytes: Option<Bytes>) -> bool {
    match bytes {
        Some(bytes) => sender.send(Ok(bytes)).await.is_ok(),
        None => !sender.is_closed(),
    }
}

/// Prefixes whole lines with their task id (when several tasks share one
/// stream), keeping a partial last line until it is complete.
struct Labeler {
    label: Vec<u8>,
    prefix: bool,
    partial: Vec<u8>,
}

impl Labeler {
    fn new(task_id: &str, prefix: bool) -> Self {
        Labeler {
            label: format!("{task_id} | ").into_bytes(),
            prefix,
            partial: Vec::new(),
        }
    }

    fn feed(&mut self, text: &[u8]) -> Option<Bytes> {
        if !self.prefix {
            return (!text.is_empty()).then(|| Bytes::copy_from_slice(text));
        }
        self.partial.extend_from_slice(text);
        let end = self.partial.iter().rposition(|byte| *byte == b'\n')? + 1;
        let complete: Vec<u8> = self.partial.drain(..end).collect();
        let mut out = Vec::with_capacity(complete.len() + 32);
        for line in complete.split_inclusive(|byte| *byte == b'\n') {
            out.extend_from_slice(&self.label);
            out.extend_from_slice(line);
        }
        Some(Bytes::from(out))
    }

    fn finish(&mut self) -> Option<Bytes> {
        if self.partial.is_empty() {
            return None;
        }
        self.partial.push(b'\n');
        self.feed(&[])
    }
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

#[cfg(test)]
mod tests {
    use super::Labeler;

    #[test]
    fn lines_are_labelled_whole_even_when_split_across_chunks() {
        let mut labeler = Labeler::new("web.a.0.1", true);
        assert_eq!(labeler.feed(b"hel"), None);
        assert_eq!(
            labeler.feed(b"lo\nwor").as_deref(),
            Some(&b"web.a.0.1 | hello\n"[..])
        );
        assert_eq!(labeler.finish().as_deref(), Some(&b"web.a.0.1 | wor\n"[..]));
        let mut plain = Labeler::new("web.a.0.1", false);
        assert_eq!(plain.feed(b"as is").as_deref(), Some(&b"as is"[..]));
    }
}

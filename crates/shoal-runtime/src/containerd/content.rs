//! Blobs in containerd's content store: reading JSON documents out, streaming
//! blobs in chunk by chunk, and labelling them for the garbage collector.

use std::collections::BTreeMap;

use containerd_client::services::v1::{
    AbortRequest, Info as ContentInfo, InfoRequest, ReadContentRequest,
    UpdateRequest as UpdateContentRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::{Code, Status};
use containerd_client::types::Descriptor as CdDescriptor;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::leases::Lease;
use super::{bulk_timeout, cd_err, found, unique_suffix, Containerd};
use crate::image::{self, Blob, BlobSource, Descriptor, Limits};
use crate::{ErrorKind, Result, RuntimeError};

/// How much of a blob one write request carries.
const CHUNK_BYTES: usize = 1 << 20;

pub(super) fn to_cd(desc: &Descriptor) -> Result<CdDescriptor> {
    Ok(CdDescriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.clone(),
        size: i64::try_from(desc.size).map_err(|_| {
            RuntimeError::InvalidImage(format!("blob {} is too large", desc.digest))
        })?,
        annotations: desc.annotations.clone().into_iter().collect(),
    })
}

pub(super) fn from_cd(desc: &CdDescriptor) -> Result<Descriptor> {
    image::check_digest(&desc.digest)?;
    Ok(Descriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.clone(),
        size: u64::try_from(desc.size).map_err(|_| {
            RuntimeError::InvalidImage(format!("blob {} has negative size", desc.digest))
        })?,
        annotations: desc.annotations.clone().into_iter().collect(),
        platform: None,
    })
}

impl Containerd {
    /// A committed blob's size and its bytes from `offset` on, streamed
    /// out of the content store; `None` when this namespace has no such
    /// blob.
    pub(super) async fn read_blob(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<Option<(u64, crate::registry::BlobBody)>> {
        use futures::StreamExt;
        image::check_digest(digest)?;
        let info = match self
            .content()
            .info(self.req(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(info) => info.into_inner().info,
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(cd_err(format!("looking up blob {digest}"))(s)),
        };
        let size = info
            .map(|i| u64::try_from(i.size).unwrap_or(0))
            .unwrap_or(0);
        if offset > size {
            return Err(RuntimeError::InvalidConfig(format!(
                "blob {digest} has {size} bytes; offset {offset} is past its end"
            )));
        }
        let mut request = self.req(ReadContentRequest {
            digest: digest.to_string(),
            offset: i64::try_from(offset).unwrap_or(i64::MAX),
            size: 0,
        });
        // A whole layer may take a while to stream to a slow reader.
        request.set_timeout(bulk_timeout(size - offset));
        let stream = match self.content().read(request).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(cd_err(format!("reading blob {digest}"))(s)),
        };
        let body = stream.map(|chunk| {
            chunk
                .map(|c| bytes::Bytes::from(c.data))
                .map_err(std::io::Error::other)
        });
        Ok(Some((size, Box::pin(body) as crate::registry::BlobBody)))
    }

    /// Reads a JSON blob (manifest, index, config) from the content store.
    pub(super) async fn read_json_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let max = Limits::default().json_bytes_max;
        if desc.size > max {
            return Err(RuntimeError::InvalidImage(format!(
                "{} is {} bytes, more than the {max} allowed for JSON documents",
                desc.digest, desc.size
            )));
        }
        let request = self.req(ReadContentRequest {
            digest: desc.digest.clone(),
            offset: 0,
            size: 0,
        });
        let mut stream = match self.content().read(request).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => {
                return Err(RuntimeError::InvalidImage(format!(
                    "blob {} is missing from containerd",
                    desc.digest
                )))
            }
            Err(s) => return Err(cd_err(format!("reading blob {}", desc.digest))(s)),
        };
        let mut bytes = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0));
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(cd_err(format!("reading blob {}", desc.digest)))?
        {
            bytes.extend_from_slice(&chunk.data);
            if bytes.len() as u64 > desc.size {
                return Err(RuntimeError::InvalidImage(format!(
                    "blob {} is longer than its descriptor says",
                    desc.digest
                )));
            }
        }
        Ok(bytes)
    }

    /// Stores a blob unless present; either way it ends up with `labels`.
    pub(super) async fn write_blob(
        &self,
        lease: &Lease,
        blob: &Blob,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.write_content(
            lease,
            &blob.desc,
            labels,
            bulk_timeout(blob.desc.size),
            || open_source(&blob.source),
        )
        .await
    }

    /// Stores the blob `desc` names unless present, reading it from what
    /// `open` gives only when it is not; either way it ends up with
    /// `labels`. containerd checks the size and digest before it commits.
    /// The write, reading included, must end within `deadline`.
    pub(super) async fn write_content<F, Fut>(
        &self,
        lease: &Lease,
        desc: &Descriptor,
        labels: &BTreeMap<String, String>,
        deadline: std::time::Duration,
        open: F,
    ) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Reader>>,
    {
        let digest = &desc.digest;
        let info = self
            .content()
            .info(self.req(InfoRequest {
                digest: digest.clone(),
            }))
            .await;
        if let Some(info) = found(info).map_err(cd_err(format!("looking up blob {digest}")))? {
            return self
                .label_blob(lease, info.into_inner().info, digest, labels)
                .await;
        }
        let reference = format!("shoal-{}-{digest}", unique_suffix());
        let streamed = match open().await {
            Ok(reader) => {
                self.stream_blob(lease, desc, reader, &reference, labels, deadline)
                    .await
            }
            Err(e) => Err(StreamError::Failed(e)),
        };
        match streamed {
            Ok(()) => Ok(()),
            // Someone else stored it meanwhile.
            Err(StreamError::Exists) => {
                let info = self
                    .content()
                    .info(self.req(InfoRequest {
                        digest: digest.clone(),
                    }))
                    .await;
                let info = info.map_err(cd_err(format!("looking up blob {digest}")))?;
                self.label_blob(lease, info.into_inner().info, digest, labels)
                    .await
            }
            Err(StreamError::Failed(e)) => {
                let abort = self
                    .content()
                    .abort(self.req(AbortRequest {
                        r#ref: reference.clone(),
                    }))
                    .await;
                if let Err(s) = found(abort) {
                    tracing::warn!(reference, error = %s.message(), "aborting a failed content write");
                }
                Err(e)
            }
        }
    }

    pub(super) async fn label_blob(
        &self,
        lease: &Lease,
        info: Option<ContentInfo>,
        digest: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.lease_add(lease, "content", digest).await?;
        let current = info.map(|i| i.labels).unwrap_or_default();
        if labels.iter().all(|(k, v)| current.get(k) == Some(v)) {
            return Ok(());
        }
        let update = UpdateContentRequest {
            info: Some(ContentInfo {
                digest: digest.to_string(),
                labels: labels.clone().into_iter().collect(),
                ..ContentInfo::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: labels.keys().map(|k| format!("labels.{k}")).collect(),
            }),
        };
        self.content()
            .update(self.req(update))
            .await
            .map_err(cd_err(format!("labelling blob {digest}")))?;
        Ok(())
    }

    /// Content.Write in lockstep (one reply per request), so that no more
    /// than one chunk is ever in flight.
    async fn stream_blob(
        &self,
        lease: &Lease,
        desc: &Descriptor,
        mut reader: Reader,
        reference: &str,
        labels: &BTreeMap<String, String>,
        deadline: std::time::Duration,
    ) -> std::result::Result<(), StreamError> {
        let what = format!("writing blob {}", desc.digest);
        let total = i64::try_from(desc.size).map_err(|_| {
            RuntimeError::InvalidImage(format!("blob {} is too large", desc.digest))
        })?;
        let mut chunk = vec![0u8; CHUNK_BYTES];
        let mut offset: u64 = 0;
        // The next request: a chunk of data, or the commit once all is sent.
        let mut next = async |offset: &mut u64| -> Result<(WriteContentRequest, bool)> {
            let left = usize::try_from(desc.size - *offset).unwrap_or(usize::MAX);
            let mut request = WriteContentRequest {
                r#ref: reference.to_string(),
                total,
                expected: desc.digest.clone(),
                offset: i64::try_from(*offset).unwrap_or(i64::MAX),
                ..WriteContentRequest::default()
            };
            if left == 0 {
                request.action = WriteAction::Commit as i32;
                request.labels = labels.clone().into_iter().collect();
                return Ok((request, true));
            }
            let n = read_up_to(&mut reader, &mut chunk[..left.min(CHUNK_BYTES)])
                .await
                .map_err(|source| source_error(&desc.digest, source))?;
            if n == 0 {
                return Err(RuntimeError::InvalidImage(format!(
                    "blob {} ends after {offset} of {} bytes",
                    desc.digest, desc.size
                )));
            }
            request.action = WriteAction::Write as i32;
            request.data = chunk[..n].to_vec();
            *offset += n as u64;
            Ok((request, false))
        };

        let (sender, mut receiver) = tokio::sync::mpsc::channel::<WriteContentRequest>(1);
        let closed = || {
            // containerd went away mid-write.
            StreamError::Failed(RuntimeError::containerd(
                ErrorKind::Transient,
                format!("{what}: stream closed early"),
            ))
        };
        let (first, mut committing) = next(&mut offset).await?;
        // containerd answers nothing before the first request arrives, so it
        // has to be queued before the call.
        sender.send(first).await.map_err(|_| closed())?;
        let mut request = self.leased(
            futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)),
            lease,
        );
        request.set_timeout(deadline);
        let mut replies = match self.content().write(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(write_error(&what, s)),
        };
        // One round per chunk plus the commit; `next` fails rather than
        // return an empty chunk, so this ends.
        loop {
            let reply = replies
                .message()
                .await
                .map_err(|s| write_error(&what, s))?
                .ok_or_else(closed)?;
            if u64::try_from(reply.offset).ok() != Some(offset) {
                return Err(StreamError::Failed(RuntimeError::containerd(
                    ErrorKind::Internal,
                    format!(
                        "{what}: containerd is at offset {}, we sent {offset} bytes",
                        reply.offset
                    ),
                )));
            }
            if committing {
                return Ok(());
            }
            let (request, commit) = next(&mut offset).await?;
            committing = commit;
            sender.send(request).await.map_err(|_| closed())?;
        }
    }
}

/// Where a blob's bytes come from.
pub(super) type Reader = Box<dyn AsyncRead + Unpin + Send>;

async fn open_source(source: &BlobSource) -> Result<Reader> {
    Ok(match source {
        BlobSource::File(path) => Box::new(tokio::fs::File::open(path).await.map_err(
            |source| RuntimeError::Io {
                context: format!("opening {}", path.display()),
                source,
            },
        )?),
        BlobSource::Bytes(bytes) => Box::new(std::io::Cursor::new(bytes.clone())),
    })
}

/// A failed read of a blob's source; a registry download carries its own
/// error (and kind) inside the `io::Error`.
fn source_error(digest: &str, source: std::io::Error) -> RuntimeError {
    crate::registry::from_io(source, || format!("reading blob {digest}"))
}

fn write_error(what: &str, s: Status) -> StreamError {
    match s.code() {
        Code::AlreadyExists => StreamError::Exists,
        // Digest or size mismatch at commit: the archive lied about the blob.
        Code::FailedPrecondition | Code::InvalidArgument => StreamError::Failed(
            RuntimeError::InvalidImage(format!("{what}: {}", s.message())),
        ),
        _ => StreamError::Failed(cd_err(what)(s)),
    }
}

/// Outcome of a content write that may find the blob already stored.
enum StreamError {
    Exists,
    Failed(RuntimeError),
}

impl From<RuntimeError> for StreamError {
    fn from(e: RuntimeError) -> Self {
        StreamError::Failed(e)
    }
}

/// Fills `buf` as far as the reader allows; 0 only at the end.
async fn read_up_to(
    reader: &mut (dyn AsyncRead + Unpin + Send),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

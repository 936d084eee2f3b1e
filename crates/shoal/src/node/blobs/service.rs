//! `GET /v1/internal/blobs/{digest}`: a blob served to another node from
//! this node's content store, or from the spool as it is fetched.

use super::*;

/// What the blob route serves from.
pub struct BlobService<R, L> {
    pub runtime: Arc<R>,
    pub blobs: Arc<ClusterBlobs<L>>,
    /// One permit per answer being streamed.
    pub streams: Arc<tokio::sync::Semaphore>,
}

impl<R, L> BlobService<R, L> {
    pub fn new(runtime: Arc<R>, blobs: Arc<ClusterBlobs<L>>) -> Self {
        BlobService {
            runtime,
            blobs,
            streams: Arc::new(tokio::sync::Semaphore::new(BLOB_STREAMS_MAX)),
        }
    }
}

pub fn router<R: ImageStore, L: ReplicatedLog + 'static>(
    service: Arc<BlobService<R, L>>,
) -> Router {
    Router::new()
        .route(BLOB_PATH, get(serve::<R, L>))
        .with_state(service)
}

#[derive(serde::Deserialize)]
pub(super) struct BlobQuery {
    pub(super) reference: Option<String>,
    pub(super) size: Option<u64>,
    /// Only from this node's content store: nothing is fetched.
    #[serde(default)]
    pub(super) held_only: bool,
}

/// `GET /v1/internal/blobs/{digest}?reference=R&size=N` with an optional
/// `Range: bytes=OFFSET-`: the blob from this node's content store, or
/// fetched from `R`'s registry into the spool (joined if under way).
pub(super) async fn serve<R: ImageStore, L: ReplicatedLog + 'static>(
    State(service): State<Arc<BlobService<R, L>>>,
    Path(digest): Path<String>,
    Query(query): Query<BlobQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    shoal_runtime::image::check_digest(&digest)
        .map_err(|e| ApiError::bad_request(format!("digest: {e}")))?;
    let offset = match headers.get(header::RANGE) {
        None => 0,
        Some(range) => range
            .to_str()
            .ok()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|r| r.parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_request("Range: only `bytes=OFFSET-` is served"))?,
    };
    let permit = service.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable("this node streams as many blobs as it may; ask the registry")
    })?;
    let held = service
        .runtime
        .blob(&digest, offset)
        .await
        .map_err(|e| match e.kind() {
            shoal_runtime::ErrorKind::Invalid => {
                ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, e.to_string())
            }
            _ => ApiError::unavailable(e.to_string()),
        })?;
    if let Some((size, body)) = held {
        if query.size.is_some_and(|wanted| wanted != size) {
            return Err(ApiError::bad_request(format!(
                "size: blob {digest} has {size} bytes here"
            )));
        }
        return Ok(respond(size, offset, body, permit));
    }
    if query.held_only {
        return Err(ApiError::not_found(format!(
            "digest: this node holds no blob {digest}"
        )));
    }
    let reference = query.reference.as_deref().ok_or_else(|| {
        ApiError::bad_request("reference: the image the blob belongs to is required to fetch it")
    })?;
    let reference =
        ImageRef::parse(reference).map_err(|e| ApiError::bad_request(format!("reference: {e}")))?;
    let size = query
        .size
        .ok_or_else(|| ApiError::bad_request("size: the blob's size is required to fetch it"))?;
    if size > BLOB_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "size: {size} bytes is more than the {BLOB_BYTES_MAX} a node fetches for others"
        )));
    }
    if offset > size {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("Range: offset {offset} is past the blob's {size} bytes"),
        ));
    }
    let desc = Descriptor {
        media_type: "application/octet-stream".into(),
        digest,
        size,
        ..Descriptor::default()
    };
    match service.blobs.fetch(&reference, &desc, offset) {
        Ok(fetch) => Ok(respond(size, offset, fetch.body(offset), permit)),
        Err(Refused::Busy) => Err(ApiError::unavailable(
            "this node fetches as many blobs as it may; ask the registry",
        )),
        Err(Refused::NotUnderWay) => Err(ApiError::unavailable(
            "this node no longer fetches that blob; ask the registry for the rest",
        )),
        Err(Refused::UnknownRegistry) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "reference: the cluster names no image of {}; a node fetches for others only from registries the cluster uses",
                reference.registry()
            ),
        )),
        Err(Refused::SizeDiffers) => Err(ApiError::bad_request(format!(
            "size: blob {} is being fetched with another size",
            desc.digest
        ))),
        Err(Refused::Disk(why)) => Err(ApiError::internal(format!("spooling the blob: {why}"))),
    }
}

pub(super) fn respond(
    size: u64,
    offset: u64,
    body: BlobBody,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    // The permit goes when the body does.
    let body = body.map(move |chunk| {
        let _streaming = &permit;
        chunk
    });
    let status = if offset == 0 {
        StatusCode::OK
    } else {
        StatusCode::PARTIAL_CONTENT
    };
    let mut response = (status, Body::from_stream(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        "application/octet-stream".parse().expect("static"),
    );
    headers.insert(header::CONTENT_LENGTH, (size - offset).into());
    if offset > 0 {
        if let Ok(range) = format!("bytes {offset}-{}/{size}", size.saturating_sub(1)).parse() {
            headers.insert(header::CONTENT_RANGE, range);
        }
    }
    response
}

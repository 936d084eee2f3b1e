//! The routes, over a [`Backend`] the node implements. Handlers only decode,
//! call the backend and encode; every decision is the backend's.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::Deserialize;
use shoal_types::{FieldError, SpecError, SPEC_BYTES_MAX};
use tokio::io::AsyncWriteExt;

use crate::wire::{
    AppView, ApplyResponse, ClusterInfo, ClusterSettings, DnsRecordView, DrainRequest, ErrorBody,
    ImageDiskView, ImagePull, ImageView, NodeUpdate, NodeView, PlanView, PullView, TaintRequest,
    TaskView, VersionInfo,
};

/// Largest image archive accepted by `POST /v1/images`, in bytes.
pub const IMAGE_ARCHIVE_BYTES_MAX: u64 = 8 << 30;

/// An error answered to the caller, never a panic.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub errors: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl From<SpecError> for ApiError {
    fn from(error: SpecError) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("invalid app spec:\n{error}"),
            errors: error.errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            errors: self.errors,
        };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
/// A stream of log bytes; it ends when the logs end (or, when following,
/// when the task is gone or the client hangs up).
pub type LogStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

#[derive(Debug, Clone, Deserialize)]
pub struct LogOptions {
    #[serde(default)]
    pub follow: bool,
    /// Only the last N lines of each task.
    #[serde(default)]
    pub tail: Option<usize>,
    /// Only tasks of the answering node (what nodes ask each other).
    #[serde(default)]
    pub local: bool,
}

/// What the node offers the API. Any node answers any call.
pub trait Backend: Send + Sync + 'static {
    fn version(&self) -> VersionInfo;
    /// The cluster's identity, for nodes that join.
    fn cluster(&self) -> impl Future<Output = ApiResult<ClusterInfo>> + Send;
    /// Changes cluster-wide settings (fields left out keep their value).
    fn set_settings(
        &self,
        settings: ClusterSettings,
    ) -> impl Future<Output = ApiResult<ClusterInfo>> + Send;
    /// The records the cluster's DNS serves (every node serves the same).
    fn dns_records(&self) -> impl Future<Output = ApiResult<Vec<DnsRecordView>>> + Send;
    /// This node leaves the cluster: its work moves away, then it stops.
    fn leave(&self) -> impl Future<Output = ApiResult<()>> + Send;
    fn nodes(&self) -> impl Future<Output = ApiResult<Vec<NodeView>>> + Send;
    /// Adds a taint (`KEY=VALUE:EFFECT`) to a node.
    fn taint_node(
        &self,
        name: String,
        taint: String,
    ) -> impl Future<Output = ApiResult<NodeUpdate>> + Send;
    /// Removes a node's taints with `key` (and `effect`, when given).
    fn untaint_node(
        &self,
        name: String,
        key: String,
        effect: Option<String>,
    ) -> impl Future<Output = ApiResult<NodeUpdate>> + Send;
    fn drain_node(
        &self,
        name: String,
        drain: bool,
    ) -> impl Future<Output = ApiResult<NodeUpdate>> + Send;
    /// What applying a spec would do, without doing it.
    fn plan(&self, body: Bytes) -> impl Future<Output = ApiResult<PlanView>> + Send;
    /// Validates and applies a spec (YAML or JSON, native or Stellar).
    fn apply(&self, body: Bytes) -> impl Future<Output = ApiResult<ApplyResponse>> + Send;
    /// Every app; with `prepull`, each service's `prepull` view too, for
    /// which the nodes named to hold its image are asked.
    fn apps(&self, prepull: bool) -> impl Future<Output = ApiResult<Vec<AppView>>> + Send;
    fn app(&self, name: String, prepull: bool) -> impl Future<Output = ApiResult<AppView>> + Send;
    fn remove_app(&self, name: String) -> impl Future<Output = ApiResult<()>> + Send;
    fn tasks(&self, app: Option<String>) -> impl Future<Output = ApiResult<Vec<TaskView>>> + Send;
    /// Logs of a task (`APP.SERVICE.SLOT.SERIAL`) or of every task of a
    /// service (`APP.SERVICE`).
    fn logs(
        &self,
        target: String,
        options: LogOptions,
    ) -> impl Future<Output = ApiResult<LogStream>> + Send;
    fn images(&self) -> impl Future<Output = ApiResult<Vec<ImageView>>> + Send;
    /// Where uploads are spooled before import.
    fn upload_dir(&self) -> PathBuf;
    fn import_image(
        &self,
        archive: PathBuf,
        name: Option<String>,
    ) -> impl Future<Output = ApiResult<Vec<ImageView>>> + Send;
    /// Pulls an image from its registry onto the answering node.
    fn pull_image(&self, reference: String) -> impl Future<Output = ApiResult<ImageView>> + Send;
    /// The disk the answering node's images are on.
    fn image_disk(&self) -> impl Future<Output = ApiResult<ImageDiskView>> + Send;
    /// Pulls under way on the answering node.
    fn pulls(&self) -> impl Future<Output = ApiResult<Vec<PullView>>> + Send;
    /// Removes an image from the answering node, unless a task of the
    /// node runs it or is meant to.
    fn remove_image(&self, name: String) -> impl Future<Output = ApiResult<()>> + Send;
}

/// Requests the public API handles at once; more wait their turn (within
/// [`REQUEST_TIMEOUT`]).
pub const REQUESTS_IN_FLIGHT_MAX: usize = 256;
/// Time a public API request may take to be answered (a stream, once
/// answered, goes on); image uploads are bounded by their size instead.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Time a pull may take in all (each connection of it is also cut after
/// 30 s without progress).
pub const PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Largest `POST /v1/images/pull` body.
pub const PULL_BODY_BYTES_MAX: usize = 4096;

/// The one route that answers without a credential: it says the node
/// serves, and nothing else.
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"ok": true}))
}

/// The public API. Node-to-node routes (`/v1/raft/*`) are served by a
/// router of their own, merged beside this one by the node, so that each
/// gets its own bounds (and, later, its own authentication).
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    let images = Router::new()
        .route(
            "/v1/images",
            get(images::<B>)
                .post(import_image::<B>)
                .delete(remove_image::<B>),
        )
        .layer(DefaultBodyLimit::disable());
    let pulls = Router::new()
        .route("/v1/images/pull", axum::routing::post(pull_image::<B>))
        .layer(DefaultBodyLimit::max(PULL_BODY_BYTES_MAX))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            PULL_TIMEOUT,
        ));
    let bounded = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/version", get(version::<B>))
        .route("/v1/nodes", get(nodes::<B>))
        .route(
            "/v1/nodes/{name}/taints",
            axum::routing::post(taint_node::<B>),
        )
        .route(
            "/v1/nodes/{name}/taints/{key}",
            axum::routing::delete(untaint_node::<B>),
        )
        .route(
            "/v1/nodes/{name}/drain",
            axum::routing::put(drain_node::<B>),
        )
        .route("/v1/plan", axum::routing::post(plan::<B>))
        .route("/v1/cluster", get(cluster::<B>))
        .route("/v1/dns", get(dns_records::<B>))
        .route(
            "/v1/cluster/settings",
            axum::routing::put(set_settings::<B>),
        )
        .route("/v1/node/leave", axum::routing::post(leave::<B>))
        .route("/v1/apps", get(apps::<B>).post(apply::<B>))
        .route("/v1/apps/{name}", get(app::<B>).delete(remove_app::<B>))
        .route("/v1/tasks", get(tasks::<B>))
        .route("/v1/images/pulls", get(pulls_under_way::<B>))
        .route("/v1/images/disk", get(image_disk::<B>))
        .route("/v1/logs/{target}", get(logs::<B>))
        .route("/v1/schema/app.json", get(app_schema))
        .route("/openapi.json", get(openapi))
        .layer(DefaultBodyLimit::max(SPEC_BYTES_MAX + 1))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ));
    bounded
        .merge(images)
        .merge(pulls)
        .with_state(backend)
        .fallback(|| async { ApiError::not_found("no such route; see /openapi.json") })
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            REQUESTS_IN_FLIGHT_MAX,
        ))
}

async fn version<B: Backend>(State(backend): State<Arc<B>>) -> Json<VersionInfo> {
    Json(backend.version())
}

async fn cluster<B: Backend>(State(backend): State<Arc<B>>) -> ApiResult<Json<ClusterInfo>> {
    backend.cluster().await.map(Json)
}

async fn dns_records<B: Backend>(
    State(backend): State<Arc<B>>,
) -> ApiResult<Json<Vec<DnsRecordView>>> {
    backend.dns_records().await.map(Json)
}

async fn set_settings<B: Backend>(
    State(backend): State<Arc<B>>,
    body: Bytes,
) -> ApiResult<Json<ClusterInfo>> {
    let settings: ClusterSettings = json_body(&body, r#"{"voters_max": 5}"#)?;
    backend.set_settings(settings).await.map(Json)
}

async fn leave<B: Backend>(State(backend): State<Arc<B>>) -> ApiResult<StatusCode> {
    backend.leave().await.map(|()| StatusCode::ACCEPTED)
}

async fn nodes<B: Backend>(State(backend): State<Arc<B>>) -> ApiResult<Json<Vec<NodeView>>> {
    backend.nodes().await.map(Json)
}

/// What a handler names as the object of an accepted mutation (the app
/// applied, the token made), for the node's audit log: a response
/// extension, never sent.
#[derive(Clone, Debug)]
pub struct Audited(pub String);

async fn apply<B: Backend>(
    State(backend): State<Arc<B>>,
    body: Bytes,
) -> ApiResult<(axum::Extension<Audited>, Json<ApplyResponse>)> {
    let applied = backend.apply(body).await?;
    let object = format!("app {} version {}", applied.app, applied.version);
    Ok((axum::Extension(Audited(object)), Json(applied)))
}

/// `?prepull=true`: ask the nodes whether they hold what they should.
#[derive(Deserialize)]
struct AppQuery {
    #[serde(default)]
    prepull: bool,
}

async fn apps<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(query): Query<AppQuery>,
) -> ApiResult<Json<Vec<AppView>>> {
    backend.apps(query.prepull).await.map(Json)
}

async fn taint_node<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<NodeUpdate>> {
    let request: TaintRequest = json_body(&body, r#"{"taint": "gpu=true:NoSchedule"}"#)?;
    backend.taint_node(name, request.taint).await.map(Json)
}

#[derive(Deserialize)]
struct UntaintQuery {
    effect: Option<String>,
}

async fn untaint_node<B: Backend>(
    State(backend): State<Arc<B>>,
    Path((name, key)): Path<(String, String)>,
    Query(query): Query<UntaintQuery>,
) -> ApiResult<Json<NodeUpdate>> {
    backend
        .untaint_node(name, key, query.effect)
        .await
        .map(Json)
}

async fn drain_node<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<NodeUpdate>> {
    let request: DrainRequest = json_body(&body, r#"{"drain": true}"#)?;
    backend.drain_node(name, request.drain).await.map(Json)
}

/// Decodes a JSON request body, answering 400 with what was wrong and an
/// example of what to send.
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes, example: &str) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("body: {error}; send e.g. {example}")))
}

async fn plan<B: Backend>(State(backend): State<Arc<B>>, body: Bytes) -> ApiResult<Json<PlanView>> {
    backend.plan(body).await.map(Json)
}

async fn app<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(name): Path<String>,
    Query(query): Query<AppQuery>,
) -> ApiResult<Json<AppView>> {
    backend.app(name, query.prepull).await.map(Json)
}

async fn remove_app<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    backend
        .remove_app(name)
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct TaskQuery {
    app: Option<String>,
}

async fn tasks<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(query): Query<TaskQuery>,
) -> ApiResult<Json<Vec<TaskView>>> {
    backend.tasks(query.app).await.map(Json)
}

async fn logs<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(target): Path<String>,
    Query(options): Query<LogOptions>,
) -> ApiResult<Response> {
    let stream = backend.logs(target, options).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn image_disk<B: Backend>(State(backend): State<Arc<B>>) -> ApiResult<Json<ImageDiskView>> {
    backend.image_disk().await.map(Json)
}

async fn pulls_under_way<B: Backend>(
    State(backend): State<Arc<B>>,
) -> ApiResult<Json<Vec<PullView>>> {
    backend.pulls().await.map(Json)
}

async fn images<B: Backend>(State(backend): State<Arc<B>>) -> ApiResult<Json<Vec<ImageView>>> {
    backend.images().await.map(Json)
}

async fn pull_image<B: Backend>(
    State(backend): State<Arc<B>>,
    body: Bytes,
) -> ApiResult<Json<ImageView>> {
    let request: ImagePull = json_body(&body, r#"{"reference": "registry.example/web:1.2"}"#)?;
    if request.reference.trim().is_empty() {
        return Err(ApiError::bad_request(
            "reference: empty; send e.g. {\"reference\": \"registry.example/web:1.2\"}",
        ));
    }
    backend.pull_image(request.reference).await.map(Json)
}

#[derive(Deserialize)]
struct RemoveImageQuery {
    name: Option<String>,
}

async fn remove_image<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(query): Query<RemoveImageQuery>,
) -> ApiResult<axum::http::StatusCode> {
    let name = query
        .name
        .filter(|name| !name.trim().is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "name: missing; send DELETE /v1/images?name=NAME with the name `shoal images` lists",
            )
        })?;
    backend.remove_image(name).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ImportQuery {
    name: Option<String>,
}

/// Spools the archive to disk (bounded), then hands it to the backend.
async fn import_image<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(query): Query<ImportQuery>,
    request: Request,
) -> ApiResult<Json<Vec<ImageView>>> {
    let dir = backend.upload_dir();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|error| ApiError::internal(format!("creating {}: {error}", dir.display())))?;
    let path = dir.join(format!("upload-{}.tar", unique_suffix()));
    let result = async {
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|error| ApiError::internal(format!("creating {}: {error}", path.display())))?;
        let mut stream = request.into_body().into_data_stream();
        let mut written: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|error| ApiError::bad_request(format!("reading upload: {error}")))?;
            written += chunk.len() as u64;
            if written > IMAGE_ARCHIVE_BYTES_MAX {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("image archive is larger than {IMAGE_ARCHIVE_BYTES_MAX} bytes"),
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|error| ApiError::internal(format!("writing upload: {error}")))?;
        }
        file.flush()
            .await
            .map_err(|error| ApiError::internal(format!("writing upload: {error}")))?;
        if written == 0 {
            return Err(ApiError::bad_request("empty body: send the image archive"));
        }
        backend.import_image(path.clone(), query.name).await
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    result.map(Json)
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn app_schema() -> Json<serde_json::Value> {
    Json(shoal_types::app_schema())
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

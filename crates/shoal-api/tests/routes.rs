//! The public API's routes driven in process over a fake backend: what a
//! client gets for bad bodies, unknown routes and bodies over the limit,
//! and that every route the router serves is in the OpenAPI document.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use shoal_api::server::{router, ApiError, ApiResult, Backend, LogOptions, LogStream};
use shoal_api::wire::{
    AppView, ApplyResponse, ClusterInfo, ClusterSettings, DnsRecordView, ImageView, NodeUpdate,
    NodeView, PlanView, TaskView, VersionInfo,
};
use tower::ServiceExt;

/// Answers every call with "not found" except the version: enough to show
/// what the routes themselves do.
struct Fake {
    uploads: tempfile::TempDir,
}

fn nothing<T>() -> ApiResult<T> {
    Err(ApiError::not_found("the fake backend has nothing"))
}

impl Backend for Fake {
    fn version(&self) -> VersionInfo {
        VersionInfo {
            version: "0.0.0".into(),
            commit: "fake".into(),
        }
    }
    async fn cluster(&self) -> ApiResult<ClusterInfo> {
        nothing()
    }
    async fn set_settings(&self, _: ClusterSettings) -> ApiResult<ClusterInfo> {
        nothing()
    }
    async fn dns_records(&self) -> ApiResult<Vec<DnsRecordView>> {
        Ok(Vec::new())
    }
    async fn leave(&self) -> ApiResult<()> {
        nothing()
    }
    async fn nodes(&self) -> ApiResult<Vec<NodeView>> {
        Ok(Vec::new())
    }
    async fn taint_node(&self, _: String, _: String) -> ApiResult<NodeUpdate> {
        nothing()
    }
    async fn untaint_node(&self, _: String, _: String, _: Option<String>) -> ApiResult<NodeUpdate> {
        nothing()
    }
    async fn drain_node(&self, _: String, _: bool) -> ApiResult<NodeUpdate> {
        nothing()
    }
    async fn plan(&self, _: Bytes) -> ApiResult<PlanView> {
        nothing()
    }
    async fn apply(&self, _: Bytes) -> ApiResult<ApplyResponse> {
        nothing()
    }
    async fn apps(&self, _: bool) -> ApiResult<Vec<AppView>> {
        Ok(Vec::new())
    }
    async fn app(&self, _: String, _: bool) -> ApiResult<AppView> {
        nothing()
    }
    async fn remove_app(&self, _: String) -> ApiResult<()> {
        nothing()
    }
    async fn tasks(&self, _: Option<String>) -> ApiResult<Vec<TaskView>> {
        Ok(Vec::new())
    }
    async fn logs(&self, _: String, _: LogOptions) -> ApiResult<LogStream> {
        nothing()
    }
    async fn images(&self) -> ApiResult<Vec<ImageView>> {
        Ok(Vec::new())
    }
    fn upload_dir(&self) -> PathBuf {
        self.uploads.path().to_path_buf()
    }
    async fn import_image(&self, _: PathBuf, _: Option<String>) -> ApiResult<Vec<ImageView>> {
        nothing()
    }
    async fn image_disk(&self) -> ApiResult<shoal_api::wire::ImageDiskView> {
        nothing()
    }
    async fn pulls(&self) -> ApiResult<Vec<shoal_api::wire::PullView>> {
        Ok(Vec::new())
    }
    async fn remove_image(&self, _: String) -> ApiResult<()> {
        nothing()
    }
    async fn pull_image(&self, reference: String) -> ApiResult<ImageView> {
        Ok(ImageView {
            name: reference,
            digest: format!("sha256:{}", "0".repeat(64)),
            size_bytes: 1,
            created_s: None,
        })
    }
}

async fn call(
    method: Method,
    path: &str,
    body: impl Into<Body>,
) -> (StatusCode, serde_json::Value) {
    let app = router(Arc::new(Fake {
        uploads: tempfile::tempdir().expect("upload dir"),
    }));
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.into())
        .expect("request");
    let response = app.oneshot(request).await.expect("the router answers");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{path}: the answer is not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, json)
}

#[tokio::test]
async fn bad_json_is_answered_400_with_an_error_body() {
    for (method, path) in [
        (Method::PUT, "/v1/cluster/settings"),
        (Method::POST, "/v1/nodes/n1/taints"),
        (Method::PUT, "/v1/nodes/n1/drain"),
    ] {
        let (status, body) = call(method, path, "{not json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains("send e.g."), "{path}: {body}");
    }
    // A typo in a field is bad input too, named.
    let (status, body) = call(Method::PUT, "/v1/nodes/n1/drain", r#"{"drian": true}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("drian"),
        "{body}"
    );
}

#[tokio::test]
async fn an_unknown_route_is_404_with_an_error_body() {
    let (status, body) = call(Method::GET, "/v1/nope", Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("/openapi.json"),
        "{body}"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let big = vec![b' '; shoal_types::SPEC_BYTES_MAX + 2];
    let app = router(Arc::new(Fake {
        uploads: tempfile::tempdir().expect("upload dir"),
    }));
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/apps")
        .body(Body::from(big))
        .expect("request");
    let response = app.oneshot(request).await.expect("the router answers");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_known_route_reaches_the_backend() {
    let (status, body) = call(Method::GET, "/v1/version", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["commit"], "fake");
    let (status, body) = call(Method::GET, "/v1/apps/web", Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "the fake backend has nothing");
}

/// Every `.route(PATH, METHOD(...))` in the router's source, as (method, path).
fn routes_in_source() -> Vec<(String, String)> {
    let source = include_str!("../src/server.rs");
    let mut routes = Vec::new();
    for piece in source.split(".route(").skip(1) {
        let Some(path) = piece
            .trim_start()
            .strip_prefix('"')
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        // The handlers of this route, up to the closing of `.route(`.
        let end = piece.find("\n        .").unwrap_or(piece.len());
        let handlers = &piece[..end];
        for method in ["get", "post", "put", "delete"] {
            let plain = format!("{method}(");
            let chained = format!(".{method}(");
            let qualified = format!("routing::{method}(");
            let first = handlers
                .split(',')
                .nth(1)
                .is_some_and(|h| h.trim_start().starts_with(&plain) || h.contains(&qualified));
            if first || handlers.contains(&chained) {
                routes.push((method.to_string(), path.to_string()));
            }
        }
    }
    routes
}

#[test]
fn every_route_is_in_the_openapi_document() {
    let routes = routes_in_source();
    assert!(routes.len() >= 20, "found only {routes:?}");
    let document = shoal_api::openapi::document();
    for (method, path) in &routes {
        assert!(
            document["paths"][path][method].is_object(),
            "{} {path} is served but not in the OpenAPI document",
            method.to_uppercase()
        );
    }
}

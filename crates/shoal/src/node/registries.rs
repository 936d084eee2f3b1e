//! Registry settings: the routes that set, list and remove them (the
//! password sealed here with the data key, as the CA key is, before it is
//! proposed), and what a pull of a reference uses, built from the state
//! and opened with the data key by the node that pulls.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use shoal_api::server::ApiError;
use shoal_api::wire::{RegistryAdd, RegistryView};
use shoal_cluster::log::ReplicatedLog;
use shoal_cluster::raft::ProposeError;
use shoal_pki::seal::DataKey;
use shoal_runtime::registry::{ImageRef, RegistryAccess};
use shoal_state::registries::{check_host, RegistryRecord};
use shoal_state::{ApplyError, Command};
use zeroize::Zeroizing;

use super::trust::DATA_KEY_ID;
use super::Shared;
use crate::clock::now_ms;

/// Largest body of these routes (a CA bundle fits).
const BODY_BYTES_MAX: usize = 96 * 1024;
/// Longest password accepted.
const PASSWORD_BYTES_MAX: usize = 1024;

pub fn router<R: Send + Sync + 'static>(shared: Arc<Shared<R>>) -> Router {
    Router::new()
        .route("/v1/registries", get(list::<R>).post(add::<R>))
        .route("/v1/registries/{host}", delete(remove::<R>))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(shared)
}

/// What a sealed password is bound to: its purpose and its host, so that
/// it cannot be moved to another registry's record.
fn password_aad(host: &str) -> Vec<u8> {
    format!("shoal registry password {host}").into_bytes()
}

pub fn view(record: &RegistryRecord) -> RegistryView {
    RegistryView {
        host: record.host.clone(),
        insecure: record.insecure,
        ca: record.ca_pem.is_some(),
        username: record.username.clone(),
        password: record.password_sealed.is_some(),
        updated_at_ms: record.updated_at_ms,
    }
}

async fn list<R>(
    State(shared): State<Arc<Shared<R>>>,
) -> Result<Json<Vec<RegistryView>>, ApiError> {
    shared
        .raft
        .linearizable_read()
        .await
        .map_err(|error| ApiError::unavailable(error.to_string()))?;
    Ok(Json(
        shared.raft.read().registries.values().map(view).collect(),
    ))
}

async fn add<R>(
    State(shared): State<Arc<Shared<R>>>,
    Json(request): Json<RegistryAdd>,
) -> Result<
    (
        axum::Extension<shoal_api::server::Audited>,
        Json<RegistryView>,
    ),
    ApiError,
> {
    check_host(&request.host).map_err(|why| ApiError::bad_request(format!("host: {why}")))?;
    if let Some(pem) = &request.ca_pem {
        shoal_runtime::registry::check_ca_pem(pem)
            .map_err(|why| ApiError::bad_request(format!("ca_pem: {why}")))?;
    }
    let password_sealed = match (&request.username, &request.password) {
        (None, None) => None,
        (Some(_), Some(password)) => {
            let password = Zeroizing::new(password.clone());
            if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
                return Err(ApiError::bad_request(format!(
                    "password: 1 to {PASSWORD_BYTES_MAX} bytes"
                )));
            }
            let Some(key) = &shared.trust.data_key else {
                return Err(ApiError::unavailable(
                    "this node holds no data key to seal the password with (workers never do): send the request to a voter node",
                ));
            };
            let sealed = shoal_pki::seal::seal(
                key,
                DATA_KEY_ID,
                &password_aad(&request.host),
                password.as_bytes(),
            )
            .map_err(|error| ApiError::internal(format!("sealing the password: {error}")))?;
            Some(hex::encode(sealed))
        }
        _ => {
            return Err(ApiError::bad_request(
                "username and password come together: give both (--username U --password-stdin) or neither",
            ))
        }
    };
    let record = RegistryRecord {
        host: request.host.clone(),
        insecure: request.insecure,
        ca_pem: request.ca_pem.clone(),
        username: request.username.clone(),
        password_sealed,
        updated_at_ms: now_ms(),
    };
    shared
        .raft
        .propose(
            now_ms(),
            Command::SetRegistry {
                registry: record.clone(),
            },
        )
        .await
        .map_err(proposal_error)?;
    let object = shoal_api::server::Audited(format!("registry {}", record.host));
    Ok((axum::Extension(object), Json(view(&record))))
}

async fn remove<R>(
    State(shared): State<Arc<Shared<R>>>,
    Path(host): Path<String>,
) -> Result<StatusCode, ApiError> {
    shared
        .raft
        .propose(now_ms(), Command::RemoveRegistry { host })
        .await
        .map_err(proposal_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn proposal_error(error: ProposeError) -> ApiError {
    match error {
        ProposeError::Rejected(ApplyError::Refused(why)) if why.starts_with("no registry") => {
            ApiError::not_found(why)
        }
        ProposeError::Rejected(error) => ApiError::bad_request(error.to_string()),
        ProposeError::MixedVersions(why) => ApiError::new(StatusCode::CONFLICT, why),
        other => ApiError::unavailable(other.to_string()),
    }
}

/// What pulling `reference` uses on this node: the settings of its
/// registry host, with the password opened by `data_key` (a node without
/// one pulls without credentials, and says so in its log). No settings:
/// anonymous, plain HTTP only for a loopback registry.
pub fn access_for<L: ReplicatedLog>(
    log: &L,
    data_key: Option<&DataKey>,
    reference: &str,
) -> RegistryAccess {
    let Ok(image) = ImageRef::parse(reference) else {
        return RegistryAccess::default();
    };
    let state = log.read();
    let Some(record) = state.registries.get(image.registry()) else {
        return RegistryAccess::default();
    };
    let password = match (&record.password_sealed, data_key) {
        (Some(sealed), Some(key)) => hex::decode(sealed)
            .ok()
            .and_then(|sealed| {
                shoal_pki::seal::open(
                    |id| (id == DATA_KEY_ID).then_some(key),
                    &password_aad(&record.host),
                    &sealed,
                )
                .ok()
            })
            .and_then(|plain| String::from_utf8(plain.to_vec()).ok())
            .or_else(|| {
                tracing::warn!(
                    registry = %record.host,
                    "the registry's password does not open with this node's data key: pulling without the credentials"
                );
                None
            }),
        (Some(_), None) => {
            tracing::warn!(
                registry = %record.host,
                "this node holds no data key: pulling without the registry's credentials"
            );
            None
        }
        (None, _) => None,
    };
    RegistryAccess {
        explicit: true,
        insecure: record.insecure,
        ca_pem: record.ca_pem.clone(),
        username: password.as_ref().and(record.username.clone()),
        password,
    }
}

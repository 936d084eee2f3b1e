//! Registry settings: the routes that set, list and remove them (the
//! password sealed here with the data key, as the CA key is, before it is
//! proposed, or named as a secret of the secrets store). What a pull of a
//! reference uses is `pull_credentials`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use shoal_api::server::ApiError;
use shoal_api::wire::{RegistryAdd, RegistryView};
use shoal_cluster::raft::ProposeError;
use shoal_state::registries::{check_host, RegistryRecord};
use shoal_state::{ApplyError, Command};
use zeroize::Zeroizing;

use super::trust::DATA_KEY_ID;
use super::Shared;
use crate::clock::now_ms;

/// Largest body of these routes (a CA bundle fits).
const BODY_BYTES_MAX: usize = 96 * 1024;
/// Longest password accepted.
pub(super) const PASSWORD_BYTES_MAX: usize = 1024;

pub fn router<R: Send + Sync + 'static>(shared: Arc<Shared<R>>) -> Router {
    Router::new()
        .route("/v1/registries", get(list::<R>).post(add::<R>))
        .route("/v1/registries/{host}", delete(remove::<R>))
        .route(
            "/v1/internal/registry-credentials",
            post(super::pull_credentials::credentials_route::<R>),
        )
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(shared)
}

/// Settings are found by the host an image reference names, so a host is
/// taken only as references name it: in lower case, and Docker Hub as
/// `docker.io` (settings under another name would never be used).
fn as_references_name_it(host: &str) -> Result<(), String> {
    let lower = host.to_ascii_lowercase();
    if lower != host {
        return Err(format!(
            "`{host}`: write it in lower case (`{lower}`), as image references name it"
        ));
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    if matches!(
        name,
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com"
    ) {
        return Err(format!(
            "`{host}` is Docker Hub, which image references name `docker.io`: add `docker.io`"
        ));
    }
    Ok(())
}

/// What a sealed password is bound to: its purpose and its host, so that
/// it cannot be moved to another registry's record.
pub(super) fn password_aad(host: &str) -> Vec<u8> {
    format!("shoal registry password {host}").into_bytes()
}

pub fn view(record: &RegistryRecord) -> RegistryView {
    RegistryView {
        host: record.host.clone(),
        insecure: record.insecure,
        ca: record.ca_pem.is_some(),
        username: record.username.clone(),
        password: record.password_sealed.is_some() || record.password_secret.is_some(),
        password_secret: record.password_secret.clone(),
        updated_at_ms: record.updated_at_ms,
    }
}

async fn list<R>(
    State(shared): State<Arc<Shared<R>>>,
) -> Result<Json<Vec<RegistryView>>, ApiError> {
    super::gate::caught_up(&shared.raft).await?;
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
    check_host(&request.host)
        .and_then(|()| as_references_name_it(&request.host))
        .map_err(|why| ApiError::bad_request(format!("host: {why}")))?;
    if let Some(pem) = &request.ca_pem {
        shoal_runtime::registry::check_ca_pem(pem)
            .map_err(|why| ApiError::bad_request(format!("ca_pem: {why}")))?;
    }
    if request.password.is_some() && request.password_secret.is_some() {
        return Err(ApiError::bad_request(
            "password_secret: give the password or the secret that holds it, not both",
        ));
    }
    if let Some(name) = &request.password_secret {
        if request.username.is_none() {
            return Err(ApiError::bad_request(
                "username: a password comes with a user name (--username U --password-secret NAME)",
            ));
        }
        let bytes = shared
            .raft
            .read()
            .secrets
            .get(name)
            .map(|secret| secret.bytes);
        if bytes.is_some_and(|bytes| bytes == 0 || bytes > PASSWORD_BYTES_MAX as u64 + 2) {
            return Err(ApiError::bad_request(format!(
                "password_secret: secret {name} is not a password (1 to {PASSWORD_BYTES_MAX} bytes); give it one with `shoal secret update {name} -f -`"
            )));
        }
    }
    let password_sealed = match (&request.username, &request.password) {
        (None, None) => None,
        (Some(_), None) if request.password_secret.is_some() => None,
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
        password_secret: request.password_secret.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_is_added_by_the_name_references_give_it() {
        assert_eq!(as_references_name_it("registry.example:5000"), Ok(()));
        assert_eq!(as_references_name_it("docker.io"), Ok(()));
        let upper = as_references_name_it("Registry.Example").unwrap_err();
        assert!(upper.contains("`registry.example`"), "{upper}");
        for alias in ["index.docker.io", "registry-1.docker.io:443"] {
            let why = as_references_name_it(alias).unwrap_err();
            assert!(why.contains("add `docker.io`"), "{why}");
        }
    }
}

//! Secrets and configs: the routes that create, list, change and remove
//! them. A secret's value is sealed here with the data key, bound to its
//! name and version, before it is proposed (as a registry password is), so
//! only a node that holds the data key takes one; it is never read back
//! through the API. A node that holds no data key gets the secrets of a
//! task placed on it from a voter (`POST /v1/internal/task-secrets`), as it
//! starts the task.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use shoal_api::server::{ApiError, Audited};
use shoal_api::wire::{
    FileCreate, FileUpdate, FileView, SecretValue, TaskSecrets, TaskSecretsRequest,
};
use shoal_cluster::raft::ProposeError;
use shoal_pki::seal::DataKey;
use shoal_state::files::{FileRecord, FILE_BYTES_MAX};
use shoal_state::{ApplyError, Command};
use shoal_types::{check_object_name, FileKind};
use zeroize::Zeroizing;

use super::gate::Caller;
use super::trust::DATA_KEY_ID;
use super::Shared;
use crate::clock::now_ms;

/// Largest body of these routes: a value in base64 and its name.
const BODY_BYTES_MAX: usize = FILE_BYTES_MAX / 3 * 4 + 4096;

pub fn router<R: Send + Sync + 'static>(shared: Arc<Shared<R>>) -> Router {
    Router::new()
        .route("/v1/secrets", get(list::<R, true>).post(create::<R, true>))
        .route(
            "/v1/secrets/{name}",
            axum::routing::put(update::<R, true>).delete(remove::<R, true>),
        )
        .route(
            "/v1/configs",
            get(list::<R, false>).post(create::<R, false>),
        )
        .route(
            "/v1/configs/{name}",
            axum::routing::put(update::<R, false>).delete(remove::<R, false>),
        )
        .route("/v1/internal/task-secrets", post(task_secrets::<R>))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(shared)
}

/// The kind a route serves: axum's handlers take no runtime argument, so
/// the kind rides on a const parameter.
fn kind_of(secret: bool) -> FileKind {
    if secret {
        FileKind::Secret
    } else {
        FileKind::Config
    }
}

/// What a sealed secret is bound to: its purpose, name, version and
/// creation, so it cannot be moved to another secret, back to an older
/// version, or to a secret made again under its name.
pub fn secret_aad(name: &str, version: u64, created_at_ms: u64) -> Vec<u8> {
    format!("shoal secret {name} {version} {created_at_ms}").into_bytes()
}

/// Opens a secret's value with the data key.
pub fn open_secret(key: &DataKey, record: &FileRecord) -> Option<Zeroizing<Vec<u8>>> {
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&record.data)
        .ok()?;
    shoal_pki::seal::open(
        |id| (id == DATA_KEY_ID).then_some(key),
        &secret_aad(&record.name, record.version, record.created_at_ms),
        &sealed,
    )
    .ok()
}

/// The values of the secrets `task` lists, opened with the data key from
/// `state` (each at the version it holds now), or why not.
pub fn secrets_of(
    key: &DataKey,
    state: &shoal_state::State,
    task: &shoal_types::Task,
) -> Result<Vec<SecretValue>, String> {
    let mut values = Vec::new();
    for file in &task.spec.secrets {
        let Some(record) = state.secrets.get(&file.name) else {
            return Err(format!(
                "no secret {} (create it with `shoal secret create {} -f FILE`)",
                file.name, file.name
            ));
        };
        let Some(value) = open_secret(key, record) else {
            return Err(format!(
                "secret {} does not open with this node's data key",
                file.name
            ));
        };
        values.push(SecretValue {
            name: record.name.clone(),
            version: record.version,
            data: base64::engine::general_purpose::STANDARD.encode(&*value),
        });
    }
    Ok(values)
}

/// `POST /v1/internal/task-secrets`: the secrets of a task placed on the
/// node that asks and meant to run (node certificates only: the gate
/// refuses others, and removed nodes), decided after a linearizable read.
async fn task_secrets<R>(
    State(shared): State<Arc<Shared<R>>>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<TaskSecretsRequest>,
) -> Result<Json<TaskSecrets>, ApiError> {
    let (key, name) = super::gate::node_asking_a_voter(
        &shared,
        &caller,
        "a task's secrets go to the node that runs it only",
    )
    .await?;
    let state = shared.raft.read();
    let task = state
        .tasks
        .get(&request.task)
        .filter(|task| task.node == *name && task.desired == shoal_types::DesiredState::Running);
    let Some(task) = task else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "no task {:?} is placed on node {name} to run: a task's secrets go to the node that runs it only",
                request.task
            ),
        ));
    };
    let secrets = secrets_of(key, &state, task).map_err(ApiError::internal)?;
    tracing::info!(node = %name, task = %task.id, secrets = secrets.len(), "a task's secrets handed to its node");
    Ok(Json(TaskSecrets { secrets }))
}

fn view(state: &shoal_state::State, kind: FileKind, record: &FileRecord) -> FileView {
    FileView {
        name: record.name.clone(),
        version: record.version,
        bytes: record.bytes,
        used_by: state.users_of(kind, &record.name),
        created_at_ms: record.created_at_ms,
        updated_at_ms: record.updated_at_ms,
    }
}

async fn list<R, const SECRET: bool>(
    State(shared): State<Arc<Shared<R>>>,
) -> Result<Json<Vec<FileView>>, ApiError> {
    let kind = kind_of(SECRET);
    super::gate::caught_up(&shared.raft).await?;
    let state = shared.raft.read();
    Ok(Json(
        state
            .files(kind)
            .values()
            .map(|record| view(&state, kind, record))
            .collect(),
    ))
}

async fn create<R, const SECRET: bool>(
    State(shared): State<Arc<Shared<R>>>,
    Json(request): Json<FileCreate>,
) -> Result<(axum::Extension<Audited>, Json<FileView>), ApiError> {
    let kind = kind_of(SECRET);
    check_object_name(&request.name)
        .map_err(|why| ApiError::bad_request(format!("name: {why}")))?;
    put(&shared, kind, request.name, &request.data, 1, now_ms()).await
}

async fn update<R, const SECRET: bool>(
    State(shared): State<Arc<Shared<R>>>,
    Path(name): Path<String>,
    Json(request): Json<FileUpdate>,
) -> Result<(axum::Extension<Audited>, Json<FileView>), ApiError> {
    let kind = kind_of(SECRET);
    super::gate::caught_up(&shared.raft).await?;
    let Some((version, created_at_ms)) = shared
        .raft
        .read()
        .files(kind)
        .get(&name)
        .map(|record| (record.version, record.created_at_ms))
    else {
        return Err(ApiError::not_found(format!(
            "no {kind} {name:?}; create it with `shoal {kind} create NAME -f FILE` (see `shoal {kind} ls`)"
        )));
    };
    put(
        &shared,
        kind,
        name,
        &request.data,
        version + 1,
        created_at_ms,
    )
    .await
}

/// Decodes, checks and (a secret) seals a value, and proposes it as
/// `version` of `name`, created at `created_at_ms`.
async fn put<R>(
    shared: &Shared<R>,
    kind: FileKind,
    name: String,
    data: &str,
    version: u64,
    created_at_ms: u64,
) -> Result<(axum::Extension<Audited>, Json<FileView>), ApiError> {
    let value = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| {
                ApiError::bad_request(
                    "data: not base64 (standard alphabet, padded); the CLI encodes a file for you: `shoal secret create NAME -f FILE`",
                )
            })?,
    );
    if value.len() > FILE_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "data: {} bytes, at most {FILE_BYTES_MAX}",
            value.len()
        )));
    }
    let stored = match kind {
        FileKind::Config => data.to_string(),
        FileKind::Secret => {
            let Some(key) = &shared.trust.data_key else {
                return Err(ApiError::unavailable(
                    "this node holds no data key to seal the secret with (workers never do): send the request to a voter node",
                ));
            };
            let sealed = shoal_pki::seal::seal(
                key,
                DATA_KEY_ID,
                &secret_aad(&name, version, created_at_ms),
                &value,
            )
            .map_err(|error| ApiError::internal(format!("sealing the secret: {error}")))?;
            base64::engine::general_purpose::STANDARD.encode(sealed)
        }
    };
    let now = now_ms();
    let record = FileRecord {
        name: name.clone(),
        version,
        data: stored,
        bytes: value.len() as u64,
        created_at_ms,
        updated_at_ms: now,
    };
    let command = match kind {
        FileKind::Secret => Command::PutSecret {
            secret: record.clone(),
        },
        FileKind::Config => Command::PutConfig {
            config: record.clone(),
        },
    };
    shared
        .raft
        .propose(now, command)
        .await
        .map_err(proposal_error)?;
    let state = shared.raft.read();
    let record = state.files(kind).get(&name).cloned().unwrap_or(record);
    let object = Audited(format!("{kind} {name} version {version}"));
    Ok((axum::Extension(object), Json(view(&state, kind, &record))))
}

async fn remove<R, const SECRET: bool>(
    State(shared): State<Arc<Shared<R>>>,
    Path(name): Path<String>,
) -> Result<(axum::Extension<Audited>, StatusCode), ApiError> {
    let kind = kind_of(SECRET);
    let command = match kind {
        FileKind::Secret => Command::RemoveSecret { name: name.clone() },
        FileKind::Config => Command::RemoveConfig { name: name.clone() },
    };
    shared
        .raft
        .propose(now_ms(), command)
        .await
        .map_err(proposal_error)?;
    let object = Audited(format!("{kind} {name}"));
    Ok((axum::Extension(object), StatusCode::NO_CONTENT))
}

fn proposal_error(error: ProposeError) -> ApiError {
    match error {
        ProposeError::Rejected(ApplyError::Refused(why)) if why.starts_with("no ") => {
            ApiError::not_found(why)
        }
        ProposeError::Rejected(ApplyError::Refused(why))
            if why.contains(" exists ")
                || why.contains("changed meanwhile")
                || why.contains("is used by")
                || why.contains("is the password of") =>
        {
            ApiError::new(StatusCode::CONFLICT, why)
        }
        ProposeError::Rejected(error) => ApiError::bad_request(error.to_string()),
        ProposeError::MixedVersions(why) => ApiError::new(StatusCode::CONFLICT, why),
        other => ApiError::unavailable(other.to_string()),
    }
}

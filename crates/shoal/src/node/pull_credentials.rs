//! What a pull of a reference uses, built from the state: the registry's
//! settings and its password, opened here by a node that holds the data
//! key (from the record, or from the secret the record names).
//!
//! A worker holds no data key: it asks a voter (`POST
//! /v1/internal/registry-credentials` over mTLS), which hands a registry's
//! credentials only to a node that runs a task of an image from that
//! registry or holds one ahead for a service, or that answers an
//! operator's call (an apply, a pull) whose token it sends along and that
//! may deploy. The worker keeps them in memory for a while, never on disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use shoal_api::access::Access;
use shoal_api::client::{Client, ClientError};
use shoal_api::server::ApiError;
use shoal_api::wire::{RegistryCredentials, RegistryCredentialsRequest};
use shoal_cluster::log::ReplicatedLog;
use shoal_pki::seal::DataKey;
use shoal_runtime::registry::{ImageRef, RegistryAccess};
use shoal_state::files::FileRecord;
use shoal_state::registries::RegistryRecord;
use shoal_types::{DesiredState, PinnedImage, Workload};
use zeroize::Zeroizing;

use super::gate::Caller;
use super::registries::{password_aad, PASSWORD_BYTES_MAX};
use super::trust::DATA_KEY_ID;
use super::Shared;
use crate::clock::now_ms;

/// How long a worker keeps credentials a voter gave it.
const KEPT_FOR: Duration = Duration::from_secs(600);
/// How long a worker waits before it asks again for credentials a voter
/// refused it (without an operator's token).
const REFUSED_FOR: Duration = Duration::from_secs(30);
/// How long a worker waits before it asks again when no voter answered.
const UNANSWERED_FOR: Duration = Duration::from_secs(5);
/// Voters asked for one registry's credentials, at most.
const VOTERS_ASKED_MAX: usize = 3;
/// Registries whose credentials or refusals a worker remembers; the
/// memory is emptied when it is full.
const REMEMBERED_MAX: usize = 256;

/// Where a registry's password is kept, as the state holds it now.
enum Stored {
    /// Sealed in the registry's record (hex), bound to its host.
    InRecord(String),
    /// A secret of the secrets store, at the version the state holds.
    Secret(FileRecord),
}

impl Stored {
    /// What changes whenever the password may have: a worker checks the
    /// password it keeps against it.
    fn stamp(&self) -> String {
        match self {
            Stored::InRecord(sealed) => sealed.clone(),
            Stored::Secret(secret) => format!(
                "secret {} {} {}",
                secret.name, secret.version, secret.created_at_ms
            ),
        }
    }

    /// The password, opened with the data key (a secret's value without
    /// one line ending at its end), or nothing and a line in the log
    /// that names the registry, never the value.
    fn open(&self, key: &DataKey, host: &str) -> Option<String> {
        let password = match self {
            Stored::InRecord(sealed) => hex::decode(sealed)
                .ok()
                .and_then(|sealed| {
                    shoal_pki::seal::open(
                        |id| (id == DATA_KEY_ID).then_some(key),
                        &password_aad(host),
                        &sealed,
                    )
                    .ok()
                })
                .and_then(|plain| String::from_utf8(plain.to_vec()).ok()),
            Stored::Secret(secret) => {
                super::files::open_secret(key, secret).and_then(|value| password_of_secret(&value))
            }
        };
        if password.is_none() {
            let kept = match self {
                Stored::InRecord(_) => "sealed in its settings".to_string(),
                Stored::Secret(secret) => format!(
                    "in secret {} (version {}), which must be 1 to {PASSWORD_BYTES_MAX} bytes of UTF-8",
                    secret.name, secret.version
                ),
            };
            tracing::warn!(
                registry = %host,
                "the registry's password {kept} does not open with this node's data key: pulling without the credentials"
            );
        }
        password
    }
}

/// A registry password from a secret's value: UTF-8, one line ending at
/// its end dropped (`echo "$PASSWORD" | shoal secret create …` leaves
/// one), 1 to `PASSWORD_BYTES_MAX` bytes.
fn password_of_secret(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    (!text.is_empty() && text.len() <= PASSWORD_BYTES_MAX).then(|| text.to_string())
}

/// A registry's settings with where its password is kept.
struct Settings {
    record: RegistryRecord,
    password: Option<Stored>,
}

impl Settings {
    fn of(state: &shoal_state::State, record: &RegistryRecord) -> Settings {
        let password = match (&record.password_sealed, &record.password_secret) {
            (Some(sealed), _) => Some(Stored::InRecord(sealed.clone())),
            // The state keeps a secret a registry names.
            (None, Some(name)) => state.secrets.get(name).cloned().map(Stored::Secret),
            (None, None) => None,
        };
        Settings {
            record: record.clone(),
            password,
        }
    }
}

/// The registry settings `reference` is pulled under, when the state
/// holds some for its host.
fn settings_for<L: ReplicatedLog>(log: &L, reference: &str) -> Option<Settings> {
    let image = ImageRef::parse(reference).ok()?;
    let state = log.read();
    let record = state.registries.get(image.registry())?;
    Some(Settings::of(&state, record))
}

fn access(record: &RegistryRecord, password: Option<String>) -> RegistryAccess {
    RegistryAccess {
        explicit: true,
        insecure: record.insecure,
        ca_pem: record.ca_pem.clone(),
        username: password.as_ref().and(record.username.clone()),
        password,
    }
}

/// What pulling `reference` uses on this node: the settings of its
/// registry host, with the password opened here or given by a voter (a
/// node that gets none pulls without, and says so in its log). No
/// settings: anonymous, plain HTTP only for a loopback registry.
pub async fn access_for<L: ReplicatedLog>(
    log: &L,
    credentials: &PullCredentials,
    reference: &str,
) -> RegistryAccess {
    let Some(settings) = settings_for(log, reference) else {
        return RegistryAccess::default();
    };
    let password = credentials.password(&settings).await;
    access(&settings.record, password)
}

/// What pulling `reference` uses on this node without asking anyone: the
/// password opened here, or kept from a voter's answer (a blob home's
/// fetch for another node, which must not wait on a third).
pub fn access_held<L: ReplicatedLog>(
    log: &L,
    credentials: &PullCredentials,
    reference: &str,
) -> RegistryAccess {
    let Some(settings) = settings_for(log, reference) else {
        return RegistryAccess::default();
    };
    let password = credentials.held(&settings);
    access(&settings.record, password)
}

/// How a node without the data key reaches the voters.
pub struct AskVoters {
    /// The voters' API addresses, the leader's first.
    pub addrs: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    pub tls: Arc<rustls::ClientConfig>,
}

/// A password a voter gave, while it is kept.
struct Kept {
    /// The stamp of what it was opened from (`Stored::stamp`): a
    /// password changed in the state is asked for again.
    stamp: String,
    password: Zeroizing<String>,
    at: Instant,
}

/// The registry passwords this node pulls with: opened with its data key,
/// or (a worker) asked of a voter and kept in memory.
pub struct PullCredentials {
    data_key: Option<DataKey>,
    voters: Option<AskVoters>,
    kept: Mutex<HashMap<String, Kept>>,
    /// Registries a voter refused this node (without an operator's
    /// token), or no voter answered for, and until when that stands.
    refused: Mutex<HashMap<String, Instant>>,
    /// One question to the voters at a time: the pulls and resolves that
    /// need the same credentials wait for the first one's answer.
    asking: tokio::sync::Mutex<()>,
}

impl PullCredentials {
    /// A node that holds the data key (or, in tests, one that asks no one).
    pub fn local(data_key: Option<DataKey>) -> Self {
        PullCredentials {
            data_key,
            voters: None,
            kept: Mutex::default(),
            refused: Mutex::default(),
            asking: tokio::sync::Mutex::new(()),
        }
    }

    /// A node that asks the voters when it holds no data key.
    pub fn asking(data_key: Option<DataKey>, voters: AskVoters) -> Self {
        PullCredentials {
            voters: Some(voters),
            ..Self::local(data_key)
        }
    }

    fn held(&self, settings: &Settings) -> Option<String> {
        let stored = settings.password.as_ref()?;
        if let Some(key) = &self.data_key {
            return stored.open(key, &settings.record.host);
        }
        let stamp = stored.stamp();
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.get(&settings.record.host)
            .filter(|kept| kept.stamp == stamp && kept.at.elapsed() < KEPT_FOR)
            .map(|kept| kept.password.to_string())
    }

    async fn password(&self, settings: &Settings) -> Option<String> {
        let record = &settings.record;
        let stamp = settings.password.as_ref()?.stamp();
        if let Some(password) = self.held(settings) {
            return Some(password);
        }
        if self.data_key.is_some() {
            return None;
        }
        let Some(voters) = &self.voters else {
            tracing::warn!(
                registry = %record.host,
                "this node holds no data key: pulling without the registry's credentials"
            );
            return None;
        };
        let operator = shoal_cluster::raft::OPERATOR_TOKEN
            .try_with(Clone::clone)
            .ok()
            .flatten();
        let _turn = self.asking.lock().await;
        // Another caller may have been given them while this one waited.
        if let Some(password) = self.held(settings) {
            return Some(password);
        }
        if operator.is_none() {
            let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            if refused
                .get(&record.host)
                .is_some_and(|until| Instant::now() < *until)
            {
                return None;
            }
        }
        let request = RegistryCredentialsRequest {
            host: record.host.clone(),
            operator: operator.clone(),
        };
        let mut last_error = "no voter is known".to_string();
        for addr in (voters.addrs)().iter().take(VOTERS_ASKED_MAX) {
            let answer = match Client::new(addr, &voters.tls, None) {
                Ok(client) => client.registry_credentials(&request).await,
                Err(error) => Err(error),
            };
            match answer {
                Ok(given) => {
                    let password = Zeroizing::new(given.password);
                    let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
                    if kept.len() >= REMEMBERED_MAX {
                        kept.clear();
                    }
                    kept.insert(
                        record.host.clone(),
                        Kept {
                            stamp: stamp.clone(),
                            password: password.clone(),
                            at: Instant::now(),
                        },
                    );
                    return Some(password.to_string());
                }
                // A voter's refusal is the rule's: another would refuse too.
                Err(ClientError::Api {
                    status: 403,
                    message,
                    ..
                }) => {
                    tracing::warn!(registry = %record.host, %message, "a voter gives this node no credentials for the registry: pulling without them");
                    if operator.is_none() {
                        self.refuse_for(&record.host, REFUSED_FOR);
                    }
                    return None;
                }
                Err(error) => last_error = format!("{addr}: {error}"),
            }
        }
        tracing::warn!(registry = %record.host, error = %last_error, "no voter gave the registry's credentials: pulling without them");
        self.refuse_for(&record.host, UNANSWERED_FOR);
        None
    }

    fn refuse_for(&self, host: &str, wait: Duration) {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.len() >= REMEMBERED_MAX {
            refused.clear();
        }
        refused.insert(host.to_string(), Instant::now() + wait);
    }
}

/// Whether `node` pulls from the registry `host`: a task of it that is to
/// run there names an image of that registry, or it holds such an image
/// ahead for a service (`prepull`).
pub fn pulls_from(state: &shoal_state::State, node: &str, host: &str) -> bool {
    let of_host =
        |reference: &str| ImageRef::parse(reference).is_ok_and(|image| image.registry() == host);
    let runs = state.tasks.values().any(|task| {
        let Workload::Container(container) = &task.spec.workload;
        task.node == node
            && task.desired == DesiredState::Running
            && of_host(&PinnedImage::run_reference(
                task.image.as_ref(),
                &container.image,
            ))
    });
    runs || super::prepull::standby_images(state, node)
        .iter()
        .any(|reference| of_host(reference))
}

/// `POST /v1/internal/registry-credentials`: a registry's credentials for
/// the node that asks (node certificates only: the gate refuses others,
/// and removed nodes), when it pulls from that registry or sends the
/// token of an operator who may deploy.
pub(super) async fn credentials_route<R>(
    State(shared): State<Arc<Shared<R>>>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<RegistryCredentialsRequest>,
) -> Result<Json<RegistryCredentials>, ApiError> {
    let (key, name) =
        super::gate::node_asking_a_voter(&shared, &caller, "registry credentials go to nodes only")
            .await?;
    let (settings, reason) = {
        let state = shared.raft.read();
        let Some(record) = state.registries.get(&request.host) else {
            return Err(ApiError::not_found(format!(
                "no registry {:?} is set (shoal registry ls)",
                request.host
            )));
        };
        let settings = Settings::of(&state, record);
        let reason = if pulls_from(&state, name, &record.host) {
            Some("it pulls from it".to_string())
        } else {
            request.operator.as_deref().and_then(|token| {
                super::gate::operator_may(
                    &state,
                    &shared.cluster_id,
                    token,
                    Access::Deploy,
                    now_ms(),
                )
                .ok()
                .map(|operator| format!("for {}", operator.label()))
            })
        };
        (settings, reason)
    };
    let record = &settings.record;
    let Some(reason) = reason else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "node {name} runs no task of an image from {} and holds none ahead: a registry's credentials go only to the nodes that pull from it, or to a node answering the call of an operator who may deploy",
                record.host
            ),
        ));
    };
    let (Some(username), Some(stored)) = (&record.username, &settings.password) else {
        return Err(ApiError::not_found(format!(
            "registry {} has no credentials set",
            record.host
        )));
    };
    let Some(password) = stored.open(key, &record.host) else {
        return Err(ApiError::internal(
            "the registry's password cannot be opened here",
        ));
    };
    tracing::info!(node = %name, registry = %record.host, %reason, "registry credentials handed to a node");
    Ok(Json(RegistryCredentials {
        username: username.clone(),
        password,
    }))
}

#[cfg(test)]
mod tests {
    use shoal_cluster::log::MemoryLog;
    use shoal_state::{Command, State};
    use shoal_types::{Node, PinSource, PinnedImage};

    use super::super::registries::view;
    use super::*;

    /// Four nodes, one service of a private registry with one replica
    /// and a standby, one of a public registry, one node tainted.
    #[test]
    fn a_node_pulls_from_a_registry_it_runs_or_holds_ahead_an_image_of() {
        let log = MemoryLog::new("n1", State::default());
        for name in ["n1", "n2", "n3", "n4"] {
            log.apply(Command::RegisterNode {
                node: Node::sample(name, &format!("{name}:7950")),
            });
        }
        log.apply(Command::TaintNode {
            name: "n4".into(),
            taint: "gpu=yes:NoSchedule".parse().expect("taint"),
        });
        let spec = shoal_types::spec::parse_app(
            b"name: web\nservices:\n  - {name: a, image: private.example:5000/web:1}\n  - {name: b, image: public.example/b:1, prepull: none}\n",
        )
        .expect("spec");
        let pin = |byte: &str| PinnedImage {
            digest: format!("sha256:{}", byte.repeat(32)),
            source: PinSource::Registry,
        };
        log.apply(Command::PutAppPinned {
            spec,
            images: [("a".to_string(), pin("aa")), ("b".to_string(), pin("bb"))].into(),
        });
        let plan = shoal_sched::reconcile(&log.read());
        log.apply(Command::ApplyPlan { plan });
        let state = log.read();
        let runs_a = state
            .tasks
            .values()
            .find(|t| t.service == "a")
            .map(|t| t.node.clone())
            .expect("a placed");
        let runs_b = state
            .tasks
            .values()
            .find(|t| t.service == "b")
            .map(|t| t.node.clone())
            .expect("b placed");
        let standby = shoal_sched::standby(&state, "web", &state.apps["web"].spec.services[0])
            .expect("a standby")
            .to_string();
        for node in ["n1", "n2", "n3", "n4"] {
            assert_eq!(
                pulls_from(&state, node, "private.example:5000"),
                node == runs_a || node == standby,
                "{node} (a runs on {runs_a}, its standby is {standby})"
            );
            assert_eq!(
                pulls_from(&state, node, "public.example"),
                node == runs_b,
                "{node}"
            );
            assert!(!pulls_from(&state, node, "other.example"), "{node}");
        }
        // The tainted node neither runs nor stands by for anything.
        assert!(!pulls_from(&state, "n4", "private.example:5000"));
    }

    fn secret(key: &DataKey, name: &str, version: u64, value: &[u8]) -> FileRecord {
        let sealed = shoal_pki::seal::seal(
            key,
            DATA_KEY_ID,
            &super::super::files::secret_aad(name, version, 7),
            value,
        )
        .expect("seals");
        FileRecord {
            name: name.into(),
            version,
            data: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sealed),
            bytes: value.len() as u64,
            created_at_ms: 7,
            updated_at_ms: 7,
        }
    }

    /// A password named as a secret is the secret's value at the version
    /// the state holds, opened with the data key, without one line ending;
    /// a new version changes the stamp a worker's kept copy is checked
    /// against; one that is not a password, or sealed under another key,
    /// gives none.
    #[test]
    fn a_registry_password_comes_from_the_secret_it_names() {
        let key = DataKey::generate();
        let log = MemoryLog::new("n1", State::default());
        log.apply(Command::PutSecret {
            secret: secret(&key, "regpw", 1, b"s3cret\n"),
        });
        let record = RegistryRecord {
            host: "private.example:5000".into(),
            insecure: false,
            ca_pem: None,
            username: Some("ci".into()),
            password_sealed: None,
            password_secret: Some("regpw".into()),
            updated_at_ms: 1,
        };
        log.apply(Command::SetRegistry {
            registry: record.clone(),
        });
        let credentials = PullCredentials::local(Some(key.clone()));
        let reference = "private.example:5000/web:1";
        let first = settings_for(&log, reference).expect("settings");
        let access = access_held(&log, &credentials, reference);
        assert_eq!(access.username.as_deref(), Some("ci"));
        assert_eq!(access.password.as_deref(), Some("s3cret"));

        log.apply(Command::PutSecret {
            secret: secret(&key, "regpw", 2, b"n3w\r\n"),
        });
        let second = settings_for(&log, reference).expect("settings");
        let stamp = |settings: &Settings| settings.password.as_ref().expect("stored").stamp();
        assert_ne!(stamp(&first), stamp(&second));
        let access = access_held(&log, &credentials, reference);
        assert_eq!(access.password.as_deref(), Some("n3w"));

        for value in [
            &b"\n"[..],
            &b"\xff\xfe"[..],
            &[b'x'; PASSWORD_BYTES_MAX + 1][..],
        ] {
            assert_eq!(password_of_secret(value), None, "{value:?}");
        }
        assert_eq!(password_of_secret(b"a\nb\n").as_deref(), Some("a\nb"));
        let other = PullCredentials::local(Some(DataKey::generate()));
        let access = access_held(&log, &other, reference);
        assert_eq!((access.username, access.password), (None, None));
        // The view names the secret, never a value.
        let listed = view(&log.read().registries[&record.host]);
        assert!(listed.password);
        assert_eq!(listed.password_secret.as_deref(), Some("regpw"));
    }
}

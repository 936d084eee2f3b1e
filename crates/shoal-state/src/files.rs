//! Secrets and configs the cluster keeps (format 8): named values that
//! services get as files. A secret's value arrives sealed with the
//! cluster's data key, bound to its name and version, and is stored as it
//! came: the state machine never sees it in the clear. A config's value is
//! stored as it came too (base64), in the clear.
//!
//! Each change of a value is a new version; a put names the version it
//! makes, so two operators changing one value at once cannot both win.

use serde::{Deserialize, Serialize};
use shoal_types::{check_object_name, FileKind};

use crate::{ApplyError, Outcome, State};

/// Secrets, and configs, kept at once.
pub const FILES_KEPT_MAX: usize = 1_000;
/// Largest value of a secret or config, in bytes.
pub const FILE_BYTES_MAX: usize = 256 * 1024;
/// Largest value as stored: base64 of the value, sealed (nonce, tag and
/// key id), with room to spare.
const STORED_CHARS_MAX: usize = FILE_BYTES_MAX / 3 * 4 + 256;
/// All values of secrets and configs together, as stored (the state, and
/// so every snapshot, holds them).
const STORED_CHARS_TOTAL_MAX: usize = 32 << 20;

/// One secret or config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub name: String,
    /// 1 when created; one more with every new value.
    pub version: u64,
    // `created_at_ms` stays what the first version said: a new value
    // names it, and a secret's value is sealed for it (with the name and
    // the version), so a sealed value of a secret removed and made again
    // under the same name never opens as the new one.
    /// The value in base64: sealed with the data key for a secret, as
    /// given for a config.
    pub data: String,
    /// The value's length in bytes (before sealing).
    pub bytes: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl State {
    pub fn files(&self, kind: FileKind) -> &std::collections::BTreeMap<String, FileRecord> {
        match kind {
            FileKind::Secret => &self.secrets,
            FileKind::Config => &self.configs,
        }
    }

    fn files_mut(&mut self, kind: FileKind) -> &mut std::collections::BTreeMap<String, FileRecord> {
        match kind {
            FileKind::Secret => &mut self.secrets,
            FileKind::Config => &mut self.configs,
        }
    }

    /// The services (`APP/SERVICE`) that list the secret or config `name`,
    /// and for a secret the registries whose password it is (`registry
    /// HOST`).
    pub fn users_of(&self, kind: FileKind, name: &str) -> Vec<String> {
        let mut users = Vec::new();
        for app in self.apps.values() {
            for service in &app.spec.services {
                if service
                    .files()
                    .any(|(of, file)| of == kind && file.name == name)
                {
                    users.push(format!("{}/{}", app.spec.name, service.name));
                }
            }
        }
        if kind == FileKind::Secret {
            users.extend(self.registries_with_password_in(name));
        }
        users
    }

    /// The registries whose password is the secret `name`, as `registry
    /// HOST`.
    fn registries_with_password_in(&self, name: &str) -> Vec<String> {
        self.registries
            .values()
            .filter(|record| record.password_secret.as_deref() == Some(name))
            .map(|record| format!("registry {}", record.host))
            .collect()
    }

    /// Creates a secret or config (version 1) or gives it a new value (the
    /// version after the one it has).
    pub(crate) fn put_file(
        &mut self,
        kind: FileKind,
        record: &FileRecord,
    ) -> Result<Outcome, ApplyError> {
        check_object_name(&record.name)
            .map_err(|why| ApplyError::Refused(format!("name: {why}")))?;
        if record.data.len() > STORED_CHARS_MAX || record.bytes > FILE_BYTES_MAX as u64 {
            return Err(ApplyError::TooLarge(format!(
                "{kind} {}: at most {FILE_BYTES_MAX} bytes",
                record.name
            )));
        }
        let files = self.files(kind);
        let current = files.get(&record.name);
        let expected = current.map_or(1, |file| file.version + 1);
        if record.version != expected {
            return Err(ApplyError::Refused(match current {
                None => format!(
                    "no {kind} {}: create it with `shoal {kind} create {} -f FILE`",
                    record.name, record.name
                ),
                Some(file) if record.version == 1 => format!(
                    "{kind} {} exists (version {}): give it a new value with `shoal {kind} update {} -f FILE`",
                    record.name, file.version, record.name
                ),
                Some(file) => format!(
                    "{kind} {} is at version {} now, not {}: it changed meanwhile; try again",
                    record.name,
                    file.version,
                    record.version - 1
                ),
            }));
        }
        if current.is_none() && files.len() >= FILES_KEPT_MAX {
            return Err(ApplyError::TooLarge(format!(
                "the cluster holds {FILES_KEPT_MAX} {kind}s, the limit; remove some with `shoal {kind} rm`"
            )));
        }
        let total: usize = [FileKind::Secret, FileKind::Config]
            .into_iter()
            .flat_map(|of| {
                self.files(of)
                    .values()
                    .filter(move |file| of != kind || file.name != record.name)
            })
            .map(|file| file.data.len())
            .sum();
        if total + record.data.len() > STORED_CHARS_TOTAL_MAX {
            return Err(ApplyError::TooLarge(format!(
                "secrets and configs would take more than {} MiB together; remove some with `shoal secret rm` or `shoal config rm`",
                STORED_CHARS_TOTAL_MAX >> 20
            )));
        }
        // A new value of the same secret, not of one removed and made
        // again meanwhile (a value is sealed for its creation too).
        if current.is_some_and(|file| file.created_at_ms != record.created_at_ms) {
            return Err(ApplyError::Refused(format!(
                "{kind} {} was removed and created again meanwhile; try again",
                record.name
            )));
        }
        self.files_mut(kind)
            .insert(record.name.clone(), record.clone());
        Ok(Outcome::SecurityChanged)
    }

    /// Removes a secret or config no service lists.
    pub(crate) fn remove_file(
        &mut self,
        kind: FileKind,
        name: &str,
    ) -> Result<Outcome, ApplyError> {
        if !self.files(kind).contains_key(name) {
            return Err(ApplyError::Refused(format!(
                "no {kind} {name}; see `shoal {kind} ls`"
            )));
        }
        if kind == FileKind::Secret {
            if let Some(registry) = self.registries_with_password_in(name).first() {
                return Err(ApplyError::Refused(format!(
                    "secret {name} is the password of {registry}: give the registry another password (`shoal registry add`) or remove it (`shoal registry rm`) first"
                )));
            }
        }
        let users = self.users_of(kind, name);
        if !users.is_empty() {
            return Err(ApplyError::Refused(format!(
                "{kind} {name} is used by {}: remove it from their spec first",
                users.join(", ")
            )));
        }
        // Tasks of an older version keep their own spec until they stop;
        // one that restarts meanwhile needs the value.
        if let Some(task) = self.tasks.values().find(|task| {
            task.desired == shoal_types::DesiredState::Running
                && task
                    .spec
                    .files()
                    .any(|(of, file)| of == kind && file.name == name)
        }) {
            return Err(ApplyError::Refused(format!(
                "{kind} {name} is used by task {}, which is still meant to run: wait until it has stopped",
                task.id
            )));
        }
        self.files_mut(kind).remove(name);
        Ok(Outcome::SecurityChanged)
    }

    /// Checks that every secret and config `spec` lists exists.
    pub(crate) fn check_files_of(&self, spec: &shoal_types::AppSpec) -> Result<(), ApplyError> {
        for (index, service) in spec.services.iter().enumerate() {
            let mut position = std::collections::BTreeMap::new();
            for (kind, file) in service.files() {
                let at = position.entry(kind).or_insert(0usize);
                let here = *at;
                *at += 1;
                if !self.files(kind).contains_key(&file.name) {
                    return Err(ApplyError::Refused(format!(
                        "services[{index}].{}[{here}].name: no {kind} {}; create it first with `shoal {kind} create {} -f FILE`",
                        kind.field(),
                        file.name,
                        file.name
                    )));
                }
            }
        }
        Ok(())
    }
}

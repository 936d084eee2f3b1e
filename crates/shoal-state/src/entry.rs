//! The log entry's envelope: what every replica reads before it decodes the
//! command, so that a node never applies what it does not understand.
//!
//! The command travels as raw JSON inside the envelope. A node checks the
//! envelope's `version` first and decodes the command strictly only when it
//! knows that version; otherwise it stops applying (see
//! [`ApplyError::NeedsUpgrade`]) instead of skipping the entry, which would
//! let replicas diverge.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{ApplyError, Command};

/// The newest log format this build writes and reads. Every entry and
/// snapshot names the format it needs; see ARCHITECTURE.md for the rule.
///
/// - 1 (shoal 0.1): the first format.
/// - 2 (shoal 0.2): entries name their proposer and the leader that
///   appended them, and `apply` checks that each command comes from its one
///   writer; `RegisterNode` no longer writes the node's status; an app put
///   again counts its versions on; a plan's unplaced reasons are data
///   (`Unplaced::why`) instead of words.
/// - 3 (shoal 0.3): the cluster's trust (CA, join and API tokens,
///   admissions, removed identities, gossip keys) in `State::security`.
/// - 4 (shoal 0.4): `PutAppPinned`, an app with the digest each service's
///   image named when it was applied (`App::images`), copied into the tasks
///   placed for that version (`Task::image`).
/// - 5 (shoal 0.5): a service's `prepull` other than the default
///   (`successors`): `all` or `none`.
/// - 6 (shoal 0.6): a container's `security` other than the default
///   (privileged, the node's network or PID namespace, capabilities, a
///   read-only root), a node's `allows` (what its operator lets tasks do
///   beyond the defaults), and a plan's reason `not_allowed`.
/// - 7 (shoal 0.7): gossip is sealed. No entry changes: that an entry of
///   format 7 was applied (`State::log_version`) tells every node that
///   every node holds the cluster's gossip keyring, so it seals its
///   datagrams and soon takes no plaintext ones.
/// - 8 (shoal 0.8): secrets and configs (`PutSecret`, `RemoveSecret`,
///   `PutConfig`, `RemoveConfig`, `State::secrets` and `State::configs`)
///   and a service's `secrets` and `configs`, written only when listed.
/// - 9 (shoal 0.9): a node's facts key (`SetFactsKey`,
///   `Admission::facts_key`): the public key its gossip facts are signed
///   with, so that no other member can speak for it.
/// - 10 (shoal 0.10): a registry's password kept in the secrets store
///   (`RegistryRecord::password_secret`), written only when named.
/// - 11 (shoal 0.11): the CA rotated (`SetCa` of a generation after the
///   first): every node follows the roots the state holds and renews onto
///   the signer it names, which a node of an older release does not.
/// - 12 (shoal 0.12): gossip identities are proven: that an entry of
///   format 12 was applied tells every node that every node reads a proof
///   after each SWIM identity, so it sends them (sealed datagrams of
///   version 3) and soon takes no datagram without them. And health
///   checks: a service's `health` and a task's `TaskStatus::health`, each
///   written only when set.
/// - 13 (shoal 0.13): rolling updates: a service's `update`, a placement
///   `beside` the older task of its slot, a plan's rollout steps (pause,
///   rollback), and an app's `history` and `rollout` mark, each written
///   only when set.
pub const LOG_VERSION: u32 = format::ROLLOUTS;
/// The format of entries and snapshots written before formats were named.
pub const LOG_VERSION_FIRST: u32 = format::FIRST;

/// The log format that first held each thing, by name, so that a writer
/// and a reader of a format say the same number (see [`LOG_VERSION`] for
/// what each holds).
pub mod format {
    /// Entries and snapshots written before formats were named.
    pub const FIRST: u32 = 1;
    /// Proposer and leader named, writer checks, reasons as data.
    pub const REASONS: u32 = 2;
    /// The cluster's trust: CA, tokens, admissions, gossip keys, removals.
    pub const SECURITY: u32 = 3;
    /// Pinned images and registry settings.
    pub const PINS: u32 = 4;
    /// A service's `prepull` other than the default.
    pub const PREPULL: u32 = 5;
    /// A container's `security`, a node's `allows`, the reason `not_allowed`.
    pub const ALLOWS: u32 = 6;
    /// Gossip sealed with the cluster's keyring, plaintext no longer taken.
    pub const SEALED_GOSSIP: u32 = 7;
    /// Secrets and configs, and the services that list them.
    pub const FILES: u32 = 8;
    /// A node's facts key: gossip facts signed by the node they are about.
    pub const FACTS_KEYS: u32 = 9;
    /// A registry's password named as a secret of the secrets store.
    pub const REGISTRY_SECRETS: u32 = 10;
    /// The cluster's CA rotated: a CA record after the first generation.
    pub const CA_ROTATION: u32 = 11;
    /// Each SWIM identity in gossip proven by its node's facts key.
    pub const PROVEN_IDENTITIES: u32 = 12;
    /// Health checks: a service's `health` and a task's health (the same
    /// release as proven identities).
    pub const HEALTH: u32 = PROVEN_IDENTITIES;
    /// Rolling updates: `update`, placements beside an older task, rollout
    /// steps, an app's history and rollout mark.
    pub const ROLLOUTS: u32 = 13;
}
/// This build's release, stamped into the entries its leader appends so
/// that a node too old to read one can name the release to upgrade to.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// One log entry: a command stamped by its proposer and by the leader that
/// appended it. Unknown envelope fields are ignored (an older node reads a
/// newer envelope); the command is decoded only after the version check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The log format this entry needs: at least the command's
    /// [`Command::version_needed`], raised by the leader to what every
    /// node of the cluster reads.
    pub version: u32,
    /// The proposer's wall clock; `apply` uses it instead of reading a clock.
    pub at_ms: u64,
    /// The node that proposed the entry (empty in format 1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proposer: String,
    /// The leader that appended it to the log (empty in format 1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub leader: String,
    /// The leader's release (empty in format 1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub release: String,
    pub command: RawCommand,
}

/// A command as JSON, decoded by [`RawCommand::decode`] after the version
/// check. Kept raw so that the log and the wire carry it byte for byte.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawCommand(Box<RawValue>);

impl RawCommand {
    pub fn encode(command: &Command) -> RawCommand {
        RawCommand(
            serde_json::value::to_raw_value(command)
                .expect("commands serialize: they hold only maps, strings and numbers"),
        )
    }

    pub fn decode(&self) -> Result<Command, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// A command from raw JSON, for tests and tools that write entries by
    /// hand; the JSON is checked to be JSON, not to be a command.
    pub fn from_json(json: &str) -> Result<RawCommand, serde_json::Error> {
        RawValue::from_string(json.to_string()).map(RawCommand)
    }
}

impl PartialEq for RawCommand {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl fmt::Debug for RawCommand {
    /// The start of the JSON: a plan can be megabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN_CHARS_MAX: usize = 200;
        let json = self.0.get();
        match json.char_indices().nth(SHOWN_CHARS_MAX) {
            Some((end, _)) => write!(f, "{}…", &json[..end]),
            None => f.write_str(json),
        }
    }
}

/// The envelope of an entry without its command, as `apply` uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta<'a> {
    pub version: u32,
    pub at_ms: u64,
    pub proposer: &'a str,
    pub leader: &'a str,
}

impl<'a> Meta<'a> {
    /// The envelope of an entry proposed by the command's own writer (the
    /// node it reports on, or else the leader) and appended by a leader
    /// named `leader`: what a correct cluster writes. For the simulator and
    /// tests, which apply commands without a log.
    pub fn trusted(at_ms: u64, leader: &'a str, command: &'a Command) -> Meta<'a> {
        Meta {
            version: LOG_VERSION,
            at_ms,
            proposer: command.writer().unwrap_or(leader),
            leader,
        }
    }
}

impl Entry {
    /// An entry as a proposer writes it: the lowest version the command
    /// needs (the leader raises it), no leader yet.
    pub fn proposed(at_ms: u64, proposer: &str, command: &Command) -> Entry {
        Entry {
            version: command.version_needed(),
            at_ms,
            proposer: proposer.to_string(),
            leader: String::new(),
            release: String::new(),
            command: RawCommand::encode(command),
        }
    }

    /// An entry of this build's format from the command's own writer,
    /// appended by a leader called `leader`; see [`Meta::trusted`].
    pub fn trusted(at_ms: u64, command: &Command) -> Entry {
        const LEADER: &str = "leader";
        let meta = Meta::trusted(at_ms, LEADER, command);
        Entry {
            version: meta.version,
            at_ms,
            proposer: meta.proposer.to_string(),
            leader: LEADER.to_string(),
            release: RELEASE.to_string(),
            command: RawCommand::encode(command),
        }
    }

    /// Marks the entry as appended by `leader`, in the format every node of
    /// the cluster reads (`cluster_version`). Refused when the command
    /// needs a newer format than that.
    pub fn appended_by(&mut self, leader: &str, cluster_version: u32) -> Result<(), String> {
        if self.version > cluster_version {
            return Err(format!(
                "this change needs log format {} but some node of the cluster reads only up to {cluster_version}: upgrade every node to shoal {RELEASE} or later first",
                self.version
            ));
        }
        self.version = cluster_version.clamp(LOG_VERSION_FIRST, LOG_VERSION);
        self.leader = leader.to_string();
        self.release = RELEASE.to_string();
        Ok(())
    }

    pub fn meta(&self) -> Meta<'_> {
        Meta {
            version: self.version,
            at_ms: self.at_ms,
            proposer: &self.proposer,
            leader: &self.leader,
        }
    }

    /// Checks the envelope and decodes the command; an error means this
    /// node must stop applying until it is upgraded.
    pub fn decode(&self, index: u64) -> Result<Command, ApplyError> {
        let upgrade_to = || {
            if self.release.is_empty() {
                "upgrade this node to a newer release of shoal".to_string()
            } else {
                format!("upgrade this node to shoal {} or later", self.release)
            }
        };
        if self.version < LOG_VERSION_FIRST {
            return Err(ApplyError::NeedsUpgrade(format!(
                "log entry {index} names log format {}, which no release writes: the log is damaged or not shoal's",
                self.version
            )));
        }
        if self.version > LOG_VERSION {
            return Err(ApplyError::NeedsUpgrade(format!(
                "log entry {index} is of log format {}, this node (shoal {RELEASE}) reads formats {LOG_VERSION_FIRST} to {LOG_VERSION}: {}",
                self.version,
                upgrade_to()
            )));
        }
        self.command.decode().map_err(|error| {
            ApplyError::NeedsUpgrade(format!(
                "log entry {index} (format {}) holds a command this node (shoal {RELEASE}) cannot decode ({error}): {}",
                self.version,
                upgrade_to()
            ))
        })
    }
}

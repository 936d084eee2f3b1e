//! An app's versions before its current one, and what became of a
//! rolling update that failed (format 13): paused, or rolled back to the
//! version before, which the scheduler decides and the plan carries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_types::{AppSpec, PinnedImage, ServiceSpec, Task};

use crate::{format, App};

/// Versions an app keeps before its current one.
pub const HISTORY_MAX: usize = 10;
/// Longest reason a rollout step records, in bytes.
pub const ROLLOUT_REASON_BYTES_MAX: usize = 1024;

/// A version an app had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppVersion {
    pub version: u64,
    pub spec: AppSpec,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, PinnedImage>,
    /// When it became the current version.
    pub at_ms: u64,
}

/// What the scheduler decided about a rolling update that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    /// No further batches until the app is applied again.
    Pause,
    /// Back to the version before, as a new version.
    Rollback,
    /// The update is done: every task of the new spec served for its
    /// `monitor` and none of the old one is left; failures from now on
    /// are the restart policy's, not the update's.
    Finish,
}

/// One such decision, in a plan: taken only if the app is still at
/// `version` when the plan lands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStep {
    pub app: String,
    pub version: u64,
    pub action: RolloutAction,
    /// Which task failed and how, in words for people.
    pub reason: String,
    /// For a rollback: the kept version to put back (the one the failing
    /// service's outdated tasks run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<u64>,
}

/// What became of an app's current version's rollout, when it did not
/// simply finish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutMark {
    /// The version the mark is about (the app's current one while it holds).
    pub version: u64,
    pub state: MarkState,
    /// For a rollback: the version that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_version: Option<u64>,
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkState {
    /// The update stopped taking batches.
    Paused,
    /// `version` is the version before the failed one, put back: it rolls
    /// out as any version does, and pauses if it fails too.
    RolledBack,
    /// The update of `version` is done (a rollback's too, keeping
    /// `failed_version`).
    Done,
}

impl AppVersion {
    /// Whether this version's spec of service `spec.name`, pinned to
    /// `pin`, makes the same task as `spec` (scaling aside).
    pub fn makes(&self, spec: &ServiceSpec, pin: Option<&PinnedImage>) -> bool {
        self.spec
            .services
            .iter()
            .find(|before| before.name == spec.name)
            .is_some_and(|before| before.same_task_as(spec))
            && self.images.get(&spec.name) == pin
    }
}

impl App {
    /// Whether `task` was pinned to another digest than the one the
    /// current version pins its service to (a task from before pins runs
    /// what it runs).
    pub fn pin_moved(&self, task: &Task) -> bool {
        task.image
            .as_ref()
            .is_some_and(|pin| self.images.get(&task.service) != Some(pin))
    }

    /// The mark about the current version, if any.
    pub fn rollout_mark(&self) -> Option<&RolloutMark> {
        self.rollout
            .as_ref()
            .filter(|mark| mark.version == self.version)
    }

    /// A paused update goes on when the app is put again unchanged (from
    /// format 13): its mark goes.
    pub(crate) fn resume(&mut self, format: u32) {
        if format >= format::ROLLOUTS
            && self
                .rollout_mark()
                .is_some_and(|mark| mark.state == MarkState::Paused)
        {
            self.rollout = None;
        }
    }

    /// Keeps the current version in the history as a new one replaces it
    /// (from format 13), and drops the mark about it.
    pub(crate) fn keep_history(&mut self, format: u32) {
        if format < format::ROLLOUTS {
            return;
        }
        self.history.insert(
            0,
            AppVersion {
                version: self.version,
                spec: self.spec.clone(),
                images: self.images.clone(),
                at_ms: self.updated_at_ms,
            },
        );
        self.history.truncate(HISTORY_MAX);
        self.rollout = None;
    }

    /// Takes a step the scheduler decided, if the app is still at the
    /// version it was decided for and has no mark yet (a rollback may be
    /// paused); whether it did. A rollback puts back the kept version it
    /// names, as a new version, or pauses if the app no longer keeps it.
    pub(crate) fn take_step(&mut self, step: &RolloutStep, now_ms: u64) -> bool {
        let may = match self.rollout_mark() {
            None => true,
            // A rollback pauses when it fails too, and finishes.
            Some(mark) => {
                mark.state == MarkState::RolledBack && step.action != RolloutAction::Rollback
            }
        };
        if step.version != self.version || !may {
            return false;
        }
        let failed_version = self.rollout_mark().and_then(|mark| mark.failed_version);
        if step.action == RolloutAction::Finish {
            let reason = self
                .rollout_mark()
                .map(|mark| mark.reason.clone())
                .unwrap_or_default();
            self.rollout = Some(RolloutMark {
                version: self.version,
                state: MarkState::Done,
                failed_version,
                reason,
                at_ms: now_ms,
            });
            return true;
        }
        let mut reason = step.reason.clone();
        if reason.len() > ROLLOUT_REASON_BYTES_MAX {
            let mut end = ROLLOUT_REASON_BYTES_MAX;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        let before = self
            .history
            .iter()
            .find(|entry| Some(entry.version) == step.to_version)
            .filter(|_| step.action == RolloutAction::Rollback)
            .cloned();
        let Some(before) = before else {
            if step.action == RolloutAction::Rollback {
                reason.push_str("; no version before to roll back to, so paused");
            }
            self.rollout = Some(RolloutMark {
                version: self.version,
                state: MarkState::Paused,
                failed_version,
                reason,
                at_ms: now_ms,
            });
            return true;
        };
        let failed = self.version;
        self.keep_history(format::ROLLOUTS);
        self.spec = before.spec;
        self.images = before.images;
        self.version += 1;
        self.updated_at_ms = now_ms;
        self.rollout = Some(RolloutMark {
            version: self.version,
            state: MarkState::RolledBack,
            failed_version: Some(failed),
            reason,
            at_ms: now_ms,
        });
        true
    }
}

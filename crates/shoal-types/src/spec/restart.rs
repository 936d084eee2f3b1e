//! When a task's process is restarted and how long each restart waits.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Millis;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whenever the process exits.
    #[default]
    Always,
    /// Restart only when it exits with a non-zero code.
    OnFailure,
    /// Never restart.
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// When to restart and how long to wait: the delay doubles after each
/// restart, from `backoff_initial` up to `backoff_max`, and starts over once
/// the task has run longer than `backoff_max`.
pub struct RestartSpec {
    /// `always` by default; `on-failure` for batch jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RestartPolicy>,
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial: Millis,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Millis,
    /// Runs of a task at most (the first included); unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub attempts_max: Option<u32>,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

impl RestartSpec {
    pub fn policy(&self) -> RestartPolicy {
        self.policy.unwrap_or_default()
    }
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: None,
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            attempts_max: None,
        }
    }
}

fn default_backoff_initial() -> Millis {
    Millis(1_000)
}

fn default_backoff_max() -> Millis {
    Millis(60_000)
}

//! What tasks leave behind on a node, collected by the promise keeper from
//! time to time: network attachments of containers that are gone, and the
//! files of tasks no longer meant to run here.

use std::collections::{BTreeMap, BTreeSet};

use shoal_agent::Observed;
use shoal_types::{DesiredState, Task};

use super::keeper::{Keeper, TaskNetwork, FILES_GARBAGE_INTERVAL, GARBAGE_INTERVAL};

/// When the passes that collect what tasks left behind run next.
pub struct Garbage {
    network_at: std::time::Instant,
    files_at: std::time::Instant,
}

impl Garbage {
    /// The first passes look for leftovers of a crash at once.
    pub fn new() -> Garbage {
        let now = std::time::Instant::now();
        Garbage {
            network_at: now,
            files_at: now,
        }
    }

    /// The passes whose time has come: network attachments of containers
    /// gone, files of tasks no longer meant to run here.
    pub async fn collect<L, R, N, C>(
        &mut self,
        shared: &Keeper<L, R, N, C>,
        observed: &BTreeMap<String, Observed>,
        desired: &[Task],
    ) where
        N: TaskNetwork,
    {
        let now = std::time::Instant::now();
        if now >= self.network_at {
            self.network_at = now + GARBAGE_INTERVAL;
            let live: BTreeSet<String> = observed
                .keys()
                .cloned()
                .chain(
                    desired
                        .iter()
                        .filter(|task| task.desired == DesiredState::Running)
                        .map(|task| task.id.clone()),
                )
                .collect();
            let network = shared.network.clone();
            let _ = tokio::task::spawn_blocking(move || network.collect_garbage(&live)).await;
        }
        if now >= self.files_at {
            self.files_at = now + FILES_GARBAGE_INTERVAL;
            // Files stay while their container runs, and while their task is
            // meant to run here and not done for good, whatever its
            // container does: a task restarted after a crash takes them
            // again when no voter answers (this node keeps its promises
            // when cut off).
            let live: BTreeSet<String> = observed
                .iter()
                .filter(|(_, observed)| matches!(observed, Observed::Running))
                .map(|(id, _)| id.clone())
                .chain(
                    desired
                        .iter()
                        .filter(|task| task.desired == DesiredState::Running)
                        .filter(|task| !task.finished_for_good())
                        .map(|task| task.id.clone()),
                )
                .collect();
            let files = shared.files.clone();
            let _ = tokio::task::spawn_blocking(move || files.collect_garbage(&live)).await;
        }
    }
}

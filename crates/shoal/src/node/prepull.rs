//! Images ready before they are needed: by each service's `prepull`, the
//! node that would take over a lost replica (`successors`, the default:
//! the service's standby, `shoal_sched::standby`) or every node that may
//! run it (`all`) pulls the service's pinned image ahead. The scheduler
//! gives a replica lost with its node to the standby when scores tie, so
//! the replica starts there without a pull, and without the registry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_cluster::log::ReplicatedLog;
use shoal_runtime::registry::ImageRef;
use shoal_runtime::ImageStore;
use shoal_types::{DesiredState, PinSource, PinnedImage, Workload};

/// How often the node looks for what it should hold.
const PREPULL_INTERVAL: Duration = Duration::from_secs(5);
/// Pulls started in one look at most (one after another).
const PULLS_PER_ROUND_MAX: usize = 4;
/// A prepull that failed is tried again after this long, doubled after
/// each failure in a row up to [`RETRY_AFTER_MAX`] (the first failure is
/// often a moment when no node holds the image yet: the one that is to run
/// it has just started it, and the registry is gone).
const RETRY_AFTER_FIRST: Duration = Duration::from_secs(5);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);
/// Failed references remembered; the memory is emptied when it is full.
const FAILURES_KEPT_MAX: usize = 256;

/// One service's image held ahead: where, and by which reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duty<'a> {
    pub app: &'a str,
    pub service: &'a shoal_types::ServiceSpec,
    /// `REPO@DIGEST`, the reference the image is pulled and run by.
    pub reference: String,
    /// The nodes that hold it ahead (`shoal_sched::prepull_nodes`).
    pub nodes: Vec<&'a str>,
    /// The nodes where tasks of the service want to run (they hold it too).
    pub running: usize,
}

/// Every service's image held ahead, of `app` or of every app: services
/// whose image came from a registry and whose `prepull` names nodes.
pub fn duties<'a>(state: &'a shoal_state::State, app: Option<&str>) -> Vec<Duty<'a>> {
    let mut running: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for task in state.tasks.values() {
        if task.desired == DesiredState::Running && app.is_none_or(|app| task.app == app) {
            running
                .entry((task.app.as_str(), task.service.as_str()))
                .or_default()
                .insert(task.node.as_str());
        }
    }
    let none = BTreeSet::new();
    let mut duties = Vec::new();
    for (name, spec) in &state.apps {
        if app.is_some_and(|app| app != name) {
            continue;
        }
        for service in &spec.spec.services {
            // Only replicas are moved to a standby (`prepull_nodes`).
            if service.kind != shoal_types::Kind::Service || service.replicas == 0 {
                continue;
            }
            let Some(pin) = spec.images.get(&service.name) else {
                continue;
            };
            if pin.source != PinSource::Registry {
                continue;
            }
            let on = running
                .get(&(name.as_str(), service.name.as_str()))
                .unwrap_or(&none);
            let Workload::Container(container) = &service.workload;
            duties.push(Duty {
                app: name,
                service,
                reference: PinnedImage::run_reference(Some(pin), &container.image),
                nodes: shoal_sched::prepull_nodes(state, name, service, on),
                running: on.len(),
            });
        }
    }
    duties
}

/// The run references (`REPO@DIGEST`) of the images this node holds ahead.
pub fn standby_images(state: &shoal_state::State, node: &str) -> BTreeSet<String> {
    duties(state, None)
        .into_iter()
        .filter(|duty| duty.nodes.contains(&node))
        .map(|duty| duty.reference)
        .collect()
}

pub async fn run<L: ReplicatedLog, R: ImageStore>(
    node: String,
    log: L,
    runtime: Arc<R>,
    credentials: Arc<super::pull_credentials::PullCredentials>,
    gc: super::image_gc::ImageGcConfig,
) {
    // Reference → when it last failed, and the wait before the next try.
    let mut failed: HashMap<String, (Instant, Duration)> = HashMap::new();
    // What this node stands by for, worked out again only when the state
    // has moved.
    let mut wanted = BTreeSet::new();
    let mut seen_index = None;
    loop {
        tokio::time::sleep(PREPULL_INTERVAL).await;
        let index = log.read().applied_index;
        if seen_index != Some(index) {
            wanted = standby_images(&log.read(), &node);
            seen_index = Some(index);
        }
        if wanted.is_empty() {
            continue;
        }
        // A disk past the collector's high mark takes nothing ahead.
        let root = gc.root.clone();
        let full = tokio::task::spawn_blocking(move || super::image_gc::disk_use(&root))
            .await
            .ok()
            .and_then(Result::ok)
            .is_some_and(|disk| disk.percent() > u64::from(gc.high_percent));
        if full {
            continue;
        }
        let Ok(images) = runtime.images().await else {
            continue;
        };
        let have: BTreeSet<String> = images.into_iter().map(|i| i.name).collect();
        let missing: Vec<String> = wanted
            .iter()
            .filter(|reference| {
                let name = ImageRef::parse(reference).map(|r| r.to_string());
                !name.is_ok_and(|name| have.contains(&name))
                    && failed
                        .get(*reference)
                        .is_none_or(|(at, wait)| at.elapsed() >= *wait)
            })
            .take(PULLS_PER_ROUND_MAX)
            .cloned()
            .collect();
        for reference in missing {
            // Still this node's to hold (an earlier pull of the round may
            // have taken long)?
            if !standby_images(&log.read(), &node).contains(&reference) {
                continue;
            }
            let access = super::pull_credentials::access_for(&log, &credentials, &reference).await;
            match runtime.pull(&reference, &access).await {
                Ok(image) => {
                    failed.remove(&reference);
                    tracing::info!(image = %image.name, "image pulled ahead (prepull)");
                }
                Err(error) => {
                    if failed.len() >= FAILURES_KEPT_MAX {
                        failed.clear();
                    }
                    let wait = failed
                        .get(&reference)
                        .map_or(RETRY_AFTER_FIRST, |(_, wait)| {
                            (*wait * 2).min(RETRY_AFTER_MAX)
                        });
                    failed.insert(reference.clone(), (Instant::now(), wait));
                    tracing::warn!(image = %reference, %error, retry_in = ?wait, "pulling an image ahead failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use shoal_cluster::log::MemoryLog;
    use shoal_state::{Command, State};
    use shoal_types::Node;

    use super::*;

    #[test]
    fn only_the_standby_of_a_service_pulls_its_image_ahead() {
        let log = MemoryLog::new("n1", State::default());
        for name in ["n1", "n2", "n3"] {
            log.apply(Command::RegisterNode {
                node: Node::sample(name, &format!("{name}:7950")),
            });
        }
        let spec = shoal_types::spec::parse_app(
            b"name: web\nservices:\n  - {name: a, image: r.example/web:1}\n  - {name: g, image: r.example/web:1, kind: global}\n",
        )
        .expect("spec");
        let digest = format!("sha256:{}", "ab".repeat(32));
        let pin = PinnedImage {
            digest: digest.clone(),
            source: PinSource::Registry,
        };
        log.apply(Command::PutAppPinned {
            spec,
            images: [("a".to_string(), pin.clone()), ("g".to_string(), pin)].into(),
        });
        let plan = shoal_sched::reconcile(&log.read());
        log.apply(Command::ApplyPlan { plan });
        let state = log.read();
        let holder = state
            .tasks
            .values()
            .find(|t| t.service == "a")
            .map(|t| t.node.clone())
            .expect("a placed");
        let standby = shoal_sched::standby(&state, "web", &state.apps["web"].spec.services[0])
            .expect("a standby")
            .to_string();
        assert_ne!(standby, holder);
        for node in ["n1", "n2", "n3"] {
            let images = standby_images(&state, node);
            if node == standby {
                // The service's image only: the global one runs everywhere.
                assert_eq!(
                    images,
                    BTreeSet::from([format!("r.example/web@{digest}")]),
                    "{node}"
                );
            } else {
                assert!(images.is_empty(), "{node}: {images:?}");
            }
        }
    }

    #[test]
    fn all_holds_on_every_admitting_node_and_none_nowhere() {
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
            b"name: web\nservices:\n  - {name: all, image: r.example/all:1, prepull: all}\n  - {name: none, image: r.example/none:1, prepull: none}\n",
        )
        .expect("spec");
        let pin = |byte: &str| PinnedImage {
            digest: format!("sha256:{}", byte.repeat(32)),
            source: PinSource::Registry,
        };
        log.apply(Command::PutAppPinned {
            spec,
            images: [
                ("all".to_string(), pin("aa")),
                ("none".to_string(), pin("bb")),
            ]
            .into(),
        });
        let plan = shoal_sched::reconcile(&log.read());
        log.apply(Command::ApplyPlan { plan });
        let state = log.read();
        let running = state
            .tasks
            .values()
            .find(|t| t.service == "all")
            .map(|t| t.node.clone())
            .expect("all placed");
        let all = format!("r.example/all@sha256:{}", "aa".repeat(32));
        for node in ["n1", "n2", "n3", "n4"] {
            let images = standby_images(&state, node);
            // Not where it runs, not on the node whose taint it does not
            // tolerate, and `none` nowhere.
            if node == running || node == "n4" {
                assert!(images.is_empty(), "{node}: {images:?}");
            } else {
                assert_eq!(images, BTreeSet::from([all.clone()]), "{node}");
            }
        }
        let of_web = duties(&state, Some("web"));
        assert_eq!(of_web.len(), 2);
        assert!(of_web
            .iter()
            .any(|d| d.service.name == "none" && d.nodes.is_empty()));
        assert!(duties(&state, Some("other")).is_empty());
    }
}

//! The image garbage collector: when the filesystem of containerd's root
//! is fuller than a high-water mark, images no app of the cluster names are
//! removed, the oldest pull first, until it is no fuller than a low-water
//! mark (or nothing more may go).
//!
//! What is never removed: an image imported by hand (it cannot be pulled
//! again); an image a task of this node runs or is to run; an image this
//! node holds ahead for a service (its `prepull`); an image an app names by
//! its reference (a tag pulled by hand); and an image an app or a task
//! names by its pinned digest unless two other nodes run it (the cluster
//! keeps two copies of every image its services use, so the last but one
//! never goes: a node that held it ahead as a former standby may drop it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shoal_cluster::log::ReplicatedLog;
use shoal_runtime::{ContainerStatus, ImageInfo, ImageStore, Runtime};
use shoal_types::{PinnedImage, Workload};

/// Images one pass removes at most.
const REMOVALS_PER_PASS_MAX: usize = 64;
/// Removals in a row that free nothing before a pass stops.
const FREED_NOTHING_MAX: usize = 2;
/// Other nodes that must run an image before this one may drop its copy.
const COPIES_ELSEWHERE_MIN: usize = 2;

#[derive(Clone, Debug)]
pub struct ImageGcConfig {
    /// containerd's root directory; its filesystem is the one watched.
    pub root: PathBuf,
    pub high_percent: u8,
    pub low_percent: u8,
    pub interval: Duration,
}

impl ImageGcConfig {
    /// The marks must leave room between them: `0 <= low < high <= 100`
    /// (100 never collects).
    pub fn check(&self) -> Result<(), String> {
        if self.high_percent > 100 {
            return Err(format!(
                "--image-gc-high: a percentage up to 100, not {}",
                self.high_percent
            ));
        }
        if self.low_percent >= self.high_percent {
            return Err(format!(
                "--image-gc-low: below --image-gc-high ({} %), not {} %",
                self.high_percent, self.low_percent
            ));
        }
        if self.interval < Duration::from_secs(1) {
            return Err("--image-gc-interval: at least 1s".into());
        }
        Ok(())
    }
}

/// How full a filesystem is, as `df` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUse {
    pub used_bytes: u64,
    /// Used plus what unprivileged writers may still use.
    pub total_bytes: u64,
}

impl DiskUse {
    /// Percent used, rounded up (as `df` does).
    pub fn percent(&self) -> u64 {
        if self.total_bytes == 0 {
            return 0;
        }
        (self.used_bytes.saturating_mul(100)).div_ceil(self.total_bytes)
    }
}

/// How full the filesystem holding `path` is.
pub fn disk_use(path: &Path) -> std::io::Result<DiskUse> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other(format!("{}: a NUL in the path", path.display())))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points
    // to memory of the right size, which statvfs fills when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    let (block, blocks, free, available) = (
        stat.f_frsize as u64,
        stat.f_blocks as u64,
        stat.f_bfree as u64,
        stat.f_bavail as u64,
    );
    let used = blocks.saturating_sub(free) * block;
    let available = available * block;
    Ok(DiskUse {
        used_bytes: used,
        total_bytes: used + available,
    })
}

/// Every image this node keeps (normalized): what its tasks run or are to
/// run, what it holds ahead for a service (`prepull`), each service's
/// reference, and each image pinned by an app or run by a task anywhere
/// (an older version's included) unless two other nodes run it.
pub fn wanted(state: &shoal_state::State, node: &str) -> BTreeSet<String> {
    let normalize = |name: &str| {
        shoal_runtime::image::normalize_name(name).unwrap_or_else(|_| name.to_string())
    };
    let mut wanted = BTreeSet::new();
    // The other nodes where a task of each image runs, and every image of
    // a task wanted running on another node.
    let mut runs_on: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut elsewhere = BTreeSet::new();
    for task in state.tasks.values() {
        if task.desired != shoal_types::DesiredState::Running {
            continue;
        }
        let Workload::Container(container) = &task.spec.workload;
        let reference = normalize(&PinnedImage::run_reference(
            task.image.as_ref(),
            &container.image,
        ));
        if task.node == node {
            wanted.insert(reference);
        } else {
            // A copy counts on a node that is alive: a suspect one may be
            // lost with its copy any moment.
            let alive = state
                .nodes
                .get(&task.node)
                .is_some_and(|n| n.status == shoal_types::NodeStatus::Alive);
            if alive && task.status.state == shoal_types::TaskState::Running {
                runs_on
                    .entry(reference.clone())
                    .or_default()
                    .insert(task.node.as_str());
            }
            elsewhere.insert(reference);
        }
    }
    let few_copies = |reference: &String| {
        runs_on
            .get(reference)
            .is_none_or(|nodes| nodes.len() < COPIES_ELSEWHERE_MIN)
    };
    wanted.extend(elsewhere.into_iter().filter(few_copies));
    for app in state.apps.values() {
        for service in &app.spec.services {
            let Workload::Container(container) = &service.workload;
            wanted.insert(normalize(&container.image));
            let pin = app.images.get(&service.name);
            let reference = normalize(&PinnedImage::run_reference(pin, &container.image));
            if few_copies(&reference) {
                wanted.insert(reference);
            }
        }
    }
    for duty in super::prepull::duties(state, None) {
        if duty.nodes.contains(&node) {
            wanted.insert(normalize(&duty.reference));
        }
    }
    wanted
}

/// The images that may go, the oldest pull first: pulled, not kept
/// ([`wanted`]) and run by no container here.
pub fn candidates(
    images: &[ImageInfo],
    wanted: &BTreeSet<String>,
    running: &BTreeSet<String>,
) -> Vec<ImageInfo> {
    let mut candidates: Vec<ImageInfo> = images
        .iter()
        .filter(|i| i.pulled && !wanted.contains(&i.name) && !running.contains(&i.name))
        .cloned()
        .collect();
    candidates.sort_by(|a, b| {
        (a.created_s.unwrap_or(0), &a.name).cmp(&(b.created_s.unwrap_or(0), &b.name))
    });
    candidates
}

/// One pass: the names removed.
pub async fn pass<L: ReplicatedLog, R: Runtime + ImageStore>(
    node: &str,
    log: &L,
    runtime: &R,
    config: &ImageGcConfig,
    disk: &(dyn Fn(&Path) -> std::io::Result<DiskUse> + Send + Sync),
) -> Result<Vec<String>, String> {
    let measure = || disk(&config.root).map_err(|e| format!("{}: {e}", config.root.display()));
    let before = measure()?;
    if before.percent() <= u64::from(config.high_percent) {
        return Ok(Vec::new());
    }
    let images = runtime.images().await.map_err(|e| e.to_string())?;
    let running: BTreeSet<String> = runtime
        .list()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| !matches!(c.status, ContainerStatus::Stopped { .. }))
        .map(|c| c.image)
        .collect();
    let (mut wanted, mut wanted_at) = {
        let state = log.read();
        (wanted(&state, node), state.applied_index)
    };
    let mut removed = Vec::new();
    let mut last = before;
    let mut freed_nothing = 0;
    for image in candidates(&images, &wanted, &running)
        .into_iter()
        .take(REMOVALS_PER_PASS_MAX)
    {
        if last.percent() <= u64::from(config.low_percent) {
            break;
        }
        // Named again since the pass began: it stays.
        {
            let state = log.read();
            if state.applied_index != wanted_at {
                (wanted, wanted_at) = (self::wanted(&state, node), state.applied_index);
            }
        }
        if wanted.contains(&image.name) {
            continue;
        }
        match runtime.remove_image(&image.name).await {
            Ok(()) => {
                tracing::info!(image = %image.name, size_bytes = image.size_bytes, "image collected: the node needs it for nothing and the disk is full");
                removed.push(image.name);
            }
            Err(error) => tracing::warn!(image = %image.name, %error, "collecting an image"),
        }
        // Something else fills the disk when images free nothing: the
        // pass stops rather than empty the node for nothing.
        let now = measure()?;
        if now.used_bytes >= last.used_bytes {
            freed_nothing += 1;
            if freed_nothing >= FREED_NOTHING_MAX {
                tracing::warn!(root = %config.root.display(), "removing images frees nothing on this disk; something else fills it");
                break;
            }
        } else {
            freed_nothing = 0;
        }
        last = now;
    }
    if !removed.is_empty() {
        let after = measure()?;
        tracing::info!(
            before = before.percent(),
            after = after.percent(),
            removed = removed.len(),
            "image garbage collection"
        );
    }
    Ok(removed)
}

/// The collector's loop, every `interval`.
pub async fn run<L: ReplicatedLog, R: Runtime + ImageStore>(
    node: String,
    log: L,
    runtime: Arc<R>,
    config: ImageGcConfig,
) {
    let mut failing = false;
    loop {
        tokio::time::sleep(config.interval).await;
        match pass(&node, &log, runtime.as_ref(), &config, &disk_use).await {
            Ok(_) => failing = false,
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "image garbage collection");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use shoal_cluster::log::MemoryLog;
    use shoal_runtime::fake::FakeRuntime;
    use shoal_state::{Command, State};

    use super::*;

    fn image(name: &str, created_s: i64, pulled: bool) -> ImageInfo {
        ImageInfo {
            name: name.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size_bytes: 10,
            created_s: Some(created_s),
            pulled,
        }
    }

    #[test]
    fn only_pulled_images_nobody_wants_go_oldest_first() {
        let images = [
            image("r.example/new:1", 300, true),
            image("r.example/old:1", 100, true),
            image("r.example/app:1", 50, true),
            image("r.example/running:1", 60, true),
            image("shoal.test/busybox:latest", 10, false),
        ];
        let wanted = BTreeSet::from(["r.example/app:1".to_string()]);
        let running = BTreeSet::from(["r.example/running:1".to_string()]);
        let names: Vec<String> = candidates(&images, &wanted, &running)
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["r.example/old:1", "r.example/new:1"]);
    }

    #[test]
    fn the_marks_must_leave_room() {
        let config = |high, low| ImageGcConfig {
            root: "/".into(),
            high_percent: high,
            low_percent: low,
            interval: Duration::from_secs(60),
        };
        assert!(config(85, 80).check().is_ok());
        assert!(config(100, 0).check().is_ok());
        assert!(config(80, 80)
            .check()
            .unwrap_err()
            .contains("--image-gc-low"));
        assert!(config(101, 80)
            .check()
            .unwrap_err()
            .contains("--image-gc-high"));
    }

    #[tokio::test]
    async fn a_full_disk_loses_unwanted_images_until_the_low_mark() {
        let log = MemoryLog::new("n1", State::default());
        log.apply(Command::RegisterNode {
            node: shoal_types::Node::sample("n1", "127.0.0.1:7950"),
        });
        let runtime = FakeRuntime::new();
        for name in [
            "r.example/a:1",
            "r.example/b:1",
            "r.example/c:1",
            "r.example/app:1",
        ] {
            runtime.add_registry_image(name);
            runtime
                .pull(name, &Default::default())
                .await
                .expect("pulled");
        }
        runtime.add_image("shoal.test/busybox:latest");
        let spec = shoal_types::spec::parse_app(
            b"name: web\nservices: [{name: s, image: r.example/app:1}]\n",
        )
        .expect("spec");
        log.apply(Command::PutApp { spec });
        // Every image takes 10 points of the disk: five make it 95 % full.
        let disk = |_: &Path| {
            Ok(DiskUse {
                used_bytes: 45 + 10 * runtime.image_names().len() as u64,
                total_bytes: 100,
            })
        };
        let config = ImageGcConfig {
            root: "/".into(),
            high_percent: 85,
            low_percent: 80,
            interval: Duration::from_secs(60),
        };
        let removed = pass("n1", &log, &runtime, &config, &disk)
            .await
            .expect("pass");
        // 95 -> 85 (not yet at the low mark) -> 75: two go, oldest (then
        // by name) first; the app's image and the hand-imported one stay.
        assert_eq!(removed, ["r.example/a:1", "r.example/b:1"]);
        let left = runtime.image_names();
        for kept in [
            "r.example/c:1",
            "r.example/app:1",
            "shoal.test/busybox:latest",
        ] {
            assert!(left.iter().any(|n| n == kept), "{kept} removed: {left:?}");
        }
        // Under the high mark, a pass removes nothing.
        assert!(pass("n1", &log, &runtime, &config, &disk)
            .await
            .expect("pass")
            .is_empty());

        // A disk that removals do not empty (something else fills it): of
        // the four images no app names, the pass removes two, which freed
        // nothing, and stops.
        for name in ["r.example/d:1", "r.example/e:1", "r.example/f:1"] {
            runtime.add_registry_image(name);
            runtime
                .pull(name, &Default::default())
                .await
                .expect("pulled");
        }
        let full = |_: &Path| {
            Ok(DiskUse {
                used_bytes: 99,
                total_bytes: 100,
            })
        };
        let removed = pass("n1", &log, &runtime, &config, &full)
            .await
            .expect("pass");
        assert_eq!(removed.len(), 2, "{removed:?}");
    }

    /// A 5-node cluster running 3 replicas of a registry image, reported
    /// running on their nodes `running` of them.
    fn three_replicas(running: usize) -> (State, String) {
        let log = MemoryLog::new("n1", State::default());
        for name in ["n1", "n2", "n3", "n4", "n5"] {
            log.apply(Command::RegisterNode {
                node: shoal_types::Node::sample(name, &format!("{name}:7950")),
            });
        }
        let spec = shoal_types::spec::parse_app(
            b"name: web\nservices: [{name: s, image: r.example/web:1, replicas: 3}]\n",
        )
        .expect("spec");
        let digest = format!("sha256:{}", "ab".repeat(32));
        let pin = PinnedImage {
            digest: digest.clone(),
            source: shoal_types::PinSource::Registry,
        };
        log.apply(Command::PutAppPinned {
            spec,
            images: [("s".to_string(), pin)].into(),
        });
        let plan = shoal_sched::reconcile(&log.read());
        log.apply(Command::ApplyPlan { plan });
        let tasks: Vec<shoal_types::Task> = log.read().tasks.values().cloned().collect();
        for task in tasks.into_iter().take(running) {
            let status = shoal_types::TaskStatus {
                attempt: 1,
                state: shoal_types::TaskState::Running,
                promise: shoal_types::Promise::Kept,
                message: String::new(),
                container_id: Some(task.id.clone()),
                exit_code: None,
                restarts: 0,
                started_at_ms: Some(1),
                updated_at_ms: 1,
                address: None,
                health: None,
            };
            log.apply(Command::ReportTasks {
                node: task.node.clone(),
                statuses: vec![(task.id.clone(), status)],
            });
        }
        let state = log.read().clone();
        (state, format!("r.example/web@{digest}"))
    }

    #[test]
    fn a_node_keeps_what_it_runs_holds_ahead_or_the_cluster_lacks_copies_of() {
        let (state, pinned) = three_replicas(3);
        let service = &state.apps["web"].spec.services[0];
        let runs: BTreeSet<&str> = state.tasks.values().map(|t| t.node.as_str()).collect();
        let standby = shoal_sched::standby(&state, "web", service).expect("standby");
        let spare = ["n1", "n2", "n3", "n4", "n5"]
            .into_iter()
            .find(|n| !runs.contains(n) && *n != standby)
            .expect("a spare node");
        for node in runs.iter().copied().chain([standby]) {
            assert!(wanted(&state, node).contains(&pinned), "{node} drops it");
        }
        // A former standby: three other nodes run it, it may go; the tag
        // an app names stays.
        let spare_keeps = wanted(&state, spare);
        assert!(!spare_keeps.contains(&pinned), "{spare_keeps:?}");
        assert!(spare_keeps.contains("r.example/web:1"), "{spare_keeps:?}");

        // Two run it elsewhere: still two copies after it goes.
        let (state, pinned) = three_replicas(2);
        let running: BTreeSet<&str> = state
            .tasks
            .values()
            .filter(|t| t.status.state == shoal_types::TaskState::Running)
            .map(|t| t.node.as_str())
            .collect();
        let idle: Vec<&str> = ["n1", "n2", "n3", "n4", "n5"]
            .into_iter()
            .filter(|n| !state.tasks.values().any(|t| t.node == *n))
            .filter(|n| {
                Some(*n) != shoal_sched::standby(&state, "web", &state.apps["web"].spec.services[0])
            })
            .collect();
        assert_eq!(running.len(), 2);
        assert!(!wanted(&state, idle[0]).contains(&pinned));
        // Of those two, one is suspect: its copy does not count.
        let idle = idle[0].to_string();
        let suspect = running.iter().next().expect("a node").to_string();
        let mut state = state.clone();
        if let Some(node) = state.nodes.get_mut(&suspect) {
            node.status = shoal_types::NodeStatus::Suspect;
        }
        assert!(
            wanted(&state, &idle).contains(&pinned),
            "dropped with a suspect copy"
        );
        // One runs it: nobody else may drop theirs, the last but one.
        let (state, pinned) = three_replicas(1);
        for node in ["n1", "n2", "n3", "n4", "n5"] {
            assert!(wanted(&state, node).contains(&pinned), "{node} drops it");
        }
    }
}

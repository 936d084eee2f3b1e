//! `shoal apply -f FILE`: send the spec, then follow the rollout until every
//! replica of the new spec runs, or one of them fails.

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use shoal_api::client::{Client, Credential};
use shoal_api::wire::{AppView, RolloutView};
use shoal_types::{TaskState, SPEC_BYTES_MAX};

use crate::cli::ApplyArgs;

const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the pulls tasks wait for are looked at.
const PULLS_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Nodes whose pulls are shown at once, and the time each has to answer.
const PULL_NODES_MAX: usize = 8;
const PULL_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let body = read_spec(&args.file)?;
    let client = super::client(&args.target)?;
    let applied = client.apply(body).await?;
    let verb = if applied.changed {
        "applied"
    } else {
        "unchanged"
    };
    if args.detach {
        println!("app {} {verb} (version {})", applied.app, applied.version);
        return Ok(ExitCode::SUCCESS);
    }
    // Each node's pulls are asked of that node, with the same credential.
    let credential =
        crate::config::credential(args.target.config.as_deref(), args.target.addr.as_deref()).ok();
    follow(
        &client,
        credential,
        &applied.app,
        verb,
        applied.version,
        args.timeout,
    )
    .await
}

/// A bar per node and image that a task of the app waits for, while the
/// node pulls it.
struct PullBars {
    multi: MultiProgress,
    credential: Option<Credential>,
    /// Node name → its API address, read once.
    addrs: Option<BTreeMap<String, String>>,
    clients: BTreeMap<String, Client>,
    bars: BTreeMap<(String, String), ProgressBar>,
    next: Instant,
}

impl PullBars {
    async fn update(&mut self, client: &Client, app: &str) {
        if Instant::now() < self.next || self.credential.is_none() {
            return;
        }
        self.next = Instant::now() + PULLS_POLL_INTERVAL;
        let Ok(tasks) = client.tasks(Some(app)).await else {
            return;
        };
        let waiting: BTreeSet<String> = tasks
            .iter()
            .filter(|t| t.state == TaskState::Preparing)
            .map(|t| t.node.clone())
            .take(PULL_NODES_MAX)
            .collect();
        if !waiting.is_empty() && self.addrs.is_none() {
            let Ok(nodes) = client.nodes().await else {
                return;
            };
            self.addrs = Some(nodes.into_iter().map(|n| (n.name, n.addr)).collect());
        }
        let mut asks = Vec::new();
        for node in &waiting {
            if let Some(node_client) = self.client(node) {
                let node = node.clone();
                asks.push(async move {
                    let pulls =
                        tokio::time::timeout(PULL_ANSWER_TIMEOUT, node_client.pulls()).await;
                    (node, pulls)
                });
            }
        }
        let mut seen = BTreeSet::new();
        for (node, pulls) in futures::future::join_all(asks).await {
            let Ok(Ok(pulls)) = pulls else {
                continue;
            };
            for pull in pulls {
                let key = (node.clone(), pull.name.clone());
                let bar = self.bars.entry(key.clone()).or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new(pull.total_bytes));
                    if let Ok(style) = ProgressStyle::with_template(
                        "  {prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
                    ) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.set_prefix(format!("{node}: pulling {}", pull.name));
                    bar
                });
                bar.set_length(pull.total_bytes);
                bar.set_position(pull.done_bytes);
                seen.insert(key);
            }
        }
        self.bars.retain(|key, bar| {
            let keep = seen.contains(key);
            if !keep {
                bar.finish_and_clear();
            }
            keep
        });
    }

    fn client(&mut self, node: &str) -> Option<Client> {
        if let Some(client) = self.clients.get(node) {
            return Some(client.clone());
        }
        let addr = self.addrs.as_ref()?.get(node)?;
        let client = Client::from_credential(self.credential.as_ref()?, Some(addr)).ok()?;
        self.clients.insert(node.to_string(), client.clone());
        Some(client)
    }

    fn clear(&mut self) {
        for bar in self.bars.values() {
            bar.finish_and_clear();
        }
        self.bars.clear();
    }
}

pub fn read_spec(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let limit = SPEC_BYTES_MAX as u64 + 1;
    if path.as_os_str() == "-" {
        std::io::stdin().take(limit).read_to_end(&mut body)?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("opening {}", path.display()))?
            .take(limit)
            .read_to_end(&mut body)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(body)
}

async fn follow(
    client: &Client,
    credential: Option<Credential>,
    app: &str,
    verb: &str,
    version: u64,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let multi = MultiProgress::new();
    let bar = multi.add(ProgressBar::new(0));
    let mut pulls = PullBars {
        multi,
        credential,
        addrs: None,
        clients: BTreeMap::new(),
        bars: BTreeMap::new(),
        next: Instant::now(),
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} running ({elapsed})")
            .map_err(|error| anyhow::anyhow!("progress template: {error}"))?
            .progress_chars("=> "),
    );
    bar.set_message(format!("app {app} {verb} (version {version})"));
    let started = Instant::now();
    loop {
        let view = client.app(app, false).await?;
        let Some(rollout) = &view.rollout else {
            bar.abandon();
            println!(
                "app {app} {verb} (version {version}); the answering node runs an older shoal that does not report rollouts: follow it with `shoal ps {app}`"
            );
            return Ok(ExitCode::SUCCESS);
        };
        let (running, wanted) = progress(&view, rollout);
        bar.set_length(u64::from(wanted));
        bar.set_position(u64::from(running));
        let timed_out = (started.elapsed() > timeout).then_some(timeout);
        match verdict(app, verb, version, &view, rollout, timed_out) {
            Verdict::Wait(message) => {
                bar.set_message(message);
                bar.tick();
            }
            Verdict::Done(line) => {
                pulls.clear();
                bar.finish();
                println!("{line}");
                return Ok(ExitCode::SUCCESS);
            }
            Verdict::Failed(lines) => {
                pulls.clear();
                bar.abandon();
                for line in lines {
                    eprintln!("{line}");
                }
                return Ok(ExitCode::FAILURE);
            }
        }
        pulls.update(client, app).await;
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Tasks that count as rolled out, and tasks wanted: a batch job's once it
/// completed, a task with a check once it is healthy.
fn progress(view: &AppView, rollout: &RolloutView) -> (u32, u32) {
    let wanted: u32 = rollout.services.iter().map(|s| s.wanted).sum();
    let running: u32 = view
        .services
        .iter()
        .zip(&rollout.services)
        .map(|(service, progress)| match service.kind {
            shoal_types::Kind::Batch => progress.completed,
            _ => progress.healthy.unwrap_or(progress.running),
        })
        .sum();
    (running, wanted)
}

/// What following a rollout does after one look.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Look again; the bar says this.
    Wait(String),
    /// Done: this line on stdout, exit 0.
    Done(String),
    /// These lines on stderr, exit 1.
    Failed(Vec<String>),
}

/// The decision after one look at the app that `shoal apply` made
/// `version` of: done, failed (a broken task, a paused update, a
/// rollback, a newer version, the time out), or go on looking.
fn verdict(
    app: &str,
    verb: &str,
    version: u64,
    view: &AppView,
    rollout: &RolloutView,
    timed_out: Option<Duration>,
) -> Verdict {
    let (running, wanted) = progress(view, rollout);
    let outdated: u32 = rollout.services.iter().filter_map(|s| s.outdated).sum();
    if view.version != version {
        return match &rollout.rolled_back {
            // Rolled back: followed until the version before runs again.
            Some(back) if back.failed_version == version => {
                if let Some(paused) = &rollout.paused {
                    Verdict::Failed(vec![
                        format!(
                            "error: app {app} version {version} failed and was rolled back to the spec before as version {}, whose update paused too: {paused}",
                            view.version
                        ),
                        format!("look closer with `shoal ps {app}`"),
                    ])
                } else if rollout.done || rollout.broken.is_some() || timed_out.is_some() {
                    let how = if rollout.done {
                        "runs the spec from before"
                    } else {
                        "is rolling back to the spec from before"
                    };
                    Verdict::Failed(vec![
                        format!(
                            "error: app {app} version {version} failed and was rolled back: version {} {how}. {}",
                            view.version, back.reason
                        ),
                        format!("look closer with `shoal ps {app}`"),
                    ])
                } else {
                    Verdict::Wait(format!(
                        "app {app} version {version} failed: rolling back (version {})",
                        view.version
                    ))
                }
            }
            _ => Verdict::Failed(vec![format!(
                "error: app {app} is at version {} now, applied after this one ({version}); follow it with `shoal ps {app}`",
                view.version
            )]),
        };
    }
    if let Some(reason) = &rollout.paused {
        return Verdict::Failed(vec![
            format!("error: app {app} version {version}: the update paused: {reason}"),
            format!(
                "{outdated} tasks still run the spec before; apply again to go on, and look closer with `shoal ps {app}`"
            ),
        ]);
    }
    if let Some(broken) = &rollout.broken {
        return Verdict::Failed(vec![
            format!(
                "error: task {} {}: {}",
                broken.task,
                broken.state.as_str(),
                broken.message
            ),
            format!(
                "look closer with `shoal ps {app}` and `shoal logs {}`",
                broken.task
            ),
        ]);
    }
    if rollout.done {
        return Verdict::Done(format!(
            "app {app} {verb} (version {version}): {running}/{wanted} running"
        ));
    }
    if let Some(timeout) = timed_out {
        return Verdict::Failed(vec![format!(
            "error: app {app}: {running}/{wanted} running after {}s; it keeps trying: follow it with `shoal ps {app}`",
            timeout.as_secs()
        )]);
    }
    if let Some((service, reason)) = rollout
        .services
        .iter()
        .find_map(|s| Some((&s.service, s.unplaced.as_ref()?)))
    {
        return Verdict::Wait(format!(
            "app {app}: cannot place tasks of {service}: {reason}"
        ));
    }
    if outdated > 0 {
        Verdict::Wait(format!(
            "app {app} {verb} (version {version}), {outdated} older to replace"
        ))
    } else {
        Verdict::Wait(format!("app {app} {verb} (version {version})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app of one service at `version`, its rollout as `change` makes it.
    fn look(version: u64, change: impl FnOnce(&mut RolloutView)) -> (AppView, RolloutView) {
        let spec = shoal_types::parse_app(
            b"name: web\nservices: [{name: a, image: busybox, replicas: 2}]\n",
        )
        .expect("spec");
        let mut rollout: RolloutView = serde_json::from_value(serde_json::json!({
            "version": version, "done": false,
            "services": [{"service": "a", "wanted": 2, "running": 2, "healthy": 1,
                          "outdated": 1, "completed": 0, "failed": 0, "stopping": 0,
                          "done": false}]
        }))
        .expect("rollout");
        change(&mut rollout);
        let view: AppView = serde_json::from_value(serde_json::json!({
            "name": "web", "version": version, "created_at_ms": 0, "updated_at_ms": 0,
            "services": [{"name": "a", "image": "busybox", "kind": "service", "replicas": 2,
                          "running": 2, "completed": 0, "failed": 0}],
            "spec": spec,
        }))
        .expect("view");
        (view, rollout)
    }

    fn decide(version: u64, view: &(AppView, RolloutView), timed_out: bool) -> Verdict {
        let timeout = timed_out.then_some(Duration::from_secs(60));
        verdict("web", "updated", version, &view.0, &view.1, timeout)
    }

    #[test]
    fn a_rollout_is_followed_until_done_and_counts_healthy_tasks() {
        let waiting = look(2, |_| {});
        assert_eq!(
            decide(2, &waiting, false),
            Verdict::Wait("app web updated (version 2), 1 older to replace".into())
        );
        assert_eq!(progress(&waiting.0, &waiting.1), (1, 2));
        let done = look(2, |rollout| rollout.done = true);
        assert_eq!(
            decide(2, &done, false),
            Verdict::Done("app web updated (version 2): 1/2 running".into())
        );
        let Verdict::Failed(lines) = decide(2, &waiting, true) else {
            panic!("a time out fails");
        };
        assert!(lines[0].contains("after 60s"), "{lines:?}");
    }

    #[test]
    fn a_paused_update_and_a_rollback_fail_with_the_reason() {
        let paused = look(2, |rollout| {
            rollout.paused = Some("task web.a.0.7 failed".into())
        });
        let Verdict::Failed(lines) = decide(2, &paused, false) else {
            panic!("a pause fails");
        };
        assert!(
            lines[0].contains("the update paused: task web.a.0.7 failed"),
            "{lines:?}"
        );
        // Rolled back to version 3: followed until version 3 is done.
        let back = |done: bool| {
            look(3, |rollout| {
                rollout.done = done;
                rollout.rolled_back = Some(shoal_api::wire::RolledBackView {
                    failed_version: 2,
                    reason: "task web.a.0.7 failed".into(),
                });
            })
        };
        assert!(
            matches!(decide(2, &back(false), false), Verdict::Wait(words) if words.contains("rolling back"))
        );
        let Verdict::Failed(lines) = decide(2, &back(true), false) else {
            panic!("a rollback fails");
        };
        assert!(
            lines[0].contains("version 2 failed and was rolled back: version 3")
                && lines[0].contains("task web.a.0.7 failed"),
            "{lines:?}"
        );
        // Another version applied since: not this apply's to follow.
        let Verdict::Failed(lines) = decide(2, &look(3, |_| {}), false) else {
            panic!("a newer version fails");
        };
        assert!(lines[0].contains("applied after this one"), "{lines:?}");
    }
}

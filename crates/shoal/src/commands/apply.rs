//! `shoal apply -f FILE`: send the spec, then follow the rollout until every
//! replica of the new spec runs, or one of them fails.

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use shoal_api::client::{Client, Credential};
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
        let Some(rollout) = view.rollout else {
            bar.abandon();
            println!(
                "app {app} {verb} (version {version}); the answering node runs an older shoal that does not report rollouts: follow it with `shoal ps {app}`"
            );
            return Ok(ExitCode::SUCCESS);
        };
        // A batch job counts once it completed; while it runs it does not.
        let wanted: u32 = rollout.services.iter().map(|s| s.wanted).sum();
        let running: u32 = view
            .services
            .iter()
            .zip(&rollout.services)
            .map(|(service, progress)| match service.kind {
                shoal_types::Kind::Batch => progress.completed,
                _ => progress.running,
            })
            .sum();
        bar.set_length(u64::from(wanted));
        bar.set_position(u64::from(running));
        bar.tick();
        if let Some(broken) = &rollout.broken {
            pulls.clear();
            bar.abandon();
            eprintln!(
                "error: task {} {}: {}",
                broken.task,
                broken.state.as_str(),
                broken.message
            );
            eprintln!(
                "look closer with `shoal ps {app}` and `shoal logs {}`",
                broken.task
            );
            return Ok(ExitCode::FAILURE);
        }
        if rollout.done {
            pulls.clear();
            bar.finish();
            println!("app {app} {verb} (version {version}): {running}/{wanted} running");
            return Ok(ExitCode::SUCCESS);
        }
        if let Some((service, reason)) = rollout
            .services
            .iter()
            .find_map(|s| Some((&s.service, s.unplaced.as_ref()?)))
        {
            bar.set_message(format!(
                "app {app}: cannot place tasks of {service}: {reason}"
            ));
        }
        if started.elapsed() > timeout {
            pulls.clear();
            bar.abandon();
            eprintln!(
                "error: app {app}: {running}/{wanted} running after {}s; it keeps trying: follow it with `shoal ps {app}`",
                timeout.as_secs()
            );
            return Ok(ExitCode::FAILURE);
        }
        pulls.update(client, app).await;
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

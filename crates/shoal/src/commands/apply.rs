//! `shoal apply -f FILE`: send the spec, then follow the rollout until every
//! replica of the new spec runs, or one of them fails.

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use shoal_api::client::Client;
use shoal_types::{DesiredState, Promise, TaskState, SPEC_BYTES_MAX};

use crate::cli::ApplyArgs;

const POLL_INTERVAL: Duration = Duration::from_millis(100);

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
    follow(&client, &applied.app, verb, applied.version, args.timeout).await
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
    app: &str,
    verb: &str,
    version: u64,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} running ({elapsed})")
            .map_err(|error| anyhow::anyhow!("progress template: {error}"))?
            .progress_chars("=> "),
    );
    bar.set_message(format!("app {app} {verb} (version {version})"));
    let started = Instant::now();
    loop {
        let view = client.app(app).await?;
        let wanted: u32 = view.services.iter().map(|s| s.replicas).sum();
        // A batch job is done once it completed; while it runs it is not.
        let running: u32 = view
            .services
            .iter()
            .map(|s| match s.kind {
                shoal_types::Kind::Batch => s.completed,
                _ => s.running,
            })
            .sum();
        bar.set_length(u64::from(wanted));
        bar.set_position(u64::from(running));
        bar.tick();
        let tasks = client.tasks(Some(app)).await?;
        let broken = tasks.iter().find(|task| {
            task.desired == DesiredState::Running
                && task.promise == Promise::Broken
                && matches!(task.state, TaskState::Failed | TaskState::Exited)
                && view
                    .spec
                    .services
                    .iter()
                    .any(|service| service.name == task.service)
        });
        if let Some(task) = broken {
            bar.abandon();
            eprintln!(
                "error: task {} {}: {}",
                task.id,
                task.state.as_str(),
                task.message
            );
            eprintln!(
                "look closer with `shoal ps {app}` and `shoal logs {}`",
                task.id
            );
            return Ok(ExitCode::FAILURE);
        }
        let stopping = tasks
            .iter()
            .any(|task| task.desired == DesiredState::Stopped && !task.state.is_terminal());
        if running == wanted && !stopping {
            bar.finish();
            println!("app {app} {verb} (version {version}): {running}/{wanted} running");
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(unplaced) = view.unplaced.first() {
            bar.set_message(format!(
                "app {app}: cannot place {} task(s) of {}: {}",
                unplaced.count, unplaced.service, unplaced.reason
            ));
        }
        if started.elapsed() > timeout {
            bar.abandon();
            eprintln!(
                "error: app {app}: {running}/{wanted} running after {}s; it keeps trying: follow it with `shoal ps {app}`",
                timeout.as_secs()
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

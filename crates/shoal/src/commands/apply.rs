//! `shoal apply -f FILE`: send the spec, then follow the rollout until every
//! replica of the new spec runs, or one of them fails.

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use shoal_api::client::Client;
use shoal_types::SPEC_BYTES_MAX;

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

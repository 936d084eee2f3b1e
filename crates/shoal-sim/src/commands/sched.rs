//! `shoal-sim sched`: the scheduling benchmark, timed with the wall clock.
// The benchmark's figures are wall-clock seconds and the process's peak
// memory; the simulation it times reads neither.
#![allow(clippy::disallowed_methods)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use shoal_sim::bench::{Bench, BenchConfig, Mark};

#[derive(clap::Args)]
pub struct Args {
    /// Simulated nodes.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Tasks to place (replicas over all services).
    #[arg(long, default_value_t = 1_000_000)]
    tasks: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Unplaced groups printed with their reasons at most.
const UNPLACED_SHOWN_MAX: usize = 5;

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let config = BenchConfig {
        nodes: args.nodes,
        tasks: args.tasks,
        seed: args.seed,
    };
    let build_started = Instant::now();
    let mut bench = Bench::build(&config).context("building the benchmark's cluster")?;
    eprintln!(
        "built {} nodes and {} services ({} tasks) in {:.2}s",
        args.nodes,
        bench.services,
        args.tasks,
        build_started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let mut phase_started = started;
    let (mut scheduler, mut apply) = (Duration::ZERO, Duration::ZERO);
    let totals = bench.run(|mark| {
        let now = Instant::now();
        match mark {
            Mark::SchedulerStarts { .. } => phase_started = now,
            Mark::ApplyStarts { round, planned } => {
                scheduler += now - phase_started;
                eprintln!(
                    "round {round}: planned {planned} placements in {:.2}s",
                    (now - phase_started).as_secs_f64()
                );
                phase_started = now;
            }
            Mark::RoundEnds {
                round,
                placed,
                placed_total,
            } => {
                apply += now - phase_started;
                eprintln!(
                    "round {round}: applied {placed} in {:.2}s ({placed_total} placed, {:.1}s so far)",
                    (now - phase_started).as_secs_f64(),
                    (now - started).as_secs_f64()
                );
            }
            // The final plan, which places nothing, is scheduling time too.
            Mark::Done => scheduler += now - phase_started,
        }
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let placements_per_s = if seconds > 0.0 {
        totals.placed as f64 / seconds
    } else {
        0.0
    };
    let unplaced = args.tasks.saturating_sub(totals.placed);
    // Why tasks were left out, so that a shortfall is explained, not guessed.
    for unplaced in bench.state().unplaced.iter().take(UNPLACED_SHOWN_MAX) {
        eprintln!(
            "unplaced: {} of {}.{}: {}",
            unplaced.count,
            unplaced.app,
            unplaced.service,
            unplaced.words()
        );
    }
    println!(
        "for comparison: kube-scheduler's performance gate is about 680-810 pods/s on 5,000 nodes; \
         Nomad's C1M placed 1,000,000 containers in under 5 minutes (about 3,750/s) on five 32-core servers; \
         here: {placements_per_s:.0}/s on one core, {} nodes",
        args.nodes
    );
    let report = serde_json::json!({
        "nodes": args.nodes,
        "tasks": args.tasks,
        "placed": totals.placed,
        "unplaced": unplaced,
        "unplaced_reported": totals.unplaced_reported,
        "rejected": totals.rejected,
        "rounds": totals.rounds,
        "seconds": round3(seconds),
        "placements_per_s": placements_per_s.round(),
        "peak_rss_bytes": peak_rss_bytes(),
        "scheduler_seconds": round3(scheduler.as_secs_f64()),
        "apply_seconds": round3(apply.as_secs_f64()),
    });
    println!("{report}");
    Ok(if unplaced == 0 && totals.rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The process's peak resident memory (`VmHWM` in /proc/self/status), or
/// null where there is no /proc.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

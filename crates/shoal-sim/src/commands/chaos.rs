//! `shoal-sim chaos`: one seeded chaos run (or several consecutive seeds).

use std::process::ExitCode;

use shoal_sim::chaos::{self, ChaosConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Simulated nodes at the start (joins add up to a quarter more).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Seed of the run; the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Steps of events, each followed by scheduling and checks.
    #[arg(long, default_value_t = 300)]
    steps: u32,
    /// Run ten times as many steps.
    #[arg(long)]
    long: bool,
    /// Run this many consecutive seeds from --seed, stopping at the first failure.
    #[arg(long, default_value_t = 1)]
    runs: u64,
}

/// `--long` multiplies the steps by this.
const LONG_FACTOR: u32 = 10;
/// Runs in one invocation at most.
const RUNS_MAX: u64 = 100_000;

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if args.runs == 0 || args.runs > RUNS_MAX {
        anyhow::bail!("--runs must be 1 to {RUNS_MAX}, got {}", args.runs);
    }
    let steps = if args.long {
        args.steps.saturating_mul(LONG_FACTOR)
    } else {
        args.steps
    };
    for seed in args.seed..args.seed.saturating_add(args.runs) {
        let config = ChaosConfig {
            nodes: args.nodes,
            seed,
            steps,
        };
        let progress_every = (steps / 10).max(1);
        let result = chaos::run_observed(&config, |step, summary| {
            if step % progress_every == 0 {
                eprintln!(
                    "seed {seed}: step {step}/{steps}: {} placements, {} stops, {} kills so far",
                    summary.placements, summary.stops, summary.kills
                );
            }
        });
        match result {
            Ok(summary) => println!("{summary}"),
            Err(violation) => {
                println!("{violation}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

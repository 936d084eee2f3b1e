//! `shoal-sim`: the seeded chaos simulation and the scheduling benchmark.
//! The simulation itself is in the library; this binary parses flags,
//! prints, and adds what a pure core may not read: the wall clock and the
//! process's peak memory.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shoal-sim",
    about = "Simulate a shoal cluster: chaos runs and the scheduling benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Nodes fail and come back, apps come and go; invariants are checked every step.
    Chaos(commands::chaos::Args),
    /// Place many tasks on many nodes and print the throughput as JSON.
    Sched(commands::sched::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Chaos(args) => commands::chaos::run(&args),
        Commands::Sched(args) => commands::sched::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

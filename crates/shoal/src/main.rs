//! `shoal`: every node runs this one binary; the same binary is the CLI.

mod cli;
mod clock;
mod commands;
mod config;
mod node;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Run by containerd's shim for every container: no async runtime, no
    // threads beyond the copy.
    if let cli::Command::LogWriter { path } = &cli.command {
        return match shoal_runtime::logwriter::run(path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("shoal log-writer: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

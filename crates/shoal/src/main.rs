//! `shoal`: every node runs this one binary; the same binary is the CLI.

/// The CLI's `println!`, in every module below: when the reader of its
/// output goes away (`shoal ps | head -1`), the process ends quietly with
/// success, as Unix tools do, where std's would panic (Rust ignores
/// SIGPIPE, which a node needs: a peer that goes must not end it).
macro_rules! println {
    () => {
        $crate::stdout_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::stdout_line(format_args!($($arg)*))
    };
}

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

/// Writes one line to stdout for [`println!`]; a closed pipe ends the
/// process (the reader has what it wanted), another error ends it with a
/// message.
fn stdout_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let written = writeln!(std::io::stdout().lock(), "{args}");
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("error: writing to stdout: {error}");
            std::process::exit(1);
        }
    }
}

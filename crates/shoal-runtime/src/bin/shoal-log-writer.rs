//! The logging binary for containerd's shim, on its own, for the runtime's
//! tests (the `shoal` binary serves the same as `shoal log-writer PATH`).

use std::process::ExitCode;

fn main() -> ExitCode {
    // The shim runs `BINARY log-writer PATH`.
    let Some(path) = std::env::args_os().nth(2) else {
        eprintln!("usage: shoal-log-writer log-writer PATH (run by containerd's shim)");
        return ExitCode::from(2);
    };
    match shoal_runtime::logwriter::run(std::path::Path::new(&path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shoal-log-writer: {error}");
            ExitCode::FAILURE
        }
    }
}

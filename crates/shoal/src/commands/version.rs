use std::process::ExitCode;

pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SHOAL_GIT_COMMIT"),
    ")"
);

pub fn run() -> anyhow::Result<ExitCode> {
    println!("shoal {LONG}");
    Ok(ExitCode::SUCCESS)
}

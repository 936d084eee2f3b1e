//! Apps: apply, plan, list, inspect, tasks, logs, remove.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{parse_duration, Output, Target};

#[derive(Args)]
pub struct ApplyArgs {
    /// The app spec, YAML or JSON (`-` reads standard input).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Return once the spec is accepted, without following the rollout.
    #[arg(long)]
    pub detach: bool,
    /// Give up following after this long (e.g. 90s, 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct PlanArgs {
    /// The app spec, YAML or JSON (`-` reads standard input).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Subcommand)]
pub enum AppCommand {
    /// Show an app's spec, services and tasks.
    Inspect {
        name: String,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args)]
pub struct PsArgs {
    /// Only tasks of this app.
    pub app: Option<String>,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct LogsArgs {
    /// A task id (APP.SERVICE.SLOT.SERIAL) or APP.SERVICE for all its tasks.
    pub target: String,
    /// Keep printing new output.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines of each task.
    #[arg(long)]
    pub tail: Option<usize>,
    #[command(flatten)]
    pub node: Target,
}

#[derive(Args)]
pub struct RmArgs {
    pub app: String,
    /// Return once removal is accepted, without waiting for containers to stop.
    #[arg(long)]
    pub detach: bool,
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub target: Target,
}

use std::process::ExitCode;

use shoal_api::wire::{TaskView, UnplacedView};

use crate::cli::PsArgs;
use crate::output::{print_list, since};

pub async fn run(args: PsArgs) -> anyhow::Result<ExitCode> {
    let client = super::client(&args.target)?;
    if let Some(app) = &args.app {
        // A typo'd app name is an error, not an empty list.
        client.app(app, false).await?;
    }
    let tasks = client.tasks(args.app.as_deref()).await?;
    let mut rows: Vec<Vec<String>> = tasks.iter().map(row).collect();
    // Tasks that fit nowhere have no task id yet: one row per service, with why.
    if args.output.format == crate::cli::Format::Table {
        let apps = match &args.app {
            Some(app) => vec![client.app(app, false).await?],
            None => client.apps(false).await?,
        };
        for app in &apps {
            rows.extend(app.unplaced.iter().map(unplaced_row));
        }
    }
    print_list(args.output.format, &tasks, HEADER, rows)?;
    Ok(ExitCode::SUCCESS)
}

pub const HEADER: &[&str] = &[
    "TASK", "NODE", "ADDRESS", "STATE", "HEALTH", "PROMISE", "RESTARTS", "AGE", "MESSAGE",
];

/// One line for `app inspect` and `plan`: `APP.SERVICE: N task(s): REASON`.
pub fn unplaced_line(unplaced: &UnplacedView) -> String {
    format!(
        "{}.{}: {} task(s): {}",
        unplaced.app, unplaced.service, unplaced.count, unplaced.reason
    )
}

pub fn unplaced_row(unplaced: &UnplacedView) -> Vec<String> {
    vec![
        format!("{}.{} ×{}", unplaced.app, unplaced.service, unplaced.count),
        "-".into(),
        "-".into(),
        "pending".into(),
        "-".into(),
        "pending".into(),
        "0".into(),
        "-".into(),
        format!("not placed: {}", unplaced.reason),
    ]
}

pub fn row(task: &TaskView) -> Vec<String> {
    let state = match (task.state, task.desired) {
        (state, shoal_types::DesiredState::Stopped) if !state.is_terminal() => {
            format!("{} → stopped", state.as_str())
        }
        (state, _) => state.as_str().to_string(),
    };
    vec![
        task.id.clone(),
        task.node.clone(),
        task.address
            .map_or("-".into(), |address| address.to_string()),
        state,
        if task.health == "none" {
            "-".into()
        } else {
            task.health.clone()
        },
        format!("{:?}", task.promise).to_lowercase(),
        task.restarts.to_string(),
        since(task.started_at_ms.unwrap_or(task.created_at_ms)),
        task.message.clone(),
    ]
}

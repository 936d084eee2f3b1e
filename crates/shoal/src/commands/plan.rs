//! `shoal plan -f FILE`: what an apply would do, changing nothing.

use std::process::ExitCode;

use crate::cli::{Format, PlanArgs};
use crate::output::{print_json, table};

pub async fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let body = super::apply::read_spec(&args.file)?;
    let plan = super::client(&args.target)?.plan(body).await?;
    if args.output.format == Format::Json {
        print_json(&plan)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !plan.changed {
        println!("app {} is unchanged (version {})", plan.app, plan.version);
    } else {
        println!("app {} would become version {}", plan.app, plan.version);
    }
    for (service, pin) in &plan.images {
        let source = match pin.source {
            shoal_types::PinSource::Registry => "from its registry",
            shoal_types::PinSource::Node => "imported on the node",
        };
        println!("  {}.{service} runs {} ({source})", plan.app, pin.digest);
    }
    if plan.place.is_empty() && plan.stop.is_empty() && plan.unplaced.is_empty() {
        println!("nothing to place or stop");
        return Ok(ExitCode::SUCCESS);
    }
    if !plan.place.is_empty() {
        println!("Place {} task(s):", plan.place.len());
        let rows = plan
            .place
            .iter()
            .map(|task| {
                vec![
                    format!("{}.{}", plan.app, task.service),
                    task.slot.to_string(),
                    task.node.clone(),
                ]
            })
            .collect();
        for line in table(&["SERVICE", "SLOT", "NODE"], rows).lines() {
            println!("  {line}");
        }
    }
    if !plan.stop.is_empty() {
        println!("Stop {} task(s):", plan.stop.len());
        let rows = plan
            .stop
            .iter()
            .map(|stop| vec![stop.task.clone(), stop.node.clone(), stop.reason.clone()])
            .collect();
        for line in table(&["TASK", "NODE", "WHY"], rows).lines() {
            println!("  {line}");
        }
    }
    if !plan.unplaced.is_empty() {
        println!("Cannot place:");
        for unplaced in &plan.unplaced {
            println!("  {}", super::ps::unplaced_line(unplaced));
        }
    }
    Ok(ExitCode::SUCCESS)
}

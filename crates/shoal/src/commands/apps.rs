use std::process::ExitCode;

use crate::cli::{Format, ListArgs, Output, Target};
use crate::output::{print_json, print_list, since, table};

pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let apps = super::client(&args.target)?.apps().await?;
    let rows = apps
        .iter()
        .map(|app| {
            let running: u32 = app.services.iter().map(|s| s.running).sum();
            let replicas: u32 = app.services.iter().map(|s| s.replicas).sum();
            vec![
                app.name.clone(),
                app.services.len().to_string(),
                format!("{running}/{replicas}"),
                app.version.to_string(),
                since(app.updated_at_ms),
            ]
        })
        .collect();
    print_list(
        args.output.format,
        &apps,
        &["NAME", "SERVICES", "RUNNING", "VERSION", "UPDATED"],
        rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

pub async fn inspect(name: String, output: Output, target: Target) -> anyhow::Result<ExitCode> {
    let client = super::client(&target)?;
    let app = client.app(&name).await?;
    if output.format == Format::Json {
        print_json(&app)?;
        return Ok(ExitCode::SUCCESS);
    }
    let tasks = client.tasks(Some(&name)).await?;
    println!("Name:     {}", app.name);
    println!("Version:  {}", app.version);
    println!("Created:  {} ago", since(app.created_at_ms));
    println!("Updated:  {} ago", since(app.updated_at_ms));
    if !app.spec.labels.is_empty() {
        println!("Labels:");
        for (key, value) in &app.spec.labels {
            println!("  {key}={value}");
        }
    }
    println!("Services:");
    let services = app
        .services
        .iter()
        .map(|service| {
            let progress = match service.kind {
                shoal_types::Kind::Batch => format!(
                    "{} running, {} completed, {} failed of {}",
                    service.running, service.completed, service.failed, service.replicas
                ),
                _ => format!("{}/{}", service.running, service.replicas),
            };
            // The digest every replica runs (short, as `shoal images` shows it).
            let digest = service
                .image_digest
                .as_deref()
                .map(|digest| digest.chars().take(19).collect())
                .unwrap_or_default();
            vec![
                format!("{}.{}", app.name, service.name),
                format!("{:?}", service.kind).to_lowercase(),
                service.image.clone(),
                digest,
                progress,
            ]
        })
        .collect();
    for line in table(&["NAME", "KIND", "IMAGE", "DIGEST", "RUNNING"], services).lines() {
        println!("  {line}");
    }
    if !app.unplaced.is_empty() {
        println!("Not placed:");
        for unplaced in &app.unplaced {
            println!("  {}", super::ps::unplaced_line(unplaced));
        }
    }
    println!("Tasks:");
    let mut rows: Vec<Vec<String>> = tasks.iter().map(super::ps::row).collect();
    rows.extend(app.unplaced.iter().map(super::ps::unplaced_row));
    for line in table(super::ps::HEADER, rows).lines() {
        println!("  {line}");
    }
    Ok(ExitCode::SUCCESS)
}

use std::process::ExitCode;

use crate::cli::{Format, ListArgs, Output, Target};
use crate::output::{print_json, print_list, since, table};

pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let apps = super::client(&args.target)?.apps(true).await?;
    let rows = apps
        .iter()
        .map(|app| {
            let running: u32 = app.services.iter().map(|s| s.running).sum();
            let replicas: u32 = app.services.iter().map(|s| s.replicas).sum();
            vec![
                app.name.clone(),
                app.services.len().to_string(),
                format!("{running}/{replicas}"),
                protected(app),
                app.version.to_string(),
                since(app.updated_at_ms),
            ]
        })
        .collect();
    print_list(
        args.output.format,
        &apps,
        &[
            "NAME",
            "SERVICES",
            "RUNNING",
            "PROTECTED",
            "VERSION",
            "UPDATED",
        ],
        rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Whether the images of an app's services are held ahead where their
/// `prepull` says: `yes`, `no` (the services that are not), or `-` when
/// no service has its image pulled ahead (all imported by hand, say).
fn protected(app: &shoal_api::wire::AppView) -> String {
    let views: Vec<(&str, &shoal_api::wire::PrepullView)> = app
        .services
        .iter()
        .filter_map(|s| Some((s.name.as_str(), s.prepull.as_ref()?)))
        .filter(|(_, view)| view.mode != shoal_types::Prepull::None)
        .collect();
    if views.is_empty() {
        return "-".into();
    }
    let not: Vec<&str> = views
        .iter()
        .filter(|(_, view)| !view.protected)
        .map(|(name, _)| *name)
        .collect();
    if not.is_empty() {
        "yes".into()
    } else {
        format!("no ({})", not.join(", "))
    }
}

/// A service's `prepull` in a few words: its mode, and whether its
/// nodes hold the image.
fn prepull_words(view: &shoal_api::wire::PrepullView) -> String {
    let holding: Vec<&str> = view
        .nodes
        .iter()
        .filter(|n| n.holds == Some(true))
        .map(|n| n.node.as_str())
        .collect();
    match (view.mode, view.protected) {
        (shoal_types::Prepull::None, _) => "none".into(),
        (mode, true) if holding.is_empty() => format!("{}: protected", mode.as_str()),
        (mode, true) => format!("{}: protected ({})", mode.as_str(), holding.join(", ")),
        (mode, false) => format!("{}: not protected", mode.as_str()),
    }
}

pub async fn inspect(name: String, output: Output, target: Target) -> anyhow::Result<ExitCode> {
    let client = super::client(&target)?;
    let app = client.app(&name, true).await?;
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
                service
                    .prepull
                    .as_ref()
                    .map(prepull_words)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    for line in table(
        &["NAME", "KIND", "IMAGE", "DIGEST", "RUNNING", "PREPULL"],
        services,
    )
    .lines()
    {
        println!("  {line}");
    }
    // Why a service whose image should be held ahead is not.
    for service in &app.services {
        let Some(view) = &service.prepull else {
            continue;
        };
        if view.mode == shoal_types::Prepull::None || view.protected {
            continue;
        }
        if let Some(reason) = &view.reason {
            println!("  {}.{} is not protected: {reason}", app.name, service.name);
        }
        for node in view.nodes.iter().filter(|n| n.holds.is_none()) {
            if let Some(error) = &node.error {
                println!("    {}: {error}", node.node);
            }
        }
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

//! `shoal cluster info|set|ca`: the cluster's identity, voters, log
//! format, settings and CA.

use std::process::ExitCode;

use shoal_api::wire::{CaView, ClusterInfo};

use crate::cli::{CaCommand, ClusterCommand, Format};
use crate::output::{print_json, print_list};

/// How often `shoal cluster ca rotate` looks at how far the rotation is.
const ROTATION_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// `shoal cluster info|set|ca`.
pub async fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Token { command } => super::tokens::join(command).await,
        ClusterCommand::Ca { command } => ca(command).await,
        ClusterCommand::Info { output, target } => {
            show(super::client(&target)?.cluster().await?, output.format)
        }
        ClusterCommand::Set {
            voters_max,
            cluster_cidr,
            node_prefix_len,
            dns_zone,
            output,
            target,
        } => {
            if voters_max.is_none()
                && cluster_cidr.is_none()
                && node_prefix_len.is_none()
                && dns_zone.is_none()
            {
                anyhow::bail!(
                    "nothing to set: give --voters-max N, --cluster-cidr CIDR, --node-prefix-len N or --dns-zone ZONE"
                );
            }
            let settings = shoal_api::wire::ClusterSettings {
                voters_max,
                cluster_cidr,
                node_prefix_len,
                dns_zone,
            };
            show(
                super::client(&target)?.set_settings(&settings).await?,
                output.format,
            )
        }
    }
}

pub fn show(info: ClusterInfo, format: Format) -> anyhow::Result<ExitCode> {
    if format == Format::Json {
        print_json(&info)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("Cluster:     {}", info.cluster_id);
    println!(
        "Leader:      {}",
        info.leader.as_deref().unwrap_or("none (no quorum?)")
    );
    println!("Voters:      {}", info.voters.join(", "));
    println!(
        "Learners:    {}",
        if info.learners.is_empty() {
            "-".to_string()
        } else {
            info.learners.join(", ")
        }
    );
    let settings = &info.settings;
    println!(
        "Settings:    voters_max={} cluster_cidr={} node_prefix_len={} dns_zone={}",
        settings
            .voters_max
            .map_or("-".to_string(), |n| n.to_string()),
        settings.cluster_cidr.as_deref().unwrap_or("-"),
        settings
            .node_prefix_len
            .map_or("-".to_string(), |n| n.to_string()),
        settings.dns_zone.as_deref().unwrap_or("-")
    );
    println!(
        "Log format:  {} (the newest every voter and learner reads)",
        info.log_version.max(1)
    );
    println!(
        "Answered by: {} (gossip {}, shoal {})",
        info.name,
        info.gossip_addr,
        if info.release.is_empty() {
            "0.1"
        } else {
            &info.release
        }
    );
    if let Some(gossip) = &info.gossip {
        println!(
            "Gossip:      {}, identities {} (keyring generation {}, keys {}), {} sent ({} sealed), {} received ({} sealed)",
            gossip.mode,
            // A node of a release before 0.12 proves none.
            if gossip.identities.is_empty() {
                "unproven"
            } else {
                &gossip.identities
            },
            gossip.keyring_generation,
            if gossip.key_ids.is_empty() {
                "none".to_string()
            } else {
                gossip
                    .key_ids
                    .iter()
                    .map(|id| {
                        if Some(*id) == gossip.primary_key {
                            format!("{id} (sealing)")
                        } else {
                            id.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            gossip.datagrams_sent,
            gossip.sealed_sent,
            gossip.datagrams_received,
            gossip.sealed_received
        );
        let dropped: Vec<String> = gossip
            .dropped
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        println!(
            "Dropped:     {}",
            if dropped.is_empty() {
                "none".to_string()
            } else {
                dropped.join(", ")
            }
        );
        println!(
            "Facts keys:  {} node(s) speak for themselves only (their facts signed)",
            gossip.facts_keys
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn ca(command: CaCommand) -> anyhow::Result<ExitCode> {
    match command {
        CaCommand::Info { output, target } => {
            show_ca(&super::client(&target)?.ca().await?, output.format)
        }
        CaCommand::Rotate {
            no_wait,
            timeout,
            output,
            target,
        } => {
            let credential =
                crate::config::credential(target.config.as_deref(), target.addr.as_deref())?;
            let client = super::client(&target)?;
            let started = client.rotate_ca().await?;
            if output.format == Format::Table {
                println!(
                    "rotation started: nodes trust {} beside the old root and renew onto it",
                    started.signer.subject
                );
            }
            if no_wait {
                return show_ca(&started, output.format);
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let mut last_behind = Vec::new();
            let mut behind = Vec::new();
            let ended = loop {
                // A moment without an answer (a leader election) is waited out.
                match client.ca().await {
                    Ok(view) if view.generation > started.generation && !view.rotating => {
                        break view
                    }
                    Ok(view) => {
                        behind = view
                            .nodes
                            .iter()
                            .filter(|node| node.generation < started.generation)
                            .map(|node| node.name.clone())
                            .collect();
                    }
                    Err(error) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(%error, "asking how far the rotation is");
                    }
                    Err(error) => return Err(error.into()),
                }
                if behind != last_behind && output.format == Format::Table {
                    println!(
                        "waiting for {} node(s) to renew: {}",
                        behind.len(),
                        behind.join(", ")
                    );
                    last_behind = behind.clone();
                }
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "the rotation has not ended after {}: {} node(s) still renew onto the new root ({}); it goes on by itself, see `shoal cluster ca info` (a node that is gone for good: `shoal node rm NAME`)",
                        humantime::format_duration(timeout),
                        behind.len(),
                        behind.join(", ")
                    );
                }
                tokio::time::sleep(ROTATION_POLL).await;
            };
            // This CLI's credential trusts the roots of now, read over a
            // connection its old roots verified.
            let roots = client.join_ca().await?;
            let trusted =
                crate::config::replace_ca(target.config.as_deref(), &credential.ca_pem, &roots);
            if output.format == Format::Table {
                println!(
                    "rotation ended: every node holds a certificate of the new root, the old one is trusted no more"
                );
            }
            match trusted {
                Ok(path) if output.format == Format::Table => {
                    println!("{} trusts the new root", path.display())
                }
                Ok(_) => {}
                // The rotation itself went through.
                Err(error) => eprintln!("warning: {error:#}"),
            }
            show_ca(&ended, output.format)
        }
    }
}

fn show_ca(view: &CaView, format: Format) -> anyhow::Result<ExitCode> {
    if format == Format::Json {
        print_json(view)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Generation:  {}{}",
        view.generation,
        if view.rotating { " (rotating)" } else { "" }
    );
    for root in &view.roots {
        println!("Root:        {} sha256:{}", root.subject, root.sha256);
    }
    println!("Signer:      {}", view.signer.subject);
    let rows = view
        .nodes
        .iter()
        .map(|node| {
            vec![
                node.name.clone(),
                node.generation.to_string(),
                if node.generation >= view.generation {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
            ]
        })
        .collect();
    println!();
    print_list(
        format,
        &view.nodes,
        &["NODE", "GENERATION", "CURRENT"],
        rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

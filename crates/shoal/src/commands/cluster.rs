//! `shoal cluster info|set`: the cluster's identity, voters, log format and settings.

use std::process::ExitCode;

use shoal_api::wire::ClusterInfo;

use crate::cli::{ClusterCommand, Format};
use crate::output::print_json;

/// `shoal cluster info|set`.
pub async fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Token { command } => super::tokens::join(command).await,
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
            "Gossip:      {} (keyring generation {}, keys {}), {} sent ({} sealed), {} received ({} sealed)",
            gossip.mode,
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

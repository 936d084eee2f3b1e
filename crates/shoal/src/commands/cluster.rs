use std::process::ExitCode;

use shoal_api::wire::ClusterInfo;

use crate::cli::Format;
use crate::output::print_json;

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
    Ok(ExitCode::SUCCESS)
}

use std::process::ExitCode;

use crate::cli::ListArgs;
use crate::output::{age, bytes, print_list};

pub async fn run(args: ListArgs) -> anyhow::Result<ExitCode> {
    let nodes = super::client(&args.target)?.nodes().await?;
    let rows = nodes
        .iter()
        .map(|node| {
            vec![
                node.name.clone(),
                node.addr.clone(),
                node.os.clone(),
                age(node.uptime_s),
                node.cpus.to_string(),
                format!(
                    "{} / {}",
                    bytes(node.memory_used_bytes),
                    bytes(node.memory_total_bytes)
                ),
                node.status.as_str().to_string(),
                if node.leader {
                    format!("{} (leader)", node.role)
                } else {
                    node.role.clone()
                },
            ]
        })
        .collect();
    print_list(
        args.output.format,
        &nodes,
        &[
            "NAME",
            "ADDR",
            "OS",
            "UPTIME",
            "CPUS",
            "MEMORY (USED)",
            "STATUS",
            "ROLE",
        ],
        rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

use std::process::ExitCode;

use crate::cli::{ListArgs, NodeCommand};
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
                {
                    let mut status = node.status.as_str().to_string();
                    if node.drain {
                        status.push_str(", drained");
                    }
                    if !node.allows.is_empty() {
                        status.push_str(&format!(", allows {}", node.allows.join(" ")));
                    }
                    if !node.taints.is_empty() {
                        status.push_str(&format!(", tainted {}", node.taints.join(" ")));
                    }
                    status
                },
                node.tasks.to_string(),
                release(node),
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
            "TASKS",
            "VERSION",
            "ROLE",
        ],
        rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `shoal node leave`: the answering node leaves the cluster.
pub async fn leave(target: crate::cli::Target) -> anyhow::Result<ExitCode> {
    super::client(&target)?.leave().await?;
    println!("the node is leaving: its work moves to other nodes, then it stops");
    Ok(ExitCode::SUCCESS)
}

/// The node's release; a live node that gossips none runs shoal 0.1.
fn release(node: &shoal_api::wire::NodeView) -> String {
    match (node.release.as_str(), node.status) {
        ("", shoal_types::NodeStatus::Alive | shoal_types::NodeStatus::Suspect) => "0.1".into(),
        ("", _) => "-".into(),
        (release, _) => release.to_string(),
    }
}

/// `shoal node taint|untaint|drain|undrain`: one replicated change each.
pub async fn change(command: NodeCommand) -> anyhow::Result<ExitCode> {
    let (update, done) = match command {
        NodeCommand::Taint {
            name,
            taint,
            target,
        } => {
            // Checked here too, so a typo never reaches the cluster.
            taint
                .parse::<shoal_types::Taint>()
                .map_err(|message| anyhow::anyhow!("TAINT: {message}"))?;
            let update = super::client(&target)?.taint_node(&name, &taint).await?;
            (update, format!("node {name} tainted {taint}"))
        }
        NodeCommand::Untaint {
            name,
            taint,
            target,
        } => {
            let (key, effect) = match taint.split_once(':') {
                Some((key, effect)) => (key, Some(effect)),
                None => (taint.as_str(), None),
            };
            let update = super::client(&target)?
                .untaint_node(&name, key, effect)
                .await?;
            (update, format!("node {name} untainted {taint}"))
        }
        NodeCommand::Drain { name, target } => {
            let update = super::client(&target)?.drain_node(&name, true).await?;
            (
                update,
                format!("node {name} drained: its work moves to other nodes"),
            )
        }
        NodeCommand::Undrain { name, target } => {
            let update = super::client(&target)?.drain_node(&name, false).await?;
            (update, format!("node {name} takes work again"))
        }
        NodeCommand::Leave { .. } | NodeCommand::Rm { .. } => {
            anyhow::bail!("`shoal node leave|rm` are not changes of a node's record")
        }
    };
    if update.changed {
        println!("{done}");
    } else {
        println!("{done} (it already was)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `shoal node rm NAME`: the node's identity is refused from now on.
pub async fn remove(name: String, target: crate::cli::Target) -> anyhow::Result<ExitCode> {
    super::client(&target)?.remove_node(&name).await?;
    println!(
        "node {name} removed: no node accepts its certificate any more; its work moves elsewhere"
    );
    Ok(ExitCode::SUCCESS)
}

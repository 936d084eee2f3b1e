//! One module per subcommand; `run` dispatches.

pub mod agent;
pub mod apply;
pub mod apps;
pub mod cluster;
pub mod images;
pub mod logs;
pub mod nodes;
pub mod plan;
pub mod ps;
pub mod rm;
pub mod version;

use std::process::ExitCode;

use crate::cli::{AppCommand, Cli, ClusterCommand, Command, DnsCommand, ImageCommand, NodeCommand};

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Version => version::run(),
        Command::LogWriter { .. } => anyhow::bail!("log-writer runs before the async runtime"),
        Command::Agent(args) => agent::run_agent(args).await,
        Command::Dev(args) => agent::run_dev(args).await,
        Command::Apply(args) => apply::run(args).await,
        Command::Apps(args) => apps::list(args).await,
        Command::App {
            command:
                AppCommand::Inspect {
                    name,
                    output,
                    target,
                },
        } => apps::inspect(name, output, target).await,
        Command::Ps(args) => ps::run(args).await,
        Command::Logs(args) => logs::run(args).await,
        Command::Rm(args) => rm::run(args).await,
        Command::Plan(args) => plan::run(args).await,
        Command::Nodes(args) => nodes::run(args).await,
        Command::Images(args) => images::list(args).await,
        Command::Dns {
            command: DnsCommand::List(args),
        } => {
            let records = client(&args.target)?.dns_records().await?;
            let rows = records
                .iter()
                .map(|r| vec![r.name.clone(), r.record_type.clone(), r.value.clone()])
                .collect();
            crate::output::print_list(
                args.output.format,
                &records,
                &["NAME", "TYPE", "VALUE"],
                rows,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image {
            command: ImageCommand::Import(args),
        } => images::import(args).await,
        Command::Cluster {
            command: ClusterCommand::Info { output, target },
        } => cluster::show(client(&target)?.cluster().await?, output.format),
        Command::Cluster {
            command:
                ClusterCommand::Set {
                    voters_max,
                    cluster_cidr,
                    node_prefix_len,
                    dns_zone,
                    output,
                    target,
                },
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
            cluster::show(
                client(&target)?.set_settings(&settings).await?,
                output.format,
            )
        }
        Command::Node {
            command: NodeCommand::Leave { target },
        } => {
            client(&target)?.leave().await?;
            println!("the node is leaving: its work moves to other nodes, then it stops");
            Ok(ExitCode::SUCCESS)
        }
        Command::Node { command } => nodes::change(command).await,
    }
}

pub fn client(target: &crate::cli::Target) -> anyhow::Result<shoal_api::client::Client> {
    Ok(shoal_api::client::Client::new(&target.addr)?)
}

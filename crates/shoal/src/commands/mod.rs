//! One module per subcommand; `run` dispatches.

pub mod agent;
pub mod apply;
pub mod apps;
pub mod cluster;
pub mod dns;
pub mod files;
pub mod images;
pub mod logs;
pub mod nodes;
pub mod plan;
pub mod ps;
pub mod registries;
pub mod rm;
pub mod tokens;
pub mod version;

use std::process::ExitCode;

use crate::cli::{AppCommand, Cli, Command, DnsCommand, ImageCommand, NodeCommand};

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
        } => dns::list(args).await,
        Command::Image {
            command: ImageCommand::Import(args),
        } => images::import(args).await,
        Command::Image {
            command: ImageCommand::Pull(args),
        } => images::pull(args).await,
        Command::Image {
            command: ImageCommand::Pack(args),
        } => images::pack(args).await,
        Command::Image {
            command: ImageCommand::Rm(args),
        } => images::remove(args).await,
        Command::Cluster { command } => cluster::run(command).await,
        Command::Node {
            command: NodeCommand::Leave { target },
        } => nodes::leave(target).await,
        Command::Node {
            command: NodeCommand::Rm { name, target },
        } => nodes::remove(name, target).await,
        Command::Node { command } => nodes::change(command).await,
        Command::Token { command } => tokens::api(command).await,
        Command::Registry { command } => registries::run(command).await,
        Command::Secret { command } => files::run(shoal_types::FileKind::Secret, command).await,
        Command::Config { command } => files::run(shoal_types::FileKind::Config, command).await,
        Command::Context { command } => tokens::context(command),
    }
}

pub fn client(target: &crate::cli::Target) -> anyhow::Result<shoal_api::client::Client> {
    let credential = crate::config::credential(target.config.as_deref(), target.addr.as_deref())?;
    Ok(shoal_api::client::Client::from_credential(
        &credential,
        None,
    )?)
}

//! The command line: one subcommand per job.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod admin;
mod apps;
mod images;
mod node_args;

pub use admin::*;
pub use apps::*;
pub use images::*;
pub use node_args::*;

#[derive(Parser)]
#[command(name = "shoal", about = "A masterless container orchestrator", version = crate::commands::version::LONG)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Target {
    /// Address of any shoal node's API (default: the credential's).
    #[arg(long, env = "SHOAL_ADDR", global = true)]
    pub addr: Option<String>,
    /// The CLI's credentials: a config of contexts, or a node's admin.json
    /// (default $HOME/.config/shoal/config.json).
    #[arg(long, env = "SHOAL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Clone)]
pub struct Output {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print the version and git commit of this binary.
    Version,
    /// Run a node of a cluster in the foreground.
    Agent(AgentArgs),
    /// Run a one-node cluster on this machine in the foreground, for trying shoal out.
    Dev(DevArgs),
    /// Create or update an app from a spec file, and follow it until it runs.
    Apply(ApplyArgs),
    /// List apps.
    Apps(ListArgs),
    /// Look at one app.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// List tasks, of every app or of one.
    Ps(PsArgs),
    /// Print the output of a task or of every task of a service.
    Logs(LogsArgs),
    /// Remove an app and stop its containers.
    Rm(RmArgs),
    /// Show what applying a spec would do (where tasks go, what stops, what
    /// cannot be placed and why), without changing anything.
    Plan(PlanArgs),
    /// List the cluster's nodes.
    Nodes(ListArgs),
    /// List the images on the node, or on the nodes named (`--node`,
    /// `--all-nodes`).
    Images(ImagesArgs),
    /// Manage images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// The cluster's DNS: the names of services and their tasks.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// Look at or change the cluster as a whole.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Run by containerd's shim beside each container: appends its stdout
    /// (fd 3) and stderr (fd 4) to PATH.
    #[command(hide = true)]
    LogWriter { path: PathBuf },
    /// Act on the node you talk to.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// API tokens: create, list, revoke.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Registry settings: how nodes reach a registry and who they are there.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Secrets: values services get as files in memory, sealed in the
    /// cluster's state and never shown again.
    Secret {
        #[command(subcommand)]
        command: FileCommand,
    },
    /// Configs: values services get as read-only files.
    Config {
        #[command(subcommand)]
        command: FileCommand,
    },
    /// The CLI's contexts: which cluster and credential it uses.
    Context {
        #[command(subcommand)]
        command: ContextCommand,
    },
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

fn parse_cpu(text: &str) -> Result<u64, String> {
    shoal_types::parse_cpu_millis(text)
}

fn parse_memory(text: &str) -> Result<u64, String> {
    shoal_types::parse_memory_bytes(text)
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("`{text}` is not a duration ({error}); write e.g. 90s or 5m"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    #[test]
    fn the_agents_defaults_are_the_named_ones() {
        let cli = Cli::try_parse_from(["shoal", "agent", "--name", "n1"]).expect("parses");
        let Command::Agent(args) = cli.command else {
            panic!("not the agent");
        };
        assert_eq!(
            args.forget_dead_after,
            shoal_cluster::membership::DEFAULT_FORGET_DEAD_AFTER
        );
        assert_eq!(
            args.gossip_port,
            shoal_cluster::membership::DEFAULT_GOSSIP_PORT
        );
    }
}

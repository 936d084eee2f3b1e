//! The cluster's administration: DNS, the cluster and its CA, nodes, API
//! and join tokens, secrets and configs, registries, contexts.

use std::path::PathBuf;

use clap::Subcommand;

use super::{parse_duration, ListArgs, Output, Target};

#[derive(Subcommand)]
pub enum DnsCommand {
    /// The records every node's DNS server answers: SERVICE.APP.ZONE and
    /// SLOT-SERIAL.SERVICE.APP.ZONE (A) of running tasks, SRV of named ports.
    List(ListArgs),
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The cluster's id, leader, voters, learners and settings.
    Info {
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// Join tokens, for nodes to join with.
    Token {
        #[command(subcommand)]
        command: JoinTokenCommand,
    },
    /// The cluster's CA: its roots, and moving to a new one.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Change cluster-wide settings.
    Set {
        /// Voters the cluster aims for: 1, 3, 5 or 7 (default 5).
        #[arg(long)]
        voters_max: Option<u32>,
        /// Where tasks' addresses come from (default 10.42.0.0/16); only
        /// before nodes hold subnets.
        #[arg(long)]
        cluster_cidr: Option<String>,
        /// Prefix length of each node's subnet (default 24).
        #[arg(long)]
        node_prefix_len: Option<u8>,
        /// The DNS zone of service names, SERVICE.APP.ZONE (default shoal).
        #[arg(long)]
        dns_zone: Option<String>,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// The roots every node trusts, the CA that signs, and the generation
    /// of the CA each node has taken (how far a rotation is).
    Info {
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// Move the cluster to a new root, cross-signed by the current one:
    /// every node trusts both and renews onto the new one, then the old
    /// one is trusted no more. No node joins again and no request fails;
    /// join tokens made before it work until it ends. Waits until it has
    /// ended, then this CLI's credential trusts the new root.
    Rotate {
        /// Return once the rotation has started.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long (the rotation goes on).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// The node leaves the cluster: its work moves to other nodes, then it stops.
    Leave {
        #[command(flatten)]
        target: Target,
    },
    /// Taint a node: KEY=VALUE:EFFECT or KEY:EFFECT, EFFECT one of NoSchedule,
    /// PreferNoSchedule, NoExecute (which also moves away work that does
    /// not tolerate it).
    Taint {
        /// The node's name (see `shoal nodes`).
        name: String,
        /// e.g. `gpu=true:NoSchedule`
        taint: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a node's taints: KEY (every effect) or KEY:EFFECT.
    Untaint {
        name: String,
        /// e.g. `gpu` or `gpu:NoSchedule`
        taint: String,
        #[command(flatten)]
        target: Target,
    },
    /// Move a node's work away and keep new work off it.
    Drain {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Let a drained node take work again.
    Undrain {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a node for good: every node refuses its certificate from
    /// now on, and its work is placed elsewhere. It may join again only
    /// with a new join token.
    Rm {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make an API token; its secret is printed once and kept nowhere.
    Create {
        /// What it is for, e.g. `ci`.
        #[arg(long)]
        name: String,
        /// admin (everything), deployer (apps and images) or reader.
        #[arg(long, value_parser = ["admin", "deployer", "reader"])]
        role: String,
        /// How long it lasts, e.g. 30d (default: until removed).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// The API tokens (never their secrets).
    Ls(ListArgs),
    /// Revoke an API token: every node refuses it from now on.
    Rm {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum FileCommand {
    /// Create one from a file, or from stdin with `-f -`.
    Create {
        /// 1 to 64 letters, digits, `-`, `_` and `.`; the file's name in
        /// the container by default.
        name: String,
        /// The value: a file of at most 256 KiB, or `-` for stdin.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// Give one a new value, its next version.
    Update {
        name: String,
        /// The value: a file of at most 256 KiB, or `-` for stdin.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// List them: name, version, size, the services that use them.
    Ls(ListArgs),
    /// Remove one no service lists.
    Rm {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Set how to reach HOST[:PORT] (replacing what was set): plain HTTP
    /// with --insecure, a CA of its own, credentials (the password a
    /// secret of `shoal secret create`, or read from stdin and sealed with
    /// the cluster's data key; never shown again).
    Add {
        /// `HOST[:PORT]` as image references name it, e.g. `registry.example:5000`.
        host: String,
        /// Allow plain HTTP (loopback registries without settings get it anyway).
        #[arg(long)]
        insecure: bool,
        /// A CA certificate (PEM) to trust for this registry.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        #[arg(long, requires = "password")]
        username: Option<String>,
        /// The secret whose value is the password (one line ending at its
        /// end is dropped): a new version of it is used from then on.
        #[arg(long, value_name = "SECRET", group = "password", requires = "username")]
        password_secret: Option<String>,
        /// Read the password from stdin (one line).
        #[arg(long, group = "password", requires = "username")]
        password_stdin: bool,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// The registries with settings (never their passwords).
    Ls(ListArgs),
    /// Forget a registry's settings.
    Rm {
        host: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum JoinTokenCommand {
    /// Make a join token (`SHOAL-1-…`) for `shoal agent --peer ADDR --token TOKEN`.
    Create {
        /// voter (may vote; admits workers too) or worker.
        #[arg(long, default_value = "voter", value_parser = ["voter", "worker"])]
        role: String,
        /// How long it is good for.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: Target,
    },
    /// The join tokens: valid, expired, used or revoked.
    Ls(ListArgs),
    /// Revoke a join token.
    Rm {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum ContextCommand {
    /// The contexts in the CLI's config; `*` marks the current one.
    Ls {
        #[arg(long, env = "SHOAL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Make a context the current one.
    Use {
        name: String,
        #[arg(long, env = "SHOAL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Add (or replace) a context from a credential file, e.g. a node's admin.json.
    Add {
        name: String,
        /// The credential file.
        #[arg(long = "from")]
        from: PathBuf,
        #[arg(long, env = "SHOAL_CONFIG")]
        config: Option<PathBuf>,
    },
}

//! Images: pack, pull, list, remove, import.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{Output, Target};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Load an image into the node: an OCI layout or `docker save` tarball,
    /// or (with --rootfs) a root filesystem directory made into a one-layer image.
    Import(ImportArgs),
    /// Pull an image from its registry onto the node (`--addr` picks which):
    /// `HOST[:PORT]/REPO:TAG` or `…@sha256:…`. Plain HTTP only for loopback
    /// registries.
    Pull(PullArgs),
    /// Remove an image (by the name `shoal images` lists) from the node, or
    /// from the nodes named; refused where a task runs it or is meant to.
    Rm(ImageRmArgs),
    /// Write a root filesystem directory as a one-layer OCI image layout
    /// tarball, to push to a registry (`skopeo copy oci-archive:FILE:TAG
    /// docker://HOST/REPO:TAG`) or import; no node is asked.
    Pack(PackArgs),
}

#[derive(Args)]
pub struct PackArgs {
    /// The root filesystem directory.
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Image name, e.g. `demo/busybox:latest` (its tag names the image in the layout).
    #[arg(long)]
    pub name: String,
    /// The tarball to write.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
}

#[derive(Args)]
pub struct PullArgs {
    /// The image reference, e.g. `127.0.0.1:5000/web:1.2`.
    pub reference: String,
    #[command(flatten)]
    pub nodes: NodeSelection,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

/// Which nodes an image command acts on; by default the node answering
/// (the credential's, or `--addr`).
#[derive(Args, Clone, Default)]
pub struct NodeSelection {
    /// A node, by name (repeat for several).
    #[arg(long = "node", value_name = "NAME", conflicts_with = "all_nodes")]
    pub nodes: Vec<String>,
    /// Every node alive.
    #[arg(long)]
    pub all_nodes: bool,
}

#[derive(Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub nodes: NodeSelection,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct ImageRmArgs {
    /// The image's name as `shoal images` lists it.
    pub name: String,
    #[command(flatten)]
    pub nodes: NodeSelection,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The tarball (OCI image layout or `docker save`).
    #[arg(required_unless_present = "rootfs", conflicts_with = "rootfs")]
    pub file: Option<PathBuf>,
    /// Make a one-layer image of this root filesystem directory.
    #[arg(long, requires = "name")]
    pub rootfs: Option<PathBuf>,
    /// Image name, e.g. `busybox:latest`; required with --rootfs.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

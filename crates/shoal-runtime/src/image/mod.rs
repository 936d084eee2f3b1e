//! OCI and Docker image formats, shared by both drivers: the JSON documents,
//! image archives (OCI layout and `docker save`), a one-layer OCI layout built
//! from a root filesystem, and the process a container runs from its image.
//!
//! Everything here is pure (files and bytes in, values out) so that both
//! drivers share it and it can be unit-tested without containerd.

mod archive;
mod docker_save;
mod documents;
mod identity;
mod oci_layout;
mod process;
mod rootfs;
mod time;

pub use archive::{Archive, ArchiveImage, Blob, BlobSource};
pub use documents::{
    is_index_media_type, parse_config, parse_manifest_or_index, Descriptor, ExecConfig,
    ImageConfigFile, ManifestOrIndex, Platform, RootFs, GC_REF_CONTENT,
};
pub use identity::{
    chain_ids, check_digest, host_arch, normalize_name, oci_arch, pick_manifest, sha256_digest,
};
pub use process::{resolve_process, ProcessSpec};
pub use rootfs::{write_layers_layout, write_rootfs_layout};
pub use time::{now_epoch_s, rfc3339};

use crate::RuntimeError;

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Annotation containerd (and `docker save` since Docker 25) puts the full image name in.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI's name annotation: a tag by the spec, a full reference in practice.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Bounds on what an archive may make us store and parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Sum of the sizes of all files in the archive.
    pub archive_bytes_max: u64,
    pub archive_entries_max: u64,
    /// Largest manifest, index, config or manifest.json we parse.
    pub json_bytes_max: u64,
    /// Images (manifests named in index.json or manifest.json) per archive.
    pub images_max: usize,
    pub layers_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            archive_bytes_max: 8 << 30,
            archive_entries_max: 100_000,
            json_bytes_max: 4 << 20,
            images_max: 1_000,
            layers_max: 500,
        }
    }
}

/// Index → index → manifest nesting we follow.
pub const INDEX_DEPTH_MAX: usize = 4;
/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn invalid(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidImage(msg.into())
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

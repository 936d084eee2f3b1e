//! OCI and Docker image formats: the JSON documents, reading image archives
//! (OCI layout and `docker save`), building a one-layer OCI layout from a root
//! filesystem, and resolving the process a container runs from its image.
//!
//! Everything here is pure (files and bytes in, values out) so that both
//! drivers share it and it can be unit-tested without containerd.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{ContainerConfig, Result, RuntimeError};

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

/// Symlinks and hard links followed inside an archive before giving up.
const LINK_HOPS_MAX: usize = 8;
/// Index → index → manifest nesting we follow.
pub const INDEX_DEPTH_MAX: usize = 4;
/// Directory depth `write_rootfs_layout` descends to.
const ROOTFS_DEPTH_MAX: usize = 256;

fn invalid(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidImage(msg.into())
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

// ---------------------------------------------------------------------------
// JSON documents

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// The fields of a manifest and an index together: which one a document is
/// shows in what it carries, which is more reliable than media types that
/// older tools leave out.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    #[serde(default)]
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    manifests: Vec<Descriptor>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestOrIndex {
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    Index {
        manifests: Vec<Descriptor>,
    },
}

pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

/// Parses a manifest or an index (OCI or Docker schema 2).
pub fn parse_manifest_or_index(bytes: &[u8], limits: &Limits) -> Result<ManifestOrIndex> {
    let doc: ManifestDoc = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("manifest or index is not valid JSON: {e}")))?;
    let index_type = doc.media_type.as_deref().is_some_and(is_index_media_type);
    if index_type || (doc.config.is_none() && !doc.manifests.is_empty()) {
        if doc.manifests.len() > limits.images_max {
            return Err(invalid(format!(
                "index lists {} manifests, more than {}",
                doc.manifests.len(),
                limits.images_max
            )));
        }
        for d in &doc.manifests {
            check_digest(&d.digest)?;
        }
        return Ok(ManifestOrIndex::Index {
            manifests: doc.manifests,
        });
    }
    let config = doc
        .config
        .ok_or_else(|| invalid("manifest has neither a config nor a manifest list"))?;
    check_digest(&config.digest)?;
    if doc.layers.len() > limits.layers_max {
        return Err(invalid(format!(
            "manifest has {} layers, more than {}",
            doc.layers.len(),
            limits.layers_max
        )));
    }
    for l in &doc.layers {
        check_digest(&l.digest)?;
    }
    Ok(ManifestOrIndex::Manifest {
        config,
        layers: doc.layers,
    })
}

/// The image config (`application/vnd.oci.image.config.v1+json`, which
/// Docker's config is a superset of). Only what we use; the rest is ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ExecConfig>,
    pub rootfs: RootFs,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The image's defaults for the process (the `config` object of an image
/// config). Nulls are common in Docker configs, hence all the options.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

pub fn parse_config(bytes: &[u8], limits: &Limits) -> Result<ImageConfigFile> {
    let config: ImageConfigFile = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("image config is not valid: {e}")))?;
    if config.rootfs.diff_ids.len() > limits.layers_max {
        return Err(invalid(format!(
            "image config has {} layers, more than {}",
            config.rootfs.diff_ids.len(),
            limits.layers_max
        )));
    }
    for d in &config.rootfs.diff_ids {
        check_digest(d)?;
    }
    Ok(config)
}

// ---------------------------------------------------------------------------
// Digests, names, platforms

/// Accepts only `sha256:<64 lowercase hex>`: the one algorithm in use, and a
/// shape that is safe to put in paths and keys.
pub fn check_digest(digest: &str) -> Result<()> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| invalid(format!("digest {digest:?} is not sha256")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid(format!("digest {digest:?} is malformed")));
    }
    Ok(())
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The identity of a stack of layers: the snapshot name containerd gives the
/// unpacked result of `diff_ids[..=i]`, for each `i`.
pub fn chain_ids(diff_ids: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        check_digest(d)?;
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => sha256_digest(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    Ok(out)
}

/// Normalizes an image name the way Docker does:
/// `busybox` → `docker.io/library/busybox:latest`.
pub fn normalize_name(name: &str) -> Result<String> {
    oci_spec::distribution::Reference::from_str(name)
        .map(|r| r.to_string())
        .map_err(|e| invalid(format!("image name {name:?} is not a valid reference: {e}")))
}

/// This machine's architecture as OCI spells it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Picks the manifest to run from an index: linux on this architecture, else
/// the first linux one, else (no platforms given at all) the first.
pub fn pick_manifest(manifests: &[Descriptor]) -> Result<&Descriptor> {
    let linux = |d: &&Descriptor| d.platform.as_ref().is_some_and(|p| p.os == "linux");
    manifests
        .iter()
        .filter(linux)
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.architecture == host_arch())
        })
        .or_else(|| manifests.iter().find(linux))
        .or_else(|| manifests.iter().find(|d| d.platform.is_none()))
        .ok_or_else(|| invalid("index holds no linux manifest"))
}

// ---------------------------------------------------------------------------
// The process a container runs

/// What the container's process is, resolved from its config and its image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// `NAME=value`, image variables first, each name once.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

/// Combines the container config with the image's defaults with Docker's
/// rules (see [`ContainerConfig`]).
pub fn resolve_process(config: &ContainerConfig, image: &ExecConfig) -> Result<ProcessSpec> {
    let entrypoint = match &config.command {
        Some(c) => c.clone(),
        None => image.entrypoint.clone().unwrap_or_default(),
    };
    let cmd = match (&config.args, &config.command) {
        (Some(a), _) => a.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => image.cmd.clone().unwrap_or_default(),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(RuntimeError::InvalidConfig(format!(
            "container {}: neither the spec nor image {} gives a command",
            config.id, config.image
        )));
    }

    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: &str| match env.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((name.to_string(), value.to_string())),
    };
    for entry in image.env.iter().flatten() {
        let (name, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        set(name, value);
    }
    for (name, value) in &config.env {
        set(name, value);
    }
    if !env.iter().any(|(n, _)| n == "PATH") {
        let (name, value) = DEFAULT_PATH_ENV.split_once('=').unwrap_or_default();
        env.insert(0, (name.to_string(), value.to_string()));
    }
    let env = env.into_iter().map(|(n, v)| format!("{n}={v}")).collect();

    let cwd = config
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".to_string());

    let (uid, gid) = match (config.user, image.user.as_deref()) {
        (Some(ids), _) => ids,
        (None, None | Some("")) => (0, 0),
        (None, Some(user)) => parse_numeric_user(user).ok_or_else(|| {
            // Running as root instead of the named user would silently
            // escalate, so refuse and let the spec say who to run as.
            invalid(format!(
                "image {} runs as user {user:?}, which is not numeric; set the spec's user",
                config.image
            ))
        })?,
    };
    Ok(ProcessSpec {
        args,
        env,
        cwd,
        uid,
        gid,
    })
}

/// `uid` or `uid:gid`; a lone uid runs with gid 0, as runc does for a uid
/// that has no passwd entry.
fn parse_numeric_user(user: &str) -> Option<(u32, u32)> {
    match user.split_once(':') {
        Some((u, g)) => Some((u.parse().ok()?, g.parse().ok()?)),
        None => Some((user.parse().ok()?, 0)),
    }
}

// ---------------------------------------------------------------------------
// Time

/// Formats seconds since the epoch as RFC 3339 UTC (`2024-05-01T12:00:00Z`).
pub fn rfc3339(epoch_s: i64) -> String {
    let days = epoch_s.div_euclid(86_400);
    let secs = epoch_s.rem_euclid(86_400);
    // Civil-from-days, proleptic Gregorian (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

pub fn now_epoch_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Reading archives

/// Where a blob's bytes are: a file extracted from the archive, or a
/// document we generated (the manifest of a `docker save` image).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobSource {
    File(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub desc: Descriptor,
    pub source: BlobSource,
    /// Garbage-collection references to the blob's children, so containerd
    /// keeps the whole image as long as the image record points at the root.
    pub labels: BTreeMap<String, String>,
}

/// One image found in an archive, with everything needed to store and run it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveImage {
    /// Normalized names; never empty.
    pub names: Vec<String>,
    /// What the image record points at: the manifest, or an index over it.
    pub target: Descriptor,
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub config_file: ImageConfigFile,
    /// Children before parents: layers, config, manifest, then any indexes.
    pub blobs: Vec<Blob>,
}

impl ArchiveImage {
    /// Config plus compressed layers, as `ImageInfo::size_bytes` counts.
    pub fn size_bytes(&self) -> u64 {
        self.config.size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

/// An image archive unpacked into a temporary directory (removed on drop).
pub struct Archive {
    dir: tempfile::TempDir,
    /// Archive path → extracted file.
    files: HashMap<String, PathBuf>,
    /// Archive path → archive path it links to (symlinks and hard links).
    links: HashMap<String, String>,
    limits: Limits,
}

/// `./a//b/` → `a/b`; `None` when it climbs out of the archive.
fn clean_path(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

impl Archive {
    /// Unpacks the regular files of `path` (a tar, optionally gzip-compressed)
    /// into a temporary directory next to it (or in the system temp dir when
    /// that is not writable), enforcing `limits`.
    pub fn extract(path: &Path, limits: Limits) -> Result<Archive> {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let dir = parent
            .and_then(|p| {
                tempfile::Builder::new()
                    .prefix(".shoal-import-")
                    .tempdir_in(p)
                    .ok()
            })
            .map_or_else(
                || tempfile::Builder::new().prefix("shoal-import-").tempdir(),
                Ok,
            )
            .map_err(io_err("creating a temporary directory for the import"))?;

        let shown = path.display().to_string();
        let mut file = File::open(path).map_err(io_err(format!("opening {shown}")))?;
        let mut magic = [0u8; 2];
        let gzip = file
            .read(&mut magic)
            .map_err(io_err(format!("reading {shown}")))?
            == 2
            && magic == [0x1f, 0x8b];
        file.rewind().map_err(io_err(format!("reading {shown}")))?;
        let reader: Box<dyn Read> = if gzip {
            Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
        } else {
            Box::new(std::io::BufReader::new(file))
        };

        let mut archive = Archive {
            dir,
            files: HashMap::new(),
            links: HashMap::new(),
            limits,
        };
        archive.unpack(tar::Archive::new(reader), &shown)?;
        Ok(archive)
    }

    fn unpack<R: Read>(&mut self, mut tar: tar::Archive<R>, shown: &str) -> Result<()> {
        let bad =
            |e: std::io::Error| invalid(format!("{shown} is not a readable tar archive: {e}"));
        let mut total_bytes: u64 = 0;
        let mut count: u64 = 0;
        for entry in tar.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            count += 1;
            if count > self.limits.archive_entries_max {
                return Err(invalid(format!(
                    "{shown} has more than {} entries",
                    self.limits.archive_entries_max
                )));
            }
            let raw = entry.path().map_err(bad)?.to_string_lossy().into_owned();
            let Some(name) = clean_path(&raw) else {
                return Err(invalid(format!(
                    "{shown}: entry {raw:?} points outside the archive"
                )));
            };
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let Some(target) = entry.link_name().map_err(bad)? else {
                    continue;
                };
                let target = target.to_string_lossy().into_owned();
                // Symlinks resolve from the link's directory, hard links from the root.
                let joined = match (kind.is_symlink(), name.rsplit_once('/')) {
                    (true, Some((dir, _))) => format!("{dir}/{target}"),
                    _ => target,
                };
                if let Some(target) = clean_path(&joined) {
                    self.links.insert(name, target);
                }
                continue;
            }
            if !(kind.is_file() || kind == tar::EntryType::Continuous) {
                continue;
            }
            let size = entry.header().size().map_err(bad)?;
            total_bytes = total_bytes.saturating_add(size);
            if total_bytes > self.limits.archive_bytes_max {
                return Err(invalid(format!(
                    "{shown} holds more than {} bytes",
                    self.limits.archive_bytes_max
                )));
            }
            // Files are stored by number: archive paths never become host paths.
            let dest = self.dir.path().join(count.to_string());
            let mut out =
                File::create(&dest).map_err(io_err(format!("writing {}", dest.display())))?;
            let copied = std::io::copy(&mut (&mut entry).take(size), &mut out).map_err(bad)?;
            if copied != size {
                return Err(invalid(format!("{shown}: entry {name} is truncated")));
            }
            self.links.remove(&name);
            self.files.insert(name, dest);
        }
        Ok(())
    }

    /// The extracted file for an archive path, following links.
    pub fn file(&self, name: &str) -> Result<&Path> {
        let mut name = clean_path(name)
            .ok_or_else(|| invalid(format!("path {name:?} escapes the archive")))?;
        for _ in 0..=LINK_HOPS_MAX {
            if let Some(path) = self.files.get(&name) {
                return Ok(path);
            }
            match self.links.get(&name) {
                Some(target) => name = target.clone(),
                None => return Err(invalid(format!("archive has no file {name}"))),
            }
        }
        Err(invalid(format!(
            "archive path {name} has more than {LINK_HOPS_MAX} links in a row"
        )))
    }

    pub fn has(&self, name: &str) -> bool {
        self.file(name).is_ok()
    }

    fn read_json(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.file(name)?;
        let len = std::fs::metadata(path)
            .map_err(io_err(format!("reading {name}")))?
            .len();
        if len > self.limits.json_bytes_max {
            return Err(invalid(format!(
                "{name} is {len} bytes, more than the {} allowed for JSON documents",
                self.limits.json_bytes_max
            )));
        }
        std::fs::read(path).map_err(io_err(format!("reading {name}")))
    }

    fn blob_path(digest: &str) -> Result<String> {
        check_digest(digest)?;
        Ok(digest.replacen(':', "/", 1))
    }

    /// A blob of an OCI layout, checked against its descriptor's size.
    fn blob_file(&self, desc: &Descriptor) -> Result<PathBuf> {
        let name = format!("blobs/{}", Self::blob_path(&desc.digest)?);
        let path = self.file(&name)?;
        let len = std::fs::metadata(path)
            .map_err(io_err(format!("reading {name}")))?
            .len();
        if len != desc.size {
            return Err(invalid(format!(
                "blob {} is {len} bytes, its descriptor says {}",
                desc.digest, desc.size
            )));
        }
        Ok(path.to_path_buf())
    }

    /// A JSON blob of an OCI layout, checked against its descriptor.
    fn blob_json(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size > self.limits.json_bytes_max {
            return Err(invalid(format!(
                "{} is {} bytes, more than the {} allowed for JSON documents",
                desc.digest, desc.size, self.limits.json_bytes_max
            )));
        }
        let bytes = std::fs::read(self.blob_file(desc)?)
            .map_err(io_err(format!("reading {}", desc.digest)))?;
        if sha256_digest(&bytes) != desc.digest {
            return Err(invalid(format!(
                "blob {} does not match its digest",
                desc.digest
            )));
        }
        Ok(bytes)
    }

    /// The images in the archive. `name_override` replaces the names the
    /// archive carries; it needs the archive to hold exactly one image.
    pub fn images(&self, name_override: Option<&str>) -> Result<Vec<ArchiveImage>> {
        let mut images = if self.has("index.json") {
            self.oci_images()?
        } else if self.has("manifest.json") {
            self.docker_images()?
        } else {
            return Err(invalid(
                "archive is neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)",
            ));
        };
        // Several names for one image (two tags) make one entry.
        let mut merged: Vec<ArchiveImage> = Vec::new();
        for image in images.drain(..) {
            match merged
                .iter_mut()
                .find(|m| m.target.digest == image.target.digest)
            {
                Some(m) => m.names.extend(image.names),
                None => merged.push(image),
            }
        }
        if merged.is_empty() {
            return Err(invalid("archive holds no image"));
        }
        if let Some(name) = name_override {
            if merged.len() != 1 {
                return Err(invalid(format!(
                    "archive holds {} images; a name can only be given for one",
                    merged.len()
                )));
            }
            merged[0].names = vec![normalize_name(name)?];
        }
        for image in &mut merged {
            image.names.sort();
            image.names.dedup();
            if image.names.is_empty() {
                return Err(invalid(format!(
                    "image {} in the archive carries no name; give one",
                    image.target.digest
                )));
            }
        }
        Ok(merged)
    }

    fn oci_images(&self) -> Result<Vec<ArchiveImage>> {
        let ManifestOrIndex::Index { manifests } =
            parse_manifest_or_index(&self.read_json("index.json")?, &self.limits)?
        else {
            return Err(invalid("index.json is not an image index"));
        };
        let mut out = Vec::new();
        for desc in manifests {
            let names = names_from_annotations(&desc.annotations)?;
            let mut image = self.resolve_oci(&desc, INDEX_DEPTH_MAX)?;
            image.names = names;
            image.target = desc;
            out.push(image);
        }
        Ok(out)
    }

    /// Follows `desc` down to the platform manifest, collecting the blobs on
    /// the way (parents last).
    fn resolve_oci(&self, desc: &Descriptor, depth_left: usize) -> Result<ArchiveImage> {
        match parse_manifest_or_index(&self.blob_json(desc)?, &self.limits)? {
            ManifestOrIndex::Index { manifests } => {
                let Some(depth_left) = depth_left.checked_sub(1) else {
                    return Err(invalid(format!(
                        "indexes nest deeper than {INDEX_DEPTH_MAX}"
                    )));
                };
                let chosen = pick_manifest(&manifests)?;
                let mut image = self.resolve_oci(chosen, depth_left)?;
                image.blobs.push(Blob {
                    desc: desc.clone(),
                    source: BlobSource::File(self.blob_file(desc)?),
                    labels: index_gc_labels(&manifests),
                });
                Ok(image)
            }
            ManifestOrIndex::Manifest { config, layers } => {
                let config_file = parse_config(&self.blob_json(&config)?, &self.limits)?;
                let mut blobs = Vec::with_capacity(layers.len() + 2);
                for layer in &layers {
                    blobs.push(Blob {
                        desc: layer.clone(),
                        source: BlobSource::File(self.blob_file(layer)?),
                        labels: BTreeMap::new(),
                    });
                }
                blobs.push(Blob {
                    desc: config.clone(),
                    source: BlobSource::File(self.blob_file(&config)?),
                    labels: BTreeMap::new(),
                });
                blobs.push(Blob {
                    desc: desc.clone(),
                    source: BlobSource::File(self.blob_file(desc)?),
                    labels: manifest_gc_labels(&config, &layers),
                });
                check_layers(&config_file, &layers)?;
                Ok(ArchiveImage {
                    names: Vec::new(),
                    target: desc.clone(),
                    manifest: desc.clone(),
                    config,
                    layers,
                    config_file,
                    blobs,
                })
            }
        }
    }

    fn docker_images(&self) -> Result<Vec<ArchiveImage>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            #[serde(default)]
            layers: Vec<String>,
        }
        let entries: Vec<Entry> = serde_json::from_slice(&self.read_json("manifest.json")?)
            .map_err(|e| invalid(format!("manifest.json is not valid: {e}")))?;
        if entries.len() > self.limits.images_max {
            return Err(invalid(format!(
                "manifest.json lists more than {} images",
                self.limits.images_max
            )));
        }
        // Images in one archive share layers; hash each file once.
        let mut layer_cache: HashMap<String, Descriptor> = HashMap::new();
        let mut out = Vec::new();
        for entry in entries {
            let config_bytes = self.read_json(&entry.config)?;
            let config_file = parse_config(&config_bytes, &self.limits)?;
            let config = Descriptor {
                media_type: MEDIA_OCI_CONFIG.to_string(),
                digest: sha256_digest(&config_bytes),
                size: config_bytes.len() as u64,
                ..Descriptor::default()
            };
            if entry.layers.len() > self.limits.layers_max {
                return Err(invalid(format!(
                    "{} has more than {} layers",
                    entry.config, self.limits.layers_max
                )));
            }
            let mut layers = Vec::with_capacity(entry.layers.len());
            let mut blobs = Vec::with_capacity(entry.layers.len() + 2);
            for layer_path in &entry.layers {
                let file = self.file(layer_path)?;
                let desc = match layer_cache.get(layer_path) {
                    Some(d) => d.clone(),
                    None => {
                        let d = describe_layer(file)
                            .map_err(io_err(format!("reading {layer_path}")))?;
                        layer_cache.insert(layer_path.clone(), d.clone());
                        d
                    }
                };
                blobs.push(Blob {
                    desc: desc.clone(),
                    source: BlobSource::File(file.to_path_buf()),
                    labels: BTreeMap::new(),
                });
                layers.push(desc);
            }
            check_layers(&config_file, &layers)?;
            blobs.push(Blob {
                desc: config.clone(),
                source: BlobSource::Bytes(config_bytes),
                labels: BTreeMap::new(),
            });
            let manifest_bytes = manifest_json(&config, &layers)?;
            let manifest = Descriptor {
                media_type: MEDIA_OCI_MANIFEST.to_string(),
                digest: sha256_digest(&manifest_bytes),
                size: manifest_bytes.len() as u64,
                ..Descriptor::default()
            };
            blobs.push(Blob {
                desc: manifest.clone(),
                source: BlobSource::Bytes(manifest_bytes),
                labels: manifest_gc_labels(&config, &layers),
            });
            let names = entry
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| normalize_name(t))
                .collect::<Result<Vec<_>>>()?;
            out.push(ArchiveImage {
                names,
                target: manifest.clone(),
                manifest,
                config,
                layers,
                config_file,
                blobs,
            });
        }
        Ok(out)
    }
}

/// Name from a manifest descriptor in index.json: containerd's annotation,
/// else OCI's ref.name when it is a full reference rather than a bare tag.
fn names_from_annotations(annotations: &BTreeMap<String, String>) -> Result<Vec<String>> {
    if let Some(name) = annotations.get(ANNOTATION_IMAGE_NAME) {
        return Ok(vec![normalize_name(name)?]);
    }
    match annotations.get(ANNOTATION_REF_NAME) {
        Some(r) if r.contains(['/', ':', '@']) => Ok(normalize_name(r).into_iter().collect()),
        _ => Ok(Vec::new()),
    }
}

fn check_layers(config: &ImageConfigFile, layers: &[Descriptor]) -> Result<()> {
    if config.rootfs.diff_ids.len() != layers.len() {
        return Err(invalid(format!(
            "image has {} layers but its config lists {} diff ids",
            layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    Ok(())
}

/// Digest, size and media type of a layer file; gzip is recognized by its
/// magic number since `docker save` does not say.
fn describe_layer(path: &Path) -> std::io::Result<Descriptor> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size: u64 = 0;
    let mut head = [0u8; 2];
    // The file was written by us with a known length, so this ends.
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if size == 0 && n >= 2 {
            head.copy_from_slice(&buf[..2]);
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let media_type = if head == [0x1f, 0x8b] {
        MEDIA_OCI_LAYER_GZIP
    } else {
        MEDIA_OCI_LAYER
    };
    Ok(Descriptor {
        media_type: media_type.to_string(),
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        size,
        ..Descriptor::default()
    })
}

fn manifest_json(config: &Descriptor, layers: &[Descriptor]) -> Result<Vec<u8>> {
    let doc = ManifestDoc {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.to_string()),
        config: Some(config.clone()),
        layers: layers.to_vec(),
        manifests: Vec::new(),
    };
    serde_json::to_vec(&doc).map_err(|e| invalid(format!("encoding manifest: {e}")))
}

pub const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";

fn manifest_gc_labels(config: &Descriptor, layers: &[Descriptor]) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(format!("{GC_REF_CONTENT}.config"), config.digest.clone())]);
    for (i, l) in layers.iter().enumerate() {
        labels.insert(format!("{GC_REF_CONTENT}.l.{i}"), l.digest.clone());
    }
    labels
}

fn index_gc_labels(manifests: &[Descriptor]) -> BTreeMap<String, String> {
    manifests
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("{GC_REF_CONTENT}.m.{i}"), m.digest.clone()))
        .collect()
}

// ---------------------------------------------------------------------------
// Writing a layout from a root filesystem

/// Writes a one-layer OCI image layout tarball of the directory `rootfs` to
/// `out`, named `name` (normalized). The layer keeps symlinks, modes and
/// owners; the result only varies with the config's creation time.
pub fn write_rootfs_layout(rootfs: &Path, name: &str, out: impl Write) -> Result<()> {
    let full_name = normalize_name(name)?;
    let reference = oci_spec::distribution::Reference::from_str(&full_name)
        .map_err(|e| invalid(format!("image name {full_name:?}: {e}")))?;

    let mut layer = tempfile::tempfile().map_err(io_err("creating a temporary layer file"))?;
    {
        let mut builder = tar::Builder::new(&mut layer);
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Complete);
        append_tree(&mut builder, rootfs, Path::new(""), 0)?;
        builder
            .finish()
            .map_err(io_err(format!("writing the layer of {}", rootfs.display())))?;
    }
    layer.rewind().map_err(io_err("reading the layer back"))?;
    let layer_desc = {
        let mut hasher = Sha256::new();
        let size = std::io::copy(&mut layer, &mut HashWriter(&mut hasher))
            .map_err(io_err("hashing the layer"))?;
        Descriptor {
            media_type: MEDIA_OCI_LAYER.to_string(),
            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
            size,
            ..Descriptor::default()
        }
    };
    layer.rewind().map_err(io_err("reading the layer back"))?;

    let config_file = ImageConfigFile {
        created: Some(rfc3339(now_epoch_s())),
        architecture: host_arch().to_string(),
        os: "linux".to_string(),
        config: Some(ExecConfig {
            env: Some(vec![DEFAULT_PATH_ENV.to_string()]),
            ..ExecConfig::default()
        }),
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids: vec![layer_desc.digest.clone()],
        },
    };
    let config_bytes =
        serde_json::to_vec(&config_file).map_err(|e| invalid(format!("encoding config: {e}")))?;
    let config = Descriptor {
        media_type: MEDIA_OCI_CONFIG.to_string(),
        digest: sha256_digest(&config_bytes),
        size: config_bytes.len() as u64,
        ..Descriptor::default()
    };
    let manifest_bytes = manifest_json(&config, std::slice::from_ref(&layer_desc))?;
    let mut annotations = BTreeMap::from([(ANNOTATION_IMAGE_NAME.to_string(), full_name)]);
    if let Some(tag) = reference.tag() {
        annotations.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
    }
    let manifest = Descriptor {
        media_type: MEDIA_OCI_MANIFEST.to_string(),
        digest: sha256_digest(&manifest_bytes),
        size: manifest_bytes.len() as u64,
        annotations,
        platform: Some(Platform {
            architecture: host_arch().to_string(),
            os: "linux".to_string(),
            variant: None,
        }),
    };
    let index = ManifestDoc {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_INDEX.to_string()),
        manifests: vec![manifest.clone()],
        ..ManifestDoc::default()
    };
    let index_bytes =
        serde_json::to_vec(&index).map_err(|e| invalid(format!("encoding index: {e}")))?;

    let mut tar = tar::Builder::new(out);
    let mut add = |path: &str, size: u64, data: &mut dyn Read| {
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data)
            .map_err(io_err(format!("writing {path} to the layout")))
    };
    let blob = |d: &Descriptor| format!("blobs/{}", d.digest.replacen(':', "/", 1));
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    add("oci-layout", layout.len() as u64, &mut &layout[..])?;
    add(
        "index.json",
        index_bytes.len() as u64,
        &mut &index_bytes[..],
    )?;
    add(&blob(&manifest), manifest.size, &mut &manifest_bytes[..])?;
    add(&blob(&config), config.size, &mut &config_bytes[..])?;
    add(&blob(&layer_desc), layer_desc.size, &mut layer)?;
    tar.into_inner()
        .map_err(io_err("finishing the layout"))?
        .flush()
        .map_err(io_err("finishing the layout"))?;
    Ok(())
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends the children of `root/rel` in name order, so the layer (and its
/// digest) does not depend on directory listing order.
fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    depth: usize,
) -> Result<()> {
    if depth > ROOTFS_DEPTH_MAX {
        return Err(RuntimeError::InvalidConfig(format!(
            "{} nests directories deeper than {ROOTFS_DEPTH_MAX}",
            root.display()
        )));
    }
    let dir = root.join(rel);
    let shown = dir.display().to_string();
    let mut names = std::fs::read_dir(&dir)
        .map_err(io_err(format!("listing {shown}")))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io_err(format!("listing {shown}")))?;
    names.sort();
    for name in names {
        let rel_child = rel.join(&name);
        let path = root.join(&rel_child);
        builder
            .append_path_with_name(&path, &rel_child)
            .map_err(io_err(format!("adding {} to the layer", path.display())))?;
        let meta = std::fs::symlink_metadata(&path)
            .map_err(io_err(format!("reading {}", path.display())))?;
        if meta.is_dir() {
            append_tree(builder, root, &rel_child, depth + 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(command: Option<&[&str]>, args: Option<&[&str]>) -> ContainerConfig {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        ContainerConfig {
            id: "c1".into(),
            image: "docker.io/library/x:latest".into(),
            command: command.map(strings),
            args: args.map(strings),
            env: BTreeMap::new(),
            working_dir: None,
            user: None,
            cpu_millis: None,
            memory_bytes: None,
            labels: BTreeMap::new(),
            log_path: PathBuf::from("/tmp/x.log"),
            hostname: "h".into(),
            network: Default::default(),
            mounts: Vec::new(),
        }
    }

    fn image_exec() -> ExecConfig {
        ExecConfig {
            user: Some("1000:2000".into()),
            env: Some(vec!["PATH=/bin".into(), "A=1".into(), "B=2".into()]),
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into(), "--port=1".into()]),
            working_dir: Some("/srv".into()),
        }
    }

    #[test]
    fn process_follows_docker_semantics() {
        let image = image_exec();
        let p = resolve_process(&config(None, None), &image).unwrap();
        assert_eq!(p.args, ["/entry", "serve", "--port=1"]);
        assert_eq!((p.uid, p.gid, p.cwd.as_str()), (1000, 2000, "/srv"));

        // command replaces the entrypoint and drops the image's cmd
        let p = resolve_process(&config(Some(&["sh"]), None), &image).unwrap();
        assert_eq!(p.args, ["sh"]);
        // args replace the cmd only
        let p = resolve_process(&config(None, Some(&["x"])), &image).unwrap();
        assert_eq!(p.args, ["/entry", "x"]);
        let p = resolve_process(&config(Some(&["a"]), Some(&["b"])), &image).unwrap();
        assert_eq!(p.args, ["a", "b"]);

        let mut c = config(None, None);
        c.env.insert("B".into(), "3".into());
        c.env.insert("C".into(), "4".into());
        c.working_dir = Some("/w".into());
        c.user = Some((5, 6));
        let p = resolve_process(&c, &image).unwrap();
        assert_eq!(p.env, ["PATH=/bin", "A=1", "B=3", "C=4"]);
        assert_eq!((p.uid, p.gid, p.cwd.as_str()), (5, 6, "/w"));
    }

    #[test]
    fn process_defaults_and_errors() {
        let empty = ExecConfig::default();
        assert!(matches!(
            resolve_process(&config(None, None), &empty),
            Err(RuntimeError::InvalidConfig(_))
        ));
        let p = resolve_process(&config(None, Some(&["ls"])), &empty).unwrap();
        assert_eq!(p.env, [DEFAULT_PATH_ENV]);
        assert_eq!((p.uid, p.gid, p.cwd.as_str()), (0, 0, "/"));

        let named = ExecConfig {
            user: Some("nobody".into()),
            cmd: Some(vec!["x".into()]),
            ..empty.clone()
        };
        assert!(matches!(
            resolve_process(&config(None, None), &named),
            Err(RuntimeError::InvalidImage(_))
        ));
        let lone = ExecConfig {
            user: Some("7".into()),
            cmd: Some(vec!["x".into()]),
            ..empty
        };
        let p = resolve_process(&config(None, None), &lone).unwrap();
        assert_eq!((p.uid, p.gid), (7, 0));
    }

    #[test]
    fn chain_ids_match_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], sha256_digest(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&["md5:00".into()]).is_err());
        assert!(chain_ids(&[]).unwrap().is_empty());
    }

    #[test]
    fn names_normalize() {
        assert_eq!(
            normalize_name("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_name("busybox:1").unwrap(),
            "docker.io/library/busybox:1"
        );
        assert_eq!(normalize_name("ghcr.io/a/b:c").unwrap(), "ghcr.io/a/b:c");
        assert!(normalize_name("Not Valid").is_err());
    }

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_714_564_800), "2024-05-01T12:00:00Z");
    }

    #[test]
    fn platform_pick_prefers_host() {
        let d = |os: &str, arch: &str, digest: char| Descriptor {
            digest: format!("sha256:{}", digest.to_string().repeat(64)),
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: None,
            }),
            ..Descriptor::default()
        };
        let list = vec![
            d("unknown", "unknown", 'a'),
            d("linux", "s390x", 'b'),
            d("linux", host_arch(), 'c'),
        ];
        assert!(pick_manifest(&list).unwrap().digest.ends_with('c'));
        assert!(pick_manifest(&list[..2]).unwrap().digest.ends_with('b'));
        assert!(pick_manifest(&list[..1]).is_err());
    }

    #[test]
    fn parse_rejects_wrong_documents() {
        let l = Limits::default();
        assert!(parse_manifest_or_index(b"{}", &l).is_err());
        assert!(parse_manifest_or_index(b"[1]", &l).is_err());
        let bad_digest =
            br#"{"schemaVersion":2,"config":{"digest":"sha256:zz","size":1},"layers":[]}"#;
        assert!(parse_manifest_or_index(bad_digest, &l).is_err());
        let docker_config =
            br#"{"architecture":"amd64","os":"linux","config":{"Env":null,"Cmd":["sh"],"User":""},
            "rootfs":{"type":"layers","diff_ids":[]},"history":[{"created_by":"x"}]}"#;
        let c = parse_config(docker_config, &l).unwrap();
        assert_eq!(c.config.unwrap().cmd.unwrap(), ["sh"]);
    }

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("bin/tool"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/bin/tool", dir.path().join("bin/alias")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), b"root:x:0:0::/:/bin/sh\n").unwrap();
        dir
    }

    #[test]
    fn rootfs_layout_round_trips() {
        let fs = rootfs();
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("img.tar");
        write_rootfs_layout(fs.path(), "tool:1", File::create(&path).unwrap()).unwrap();

        let archive = Archive::extract(&path, Limits::default()).unwrap();
        let images = archive.images(None).unwrap();
        assert_eq!(images.len(), 1);
        let image = &images[0];
        assert_eq!(image.names, ["docker.io/library/tool:1"]);
        assert_eq!(image.target, image.manifest);
        assert_eq!(image.target.annotations[ANNOTATION_REF_NAME], "1");
        assert_eq!(
            image.config_file.rootfs.diff_ids,
            [image.layers[0].digest.clone()]
        );
        assert_eq!(image.blobs.len(), 3);
        assert_eq!(
            image.blobs[2].labels[&format!("{GC_REF_CONTENT}.config")],
            image.config.digest
        );

        // The layer keeps the symlink as a symlink, and is sorted.
        let BlobSource::File(layer) = &image.blobs[0].source else {
            panic!("layer not a file")
        };
        let mut tar = tar::Archive::new(File::open(layer).unwrap());
        let entries: Vec<(String, bool)> = tar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type().is_symlink(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("bin".into(), false),
                ("bin/alias".into(), true),
                ("bin/tool".into(), false),
                ("etc".into(), false),
                ("etc/passwd".into(), false)
            ]
        );

        // Same tree, same layer.
        let again = out.path().join("again.tar");
        write_rootfs_layout(fs.path(), "tool:1", File::create(&again).unwrap()).unwrap();
        let again = Archive::extract(&again, Limits::default())
            .unwrap()
            .images(None)
            .unwrap();
        assert_eq!(again[0].layers, image.layers);

        let renamed = archive.images(Some("other")).unwrap();
        assert_eq!(renamed[0].names, ["docker.io/library/other:latest"]);
    }

    /// A `docker save` archive built by hand, with the layer behind a
    /// symlink as Docker 25 writes it.
    fn docker_save(dir: &Path, tags: &[&str]) -> PathBuf {
        let mut layer = Vec::new();
        {
            let mut b = tar::Builder::new(&mut layer);
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_mode(0o644);
            b.append_data(&mut h, "hello", &b"hi\n"[..]).unwrap();
            b.finish().unwrap();
        }
        let diff_id = sha256_digest(&layer);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
        );
        let manifest = serde_json::json!([{
            "Config": "cfg.json", "RepoTags": tags, "Layers": ["abc/layer.tar"]
        }])
        .to_string();
        let path = dir.join("save.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("blobs/sha256/l", &layer);
        add("cfg.json", config.as_bytes());
        add("manifest.json", manifest.as_bytes());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "abc/layer.tar", "../blobs/sha256/l")
            .unwrap();
        b.finish().unwrap();
        path
    }

    #[test]
    fn docker_save_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = docker_save(dir.path(), &["busybox:1", "busybox"]);
        let images = Archive::extract(&path, Limits::default())
            .unwrap()
            .images(None)
            .unwrap();
        assert_eq!(images.len(), 1);
        let image = &images[0];
        assert_eq!(
            image.names,
            [
                "docker.io/library/busybox:1",
                "docker.io/library/busybox:latest"
            ]
        );
        assert_eq!(image.layers[0].media_type, MEDIA_OCI_LAYER);
        assert_eq!(image.layers[0].digest, image.config_file.rootfs.diff_ids[0]);
        let BlobSource::Bytes(manifest) = &image.blobs[2].source else {
            panic!("manifest not generated")
        };
        assert_eq!(sha256_digest(manifest), image.manifest.digest);
        match parse_manifest_or_index(manifest, &Limits::default()).unwrap() {
            ManifestOrIndex::Manifest { config, layers } => {
                assert_eq!(config, image.config);
                assert_eq!(layers, image.layers);
            }
            other => panic!("expected a manifest, got {other:?}"),
        }

        let unnamed = docker_save(dir.path(), &[]);
        let archive = Archive::extract(&unnamed, Limits::default()).unwrap();
        assert!(matches!(
            archive.images(None),
            Err(RuntimeError::InvalidImage(_))
        ));
        assert_eq!(
            archive.images(Some("x:y")).unwrap()[0].names,
            ["docker.io/library/x:y"]
        );
    }

    #[test]
    fn limits_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let path = docker_save(dir.path(), &["a"]);
        let small = Limits {
            archive_bytes_max: 100,
            ..Limits::default()
        };
        let err = Archive::extract(&path, small).err().unwrap();
        assert!(err.to_string().contains("more than 100 bytes"), "{err}");
        let small_json = Limits {
            json_bytes_max: 10,
            ..Limits::default()
        };
        let err = Archive::extract(&path, small_json)
            .unwrap()
            .images(None)
            .unwrap_err();
        assert!(err.to_string().contains("allowed for JSON"), "{err}");
        let few = Limits {
            archive_entries_max: 2,
            ..Limits::default()
        };
        assert!(Archive::extract(&path, few).is_err());
    }

    #[test]
    fn archive_paths_stay_inside() {
        assert_eq!(clean_path("./a//b/").as_deref(), Some("a/b"));
        assert_eq!(clean_path("a/../b").as_deref(), Some("b"));
        assert_eq!(clean_path("../x"), None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loop.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        for (from, to) in [("a", "b"), ("b", "a")] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, from, to).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        let archive = Archive::extract(&path, Limits::default()).unwrap();
        assert!(archive.file("a").is_err());
        assert!(archive.images(None).is_err());
    }

    /// index.json → multi-platform index → manifest, named only by a bare
    /// tag; the other platform's manifest is not in the archive.
    #[test]
    fn nested_index_resolves_to_host_platform() {
        let dir = tempfile::tempdir().unwrap();
        let layer = b"not really a tar, never unpacked here".to_vec();
        let config = format!(
            r#"{{"architecture":"{}","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            host_arch(),
            sha256_digest(&layer)
        );
        let desc = |media_type: &str, bytes: &[u8]| Descriptor {
            media_type: media_type.into(),
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
            ..Descriptor::default()
        };
        let layer_desc = desc(MEDIA_OCI_LAYER_GZIP, &layer);
        let config_desc = desc(MEDIA_OCI_CONFIG, config.as_bytes());
        let manifest = manifest_json(&config_desc, std::slice::from_ref(&layer_desc)).unwrap();
        let platform = |arch: &str| {
            Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            })
        };
        let other = Descriptor {
            platform: platform("s390x"),
            ..desc(MEDIA_OCI_MANIFEST, b"elsewhere")
        };
        let host = Descriptor {
            platform: platform(host_arch()),
            ..desc(MEDIA_OCI_MANIFEST, &manifest)
        };
        let nested = serde_json::to_vec(&ManifestDoc {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_INDEX.into()),
            manifests: vec![other.clone(), host.clone()],
            ..ManifestDoc::default()
        })
        .unwrap();
        let nested_desc = Descriptor {
            annotations: BTreeMap::from([(ANNOTATION_REF_NAME.to_string(), "v1".to_string())]),
            ..desc(MEDIA_OCI_INDEX, &nested)
        };
        let index = serde_json::to_vec(&ManifestDoc {
            schema_version: 2,
            manifests: vec![nested_desc.clone()],
            ..ManifestDoc::default()
        })
        .unwrap();

        let path = dir.path().join("multi.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add("index.json", &index);
        for bytes in [&nested[..], &manifest[..], config.as_bytes(), &layer[..]] {
            add(
                &format!("blobs/sha256/{}", &sha256_digest(bytes)[7..]),
                bytes,
            );
        }
        b.finish().unwrap();
        drop(b);

        let archive = Archive::extract(&path, Limits::default()).unwrap();
        // A bare tag is no name.
        assert!(archive.images(None).is_err());
        let images = archive.images(Some("multi:v1")).unwrap();
        let image = &images[0];
        assert_eq!(image.target.digest, nested_desc.digest);
        assert_eq!(image.manifest.digest, host.digest);
        assert_eq!(image.layers, std::slice::from_ref(&layer_desc));
        let order: Vec<&str> = image.blobs.iter().map(|b| b.desc.digest.as_str()).collect();
        assert_eq!(
            order,
            [
                &layer_desc.digest,
                &config_desc.digest,
                &host.digest,
                &nested_desc.digest
            ]
        );
        let index_labels = &image.blobs[3].labels;
        assert_eq!(index_labels[&format!("{GC_REF_CONTENT}.m.0")], other.digest);
        assert_eq!(index_labels[&format!("{GC_REF_CONTENT}.m.1")], host.digest);
    }

    #[test]
    fn garbage_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.tar");
        std::fs::write(&path, vec![7u8; 2048]).unwrap();
        let result = Archive::extract(&path, Limits::default()).and_then(|a| a.images(None));
        assert!(matches!(result, Err(RuntimeError::InvalidImage(_))));
    }
}

//! An image archive unpacked into a temporary directory within limits: the
//! files in it, and the images found in it (by [`super::oci_layout`] or
//! [`super::docker_save`]), merged and named.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use super::{invalid, io_err, normalize_name, Descriptor, ImageConfigFile, Limits, GZIP_MAGIC};
use crate::Result;

/// Symlinks and hard links followed inside an archive before giving up.
const LINK_HOPS_MAX: usize = 8;

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
    pub(super) limits: Limits,
}

/// `./a//b/` → `a/b`; `None` when it climbs out of the archive.
pub(super) fn clean_path(path: &str) -> Option<String> {
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
            && magic == GZIP_MAGIC;
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

    pub(super) fn read_json(&self, name: &str) -> Result<Vec<u8>> {
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
}

pub(super) fn check_layers(config: &ImageConfigFile, layers: &[Descriptor]) -> Result<()> {
    if config.rootfs.diff_ids.len() != layers.len() {
        return Err(invalid(format!(
            "image has {} layers but its config lists {} diff ids",
            layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RuntimeError;

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

    #[test]
    fn garbage_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.tar");
        std::fs::write(&path, vec![7u8; 2048]).unwrap();
        let result = Archive::extract(&path, Limits::default()).and_then(|a| a.images(None));
        assert!(matches!(result, Err(RuntimeError::InvalidImage(_))));
    }
}

//! A one-layer OCI image layout tarball built from a root filesystem (what
//! `shoal image import --rootfs` sends).

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use super::documents::{manifest_json, ManifestDoc};
use super::{
    host_arch, invalid, io_err, normalize_name, now_epoch_s, rfc3339, sha256_digest, Descriptor,
    ExecConfig, ImageConfigFile, Platform, RootFs, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME,
    DEFAULT_PATH_ENV, MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX, MEDIA_OCI_LAYER, MEDIA_OCI_MANIFEST,
};
use crate::{Result, RuntimeError};

/// Directory depth `write_rootfs_layout` descends to.
const ROOTFS_DEPTH_MAX: usize = 256;

/// Writes a one-layer OCI image layout tarball of the directory `rootfs` to
/// `out`, named `name` (normalized). The layer keeps symlinks, modes and
/// owners; the result only varies with the config's creation time.
pub fn write_rootfs_layout(rootfs: &Path, name: &str, out: impl Write) -> Result<()> {
    write_layers_layout(&[rootfs], name, out)
}

/// Writes an OCI image layout tarball with one layer per directory of
/// `layers`, the first at the bottom (a file in a later one hides the same
/// path below it), named `name` (normalized).
pub fn write_layers_layout(layers: &[&Path], name: &str, out: impl Write) -> Result<()> {
    let full_name = normalize_name(name)?;
    let reference = oci_spec::distribution::Reference::from_str(&full_name)
        .map_err(|e| invalid(format!("image name {full_name:?}: {e}")))?;

    let mut files = Vec::with_capacity(layers.len());
    let mut layer_descs = Vec::with_capacity(layers.len());
    for rootfs in layers {
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
        let mut hasher = Sha256::new();
        let size = std::io::copy(&mut layer, &mut HashWriter(&mut hasher))
            .map_err(io_err("hashing the layer"))?;
        layer.rewind().map_err(io_err("reading the layer back"))?;
        layer_descs.push(Descriptor {
            media_type: MEDIA_OCI_LAYER.to_string(),
            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
            size,
            ..Descriptor::default()
        });
        files.push(layer);
    }

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
            diff_ids: layer_descs.iter().map(|l| l.digest.clone()).collect(),
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
    let manifest_bytes = manifest_json(&config, &layer_descs)?;
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
    for (desc, layer) in layer_descs.iter().zip(files.iter_mut()) {
        add(&blob(desc), desc.size, layer)?;
    }
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
    use std::fs::File;

    use super::*;
    use crate::image::{Archive, BlobSource, Limits, GC_REF_CONTENT};

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
}

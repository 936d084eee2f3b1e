//! The images of a `docker save` archive: `manifest.json` with its configs
//! and layer files, and the OCI manifest made for each image.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::archive::check_layers;
use super::documents::{manifest_gc_labels, manifest_json};
use super::{
    invalid, io_err, normalize_name, parse_config, sha256_digest, Archive, ArchiveImage, Blob,
    BlobSource, Descriptor, GZIP_MAGIC, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_MANIFEST,
};
use crate::Result;

/// How much of a layer file is read at a time while hashing it.
const HASH_CHUNK_BYTES: usize = 1 << 20;

impl Archive {
    pub(super) fn docker_images(&self) -> Result<Vec<ArchiveImage>> {
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

/// Digest, size and media type of a layer file; gzip is recognized by its
/// magic number since `docker save` does not say.
fn describe_layer(path: &Path) -> std::io::Result<Descriptor> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK_BYTES];
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
    let media_type = if head == GZIP_MAGIC {
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::image::{parse_manifest_or_index, Limits, ManifestOrIndex};
    use crate::RuntimeError;

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
}

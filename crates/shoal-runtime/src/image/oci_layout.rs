//! The images of an OCI image layout: `index.json` followed through nested
//! indexes down to this platform's manifest, with every blob checked against
//! its descriptor.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::archive::check_layers;
use super::documents::{index_gc_labels, manifest_gc_labels};
use super::{
    check_digest, invalid, io_err, normalize_name, parse_config, parse_manifest_or_index,
    pick_manifest, sha256_digest, Archive, ArchiveImage, Blob, BlobSource, Descriptor,
    ManifestOrIndex, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, INDEX_DEPTH_MAX,
};
use crate::Result;

impl Archive {
    pub(super) fn oci_images(&self) -> Result<Vec<ArchiveImage>> {
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

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;
    use crate::image::documents::{manifest_json, ManifestDoc};
    use crate::image::{
        host_arch, Limits, Platform, GC_REF_CONTENT, MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX,
        MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_MANIFEST,
    };

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
}

//! The JSON documents of an image (descriptors, manifests, indexes, configs):
//! their shapes, parsing them within limits, and writing manifests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::identity::check_digest;
use super::{invalid, Limits, MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};
use crate::Result;

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
pub(super) struct ManifestDoc {
    #[serde(default)]
    pub(super) schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) manifests: Vec<Descriptor>,
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

pub(super) fn manifest_json(config: &Descriptor, layers: &[Descriptor]) -> Result<Vec<u8>> {
    let doc = ManifestDoc {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.to_string()),
        config: Some(config.clone()),
        layers: layers.to_vec(),
        manifests: Vec::new(),
    };
    serde_json::to_vec(&doc).map_err(|e| invalid(format!("encoding manifest: {e}")))
}

/// The label prefix that makes containerd's garbage collector keep a
/// blob's children.
pub const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";

pub(super) fn manifest_gc_labels(
    config: &Descriptor,
    layers: &[Descriptor],
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(format!("{GC_REF_CONTENT}.config"), config.digest.clone())]);
    for (i, l) in layers.iter().enumerate() {
        labels.insert(format!("{GC_REF_CONTENT}.l.{i}"), l.digest.clone());
    }
    labels
}

pub(super) fn index_gc_labels(manifests: &[Descriptor]) -> BTreeMap<String, String> {
    manifests
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("{GC_REF_CONTENT}.m.{i}"), m.digest.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

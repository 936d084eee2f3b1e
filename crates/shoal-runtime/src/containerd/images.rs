//! [`ImageStore`] for containerd: image records, what `run` needs resolved
//! from them (cached by manifest digest), and archives imported as content,
//! snapshots and records.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_client::services::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, ListImagesRequest,
    UpdateImageRequest,
};
use containerd_client::tonic::Code;

use super::content::{from_cd, to_cd};
use super::leases::Lease;
use super::{cd_err, found, Containerd};
use crate::image::{
    self, parse_config, parse_manifest_or_index, pick_manifest, Archive, ArchiveImage, Descriptor,
    ExecConfig, Limits, ManifestOrIndex,
};
use crate::registry::RegistryAccess;
use crate::{ErrorKind, ImageInfo, ImageResolution, ImageStore, Result, RuntimeError};

/// Images whose resolution is kept; the cache is emptied when it is full.
const IMAGE_CACHE_ENTRIES_MAX: usize = 64;

/// What `run` needs from an image, resolved from its manifest and config.
#[derive(Debug)]
pub(super) struct ResolvedImage {
    pub(super) config: Descriptor,
    pub(super) layers: Vec<Descriptor>,
    pub(super) diff_ids: Vec<String>,
    pub(super) exec: ExecConfig,
}

impl ResolvedImage {
    pub(super) fn size_bytes(&self) -> u64 {
        self.config.size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

impl From<&ArchiveImage> for ResolvedImage {
    fn from(image: &ArchiveImage) -> Self {
        ResolvedImage {
            config: image.config.clone(),
            layers: image.layers.clone(),
            diff_ids: image.config_file.rootfs.diff_ids.clone(),
            exec: image.config_file.config.clone().unwrap_or_default(),
        }
    }
}

impl Containerd {
    /// From an image record's target down to the platform manifest and its
    /// config.
    pub(super) async fn resolve(&self, target: &Descriptor) -> Result<Arc<ResolvedImage>> {
        if let Some(hit) = self.cache().get(&target.digest) {
            return Ok(hit.clone());
        }
        let limits = Limits::default();
        let mut desc = target.clone();
        for _ in 0..=image::INDEX_DEPTH_MAX {
            match parse_manifest_or_index(&self.read_json_blob(&desc).await?, &limits)? {
                ManifestOrIndex::Index { manifests } => desc = pick_manifest(&manifests)?.clone(),
                ManifestOrIndex::Manifest { config, layers } => {
                    let file = parse_config(&self.read_json_blob(&config).await?, &limits)?;
                    if file.rootfs.diff_ids.len() != layers.len() {
                        return Err(RuntimeError::InvalidImage(format!(
                            "manifest {} has {} layers but its config {} diff ids",
                            desc.digest,
                            layers.len(),
                            file.rootfs.diff_ids.len()
                        )));
                    }
                    let resolved = Arc::new(ResolvedImage {
                        config,
                        layers,
                        diff_ids: file.rootfs.diff_ids,
                        exec: file.config.unwrap_or_default(),
                    });
                    let mut cache = self.cache();
                    if cache.len() >= IMAGE_CACHE_ENTRIES_MAX {
                        cache.clear();
                    }
                    cache.insert(target.digest.clone(), resolved.clone());
                    return Ok(resolved);
                }
            }
        }
        Err(RuntimeError::InvalidImage(format!(
            "image {} nests indexes deeper than {}",
            target.digest,
            image::INDEX_DEPTH_MAX
        )))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ResolvedImage>>> {
        // The map holds no invariant a panicking holder could break.
        self.resolved
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) async fn image_record(&self, name: &str) -> Result<Image> {
        let normalized = image::normalize_name(name).unwrap_or_else(|_| name.to_string());
        let reply = self
            .images_client()
            .get(self.req(GetImageRequest { name: normalized }))
            .await;
        match found(reply).map_err(cd_err(format!("looking up image {name}")))? {
            Some(r) => r
                .into_inner()
                .image
                .ok_or_else(|| RuntimeError::ImageNotFound(name.to_string())),
            None => Err(RuntimeError::ImageNotFound(name.to_string())),
        }
    }

    /// Creates or replaces the record `name`, with `labels` (an import
    /// passes none, so a pulled name imported by hand counts as imported).
    pub(super) async fn put_image(
        &self,
        name: &str,
        target: &Descriptor,
        labels: HashMap<String, String>,
    ) -> Result<Image> {
        let image = Image {
            name: name.to_string(),
            labels,
            target: Some(to_cd(target)?),
            created_at: None,
            updated_at: None,
        };
        let created = self
            .images_client()
            .create(self.req(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await;
        let stored = match created {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == Code::AlreadyExists => {
                self.images_client()
                    .update(self.req(UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    }))
                    .await
                    .map_err(cd_err(format!("updating image {name}")))?
                    .into_inner()
                    .image
            }
            Err(s) => return Err(cd_err(format!("creating image {name}"))(s)),
        };
        stored.ok_or_else(|| {
            RuntimeError::containerd(
                ErrorKind::Internal,
                format!("containerd returned no record for image {name}"),
            )
        })
    }

    async fn store_images(&self, lease: &Lease, images: &[ArchiveImage]) -> Result<Vec<ImageInfo>> {
        let mut infos = Vec::new();
        for image in images {
            let resolved = ResolvedImage::from(image);
            let config_labels = self.config_labels(&resolved)?;
            for blob in &image.blobs {
                let mut labels = blob.labels.clone();
                if blob.desc.digest == image.config.digest {
                    labels.extend(config_labels.clone());
                }
                self.write_blob(lease, blob, &labels).await?;
            }
            self.unpack(lease, &resolved).await?;
            // Named only once complete, so a visible image is always runnable.
            for name in &image.names {
                let record = self.put_image(name, &image.target, HashMap::new()).await?;
                infos.push(ImageInfo {
                    name: name.clone(),
                    digest: image.target.digest.clone(),
                    size_bytes: image.size_bytes(),
                    created_s: record.created_at.map(|t| t.seconds),
                    pulled: false,
                });
            }
        }
        Ok(infos)
    }
}

impl ImageStore for Containerd {
    async fn images(&self) -> Result<Vec<ImageInfo>> {
        let records = self
            .images_client()
            .list(self.req(ListImagesRequest {
                filters: Vec::new(),
            }))
            .await
            .map_err(cd_err("listing images"))?
            .into_inner()
            .images;
        let mut infos = Vec::with_capacity(records.len());
        for record in records {
            let Some(target) = record.target.as_ref() else {
                continue;
            };
            let target = from_cd(target)?;
            // One unreadable image must not hide the others.
            let size_bytes = match self.resolve(&target).await {
                Ok(image) => image.size_bytes(),
                Err(e) => {
                    tracing::warn!(image = %record.name, error = %e, "image content unreadable");
                    target.size
                }
            };
            infos.push(ImageInfo {
                name: record.name,
                digest: target.digest,
                size_bytes,
                created_s: record.created_at.map(|t| t.seconds),
                pulled: record.labels.contains_key(super::pull::LABEL_PULLED_FROM),
            });
        }
        Ok(infos)
    }

    async fn pull(&self, reference: &str, access: &RegistryAccess) -> Result<ImageInfo> {
        self.pull_image(reference, access).await
    }

    async fn resolve(&self, reference: &str, access: &RegistryAccess) -> Result<ImageResolution> {
        self.resolve_image(reference, access).await
    }

    async fn remove_image(&self, name: &str) -> Result<()> {
        // Synchronous: the garbage collector has run when the call returns.
        let mut request = self.req(DeleteImageRequest {
            name: name.to_string(),
            sync: true,
            target: None,
        });
        request.set_timeout(super::RPC_TIMEOUT * 4);
        match self.images_client().delete(request).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Err(RuntimeError::containerd(
                ErrorKind::NotFound,
                format!("no image {name}"),
            )),
            Err(s) => Err(cd_err(format!("removing image {name}"))(s)),
        }
    }

    fn pull_progress(&self, reference: &str) -> Option<crate::PullProgress> {
        self.progress_of(reference)
    }

    fn pulls(&self) -> Vec<(String, crate::PullProgress)> {
        self.pulls_under_way()
    }

    fn fetch_blobs_through(&self, peers: std::sync::Arc<dyn crate::registry::BlobPeers>) {
        self.registries.fetch_through(peers);
    }

    async fn blob(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<Option<(u64, crate::registry::BlobBody)>> {
        self.read_blob(digest, offset).await
    }

    async fn import(&self, archive: PathBuf, name: Option<String>) -> Result<Vec<ImageInfo>> {
        let (archive, images) = tokio::task::spawn_blocking(move || {
            let archive = Archive::extract(&archive, Limits::default())?;
            let images = archive.images(name.as_deref())?;
            Ok::<_, RuntimeError>((archive, images))
        })
        .await
        .map_err(|e| {
            RuntimeError::containerd(ErrorKind::Internal, format!("reading the archive: {e}"))
        })??;
        let lease = self.lease_create().await?;
        let stored = self.store_images(&lease, &images).await;
        let released = self.lease_delete(&lease).await;
        // Removing the extracted files is blocking work too.
        let _ = tokio::task::spawn_blocking(move || drop(archive)).await;
        let infos = stored?;
        released?;
        Ok(infos)
    }
}

//! Images pulled from registries into containerd: the manifest chain
//! resolved for this node's platform, every blob streamed into the content
//! store (layers in parallel, with a bound) and checked as it streams, the
//! layers unpacked, and the image named only once all of it is there.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tokio_util::io::StreamReader;

use super::content::Reader;
use super::images::ResolvedImage;
use super::leases::Lease;
use super::Containerd;
use crate::image::{
    self, parse_config, parse_manifest_or_index, pick_manifest, Descriptor, Limits,
    ManifestOrIndex, Platform, GC_REF_CONTENT,
};
use crate::registry::{ImageRef, RegistryAccess};
use crate::{ImageInfo, ImageResolution, Result, RuntimeError};

/// Label on the records of pulled images: the registry they came from.
/// Records without it were imported by hand.
pub const LABEL_PULLED_FROM: &str = "io.shoal.pulled-from";

/// Bytes of image configs read while resolving that are kept for the pull
/// that usually follows.
const CONFIGS_KEPT_BYTES_MAX: usize = 8 << 20;

/// Time one pull may take in all (each registry connection is also cut
/// after [`crate::registry::STALL_TIMEOUT`] without a byte).
pub const PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Layers of one image downloaded at once (containerd and dockerd use 3).
pub const LAYERS_IN_FLIGHT_MAX: usize = 3;

/// How far one pull is: per layer, bytes stored, counted as they stream.
pub(super) struct Counters {
    started: std::time::Instant,
    layers: Vec<(String, u64, AtomicU64)>,
    /// Bytes that came over the network (not those already here).
    fetched: AtomicU64,
}

impl Counters {
    fn layer(&self, digest: &str) -> Option<usize> {
        self.layers.iter().position(|(d, _, _)| d == digest)
    }

    /// Counts `len` bytes of layer `index` as they arrive.
    fn add(&self, index: Option<usize>, len: u64) {
        if let Some((_, _, done)) = index.and_then(|i| self.layers.get(i)) {
            done.fetch_add(len, Ordering::Relaxed);
        }
        self.fetched.fetch_add(len, Ordering::Relaxed);
    }

    fn finish(&self, index: Option<usize>) {
        if let Some((_, total, done)) = index.and_then(|i| self.layers.get(i)) {
            done.store(*total, Ordering::Relaxed);
        }
    }

    fn progress(&self) -> crate::PullProgress {
        let layers: Vec<crate::LayerProgress> = self
            .layers
            .iter()
            .map(|(digest, total, done)| crate::LayerProgress {
                digest: digest.clone(),
                done_bytes: done.load(Ordering::Relaxed).min(*total),
                total_bytes: *total,
            })
            .collect();
        let elapsed_ms = self.started.elapsed().as_millis().max(1) as u64;
        crate::PullProgress {
            done_bytes: layers.iter().map(|l| l.done_bytes).sum(),
            total_bytes: layers.iter().map(|l| l.total_bytes).sum(),
            bytes_per_s: self.fetched.load(Ordering::Relaxed).saturating_mul(1000) / elapsed_ms,
            layers,
        }
    }
}

/// Takes a pull's counters out of the table when the pull ends, however.
struct Tracked<'a> {
    table: &'a std::sync::Mutex<HashMap<String, Arc<Counters>>>,
    name: String,
    counters: Arc<Counters>,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table
            .get(&self.name)
            .is_some_and(|c| Arc::ptr_eq(c, &self.counters))
        {
            table.remove(&self.name);
        }
    }
}

/// What a pull found in the registry, before any of it is stored.
struct Plan {
    /// The record's target: the index, or the manifest when there is none.
    target: Descriptor,
    /// Documents to store, children before parents, with their GC labels.
    documents: Vec<(Descriptor, bytes::Bytes, BTreeMap<String, String>)>,
    image: ResolvedImage,
}

impl Containerd {
    /// Pulls `reference` (a tag or a digest) from its registry and names
    /// the image with its normalized reference. A tag is resolved anew;
    /// blobs already here are not fetched again, so pulls of one name wait
    /// for each other and the second fetches only the manifest.
    pub(super) async fn pull_image(
        &self,
        reference: &str,
        access: &RegistryAccess,
    ) -> Result<ImageInfo> {
        let reference = ImageRef::parse(reference)?;
        let name = reference.to_string();
        let gate = self.pull_gate(&name);
        let _turn = gate.lock().await;
        let too_long = || RuntimeError::Registry {
            kind: crate::ErrorKind::Transient,
            message: format!("{name}: the pull took longer than {PULL_TIMEOUT:?}"),
        };
        let plan = tokio::time::timeout(PULL_TIMEOUT, self.plan_pull(&reference, access))
            .await
            .map_err(|_| too_long())??;
        let counters = Arc::new(Counters {
            started: std::time::Instant::now(),
            layers: plan
                .image
                .layers
                .iter()
                .map(|l| (l.digest.clone(), l.size, AtomicU64::new(0)))
                .collect(),
            fetched: AtomicU64::new(0),
        });
        let _tracked = self.track(&name, counters.clone());
        let lease = self.lease_create().await?;
        let stored = tokio::time::timeout(
            PULL_TIMEOUT,
            self.store_pull(&lease, &reference, access, &plan, &counters),
        )
        .await
        .unwrap_or_else(|_| Err(too_long()));
        let named = match stored {
            Ok(()) => {
                let labels = HashMap::from([(
                    LABEL_PULLED_FROM.to_string(),
                    reference.registry().to_string(),
                )]);
                self.put_image(&name, &plan.target, labels).await
            }
            Err(e) => Err(e),
        };
        let released = self.lease_delete(&lease).await;
        let record = named?;
        released?;
        tracing::info!(image = %name, digest = %plan.target.digest, "image pulled");
        Ok(ImageInfo {
            name,
            digest: plan.target.digest.clone(),
            size_bytes: plan.image.size_bytes(),
            created_s: record.created_at.map(|t| t.seconds),
            pulled: true,
        })
    }

    /// An image imported by hand here under the reference's name, else
    /// what its registry serves for it (the manifest or index, and the
    /// platforms it offers).
    pub(super) async fn resolve_image(
        &self,
        reference: &str,
        access: &RegistryAccess,
    ) -> Result<ImageResolution> {
        let reference = ImageRef::parse(reference)?;
        let name = reference.to_string();
        match self.image_record(&name).await {
            Ok(record) if !record.labels.contains_key(LABEL_PULLED_FROM) => {
                if let Some(target) = &record.target {
                    return Ok(ImageResolution {
                        name,
                        digest: target.digest.clone(),
                        local: true,
                        platforms: Vec::new(),
                    });
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == crate::ErrorKind::ImageMissing => {}
            Err(e) => return Err(e),
        }
        let limits = Limits::default();
        let root = self.registries.manifest(&reference, access).await?;
        let platforms = match parse_manifest_or_index(&root.bytes, &limits)? {
            ManifestOrIndex::Index { manifests } => {
                manifests.into_iter().filter_map(|m| m.platform).collect()
            }
            ManifestOrIndex::Manifest { config, .. } => {
                let bytes = self
                    .registries
                    .small_blob(&reference, access, &config)
                    .await?;
                let file = parse_config(&bytes, &limits)?;
                // The pull that usually follows takes it from here.
                self.remember_config(&config.digest, bytes);
                vec![Platform {
                    os: file.os,
                    architecture: file.architecture,
                    variant: None,
                }]
            }
        };
        Ok(ImageResolution {
            name,
            digest: root.digest,
            local: false,
            platforms,
        })
    }

    /// The manifest chain down to this node's platform, and the config.
    async fn plan_pull(&self, reference: &ImageRef, access: &RegistryAccess) -> Result<Plan> {
        let limits = Limits::default();
        let root = self.registries.manifest(reference, access).await?;
        let target = root.descriptor();
        let mut documents = Vec::new();
        let mut current = root;
        for _ in 0..=image::INDEX_DEPTH_MAX {
            match parse_manifest_or_index(&current.bytes, &limits)? {
                ManifestOrIndex::Index { manifests } => {
                    // Only this node's architecture: another one would
                    // not run here.
                    let (position, picked) = pick_manifest(&manifests)
                        .ok()
                        .filter(|picked| {
                            picked
                                .platform
                                .as_ref()
                                .is_none_or(|p| p.architecture == image::host_arch())
                        })
                        .and_then(|picked| {
                            manifests
                                .iter()
                                .position(|m| m.digest == picked.digest)
                                .map(|p| (p, picked.clone()))
                        })
                        .ok_or_else(|| RuntimeError::Registry {
                            kind: crate::ErrorKind::Invalid,
                            message: format!(
                                "{reference}: the index offers no manifest for linux/{}",
                                image::host_arch()
                            ),
                        })?;
                    // Only the manifest this node runs is fetched, so only
                    // it is kept alive by the index.
                    let labels = BTreeMap::from([(
                        format!("{GC_REF_CONTENT}.m.{position}"),
                        picked.digest.clone(),
                    )]);
                    documents.push((current.descriptor(), current.bytes.clone(), labels));
                    current = self
                        .registries
                        .manifest(&reference.at_digest(&picked.digest), access)
                        .await?;
                }
                ManifestOrIndex::Manifest { config, layers } => {
                    // A config this node holds already, or read while
                    // resolving the reference, is not fetched again.
                    let config_bytes = match self.remembered_config(&config.digest) {
                        Some(bytes) => bytes,
                        None => match self.read_json_blob(&config).await {
                            Ok(bytes) => bytes::Bytes::from(bytes),
                            Err(_) => {
                                self.registries
                                    .small_blob(reference, access, &config)
                                    .await?
                            }
                        },
                    };
                    let file = parse_config(&config_bytes, &limits)?;
                    if file.rootfs.diff_ids.len() != layers.len() {
                        return Err(RuntimeError::InvalidImage(format!(
                            "{reference}: manifest {} has {} layers but its config {} diff ids",
                            current.digest,
                            layers.len(),
                            file.rootfs.diff_ids.len()
                        )));
                    }
                    let mut manifest_labels = BTreeMap::from([(
                        format!("{GC_REF_CONTENT}.config"),
                        config.digest.clone(),
                    )]);
                    for (i, layer) in layers.iter().enumerate() {
                        manifest_labels
                            .insert(format!("{GC_REF_CONTENT}.l.{i}"), layer.digest.clone());
                    }
                    let image = ResolvedImage {
                        config: config.clone(),
                        layers,
                        diff_ids: file.rootfs.diff_ids,
                        exec: file.config.unwrap_or_default(),
                    };
                    let config_labels = self.config_labels(&image)?;
                    // Children first: the config, then the manifest, then
                    // the indexes from the innermost out.
                    documents.reverse();
                    documents.insert(
                        0,
                        (current.descriptor(), current.bytes.clone(), manifest_labels),
                    );
                    documents.insert(0, (config, config_bytes, config_labels));
                    return Ok(Plan {
                        target,
                        documents,
                        image,
                    });
                }
            }
        }
        Err(RuntimeError::InvalidImage(format!(
            "{reference}: indexes nest deeper than {}",
            image::INDEX_DEPTH_MAX
        )))
    }

    /// Layers (streamed from the registry, [`LAYERS_IN_FLIGHT_MAX`] at
    /// once), each unpacked in order as soon as it and those below it are
    /// stored, then the documents.
    async fn store_pull(
        &self,
        lease: &Lease,
        reference: &ImageRef,
        access: &RegistryAccess,
        plan: &Plan,
        counters: &Arc<Counters>,
    ) -> Result<()> {
        // Each layer says when it is stored, so that it is unpacked while
        // the layers after it still download.
        let (stored, waits): (Vec<_>, Vec<_>) = plan
            .image
            .layers
            .iter()
            .map(|_| tokio::sync::oneshot::channel::<()>())
            .unzip();
        // Made before they are polled, so that the stream holds futures,
        // not a closure over borrowed layers.
        let fetches: Vec<_> = plan
            .image
            .layers
            .iter()
            .zip(stored)
            .map(|(layer, stored)| async move {
                self.fetch_layer(lease, reference, access, layer, counters)
                    .await?;
                let _ = stored.send(());
                Ok::<(), RuntimeError>(())
            })
            .collect();
        let downloads = futures::stream::iter(fetches)
            .buffer_unordered(LAYERS_IN_FLIGHT_MAX)
            .try_collect::<Vec<()>>();
        let mut waits: Vec<Option<tokio::sync::oneshot::Receiver<()>>> =
            waits.into_iter().map(Some).collect();
        // A layer whose download failed or was dropped never says so: the
        // unpack stops there, and the download's error is the pull's.
        let unpacked = self.unpack_as_ready(lease, &plan.image, |i| {
            let wait = waits.get_mut(i).and_then(Option::take);
            async move {
                match wait {
                    Some(wait) => wait.await.is_ok(),
                    None => false,
                }
            }
        });
        tokio::try_join!(downloads, unpacked)?;
        for (desc, bytes, labels) in &plan.documents {
            let bytes = bytes.clone();
            self.write_content(
                lease,
                desc,
                labels,
                super::bulk_timeout(desc.size),
                || async move { Ok(Box::new(std::io::Cursor::new(bytes)) as Reader) },
            )
            .await?;
        }
        Ok(())
    }

    /// One layer streamed from the registry into the content store, unless
    /// it is there already.
    async fn fetch_layer(
        &self,
        lease: &Lease,
        reference: &ImageRef,
        access: &RegistryAccess,
        layer: &Descriptor,
        counters: &Arc<Counters>,
    ) -> Result<()> {
        let index = counters.layer(&layer.digest);
        // A registry read may stall and resume: the write waits for the
        // whole pull's deadline, not for containerd's pace.
        self.write_content(lease, layer, &BTreeMap::new(), PULL_TIMEOUT, || async {
            let counting = counters.clone();
            let stream = self
                .registries
                .blob(reference, access, layer)
                .inspect(move |chunk| {
                    if let Ok(chunk) = chunk {
                        counting.add(index, chunk.len() as u64);
                    }
                });
            Ok(Box::new(StreamReader::new(Box::pin(stream))) as Reader)
        })
        .await?;
        // Stored, whether it streamed or was here already.
        counters.finish(index);
        Ok(())
    }

    fn track(&self, name: &str, counters: Arc<Counters>) -> Tracked<'_> {
        let mut table = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        table.insert(name.to_string(), counters.clone());
        Tracked {
            table: &self.progress,
            name: name.to_string(),
            counters,
        }
    }

    pub(super) fn pulls_under_way(&self) -> Vec<(String, crate::PullProgress)> {
        let table = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        let mut pulls: Vec<_> = table
            .iter()
            .map(|(name, c)| (name.clone(), c.progress()))
            .collect();
        pulls.sort_by(|a, b| a.0.cmp(&b.0));
        pulls
    }

    pub(super) fn progress_of(&self, reference: &str) -> Option<crate::PullProgress> {
        let name = ImageRef::parse(reference).ok()?.to_string();
        let table = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        table.get(&name).map(|c| c.progress())
    }

    /// Keeps a config blob read while resolving (digest-checked), within
    /// [`CONFIGS_KEPT_BYTES_MAX`], the oldest dropped first.
    fn remember_config(&self, digest: &str, bytes: bytes::Bytes) {
        let mut kept = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if kept.iter().any(|(d, _)| d == digest) {
            return;
        }
        kept.push_back((digest.to_string(), bytes));
        while kept.iter().map(|(_, b)| b.len()).sum::<usize>() > CONFIGS_KEPT_BYTES_MAX {
            kept.pop_front();
        }
    }

    fn remembered_config(&self, digest: &str) -> Option<bytes::Bytes> {
        let kept = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .find(|(d, _)| d == digest)
            .map(|(_, b)| b.clone())
    }

    /// One lock per image name, so that concurrent pulls of one image
    /// fetch it once. Locks nobody holds are dropped as the map grows.
    fn pull_gate(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
        if gates.len() >= super::PULL_GATES_MAX {
            gates.retain(|_, gate| Arc::strong_count(gate) > 1);
        }
        gates.entry(name.to_string()).or_default().clone()
    }
}

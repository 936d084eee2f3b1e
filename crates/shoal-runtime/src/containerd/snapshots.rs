//! Snapshots: image layers unpacked into committed snapshot stacks, and each
//! container's rootfs snapshot on top of its image's stack.

use std::collections::{BTreeMap, HashMap};

use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{ApplyRequest, InfoRequest};
use containerd_client::tonic::Code;
use containerd_client::types::Mount;

use super::content::to_cd;
use super::images::ResolvedImage;
use super::leases::Lease;
use super::{bulk_timeout, cd_err, found, unique_suffix, Containerd};
use crate::image::{chain_ids, Descriptor};
use crate::{ErrorKind, Result, RuntimeError};

const LABEL_GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";
/// Preparing a container's rootfs: one retry for each of the two fixable
/// failures (a leftover snapshot, layers not unpacked).
const PREPARE_ATTEMPTS_MAX: usize = 3;

impl Containerd {
    async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        let request = self.req(StatSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
        });
        let reply = found(self.snapshots().stat(request).await);
        Ok(reply
            .map_err(cd_err(format!("looking up snapshot {key}")))?
            .is_some())
    }

    pub(super) async fn remove_snapshot(&self, key: &str) -> Result<()> {
        let request = self.req(RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
        });
        found(self.snapshots().remove(request).await)
            .map_err(cd_err(format!("removing snapshot {key}")))?;
        Ok(())
    }

    /// Makes the committed snapshot of every layer stack of `image` exist,
    /// applying the layers that are missing.
    pub(super) async fn unpack(&self, lease: &Lease, image: &ResolvedImage) -> Result<()> {
        self.unpack_as_ready(lease, image, |_| std::future::ready(true))
            .await
    }

    /// [`Containerd::unpack`], each layer once `ready(i)` says it is in
    /// the content store (layers still downloading meanwhile); stops
    /// without an error when `ready` says a layer will not come (the
    /// download says why).
    pub(super) async fn unpack_as_ready<F, Fut>(
        &self,
        lease: &Lease,
        image: &ResolvedImage,
        mut ready: F,
    ) -> Result<()>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let chain = chain_ids(&image.diff_ids)?;
        let Some(top) = chain.last() else {
            return Ok(());
        };
        if self.snapshot_exists(top).await? {
            return self
                .lease_add(lease, &format!("snapshots/{}", self.snapshotter), top)
                .await;
        }
        let mut parent = String::new();
        for (i, (layer, chain_id)) in image.layers.iter().zip(&chain).enumerate() {
            if self.snapshot_exists(chain_id).await? {
                self.lease_add(lease, &format!("snapshots/{}", self.snapshotter), chain_id)
                    .await?;
            } else {
                if !ready(i).await {
                    return Ok(());
                }
                self.apply_layer(lease, layer, &image.diff_ids[i], chain_id, &parent)
                    .await?;
            }
            parent = chain_id.clone();
        }
        Ok(())
    }

    async fn apply_layer(
        &self,
        lease: &Lease,
        layer: &Descriptor,
        diff_id: &str,
        chain_id: &str,
        parent: &str,
    ) -> Result<()> {
        let key = format!("shoal-unpack-{}", unique_suffix());
        let prepare = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.clone(),
            parent: parent.to_string(),
            labels: HashMap::new(),
        };
        let mounts = self
            .snapshots()
            .prepare(self.leased(prepare, lease))
            .await
            .map_err(cd_err(format!(
                "preparing a snapshot for layer {}",
                layer.digest
            )))?
            .into_inner()
            .mounts;
        let result = self
            .apply_and_commit(lease, layer, diff_id, chain_id, &key, mounts)
            .await;
        if result.is_err() {
            if let Err(e) = self.remove_snapshot(&key).await {
                tracing::warn!(key, error = %e, "removing the snapshot of a failed unpack");
            }
        }
        result
    }

    async fn apply_and_commit(
        &self,
        lease: &Lease,
        layer: &Descriptor,
        diff_id: &str,
        chain_id: &str,
        key: &str,
        mounts: Vec<Mount>,
    ) -> Result<()> {
        let mut request = self.req(ApplyRequest {
            diff: Some(to_cd(layer)?),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        });
        request.set_timeout(bulk_timeout(layer.size));
        let applied = DiffClient::new(self.channel())
            .apply(request)
            .await
            .map_err(cd_err(format!("applying layer {}", layer.digest)))?
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default();
        if applied != diff_id {
            return Err(RuntimeError::InvalidImage(format!(
                "layer {} unpacks to {applied}, but the image config says {diff_id}",
                layer.digest
            )));
        }
        let commit = CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: chain_id.to_string(),
            key: key.to_string(),
            labels: HashMap::new(),
        };
        match self.snapshots().commit(self.leased(commit, lease)).await {
            Ok(_) => Ok(()),
            // Unpacked concurrently by someone else: theirs is as good.
            Err(s) if s.code() == Code::AlreadyExists => self.remove_snapshot(key).await,
            Err(s) => Err(cd_err(format!("committing snapshot {chain_id}"))(s)),
        }
    }

    /// Unpacks an image found packed at `run` (imported by other tools, or
    /// for another snapshotter), and labels its config so the garbage
    /// collector keeps the result.
    async fn unpack_for_run(&self, image: &ResolvedImage) -> Result<()> {
        let lease = self.lease_create().await?;
        let result = async {
            self.unpack(&lease, image).await?;
            let labels = self.config_labels(image)?;
            let info = self
                .content()
                .info(self.req(InfoRequest {
                    digest: image.config.digest.clone(),
                }))
                .await;
            let info = info.map_err(cd_err(format!("looking up blob {}", image.config.digest)))?;
            self.label_blob(
                &lease,
                info.into_inner().info,
                &image.config.digest,
                &labels,
            )
            .await
        }
        .await;
        let deleted = self.lease_delete(&lease).await;
        result.and(deleted)
    }

    /// The label on an image config that holds its unpacked snapshot.
    pub(super) fn config_labels(&self, image: &ResolvedImage) -> Result<BTreeMap<String, String>> {
        let chain = chain_ids(&image.diff_ids)?;
        Ok(chain
            .last()
            .map(|top| {
                (
                    format!("{LABEL_GC_REF_SNAPSHOT}.{}", self.snapshotter),
                    top.clone(),
                )
            })
            .into_iter()
            .collect())
    }

    pub(super) async fn prepare_rootfs(
        &self,
        id: &str,
        image: &ResolvedImage,
    ) -> Result<Vec<Mount>> {
        let parent = chain_ids(&image.diff_ids)?.pop().unwrap_or_default();
        let (mut cleared, mut unpacked) = (false, false);
        for _ in 0..PREPARE_ATTEMPTS_MAX {
            let prepare = PrepareSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: id.to_string(),
                parent: parent.clone(),
                labels: HashMap::new(),
            };
            match self.snapshots().prepare(self.req(prepare)).await {
                Ok(reply) => return Ok(reply.into_inner().mounts),
                // The container did not exist until just now, so a snapshot
                // with its key is left over from an interrupted run or remove.
                Err(s) if s.code() == Code::AlreadyExists && !cleared => {
                    cleared = true;
                    self.remove_snapshot(id).await?;
                }
                Err(s) if s.code() == Code::NotFound && !unpacked && !parent.is_empty() => {
                    unpacked = true;
                    self.unpack_for_run(image).await?;
                }
                Err(s) => return Err(cd_err(format!("preparing the rootfs snapshot of {id}"))(s)),
            }
        }
        Err(RuntimeError::containerd(
            ErrorKind::Internal,
            format!("preparing the rootfs snapshot of {id} kept failing"),
        ))
    }
}

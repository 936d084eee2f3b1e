//! Leases: what an import writes (blobs, snapshots) is held by a lease,
//! safe from the garbage collector, until the image record references it.
//! A lease dropped before it was deleted (a pull whose caller gave up)
//! deletes itself, so what it held is collected now rather than in a day.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    AddResourceRequest, CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
    Resource,
};
use containerd_client::tonic::metadata::AsciiMetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};

use super::{cd_err, found, unique_suffix, Containerd, RPC_TIMEOUT};
use crate::image;
use crate::{ErrorKind, Result, RuntimeError};

/// Leases expire on their own so that a crash mid-import leaks nothing.
const LEASE_EXPIRY_S: i64 = 24 * 3600;
const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";

pub(super) struct Lease {
    id: String,
    header: AsciiMetadataValue,
    /// What deleting it on drop needs.
    channel: Channel,
    namespace: AsciiMetadataValue,
    deleted: AtomicBool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.deleted.load(Ordering::Acquire) {
            return;
        }
        // Outside a runtime the expiry label still collects it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let id = std::mem::take(&mut self.id);
        let mut request = Request::new(DeleteLeaseRequest {
            id: id.clone(),
            sync: false,
        });
        request
            .metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        request.set_timeout(RPC_TIMEOUT);
        let channel = self.channel.clone();
        runtime.spawn(async move {
            match LeasesClient::new(channel).delete(request).await {
                Ok(_) => tracing::debug!(lease = %id, "a lease left behind was deleted"),
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) => tracing::warn!(
                    lease = %id,
                    error = %status,
                    "could not delete a lease left behind; it expires on its own"
                ),
            }
        });
    }
}

impl Containerd {
    /// A request whose new resources the lease holds until it is deleted.
    pub(super) fn leased<T>(&self, message: T, lease: &Lease) -> Request<T> {
        let mut request = self.req(message);
        request
            .metadata_mut()
            .insert("containerd-lease", lease.header.clone());
        request
    }

    pub(super) async fn lease_create(&self) -> Result<Lease> {
        let id = format!("shoal-{}", unique_suffix());
        let labels = HashMap::from([(
            LABEL_GC_EXPIRE.to_string(),
            image::rfc3339(image::now_epoch_s() + LEASE_EXPIRY_S),
        )]);
        self.leases()
            .create(self.req(CreateLeaseRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(cd_err(format!("creating lease {id}")))?;
        let header = AsciiMetadataValue::try_from(id.as_str()).map_err(|e| {
            RuntimeError::containerd(ErrorKind::Internal, format!("lease id {id}: {e}"))
        })?;
        Ok(Lease {
            id,
            header,
            channel: self.channel(),
            namespace: self.namespace_header.clone(),
            deleted: AtomicBool::new(false),
        })
    }

    pub(super) async fn lease_delete(&self, lease: &Lease) -> Result<()> {
        let reply = self
            .leases()
            .delete(self.req(DeleteLeaseRequest {
                id: lease.id.clone(),
                sync: false,
            }))
            .await;
        found(reply).map_err(cd_err(format!("deleting lease {}", lease.id)))?;
        lease.deleted.store(true, Ordering::Release);
        Ok(())
    }

    /// Keeps an existing resource alive for the rest of the lease, for
    /// resources found in place that nothing else may reference yet.
    pub(super) async fn lease_add(&self, lease: &Lease, kind: &str, id: &str) -> Result<()> {
        let resource = Resource {
            id: id.to_string(),
            r#type: kind.to_string(),
        };
        self.leases()
            .add_resource(self.req(AddResourceRequest {
                id: lease.id.clone(),
                resource: Some(resource),
            }))
            .await
            .map_err(cd_err(format!("adding {kind} {id} to lease {}", lease.id)))?;
        Ok(())
    }
}

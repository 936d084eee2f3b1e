//! Shared by the runtime's integration tests: a busybox root filesystem to
//! build images from, and the purge of a test's containerd namespace.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{ListSnapshotsRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    DeleteContentRequest, DeleteImageRequest, DeleteNamespaceRequest, DeleteRequest,
    ListContainersRequest, ListContentRequest, ListImagesRequest, ListRequest,
};
use containerd_client::tonic::Request;
use containerd_client::with_namespace;
use shoal_runtime::containerd::{Containerd, DEFAULT_SNAPSHOTTER, DEFAULT_SOCKET};
use shoal_runtime::Runtime;

static ROOTFS_NEXT: AtomicUsize = AtomicUsize::new(0);
static NAMESPACE_NEXT: AtomicUsize = AtomicUsize::new(0);

/// A containerd namespace of the test's own (`PREFIX-PID-N`), ready, with
/// its purge armed before anything exists in it; containers log through
/// the crate's log writer.
pub async fn test_namespace(prefix: &str) -> (Containerd, NamespacePurge) {
    let namespace = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NAMESPACE_NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let purge = NamespacePurge(namespace.clone());
    let rt = Containerd::connect(Path::new(DEFAULT_SOCKET), &namespace, DEFAULT_SNAPSHOTTER)
        .await
        .map(|rt| rt.with_log_writer(env!("CARGO_BIN_EXE_shoal-log-writer").into()))
        .unwrap_or_else(|e| panic!("{e} (is containerd running?)"));
    rt.ensure_ready().await.unwrap();
    (rt, purge)
}

/// A busybox root filesystem from the host's static busybox (a stand-in
/// file where there is none: the fake never runs it).
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join(format!(
        "rootfs-{}",
        ROOTFS_NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    for d in ["bin", "etc", "tmp", "usr/bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = Path::new("/bin/busybox");
    if busybox.exists() {
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        let status = std::process::Command::new(busybox)
            .args(["--install", "-s"])
            .arg(root.join("bin"))
            .status()
            .unwrap();
        assert!(status.success(), "busybox --install failed");
        // On merged-/usr hosts the applet links point at /usr/bin/busybox.
        std::os::unix::fs::symlink("/bin/busybox", root.join("usr/bin/busybox")).unwrap();
    } else {
        std::fs::write(root.join("bin/busybox"), b"stand-in").unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    root
}

/// Deletes everything in a test namespace, then the namespace, when dropped,
/// also while a failed test unwinds. Runs on its own thread and connection
/// because the test's runtime may be the one unwinding.
pub struct NamespacePurge(pub String);

impl Drop for NamespacePurge {
    fn drop(&mut self) {
        let namespace = self.0.clone();
        let result = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(purge(&namespace))
        })
        .join();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cleaning up namespace {}: {e}", self.0),
            Err(_) => eprintln!("cleaning up namespace {} panicked", self.0),
        }
    }
}

pub async fn purge(ns: &str) -> Result<(), String> {
    let rt = Containerd::connect(Path::new(DEFAULT_SOCKET), ns, DEFAULT_SNAPSHOTTER)
        .await
        .map_err(|e| e.to_string())?;
    let channel = rt.channel();
    let err = |what: &str| {
        let what = what.to_string();
        move |e: containerd_client::tonic::Status| format!("{what}: {}", e.message())
    };

    let containers = ContainersClient::new(channel.clone())
        .list(with_namespace!(
            ListContainersRequest { filters: vec![] },
            ns
        ))
        .await
        .map_err(err("listing containers"))?
        .into_inner()
        .containers;
    for c in containers {
        rt.remove(&c.id).await.map_err(|e| e.to_string())?;
    }

    let mut images = ImagesClient::new(channel.clone());
    let list = images
        .list(with_namespace!(ListImagesRequest { filters: vec![] }, ns))
        .await
        .map_err(err("listing images"))?;
    for image in list.into_inner().images {
        let request = DeleteImageRequest {
            name: image.name,
            sync: true,
            target: None,
        };
        images
            .delete(with_namespace!(request, ns))
            .await
            .map_err(err("deleting image"))?;
    }

    let mut leases = LeasesClient::new(channel.clone());
    let list = leases
        .list(with_namespace!(ListRequest { filters: vec![] }, ns))
        .await
        .map_err(err("listing leases"))?;
    for lease in list.into_inner().leases {
        leases
            .delete(with_namespace!(
                DeleteRequest {
                    id: lease.id,
                    sync: true
                },
                ns
            ))
            .await
            .map_err(err("deleting lease"))?;
    }

    // Garbage collection usually took the snapshots with the images; remove
    // what is left leaves first, a layer of the stack per round.
    let mut snapshots = SnapshotsClient::new(channel.clone());
    for _round in 0..100 {
        let request = ListSnapshotsRequest {
            snapshotter: DEFAULT_SNAPSHOTTER.into(),
            filters: vec![],
        };
        let mut stream = snapshots
            .list(with_namespace!(request, ns))
            .await
            .map_err(err("listing snapshots"))?
            .into_inner();
        let mut all = Vec::new();
        while let Some(batch) = stream.message().await.map_err(err("listing snapshots"))? {
            all.extend(batch.info);
        }
        if all.is_empty() {
            break;
        }
        for leaf in all
            .iter()
            .filter(|s| !all.iter().any(|o| o.parent == s.name))
        {
            let request = RemoveSnapshotRequest {
                snapshotter: DEFAULT_SNAPSHOTTER.into(),
                key: leaf.name.clone(),
            };
            let _ = snapshots.remove(with_namespace!(request, ns)).await;
        }
    }

    let mut content = ContentClient::new(channel.clone());
    let mut stream = content
        .list(with_namespace!(ListContentRequest { filters: vec![] }, ns))
        .await
        .map_err(err("listing content"))?
        .into_inner();
    let mut digests = Vec::new();
    while let Some(batch) = stream.message().await.map_err(err("listing content"))? {
        digests.extend(batch.info.into_iter().map(|i| i.digest));
    }
    for digest in digests {
        let _ = content
            .delete(with_namespace!(DeleteContentRequest { digest }, ns))
            .await;
    }

    NamespacesClient::new(channel)
        .delete(with_namespace!(
            DeleteNamespaceRequest {
                name: ns.to_string()
            },
            ns
        ))
        .await
        .map_err(err("deleting the namespace"))?;

    // runc leaves the parent cgroups of /shoal/<namespace>/<id> behind.
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let _ = std::fs::remove_dir(h.path().join("shoal").join(ns));
        }
    }
    Ok(())
}

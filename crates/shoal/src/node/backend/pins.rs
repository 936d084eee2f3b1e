//! Pinning at apply: every service's image reference resolved to the digest
//! it names now (an image imported by hand on this node, or what its
//! registry serves), checked against the platforms of the cluster's nodes,
//! before the app version is proposed.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;

use shoal_api::server::{ApiError, ApiResult};
use shoal_cluster::log::ReplicatedLog;
use shoal_runtime::image::{oci_arch, Platform};
use shoal_runtime::{ErrorKind, ImageResolution, ImageStore, Runtime};
use shoal_types::{
    AppSpec, FieldError, Node, NodeStatus, PinSource, PinnedImage, SpecError, Workload,
};

use super::NodeBackend;

/// Distinct image references resolved at the same time by one apply.
const RESOLVES_AT_ONCE: usize = 8;

impl<R: Runtime + ImageStore, L: ReplicatedLog> NodeBackend<R, L> {
    /// Service name → its pinned image. A reference that does not resolve,
    /// a registry that cannot be reached or refuses, or an image with no
    /// manifest for a platform some alive node runs fails the apply, naming
    /// the service's field.
    pub(super) async fn pin_images(
        &self,
        spec: &AppSpec,
    ) -> ApiResult<BTreeMap<String, PinnedImage>> {
        // While some node reads no pins (the cluster is being upgraded) they
        // could not be kept: the app goes in unpinned, as before, and an
        // image imported by hand only on other nodes still applies.
        if self.0.raft.cluster_log_version() < shoal_state::format::PINS {
            return Ok(BTreeMap::new());
        }
        let nodes: Vec<Node> = self
            .0
            .raft
            .read()
            .nodes
            .values()
            .filter(|node| node.status == NodeStatus::Alive)
            .cloned()
            .collect();
        // Each distinct reference once, several at a time: an app of many
        // services waits for its slowest registry, not for their sum.
        let references: BTreeSet<String> = spec
            .services
            .iter()
            .map(|service| {
                let Workload::Container(container) = &service.workload;
                container.image.clone()
            })
            .collect();
        let resolved: BTreeMap<String, Result<ImageResolution, shoal_runtime::RuntimeError>> =
            futures::stream::iter(references)
                .map(|reference: String| async move {
                    let access = self.registry_access(&reference).await;
                    let resolution = self.0.runtime.resolve(&reference, &access).await;
                    (reference, resolution)
                })
                .buffer_unordered(RESOLVES_AT_ONCE)
                .collect()
                .await;
        let mut pins = BTreeMap::new();
        let mut errors = Vec::new();
        let mut unreachable = false;
        for (index, service) in spec.services.iter().enumerate() {
            let Workload::Container(container) = &service.workload;
            let path = format!("services[{index}].image");
            let resolution = match &resolved[&container.image] {
                Ok(resolution) => resolution,
                Err(error) => {
                    unreachable |= error.kind() == ErrorKind::Transient;
                    errors.push(FieldError {
                        path,
                        message: error.to_string(),
                    });
                    continue;
                }
            };
            if let Some(message) = platform_gap(resolution, &nodes) {
                errors.push(FieldError { path, message });
                continue;
            }
            pins.insert(
                service.name.clone(),
                PinnedImage {
                    digest: resolution.digest.clone(),
                    source: if resolution.local {
                        PinSource::Node
                    } else {
                        PinSource::Registry
                    },
                },
            );
        }
        if errors.is_empty() {
            return Ok(pins);
        }
        let error = ApiError::from(SpecError { errors });
        if unreachable {
            // Not the spec's fault: the same apply may pass later.
            return Err(ApiError {
                status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                ..error
            });
        }
        Err(error)
    }
}

/// What is wrong when an image offers no manifest for a platform that an
/// alive node runs; `None` when every such node can run it (or the image
/// was imported by hand, whose platform is the importer's business).
pub(super) fn platform_gap(resolution: &ImageResolution, nodes: &[Node]) -> Option<String> {
    if resolution.local {
        return None;
    }
    let mut missing: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for node in nodes {
        let os = node_os(&node.os);
        let arch = oci_arch(&node.arch);
        if !resolution
            .platforms
            .iter()
            .any(|p| p.os == os && p.architecture == arch)
        {
            missing
                .entry(format!("{os}/{arch}"))
                .or_default()
                .insert(&node.name);
        }
    }
    if missing.is_empty() {
        return None;
    }
    let offered: Vec<String> = resolution.platforms.iter().map(platform_name).collect();
    let needed: Vec<String> = missing
        .iter()
        .map(|(platform, names)| {
            let names: Vec<&str> = names.iter().copied().collect();
            format!("{platform} (node {})", names.join(", "))
        })
        .collect();
    Some(format!(
        "{} offers {} but the cluster runs {}: push an image for that platform, or keep the service off those nodes",
        resolution.name,
        if offered.is_empty() {
            "no platform".to_string()
        } else {
            offered.join(", ")
        },
        needed.join(", ")
    ))
}

/// A node's OS as OCI spells it: `Linux 6.1.0` → `linux`.
fn node_os(os: &str) -> String {
    os.split_whitespace()
        .next()
        .unwrap_or("linux")
        .to_ascii_lowercase()
}

fn platform_name(platform: &Platform) -> String {
    match &platform.variant {
        Some(variant) => format!("{}/{}/{variant}", platform.os, platform.architecture),
        None => format!("{}/{}", platform.os, platform.architecture),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolution(platforms: &[(&str, &str)]) -> ImageResolution {
        ImageResolution {
            name: "127.0.0.1:5000/web:1".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            local: false,
            platforms: platforms
                .iter()
                .map(|(os, arch)| Platform {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: None,
                })
                .collect(),
        }
    }

    fn node(name: &str, arch: &str) -> Node {
        Node {
            arch: arch.into(),
            ..Node::sample(name, "n:7950")
        }
    }

    #[test]
    fn an_image_must_offer_every_alive_nodes_platform() {
        let nodes = [
            node("a", "x86_64"),
            node("b", "aarch64"),
            node("c", "aarch64"),
        ];
        assert_eq!(
            platform_gap(
                &resolution(&[("linux", "amd64"), ("linux", "arm64")]),
                &nodes
            ),
            None
        );
        let gap = platform_gap(&resolution(&[("linux", "amd64")]), &nodes).expect("a gap");
        assert!(gap.contains("offers linux/amd64"), "{gap}");
        assert!(gap.contains("linux/arm64 (node b, c)"), "{gap}");
        let gap = platform_gap(&resolution(&[]), &nodes[..1]).expect("a gap");
        assert!(gap.contains("offers no platform"), "{gap}");
        // Imported by hand: no registry asked, nothing to compare.
        let local = ImageResolution {
            local: true,
            ..resolution(&[])
        };
        assert_eq!(platform_gap(&local, &nodes), None);
    }
}

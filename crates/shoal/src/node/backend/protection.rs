//! Whether each service is protected: the nodes its `prepull` names hold
//! its image before they need it. The answering node asks each of those
//! nodes what it holds (its public `GET /v1/images`, with this node's
//! certificate), at most once per node for all the apps read.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use shoal_api::wire::{AppView, PrepullNodeView, PrepullView};
use shoal_cluster::log::ReplicatedLog;
use shoal_runtime::registry::ImageRef;
use shoal_runtime::{ImageStore, Runtime};
use shoal_types::{NodeStatus, Prepull};

use super::NodeBackend;

/// How long a node has to say what it holds.
const HELD_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// Nodes asked at once.
const HELD_ASKS_AT_ONCE: usize = 8;
/// Largest answer read from a node, in bytes (a list of its images).
const HELD_ANSWER_BYTES_MAX: usize = 4 << 20;

/// What one node holds: the names of its images, or why it could not say.
type Held = Result<BTreeSet<String>, String>;

impl<R: Runtime + ImageStore, L: ReplicatedLog> NodeBackend<R, L> {
    /// Fills in every service's `prepull` view of `apps`.
    pub(super) async fn protection(&self, apps: &mut [AppView]) {
        // What to ask, from one look at the state.
        let (wanted, addrs) = {
            let state = self.0.raft.read();
            let mut wanted: BTreeMap<(String, String), (Prepull, String, Vec<String>)> =
                BTreeMap::new();
            for app in apps.iter() {
                for duty in super::super::prepull::duties(&state, Some(&app.name)) {
                    wanted.insert(
                        (duty.app.to_string(), duty.service.name.clone()),
                        (
                            duty.service.prepull,
                            duty.reference,
                            duty.nodes.iter().map(|node| node.to_string()).collect(),
                        ),
                    );
                }
            }
            let asked: BTreeSet<&String> = wanted.values().flat_map(|(_, _, n)| n).collect();
            let addrs: Vec<(String, Option<String>)> = asked
                .into_iter()
                .map(|name| {
                    let addr = state
                        .nodes
                        .get(name)
                        .filter(|node| node.status == NodeStatus::Alive && !node.addr.is_empty())
                        .map(|node| node.addr.clone());
                    (name.clone(), addr)
                })
                .collect();
            (wanted, addrs)
        };
        let held: BTreeMap<String, Held> = futures::stream::iter(addrs)
            .map(|(name, addr)| async move {
                let held = self.held_by(&name, addr.as_deref()).await;
                (name, held)
            })
            .buffer_unordered(HELD_ASKS_AT_ONCE)
            .collect()
            .await;
        for app in apps.iter_mut() {
            for service in &mut app.services {
                let key = (app.name.clone(), service.name.clone());
                if let Some((mode, reference, nodes)) = wanted.get(&key) {
                    service.prepull = Some(view(*mode, reference, nodes, &held));
                }
            }
        }
    }

    /// The names of the images `node` holds.
    async fn held_by(&self, node: &str, addr: Option<&str>) -> Held {
        if node == self.0.config.name {
            let images = self
                .0
                .runtime
                .images()
                .await
                .map_err(|error| error.to_string())?;
            return Ok(images.into_iter().map(|image| image.name).collect());
        }
        let addr = addr.ok_or_else(|| "the node is not alive".to_string())?;
        let endpoint = shoal_http::Endpoint::parse(addr).map_err(|error| error.to_string())?;
        let ask = async {
            let response = self
                .0
                .http
                .get(endpoint.url("/v1/images"))
                .send()
                .await
                .and_then(|response| response.error_for_status())
                .map_err(|error| error.to_string())?;
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|error| error.to_string())?;
                if body.len() + chunk.len() > HELD_ANSWER_BYTES_MAX {
                    return Err(format!(
                        "its list of images is longer than {HELD_ANSWER_BYTES_MAX} bytes"
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            let images: Vec<shoal_api::wire::ImageView> =
                serde_json::from_slice(&body).map_err(|error| error.to_string())?;
            Ok(images.into_iter().map(|image| image.name).collect())
        };
        tokio::time::timeout(HELD_ANSWER_TIMEOUT, ask)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {} s",
                    HELD_ANSWER_TIMEOUT.as_secs()
                ))
            })
    }
}

/// A service's view from what its nodes said they hold.
fn view(
    mode: Prepull,
    reference: &str,
    nodes: &[String],
    held: &BTreeMap<String, Held>,
) -> PrepullView {
    // Images are named as the image store names a pulled reference.
    let name = ImageRef::parse(reference).map(|r| r.to_string());
    let nodes: Vec<PrepullNodeView> = nodes
        .iter()
        .map(|node| match (held.get(node), &name) {
            (Some(Ok(images)), Ok(name)) => PrepullNodeView {
                node: node.clone(),
                holds: Some(images.contains(name)),
                error: None,
            },
            (Some(Err(error)), _) => PrepullNodeView {
                node: node.clone(),
                holds: None,
                error: Some(error.clone()),
            },
            (None, _) | (_, Err(_)) => PrepullNodeView {
                node: node.clone(),
                holds: None,
                error: Some("not asked".into()),
            },
        })
        .collect();
    let lacking: Vec<&str> = nodes
        .iter()
        .filter(|n| n.holds == Some(false))
        .map(|n| n.node.as_str())
        .collect();
    let unknown: Vec<&str> = nodes
        .iter()
        .filter(|n| n.holds.is_none())
        .map(|n| n.node.as_str())
        .collect();
    let reason = match mode {
        Prepull::None => Some("prepull is `none`: only the nodes running it hold the image".into()),
        Prepull::Successors if nodes.is_empty() => Some(
            "no node could take over a lost replica (none that may run it runs none of it)".into(),
        ),
        _ if !lacking.is_empty() => Some(format!(
            "{} not yet pulled the image",
            match lacking.as_slice() {
                [one] => format!("{one} has"),
                many => format!("{} have", many.join(", ")),
            }
        )),
        _ if !unknown.is_empty() => Some(format!(
            "{} could not say what it holds",
            unknown.join(", ")
        )),
        _ => None,
    };
    PrepullView {
        mode,
        protected: reason.is_none(),
        nodes,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str =
        "r.example/web@sha256:abababababababababababababababababababababababababababababababab";

    fn held(entries: &[(&str, Held)]) -> BTreeMap<String, Held> {
        entries
            .iter()
            .map(|(node, held)| (node.to_string(), held.clone()))
            .collect()
    }

    fn holding() -> Held {
        Ok(BTreeSet::from([ImageRef::parse(REFERENCE)
            .expect("reference")
            .to_string()]))
    }

    #[test]
    fn protected_only_when_every_named_node_holds_the_image() {
        let nodes = vec!["n2".to_string(), "n3".to_string()];
        let all = view(
            Prepull::All,
            REFERENCE,
            &nodes,
            &held(&[("n2", holding()), ("n3", holding())]),
        );
        assert!(all.protected, "{all:?}");
        assert_eq!(all.reason, None);

        let one_lacks = view(
            Prepull::All,
            REFERENCE,
            &nodes,
            &held(&[("n2", holding()), ("n3", Ok(BTreeSet::new()))]),
        );
        assert!(!one_lacks.protected);
        assert_eq!(
            one_lacks.reason.as_deref(),
            Some("n3 has not yet pulled the image")
        );
        assert_eq!(one_lacks.nodes[1].holds, Some(false));

        let silent = view(
            Prepull::All,
            REFERENCE,
            &nodes,
            &held(&[
                ("n2", holding()),
                ("n3", Err("no answer within 3 s".into())),
            ]),
        );
        assert!(!silent.protected);
        assert_eq!(silent.nodes[1].holds, None);
        assert_eq!(
            silent.nodes[1].error.as_deref(),
            Some("no answer within 3 s")
        );

        // A standby named and holding it; none named; `none`.
        let standby = view(
            Prepull::Successors,
            REFERENCE,
            &nodes[..1],
            &held(&[("n2", holding())]),
        );
        assert!(standby.protected);
        let alone = view(Prepull::Successors, REFERENCE, &[], &held(&[]));
        assert!(!alone.protected);
        assert!(alone
            .reason
            .is_some_and(|r| r.contains("no node could take over")));
        let none = view(Prepull::None, REFERENCE, &[], &held(&[]));
        assert!(!none.protected);
    }
}

//! Whether each service is protected: the nodes its `prepull` names hold
//! its image before they need it. Asked for (`?prepull=true`: `shoal apps`
//! and `shoal app inspect` ask, a rollout's polling does not), the
//! answering node asks each of those nodes what it holds (its public
//! `GET /v1/images`, with this node's certificate), once per node for all
//! the apps read, all within a few seconds.

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
/// How long all the nodes have together; the ones not asked by then are
/// shown as such.
const HELD_ASKS_TIMEOUT: Duration = Duration::from_secs(5);
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
            let read: BTreeSet<&str> = apps.iter().map(|app| app.name.as_str()).collect();
            let mut wanted: BTreeMap<(String, String), Duty> = BTreeMap::new();
            for duty in super::super::prepull::duties(&state, None) {
                if !read.contains(duty.app) {
                    continue;
                }
                wanted.insert(
                    (duty.app.to_string(), duty.service.name.clone()),
                    Duty {
                        mode: duty.service.prepull,
                        reference: duty.reference,
                        nodes: duty.nodes.iter().map(|node| node.to_string()).collect(),
                        running: duty.running,
                    },
                );
            }
            let asked: BTreeSet<&String> = wanted.values().flat_map(|d| &d.nodes).collect();
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
        let mut held: BTreeMap<String, Held> = BTreeMap::new();
        let mut answers = futures::stream::iter(addrs)
            .map(|(name, addr)| async move {
                let held = self.held_by(&name, addr.as_deref()).await;
                (name, held)
            })
            .buffer_unordered(HELD_ASKS_AT_ONCE);
        let deadline = tokio::time::sleep(HELD_ASKS_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                answer = answers.next() => match answer {
                    Some((name, answer)) => {
                        held.insert(name, answer);
                    }
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        for app in apps.iter_mut() {
            for service in &mut app.services {
                let key = (app.name.clone(), service.name.clone());
                if let Some(duty) = wanted.get(&key) {
                    service.prepull = Some(view(duty, &held));
                }
            }
        }
    }

    /// The names of the images `node` holds.
    async fn held_by(&self, node: &str, addr: Option<&str>) -> Held {
        if node == self.0.config.name {
            let images = tokio::time::timeout(HELD_ANSWER_TIMEOUT, self.0.runtime.images())
                .await
                .map_err(|_| "containerd did not list the images in time".to_string())?
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

/// A service's image held ahead, as the state names it.
#[derive(Clone, Debug)]
struct Duty {
    mode: Prepull,
    reference: String,
    nodes: Vec<String>,
    running: usize,
}

/// A service's view from what its nodes said they hold.
fn view(duty: &Duty, held: &BTreeMap<String, Held>) -> PrepullView {
    let mode = duty.mode;
    // Images are named as the image store names a pulled reference.
    let name = ImageRef::parse(&duty.reference).map(|r| r.to_string());
    let nodes: Vec<PrepullNodeView> = duty
        .nodes
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
            (None, _) => PrepullNodeView {
                node: node.clone(),
                holds: None,
                error: Some(format!(
                    "not asked: the nodes had {} s together",
                    HELD_ASKS_TIMEOUT.as_secs()
                )),
            },
            (_, Err(_)) => PrepullNodeView {
                node: node.clone(),
                holds: None,
                error: Some(format!("`{}` is no image reference", duty.reference)),
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
        // Every node that may run it runs it: copies wherever it may go,
        // but only if that is more than one node.
        _ if nodes.is_empty() && duty.running < 2 => {
            Some("no other node may run it, so none can take over a lost replica".into())
        }
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

    fn duty(mode: Prepull, nodes: &[&str], running: usize) -> Duty {
        Duty {
            mode,
            reference: REFERENCE.to_string(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            running,
        }
    }

    #[test]
    fn protected_only_when_every_named_node_holds_the_image() {
        let all = view(
            &duty(Prepull::All, &["n2", "n3"], 1),
            &held(&[("n2", holding()), ("n3", holding())]),
        );
        assert!(all.protected, "{all:?}");
        assert_eq!(all.reason, None);

        let one_lacks = view(
            &duty(Prepull::All, &["n2", "n3"], 1),
            &held(&[("n2", holding()), ("n3", Ok(BTreeSet::new()))]),
        );
        assert!(!one_lacks.protected);
        assert_eq!(
            one_lacks.reason.as_deref(),
            Some("n3 has not yet pulled the image")
        );
        assert_eq!(one_lacks.nodes[1].holds, Some(false));

        let silent = view(
            &duty(Prepull::All, &["n2", "n3"], 1),
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
        // A node the deadline left unasked is not taken to hold it.
        let unasked = view(&duty(Prepull::All, &["n2"], 1), &held(&[]));
        assert!(!unasked.protected);
        assert!(unasked.nodes[0]
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("not asked")));

        // A standby named and holding it.
        let standby = view(
            &duty(Prepull::Successors, &["n2"], 1),
            &held(&[("n2", holding())]),
        );
        assert!(standby.protected);
        // Every node that may run it runs it: protected with two or more,
        // whatever the mode; one alone is not.
        for mode in [Prepull::Successors, Prepull::All] {
            assert!(view(&duty(mode, &[], 2), &held(&[])).protected, "{mode:?}");
            let alone = view(&duty(mode, &[], 1), &held(&[]));
            assert!(!alone.protected, "{mode:?}");
            assert!(alone
                .reason
                .is_some_and(|r| r.contains("no other node may run it")));
        }
        let none = view(&duty(Prepull::None, &[], 3), &held(&[]));
        assert!(!none.protected);
    }
}

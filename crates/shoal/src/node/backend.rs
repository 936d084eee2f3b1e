//! The node's answers to the API.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use shoal_api::server::{ApiError, ApiResult, Backend, LogOptions, LogStream};
use shoal_api::wire::{
    AppView, ApplyResponse, BrokenTaskView, ClusterInfo, ClusterSettings, DnsRecordView, ImageView,
    NodeUpdate, NodeView, PlanView, PlannedStop, PlannedTask, RolloutView, ServiceRolloutView,
    ServiceView, TaskView, UnplacedView, VersionInfo,
};
use shoal_cluster::membership::MemberStatus;
use shoal_cluster::raft::ProposeError;
use shoal_runtime::{ErrorKind, ImageStore, Runtime};
use shoal_state::fit::Request;
use shoal_state::Entry;
use shoal_state::{ApplyError, Command, Outcome, State};
use shoal_types::{consensus_id, DesiredState, Kind, NodeStatus, Taint, TaintEffect};

use shoal_cluster::log::ReplicatedLog;
use shoal_cluster::raft::RaftNode;

use super::Shared;
use crate::clock::now_ms;

pub struct NodeBackend<R, L = RaftNode>(pub Arc<Shared<R, L>>);

impl<R, L: ReplicatedLog> NodeBackend<R, L> {
    /// Waits until this node's state holds every write acknowledged
    /// before the call (reads are linearizable).
    async fn fresh(&self) -> ApiResult<()> {
        self.0.raft.linearizable_read().await.map_err(propose_error)
    }
}

fn propose_error(error: ProposeError) -> ApiError {
    match error {
        ProposeError::Rejected(ApplyError::AppNotFound(name)) => {
            ApiError::not_found(format!("app `{name}` not found; see `shoal apps`"))
        }
        ProposeError::Rejected(ApplyError::NodeNotFound(name)) => {
            ApiError::not_found(format!("node `{name}` not found; see `shoal nodes`"))
        }
        ProposeError::Rejected(error) => ApiError::bad_request(error.to_string()),
        other => ApiError::unavailable(other.to_string()),
    }
}

fn unplaced_view(entry: &shoal_state::Unplaced) -> UnplacedView {
    UnplacedView {
        app: entry.app.clone(),
        service: entry.service.clone(),
        count: entry.count,
        reason: entry.reason.clone(),
    }
}

fn app_view(state: &State, name: &str) -> Option<AppView> {
    let app = state.apps.get(name)?;
    let rollout = state.rollout(name)?;
    let services = app
        .spec
        .services
        .iter()
        .zip(&rollout.services)
        .map(|(service, progress)| ServiceView {
            name: service.name.clone(),
            image: service.image().to_string(),
            kind: service.kind,
            replicas: progress.wanted,
            running: progress.running,
            completed: progress.completed,
            failed: progress.failed,
        })
        .collect();
    Some(AppView {
        name: app.spec.name.clone(),
        version: app.version,
        created_at_ms: app.created_at_ms,
        updated_at_ms: app.updated_at_ms,
        services,
        spec: app.spec.clone(),
        unplaced: state
            .unplaced
            .iter()
            .filter(|entry| entry.app == name)
            .map(unplaced_view)
            .collect(),
        rollout: Some(rollout_view(&rollout)),
    })
}

fn rollout_view(rollout: &shoal_state::rollout::Rollout) -> RolloutView {
    RolloutView {
        version: rollout.version,
        done: rollout.done,
        broken: rollout.broken.as_ref().map(|broken| BrokenTaskView {
            task: broken.task.clone(),
            state: broken.state,
            message: broken.message.clone(),
        }),
        services: rollout
            .services
            .iter()
            .map(|service| ServiceRolloutView {
                service: service.service.clone(),
                wanted: service.wanted,
                running: service.running,
                completed: service.completed,
                failed: service.failed,
                stopping: service.stopping,
                done: service.done,
                unplaced: service.unplaced.clone(),
            })
            .collect(),
    }
}

/// Why the scheduler stops a task, in words for `shoal plan`.
fn stop_reason(state: &State, task: &shoal_types::Task) -> String {
    let service = state
        .apps
        .get(&task.app)
        .and_then(|app| app.spec.services.iter().find(|s| s.name == task.service));
    let node = state.nodes.get(&task.node);
    match (service, node) {
        (None, _) => "the service is gone".into(),
        (Some(service), _) if !task.spec.same_task_as(service) => "the spec changed".into(),
        (_, None) => "its node is gone".into(),
        (_, Some(node)) if node.status != NodeStatus::Alive => {
            format!("node {} is {}", node.name, node.status.as_str())
        }
        (_, Some(node)) if node.drain => format!("node {} is drained", node.name),
        (Some(service), _) if service.kind != Kind::Global && task.slot >= service.replicas => {
            "scaled down".into()
        }
        (Some(service), Some(node)) => {
            match shoal_state::fit::untolerated(node, service, |e| e == TaintEffect::NoExecute) {
                Some(taint) => format!("node {} is tainted `{taint}`", node.name),
                None => match shoal_state::fit::admits(node, service) {
                    Err(reject) => format!("node {} is {reject}", node.name),
                    Ok(()) => "a higher priority needs the room".into(),
                },
            }
        }
    }
}

impl<R: Runtime + ImageStore, L: ReplicatedLog> NodeBackend<R, L> {
    async fn node_update(&self, name: &str, command: Command) -> ApiResult<NodeUpdate> {
        let outcome = self
            .0
            .raft
            .propose(now_ms(), command)
            .await
            .map_err(propose_error)?;
        let changed = matches!(outcome, Outcome::NodeUpdated { changed: true });
        let node = self
            .nodes()
            .await?
            .into_iter()
            .find(|node| node.name == name)
            .ok_or_else(|| {
                ApiError::not_found(format!("node `{name}` not found; see `shoal nodes`"))
            })?;
        Ok(NodeUpdate { changed, node })
    }
}

impl<R: Runtime + ImageStore, L: ReplicatedLog> Backend for NodeBackend<R, L> {
    fn version(&self) -> VersionInfo {
        VersionInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            commit: env!("SHOAL_GIT_COMMIT").into(),
        }
    }

    /// From this node's own view (gossip and its applied state), so that a
    /// node cut off from the majority still shows what it sees.
    async fn nodes(&self) -> ApiResult<Vec<NodeView>> {
        let shared = &self.0;
        let now = now_ms();
        let raft = shared.raft.status();
        let members = shared.membership.members();
        let state = shared.raft.read();
        let mut names: Vec<&str> = state.nodes.keys().map(String::as_str).collect();
        let mut requested: std::collections::HashMap<&str, (Request, u32)> = Default::default();
        for task in state.tasks.values() {
            if task.desired == DesiredState::Running {
                let entry = requested.entry(task.node.as_str()).or_default();
                entry.0.add(Request::of(&task.spec));
                entry.1 += 1;
            }
        }
        for member in &members {
            if !state.nodes.contains_key(&member.facts.name) && !member.facts.name.is_empty() {
                names.push(&member.facts.name);
            }
        }
        let views = names
            .into_iter()
            .map(|name| {
                let recorded = state.nodes.get(name);
                let member = members.iter().find(|member| member.facts.name == name);
                let id = consensus_id(name);
                let role = if raft.voters.contains(&id) {
                    "voter"
                } else if raft.learners.contains(&id) {
                    "learner"
                } else {
                    "-"
                };
                // Gossip knows liveness first; the state has the verdict
                // that moves work.
                let status = match member.map(|m| m.status) {
                    Some(MemberStatus::Alive) => NodeStatus::Alive,
                    Some(MemberStatus::Suspect) => NodeStatus::Suspect,
                    Some(MemberStatus::Dead) => NodeStatus::Dead,
                    Some(MemberStatus::Left) => NodeStatus::Left,
                    None => recorded.map_or(NodeStatus::Dead, |node| node.status),
                };
                let facts = member.map(|m| &m.facts);
                let started_at_ms = facts
                    .map(|f| f.started_at_ms)
                    .or(recorded.map(|n| n.started_at_ms))
                    .unwrap_or(now);
                NodeView {
                    name: name.to_string(),
                    addr: facts
                        .map(|f| f.api_addr.clone())
                        .or(recorded.map(|n| n.addr.clone()))
                        .unwrap_or_default(),
                    status,
                    role: role.to_string(),
                    leader: raft.leader == Some(id),
                    os: facts
                        .map(|f| f.os.clone())
                        .or(recorded.map(|n| n.os.clone()))
                        .unwrap_or_default(),
                    arch: facts
                        .map(|f| f.arch.clone())
                        .or(recorded.map(|n| n.arch.clone()))
                        .unwrap_or_default(),
                    uptime_s: if status == NodeStatus::Alive || status == NodeStatus::Suspect {
                        now.saturating_sub(started_at_ms) / 1000
                    } else {
                        0
                    },
                    cpus: facts
                        .map(|f| f.cpus)
                        .or(recorded.map(|n| n.cpus))
                        .unwrap_or(0),
                    memory_total_bytes: facts
                        .map(|f| f.memory_total_bytes)
                        .or(recorded.map(|n| n.memory_total_bytes))
                        .unwrap_or(0),
                    memory_used_bytes: facts.map(|f| f.memory_used_bytes).unwrap_or(0),
                    labels: facts
                        .map(|f| f.labels.clone())
                        .or(recorded.map(|n| n.labels.clone()))
                        .unwrap_or_default(),
                    taints: recorded
                        .map(|n| n.taints.iter().map(Taint::to_string).collect())
                        .unwrap_or_default(),
                    drain: recorded.is_some_and(|n| n.drain),
                    subnet: recorded.and_then(|n| n.subnet.clone()),
                    cpu_allocatable_millis: recorded.map_or(0, |n| n.cpu_allocatable_millis),
                    memory_allocatable_bytes: recorded.map_or(0, |n| n.memory_allocatable_bytes),
                    cpu_requested_millis: requested.get(name).map_or(0, |r| r.0.cpu_millis),
                    memory_requested_bytes: requested.get(name).map_or(0, |r| r.0.memory_bytes),
                    tasks: requested.get(name).map_or(0, |r| r.1),
                    release: facts.map(|f| f.release.clone()).unwrap_or_default(),
                    log_version: facts.map_or(0, |f| f.log_version),
                }
            })
            .collect();
        Ok(views)
    }

    async fn cluster(&self) -> ApiResult<ClusterInfo> {
        let shared = &self.0;
        let raft = shared.raft.status();
        let name_of = |id: &u64| {
            raft.nodes
                .get(id)
                .map(|node| node.name.clone())
                .unwrap_or_else(|| id.to_string())
        };
        let settings = shared.raft.read().settings.clone();
        Ok(ClusterInfo {
            cluster_id: shared.cluster_id.clone(),
            name: shared.config.name.clone(),
            gossip_addr: shared.config.gossip_advertise.to_string(),
            leader: raft.leader.as_ref().map(name_of),
            voters: raft.voters.iter().map(name_of).collect(),
            learners: raft.learners.iter().map(name_of).collect(),
            settings: ClusterSettings {
                voters_max: Some(settings.voters_max),
                cluster_cidr: Some(settings.cluster_cidr),
                node_prefix_len: Some(settings.node_prefix_len),
                dns_zone: Some(settings.dns_zone),
            },
            log_version: shared.raft.cluster_log_version(),
            release: shoal_state::RELEASE.to_string(),
        })
    }

    async fn set_settings(&self, settings: ClusterSettings) -> ApiResult<ClusterInfo> {
        let command = Command::SetSettings {
            voters_max: settings.voters_max,
            cluster_cidr: settings.cluster_cidr,
            node_prefix_len: settings.node_prefix_len,
            dns_zone: settings.dns_zone,
        };
        self.0
            .raft
            .propose(now_ms(), command)
            .await
            .map_err(propose_error)?;
        self.cluster().await
    }

    async fn dns_records(&self) -> ApiResult<Vec<DnsRecordView>> {
        // What this node's server answers with; the same records from the
        // state when it does not run (yet).
        let rows = match self.0.network.served_rows() {
            Some(rows) => rows,
            None => {
                let state = self.0.raft.read();
                super::network::records_from_state(&state).rows(&state.settings.dns_zone)
            }
        };
        Ok(rows
            .into_iter()
            .map(|row| DnsRecordView {
                name: row.name,
                record_type: row.record_type.to_string(),
                value: row.value,
            })
            .collect())
    }

    async fn leave(&self) -> ApiResult<()> {
        let shared = self.0.clone();
        tokio::spawn(super::cluster::leave(shared));
        Ok(())
    }

    async fn apply(&self, body: Bytes) -> ApiResult<ApplyResponse> {
        let spec = shoal_types::parse_app(&body)?;
        let name = spec.name.clone();
        match self
            .0
            .raft
            .propose(now_ms(), Command::PutApp { spec })
            .await
        {
            Ok(Outcome::AppPut { version, changed }) => Ok(ApplyResponse {
                app: name,
                version,
                changed,
            }),
            Ok(other) => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
            Err(error) => Err(propose_error(error)),
        }
    }

    async fn apps(&self) -> ApiResult<Vec<AppView>> {
        self.fresh().await?;
        let state = self.0.raft.read();
        Ok(state
            .apps
            .keys()
            .filter_map(|name| app_view(&state, name))
            .collect())
    }

    async fn taint_node(&self, name: String, taint: String) -> ApiResult<NodeUpdate> {
        let taint: Taint = taint
            .parse()
            .map_err(|message: String| ApiError::bad_request(format!("taint: {message}")))?;
        let command = Command::TaintNode {
            name: name.clone(),
            taint,
        };
        self.node_update(&name, command).await
    }

    async fn untaint_node(
        &self,
        name: String,
        key: String,
        effect: Option<String>,
    ) -> ApiResult<NodeUpdate> {
        let effect = effect
            .map(|effect| effect.parse::<TaintEffect>())
            .transpose()
            .map_err(|message| ApiError::bad_request(format!("effect: {message}")))?;
        shoal_types::placement::check_label_key(&key)
            .map_err(|message| ApiError::bad_request(format!("key: {message}")))?;
        let command = Command::UntaintNode {
            name: name.clone(),
            key,
            effect,
        };
        self.node_update(&name, command).await
    }

    async fn drain_node(&self, name: String, drain: bool) -> ApiResult<NodeUpdate> {
        let command = Command::SetNodeDrain {
            name: name.clone(),
            drain,
        };
        self.node_update(&name, command).await
    }

    async fn plan(&self, body: Bytes) -> ApiResult<PlanView> {
        let spec = shoal_types::parse_app(&body)?;
        let name = spec.name.clone();
        self.fresh().await?;
        let mut state = self.0.raft.read().clone();
        let index = state.applied_index + 1;
        let outcome = state
            .apply(index, &Entry::trusted(now_ms(), &Command::PutApp { spec }))
            .map_err(|error| ApiError::bad_request(error.to_string()))?;
        let Outcome::AppPut { version, changed } = outcome else {
            return Err(ApiError::internal(format!(
                "unexpected outcome {outcome:?}"
            )));
        };
        let plan = shoal_sched::reconcile(&state);
        let place = plan
            .place
            .iter()
            .filter(|placement| placement.app == name)
            .map(|placement| PlannedTask {
                service: placement.service.clone(),
                slot: placement.slot,
                node: placement.node.clone(),
            })
            .collect();
        let stop = plan
            .stop
            .iter()
            .filter_map(|id| state.tasks.get(id))
            .filter(|task| task.app == name)
            .map(|task| PlannedStop {
                task: task.id.clone(),
                node: task.node.clone(),
                reason: stop_reason(&state, task),
            })
            .collect();
        let unplaced = plan
            .unplaced
            .iter()
            .filter(|entry| entry.app == name)
            .map(unplaced_view)
            .collect();
        Ok(PlanView {
            app: name,
            version,
            changed,
            place,
            stop,
            unplaced,
        })
    }

    async fn app(&self, name: String) -> ApiResult<AppView> {
        self.fresh().await?;
        app_view(&self.0.raft.read(), &name)
            .ok_or_else(|| ApiError::not_found(format!("app `{name}` not found; see `shoal apps`")))
    }

    async fn remove_app(&self, name: String) -> ApiResult<()> {
        self.0
            .raft
            .propose(now_ms(), Command::RemoveApp { name })
            .await
            .map(|_| ())
            .map_err(propose_error)
    }

    async fn tasks(&self, app: Option<String>) -> ApiResult<Vec<TaskView>> {
        self.fresh().await?;
        let state = self.0.raft.read();
        let mut tasks: Vec<TaskView> = state
            .tasks
            .values()
            .filter(|task| app.as_ref().is_none_or(|app| &task.app == app))
            .map(|task| {
                let mut view = TaskView::from(task);
                // A task on a node that is not alive is lost until it is
                // replaced and its node comes back or is forgotten.
                let node_alive = state
                    .nodes
                    .get(&task.node)
                    .is_some_and(|n| n.status == NodeStatus::Alive);
                if !node_alive && !task.status.state.is_terminal() {
                    view.message =
                        format!("lost: node {} is not alive ({})", task.node, view.message);
                }
                view
            })
            .collect();
        tasks.sort_by(|a, b| {
            (&a.app, &a.service, a.slot, &a.id).cmp(&(&b.app, &b.service, b.slot, &b.id))
        });
        Ok(tasks)
    }

    async fn logs(&self, target: String, options: LogOptions) -> ApiResult<LogStream> {
        super::logs::stream(self.0.clone(), target, options).await
    }

    async fn images(&self) -> ApiResult<Vec<ImageView>> {
        let images = self
            .0
            .runtime
            .images()
            .await
            .map_err(|error| ApiError::unavailable(error.to_string()))?;
        Ok(images.into_iter().map(image_view).collect())
    }

    fn upload_dir(&self) -> PathBuf {
        self.0.config.data_dir.join("uploads")
    }

    async fn import_image(
        &self,
        archive: PathBuf,
        name: Option<String>,
    ) -> ApiResult<Vec<ImageView>> {
        let images = self
            .0
            .runtime
            .import(archive, name)
            .await
            .map_err(|error| match error.kind() {
                ErrorKind::Invalid => ApiError::bad_request(error.to_string()),
                _ => ApiError::unavailable(error.to_string()),
            })?;
        Ok(images.into_iter().map(image_view).collect())
    }
}

fn image_view(image: shoal_runtime::ImageInfo) -> ImageView {
    ImageView {
        name: image.name,
        digest: image.digest,
        size_bytes: image.size_bytes,
        created_s: image.created_s,
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use shoal_cluster::log::MemoryLog;
    use shoal_cluster::membership::{Membership, MembershipConfig};
    use shoal_cluster::raft::ProposeError;
    use shoal_runtime::fake::FakeRuntime;
    use shoal_types::Node;
    use tower::ServiceExt;

    use super::*;
    use crate::node::{network, NodeConfig};

    /// A node's backend over an in-memory log holding node `n1`, the fake
    /// runtime and gossip on a loopback port of its own.
    struct Fixture {
        log: MemoryLog,
        router: axum::Router,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("data dir");
        // A free UDP port of loopback for gossip (it must be concrete).
        let loopback = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|socket| socket.local_addr())
            .expect("a free loopback port");
        let config = NodeConfig {
            name: "n1".into(),
            data_dir: dir.path().to_path_buf(),
            bind: loopback,
            advertise: "127.0.0.1:7950".into(),
            gossip_bind: loopback,
            gossip_advertise: loopback,
            peers: Vec::new(),
            forget_dead_after: std::time::Duration::from_secs(3600),
            labels: Default::default(),
            reserve_cpu_millis: 0,
            reserve_memory_bytes: 0,
            network: network::NetworkConfig {
                bridge: "shoaltest0".into(),
                cni_plugin_dirs: Vec::new(),
                cluster_cidr: None,
                resolv_conf: dir.path().join("resolv.conf"),
                dns_port: 0,
                cni_config: None,
            },
        };
        let log = MemoryLog::new("n1", State::default());
        log.apply(Command::RegisterNode {
            node: Node {
                name: "n1".into(),
                addr: "127.0.0.1:7950".into(),
                os: "Linux".into(),
                arch: "x86_64".into(),
                cpus: 2,
                memory_total_bytes: 1 << 30,
                cpu_allocatable_millis: 2000,
                memory_allocatable_bytes: 1 << 30,
                labels: Default::default(),
                started_at_ms: 0,
                status: NodeStatus::Alive,
                taints: Vec::new(),
                drain: false,
                subnet: None,
            },
        });
        let facts = crate::node::cluster::facts(&config, 0);
        let membership = Membership::start(
            MembershipConfig::new(
                "n1",
                loopback,
                "test-cluster",
                facts,
                dir.path().join("peers.json"),
            ),
            Vec::new(),
        )
        .await
        .expect("gossip on loopback");
        let network = Arc::new(network::NodeNetwork::new(
            config.network.clone(),
            dir.path(),
        ));
        let shared = Arc::new(Shared {
            config,
            raft: log.clone(),
            membership,
            cluster_id: "test-cluster".into(),
            runtime: Arc::new(FakeRuntime::new()),
            started_at_ms: 0,
            http: reqwest::Client::new(),
            network,
            leaving: tokio::sync::watch::channel(false).0,
        });
        Fixture {
            log,
            router: shoal_api::server::router(Arc::new(NodeBackend(shared))),
            _dir: dir,
        }
    }

    async fn call(
        fixture: &Fixture,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body.to_string()))
            .expect("request");
        let response = fixture
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("answered");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    const SPEC: &str = "name: web\nservices: [{name: hello, image: busybox, replicas: 2}]\n";

    #[tokio::test]
    async fn an_app_is_put_through_the_log_and_shows_its_rollout() {
        let fixture = fixture().await;
        let (status, body) = call(&fixture, Method::POST, "/v1/apps", SPEC).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            (body["version"].as_u64(), body["changed"].as_bool()),
            (Some(1), Some(true))
        );
        assert!(matches!(
            fixture.log.commands().last(),
            Some(Command::PutApp { spec }) if spec.name == "web"
        ));
        let (status, app) = call(&fixture, Method::GET, "/v1/apps/web", "").await;
        assert_eq!(status, StatusCode::OK, "{app}");
        assert_eq!(app["rollout"]["done"], false, "{app}");
        assert_eq!(app["rollout"]["services"][0]["wanted"], 2, "{app}");
        let (_, again) = call(&fixture, Method::POST, "/v1/apps", SPEC).await;
        assert_eq!(again["changed"], false, "the same spec changes nothing");
    }

    #[tokio::test]
    async fn a_bad_spec_names_the_field_and_changes_nothing() {
        let fixture = fixture().await;
        let before = fixture.log.commands().len();
        let typo = "name: web\nservices: [{name: hello, image: busybox, replicaz: 2}]\n";
        let (status, body) = call(&fixture, Method::POST, "/v1/apps", typo).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("replicaz"),
            "{body}"
        );
        assert_eq!(fixture.log.commands().len(), before);
        let (status, _) = call(&fixture, Method::GET, "/v1/apps/web", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn no_leader_is_503_and_an_unknown_node_404() {
        let fixture = fixture().await;
        let (status, body) = call(
            &fixture,
            Method::POST,
            "/v1/nodes/nope/taints",
            r#"{"taint": "gpu=true:NoSchedule"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(
            body["error"].as_str().unwrap_or_default().contains("nope"),
            "{body}"
        );
        fixture
            .log
            .refuse(Some(ProposeError::NoLeader("an election".into())));
        let (status, body) = call(&fixture, Method::POST, "/v1/apps", SPEC).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let (status, _) = call(&fixture, Method::GET, "/v1/apps", "").await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "reads wait for the leader"
        );
    }

    #[tokio::test]
    async fn nodes_merge_the_log_and_gossip() {
        let fixture = fixture().await;
        let (status, nodes) = call(&fixture, Method::GET, "/v1/nodes", "").await;
        assert_eq!(status, StatusCode::OK, "{nodes}");
        let node = &nodes[0];
        assert_eq!(node["name"], "n1", "{nodes}");
        assert_eq!(node["role"], "voter");
        assert_eq!(node["leader"], true);
        assert_eq!(node["release"], shoal_state::RELEASE, "from gossip: {node}");
    }
}

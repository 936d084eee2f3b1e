//! The app spec: an app of services, as users write it in YAML or JSON.
//!
//! One type serves as input, stored state and output: quantities are stored
//! normalized (millicores, bytes, milliseconds) and printed back in a form
//! the parser accepts, so `shoal app inspect -o json` can be applied again.
//! A service is written flat (`image` beside `replicas`) while in memory its
//! workload is one variant of [`Workload`]; `flat` holds the written form,
//! which is also what the cluster stores.

mod duration;
mod error;
mod files;
mod flat;
mod health;
mod placement;
mod ports;
mod resources;
mod restart;
mod security;
mod update;
mod validate;
mod workload;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::placement::Toleration;

pub use duration::Millis;
pub use error::{FieldError, SpecError};
pub use files::{
    check_object_name, check_target, FileKind, FileMode, FileRef, FILES_MAX, OBJECT_NAME_CHARS_MAX,
};
pub use health::{Health, HealthSpec, HttpCheck, PortRef, Probe, RestartAfter, TcpCheck};
pub use placement::{PlacementSpec, Strategy};
pub use ports::{Port, Protocol};
pub use resources::{Bytes, Millicores, Resources};
pub use restart::{RestartPolicy, RestartSpec};
pub use security::{Capabilities, Needs, Security, CAPABILITIES, DEFAULT_CAPABILITIES};
pub use update::{FailureAction, Ratio, Update, UpdateOrder, UpdateSpec, RATIO_ONE};
pub use validate::{check_dns_label, validate};
pub use workload::{ContainerSpec, UserSpec, Workload};

/// Largest spec body accepted, in bytes (API and CLI alike).
pub const SPEC_BYTES_MAX: usize = 1 << 20;
/// Services of one app, at most.
pub const SERVICES_MAX: usize = 64;
/// Replicas of one service, at most.
pub const REPLICAS_MAX: u32 = 10_000;
/// Labels of one service or node, at most.
pub const LABELS_MAX: usize = 64;
/// Environment variables of one service, at most.
pub const ENV_MAX: usize = 1024;
/// Arguments of one command, at most.
pub const ARGS_MAX: usize = 4096;
pub const ARG_BYTES_MAX: usize = 128 << 10;
/// Named ports of one service, at most.
pub const PORTS_MAX: usize = 64;
pub const CPU_MILLIS_MAX: u64 = 1024 * 1000;
pub const MEMORY_BYTES_MIN: u64 = 4 << 20;
pub const MEMORY_BYTES_MAX: u64 = 16 << 40;
pub const STOP_GRACE_MS_MAX: u64 = 10 * 60 * 1000;
pub const BACKOFF_MS_MAX: u64 = 60 * 60 * 1000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// An app: a named group of services deployed and removed together.
pub struct AppSpec {
    /// DNS label: lowercase letters, digits and `-`, at most 63 characters.
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub services: Vec<ServiceSpec>,
}

/// One service: `replicas` identical tasks of one workload.
///
/// Read, written and described (JSON Schema) as the flat object users write,
/// `flat::FlatService`, where each field is documented for them; the
/// workload's fields sit beside the others there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "flat::FlatService", into = "flat::FlatService")]
pub struct ServiceSpec {
    /// DNS label, unique within the app.
    pub name: String,
    /// What each task runs.
    pub workload: Workload,
    pub replicas: u32,
    pub resources: Resources,
    pub restart: RestartSpec,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    /// Time between SIGTERM and SIGKILL when the task stops.
    pub stop_grace_period: Millis,
    /// Whether the service's tasks get the cluster network (CNI): an
    /// address, DNS, published ports. Without it a task has a network
    /// namespace of its own with only a loopback.
    pub network: bool,
    pub kind: Kind,
    /// 0 to 1000; a task may take the place of tasks of a lower priority.
    pub priority: u32,
    pub placement: PlacementSpec,
    /// Taints of nodes this service may run on anyway.
    pub tolerations: Vec<Toleration>,
    /// Which nodes hold the service's image before they need it.
    pub prepull: Prepull,
    /// Secrets its tasks get as files (format 8).
    pub secrets: Vec<FileRef>,
    /// Configs its tasks get as files (format 8).
    pub configs: Vec<FileRef>,
    /// How the node running a task checks it (format 12).
    pub health: Option<HealthSpec>,
    /// How a change of the service rolls out (format 13).
    pub update: Option<UpdateSpec>,
}

/// Which nodes pull a service's image ahead of need, so that a replica
/// lost with its node starts elsewhere without a pull (and without the
/// registry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Prepull {
    /// The node that would take over a lost replica (the service's
    /// standby) holds the image: with the nodes running it, two copies.
    #[default]
    Successors,
    /// Every node that may run the service holds the image.
    All,
    /// Only the nodes running the service hold the image.
    None,
}

impl Prepull {
    pub fn as_str(self) -> &'static str {
        match self {
            Prepull::Successors => "successors",
            Prepull::All => "all",
            Prepull::None => "none",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `replicas` tasks, replaced when they fail or their node does.
    #[default]
    Service,
    /// One task on every node whose labels and taints allow it, following
    /// nodes as they join and leave; `replicas` is ignored.
    Global,
    /// `replicas` tasks that run to completion: a task that exited with 0
    /// is done and never runs again; a failed one is retried per `restart`.
    Batch,
}

impl ServiceSpec {
    /// Whether a task made from `self` can stand for `other`: everything but
    /// the replica count is the same, so scaling never restarts a task.
    pub fn same_task_as(&self, other: &ServiceSpec) -> bool {
        // Every field but `replicas`, named so that a new field cannot be
        // forgotten here (the pattern stops compiling); no clone, as the
        // scheduler asks this of every task in every round. `Workload`
        // compares every field of every variant by its derived `PartialEq`.
        let ServiceSpec {
            name,
            workload,
            replicas: _,
            resources,
            restart,
            labels,
            ports,
            stop_grace_period,
            network,
            kind,
            priority,
            placement,
            tolerations,
            // Which nodes hold the image ahead changes no task.
            prepull: _,
            secrets,
            configs,
            // A new check is a new task: the node checks what its task
            // says.
            health,
            // How the next change rolls out changes no task.
            update: _,
        } = self;
        *name == other.name
            && *workload == other.workload
            && *resources == other.resources
            && *restart == other.restart
            && *labels == other.labels
            && *ports == other.ports
            && *stop_grace_period == other.stop_grace_period
            && *network == other.network
            && *kind == other.kind
            && *priority == other.priority
            && *placement == other.placement
            && *tolerations == other.tolerations
            && *secrets == other.secrets
            && *configs == other.configs
            && *health == other.health
    }

    /// The secrets and configs its tasks get, with their kind.
    pub fn files(&self) -> impl Iterator<Item = (FileKind, &FileRef)> {
        let secrets = self.secrets.iter().map(|file| (FileKind::Secret, file));
        secrets.chain(self.configs.iter().map(|file| (FileKind::Config, file)))
    }

    /// What the service's container may do beyond the defaults.
    pub fn security(&self) -> &Security {
        let Workload::Container(container) = &self.workload;
        &container.security
    }

    /// What a node's operator must allow before a task of this service
    /// may run there.
    pub fn needs(&self) -> Needs {
        self.security().needs()
    }

    /// The image the service's tasks run, to show to people; every
    /// workload today is a container.
    pub fn image(&self) -> &str {
        let Workload::Container(container) = &self.workload;
        &container.image
    }
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Parses and validates an app spec from YAML or JSON (native or Stellar's
/// application config), returning it normalized.
pub fn parse_app(body: &[u8]) -> Result<AppSpec, SpecError> {
    if body.len() > SPEC_BYTES_MAX {
        return Err(SpecError::one(
            "",
            format!(
                "spec is {} bytes, more than the limit of {SPEC_BYTES_MAX}; split the app into smaller apps",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|error| SpecError::one("", format!("spec is not UTF-8 text: {error}")))?;
    let value: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|error| SpecError::one("", format!("invalid JSON: {error}")))?
    } else {
        serde_saphyr::from_str(text)
            .map_err(|error| SpecError::one("", format!("invalid YAML: {error}")))?
    };
    if !value.is_object() {
        return Err(SpecError::one(
            "",
            "spec must be a mapping with `name` and `services`",
        ));
    }
    let mut spec = if crate::stellar::looks_like_stellar(&value) {
        crate::stellar::to_app(value)?
    } else {
        serde_path_to_error::deserialize::<_, AppSpec>(value).map_err(|error| {
            let path = error.path().to_string();
            SpecError::one(path, error.into_inner().to_string())
        })?
    };
    validate(&mut spec)?;
    Ok(spec)
}

/// The JSON Schema of [`AppSpec`] (the native format).
pub fn app_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(AppSpec)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> ServiceSpec {
        let body = b"name: a\nservices: [{name: web, image: busybox, command: [sh], replicas: 2}]";
        parse_app(body).expect("valid").services.remove(0)
    }

    fn container(spec: &mut ServiceSpec) -> &mut ContainerSpec {
        let Workload::Container(container) = &mut spec.workload;
        container
    }

    #[test]
    fn secrets_and_configs_are_read_checked_and_written_only_when_listed() {
        let parse = |files: &str| {
            parse_app(
                format!("name: a\nservices: [{{name: web, image: busybox, {files}}}]").as_bytes(),
            )
        };
        let app = parse(
            r#"user: {uid: 7, gid: 8}, secrets: [{name: db, mode: "0440"}, {name: tls.key, target: /etc/tls/key.pem, uid: 0}], configs: [{name: app.toml}]"#,
        )
        .expect("valid");
        let service = &app.services[0];
        let files: Vec<_> = service
            .files()
            .map(|(kind, file)| (kind, file.target_path(kind), file.mode_or_default(kind)))
            .collect();
        assert_eq!(
            files,
            [
                (
                    FileKind::Secret,
                    "/run/secrets/db".to_string(),
                    FileMode(0o440)
                ),
                (
                    FileKind::Secret,
                    "/etc/tls/key.pem".to_string(),
                    FileMode(0o400)
                ),
                (FileKind::Config, "/app.toml".to_string(), FileMode(0o444)),
            ]
        );
        let json = serde_json::to_string(&app).expect("json");
        assert!(
            json.ends_with(r#""secrets":[{"name":"db","mode":"0440"},{"name":"tls.key","target":"/etc/tls/key.pem","uid":0}],"configs":[{"name":"app.toml"}]}]}"#),
            "{json}"
        );
        let plain = serde_json::to_string(&parse("replicas: 1").expect("valid")).expect("json");
        assert!(
            !plain.contains("secrets") && !plain.contains("configs"),
            "{plain}"
        );
        // A change of the files a task gets replaces the task.
        let mut other = service.clone();
        other.secrets[0].mode = None;
        assert!(!other.same_task_as(service));
        for (files, path) in [
            ("secrets: [{name: ../db}]", "services[0].secrets[0].name"),
            (
                "secrets: [{name: db, mode: 0440}]",
                "services[0].secrets[0].mode",
            ),
            (
                r#"secrets: [{name: db, mode: "4755"}]"#,
                "services[0].secrets[0].mode",
            ),
            (
                "secrets: [{name: db, target: etc/db}]",
                "services[0].secrets[0].target",
            ),
            (
                "secrets: [{name: db, target: /proc/db}]",
                "services[0].secrets[0].target",
            ),
            (
                "secrets: [{name: db}, {name: pw, target: db}]",
                "services[0].secrets[1].target",
            ),
            (
                "secrets: [{name: db, target: /x}], configs: [{name: c, target: /x}]",
                "services[0].configs[0].target",
            ),
            (
                "configs: [{name: c, owner: root}]",
                "services[0].configs[0]",
            ),
            ("configs: [{name: proc}]", "services[0].configs[0].target"),
            (
                "configs: [{name: c, target: /etc/hosts}]",
                "services[0].configs[0].target",
            ),
            (
                "secrets: [{name: a, target: /etc/app}, {name: b, target: /etc/app/key}]",
                "services[0].secrets[1].target",
            ),
        ] {
            let error = parse(files).expect_err(files);
            assert!(error.errors[0].path.starts_with(path), "{files}: {error}");
        }
    }

    #[test]
    fn scaling_keeps_the_task_and_any_change_of_the_container_replaces_it() {
        let mut scaled = web();
        scaled.replicas = 5;
        assert!(scaled.same_task_as(&web()));
        let changes: [fn(&mut ContainerSpec); 6] = [
            |c| c.image = "docker.io/library/busybox:1.36".into(),
            |c| c.command = None,
            |c| c.args = Some(vec!["-c".into()]),
            |c| drop(c.env.insert("A".into(), "1".into())),
            |c| c.working_dir = Some("/srv".into()),
            |c| c.user = Some(UserSpec { uid: 1, gid: 1 }),
        ];
        for (index, change) in changes.into_iter().enumerate() {
            let mut changed = web();
            change(container(&mut changed));
            assert!(!changed.same_task_as(&web()), "change {index}");
            assert!(!web().same_task_as(&changed), "change {index}");
        }
    }

    #[test]
    fn health_is_read_with_its_defaults_checked_and_written_only_when_set() {
        let parse = |service: &str| parse_app(format!("name: a\nservices: [{service}]").as_bytes());
        let app = parse(
            "{name: web, image: busybox, ports: [{name: http, container_port: 8080}], health: {http: {port: http}}}",
        )
        .expect("valid");
        let health = app.services[0].health.as_ref().expect("health");
        assert_eq!(health.interval, Millis(10_000));
        assert_eq!(health.timeout, Millis(1_000));
        assert_eq!(health.retries, 3);
        assert_eq!(health.start_period, Millis(0));
        assert_eq!(
            health.start_interval(),
            Millis(1_000),
            "1s, or interval if shorter"
        );
        assert_eq!(health.restart_after(), Some(Millis(30_000)));
        assert_eq!(
            health.probe(&app.services[0].ports),
            Some(Probe::Http {
                path: "/".into(),
                port: 8080
            })
        );
        // Written last, only when set; read back the same.
        let json = serde_json::to_string(&app).expect("serializes");
        assert!(
            json.contains(r#""health":{"http":{"path":"/","port":"http"}"#),
            "{json}"
        );
        let back: AppSpec = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back, app);
        let plain = parse("{name: web, image: busybox}").expect("valid");
        let json = serde_json::to_string(&plain).expect("serializes");
        assert!(!json.contains("health"), "{json}");
        // A new check is a new task.
        let mut other = app.services[0].clone();
        other.health = None;
        assert!(!other.same_task_as(&app.services[0]));
        let never = parse(
            "{name: web, image: busybox, health: {tcp: {port: 80}, restart_after: never, start_interval: 500ms, timeout: 300ms}}",
        )
        .expect("valid");
        let health = never.services[0].health.as_ref().expect("health");
        assert_eq!(health.restart_after(), None);
        assert_eq!(health.start_interval(), Millis(500));
        let json = serde_json::to_string(&never).expect("serializes");
        assert!(json.contains(r#""restart_after":"never""#), "{json}");

        for (service, path, words) in [
            ("{health: {}}", "services[0].health", "names no check"),
            (
                "{health: {tcp: {port: 80}, http: {port: 80}}}",
                "services[0].health",
                "more than one",
            ),
            (
                "{health: {tcp: {port: 0}}}",
                "services[0].health.tcp.port",
                "1 to 65535",
            ),
            (
                "{health: {tcp: {port: web}}}",
                "services[0].health.tcp.port",
                "named `web`",
            ),
            (
                "{health: {http: {port: 80, path: healthz}}}",
                "services[0].health.http.path",
                "start with `/`",
            ),
            (
                "{health: {tcp: {port: 80}, interval: 10ms}}",
                "services[0].health.interval",
                "100ms",
            ),
            (
                "{health: {tcp: {port: 80}, interval: 1s, timeout: 2s}}",
                "services[0].health.timeout",
                "interval",
            ),
            (
                "{health: {tcp: {port: 80}, start_interval: 500ms}}",
                "services[0].health.start_interval",
                "at least `timeout`",
            ),
            (
                "{health: {tcp: {port: 80}, retries: 0}}",
                "services[0].health.retries",
                "1 to 100",
            ),
            (
                "{health: {tcp: {port: 80}, restart_after: 2d}}",
                "services[0].health.restart_after",
                "24h",
            ),
            (
                "{health: {tcp: {port: 80}}, network: false}",
                "services[0].health.tcp",
                "network: true",
            ),
            (
                "{health: {exec: []}}",
                "services[0].health.exec",
                "names no command",
            ),
            (
                "{health: {exec: [\"\"]}}",
                "services[0].health.exec",
                "names no command",
            ),
        ] {
            let error = parse(&format!(
                "{{name: web, image: busybox, {}",
                service.trim_start_matches('{')
            ))
            .expect_err(service);
            assert!(
                error
                    .errors
                    .iter()
                    .any(|e| e.path == path && e.message.contains(words)),
                "{service}: {error}"
            );
        }
        // A command needs no network, and no port.
        let exec =
            parse("{name: web, image: busybox, network: false, health: {exec: [pg_isready, -q]}}")
                .expect("valid");
        let health = exec.services[0].health.as_ref().expect("health");
        assert_eq!(
            health.probe(&[]),
            Some(Probe::Exec(vec!["pg_isready".into(), "-q".into()]))
        );
        // A start interval is never shorter than a check may take.
        let slow = parse("{name: web, image: busybox, health: {tcp: {port: 80}, timeout: 5s}}")
            .expect("valid");
        let health = slow.services[0].health.as_ref().expect("health");
        assert_eq!(health.start_interval(), Millis(5_000));
        let error =
            parse("{name: web, image: busybox, health: {tcp: {port: 80}, restart_after: soon}}")
                .expect_err("not a duration");
        assert!(error.to_string().contains("never"), "{error}");
    }

    #[test]
    fn prepull_is_read_checked_and_changes_no_task() {
        let parse = |service: &str| parse_app(format!("name: a\nservices: [{service}]").as_bytes());
        let all = parse("{name: web, image: busybox, prepull: all}").expect("valid");
        assert_eq!(all.services[0].prepull, Prepull::All);
        let mut other = web();
        other.prepull = Prepull::None;
        assert!(other.same_task_as(&web()), "prepull restarts no task");
        // Written only when not the default, last in the service.
        let json = serde_json::to_string(&all).expect("serializes");
        assert!(json.ends_with(r#""prepull":"all"}]}"#), "{json}");
        let default = parse("{name: web, image: busybox}").expect("valid");
        assert_eq!(default.services[0].prepull, Prepull::Successors);
        let json = serde_json::to_string(&default).expect("serializes");
        assert!(!json.contains("prepull"), "{json}");

        let error =
            parse("{name: web, image: busybox, prepull: sometimes}").expect_err("bad value");
        assert_eq!(error.errors[0].path, "services[0].prepull", "{error}");
        assert!(error.to_string().contains("successors"), "{error}");
        let error =
            parse("{name: web, image: busybox, kind: global, prepull: all}").expect_err("global");
        assert_eq!(error.errors[0].path, "services[0].prepull", "{error}");
        assert!(error.to_string().contains("kind: service"), "{error}");
        // The default is accepted for every kind.
        parse("{name: web, image: busybox, kind: batch, prepull: successors}").expect("valid");
    }

    #[test]
    fn security_is_read_normalized_checked_and_written_only_when_set() {
        let parse = |service: &str| parse_app(format!("name: a\nservices: [{service}]").as_bytes());
        let app = parse(
            "{name: web, image: busybox, network: false, security: {host_network: true, capabilities: {add: [cap_net_admin, NET_ADMIN, SYS_TIME], drop: [all]}, read_only_root: true}}",
        )
        .expect("valid");
        let security = app.services[0].security();
        assert_eq!(security.capabilities.add, ["NET_ADMIN", "SYS_TIME"]);
        assert_eq!(security.capabilities.drop, ["ALL"]);
        assert_eq!(
            app.services[0].needs(),
            Needs {
                privileged: true,
                host_network: true
            }
        );
        // Dropping everything and adding two leaves the two.
        assert_eq!(security.effective_capabilities(), ["NET_ADMIN", "SYS_TIME"]);
        let json = serde_json::to_string(&app).expect("serializes");
        assert!(json.contains(r#""security":{"host_network":true,"capabilities":{"add":["NET_ADMIN","SYS_TIME"],"drop":["ALL"]},"read_only_root":true}"#), "{json}");
        // A spec without it is written as before.
        let json = serde_json::to_string(&parse("{name: web, image: busybox}").expect("valid"))
            .expect("serializes");
        assert!(!json.contains("security"), "{json}");

        // Tightening needs no allowance; adding a default one neither.
        let tight = parse(
            "{name: web, image: busybox, security: {read_only_root: true, capabilities: {add: [CHOWN], drop: [NET_BIND_SERVICE]}}}",
        )
        .expect("valid");
        assert!(!tight.services[0].needs().any());
        assert_eq!(tight.services[0].security().first_loosening(), None);
        assert!(!tight.services[0]
            .security()
            .effective_capabilities()
            .contains(&"NET_BIND_SERVICE"));
        for (field, needs) in [
            ("privileged: true", "security.privileged"),
            ("host_pid: true", "security.host_pid"),
            (
                "capabilities: {add: [NET_RAW]}",
                "security.capabilities.add",
            ),
        ] {
            let app = parse(&format!(
                "{{name: web, image: busybox, security: {{{field}}}}}"
            ))
            .expect("valid");
            assert!(app.services[0].needs().privileged, "{field}");
            assert_eq!(app.services[0].security().first_loosening(), Some(needs));
        }
        let everything =
            parse("{name: web, image: busybox, security: {privileged: true}}").expect("valid");
        assert_eq!(
            everything.services[0]
                .security()
                .effective_capabilities()
                .len(),
            CAPABILITIES.len()
        );

        for (service, path, words) in [
            (
                "{name: web, image: busybox, security: {host_network: true}}",
                "services[0].security.host_network",
                "network: false",
            ),
            (
                "{name: web, image: busybox, security: {capabilities: {add: [NET_FOO]}}}",
                "services[0].security.capabilities.add[0]",
                "capabilities(7)",
            ),
            (
                "{name: web, image: busybox, security: {capabilities: {add: [ALL]}}}",
                "services[0].security.capabilities.add[0]",
                "privileged: true",
            ),
            (
                "{name: web, image: busybox, security: {capabilities: {drop: [CHOWN, bogus]}}}",
                "services[0].security.capabilities.drop[1]",
                "or ALL",
            ),
            (
                "{name: web, image: busybox, security: {privileged: yes please}}",
                "services[0].security.privileged",
                "",
            ),
            (
                "{name: web, image: busybox, security: {seccomp: unconfined}}",
                "services[0].security.seccomp",
                "unknown field",
            ),
        ] {
            let error = parse(service).expect_err(service);
            assert_eq!(error.errors[0].path, path, "{error}");
            assert!(error.to_string().contains(words), "{error}");
        }
    }

    #[test]
    fn the_image_shown_is_the_containers() {
        assert_eq!(web().image(), "docker.io/library/busybox:latest");
    }
}

//! Stellar's application config, accepted as it is and mapped onto
//! [`AppSpec`]. Stellar wrote labels as `key=value` lists, gave each service a
//! `process` (uid, gid, full argv) and named a containerd runtime; shoal runs
//! every service on containerd's runc v2 runtime, so `runtime` and
//! `snapshotter` are accepted and recorded as labels only.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::spec::{
    AppSpec, ContainerSpec, FieldError, Port, Protocol, ServiceSpec, SpecError, UserSpec, Workload,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StellarApp {
    name: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    services: Vec<StellarService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StellarService {
    name: String,
    image: String,
    #[serde(default)]
    runtime: Option<String>,
    #[serde(default)]
    snapshotter: Option<String>,
    #[serde(default)]
    process: Option<StellarProcess>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    network: bool,
    #[serde(default)]
    endpoints: Vec<StellarEndpoint>,
    #[serde(default)]
    replicas: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StellarProcess {
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    pty: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StellarEndpoint {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    host: Option<String>,
    port: u16,
    #[serde(default)]
    tls: bool,
}

/// Stellar's format writes labels as lists and services with `process`.
pub(crate) fn looks_like_stellar(value: &serde_json::Value) -> bool {
    if value.get("labels").is_some_and(|labels| labels.is_array()) {
        return true;
    }
    let Some(services) = value.get("services").and_then(|s| s.as_array()) else {
        return false;
    };
    services.iter().any(|service| {
        ["process", "runtime", "snapshotter", "endpoints"]
            .iter()
            .any(|key| service.get(key).is_some())
            || service
                .get("labels")
                .is_some_and(|labels| labels.is_array())
    })
}

pub(crate) fn to_app(value: serde_json::Value) -> Result<AppSpec, SpecError> {
    let app: StellarApp = serde_path_to_error::deserialize(value).map_err(|error| SpecError {
        errors: vec![FieldError {
            path: error.path().to_string(),
            message: format!("{} (read as a Stellar application config)", error.inner()),
        }],
    })?;
    let mut errors = Vec::new();
    let labels = label_map(&app.labels, "labels", &mut errors);
    let mut services = Vec::new();
    for (index, service) in app.services.into_iter().enumerate() {
        let mut labels = label_map(
            &service.labels,
            &format!("services[{index}].labels"),
            &mut errors,
        );
        if let Some(runtime) = service.runtime {
            labels.insert("stellar.runtime".into(), runtime);
        }
        if let Some(snapshotter) = service.snapshotter {
            labels.insert("stellar.snapshotter".into(), snapshotter);
        }
        let process = service.process;
        let mut env = BTreeMap::new();
        for (env_index, entry) in process.iter().flat_map(|p| p.env.iter()).enumerate() {
            match entry.split_once('=') {
                Some((key, value)) => {
                    env.insert(key.to_string(), value.to_string());
                }
                None => errors.push(FieldError {
                    path: format!("services[{index}].process.env[{env_index}]"),
                    message: format!("`{entry}` must be KEY=VALUE"),
                }),
            }
        }
        if process.as_ref().is_some_and(|p| p.pty) {
            errors.push(FieldError {
                path: format!("services[{index}].process.pty"),
                message: "terminals are not supported; set it to false".into(),
            });
        }
        let ports = service
            .endpoints
            .iter()
            .map(|endpoint| {
                let _ = (&endpoint.service, &endpoint.host, endpoint.tls);
                Port {
                    name: None,
                    container_port: endpoint.port,
                    protocol: if endpoint.protocol.as_deref() == Some("udp") {
                        Protocol::Udp
                    } else {
                        Protocol::Tcp
                    },
                    host_port: None,
                }
            })
            .collect();
        services.push(ServiceSpec {
            name: service.name,
            workload: Workload::Container(ContainerSpec {
                image: service.image,
                command: process
                    .as_ref()
                    .filter(|p| !p.args.is_empty())
                    .map(|p| p.args.clone()),
                args: None,
                env,
                working_dir: None,
                user: process.as_ref().map(|p| UserSpec {
                    uid: p.uid,
                    gid: p.gid,
                }),
                security: Default::default(),
            }),
            replicas: service.replicas.unwrap_or(1),
            resources: Default::default(),
            restart: Default::default(),
            labels,
            ports,
            stop_grace_period: crate::spec::Millis(10_000),
            network: service.network,
            kind: Default::default(),
            priority: 0,
            placement: Default::default(),
            tolerations: Vec::new(),
            prepull: Default::default(),
            secrets: Vec::new(),
            configs: Vec::new(),
            health: None,
            update: None,
        });
    }
    if !errors.is_empty() {
        return Err(SpecError { errors });
    }
    Ok(AppSpec {
        name: app.name,
        labels,
        services,
    })
}

fn label_map(
    list: &[String],
    path: &str,
    errors: &mut Vec<FieldError>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for (index, entry) in list.iter().enumerate() {
        let (key, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        if labels.insert(key.to_string(), value.to_string()).is_some() {
            errors.push(FieldError {
                path: format!("{path}[{index}]"),
                message: format!("label `{key}` is given twice"),
            });
        }
    }
    labels
}

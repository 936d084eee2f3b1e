//! Checks everything serde cannot (names, limits, paths, combinations of
//! fields) and normalizes what the cluster stores (image references, the
//! restart policy a kind implies); every error names its field path.

use std::collections::BTreeMap;
use std::str::FromStr;

use super::{
    check_object_name, check_target, AppSpec, ContainerSpec, FieldError, FileKind, Kind,
    PlacementSpec, Prepull, RestartPolicy, SpecError, Workload, ARGS_MAX, ARG_BYTES_MAX,
    BACKOFF_MS_MAX, CPU_MILLIS_MAX, ENV_MAX, FILES_MAX, LABELS_MAX, MEMORY_BYTES_MAX,
    MEMORY_BYTES_MIN, PORTS_MAX, SERVICES_MAX, STOP_GRACE_MS_MAX,
};
use crate::placement::check_label_key;
use crate::placement::{
    AFFINITIES_MAX, AFFINITY_WEIGHT_MAX, CONSTRAINTS_MAX, PRIORITY_MAX, SPREADS_MAX,
    TOLERATIONS_MAX,
};

/// Checks everything serde cannot and normalizes image references.
pub fn validate(spec: &mut AppSpec) -> Result<(), SpecError> {
    let mut errors = Vec::new();
    let mut fail = |path: String, message: String| errors.push(FieldError { path, message });
    if let Err(message) = check_dns_label(&spec.name) {
        fail("name".into(), message);
    }
    check_labels(&spec.labels, "labels", &mut fail);
    if spec.services.is_empty() {
        fail("services".into(), "must list at least one service".into());
    }
    if spec.services.len() > SERVICES_MAX {
        fail(
            "services".into(),
            format!(
                "at most {SERVICES_MAX} services per app, got {}",
                spec.services.len()
            ),
        );
    }
    let mut seen = BTreeMap::new();
    for (index, service) in spec.services.iter_mut().enumerate() {
        let at = |field: &str| format!("services[{index}].{field}");
        if let Err(message) = check_dns_label(&service.name) {
            fail(at("name"), message);
        } else if let Some(first) = seen.insert(service.name.clone(), index) {
            fail(
                at("name"),
                format!(
                    "`{}` is already the name of services[{first}]; service names must be unique in an app",
                    service.name
                ),
            );
        }
        match &mut service.workload {
            Workload::Container(container) => {
                validate_container(container, &at, &mut fail);
                super::security::validate_security(
                    &mut container.security,
                    service.network,
                    &at,
                    &mut fail,
                );
            }
        }
        if let Some(cpu) = service.resources.cpu {
            if cpu.0 == 0 {
                fail(
                    at("resources.cpu"),
                    "must be more than 0; leave it out for no limit".into(),
                );
            } else if cpu.0 > CPU_MILLIS_MAX {
                fail(
                    at("resources.cpu"),
                    format!("at most {} cores, got {}m", CPU_MILLIS_MAX / 1000, cpu.0),
                );
            }
        }
        if let Some(memory) = service.resources.memory {
            if memory.0 < MEMORY_BYTES_MIN {
                fail(
                    at("resources.memory"),
                    format!(
                        "at least 4Mi (a container needs that much to start), got {} bytes",
                        memory.0
                    ),
                );
            } else if memory.0 > MEMORY_BYTES_MAX {
                fail(
                    at("resources.memory"),
                    format!("at most 16Ti, got {} bytes", memory.0),
                );
            }
        }
        if service.kind != Kind::Service && service.prepull != Prepull::default() {
            fail(
                at("prepull"),
                format!(
                    "applies to `kind: service` only (a {} service's tasks are not moved to a standby); remove it",
                    match service.kind {
                        Kind::Global => "global",
                        _ => "batch",
                    }
                ),
            );
        }
        validate_files(service, &at, &mut fail);
        if let Some(health) = &service.health {
            super::health::validate_health(health, service, &at, &mut fail);
        }
        if let Some(update) = &service.update {
            super::update::validate_update(update, service, &at, &mut fail);
        }
        let restart = service.restart;
        match (service.kind, restart.policy) {
            (Kind::Batch, Some(RestartPolicy::Always)) => fail(
                at("restart.policy"),
                "a batch job runs to completion, so `always` would run it forever; use `on-failure` (the default for batch) or `never`".into(),
            ),
            (Kind::Batch, None) => service.restart.policy = Some(RestartPolicy::OnFailure),
            (_, None) => service.restart.policy = Some(RestartPolicy::Always),
            _ => {}
        }
        if restart.attempts_max == Some(0) {
            fail(
                at("restart.attempts_max"),
                "must be at least 1 (the first run); leave it out for no limit".into(),
            );
        }
        if service.priority > PRIORITY_MAX {
            fail(
                at("priority"),
                format!(
                    "must be between 0 and {PRIORITY_MAX}, got {}",
                    service.priority
                ),
            );
        }
        validate_placement(&service.placement, &at("placement"), &mut fail);
        if service.tolerations.len() > TOLERATIONS_MAX {
            fail(
                at("tolerations"),
                format!(
                    "at most {TOLERATIONS_MAX} tolerations, got {}",
                    service.tolerations.len()
                ),
            );
        }
        if restart.backoff_initial.0 == 0 || restart.backoff_initial.0 > BACKOFF_MS_MAX {
            fail(
                at("restart.backoff_initial"),
                "must be between 1ms and 1h".into(),
            );
        }
        if restart.backoff_max < restart.backoff_initial || restart.backoff_max.0 > BACKOFF_MS_MAX {
            fail(
                at("restart.backoff_max"),
                "must be at least backoff_initial and at most 1h".into(),
            );
        }
        if service.stop_grace_period.0 > STOP_GRACE_MS_MAX {
            fail(at("stop_grace_period"), "must be at most 10m".into());
        }
        check_labels(&service.labels, &at("labels"), &mut fail);
        if service.ports.len() > PORTS_MAX {
            fail(at("ports"), format!("at most {PORTS_MAX} ports"));
        }
        let mut ports_seen = BTreeMap::new();
        let mut host_ports_seen = BTreeMap::new();
        for (port_index, port) in service.ports.iter().enumerate() {
            let port_at = |field: &str| at(&format!("ports[{port_index}].{field}"));
            if port.container_port == 0 {
                fail(
                    port_at("container_port"),
                    "must be between 1 and 65535".into(),
                );
            }
            if let Some(name) = &port.name {
                if let Err(message) = check_dns_label(name) {
                    fail(port_at("name"), message);
                }
            }
            if let Some(host_port) = port.host_port {
                if host_port == 0 {
                    fail(
                        port_at("host_port"),
                        "must be between 1 and 65535 (leave it out to publish nothing)".into(),
                    );
                } else if !service.network {
                    fail(
                        port_at("host_port"),
                        "publishes a port of the task's own network, which needs `network: true`; with `network: false` the task has only a loopback, which nothing outside it reaches".into(),
                    );
                } else if let Some(other) =
                    host_ports_seen.insert((host_port, port.protocol), port_index)
                {
                    fail(
                        port_at("host_port"),
                        format!(
                            "host port {host_port}/{} is also published by ports[{other}]",
                            port.protocol.as_str(),
                        ),
                    );
                }
            }
            if ports_seen
                .insert((port.container_port, port.protocol), port_index)
                .is_some()
            {
                fail(
                    port_at("container_port"),
                    format!(
                        "port {}/{:?} is listed twice",
                        port.container_port, port.protocol
                    ),
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SpecError { errors })
    }
}

/// The secrets and configs a service lists: names, targets (one file per
/// path), owners.
fn validate_files(
    service: &super::ServiceSpec,
    at: &impl Fn(&str) -> String,
    fail: &mut impl FnMut(String, String),
) {
    for (kind, list) in [
        (FileKind::Secret, &service.secrets),
        (FileKind::Config, &service.configs),
    ] {
        if list.len() > FILES_MAX {
            fail(
                at(kind.field()),
                format!("at most {FILES_MAX} per service, got {}", list.len()),
            );
        }
    }
    let mut targets: BTreeMap<String, String> = BTreeMap::new();
    let mut index_of = BTreeMap::new();
    for (kind, file) in service.files() {
        let index = index_of.entry(kind).or_insert(0usize);
        let here = format!("{}[{index}]", kind.field());
        *index += 1;
        if let Err(message) = check_object_name(&file.name) {
            fail(at(&format!("{here}.name")), message);
            continue;
        }
        if let Some(target) = &file.target {
            if let Err(message) = check_target(target) {
                fail(at(&format!("{here}.target")), message);
                continue;
            }
        }
        let path = file.target_path(kind);
        if let Err(message) = super::files::check_path(&path) {
            fail(at(&format!("{here}.target")), message);
            continue;
        }
        if let Some(first) = targets.insert(path.clone(), here.clone()) {
            fail(
                at(&format!("{here}.target")),
                format!(
                    "`{path}` is already the file of {first}; give one of them another `target`"
                ),
            );
        }
    }
    // A file cannot sit inside another file.
    for (path, here) in &targets {
        let mut parent = path.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            if let Some(outer) = targets.get(up) {
                fail(
                    at(&format!("{here}.target")),
                    format!(
                        "`{path}` would be inside `{up}`, the file of {outer}; choose another path"
                    ),
                );
                break;
            }
            parent = up;
        }
    }
}

/// The fields of a container: its image reference (normalized), command,
/// args, environment and working directory.
fn validate_container(
    container: &mut ContainerSpec,
    at: &impl Fn(&str) -> String,
    fail: &mut impl FnMut(String, String),
) {
    match oci_spec::distribution::Reference::from_str(&container.image) {
        Ok(reference) => container.image = reference.to_string(),
        Err(error) => fail(
            at("image"),
            format!(
                "`{}` is not a valid image reference ({error}); write e.g. `busybox:latest` or `registry.example:5000/team/app:1.2`",
                container.image
            ),
        ),
    }
    for (field, list) in [("command", &container.command), ("args", &container.args)] {
        if let Some(list) = list {
            if list.len() > ARGS_MAX {
                fail(
                    at(field),
                    format!("at most {ARGS_MAX} entries, got {}", list.len()),
                );
            }
            let bytes: usize = list.iter().map(String::len).sum();
            if bytes > ARG_BYTES_MAX {
                fail(
                    at(field),
                    format!("at most {ARG_BYTES_MAX} bytes in all, got {bytes}"),
                );
            }
            if list.iter().any(|arg| arg.contains('\0')) {
                fail(at(field), "must not contain NUL characters".into());
            }
        }
    }
    if container.command.as_ref().is_some_and(Vec::is_empty) {
        fail(
            at("command"),
            "must not be empty; leave it out to use the image's entrypoint".into(),
        );
    }
    if container.env.len() > ENV_MAX {
        fail(
            at("env"),
            format!("at most {ENV_MAX} variables, got {}", container.env.len()),
        );
    }
    for (key, value) in &container.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            fail(
                at(&format!("env.{key}")),
                "variable names must be non-empty and contain neither `=` nor NUL".into(),
            );
        }
        if value.contains('\0') {
            fail(
                at(&format!("env.{key}")),
                "value must not contain NUL".into(),
            );
        }
    }
    if let Some(dir) = &container.working_dir {
        if !dir.starts_with('/') {
            fail(
                at("working_dir"),
                format!("must be an absolute path, got `{dir}`; write e.g. `/app`"),
            );
        }
    }
}

fn validate_placement(
    placement: &PlacementSpec,
    path: &str,
    fail: &mut impl FnMut(String, String),
) {
    if placement.constraints.len() > CONSTRAINTS_MAX {
        fail(
            format!("{path}.constraints"),
            format!(
                "at most {CONSTRAINTS_MAX} constraints, got {}",
                placement.constraints.len()
            ),
        );
    }
    if placement.affinities.len() > AFFINITIES_MAX {
        fail(
            format!("{path}.affinities"),
            format!(
                "at most {AFFINITIES_MAX} affinities, got {}",
                placement.affinities.len()
            ),
        );
    }
    for (index, affinity) in placement.affinities.iter().enumerate() {
        if affinity.weight == 0 || affinity.weight.abs() > AFFINITY_WEIGHT_MAX {
            fail(
                format!("{path}.affinities[{index}].weight"),
                format!(
                    "must be between -{AFFINITY_WEIGHT_MAX} and {AFFINITY_WEIGHT_MAX} and not 0 (negative to avoid matching nodes), got {}",
                    affinity.weight
                ),
            );
        }
    }
    if placement.spread.len() > SPREADS_MAX {
        fail(
            format!("{path}.spread"),
            format!(
                "at most {SPREADS_MAX} spreads, got {}",
                placement.spread.len()
            ),
        );
    }
    for (index, spread) in placement.spread.iter().enumerate() {
        if let Err(message) = check_label_key(&spread.over) {
            fail(format!("{path}.spread[{index}].over"), message);
        }
        if spread.max_per == Some(0) {
            fail(
                format!("{path}.spread[{index}].max_per"),
                "must be at least 1; leave it out to spread evenly without a limit".into(),
            );
        }
    }
}

fn check_labels(
    labels: &BTreeMap<String, String>,
    path: &str,
    fail: &mut impl FnMut(String, String),
) {
    if labels.len() > LABELS_MAX {
        fail(
            path.into(),
            format!("at most {LABELS_MAX} labels, got {}", labels.len()),
        );
    }
    for (key, value) in labels {
        if let Err(message) = check_label_key(key) {
            fail(format!("{path}.{key}"), message);
        }
        if value.len() > 1024 {
            fail(
                format!("{path}.{key}"),
                "label values are at most 1024 bytes".into(),
            );
        }
    }
}

/// A DNS label as names of apps, services and ports must be.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a DNS label: use 1-63 lowercase letters, digits and `-`, starting with a letter and not ending with `-` (e.g. `{}`)",
            suggest_label(name)
        ))
    }
}

fn suggest_label(name: &str) -> String {
    let mut label: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .skip_while(|c| !c.is_ascii_lowercase())
        .take(63)
        .collect();
    while label.ends_with('-') {
        label.pop();
    }
    if label.is_empty() {
        "web".into()
    } else {
        label
    }
}

//! How the node that runs a task checks that the task does its job, and
//! what a task's health is.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Millis, Port, Protocol, ServiceSpec};

/// A service's health check: one of `http`, `tcp` and `exec`, and how
/// often and how patiently it runs. The node that runs a task checks
/// it; a task is `starting` until a check passes, then `healthy`, and
/// `unhealthy` after `retries` failures in a row. Only `healthy` tasks
/// (and tasks of services without a check, once they run) are in DNS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// An HTTP GET to the task's address: a status from 200 to 399 passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// A TCP connection to the task's address: accepted passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// A command and its arguments run inside the container (as its own
    /// process runs, without a shell): exit code 0 passes. Needs no
    /// network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Time between checks once the task is no longer starting (default
    /// 10s).
    #[serde(default = "default_interval")]
    pub interval: Millis,
    /// How long a check may take before it counts as failed (default 1s).
    #[serde(default = "default_timeout")]
    pub timeout: Millis,
    /// Failed checks in a row that make the task unhealthy (default 3).
    #[serde(default = "default_retries")]
    #[schemars(range(min = 1, max = 100))]
    pub retries: u32,
    /// After each start, failed checks in this time do not count (default
    /// 0s): for a task that needs a while to come up.
    #[serde(default = "no_time", skip_serializing_if = "is_zero")]
    pub start_period: Millis,
    /// Time between checks while the task is starting (default: 1s, or
    /// `interval` if shorter, or `timeout` if longer), so a new task is in
    /// DNS soon after it is ready. The first check runs as soon as the
    /// task runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<Millis>,
    /// How long a task stays unhealthy before it is restarted (with the
    /// service's restart back-off): a duration, or `never` (default:
    /// `interval` × `retries`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_after: Option<RestartAfter>,
}

/// `GET path` on a port of the task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// Starts with `/` (default `/`).
    #[serde(default = "default_path")]
    pub path: String,
    /// A port of the service, by name or number, or any number.
    pub port: PortRef,
}

/// A connection to a port of the task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    /// A port of the service, by name or number, or any number.
    pub port: PortRef,
}

/// A port named in a check: a number, or the name of one of the service's
/// ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// When an unhealthy task is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub enum RestartAfter {
    /// After it has been unhealthy this long.
    After(Millis),
    /// Never: it stays, withdrawn from DNS, until it passes again.
    Never,
}

impl TryFrom<String> for RestartAfter {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text == "never" {
            return Ok(RestartAfter::Never);
        }
        Millis::parse(&text).map(RestartAfter::After).map_err(|_| {
            format!("`{text}` is neither a duration nor `never`; write e.g. \"30s\" or \"never\"")
        })
    }
}

impl From<RestartAfter> for String {
    fn from(value: RestartAfter) -> String {
        match value {
            RestartAfter::Never => "never".into(),
            RestartAfter::After(after) => after.to_string(),
        }
    }
}

/// What a check of a task found, as the cluster knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Started, and no check passed yet.
    Starting,
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// What a check does, once its port is resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Http { path: String, port: u16 },
    Tcp { port: u16 },
    Exec(Vec<String>),
}

impl HealthSpec {
    /// The check, with a port named by the service resolved against
    /// `ports`; `None` if the spec names no kind or an unknown port
    /// (validation refuses both).
    pub fn probe(&self, ports: &[Port]) -> Option<Probe> {
        let resolve = |port: &PortRef| match port {
            PortRef::Number(number) => Some(*number),
            PortRef::Name(name) => ports
                .iter()
                .find(|port| port.name.as_deref() == Some(name) && port.protocol == Protocol::Tcp)
                .map(|port| port.container_port),
        };
        match (&self.http, &self.tcp, &self.exec) {
            (Some(http), None, None) => Some(Probe::Http {
                path: http.path.clone(),
                port: resolve(&http.port)?,
            }),
            (None, Some(tcp), None) => Some(Probe::Tcp {
                port: resolve(&tcp.port)?,
            }),
            (None, None, Some(command)) => Some(Probe::Exec(command.clone())),
            _ => None,
        }
    }

    /// Time between checks while the task is starting: as given, or 1s
    /// (no more than `interval`, no less than `timeout`).
    pub fn start_interval(&self) -> Millis {
        self.start_interval.unwrap_or(Millis(
            START_INTERVAL_DEFAULT_MS
                .min(self.interval.0)
                .max(self.timeout.0),
        ))
    }

    /// How long a task stays unhealthy before it is restarted; `None`:
    /// never.
    pub fn restart_after(&self) -> Option<Millis> {
        match self.restart_after {
            Some(RestartAfter::Never) => None,
            Some(RestartAfter::After(after)) => Some(after),
            None => Some(Millis(
                self.interval.0.saturating_mul(u64::from(self.retries)),
            )),
        }
    }
}

/// Time between checks of a starting task when the spec does not say.
const START_INTERVAL_DEFAULT_MS: u64 = 1_000;

fn default_interval() -> Millis {
    Millis(10_000)
}

fn default_timeout() -> Millis {
    Millis(1_000)
}

fn default_retries() -> u32 {
    3
}

fn default_path() -> String {
    "/".into()
}

fn no_time() -> Millis {
    Millis(0)
}

fn is_zero(value: &Millis) -> bool {
    value.0 == 0
}

/// Bounds of a check's times.
const INTERVAL_MS_MIN: u64 = 100;
const INTERVAL_MS_MAX: u64 = 3_600_000;
const TIMEOUT_MS_MIN: u64 = 10;
const START_PERIOD_MS_MAX: u64 = 3_600_000;
const RESTART_AFTER_MS_MAX: u64 = 86_400_000;
/// Failed checks in a row a spec may wait for before a task is unhealthy.
const RETRIES_MAX: u32 = 100;
/// Longest path an HTTP check asks for.
const PATH_BYTES_MAX: usize = 1024;

/// Checks a service's `health`: one kind, a reachable port, times in
/// bounds. Errors name the field under `at("health…")`.
pub(super) fn validate_health(
    health: &HealthSpec,
    service: &ServiceSpec,
    at: &impl Fn(&str) -> String,
    fail: &mut impl FnMut(String, String),
) {
    let kinds = [
        health.http.is_some(),
        health.tcp.is_some(),
        health.exec.is_some(),
    ];
    match kinds.iter().filter(|set| **set).count() {
        0 => fail(
            at("health"),
            "names no check: give one of `http: {port}`, `tcp: {port}` or `exec: [command]`".into(),
        ),
        1 => {}
        _ => fail(
            at("health"),
            "names more than one check: keep one of `http`, `tcp` and `exec`".into(),
        ),
    }
    if let Some(http) = &health.http {
        if let Some(message) = port_error(&http.port, service) {
            fail(at("health.http.port"), message);
        }
        if !http.path.starts_with('/')
            || http.path.len() > PATH_BYTES_MAX
            || http
                .path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            fail(
                at("health.http.path"),
                format!("must start with `/`, hold no spaces or control characters and be at most {PATH_BYTES_MAX} bytes, e.g. `/healthz`"),
            );
        }
    }
    if let Some(tcp) = &health.tcp {
        if let Some(message) = port_error(&tcp.port, service) {
            fail(at("health.tcp.port"), message);
        }
    }
    let host_network = match &service.workload {
        super::Workload::Container(container) => container.security.host_network,
    };
    for (set, field) in [
        (health.http.is_some(), "health.http"),
        (health.tcp.is_some(), "health.tcp"),
    ] {
        if set && host_network {
            fail(
                at(field),
                "cannot check a task on the node's network yet: it has no address of its own; remove `health` or `security.host_network`".into(),
            );
        } else if set && !service.network {
            fail(
                at(field),
                "needs `network: true`: the node checks the task at its address on the cluster network, which a task without it does not have".into(),
            );
        }
    }
    if let Some(args) = &health.exec {
        if let Some(message) = command_error(args) {
            fail(at("health.exec"), message);
        }
    }
    let between = |value: Millis, min: u64, max: u64| (min..=max).contains(&value.0);
    if !between(health.interval, INTERVAL_MS_MIN, INTERVAL_MS_MAX) {
        fail(at("health.interval"), "must be between 100ms and 1h".into());
    }
    if let Some(start_interval) = health.start_interval {
        if !between(start_interval, INTERVAL_MS_MIN, INTERVAL_MS_MAX) {
            fail(
                at("health.start_interval"),
                "must be between 100ms and 1h".into(),
            );
        } else if start_interval < health.timeout {
            fail(
                at("health.start_interval"),
                "must be at least `timeout` (one check at a time)".into(),
            );
        }
    }
    if health.timeout.0 < TIMEOUT_MS_MIN || health.timeout > health.interval {
        fail(
            at("health.timeout"),
            "must be at least 10ms and at most `interval` (one check at a time)".into(),
        );
    }
    if health.retries == 0 || health.retries > RETRIES_MAX {
        fail(at("health.retries"), format!("must be 1 to {RETRIES_MAX}"));
    }
    if health.start_period.0 > START_PERIOD_MS_MAX {
        fail(at("health.start_period"), "must be at most 1h".into());
    }
    if let Some(RestartAfter::After(after)) = health.restart_after {
        if after.0 > RESTART_AFTER_MS_MAX {
            fail(
                at("health.restart_after"),
                "must be at most 24h, or `never`".into(),
            );
        }
    }
}

/// What is wrong with a check's command, if anything.
fn command_error(args: &[String]) -> Option<String> {
    let bytes: usize = args.iter().map(String::len).sum();
    if args.first().is_none_or(|command| command.is_empty()) {
        Some(
            "names no command: give the command and its arguments, e.g. `[\"pg_isready\", \"-q\"]`"
                .into(),
        )
    } else if args.len() > super::ARGS_MAX || bytes > super::ARG_BYTES_MAX {
        Some(format!(
            "at most {} arguments and {} bytes in all",
            super::ARGS_MAX,
            super::ARG_BYTES_MAX
        ))
    } else if args.iter().any(|arg| arg.contains('\0')) {
        Some("must hold no NUL byte".into())
    } else {
        None
    }
}

/// What is wrong with a check's port, if anything.
fn port_error(port: &PortRef, service: &ServiceSpec) -> Option<String> {
    let name = match port {
        PortRef::Number(0) => return Some("must be 1 to 65535".into()),
        PortRef::Number(_) => return None,
        PortRef::Name(name) => name,
    };
    let named: Vec<&str> = service
        .ports
        .iter()
        .filter(|port| port.protocol == Protocol::Tcp)
        .filter_map(|port| port.name.as_deref())
        .collect();
    if named.contains(&name.as_str()) {
        return None;
    }
    Some(if named.is_empty() {
        format!(
            "no TCP port of the service is named `{name}`: name one in `ports`, or give a number"
        )
    } else {
        format!(
            "no TCP port of the service is named `{name}`: name one of {}, or give a number",
            named.join(", ")
        )
    })
}

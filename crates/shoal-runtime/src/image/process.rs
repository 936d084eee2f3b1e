//! The process a container runs: its config combined with its image's
//! defaults by Docker's rules.

use super::{invalid, ExecConfig, DEFAULT_PATH_ENV};
use crate::{ContainerConfig, Result, RuntimeError};

/// What the container's process is, resolved from its config and its image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// `NAME=value`, image variables first, each name once.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

/// Combines the container config with the image's defaults with Docker's
/// rules (see [`ContainerConfig`]).
pub fn resolve_process(config: &ContainerConfig, image: &ExecConfig) -> Result<ProcessSpec> {
    let entrypoint = match &config.command {
        Some(c) => c.clone(),
        None => image.entrypoint.clone().unwrap_or_default(),
    };
    let cmd = match (&config.args, &config.command) {
        (Some(a), _) => a.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => image.cmd.clone().unwrap_or_default(),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(RuntimeError::InvalidConfig(format!(
            "container {}: neither the spec nor image {} gives a command",
            config.id, config.image
        )));
    }

    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: &str| match env.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((name.to_string(), value.to_string())),
    };
    for entry in image.env.iter().flatten() {
        let (name, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        set(name, value);
    }
    for (name, value) in &config.env {
        set(name, value);
    }
    if !env.iter().any(|(n, _)| n == "PATH") {
        let (name, value) = DEFAULT_PATH_ENV.split_once('=').unwrap_or_default();
        env.insert(0, (name.to_string(), value.to_string()));
    }
    let env = env.into_iter().map(|(n, v)| format!("{n}={v}")).collect();

    let cwd = config
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".to_string());

    let (uid, gid) = match (config.user, image.user.as_deref()) {
        (Some(ids), _) => ids,
        (None, None | Some("")) => (0, 0),
        (None, Some(user)) => parse_numeric_user(user).ok_or_else(|| {
            // Running as root instead of the named user would silently
            // escalate, so refuse and let the spec say who to run as.
            invalid(format!(
                "image {} runs as user {user:?}, which is not numeric; set the spec's user",
                config.image
            ))
        })?,
    };
    Ok(ProcessSpec {
        args,
        env,
        cwd,
        uid,
        gid,
    })
}

/// `uid` or `uid:gid`; a lone uid runs with gid 0, as runc does for a uid
/// that has no passwd entry.
fn parse_numeric_user(user: &str) -> Option<(u32, u32)> {
    match user.split_once(':') {
        Some((u, g)) => Some((u.parse().ok()?, g.parse().ok()?)),
        None => Some((user.parse().ok()?, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(command: Option<&[&str]>, args: Option<&[&str]>) -> ContainerConfig {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        ContainerConfig {
            command: command.map(strings),
            args: args.map(strings),
            ..ContainerConfig::new("c1", "docker.io/library/x:latest", "/tmp/x.log")
        }
    }

    fn image_exec() -> ExecConfig {
        ExecConfig {
            user: Some("1000:2000".into()),
            env: Some(vec!["PATH=/bin".into(), "A=1".into(), "B=2".into()]),
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into(), "--port=1".into()]),
            working_dir: Some("/srv".into()),
        }
    }

    #[test]
    fn process_follows_docker_semantics() {
        let image = image_exec();
        let p = resolve_process(&config(None, None), &image).unwrap();
        assert_eq!(p.args, ["/entry", "serve", "--port=1"]);
        assert_eq!((p.uid, p.gid, p.cwd.as_str()), (1000, 2000, "/srv"));

        // command replaces the entrypoint and drops the image's cmd
        let p = resolve_process(&config(Some(&["sh"]), None), &image).unwrap();
        assert_eq!(p.args, ["sh"]);
        // args replace the cmd only
        let p = resolve_process(&config(None, Some(&["x"])), &image).unwrap();
        assert_eq!(p.args, ["/entry", "x"]);
        let p = resolve_process(&config(Some(&["a"]), Some(&["b"])), &image).unwrap();
        assert_eq!(p.args, ["a", "b"]);

        let mut c = config(None, None);
        c.env.insert("B".into(), "3".into());
        c.env.insert("C".into(), "4".into());
        c.working_dir = Some("/w".into());
        c.user = Some((5, 6));
        let p = resolve_process(&c, &image).unwrap();
        assert_eq!(p.env, ["PATH=/bin", "A=1", "B=3", "C=4"]);
        assert_eq!((p.uid, p.gid, p.cwd.as_str()), (5, 6, "/w"));
    }

    #[test]
    fn process_defaults_and_errors() {
        let empty = ExecConfig::default();
        assert!(matches!(
            resolve_process(&config(None, None), &empty),
            Err(RuntimeError::InvalidConfig(_))
        ));
        let p = resolve_process(&config(None, Some(&["ls"])), &empty).unwrap();
        assert_eq!(p.env, [DEFAULT_PATH_ENV]);
        assert_eq!((p.uid, p.gid, p.cwd.as_str()), (0, 0, "/"));

        let named = ExecConfig {
            user: Some("nobody".into()),
            cmd: Some(vec!["x".into()]),
            ..empty.clone()
        };
        assert!(matches!(
            resolve_process(&config(None, None), &named),
            Err(RuntimeError::InvalidImage(_))
        ));
        let lone = ExecConfig {
            user: Some("7".into()),
            cmd: Some(vec!["x".into()]),
            ..empty
        };
        let p = resolve_process(&config(None, None), &lone).unwrap();
        assert_eq!((p.uid, p.gid), (7, 0));
    }
}

//! Named network namespaces for tasks.
//!
//! A task's namespace is made before its container, so that CNI can wire it
//! up and the runtime can put its path in the OCI spec; it is a bind mount
//! under `/var/run/netns` (as `ip netns add` makes it) so it outlives both
//! the container and the agent. Our names carry a prefix so that a restarted
//! agent can list its leftovers and delete the ones no task owns.

use std::fs;
use std::path::{Path, PathBuf};

use crate::exec::{args, CommandRunner};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";
/// The prefix of our namespaces' names.
pub const NETNS_PREFIX_DEFAULT: &str = "shoal-";
/// Namespaces listed at most, to bound a scan of a littered directory.
pub const NETNS_LISTED_MAX: usize = 65_536;

/// A named network namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Netns {
    /// The name `ip netns` knows it by, e.g. `shoal-TASKID`.
    pub name: String,
    /// The path to give the runtime and CNI, e.g. `/var/run/netns/shoal-TASKID`.
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace name `{0}` must be letters, digits, `_`, `.` or `-` (at most 200), not starting with `.`")]
    InvalidName(String),
    #[error(
        "network namespace `{0}` already exists; delete it first (`ip netns del {0}`) or reuse it"
    )]
    AlreadyExists(String),
    /// `ip` could not run, or failed.
    #[error(transparent)]
    Run(#[from] crate::exec::RunError),
    #[error("listing {dir}: {source}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Makes, lists and deletes our namespaces through `ip netns`.
pub struct NetnsManager<R> {
    runner: R,
    prefix: String,
    dir: PathBuf,
}

impl<R: CommandRunner> NetnsManager<R> {
    /// A manager with the default prefix and directory.
    pub fn new(runner: R) -> Self {
        Self::with_prefix(runner, NETNS_PREFIX_DEFAULT)
    }

    /// A manager whose namespaces are named `PREFIX<id>` (tests use their
    /// own prefix so they never see the agent's namespaces).
    pub fn with_prefix(runner: R, prefix: &str) -> Self {
        Self {
            runner,
            prefix: prefix.to_owned(),
            dir: PathBuf::from(NETNS_DIR),
        }
    }

    /// The namespace a task would have.
    pub fn for_task(&self, task_id: &str) -> Result<Netns, NetnsError> {
        let name = format!("{}{task_id}", self.prefix);
        validate_name(&name)?;
        Ok(Netns {
            path: self.dir.join(&name),
            name,
        })
    }

    /// Makes the task's namespace and brings its loopback interface up
    /// (so `localhost` works inside without a loopback plugin).
    pub fn create(&self, task_id: &str) -> Result<Netns, NetnsError> {
        let netns = self.for_task(task_id)?;
        if netns.path.exists() {
            return Err(NetnsError::AlreadyExists(netns.name));
        }
        self.ip(&["netns", "add", &netns.name])?;
        if let Err(e) = self.ip(&["-n", &netns.name, "link", "set", "lo", "up"]) {
            let _ = self.delete(&netns.name);
            return Err(e);
        }
        Ok(netns)
    }

    /// Deletes a namespace by name; one that is already gone is fine.
    pub fn delete(&self, name: &str) -> Result<(), NetnsError> {
        validate_name(name)?;
        if !self.dir.join(name).exists() {
            return Ok(());
        }
        self.ip(&["netns", "del", name])
    }

    /// Our namespaces (those with our prefix), sorted by name.
    pub fn list(&self) -> Result<Vec<Netns>, NetnsError> {
        list_with_prefix(&self.dir, &self.prefix)
    }

    fn ip(&self, parts: &[&str]) -> Result<(), NetnsError> {
        crate::exec::run_checked(&self.runner, "ip", &args(parts))?;
        Ok(())
    }
}

/// The namespaces in `dir` whose name starts with `prefix`.
pub fn list_with_prefix(dir: &Path, prefix: &str) -> Result<Vec<Netns>, NetnsError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetnsError::List {
                dir: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut found: Vec<Netns> = entries
        .take(NETNS_LISTED_MAX)
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            name.starts_with(prefix).then(|| Netns {
                path: entry.path(),
                name,
            })
        })
        .collect();
    found.sort();
    Ok(found)
}

fn validate_name(name: &str) -> Result<(), NetnsError> {
    const NAME_BYTES_MAX: usize = 200;
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(NetnsError::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{CommandOutput, FakeRunner};

    fn manager(fake: &FakeRunner, dir: &Path) -> NetnsManager<FakeRunner> {
        let mut m = NetnsManager::new(fake.clone());
        m.dir = dir.to_path_buf();
        m
    }

    #[test]
    fn create_adds_the_namespace_and_brings_loopback_up() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeRunner::new();
        let netns = manager(&fake, dir.path()).create("t1").unwrap();
        assert_eq!(netns.name, "shoal-t1");
        assert_eq!(netns.path, dir.path().join("shoal-t1"));
        assert_eq!(
            fake.log(),
            vec!["ip netns add shoal-t1", "ip -n shoal-t1 link set lo up"]
        );
    }

    #[test]
    fn a_failed_create_says_what_ip_said() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeRunner::new();
        fake.answer(
            "ip netns add",
            CommandOutput::failed(1, "permission denied\n"),
        );
        let err = manager(&fake, dir.path()).create("t1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`ip netns add shoal-t1` failed: permission denied"
        );
    }

    #[test]
    fn existing_namespaces_are_not_recreated_and_delete_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("shoal-t1"), "").unwrap();
        fs::write(dir.path().join("other"), "").unwrap();
        let fake = FakeRunner::new();
        let m = manager(&fake, dir.path());
        assert!(matches!(m.create("t1"), Err(NetnsError::AlreadyExists(_))));
        let listed: Vec<String> = m.list().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(listed, vec!["shoal-t1"]);
        m.delete("shoal-t1").unwrap();
        m.delete("shoal-gone").unwrap();
        assert_eq!(fake.log(), vec!["ip netns del shoal-t1"]);
    }

    #[test]
    fn names_that_are_not_plain_are_refused() {
        let fake = FakeRunner::new();
        let m = NetnsManager::new(fake.clone());
        assert!(matches!(
            m.for_task("../x"),
            Err(NetnsError::InvalidName(_))
        ));
        assert!(matches!(m.delete("a b"), Err(NetnsError::InvalidName(_))));
        assert!(fake.log().is_empty());
    }
}

//! The OCI runtime spec of a container: oci-spec's defaults, hardened
//! (the seccomp profile, no new privileges, Docker's capability set without
//! `NET_RAW`, masked and read-only kernel paths), with the process, rootfs,
//! limits, namespaces and mounts the config asks for.

use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceType, LinuxResourcesBuilder, MountBuilder, RootBuilder, Spec,
    UserBuilder,
};

use crate::config::{CPU_PERIOD_US, MILLICORES_PER_CPU};
use crate::image::ProcessSpec;
use crate::{ContainerConfig, NetworkMode, Result, RuntimeError};

/// How containerd names the spec's type in a container record.
pub(super) const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Below this CFS quota (µs per period) the kernel refuses the value.
const CPU_QUOTA_US_MIN: i64 = 1_000;

/// What a container's root may do: Docker's default set without `NET_RAW`
/// (raw sockets forge packets on the task's network; ping works without it,
/// through `net.ipv4.ping_group_range`).
pub const CAPABILITIES: [Capability; 13] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability with its bit in the kernel's capability sets
/// (linux/capability.h).
const ALL_CAPABILITIES: [(Capability, u32); 41] = [
    (Capability::Chown, 0),
    (Capability::DacOverride, 1),
    (Capability::DacReadSearch, 2),
    (Capability::Fowner, 3),
    (Capability::Fsetid, 4),
    (Capability::Kill, 5),
    (Capability::Setgid, 6),
    (Capability::Setuid, 7),
    (Capability::Setpcap, 8),
    (Capability::LinuxImmutable, 9),
    (Capability::NetBindService, 10),
    (Capability::NetBroadcast, 11),
    (Capability::NetAdmin, 12),
    (Capability::NetRaw, 13),
    (Capability::IpcLock, 14),
    (Capability::IpcOwner, 15),
    (Capability::SysModule, 16),
    (Capability::SysRawio, 17),
    (Capability::SysChroot, 18),
    (Capability::SysPtrace, 19),
    (Capability::SysPacct, 20),
    (Capability::SysAdmin, 21),
    (Capability::SysBoot, 22),
    (Capability::SysNice, 23),
    (Capability::SysResource, 24),
    (Capability::SysTime, 25),
    (Capability::SysTtyConfig, 26),
    (Capability::Mknod, 27),
    (Capability::Lease, 28),
    (Capability::AuditWrite, 29),
    (Capability::AuditControl, 30),
    (Capability::Setfcap, 31),
    (Capability::MacOverride, 32),
    (Capability::MacAdmin, 33),
    (Capability::Syslog, 34),
    (Capability::WakeAlarm, 35),
    (Capability::BlockSuspend, 36),
    (Capability::AuditRead, 37),
    (Capability::Perfmon, 38),
    (Capability::Bpf, 39),
    (Capability::CheckpointRestore, 40),
];

/// The capabilities a privileged container gets: every one in this
/// process's bounding set (what the node itself may hand on; runc refuses
/// to give more), every one when that cannot be read.
fn node_capabilities() -> Vec<Capability> {
    static BOUNDING: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let bounding = *BOUNDING.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let hex = status
            .lines()
            .find_map(|line| line.strip_prefix("CapBnd:"))?
            .trim();
        u64::from_str_radix(hex, 16).ok()
    });
    ALL_CAPABILITIES
        .iter()
        .filter(|(_, bit)| bounding.is_none_or(|set| set & (1 << bit) != 0))
        .map(|(capability, _)| *capability)
        .collect()
}

/// Kernel paths a container sees as empty (`/dev/null` or an empty
/// read-only tmpfs): they show the host's hardware, memory and keys.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Kernel paths a container may read but not write.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Lets every user of a network namespace of its own send ICMP echo
/// through datagram sockets, so ping works without `NET_RAW`.
const PING_GROUP_RANGE: (&str, &str) = ("net.ipv4.ping_group_range", "0 2147483647");

/// The OCI runtime spec for a container: oci-spec's defaults (namespaces
/// pid, net, ipc, uts, mount, cgroup; standard mounts; no terminal),
/// hardened, with the process, rootfs, limits and cgroup set from the
/// config.
pub(super) fn build_spec(
    config: &ContainerConfig,
    process: &ProcessSpec,
    cgroups_path: &str,
) -> Result<Spec> {
    let oci = |e: oci_spec::OciSpecError| {
        RuntimeError::InvalidConfig(format!("building the OCI spec of {}: {e}", config.id))
    };
    let mut spec = Spec::default();

    let mut proc = spec.process().clone().unwrap_or_default();
    proc.set_args(Some(process.args.clone()));
    proc.set_env(Some(process.env.clone()));
    proc.set_cwd(PathBuf::from(&process.cwd));
    proc.set_terminal(Some(false));
    proc.set_user(
        UserBuilder::default()
            .uid(process.uid)
            .gid(process.gid)
            .build()
            .map_err(oci)?,
    );
    let privileges = &config.privileges;
    let caps: oci_spec::runtime::Capabilities = if privileges.privileged {
        node_capabilities().into_iter().collect()
    } else {
        match &privileges.capabilities {
            None => CAPABILITIES.into_iter().collect(),
            Some(names) => names
                .iter()
                .map(|name| {
                    name.parse::<Capability>().map_err(|_| {
                        RuntimeError::InvalidConfig(format!(
                            "{}: `{name}` is no capability",
                            config.id
                        ))
                    })
                })
                .collect::<Result<_>>()?,
        }
    };
    proc.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps.clone())
            // Nothing carries over exec or to non-root users, as in Docker.
            .inheritable(oci_spec::runtime::Capabilities::new())
            .ambient(oci_spec::runtime::Capabilities::new())
            .build()
            .map_err(oci)?,
    ));
    // setuid binaries and file capabilities grant nothing (a privileged
    // container has everything already, and its tools may rely on them).
    proc.set_no_new_privileges(Some(!privileges.privileged));
    spec.set_process(Some(proc));

    let hostname = if config.hostname.is_empty() {
        &config.id
    } else {
        &config.hostname
    };
    spec.set_hostname(Some(hostname.clone()));
    // The shim mounts the snapshot at <bundle>/rootfs.
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(privileges.read_only_root)
            .build()
            .map_err(oci)?,
    ));

    // Deny all devices first: runc then allows only its default set
    // (null, zero, tty, ...), instead of leaving the device cgroup open.
    // A privileged container may use every device (it can make their nodes).
    let mut resources =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(privileges.privileged)
            .access("rwm")
            .build()
            .map_err(oci)?]);
    if let Some(millis) = config.cpu_millis {
        let quota = i64::try_from(millis.saturating_mul(CPU_PERIOD_US / MILLICORES_PER_CPU))
            .unwrap_or(i64::MAX);
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota.max(CPU_QUOTA_US_MIN))
                .period(CPU_PERIOD_US)
                .build()
                .map_err(oci)?,
        );
    }
    if let Some(bytes) = config.memory_bytes {
        let limit = i64::try_from(bytes).map_err(|_| {
            RuntimeError::InvalidConfig(format!("{}: memory limit too large", config.id))
        })?;
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .build()
                .map_err(oci)?,
        );
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_resources(Some(resources.build().map_err(oci)?));
    linux.set_cgroups_path(Some(PathBuf::from(cgroups_path)));
    if privileges.privileged {
        linux.set_seccomp(None);
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    } else {
        linux.set_seccomp(Some(super::seccomp::profile(&caps)));
        linux.set_masked_paths(Some(MASKED_PATHS.map(String::from).to_vec()));
        linux.set_readonly_paths(Some(READONLY_PATHS.map(String::from).to_vec()));
    }
    if config.network != NetworkMode::Host {
        let (key, value) = PING_GROUP_RANGE;
        linux.set_sysctl(Some([(key.to_string(), value.to_string())].into()));
    }
    if let Some(namespaces) = linux.namespaces_mut() {
        if privileges.host_pid {
            namespaces.retain(|n| n.typ() != LinuxNamespaceType::Pid);
        }
        match &config.network {
            NetworkMode::Isolated => {}
            NetworkMode::Host => namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network),
            NetworkMode::Path(path) => {
                for namespace in namespaces.iter_mut() {
                    if namespace.typ() == LinuxNamespaceType::Network {
                        namespace.set_path(Some(path.clone()));
                    }
                }
            }
        }
    }
    spec.set_linux(Some(linux));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for mount in mounts.iter_mut() {
        if mount.destination() == &PathBuf::from("/proc") {
            mount.set_options(Some(vec!["nosuid".into(), "noexec".into(), "nodev".into()]));
        }
        // A privileged container may write /sys and its cgroups.
        let writable = ["/sys", "/sys/fs/cgroup"].map(PathBuf::from);
        if privileges.privileged && writable.contains(mount.destination()) {
            if let Some(options) = mount.options_mut() {
                options.retain(|option| option != "ro");
            }
        }
    }
    for mount in &config.mounts {
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        if mount.read_only {
            options.push("ro".into());
        }
        mounts.push(
            MountBuilder::default()
                .destination(mount.destination.clone())
                .typ("bind")
                .source(mount.source.clone())
                .options(options)
                .build()
                .map_err(oci)?,
        );
    }
    spec.set_mounts(Some(mounts));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use oci_spec::runtime::LinuxSeccompAction;

    use super::*;
    use crate::Privileges;

    fn config(network: NetworkMode, privileges: Privileges) -> ContainerConfig {
        ContainerConfig {
            network,
            privileges,
            ..ContainerConfig::new("c1", "docker.io/library/x:latest", "/tmp/x.log")
        }
    }

    fn build(network: NetworkMode, privileges: Privileges) -> Spec {
        let process = ProcessSpec {
            args: vec!["sh".into()],
            env: Vec::new(),
            cwd: "/".into(),
            uid: 0,
            gid: 0,
        };
        build_spec(&config(network, privileges), &process, "/shoal/c1").expect("builds")
    }

    fn capabilities(spec: &Spec) -> BTreeSet<String> {
        let caps = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().clone())
            .expect("capabilities");
        let bounding = caps.bounding().clone().expect("bounding");
        assert_eq!(caps.effective().clone().expect("effective"), bounding);
        assert_eq!(caps.permitted().clone().expect("permitted"), bounding);
        bounding.iter().map(ToString::to_string).collect()
    }

    fn namespaces(spec: &Spec) -> BTreeSet<String> {
        spec.linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .expect("namespaces")
            .iter()
            .map(|n| n.typ().to_string())
            .collect()
    }

    #[test]
    fn the_defaults_are_hardened() {
        let spec = build(NetworkMode::Isolated, Privileges::default());
        let process = spec.process().as_ref().expect("process");
        assert_eq!(process.no_new_privileges(), Some(true));
        let caps = capabilities(&spec);
        assert_eq!(caps.len(), 13, "{caps:?}");
        assert!(caps.contains("CHOWN"), "{caps:?}");
        assert!(!caps.contains("NET_RAW"), "{caps:?}");
        let linux = spec.linux().as_ref().expect("linux");
        let seccomp = linux.seccomp().as_ref().expect("a seccomp filter");
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert!(linux
            .masked_paths()
            .as_ref()
            .expect("masked")
            .contains(&"/proc/kcore".to_string()));
        assert!(linux
            .readonly_paths()
            .as_ref()
            .expect("read-only")
            .contains(&"/proc/sys".to_string()));
        assert_eq!(namespaces(&spec).len(), 6);
        assert_eq!(
            linux.sysctl().as_ref().expect("sysctl")["net.ipv4.ping_group_range"],
            "0 2147483647"
        );
        assert_eq!(spec.root().as_ref().expect("root").readonly(), Some(false));
        // On the node's network no namespaced sysctl is set.
        let host = build(NetworkMode::Host, Privileges::default());
        assert!(host.linux().as_ref().expect("linux").sysctl().is_none());
        assert!(!namespaces(&host).contains("network"));
    }

    #[test]
    fn privileges_loosen_and_tighten_what_they_name() {
        let privileged = build(
            NetworkMode::Isolated,
            Privileges {
                privileged: true,
                ..Default::default()
            },
        );
        assert_eq!(capabilities(&privileged).len(), node_capabilities().len());
        assert!(capabilities(&privileged).contains("SYS_ADMIN"));
        let linux = privileged.linux().as_ref().expect("linux");
        assert!(linux.seccomp().is_none());
        assert!(linux.masked_paths().is_none());
        assert!(linux.readonly_paths().is_none());
        let devices = linux
            .resources()
            .as_ref()
            .and_then(|r| r.devices().clone())
            .expect("device rules");
        assert!(devices[0].allow());
        let sys = privileged
            .mounts()
            .as_ref()
            .expect("mounts")
            .iter()
            .find(|m| m.destination() == &PathBuf::from("/sys"))
            .expect("/sys")
            .options()
            .clone()
            .unwrap_or_default();
        assert!(!sys.contains(&"ro".to_string()), "{sys:?}");

        let narrowed = build(
            NetworkMode::Isolated,
            Privileges {
                host_pid: true,
                capabilities: Some(vec!["NET_ADMIN".into(), "CHOWN".into()]),
                read_only_root: true,
                ..Default::default()
            },
        );
        assert_eq!(
            capabilities(&narrowed),
            BTreeSet::from(["CHOWN".to_string(), "NET_ADMIN".to_string()])
        );
        assert!(!namespaces(&narrowed).contains("pid"));
        assert_eq!(
            narrowed.root().as_ref().expect("root").readonly(),
            Some(true)
        );
        let linux = narrowed.linux().as_ref().expect("linux");
        assert!(
            linux.seccomp().is_some(),
            "only privileged drops the filter"
        );

        let error = build_spec(
            &config(
                NetworkMode::Isolated,
                Privileges {
                    capabilities: Some(vec!["NET_FOO".into()]),
                    ..Default::default()
                },
            ),
            &ProcessSpec {
                args: vec!["sh".into()],
                env: Vec::new(),
                cwd: "/".into(),
                uid: 0,
                gid: 0,
            },
            "/shoal/c1",
        )
        .expect_err("no such capability");
        assert!(error.to_string().contains("NET_FOO"), "{error}");
    }
}

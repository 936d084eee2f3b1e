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
    let caps: oci_spec::runtime::Capabilities = CAPABILITIES.into_iter().collect();
    proc.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            // Nothing carries over exec or to non-root users, as in Docker.
            .inheritable(oci_spec::runtime::Capabilities::new())
            .ambient(oci_spec::runtime::Capabilities::new())
            .build()
            .map_err(oci)?,
    ));
    // setuid binaries and file capabilities grant nothing.
    proc.set_no_new_privileges(Some(true));
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
            .readonly(false)
            .build()
            .map_err(oci)?,
    ));

    // Deny all devices first: runc then allows only its default set
    // (null, zero, tty, ...), instead of leaving the device cgroup open.
    let mut resources =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
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
    linux.set_seccomp(Some(super::seccomp::profile()));
    linux.set_masked_paths(Some(MASKED_PATHS.map(String::from).to_vec()));
    linux.set_readonly_paths(Some(READONLY_PATHS.map(String::from).to_vec()));
    if config.network != NetworkMode::Host {
        let (key, value) = PING_GROUP_RANGE;
        linux.set_sysctl(Some([(key.to_string(), value.to_string())].into()));
    }
    if let Some(namespaces) = linux.namespaces_mut() {
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

//! The seccomp profile every task runs under.
//!
//! An allow list: the system calls an ordinary program makes (files, I/O,
//! memory, threads, signals, time, sockets, System V and POSIX IPC) pass;
//! the ones that reach past the container (modules, kexec, mounts, new
//! namespaces, the clock, swap, the kernel keyring, BPF, perf, io_uring,
//! userfaultfd) fail with `EPERM`, named so the refusal is plain; anything
//! else fails with `ENOSYS`, which C libraries treat as "this kernel lacks
//! it" and fall back from (a newer call they try first keeps working under
//! an older list). runc itself answers `ENOSYS` for calls newer than every
//! name here, and skips names its libseccomp does not know on this
//! architecture, so one list serves every architecture.

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg,
    LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscall,
};

mod syscalls;

use syscalls::{
    BY_CAPABILITY, FILES, IO, MEMORY, PROCESSES, REFUSED, SIGNALS_AND_TIME, SOCKETS_AND_IPC,
};

/// `EPERM`: what a refused call returns.
const EPERM: u32 = 1;
/// `ENOSYS`: what a call the profile does not know returns.
const ENOSYS: u32 = 38;

/// The `clone` flags that make a namespace (mount, cgroup, UTS, IPC, user,
/// PID, network). A `clone` with none of them passes.
const CLONE_NAMESPACE_FLAGS: u64 = 0x0002_0000 // CLONE_NEWNS
    | 0x0200_0000 // CLONE_NEWCGROUP
    | 0x0400_0000 // CLONE_NEWUTS
    | 0x0800_0000 // CLONE_NEWIPC
    | 0x1000_0000 // CLONE_NEWUSER
    | 0x2000_0000 // CLONE_NEWPID
    | 0x4000_0000; // CLONE_NEWNET

/// `AF_VSOCK`: sockets to the hypervisor and its guests, which on a
/// virtual machine reach the host's services; refused.
const AF_VSOCK: u64 = 40;

/// The execution domains `personality` may select: Linux (0), Linux with
/// 32-bit addresses (0x8), Linux reporting a 2.6 kernel (0x20000), both
/// (0x20008), and the query that changes nothing (0xffffffff).
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.iter().map(|name| name.to_string()).collect());
    rule.set_action(action);
    rule
}

fn arg(index: usize, value: u64, value_two: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(value_two)
        .op(op)
        .build()
        .expect("every field of a seccomp argument is set")
}

/// The architectures a filter is built for on this machine: its own and the
/// 32-bit ones its kernel also runs.
fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        // Elsewhere the clone filter may read the wrong argument (s390x
        // swaps them): only the native architecture, as runc takes it.
        _ => vec![Arch::ScmpArchNative],
    }
}

/// The profile for the OCI spec's `linux.seccomp` of a container whose
/// root holds `capabilities`.
pub fn profile(capabilities: &Capabilities) -> LinuxSeccomp {
    let granted: Vec<&str> = BY_CAPABILITY
        .iter()
        .filter(|(capability, _)| capabilities.contains(capability))
        .flat_map(|(_, names)| names.iter().copied())
        .collect();
    let mut allowed: Vec<&str> = [
        FILES,
        IO,
        MEMORY,
        PROCESSES,
        SIGNALS_AND_TIME,
        SOCKETS_AND_IPC,
    ]
    .concat();
    allowed.extend(granted.iter().copied());
    let mut syscalls = vec![rule(&allowed, LinuxSeccompAction::ScmpActAllow)];
    if capabilities.contains(&Capability::SysAdmin) {
        syscalls.push(rule(&["clone"], LinuxSeccompAction::ScmpActAllow));
    } else {
        // clone: only without a namespace flag (the flags are its first
        // argument on x86 and Arm); with one it falls to the default.
        let mut clone = rule(&["clone"], LinuxSeccompAction::ScmpActAllow);
        clone.set_args(Some(vec![arg(
            0,
            CLONE_NAMESPACE_FLAGS,
            0,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )]));
        syscalls.push(clone);
    }
    for persona in PERSONALITIES {
        let mut personality = rule(&["personality"], LinuxSeccompAction::ScmpActAllow);
        personality.set_args(Some(vec![arg(
            0,
            persona,
            0,
            LinuxSeccompOperator::ScmpCmpEq,
        )]));
        syscalls.push(personality);
    }
    // socket: every address family but AF_VSOCK.
    let mut socket = rule(&["socket"], LinuxSeccompAction::ScmpActAllow);
    socket.set_args(Some(vec![arg(
        0,
        AF_VSOCK,
        0,
        LinuxSeccompOperator::ScmpCmpNe,
    )]));
    syscalls.push(socket);
    let mut vsock = rule(&["socket"], LinuxSeccompAction::ScmpActErrno);
    vsock.set_errno_ret(Some(EPERM));
    vsock.set_args(Some(vec![arg(
        0,
        AF_VSOCK,
        0,
        LinuxSeccompOperator::ScmpCmpEq,
    )]));
    syscalls.push(vsock);
    let refused: Vec<&str> = REFUSED
        .iter()
        .copied()
        .filter(|name| !granted.contains(name))
        .collect();
    let mut refused = rule(&refused, LinuxSeccompAction::ScmpActErrno);
    refused.set_errno_ret(Some(EPERM));
    syscalls.push(refused);

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(ENOSYS));
    profile.set_architectures(Some(architectures()));
    profile.set_syscalls(Some(syscalls));
    profile
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn names(profile: &LinuxSeccomp, action: LinuxSeccompAction) -> BTreeSet<String> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|rule| rule.action() == action && rule.args().is_none())
            .flat_map(|rule| rule.names().iter().cloned())
            .collect()
    }

    fn default_capabilities() -> Capabilities {
        super::super::spec::CAPABILITIES.into_iter().collect()
    }

    fn conditions(profile: &LinuxSeccomp, call: &str) -> Vec<(LinuxSeccompAction, u64)> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|rule| rule.names() == &[call.to_string()])
            .filter_map(|rule| Some((rule.action(), rule.args().as_ref()?.first()?.value())))
            .collect()
    }

    #[test]
    fn no_call_is_both_allowed_and_refused_nor_listed_twice() {
        let all: Vec<&str> = [
            FILES,
            IO,
            MEMORY,
            PROCESSES,
            SIGNALS_AND_TIME,
            SOCKETS_AND_IPC,
        ]
        .concat();
        let unique: BTreeSet<&str> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "a name is listed twice");
        let refused: BTreeSet<&str> = REFUSED.iter().copied().collect();
        assert_eq!(
            refused.len(),
            REFUSED.len(),
            "a refused name is listed twice"
        );
        let both: Vec<_> = unique.intersection(&refused).collect();
        assert!(both.is_empty(), "allowed and refused: {both:?}");
        for conditional in ["clone", "clone3", "personality", "socket"] {
            assert!(!unique.contains(conditional) && !refused.contains(conditional));
        }
        // What a capability lets through is a refused call, else it would
        // be allowed (or unknown) whatever the capabilities.
        for (capability, calls) in BY_CAPABILITY {
            for call in *calls {
                assert!(
                    refused.contains(call),
                    "{capability}: {call} is not refused"
                );
            }
        }
    }

    #[test]
    fn the_profile_refuses_what_reaches_past_the_container() {
        let profile = profile(&default_capabilities());
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(profile.default_errno_ret(), Some(ENOSYS));
        let refused = names(&profile, LinuxSeccompAction::ScmpActErrno);
        for call in [
            "mount",
            "unshare",
            "setns",
            "init_module",
            "kexec_load",
            "bpf",
            "keyctl",
            "io_uring_setup",
            "clock_settime",
            "reboot",
            "pivot_root",
            "userfaultfd",
            "open_by_handle_at",
        ] {
            assert!(refused.contains(call), "{call} is not refused");
        }
        let allowed = names(&profile, LinuxSeccompAction::ScmpActAllow);
        for call in [
            "read",
            "openat",
            "execve",
            "futex",
            "epoll_pwait",
            "statx",
            "adjtimex",
            "readahead",
        ] {
            assert!(allowed.contains(call), "{call} is not allowed");
        }
        // clone3 is left to the default (ENOSYS), so C libraries fall back to
        // clone, whose flags the filter can see.
        assert!(!allowed.contains("clone3") && !refused.contains("clone3"));
        assert_eq!(
            conditions(&profile, "clone"),
            [(LinuxSeccompAction::ScmpActAllow, CLONE_NAMESPACE_FLAGS)]
        );
        let clone = profile
            .syscalls()
            .iter()
            .flatten()
            .find(|rule| rule.names() == &["clone".to_string()])
            .and_then(|rule| rule.args().clone())
            .expect("clone has a condition");
        assert_eq!(clone[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(clone[0].value_two(), Some(0));
        // Sockets of every family but the hypervisor's.
        assert_eq!(
            conditions(&profile, "socket"),
            [
                (LinuxSeccompAction::ScmpActAllow, AF_VSOCK),
                (LinuxSeccompAction::ScmpActErrno, AF_VSOCK)
            ]
        );
    }

    #[test]
    fn a_capability_added_lets_its_calls_through() {
        let mut capabilities = default_capabilities();
        capabilities.insert(Capability::SysAdmin);
        capabilities.insert(Capability::SysTime);
        let profile = profile(&capabilities);
        let allowed = names(&profile, LinuxSeccompAction::ScmpActAllow);
        let refused = names(&profile, LinuxSeccompAction::ScmpActErrno);
        for call in [
            "mount",
            "unshare",
            "setns",
            "clock_settime",
            "settimeofday",
            "clone",
        ] {
            assert!(allowed.contains(call), "{call} is not allowed");
            assert!(!refused.contains(call), "{call} is still refused");
        }
        for call in ["init_module", "reboot", "keyctl", "io_uring_setup", "kcmp"] {
            assert!(refused.contains(call), "{call} is not refused");
        }
    }
}

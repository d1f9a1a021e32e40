//! The seccomp profile of every runc job: Docker's default profile, kept here as our own data.
//!
//! The facts come from moby's `profiles/seccomp/default.json` (github.com/moby/profiles,
//! `seccomp/default.json` at commit 3c28324, May 2026). That profile is a list of rules, each
//! of which may apply only on some host architectures, from some kernel version on, or when
//! the container's bounding capability set has (or lacks) some capabilities; Docker resolves
//! them when it creates a container. [`profile`] resolves [`RULES`] the same way for a job's
//! capabilities on this host, so a job gets the filter `docker run` would give a container
//! with the same capabilities. For ours (no `CAP_SYS_ADMIN`, `CAP_SYS_PTRACE`...) that means:
//! anything not listed fails with `EPERM`; `clone` only without namespace flags; `clone3`
//! fails with `ENOSYS` so that libc falls back to `clone` (whose flags a filter can read);
//! `unshare`, `setns`, `mount` and the new mount API are denied; `personality` only with the
//! values Docker allows; `socket` for every address family but `AF_ALG` and `AF_VSOCK`.
//!
//! `fast_sync` takes the fsync family out of the allowed list and makes it a successful no-op
//! (`SCMP_ACT_ERRNO` with errno 0) on top of the same profile.
//!
//! Updating: compare [`ALLOWED`] and [`RULES`] with a newer `default.json`, rule by rule.
//! Names that the host's libseccomp does not know (newer syscalls, other architectures')
//! are skipped by runc, as they are for Docker, and runc makes syscalls newer than
//! libseccomp fail with `ENOSYS`.

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use LinuxSeccompOperator::{
    ScmpCmpEq as EQ, ScmpCmpGt as GT, ScmpCmpLt as LT, ScmpCmpMaskedEq as MASKED_EQ,
};

/// What a syscall the profile does not allow returns: `EPERM`.
const EPERM: u32 = 1;
/// `ENOSYS` (the same number on every architecture we filter).
const ENOSYS: u32 = 38;

/// The syscalls `fast_sync` turns into successful no-ops.
const SYNC_SYSCALLS: [&str; 6] = [
    "fsync",
    "fdatasync",
    "msync",
    "sync",
    "syncfs",
    "sync_file_range",
];

/// Address families `socket` may not create: the kernel crypto API and VM sockets.
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;

/// `clone` flags that make new namespaces; Docker allows `clone` only with none of them.
const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_NEWCGROUP: u64 = 0x0200_0000;
const CLONE_NEWUTS: u64 = 0x0400_0000;
const CLONE_NEWIPC: u64 = 0x0800_0000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_NEWNET: u64 = 0x4000_0000;
const NAMESPACE_FLAGS: u64 = CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET;

/// The `personality` values Docker allows: `PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `PER_LINUX32 | UNAME26`, and `0xffffffff`, which only queries the current one.
const PERSONALITIES: [u64; 5] = [0, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff];

/// What a rule does to its syscalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    /// Fail with this errno without running the syscall (0: pretend it succeeded).
    Errno(u32),
}

/// A condition on one argument: `args[index] <op> value`.
#[derive(Debug, Clone, Copy)]
struct Arg {
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
}

/// One of Docker's rules with its conditions (`includes` and `excludes`).
#[derive(Debug, Clone, Copy)]
struct Rule {
    names: &'static [&'static str],
    action: Action,
    /// Conditions on the arguments, all of which must hold.
    args: &'static [Arg],
    /// Only on these host architectures, by Docker's names (`amd64`, `arm64`, `x86`...);
    /// empty: on all.
    arches: &'static [&'static str],
    /// Not on these host architectures.
    not_arches: &'static [&'static str],
    /// Only if the job has all these capabilities.
    caps: &'static [Capability],
    /// Not if the job has any of these capabilities.
    not_caps: &'static [Capability],
    /// Only from this kernel version (major, minor) on.
    min_kernel: Option<(u32, u32)>,
}

/// A rule without conditions, for struct updates.
const ALWAYS: Rule = Rule {
    names: &[],
    action: Action::Allow,
    args: &[],
    arches: &[],
    not_arches: &[],
    caps: &[],
    not_caps: &[],
    min_kernel: None,
};

const fn arg(index: usize, op: LinuxSeccompOperator, value: u64) -> Arg {
    Arg { index, op, value }
}

/// Allowed whatever the arguments, architecture or capabilities: Docker's first rule.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "riscv_hwprobe",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Docker's rules, in its order.
const RULES: &[Rule] = &[
    Rule {
        names: ALLOWED,
        ..ALWAYS
    },
    // Before 4.8, ptrace could be used to bypass seccomp.
    Rule {
        names: &["process_vm_readv", "process_vm_writev", "ptrace"],
        min_kernel: Some((4, 8)),
        ..ALWAYS
    },
    // Every address family but AF_ALG and AF_VSOCK (one rule cannot say "neither").
    Rule {
        names: &["socket"],
        args: &[arg(0, LT, AF_ALG)],
        ..ALWAYS
    },
    Rule {
        names: &["socket"],
        args: &[arg(0, EQ, AF_ALG + 1)],
        ..ALWAYS
    },
    Rule {
        names: &["socket"],
        args: &[arg(0, GT, AF_VSOCK)],
        ..ALWAYS
    },
    Rule {
        names: &["personality"],
        args: &[arg(0, EQ, PERSONALITIES[0])],
        ..ALWAYS
    },
    Rule {
        names: &["personality"],
        args: &[arg(0, EQ, PERSONALITIES[1])],
        ..ALWAYS
    },
    Rule {
        names: &["personality"],
        args: &[arg(0, EQ, PERSONALITIES[2])],
        ..ALWAYS
    },
    Rule {
        names: &["personality"],
        args: &[arg(0, EQ, PERSONALITIES[3])],
        ..ALWAYS
    },
    Rule {
        names: &["personality"],
        args: &[arg(0, EQ, PERSONALITIES[4])],
        ..ALWAYS
    },
    Rule {
        names: &["sync_file_range2", "swapcontext"],
        arches: &["ppc64le"],
        ..ALWAYS
    },
    Rule {
        names: &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        arches: &["arm", "arm64"],
        ..ALWAYS
    },
    Rule {
        names: &["arch_prctl"],
        arches: &["amd64", "x32"],
        ..ALWAYS
    },
    Rule {
        names: &["modify_ldt"],
        arches: &["amd64", "x32", "x86"],
        ..ALWAYS
    },
    Rule {
        names: &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
        arches: &["s390", "s390x"],
        ..ALWAYS
    },
    Rule {
        names: &["riscv_flush_icache"],
        arches: &["riscv64"],
        ..ALWAYS
    },
    Rule {
        names: &["open_by_handle_at"],
        caps: &[Capability::DacReadSearch],
        ..ALWAYS
    },
    Rule {
        names: &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        caps: &[Capability::SysAdmin],
        ..ALWAYS
    },
    // Without CAP_SYS_ADMIN: clone without namespace flags (flags are the first argument,
    // the second on s390).
    Rule {
        names: &["clone"],
        args: &[arg(0, MASKED_EQ, NAMESPACE_FLAGS)],
        not_arches: &["s390", "s390x"],
        not_caps: &[Capability::SysAdmin],
        ..ALWAYS
    },
    Rule {
        names: &["clone"],
        args: &[arg(1, MASKED_EQ, NAMESPACE_FLAGS)],
        arches: &["s390", "s390x"],
        not_caps: &[Capability::SysAdmin],
        ..ALWAYS
    },
    // clone3's flags are behind a pointer a filter cannot read: ENOSYS makes libc use clone.
    Rule {
        names: &["clone3"],
        action: Action::Errno(ENOSYS),
        not_caps: &[Capability::SysAdmin],
        ..ALWAYS
    },
    Rule {
        names: &["reboot"],
        caps: &[Capability::SysBoot],
        ..ALWAYS
    },
    Rule {
        names: &["chroot"],
        caps: &[Capability::SysChroot],
        ..ALWAYS
    },
    Rule {
        names: &["delete_module", "init_module", "finit_module"],
        caps: &[Capability::SysModule],
        ..ALWAYS
    },
    Rule {
        names: &["acct"],
        caps: &[Capability::SysPacct],
        ..ALWAYS
    },
    Rule {
        names: &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
        caps: &[Capability::SysPtrace],
        ..ALWAYS
    },
    Rule {
        names: &["iopl", "ioperm"],
        caps: &[Capability::SysRawio],
        ..ALWAYS
    },
    Rule {
        names: &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        caps: &[Capability::SysTime],
        ..ALWAYS
    },
    Rule {
        names: &["vhangup"],
        caps: &[Capability::SysTtyConfig],
        ..ALWAYS
    },
    Rule {
        names: &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
        caps: &[Capability::SysNice],
        ..ALWAYS
    },
    Rule {
        names: &["syslog"],
        caps: &[Capability::Syslog],
        ..ALWAYS
    },
    Rule {
        names: &["bpf"],
        caps: &[Capability::Bpf],
        ..ALWAYS
    },
    Rule {
        names: &["perf_event_open"],
        caps: &[Capability::Perfmon],
        ..ALWAYS
    },
];

/// What Docker's rules depend on, besides capabilities: the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Host {
    /// Docker's name for the host architecture (`amd64`, `arm64`...), if we know it.
    arch: Option<&'static str>,
    /// The architectures the filter covers: the host's and those its CPUs also run, as in
    /// Docker's `archMap`. Empty: the host's only.
    arches: Vec<Arch>,
    /// The kernel's (major, minor) version, if `uname -r` could be read.
    kernel: Option<(u32, u32)>,
}

impl Host {
    /// From `uname -m` and `uname -r`.
    pub(crate) fn new(machine: &str, release: &str) -> Host {
        let arch = match machine {
            "x86_64" => Some("amd64"),
            "aarch64" => Some("arm64"),
            "i386" | "i486" | "i586" | "i686" => Some("x86"),
            "riscv64" => Some("riscv64"),
            "s390x" => Some("s390x"),
            "ppc64le" => Some("ppc64le"),
            "loongarch64" => Some("loongarch64"),
            m if m.starts_with("arm") => Some("arm"),
            _ => None,
        };
        let arches = match machine {
            "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
            "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
            "s390x" => vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
            _ => Vec::new(),
        };
        Host {
            arch,
            arches,
            kernel: kernel_version(release),
        }
    }

    /// This host, from `uname`.
    pub(crate) fn current() -> Host {
        let uname = rustix::system::uname();
        Host::new(
            &uname.machine().to_string_lossy(),
            &uname.release().to_string_lossy(),
        )
    }
}

/// `(major, minor)` from a kernel release such as `6.1.0-18-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

impl Rule {
    /// Whether Docker would include this rule for a container with bounding set `caps`.
    fn applies(&self, host: &Host, caps: &[Capability]) -> bool {
        let on = |arches: &[&str]| host.arch.is_some_and(|a| arches.contains(&a));
        (self.arches.is_empty() || on(self.arches))
            && !on(self.not_arches)
            && self.caps.iter().all(|c| caps.contains(c))
            && !self.not_caps.iter().any(|c| caps.contains(c))
            && self
                .min_kernel
                .is_none_or(|min| host.kernel.is_some_and(|k| k >= min))
    }
}

/// The filter for a job whose bounding capability set is `caps`, on `host`; with
/// `fast_sync`, the fsync family succeeds without doing anything.
pub(crate) fn profile(
    host: &Host,
    caps: &[Capability],
    fast_sync: bool,
) -> Result<LinuxSeccomp, OciSpecError> {
    let mut syscalls = Vec::new();
    for rule in RULES.iter().filter(|r| r.applies(host, caps)) {
        // Two unconditional rules with different actions for one syscall are an error to
        // libseccomp: the no-op rule replaces the allowing one.
        let names: Vec<String> = rule
            .names
            .iter()
            .filter(|n| {
                !(fast_sync
                    && rule.action == Action::Allow
                    && rule.args.is_empty()
                    && SYNC_SYSCALLS.contains(n))
            })
            .map(|n| (*n).to_owned())
            .collect();
        if !names.is_empty() {
            syscalls.push(syscall(names, rule.action, rule.args)?);
        }
    }
    if fast_sync {
        let names = SYNC_SYSCALLS.map(str::to_owned).to_vec();
        syscalls.push(syscall(names, Action::Errno(0), &[])?);
    }
    let mut seccomp = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .syscalls(syscalls);
    if !host.arches.is_empty() {
        seccomp = seccomp.architectures(host.arches.clone());
    }
    seccomp.build()
}

fn syscall(names: Vec<String>, action: Action, args: &[Arg]) -> Result<LinuxSyscall, OciSpecError> {
    let mut syscall = LinuxSyscallBuilder::default().names(names);
    syscall = match action {
        Action::Allow => syscall.action(LinuxSeccompAction::ScmpActAllow),
        Action::Errno(errno) => syscall
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(errno),
    };
    if !args.is_empty() {
        let args = args
            .iter()
            .map(|a| {
                // For MASKED_EQ, `valueTwo` (absent: 0) is what `arg & value` must equal.
                LinuxSeccompArgBuilder::default()
                    .index(a.index)
                    .op(a.op)
                    .value(a.value)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        syscall = syscall.args(args);
    }
    syscall.build()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::runc::CAPABILITIES;

    fn amd64() -> Host {
        Host::new("x86_64", "6.1.0-18-amd64")
    }

    /// The profile as JSON, as runc reads it.
    fn json(host: &Host, caps: &[Capability], fast_sync: bool) -> serde_json::Value {
        serde_json::to_value(profile(host, caps, fast_sync).unwrap()).unwrap()
    }

    /// Every syscall name with the action and arguments of each rule naming it.
    fn rules_for<'a>(profile: &'a serde_json::Value, name: &str) -> Vec<&'a serde_json::Value> {
        profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|rule| rule["names"].as_array().unwrap().iter().any(|n| n == name))
            .collect()
    }

    fn unconditionally_allowed(profile: &serde_json::Value) -> BTreeSet<String> {
        profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|rule| rule["action"] == "SCMP_ACT_ALLOW" && rule.get("args").is_none())
            .flat_map(|rule| rule["names"].as_array().unwrap())
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn denies_by_default_with_eperm_on_every_amd64_architecture() {
        let profile = json(&amd64(), &CAPABILITIES, false);
        assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(profile["defaultErrnoRet"], 1);
        assert_eq!(
            profile["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let arm = json(&Host::new("aarch64", "6.1.0"), &CAPABILITIES, false);
        assert_eq!(
            arm["architectures"],
            serde_json::json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
        );
        let other = json(&Host::new("riscv64", "6.1.0"), &CAPABILITIES, false);
        assert!(other.get("architectures").is_none(), "the host's own only");
    }

    #[test]
    fn our_capabilities_get_no_namespace_mount_or_admin_syscalls() {
        let profile = json(&amd64(), &CAPABILITIES, false);
        let allowed = unconditionally_allowed(&profile);
        assert_eq!(allowed.len(), ALLOWED.len() + 2 + 1 + 3, "{allowed:?}");
        for name in [
            "read",
            "execve",
            "fsync",
            "socketcall",
            "chroot",
            "arch_prctl",
            "modify_ldt",
            "ptrace",
        ] {
            assert!(allowed.contains(name), "{name}");
        }
        for name in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "fsopen",
            "move_mount",
            "open_tree",
            "pivot_root",
            "bpf",
            "perf_event_open",
            "kexec_load",
            "init_module",
            "reboot",
            "open_by_handle_at",
            "kcmp",
            "clock_settime",
            "syslog",
            "add_key",
            "keyctl",
            "userfaultfd",
            "arm_fadvise64_64",
        ] {
            assert!(
                rules_for(&profile, name).is_empty(),
                "{name} is in a rule: {:?}",
                rules_for(&profile, name)
            );
        }
    }

    #[test]
    fn clone_only_without_namespace_flags_and_clone3_is_enosys() {
        let profile = json(&amd64(), &CAPABILITIES, false);
        assert_eq!(NAMESPACE_FLAGS, 2_114_060_288, "Docker's mask");
        assert_eq!(
            rules_for(&profile, "clone"),
            [&serde_json::json!({
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": NAMESPACE_FLAGS, "op": "SCMP_CMP_MASKED_EQ"}],
            })]
        );
        assert_eq!(
            rules_for(&profile, "clone3"),
            [&serde_json::json!({
                "names": ["clone3"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 38,
            })]
        );
    }

    #[test]
    fn personality_and_socket_only_with_dockers_arguments() {
        let profile = json(&amd64(), &CAPABILITIES, false);
        let conditions = |name| {
            rules_for(&profile, name)
                .iter()
                .map(|rule| {
                    assert_eq!(rule["action"], "SCMP_ACT_ALLOW");
                    let args = rule["args"].as_array().unwrap();
                    assert_eq!(args.len(), 1);
                    assert_eq!(args[0]["index"], 0);
                    (
                        args[0]["op"].as_str().unwrap().to_owned(),
                        args[0]["value"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let eq = |v| ("SCMP_CMP_EQ".to_owned(), v);
        assert_eq!(
            conditions("personality"),
            [eq(0), eq(8), eq(0x20000), eq(0x20008), eq(0xffff_ffff)]
        );
        // Every family but AF_ALG (38) and AF_VSOCK (40).
        assert_eq!(
            conditions("socket"),
            [
                ("SCMP_CMP_LT".to_owned(), 38),
                eq(39),
                ("SCMP_CMP_GT".to_owned(), 40)
            ]
        );
    }

    #[test]
    fn arch_specific_rules_follow_the_host() {
        let arm = json(&Host::new("aarch64", "6.1.0"), &CAPABILITIES, false);
        let allowed = unconditionally_allowed(&arm);
        for name in [
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "set_tls",
            "cacheflush",
        ] {
            assert!(allowed.contains(name), "{name}");
        }
        assert!(!allowed.contains("arch_prctl"));
        assert!(!allowed.contains("modify_ldt"));
        let amd = unconditionally_allowed(&json(&amd64(), &CAPABILITIES, false));
        assert!(!amd.contains("set_tls"));
    }

    #[test]
    fn ptrace_only_from_kernel_4_8() {
        let old = json(
            &Host::new("x86_64", "4.4.0-210-generic"),
            &CAPABILITIES,
            false,
        );
        let unknown = json(&Host::new("x86_64", "weird"), &CAPABILITIES, false);
        for profile in [old, unknown] {
            for name in ["ptrace", "process_vm_readv", "process_vm_writev"] {
                assert!(rules_for(&profile, name).is_empty(), "{name}");
            }
        }
        assert_eq!(kernel_version("4.8"), Some((4, 8)));
        assert_eq!(kernel_version("10.0.1-rc2"), Some((10, 0)));
        assert_eq!(kernel_version("6"), None);
    }

    /// The rules resolve as Docker's do for other capability sets too.
    #[test]
    fn capabilities_select_rules_as_in_docker() {
        let mut caps = CAPABILITIES.to_vec();
        caps.extend([Capability::SysAdmin, Capability::SysPtrace]);
        let admin = json(&amd64(), &caps, false);
        let allowed = unconditionally_allowed(&admin);
        for name in ["mount", "unshare", "setns", "clone", "clone3", "kcmp"] {
            assert!(allowed.contains(name), "{name}");
        }
        assert!(
            rules_for(&admin, "clone3")
                .iter()
                .all(|r| r.get("errnoRet").is_none())
        );
        let without_chroot: Vec<_> = CAPABILITIES
            .into_iter()
            .filter(|c| *c != Capability::SysChroot)
            .collect();
        let profile = json(&amd64(), &without_chroot, false);
        assert!(rules_for(&profile, "chroot").is_empty());
    }

    #[test]
    fn fast_sync_makes_the_sync_family_no_ops_on_top_of_the_profile() {
        let slow = json(&amd64(), &CAPABILITIES, false);
        let fast = json(&amd64(), &CAPABILITIES, true);
        assert_eq!(fast["defaultAction"], "SCMP_ACT_ERRNO");
        for name in SYNC_SYSCALLS {
            assert_eq!(
                rules_for(&fast, name),
                [&serde_json::json!({
                    "names": SYNC_SYSCALLS,
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": 0,
                })],
                "{name}"
            );
        }
        // Nothing else changed.
        let mut expected = unconditionally_allowed(&slow);
        for name in SYNC_SYSCALLS {
            expected.remove(name);
        }
        assert_eq!(unconditionally_allowed(&fast), expected);
        assert_eq!(
            fast["syscalls"].as_array().unwrap().len(),
            slow["syscalls"].as_array().unwrap().len() + 1
        );
    }

    #[test]
    fn allowed_names_are_unique_and_exclude_the_conditional_ones() {
        let names: BTreeSet<_> = ALLOWED.iter().collect();
        assert_eq!(names.len(), ALLOWED.len());
        for rule in &RULES[1..] {
            for name in rule.names {
                assert!(!names.contains(name), "{name} is also unconditional");
            }
        }
    }
}

//! The two filters, as data: lists of system-call names (with argument conditions where a call
//! is allowed or denied only in part), compiled for one architecture by seccompiler's JSON
//! frontend, which resolves the names with that architecture's own table (so the same lists
//! serve x86_64 and aarch64, and a name an architecture lacks fails the build of its filter
//! instead of silently matching nothing).

use seccompiler::TargetArch;
use serde_json::{Value, json};

/// `clone(2)` flag that makes the new task a thread of the caller's process.
const CLONE_THREAD: u64 = 0x0001_0000;
/// Namespace flags of `clone(2)`: a worker may fork, but not into new namespaces.
const CLONE_NEW_NAMESPACES: u64 = 0x0002_0000 // CLONE_NEWNS
    | 0x0200_0000 // CLONE_NEWCGROUP
    | 0x0400_0000 // CLONE_NEWUTS
    | 0x0800_0000 // CLONE_NEWIPC
    | 0x1000_0000 // CLONE_NEWUSER
    | 0x2000_0000 // CLONE_NEWPID
    | 0x4000_0000; // CLONE_NEWNET

/// `ioctl(2)` requests a front may make: terminal queries (the logger asks whether stderr is a
/// terminal) and the descriptor flags. The numbers are the same on x86_64 and aarch64
/// (asm-generic).
const FRONT_IOCTLS: &[u64] = &[
    0x5401, // TCGETS
    0x5413, // TIOCGWINSZ
    0x5421, // FIONBIO
    0x5450, // FIONCLEX
    0x5451, // FIOCLEX
];

/// `prctl(2)` options a front may use: thread names, and the parent-death signal.
const FRONT_PRCTLS: &[u64] = &[
    1,           // PR_SET_PDEATHSIG
    15,          // PR_SET_NAME
    16,          // PR_GET_NAME
    0x5356_4d41, // PR_SET_VMA (glibc names its anonymous mappings)
];

const AF_UNIX: u64 = 1;

/// What a vhost-user backend front does, on every architecture: serve vhost-user messages
/// (with file descriptors) on unix sockets, map guest memory, wait on eventfds with epoll, run
/// threads, log, and write its status file.
const FRONT_ANY: &[&str] = &[
    // descriptors and files
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "close",
    "close_range",
    "fstat",
    "newfstatat",
    "statx",
    "lseek",
    "fcntl",
    "dup",
    "dup3",
    "openat",
    "getdents64",
    "readlinkat",
    "unlinkat",
    "renameat",
    "renameat2",
    "faccessat",
    "faccessat2",
    "ftruncate",
    "fallocate",
    "fsync",
    "fdatasync",
    "memfd_create",
    "pipe2",
    // waiting
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd2",
    "ppoll",
    "pselect6",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    "futex",
    "nanosleep",
    "clock_nanosleep",
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "sched_yield",
    "sched_getaffinity",
    // sockets (creating one is limited to unix sockets below)
    "recvmsg",
    "sendmsg",
    "recvfrom",
    "sendto",
    "recvmmsg",
    "sendmmsg",
    "accept4",
    "connect",
    "bind",
    "listen",
    "getsockname",
    "getpeername",
    "getsockopt",
    "setsockopt",
    "shutdown",
    // memory
    "mmap",
    "munmap",
    "mprotect",
    "madvise",
    "mremap",
    "msync",
    "brk",
    // threads (clone itself is limited to threads below; clone3 is answered ENOSYS by the
    // process guard, so that glibc falls back to clone, whose flags can be checked)
    "clone3",
    "set_robust_list",
    "rseq",
    "exit",
    "exit_group",
    "wait4",
    "waitid",
    // signals
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigtimedwait",
    "sigaltstack",
    "restart_syscall",
    // identity and limits
    "getpid",
    "gettid",
    "getppid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getrandom",
    "prlimit64",
    "getrlimit",
    "uname",
];

/// The old x86_64 entry points glibc and std still use there (aarch64 only has the `*at` and
/// `p*` forms above).
const FRONT_X86_64: &[&str] = &[
    "open",
    "stat",
    "lstat",
    "access",
    "readlink",
    "unlink",
    "rename",
    "dup2",
    "pipe",
    "poll",
    "select",
    "epoll_create",
    "epoll_wait",
    "eventfd",
    "accept",
];

/// What no worker needs, and what turns a compromised worker into a compromised host: running
/// other programs, reading or writing other processes, namespaces and mounts, kernel modules
/// and images, BPF and perf (kernel attack surface and side channels), the kernel keyring,
/// handle-based opens that bypass paths, userfaultfd (a classic tool for kernel races), and
/// the host's clock, name, swap and power.
const WORKER_DENY_ANY: &[&str] = &[
    "execve",
    "execveat",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    "mount",
    "umount2",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "pivot_root",
    "chroot",
    "setns",
    "unshare",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "reboot",
    "swapon",
    "swapoff",
    "open_by_handle_at",
    "name_to_handle_at",
    "userfaultfd",
    "personality",
    "acct",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "nfsservctl",
    "syslog",
    "vhangup",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// x86_64-only calls of the same kinds: port I/O, the LDT, old module loading.
const WORKER_DENY_X86_64: &[&str] = &["iopl", "ioperm", "modify_ldt", "uselib", "create_module"];

fn any(name: &str) -> Value {
    json!({ "syscall": name })
}

/// A rule that matches when argument `index`, masked with `mask`, equals `value`.
fn masked(name: &str, index: u8, mask: u64, value: u64) -> Value {
    json!({
        "syscall": name,
        "args": [{ "index": index, "type": "qword", "op": { "masked_eq": mask }, "val": value }],
    })
}

/// A rule that matches when the low 32 bits of argument `index` equal `value`.
fn eq(name: &str, index: u8, value: u64) -> Value {
    json!({
        "syscall": name,
        "args": [{ "index": index, "type": "dword", "op": "eq", "val": value }],
    })
}

/// The front's allowlist, for `pid` (signals may only be sent to the front's own threads).
pub(crate) fn front_rules(arch: TargetArch, pid: u32) -> Vec<Value> {
    let mut rules: Vec<Value> = FRONT_ANY.iter().map(|n| any(n)).collect();
    if arch == TargetArch::x86_64 {
        rules.extend(FRONT_X86_64.iter().map(|n| any(n)));
    }
    // Threads only: a clone without CLONE_THREAD is a new process.
    rules.push(masked("clone", 0, CLONE_THREAD, CLONE_THREAD));
    rules.push(eq("socket", 0, AF_UNIX));
    rules.push(eq("socketpair", 0, AF_UNIX));
    rules.extend(FRONT_IOCTLS.iter().map(|&r| eq("ioctl", 1, r)));
    rules.extend(FRONT_PRCTLS.iter().map(|&o| eq("prctl", 0, o)));
    // abort() and raise() signal the caller's own thread group.
    rules.push(eq("tgkill", 0, u64::from(pid)));
    rules
}

/// The worker's denylist.
pub(crate) fn worker_rules(arch: TargetArch) -> Vec<Value> {
    let mut rules: Vec<Value> = WORKER_DENY_ANY.iter().map(|n| any(n)).collect();
    if arch == TargetArch::x86_64 {
        rules.extend(WORKER_DENY_X86_64.iter().map(|n| any(n)));
    }
    // A worker may fork (the driver's helpers do), but not into new namespaces: each flag is
    // its own rule, so any one of them matches.
    let mut bit = 1u64;
    while bit != 0 {
        if CLONE_NEW_NAMESPACES & bit != 0 {
            rules.push(masked("clone", 0, bit, bit));
        }
        bit <<= 1;
    }
    rules
}

/// The process guard, stacked under both filters: `clone3` takes its flags in memory, where a
/// filter cannot read them, so it is answered ENOSYS and glibc falls back to `clone`, whose
/// flags the filters check.
pub(crate) fn guard_rules() -> Vec<Value> {
    vec![any("clone3")]
}

//! The filters, installed. A filter cannot be removed, so each case runs in a fresh copy of this
//! test binary (the test re-runs itself with `VGPU_SECCOMP_CASE` set) and the parent judges how
//! the copy ended: its exit status or signal, and what it printed.

use std::{
    ffi::CString,
    io::{Read, Seek, Write},
    os::{fd::AsRawFd, unix::process::ExitStatusExt},
    process::{Command, ExitStatus},
    sync::{Arc, Condvar, Mutex},
};

use vgpu_seccomp::{Role, SeccompMode, apply, confine_front, confine_worker, no_new_privs};

const CASE: &str = "VGPU_SECCOMP_CASE";

struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// The ptrace probe fails, with errno `want` (ESRCH: allowed; EPERM: refused by the filter).
fn assert_ptrace_fails_with(want: i32) {
    assert_eq!(ptrace_probe(), -1);
    assert_eq!(errno(), want);
}

/// An iovec over `byte`.
fn iov_of(byte: &mut [u8; 1]) -> libc::iovec {
    libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    }
}

/// A message header for one `iov` and the control buffer `cbuf`; it points into both, so they
/// must outlive its use.
fn one_byte_msg(iov: &mut libc::iovec, cbuf: &mut [u8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data, for which all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.len() as _;
    msg
}

/// Like `run_case`, failing the test unless the case exited 0.
fn run_case_ok(name: &str, case: &str) -> Ended {
    let e = run_case(name, case);
    assert!(e.status.success(), "{:?}: {}", e.status, e.stderr);
    e
}

/// Like `run_case_ok`, failing the test unless the case's stdout contains `text`.
fn run_case_saying(name: &str, case: &str, text: &str) -> Ended {
    let e = run_case_ok(name, case);
    assert!(e.stdout.contains(text), "{}\n{}", e.stdout, e.stderr);
    e
}

/// Runs test `name` again in a child process with `VGPU_SECCOMP_CASE=case`.
fn run_case(name: &str, case: &str) -> Ended {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CASE, case)
        .output()
        .unwrap();
    Ended {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The case this process is to run, if it is a child.
fn case() -> Option<String> {
    let case = std::env::var(CASE).ok()?;
    // A child killed by SIGSYS would dump core.
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: passes a valid rlimit by pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &raw const none) };
    Some(case)
}

fn say(s: &str) {
    let mut out = std::io::stdout();
    writeln!(out, "{s}").unwrap();
    out.flush().unwrap();
}

fn done() -> ! {
    say("CASE DONE");
    std::process::exit(0)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// A field of /proc/thread-self/status ("Seccomp", "NoNewPrivs").
fn status_field(name: &str) -> String {
    let text = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/thread-self/status"))
        .trim()
        .to_string()
}

/// How many seccomp filters this process has (the runner may have some of its own).
fn filters() -> i64 {
    status_field("Seccomp_filters").parse().unwrap()
}

/// ptrace(PTRACE_CONT) of this process, which no one traces: allowed, it fails with ESRCH
/// and changes nothing (unlike PTRACE_TRACEME, which would make the test runner a tracer).
fn ptrace_probe() -> i64 {
    // SAFETY: PTRACE_CONT with null address and data reads no memory of ours.
    unsafe {
        libc::ptrace(
            libc::PTRACE_CONT,
            libc::getpid(),
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    }
}

/// execve("/bin/true"): only returns if refused.
fn exec_true() -> i32 {
    let path = CString::new("/bin/true").unwrap();
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: NUL-terminated path, argv and envp arrays that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) }
}

/// The calls the front filter exists to stop; each case must kill the process.
const FRONT_FORBIDDEN: &[&str] = &["ptrace", "execve", "fork", "inet-socket", "kill-parent"];

fn front_forbidden(what: &str) {
    confine_front(SeccompMode::Kill).unwrap();
    say("confined");
    match what {
        "ptrace" => {
            ptrace_probe();
        }
        "execve" => {
            exec_true();
        }
        "fork" => {
            // SAFETY: the child only calls _exit.
            if unsafe { libc::fork() } == 0 {
                // SAFETY: ends the forked child at once.
                unsafe { libc::_exit(0) };
            }
        }
        "inet-socket" => {
            // SAFETY: socket takes no pointers.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }
        "kill-parent" => {
            // tgkill of another process: the front may only signal itself. Signal 0 only checks
            // that the target exists.
            // SAFETY: integer arguments only.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getppid(), libc::getppid(), 0) };
        }
        other => panic!("unknown case {other}"),
    }
    say("survived");
    done();
}

/// Mutation checked: with `apply` returning before it installs the filters, every case
/// survives and this test fails.
#[test]
fn front_kill_mode_kills_forbidden_calls() {
    if let Some(c) = case() {
        front_forbidden(&c);
    }
    for what in FRONT_FORBIDDEN {
        let e = run_case("front_kill_mode_kills_forbidden_calls", what);
        assert!(e.stdout.contains("confined"), "{what}: {}", e.stderr);
        assert!(!e.stdout.contains("survived"), "{what} was allowed");
        assert_eq!(
            e.status.signal(),
            Some(libc::SIGSYS),
            "{what}: {:?}",
            e.status
        );
    }
}

/// What a vhost-user front does: epoll on an eventfd, a memfd mapped shared, a unix socketpair
/// carrying the memfd by SCM_RIGHTS (mapped again on the other side), named threads handing
/// off through a mutex and condvar (futex); clone3 answered ENOSYS (so glibc uses clone).
fn front_work() {
    // SAFETY: (one block for the whole exchange) plain libc calls on descriptors and mappings this function owns;
    // every buffer passed by pointer is a live local of the stated length.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        assert!(ep >= 0, "epoll_create1: {}", errno());
        let ev = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
        assert!(ev >= 0, "eventfd: {}", errno());
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 7,
        };
        assert_eq!(
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, ev, &raw mut event),
            0
        );
        let one = 1u64;
        assert_eq!(libc::write(ev, (&raw const one).cast(), 8), 8);
        let mut got = [libc::epoll_event { events: 0, u64: 0 }];
        assert_eq!(libc::epoll_wait(ep, got.as_mut_ptr(), 1, 1000), 1);
        assert_eq!({ got[0].u64 }, 7);

        let name = CString::new("guest-ram").unwrap();
        let mfd = libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC);
        assert!(mfd >= 0, "memfd_create: {}", errno());
        assert_eq!(libc::ftruncate(mfd, 4096), 0);
        let map = |fd: i32| {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED, "mmap: {}", errno());
            p.cast::<u8>()
        };
        let p = map(mfd);
        p.write(0xa5);

        let mut sv = [0; 2];
        assert_eq!(
            libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()),
            0
        );
        // sendmsg with one data byte and the memfd as SCM_RIGHTS.
        let space = libc::CMSG_SPACE(4) as usize;
        let mut cbuf = vec![0u8; space];
        let mut byte = [1u8];
        let mut iov = iov_of(&mut byte);
        let msg = one_byte_msg(&mut iov, &mut cbuf);
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
        libc::CMSG_DATA(cmsg).cast::<i32>().write_unaligned(mfd);
        assert_eq!(libc::sendmsg(sv[0], &raw const msg, 0), 1, "{}", errno());
        let mut rbuf = vec![0u8; space];
        let mut rbyte = [0u8];
        let mut riov = iov_of(&mut rbyte);
        let mut rmsg = one_byte_msg(&mut riov, &mut rbuf);
        assert_eq!(
            libc::recvmsg(sv[1], &raw mut rmsg, libc::MSG_CMSG_CLOEXEC),
            1
        );
        let rcmsg = libc::CMSG_FIRSTHDR(&raw const rmsg);
        assert!(!rcmsg.is_null());
        assert_eq!((*rcmsg).cmsg_type, libc::SCM_RIGHTS);
        let received = libc::CMSG_DATA(rcmsg).cast::<i32>().read_unaligned();
        assert_ne!(received, mfd);
        let q = map(received);
        assert_eq!(q.read(), 0xa5, "the received memfd maps the same memory");
        assert_eq!(libc::munmap(q.cast(), 4096), 0);
        assert_eq!(libc::munmap(p.cast(), 4096), 0);
        for fd in [ep, ev, mfd, received, sv[0], sv[1]] {
            assert_eq!(libc::close(fd), 0);
        }

        // clone3 refused with ENOSYS (with a size of 0 the kernel itself would say EINVAL).
        assert_eq!(
            libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0),
            -1
        );
        assert_eq!(errno(), libc::ENOSYS);
    }

    let pair = Arc::new((Mutex::new(false), Condvar::new()));
    let theirs = pair.clone();
    let t = std::thread::Builder::new()
        .name("queue-0".into())
        .spawn(move || {
            let (m, c) = &*theirs;
            *m.lock().unwrap() = true;
            c.notify_one();
            42
        })
        .unwrap();
    let (m, c) = &*pair;
    let mut ready = m.lock().unwrap();
    while !*ready {
        ready = c.wait(ready).unwrap();
    }
    drop(ready);
    assert_eq!(t.join().unwrap(), 42);
}

/// Mutation checked: with `apply` returning before it installs the filters, the final ptrace
/// succeeds, the child exits normally, and this test fails (as it does if clone3 is not
/// answered ENOSYS). With `epoll_create1`, `sendmsg` or `memfd_create` removed from the
/// allowlist, the child dies before it says "front work done".
#[test]
fn front_kill_mode_allows_what_a_front_does() {
    if case().is_some() {
        confine_front(SeccompMode::Kill).unwrap();
        front_work();
        say("front work done");
        // Still confined after all that: the next forbidden call kills.
        ptrace_probe();
        done();
    }
    let e = run_case("front_kill_mode_allows_what_a_front_does", "front");
    assert!(e.stdout.contains("front work done"), "{}", e.stderr);
    assert!(!e.stdout.contains("CASE DONE"));
    assert_eq!(e.status.signal(), Some(libc::SIGSYS), "{:?}", e.status);
}

/// What a worker does besides its ioctls on the GPU: threads, mappings, files, ioctls, a fork
/// (the driver's helpers); and what it may not: execve, ptrace, new namespaces.
fn worker_case() {
    confine_worker(SeccompMode::Kill).unwrap();
    assert_eq!(exec_true(), -1, "execve ran");
    assert_eq!(errno(), libc::EPERM);
    assert_ptrace_fails_with(libc::EPERM);
    // SAFETY: integer arguments only.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWUSER) }, -1);
    assert_eq!(errno(), libc::EPERM);
    // A fork into a new user namespace: refused. (Unconfined, it would fork: that child leaves
    // at once.)
    // SAFETY: no pointers; a child, if one is made, only calls _exit.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_NEWUSER | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        )
    };
    if r == 0 {
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(0) };
    }
    assert_eq!(r, -1, "clone(CLONE_NEWUSER) made a process");
    assert_eq!(errno(), libc::EPERM);

    let t = std::thread::spawn(|| {
        vec![1u8; 1 << 20]
            .iter()
            .map(|&b| u64::from(b))
            .sum::<u64>()
    });
    assert_eq!(t.join().unwrap(), 1 << 20);
    let path = std::env::temp_dir().join(format!("vgpu-seccomp-{}", std::process::id()));
    let mut f = std::fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.write_all(b"worker").unwrap();
    f.rewind().unwrap();
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();
    assert_eq!(back, "worker");
    std::fs::remove_file(&path).unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: FIOCLEX takes no argument; the descriptor is open.
    assert_eq!(unsafe { libc::ioctl(null.as_raw_fd(), libc::FIOCLEX) }, 0);
    // SAFETY: anonymous private mapping, unmapped below.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            1 << 16,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        assert_eq!(libc::munmap(p, 1 << 16), 0);
    }
    // SAFETY: the child only calls _exit; the parent reaps it.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            libc::_exit(7);
        }
        assert!(pid > 0, "fork: {}", errno());
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &raw mut status, 0), pid);
        assert_eq!(libc::WEXITSTATUS(status), 7);
    }
    say("worker work done");
    done();
}

/// Mutation checked: with `apply` returning before it installs the filters, execve replaces
/// the child with /bin/true, which exits 0 without "worker work done", and this test fails.
#[test]
fn worker_denies_execve_and_allows_ordinary_work() {
    if case().is_some() {
        worker_case();
    }
    run_case_saying(
        "worker_denies_execve_and_allows_ordinary_work",
        "worker",
        "worker work done",
    );
}

/// Log mode installs the filters but kills nothing.
/// Mutation checked: with `apply` returning early, no filter is added and this fails.
#[test]
fn log_mode_installs_but_allows() {
    if case().is_some() {
        let before = filters();
        confine_front(SeccompMode::Log).unwrap();
        assert_ptrace_fails_with(libc::ESRCH);
        say(&format!("installed {}", filters() - before));
        done();
    }
    run_case_saying("log_mode_installs_but_allows", "log", "installed 2");
}

/// Trap mode names the refused call and fails it with EPERM.
/// Mutation checked: with `apply` returning early, ptrace succeeds and this fails; with the
/// handler not setting the return register, ptrace "returns" its own call number.
#[test]
fn trap_mode_names_the_refused_call() {
    if case().is_some() {
        confine_front(SeccompMode::Trap).unwrap();
        assert_ptrace_fails_with(libc::EPERM);
        done();
    }
    let e = run_case_ok("trap_mode_names_the_refused_call", "trap");
    assert!(
        e.stderr
            .contains(&format!("refused system call {}\n", libc::SYS_ptrace)),
        "{}",
        e.stderr
    );
}

/// Off installs nothing, and no_new_privs sets the bit.
/// Mutation checked: with Off treated as Kill, ptrace kills the child; with `no_new_privs` not
/// calling prctl, NoNewPrivs reads 0 (where the test runner does not set it already).
#[test]
fn off_installs_nothing_and_no_new_privs_sets_the_bit() {
    if case().is_some() {
        let before = filters();
        apply(Role::Front, SeccompMode::Off).unwrap();
        apply(Role::Worker, SeccompMode::Off).unwrap();
        assert_ptrace_fails_with(libc::ESRCH);
        say(&format!("installed {}", filters() - before));
        no_new_privs().unwrap();
        say(&format!("nnp after {}", status_field("NoNewPrivs")));
        done();
    }
    let e = run_case_saying(
        "off_installs_nothing_and_no_new_privs_sets_the_bit",
        "off",
        "installed 0",
    );
    assert!(e.stdout.contains("nnp after 1"), "{}", e.stdout);
}

//! Tenant isolation on one daemon: every guest client in a worker process of its own (its own
//! GPU address space), the slice's ledger exact across them, a dead worker failing only its
//! client, and guest memory tables that could fault refused.

use std::{
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use vgpu_tests::{Daemon, RawClient, compile_c, e2e_command, run_text, scratch, start_holder};

/// Pids of the live worker processes under `pid` (its descendants with a worker socket in
/// their environment: the front's own children, or the spawner's).
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in direct_children(p) {
            todo.push(c);
            let environ = std::fs::read(format!("/proc/{c}/environ")).unwrap_or_default();
            if environ
                .split(|&b| b == 0)
                .any(|v| v.starts_with(b"VGPU_WORKER_FD="))
            {
                found.push(c);
            }
        }
    }
    found
}

/// Pids of the live (not zombie) children of `pid`.
fn direct_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid)
            && state != Some("Z")
            && let Ok(child) = entry.file_name().to_string_lossy().parse()
        {
            out.push(child);
        }
    }
    out
}

fn wait_until(what: &str, daemon: &Daemon, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting until {what}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_used(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.split("\"memory_used_bytes\": ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Breaks if the daemon serves clients in its own process (`--isolation shared`): then it has
/// no children.
#[test]
fn each_client_is_served_by_a_process_of_its_own() {
    let dir = scratch("iso-procs");
    let program = compile_c("driver_api_e2e.c", &dir);
    let daemon = Daemon::start_sim(&dir, &[]);
    let pid = daemon.child.id();
    assert!(children(pid).is_empty(), "workers before any client");
    let mut first = start_holder(&program, &daemon);
    let mut second = start_holder(&program, &daemon);
    wait_until("two workers run", &daemon, || children(pid).len() == 2);
    let workers = children(pid);
    assert_ne!(workers[0], workers[1]);
    // A worker holds no other frontend's guest memory or eventfds: only its stdio and its
    // socket (the memory it serves is mapped, not held open).
    for w in &workers {
        let held: Vec<String> = std::fs::read_dir(format!("/proc/{w}/fd"))
            .expect("worker fds")
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|l| l.display().to_string())
            .filter(|l| l.contains("memfd") || l.contains("eventfd"))
            .collect();
        assert!(held.is_empty(), "worker {w} holds {held:?}");
    }
    let _ = first.kill();
    let _ = first.wait();
    wait_until("the first client's worker is gone", &daemon, || {
        children(pid).len() == 1
    });
    let _ = second.kill();
    let _ = second.wait();
    wait_until("no worker is left", &daemon, || children(pid).is_empty());
}

/// Breaks if the front does not check reservations against the limit (each worker alone
/// stays under it).
#[test]
fn the_slice_limit_holds_across_processes() {
    let dir = scratch("iso-limit");
    let program = compile_c("driver_api_e2e.c", &dir);
    let daemon = Daemon::start_sim_with_status(&dir, &["--mem-limit", "200M"]);
    let status = daemon.status_file();
    let mut holder = start_holder(&program, &daemon);
    wait_until("the status says 128 MiB", &daemon, || {
        status_used(&status) == Some(128 << 20)
    });
    // A second process needs another 128 MiB and more: over the 200 MiB slice.
    let (exit, text) = run_text(&mut e2e_command(&program, &daemon.socket));
    assert!(
        !exit.success() && !text.contains("E2E PASS"),
        "the second process went over the slice:\n{text}\n{}",
        daemon.log_text()
    );
    assert!(
        text.contains("OUT_OF_MEMORY") || text.contains("error 2"),
        "not refused for memory:\n{text}"
    );
    let _ = holder.kill();
    let _ = holder.wait();
    wait_until("the slice is empty", &daemon, || {
        status_used(&status) == Some(0)
    });
    // (The program's own check that the device has 1 GiB or more fails on a 200 MiB slice;
    // what matters here is that every allocation and copy went through.)
    let (_, text) = run_text(&mut e2e_command(&program, &daemon.socket));
    assert!(
        text.contains("copy 64 MiB: checksum")
            && text.contains("kernels: 1000 launches")
            && !text.contains("OUT_OF_MEMORY"),
        "the freed slice did not serve:\n{text}"
    );
}

/// Breaks if a dead worker's memory stays in the ledger, or if its death takes the daemon or
/// other clients with it.
#[test]
fn a_dead_worker_fails_only_its_client_and_frees_its_memory() {
    let dir = scratch("iso-dead");
    let program = compile_c("driver_api_e2e.c", &dir);
    let mut daemon = Daemon::start_sim_with_status(&dir, &[]);
    let status = daemon.status_file();
    let pid = daemon.child.id();
    let mut holder = start_holder(&program, &daemon);
    wait_until("the status says 128 MiB", &daemon, || {
        status_used(&status) == Some(128 << 20)
    });
    let workers = children(pid);
    assert_eq!(workers.len(), 1, "{}", daemon.log_text());
    // SAFETY: kill(2) on a pid we just read as the daemon's child.
    unsafe { libc::kill(workers[0] as i32, libc::SIGKILL) };
    wait_until("the dead worker's memory left the ledger", &daemon, || {
        status_used(&status) == Some(0)
    });
    assert!(daemon.is_running(), "the daemon died with a worker");
    // Another client is served after a worker died.
    daemon.run_passing(&mut e2e_command(&program, &daemon.socket), "E2E PASS");
    let _ = holder.kill();
    let _ = holder.wait();
}

fn memfd(len: usize, sealable: bool) -> OwnedFd {
    let flags = libc::MFD_CLOEXEC | if sealable { libc::MFD_ALLOW_SEALING } else { 0 };
    // SAFETY: a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"hostile".as_ptr(), flags) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on a descriptor we own.
    let truncated = unsafe { libc::ftruncate(fd.as_fd().as_raw_fd(), len as i64) };
    assert_eq!(truncated, 0);
    fd
}

/// A memory table declaring a 4 MiB region on a 1 MiB memfd, then a descriptor at 3 MiB,
/// ended the daemon with SIGBUS. Breaks if regions are not checked against their files.
#[test]
fn a_memory_region_larger_than_its_file_is_refused_and_others_are_served() {
    let dir = scratch("iso-sigbus");
    let program = compile_c("driver_api_e2e.c", &dir);
    let mut daemon = Daemon::start_sim(&dir, &[]);
    let mut holder = start_holder(&program, &daemon);
    let mut hostile = RawClient::connect(&daemon.socket);
    let short = memfd(1 << 20, true);
    let announced = hostile.vu.announce_region(short.as_fd(), 4 << 20);
    if let Ok(gpa) = announced {
        // Unchecked: touch the part past the end of the file, as the attack did.
        let seg = vgpu_virtio_user::Seg {
            gpa: gpa + (3 << 20),
            len: 4096,
            writable: false,
        };
        let _ = hostile.vu.submit(&[seg]);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        daemon.is_running(),
        "the daemon died: {}",
        daemon.log_text()
    );
    assert!(
        announced.is_err(),
        "a 4 MiB region on a 1 MiB file was accepted"
    );
    // A file that could be cut short later is refused as well.
    let unsealable = memfd(4 << 20, false);
    assert!(
        hostile
            .vu
            .announce_region(unsealable.as_fd(), 4 << 20)
            .is_err(),
        "an unsealable region was accepted"
    );
    drop(hostile);
    // The other frontend is still served, and so is a new one.
    daemon.run_passing(&mut e2e_command(&program, &daemon.socket), "E2E PASS");
    assert!(daemon.is_running());
    let log = daemon.log_text();
    assert!(log.contains("refused a guest memory table"), "{log}");
    let _ = holder.kill();
    let _ = holder.wait();
}

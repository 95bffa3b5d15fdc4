//! The shim's waits end with the daemon: a program whose vGPU dies gets
//! `CUDA_ERROR_DEVICE_UNAVAILABLE` within seconds, every later call fails at once, and its
//! exit path does not hang; a daemon that is merely slow (stopped: a long kernel) is waited
//! for however long it takes.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixListener,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use vgpu_tests::{Daemon, compile_c, fixture, guest_command, scratch, signal_tree, spawn_piped};

/// `VGPU_LIVENESS_SECS` for these tests.
const BOUND: Duration = Duration::from_secs(2);

/// Waits for `child` to exit, for at most `limit`; kills it (and fails) after that.
fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until every thread of the daemon's process tree is stopped (SIGSTOP is delivered
/// asynchronously; a thread still running could answer the call).
fn wait_stopped(pid: u32) {
    let start = Instant::now();
    let stopped = || {
        vgpu_tests::process_tree(pid).iter().all(|p| {
            std::fs::read_dir(format!("/proc/{p}/task")).is_ok_and(|tasks| {
                tasks.filter_map(Result::ok).all(|t| {
                    std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                        st.rfind(')')
                            .and_then(|i| st[i + 1..].split_whitespace().next().map(str::to_owned))
                            .is_some_and(|state| state == "T" || state == "t")
                    })
                })
            })
        })
    };
    while !stopped() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon never stopped"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_program_whose_daemon_dies_fails_with_device_unavailable_and_exits() {
    daemon_dies_under("liveness-kill", None);
}

/// The same while the program waits for the daemon to acknowledge a new shared-memory region
/// (a control request on the socket, not a completion on the ring).
#[test]
fn a_program_waiting_for_a_memory_region_ack_fails_when_the_daemon_dies() {
    daemon_dies_under("liveness-kill-pinned", Some("pinned"));
}

fn daemon_dies_under(name: &str, mode: Option<&str>) {
    let dir = scratch(name);
    let program = compile_c("liveness.c", &dir);
    let daemon = Daemon::start_sim(&dir, &[]);
    let mut child = guest_command(&program, &daemon.socket)
        .args(mode)
        .env("VGPU_LIVENESS_SECS", BOUND.as_secs().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the program");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert!(
        lines.next().and_then(Result::ok).as_deref() == Some("READY"),
        "the program never held its session:\n{}",
        daemon.log_text()
    );
    let pid = daemon.child.id();

    // The daemon stops (as if a kernel ran long) while the program waits in a synchronous
    // call: for more than the bound, the program must keep waiting.
    signal_tree(pid, libc::SIGSTOP);
    wait_stopped(pid);
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "go").expect("tell the program to go on");
    std::thread::sleep(BOUND + Duration::from_secs(1));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the program gave up on a live (stopped) daemon"
    );

    // Now it dies.
    signal_tree(pid, libc::SIGKILL);
    let killed = Instant::now();
    let status = wait_exit(&mut child, BOUND + Duration::from_secs(3), "the program");
    let took = killed.elapsed();
    let result = lines.next().and_then(Result::ok).unwrap_or_default();
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr);
    assert!(
        result.starts_with("RESULT first=46 later=46,46,46,46,46,46 "),
        "{result}\n{stderr}"
    );
    assert!(status.success(), "{status}: {result}\n{stderr}");
    assert!(
        took < BOUND,
        "the program took {took:?} to notice the daemon's death"
    );
    // The later calls fail at once (no transport waits after the first failure), and the
    // exit path ran its calls to the end.
    let later_s: f64 = result
        .split("later_s=")
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .expect("later_s");
    assert!(later_s < 0.1, "later calls took {later_s} s: {result}");
    assert!(stderr.contains("teardown done"), "{stderr}");
    assert!(stderr.contains("the vGPU is unavailable"), "{stderr}");
}

/// A daemon that accepted but is slow to answer the handshake is waited for (liveness is the
/// socket, not elapsed time: other clients' work may hold it up), and its death ends the wait.
#[test]
fn the_handshake_waits_for_a_slow_daemon_and_ends_with_its_death() {
    let dir = scratch("liveness-mute");
    let program = compile_c("driver_api_e2e.c", &dir);
    let socket = dir.join("mute.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let hold = Duration::from_secs(2);
    // Accepts, never answers, and dies (closes the connection) after `hold`.
    let mute = std::thread::spawn(move || {
        let conn = listener.accept().map(|(s, _)| s);
        std::thread::sleep(hold);
        drop(conn);
    });
    let start = Instant::now();
    let mut child = guest_command(&program, &socket)
        .arg(fixture("kernels.cubin"))
        .env("VGPU_LIVENESS_SECS", "0.5")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the program");
    let status = wait_exit(&mut child, Duration::from_secs(10), "cuInit");
    let took = start.elapsed();
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr);
    assert!(!status.success());
    assert!(stderr.contains("cuInit(0) -> 100"), "{stderr}");
    assert!(
        took >= hold && took < hold + Duration::from_secs(2),
        "cuInit failed after {took:?}; the daemon died after {hold:?}: {stderr}"
    );
    mute.join().expect("the mute daemon");
}

/// Nothing listens on the socket: `cuInit` retries for the bound, then fails.
#[test]
fn no_daemon_fails_cu_init_within_the_bound() {
    let dir = scratch("liveness-none");
    let program = compile_c("driver_api_e2e.c", &dir);
    let start = Instant::now();
    let out = guest_command(&program, &dir.join("nobody.sock"))
        .arg(fixture("kernels.cubin"))
        .env("VGPU_LIVENESS_SECS", "1")
        .output()
        .expect("run the program");
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cuInit(0) -> 100"), "{stderr}");
    assert!(took < Duration::from_secs(4), "cuInit took {took:?}");
}

/// A batch kept back while the device is busy is sent within the hold time even if the
/// program makes no further call (it waits for the GPU by reading mapped memory).
#[test]
fn work_queued_behind_busy_device_is_sent_without_another_call() {
    let dir = scratch("held-batch");
    let program = compile_c("held_batch.c", &dir);
    let daemon = Daemon::start_sim(&dir, &[]);
    let (mut child, mut stdin, mut lines) =
        spawn_piped(&mut guest_command(&program, &daemon.socket));
    let mut next = || lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(next(), "READY", "{}", daemon.log_text());
    let pid = daemon.child.id();
    // Stopped, the device stays busy with the first call: the second is kept back.
    signal_tree(pid, libc::SIGSTOP);
    wait_stopped(pid);
    writeln!(stdin, "go").expect("go on");
    assert_eq!(next(), "QUEUED");
    std::thread::sleep(Duration::from_millis(100));
    signal_tree(pid, libc::SIGCONT);
    writeln!(stdin, "go").expect("go on");
    let result = next();
    let status = wait_exit(&mut child, Duration::from_secs(10), "the program");
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr);
    assert!(result.starts_with("ARRIVED"), "{result}\n{stderr}");
    assert!(status.success(), "{status}\n{stderr}");
}

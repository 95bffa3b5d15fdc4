//! A confined front starts a worker through the spawner. Four processes, all copies of this
//! test binary: the test, the front (`VGPU_SECCOMP_CASE=front`), the spawner the front starts
//! before confining itself, and the worker the spawner starts when the front asks.

use std::{
    ffi::OsString,
    io::{Read, Write},
    os::{
        fd::{AsFd, FromRawFd},
        unix::{net::UnixStream, process::ExitStatusExt},
    },
    process::Command,
};

use vgpu_seccomp::{
    SeccompMode, confine_front, confine_worker,
    spawner::{Spawner, serve_if_spawner},
};

const CASE: &str = "VGPU_SECCOMP_CASE";
const TEST: &str = "a_confined_front_starts_a_confined_worker_through_the_spawner";

fn this_test() -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([TEST, "--exact", "--nocapture", "--test-threads=1"]);
    c
}

fn filters() -> i64 {
    let text = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Seccomp_filters:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The worker: fd 3 is its end of the front's socket.
fn worker() -> ! {
    let inherited = filters();
    confine_worker(SeccompMode::Kill).unwrap();
    // SAFETY: the spawner placed the front's socket at fd 3 for us.
    let mut s = unsafe { UnixStream::from_raw_fd(3) };
    let mut ping = [0u8; 4];
    s.read_exact(&mut ping).unwrap();
    assert_eq!(&ping, b"ping");
    let stdin = std::fs::read_link("/proc/self/fd/0").unwrap();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let answer = format!(
        "pong filters={} stdin={} pid={} args={}\n",
        filters() - inherited,
        stdin.display(),
        std::process::id(),
        args.join(" ")
    );
    s.write_all(answer.as_bytes()).unwrap();
    std::process::exit(0)
}

fn front() -> ! {
    let spawner = Spawner::start(this_test()).unwrap();
    confine_front(SeccompMode::Kill).unwrap();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    // The worker runs the spawner's command line (this test) with this appended.
    let more: Vec<OsString> = vec!["--quiet".into()];
    let pid = spawner
        .spawn(&more, &[(CASE.into(), "worker".into())], &[theirs.as_fd()])
        .unwrap();
    drop(theirs);
    ours.write_all(b"ping").unwrap();
    let mut answer = String::new();
    ours.read_to_string(&mut answer).unwrap();
    println!("front: worker {pid} answered {answer}");
    // Still confined: starting a process itself kills the front.
    // SAFETY: the child, if one were made, only calls _exit.
    if unsafe { libc::fork() } == 0 {
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(0) };
    }
    println!("front: fork allowed");
    std::process::exit(0)
}

/// Mutations checked: without the spawner's own arguments before the front's, the worker's
/// arguments differ and this fails; without `.stdin(Stdio::null())` for workers, the worker's stdin is the
/// spawner's socket and this fails; with the spawner not leaving when the front's socket
/// closes, the spawner outlives the front, holds the output pipe open and this test never
/// ends (run it under `timeout`). Without the front filter, the final fork is allowed.
#[test]
fn a_confined_front_starts_a_confined_worker_through_the_spawner() {
    serve_if_spawner();
    match std::env::var(CASE).as_deref() {
        Ok("front") => front(),
        Ok("worker") => worker(),
        _ => {}
    }
    let out = this_test().env(CASE, "front").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // (libtest's "test ... " of each copy shares the line)
    let at = stdout
        .find("front: worker ")
        .unwrap_or_else(|| panic!("the front heard nothing: {stdout}\n{stderr}"));
    let line = stdout[at..].lines().next().unwrap();
    let pid: &str = line.split_whitespace().nth(2).expect("the worker's pid");
    assert!(
        line.ends_with(&format!(
            "answered pong filters=2 stdin=/dev/null pid={pid} args={TEST} --exact --nocapture --test-threads=1 --quiet"
        )),
        "{line}"
    );
    assert!(!stdout.contains("fork allowed"));
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{:?}", out.status);
}

//! `--seccomp`: the daemon confines itself at start-up (with `--gpu sim`, the worker filter).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A `vhost-gpu --gpu sim` on a fresh socket, killed when dropped.
struct Daemon(Child, PathBuf);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn start(name: &str, extra: &[&str]) -> Daemon {
    let dir = std::env::temp_dir().join(format!("vhost-gpu-seccomp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("vgpu.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_vhost-gpu"))
        .args(["--gpu", "sim", "--socket"])
        .arg(&socket)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon(child, dir);
    // The filters are installed just after the socket is created (and before the first
    // connection is accepted), so `filters_within` waits for them.
    let start = Instant::now();
    while !socket.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

/// A field of the daemon's main thread's /proc status.
fn field(d: &Daemon, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{}/status", d.0.id())).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap()
        .trim()
        .to_string()
}

fn filters(d: &Daemon) -> i64 {
    field(d, "Seccomp_filters").parse().unwrap()
}

/// The daemon's filter count once it reaches `want`, or what it is after 5 s.
fn filters_within(d: &Daemon, want: i64) -> i64 {
    let start = Instant::now();
    loop {
        let n = filters(d);
        if n == want || start.elapsed() > Duration::from_secs(5) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mutation checked: with `main` not calling `confine`, or the default changed to `off`, the
/// default daemon has as many filters as the `off` one and this fails.
#[test]
fn the_daemon_is_confined_by_default_and_not_with_off() {
    let off = start("off", &["--seccomp", "off"]);
    let base = filters(&off);
    let default = start("default", &[]);
    assert_eq!(
        filters_within(&default, base + 2),
        base + 2,
        "guard and worker filters"
    );
    assert_eq!(field(&default, "NoNewPrivs"), "1");
    assert_eq!(field(&default, "Seccomp"), "2");
    let log = start("log", &["--seccomp", "log"]);
    assert_eq!(filters_within(&log, base + 2), base + 2);
}

//! Churn: many programs one after another against one daemon, and one program that loads
//! and unloads a module (and creates and destroys a context) thousands of times. The daemon's descriptors, threads and RSS (the
//! daemon and every process it started, so that per-client worker processes count) and the
//! program's own RSS must stay flat.
//!
//! Counts (defaults are what CI runs): `VGPU_CHURN_PROGRAMS` (2000), `VGPU_CHURN_ROUNDS`
//! (10000), `VGPU_CHURN_LAUNCHES` launches per round (100), `VGPU_CHURN_ALLOCS` allocations
//! per round (64).

use std::{
    io::Write,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use vgpu_tests::{
    Daemon, TreeUsage, compile_c, fixture, guest_command, scratch, spawn_piped, tree_usage,
};

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The daemon's usage once it has settled (a client's departure is handled asynchronously):
/// two samples 100 ms apart that agree on processes, descriptors and threads.
fn settled(daemon: &Daemon) -> TreeUsage {
    let pid = daemon.child.id();
    let start = Instant::now();
    let mut last = tree_usage(pid);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = tree_usage(pid);
        let same =
            (now.processes, now.fds, now.threads) == (last.processes, last.fds, last.threads);
        if same || start.elapsed() > Duration::from_secs(5) {
            return now;
        }
        last = now;
    }
}

fn run_tiny(program: &Path, daemon: &Daemon, n: usize) {
    for i in 0..n {
        let out = guest_command(program, &daemon.socket)
            .arg("tiny")
            .stdout(Stdio::null())
            .output()
            .expect("run the tiny program");
        assert!(
            out.status.success(),
            "program {i} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon.log_text()
        );
    }
}

/// Runs `n` tiny programs after a warm-up; returns the daemon's usage before and after.
fn programs_one_after_another(name: &str, n: usize) -> (TreeUsage, TreeUsage) {
    let dir = scratch(name);
    let program = compile_c("churn.c", &dir);
    let daemon = Daemon::start_sim(&dir, &[]);
    run_tiny(&program, &daemon, 20);
    let before = settled(&daemon);
    let start = Instant::now();
    run_tiny(&program, &daemon, n);
    let after = settled(&daemon);
    eprintln!(
        "{n} programs in {:.1} s; daemon before {before:?}, after {after:?}",
        start.elapsed().as_secs_f64()
    );
    (before, after)
}

fn assert_rss_within_5_percent(before: TreeUsage, after: TreeUsage, what: &str) {
    assert!(
        after.rss_kib * 100 <= before.rss_kib * 105,
        "{what}: the daemon's RSS grew from {} KiB to {} KiB",
        before.rss_kib,
        after.rss_kib
    );
}

#[test]
fn the_daemon_stays_flat_over_thousands_of_programs() {
    let n = count("VGPU_CHURN_PROGRAMS", 2000);
    let (before, after) = programs_one_after_another("churn-programs", n);
    assert_eq!(before.processes, after.processes, "{before:?} -> {after:?}");
    assert_eq!(before.threads, after.threads, "{before:?} -> {after:?}");
    assert_rss_within_5_percent(before, after, &format!("{n} programs"));
}

/// The daemon's descriptors over 200 programs (one leaked per program is 200).
#[test]
fn the_daemon_keeps_no_descriptor_of_programs_that_left() {
    let (before, after) = programs_one_after_another("churn-fds", 200);
    assert_eq!(before.fds, after.fds, "{before:?} -> {after:?}");
}

/// Parses "AT round=N rss_kib=K".
fn checkpoint(line: &str) -> (usize, u64) {
    let field = |name: &str| {
        line.split(name)
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    (field("round=") as usize, field("rss_kib="))
}

#[test]
fn module_rounds_leave_the_program_and_the_daemon_flat() {
    let rounds = count("VGPU_CHURN_ROUNDS", 10_000);
    let launches = count("VGPU_CHURN_LAUNCHES", 100);
    let allocs = count("VGPU_CHURN_ALLOCS", 64);
    let dir = scratch("churn-rounds");
    let program = compile_c("churn.c", &dir);
    let daemon = Daemon::start_sim(&dir, &[]);
    let start = Instant::now();
    let (child, mut stdin, mut lines) = spawn_piped(
        guest_command(&program, &daemon.socket)
            .arg("rounds")
            .arg(fixture("kernels.cubin"))
            .args([rounds, launches, allocs].map(|n| n.to_string())),
    );
    let mut next_checkpoint = || {
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        line.starts_with("AT ").then(|| checkpoint(&line))
    };
    let first = next_checkpoint();
    let daemon1 = settled(&daemon);
    let _ = writeln!(stdin, "go");
    let second = next_checkpoint();
    let daemon2 = settled(&daemon);
    let _ = writeln!(stdin, "go");
    drop(stdin);
    let done = lines.any(|l| l.is_ok_and(|l| l == "CHURN DONE"));
    let out = child.wait_with_output().expect("wait");
    let (Some((r1, rss1)), Some((r2, rss2)), true) = (first, second, done) else {
        panic!(
            "the churn program failed ({}): {first:?} {second:?}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            daemon.log_text()
        );
    };
    eprintln!(
        "{rounds} rounds of {launches} launches and {allocs} allocations in {:.1} s; \
         program RSS {rss1} KiB at round {r1}, {rss2} KiB at round {r2}; \
         daemon {daemon1:?} -> {daemon2:?}",
        start.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "{}", out.status);
    assert_eq!((r1, r2), (rounds / 10, rounds));
    // The program: under 5% and under 512 KiB of growth over 90% of the rounds.
    let growth = rss2.saturating_sub(rss1);
    assert!(
        growth * 100 < rss1 * 5 && growth < 512,
        "the program's RSS grew {growth} KiB ({rss1} -> {rss2} KiB) over {} rounds",
        r2 - r1
    );
    // The daemon: same descriptors and threads, RSS within 5%.
    assert_eq!(
        (daemon1.processes, daemon1.fds, daemon1.threads),
        (daemon2.processes, daemon2.fds, daemon2.threads),
        "{daemon1:?} -> {daemon2:?}"
    );
    assert_rss_within_5_percent(daemon1, daemon2, &format!("{rounds} module rounds"));
}

/// The measurement covers descendants (a daemon that serves clients in child processes).
#[test]
fn the_measured_tree_includes_grandchildren() {
    let mut sh = std::process::Command::new("sh")
        .args(["-c", "sh -c 'sleep 30 & wait' & sleep 30 & wait"])
        .spawn()
        .expect("start sh");
    let pid = sh.id();
    let start = Instant::now();
    // sh, its sh and sleep, and that sh's sleep.
    while tree_usage(pid).processes < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            vgpu_tests::process_tree(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let u = tree_usage(pid);
    assert!(u.threads >= 4 && u.fds >= 4 && u.rss_kib > 0, "{u:?}");
    vgpu_tests::signal_tree(pid, libc::SIGKILL);
    let _ = sh.wait();
}

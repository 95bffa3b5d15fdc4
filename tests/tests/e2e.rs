//! The driver-API end-to-end program, compiled here with the system C compiler and linked
//! against our libcuda.so.1, run through the daemon's socket on the sim GPU.

use std::time::Duration;

use vgpu_tests::{
    Daemon, Ran, compile_c, e2e_command, fixture, guest_command, meminfo_lines, scratch,
    start_holder,
};

fn run_e2e(module: &str) {
    let dir = scratch(&format!("e2e-{module}"));
    let program = compile_c("driver_api_e2e.c", &dir);
    let daemon = Daemon::start_sim(&dir, &[]);
    let Ran { stdout, stderr, .. } = daemon.run_passing(
        guest_command(&program, &daemon.socket)
            .arg(fixture(module))
            .arg("--no-kernel-check"),
        "E2E PASS",
    );
    assert!(
        stdout.contains("copy 64 MiB: checksum") && stdout.contains(" ok"),
        "{stdout}"
    );
    // The shim says loudly that this is the simulator.
    assert!(stderr.contains("SIMULATED GPU"), "{stderr}");
    // The daemon recorded every launch and freed the client when it left.
    let log = daemon.wait_for_log("frontend disconnected", Duration::from_secs(10));
    assert!(log.contains("1000 launches recorded by sim"), "{log}");
    assert!(log.contains("module loaded with 6 kernels"), "{log}");
    // The simulator itself (asked through cuMemGetInfo, no slice limit in between) holds
    // nothing once the created context is gone, and nothing after the program freed it all.
    assert_free_is(&stdout, 0);
}

/// Asserts the program's `meminfo` lines (its start, after freeing) both say the device holds
/// `held` bytes: what the simulator has allocated, from outside the executor's ledger.
fn assert_free_is(stdout: &str, held: u64) {
    let m = meminfo_lines(stdout);
    assert_eq!(m.len(), 2, "{stdout}");
    for (free, total) in m {
        assert_eq!(
            total - free,
            held,
            "the device holds other memory:\n{stdout}"
        );
    }
}

/// Asserts the simulator that served `client` (in the default `--isolation process`, the
/// client's own worker's) held nothing once the client's last context was destroyed: the
/// simulator's own count, which it logs at each context's end, not the executor's ledger.
fn assert_sim_freed_all_of(log: &str, client: &str) {
    let freed = log
        .find(&format!("client {client} freed:"))
        .unwrap_or_else(|| panic!("client {client} was never freed:\n{log}"));
    let last = log[..freed]
        .lines()
        .rev()
        .find(|l| l.contains("sim: context destroyed;"))
        .unwrap_or_else(|| panic!("no context of client {client} was destroyed:\n{log}"));
    assert!(
        last.ends_with("the device holds 0 bytes in 0 allocations"),
        "the simulator still holds memory of client {client}: {last}\n{log}"
    );
}

/// Runs the driver-API program to the end and returns its stdout.
fn run_to_the_end(program: &std::path::Path, daemon: &Daemon) -> String {
    daemon
        .run_passing(&mut e2e_command(program, &daemon.socket), "E2E PASS")
        .stdout
}

#[test]
fn driver_api_program_runs_over_virtio_user_with_a_real_cubin() {
    run_e2e("kernels.cubin");
}

#[test]
fn driver_api_program_runs_with_ptx_and_fatbin_modules() {
    run_e2e("kernels.ptx");
    run_e2e("kernels.fatbin");
}

#[test]
fn a_killed_client_is_freed_and_the_next_one_is_served() {
    let dir = scratch("kill");
    let program = compile_c("driver_api_e2e.c", &dir);
    let mut daemon = Daemon::start_sim(&dir, &[]);
    let mut victim = start_holder(&program, &daemon);
    victim.kill().expect("kill");
    let _ = victim.wait();
    // Two 64 MiB buffers of the primary context were held when it died (plus 1 MiB that
    // died with its created context earlier).
    let log = daemon.wait_for_log("frontend disconnected", Duration::from_secs(10));
    assert!(
        log.contains("freed 2 allocations (134217728 bytes)"),
        "{log}"
    );
    assert!(daemon.is_running(), "daemon died with its client");

    // The simulator really freed the dead one's memory, and the next client is served.
    assert_sim_freed_all_of(&log, "1:0");
    assert_free_is(&run_to_the_end(&program, &daemon), 0);
}

#[test]
fn graphs_captured_from_a_stream_are_launched_on_the_host() {
    let dir = scratch("graph");
    let program = compile_c("graph_e2e.c", &dir);
    let daemon = Daemon::start_sim(&dir, &[]);
    daemon.run_passing(&mut e2e_command(&program, &daemon.socket), "GRAPH PASS");
    // 10 launches captured into the graph, the graph launched 3 times.
    let log = daemon.wait_for_log("frontend disconnected", Duration::from_secs(10));
    assert!(log.contains("30 launches recorded by sim"), "{log}");
}

/// Each process that uses the vGPU through virtio-user is a frontend of its own; the daemon
/// serves them at once (PyTorch's compile workers, or a second program, must not wait for
/// the first to exit), and one frontend's exit frees only what it held.
#[test]
fn two_processes_are_served_at_once() {
    let dir = scratch("concurrent");
    let program = compile_c("driver_api_e2e.c", &dir);
    let daemon = Daemon::start_sim(&dir, &[]);
    let mut holder = start_holder(&program, &daemon);
    // While the first holds its memory and connection, a second runs to the end.
    run_to_the_end(&program, &daemon);
    let log = daemon.wait_for_log(
        "frontend disconnected (frontend 2)",
        Duration::from_secs(10),
    );
    assert!(!log.contains("frontend disconnected (frontend 1)"), "{log}");
    let _ = holder.kill();
    let _ = holder.wait();
    let log = daemon.wait_for_log(
        "frontend disconnected (frontend 1)",
        Duration::from_secs(10),
    );
    assert!(
        log.contains("frontend disconnected (frontend 1), freed 2 allocations (134217728 bytes)"),
        "{log}"
    );
    // Freed on the device too, not only in the executor's count.
    assert_sim_freed_all_of(&log, "1:0");
}

/// The slice's state file (`--status-file`, read by the host agent for its metrics) follows
/// what the VM holds.
#[test]
fn the_status_file_reports_the_memory_the_slice_holds() {
    let dir = scratch("status");
    let program = compile_c("driver_api_e2e.c", &dir);
    let daemon = Daemon::start_sim_with_status(&dir, &[]);
    let status = daemon.status_file();
    let used = || {
        std::fs::read_to_string(&status).ok().and_then(|t| {
            t.split("\"memory_used_bytes\": ")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
    };
    let wait_for = |want: u64| {
        let start = std::time::Instant::now();
        while used() != Some(want) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "status never said {want} bytes: {:?}\n{}",
                std::fs::read_to_string(&status),
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(0);
    let mut holder = start_holder(&program, &daemon);
    // Two 64 MiB buffers held at the hold point.
    wait_for(128 << 20);
    let _ = holder.kill();
    let _ = holder.wait();
    wait_for(0);
    // The status file agrees with the simulator's own count.
    let log = daemon.wait_for_log("client 1:0 freed:", Duration::from_secs(10));
    assert_sim_freed_all_of(&log, "1:0");
}

//! The network fallback on the simulator: a VM host's `vhost-gpu --remote` forwards a
//! program's calls, with their bulk data inline, over TCP to a GPU host's `vhost-gpu --listen`,
//! where each connection is one slice.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use vgpu_tests::{Daemon, Ran, compile_c, e2e_command, run, scratch};

fn run_e2e(program: &std::path::Path, local: &Daemon) -> Ran {
    run(&mut e2e_command(program, &local.socket))
}

/// A GPU host on the simulator, and a VM host's daemon forwarding to it with `extra` flags.
fn gpu_and_vm_host(dir: &std::path::Path, extra: &[&str]) -> (Daemon, Daemon) {
    let (gpu_host, port) = Daemon::start_remote_host(dir, &[]);
    let remote = format!("127.0.0.1:{port}");
    let local = Daemon::start_sim(dir, &[&["--remote", &remote][..], extra].concat());
    (gpu_host, local)
}

#[test]
fn a_program_runs_on_a_remote_slice_and_the_slice_is_freed_after() {
    let dir = scratch("remote-e2e");
    let program = compile_c("driver_api_e2e.c", &dir);
    let (gpu_host, local) = gpu_and_vm_host(&dir, &["--mem-limit", "2G"]);
    let Ran {
        status,
        stdout,
        stderr,
    } = run_e2e(&program, &local);
    assert!(
        status.success() && stdout.contains("E2E PASS"),
        "e2e over the network failed:\n{stdout}\n{stderr}\nVM host:\n{}\nGPU host:\n{}",
        local.log_text(),
        gpu_host.log_text()
    );
    // 64 MiB went each way through the TCP session, and came back intact.
    assert!(
        stdout.contains("copy 64 MiB: checksum") && stdout.contains(" ok"),
        "{stdout}"
    );
    // The GPU host ran it (on its simulator, which the guest is told), with the asked limit.
    assert!(stderr.contains("SIMULATED GPU"), "{stderr}");
    let log = gpu_host.wait_for_log("remote slice closed", Duration::from_secs(10));
    assert!(
        log.contains("remote slice: gpu -1, memory limit 2147483648 bytes"),
        "{log}"
    );
    assert!(log.contains("1000 launches recorded by sim"), "{log}");
    assert!(
        local.log_text().contains("remote slice on 127.0.0.1"),
        "{}",
        local.log_text()
    );
}

#[test]
fn a_slice_limit_is_enforced_by_the_gpu_host() {
    let dir = scratch("remote-limit");
    let program = compile_c("driver_api_e2e.c", &dir);
    // The program holds two 64 MiB buffers: a 100 MiB slice cannot have both.
    let (gpu_host, local) = gpu_and_vm_host(&dir, &["--mem-limit", "100M"]);
    let Ran {
        status,
        stdout,
        stderr,
    } = run_e2e(&program, &local);
    let logs = || {
        format!(
            "{stdout}\n{stderr}\nVM host:\n{}\nGPU host:\n{}",
            local.log_text(),
            gpu_host.log_text()
        )
    };
    assert!(
        !status.success(),
        "a 100 MiB slice held 128 MiB:\n{}",
        logs()
    );
    // The program was served up to the limit: the device it saw is the 100 MiB slice, all of
    // it free, and the first 64 MiB buffer was allocated ...
    assert_eq!(
        vgpu_tests::meminfo_lines(&stdout),
        [(100 << 20, 100 << 20)],
        "{}",
        logs()
    );
    // ... and the second one, which would cross the limit, was refused as out of memory: the
    // one failed call (the program's CHECK lines; its EXPECT that a device has over 1 GiB
    // fails too, on a 100 MiB slice).
    let failed: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("FAIL") && l.contains(" -> "))
        .collect();
    assert_eq!(failed.len(), 1, "{}", logs());
    assert!(
        failed[0].contains("cuMemAlloc_v2(&d_big2, big) -> 2 CUDA_ERROR_OUT_OF_MEMORY"),
        "{}",
        logs()
    );
    // The GPU host held that slice and served the allocations: the session's limit, and the
    // 64 MiB buffer it freed when the program died.
    let log = gpu_host.wait_for_log("remote slice closed", Duration::from_secs(10));
    assert!(log.contains("memory limit 104857600 bytes"), "{}", logs());
    assert!(
        log.contains("remote slice closed: freed 1 allocations (67108864 bytes)"),
        "{}",
        logs()
    );
}

#[test]
fn a_dead_gpu_host_is_a_clear_error_and_the_vm_host_daemon_survives() {
    let dir = scratch("remote-dead");
    let program = compile_c("driver_api_e2e.c", &dir);
    let (mut gpu_host, mut local) = gpu_and_vm_host(&dir, &[]);
    gpu_host.child.kill().expect("kill the GPU host");
    let _ = gpu_host.child.wait();
    let out = run_e2e(&program, &local);
    assert!(!out.status.success(), "ran with no GPU host");
    let log = local.wait_for_log("the vGPU is unavailable", Duration::from_secs(10));
    assert!(log.contains("remote slice on 127.0.0.1"), "{log}");
    assert!(
        local.is_running(),
        "the VM host's daemon died with its GPU host"
    );
}

#[test]
fn garbage_on_the_gpu_host_port_ends_only_that_connection() {
    let dir = scratch("remote-garbage");
    let program = compile_c("driver_api_e2e.c", &dir);
    let (mut gpu_host, port) = Daemon::start_remote_host(&dir, &[]);
    // Not TLS (an HTTP request, junk, and the old plaintext session header): told so in plain
    // text, then closed.
    let mut old_hello = Vec::new();
    old_hello.extend_from_slice(b"VGT1");
    old_hello.extend_from_slice(&1u16.to_le_bytes());
    old_hello.extend_from_slice(&[0; 18 + 32]);
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xffu8; 4096][..],
        &old_hello[..],
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _ = s.write_all(junk);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(
            rest.starts_with(b"VGTX") && String::from_utf8_lossy(&rest).contains("TLS only"),
            "{rest:?}"
        );
    }
    // Nothing at all: closed.
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    drop(s);
    // A session that promises a huge message is refused before anything is allocated.
    let mut s = vgpu_remote::client::connect(
        &format!("127.0.0.1:{port}"),
        &vgpu_remote::SessionParams::default(),
        None,
        Duration::from_secs(10),
    )
    .expect("a session");
    let mut req = Vec::new();
    req.extend_from_slice(b"VGTQ");
    req.extend_from_slice(&u32::MAX.to_le_bytes());
    req.extend_from_slice(&[0; 16]);
    let _ = s.write_all(&req);
    let _ = s.flush();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "an oversized request got an answer");
    let log = gpu_host.wait_for_log("over the limit", Duration::from_secs(10));
    assert!(log.contains("not a TLS peer"), "{log}");
    assert!(gpu_host.is_running(), "the GPU host died of garbage");

    let local = Daemon::start_sim(&dir, &["--remote", &format!("127.0.0.1:{port}")]);
    let out = run_e2e(&program, &local);
    assert!(
        out.status.success(),
        "a good session after garbage failed:\n{}\n{}",
        out.stdout,
        gpu_host.log_text()
    );
}

#[test]
fn a_gpu_host_with_a_secret_serves_only_vm_hosts_that_hold_it() {
    let dir = scratch("remote-auth");
    let program = compile_c("driver_api_e2e.c", &dir);
    let good = dir.join("pool.token");
    let bad = dir.join("other.token");
    std::fs::write(&good, "s3cret-pool-token\n").expect("token");
    std::fs::write(&bad, "not-the-token").expect("token");
    let good = good.display().to_string();
    let bad = bad.display().to_string();
    let (mut gpu_host, port) = Daemon::start_remote_host(&dir, &["--remote-token-file", &good]);
    let remote = format!("127.0.0.1:{port}");

    let sub = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).expect("dir");
        d
    };
    // No secret: refused, and said why.
    let none = Daemon::start_sim(&sub("none"), &["--remote", &remote]);
    assert!(!run_e2e(&program, &none).status.success());
    let log = none.wait_for_log("the vGPU is unavailable", Duration::from_secs(10));
    assert!(log.contains("requires this pool's secret"), "{log}");
    // The wrong secret: refused by the GPU host.
    let wrong = Daemon::start_sim(
        &sub("wrong"),
        &["--remote", &remote, "--remote-token-file", &bad],
    );
    assert!(!run_e2e(&program, &wrong).status.success());
    let log = wrong.wait_for_log("the vGPU is unavailable", Duration::from_secs(10));
    assert!(log.contains("authentication failed"), "{log}");
    // The pool's secret: served.
    let right = Daemon::start_sim(
        &sub("right"),
        &["--remote", &remote, "--remote-token-file", &good],
    );
    let out = run_e2e(&program, &right);
    assert!(
        out.status.success(),
        "{}\n{}",
        out.stdout,
        gpu_host.log_text()
    );
    assert!(gpu_host.is_running());
}

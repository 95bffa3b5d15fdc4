//! Unmodified CUDA runtime programs (nvcc 13.0, `-arch=sm_90`, static cudart and
//! `-cudart shared`; sources and build script in `tests/runtime/`, binaries checked in under
//! `tests/fixtures/runtime/`) run on our libcuda.so.1 against the simulator: every CUDA call
//! must succeed and copies must round-trip. The simulator records launches without running
//! them, so `RT_SIM=1` tells the programs to skip checks of kernel results.

use std::time::Duration;

use vgpu_tests::{Daemon, fixture, guest_command, scratch};

fn run(program: &str, launches: usize, env: &[(&str, &str)]) {
    let dir = scratch(&format!("runtime-{program}"));
    let daemon = Daemon::start_sim(&dir, &[]);
    let path = fixture(&format!("runtime/{program}"));
    let out = guest_command(&path, &daemon.socket)
        .env("RT_SIM", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run the runtime program");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = program
        .trim_end_matches("_static")
        .trim_end_matches("_shared");
    assert!(
        out.status.success() && stdout.contains(&format!("PASS {name}")),
        "{program} failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        daemon.log_text()
    );
    assert!(stderr.contains("SIMULATED GPU"), "{stderr}");
    // Nothing the runtime used fell through to an unimplemented entry point or table slot.
    assert!(!stderr.contains("not supported by the vGPU"), "{stderr}");
    let log = daemon.wait_for_log("frontend disconnected", Duration::from_secs(10));
    assert!(log.contains("module loaded with"), "{log}");
    assert!(
        log.contains(&format!("{launches} launches recorded by sim")),
        "{program}: expected {launches} launches:\n{log}"
    );
}

#[test]
fn basic_program_with_static_cudart() {
    run("rt_basic_static", 2, &[]);
}

#[test]
fn basic_program_with_shared_cudart() {
    run("rt_basic_shared", 2, &[]);
}

#[test]
fn basic_program_with_eager_module_loading() {
    run("rt_basic_static", 2, &[("CUDA_MODULE_LOADING", "EAGER")]);
}

#[test]
fn streams_program_with_static_cudart() {
    run("rt_streams_static", 4, &[]);
}

#[test]
fn streams_program_with_shared_cudart() {
    run("rt_streams_shared", 4, &[]);
}

/// The checked-in binaries stay small and are what `tests/runtime/build.sh` produces.
#[test]
fn runtime_fixtures_are_small_and_complete() {
    for name in [
        "rt_basic_static",
        "rt_basic_shared",
        "rt_streams_static",
        "rt_streams_shared",
        "libcudart.so.13",
    ] {
        let meta = std::fs::metadata(fixture(&format!("runtime/{name}")))
            .unwrap_or_else(|e| panic!("{name}: {e} (run tests/runtime/build.sh)"));
        assert!(meta.len() < 1 << 20, "{name} is {} bytes", meta.len());
    }
}

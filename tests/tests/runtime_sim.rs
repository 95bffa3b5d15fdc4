//! Unmodified CUDA runtime programs (nvcc 13.0, `-arch=sm_90`, static cudart and
//! `-cudart shared`; sources and build script in `tests/runtime/`, binaries checked in under
//! `tests/fixtures/runtime/`) run on our libcuda.so.1 against the simulator: every CUDA call
//! must succeed and copies must round-trip. The simulator records launches without running
//! them, so `RT_SIM=1` tells the programs to skip checks of kernel results.
//!
//! rt_basic and rt_streams run with both cudarts; every other program that needs no cuBLAS,
//! cuFFT or cuRAND runs with shared cudart (small binaries: `<name>_shared` only).

use std::time::Duration;

use vgpu_tests::{Daemon, fixture, guest_command, scratch};

fn run(program: &str, launches: usize, env: &[(&str, &str)]) -> String {
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
    assert!(
        !stderr.contains("not supported by the vGPU")
            && !stdout.contains("not supported by the vGPU"),
        "{program}:\n{stdout}\n{stderr}"
    );
    let log = daemon.wait_for_log("frontend disconnected", Duration::from_secs(10));
    // Modules load lazily: a program that launches nothing may never load one.
    assert!(launches == 0 || log.contains("module loaded with"), "{log}");
    assert!(
        // ", N launches": exactly N (not a number ending in N).
        log.contains(&format!(", {launches} launches recorded by sim")),
        "{program}: expected {launches} launches:\n{log}"
    );
    stdout.into_owned()
}

/// Device printf through the whole path: the simulator "prints" a line for each launch of a
/// printing kernel, carrying its first argument (rt_printf launches `one_thread_prints(100)`,
/// `per_block_prints(d)` and `one_thread_prints(7)`, each followed by a synchronising call),
/// on the daemon's stdout where NVIDIA's driver prints; the daemon's console hands it to the
/// shim, which writes it on the program's stdout before the synchronising call returns: so
/// the lines arrive in launch order, before the program's own lines printed after them.
#[test]
fn device_printf_reaches_the_program_in_order() {
    let stdout = run("rt_printf_shared", 3, &[]);
    let lines: Vec<&str> = stdout.lines().collect();
    let at = |what: &dyn Fn(&str) -> bool, name: &str| {
        lines
            .iter()
            .position(|l| what(l))
            .unwrap_or_else(|| panic!("no {name} line:\n{stdout}"))
    };
    let printed: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("SIMPRINTF "))
        .collect();
    assert_eq!(printed.len(), 3, "{stdout}");
    assert!(
        printed[0].contains("one_thread_prints") && printed[0].ends_with(" arg0=100"),
        "{stdout}"
    );
    assert!(
        printed[1].contains("per_block_prints") && printed[1].contains(" arg0=0x7f"),
        "{stdout}"
    );
    assert!(
        printed[2].contains("one_thread_prints") && printed[2].ends_with(" arg0=7"),
        "{stdout}"
    );
    let first = at(&|l| l.starts_with("SIMPRINTF "), "SIMPRINTF");
    let fifo = at(
        &|l| l.starts_with("RESULT printf_fifo_ge_4MiB="),
        "fifo RESULT",
    );
    let kernels = at(
        &|l| l.starts_with("RESULT printf_kernels="),
        "kernels RESULT",
    );
    assert!(fifo < first, "{stdout}");
    let last = lines
        .iter()
        .rposition(|l| l.starts_with("SIMPRINTF "))
        .unwrap_or_default();
    assert!(last < kernels, "{stdout}");
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

/// One test per program checked in with shared cudart only (what `tests/runtime/build.sh`
/// builds by default besides rt_basic and rt_streams), and the launches the simulator records
/// for it: fixed loop counts of its source (a launch refused at the call, like rt_dynsmem's
/// over the shared memory limit, is not recorded).
macro_rules! shared_cudart_programs {
    ($($test:ident: $name:literal launches $launches:literal;)*) => {
        const SHARED_CUDART_PROGRAMS: &[&str] = &[$($name),*];
        $(
            #[test]
            fn $test() {
                run(concat!($name, "_shared"), $launches, &[]);
            }
        )*
    };
}

shared_cudart_programs! {
    atomics_program: "rt_atomics" launches 2;
    callbacks_program: "rt_callbacks" launches 20;
    constant_and_device_globals_program: "rt_constant" launches 3;
    device_props_program: "rt_device_props" launches 0;
    dynamic_shared_memory_program: "rt_dynsmem" launches 4;
    events_program: "rt_events" launches 16;
    graph_program: "rt_graph" launches 40;
    graph_update_program: "rt_graph_update" launches 3;
    meminfo_program: "rt_meminfo" launches 0;
    mempool_program: "rt_mempool" launches 158;
    multikernel_program: "rt_multikernel" launches 20000;
    occupancy_program: "rt_occupancy" launches 2;
    pinned_and_pageable_program: "rt_pinned_pageable" launches 0;
    printf_program: "rt_printf" launches 3;
    priorities_program: "rt_priorities" launches 100;
    threads_program: "rt_threads" launches 400;
}

/// Every program of `tests/runtime/` that needs no cuBLAS, cuFFT or cuRAND runs here: a new
/// one is added to build.sh's default set (`shared_only`) and to `shared_cudart_programs!`.
#[test]
fn every_program_without_a_library_is_covered() {
    let dir = vgpu_tests::repo().join("tests/runtime");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/runtime") {
        let file = entry.expect("directory entry").file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".cu")) else {
            continue;
        };
        let needs_library = ["rt_cublas", "rt_cufft", "rt_curand"]
            .iter()
            .any(|l| name.starts_with(l));
        if name.starts_with("rt_")
            && !needs_library
            && !["rt_basic", "rt_streams"].contains(&name)
            && !SHARED_CUDART_PROGRAMS.contains(&name)
        {
            missing.push(name.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "not run on the simulator: {missing:?} (add them to build.sh's shared_only and to \
         shared_cudart_programs!, then run tests/runtime/build.sh)"
    );
}

/// The checked-in binaries stay small and are what `tests/runtime/build.sh` produces.
#[test]
fn runtime_fixtures_are_small_and_complete() {
    let shared = SHARED_CUDART_PROGRAMS.iter().map(|p| format!("{p}_shared"));
    for name in [
        "rt_basic_static",
        "rt_basic_shared",
        "rt_streams_static",
        "rt_streams_shared",
        "libcudart.so.13",
    ]
    .map(String::from)
    .into_iter()
    .chain(shared)
    {
        let meta = std::fs::metadata(fixture(&format!("runtime/{name}")))
            .unwrap_or_else(|e| panic!("{name}: {e} (run tests/runtime/build.sh)"));
        assert!(meta.len() < 1 << 20, "{name} is {} bytes", meta.len());
    }
}

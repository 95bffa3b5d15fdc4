//! A deliberately broken run on the simulator: the shim built with `corrupt-copy-for-test`
//! (every synchronous device-to-host copy of 1 MiB or more comes back with one byte flipped)
//! makes the driver-API program fail its checksum, and the GPU suite's verdict
//! (`tests/gpu/verdict.py`, here comparing a run on the correct shim with one on the broken
//! shim, as run.sh compares native with vGPU) fails and names the case.

use std::{path::Path, process::Command};

use vgpu_tests::{Daemon, built, compile_c, fixture, repo, scratch};

/// Builds the broken shim (its own target directory, so the correct one stays) and returns
/// the directory holding it as `libcuda.so.1`.
fn corrupt_shim() -> std::path::PathBuf {
    let target = built().join("corrupt-copy-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "vgpu-libcuda",
            "--features",
            "corrupt-copy-for-test",
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(repo())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the corrupting shim failed");
    let dir = target.join("shim");
    std::fs::create_dir_all(&dir).expect("shim dir");
    std::fs::copy(target.join("debug/libcuda.so"), dir.join("libcuda.so.1")).expect("copy");
    dir
}

/// Runs the program on `shim` and writes what run.sh's run_pair records (stdout, rc=).
fn run_on(program: &Path, daemon: &Daemon, shim: &Path, out: &Path) -> (bool, String) {
    let o = Command::new(program)
        .arg(fixture("kernels.cubin"))
        .arg("--no-kernel-check")
        .env("LD_LIBRARY_PATH", shim)
        .env(
            "VGPU_DEVICE",
            format!("vhost-user:{}", daemon.socket.display()),
        )
        .output()
        .expect("run the program");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let rc = o.status.code().unwrap_or(-1);
    std::fs::write(out, format!("{stdout}rc={rc}\n")).expect("write the output");
    (o.status.success(), stdout)
}

#[test]
fn a_shim_that_corrupts_copies_fails_the_checks_and_the_verdict() {
    let dir = scratch("corrupt-copy");
    let program = compile_c("driver_api_e2e.c", &dir);
    let daemon = Daemon::start_sim(&dir, &[]);
    let good_shim = built().join("shim");
    let bad_shim = corrupt_shim();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let verdict = |work: &Path| {
        let o = Command::new("python3")
            .arg(repo().join("tests/gpu/verdict.py"))
            .args(["run", &work.display().to_string(), "sim", "--", "e2e"])
            .output()
            .expect("run verdict.py");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };

    // Control: the correct shim against itself passes.
    let (ok, _) = run_on(&program, &daemon, &good_shim, &work.join("e2e.native.out"));
    assert!(ok, "{}", daemon.log_text());
    run_on(&program, &daemon, &good_shim, &work.join("e2e.vgpu.out"));
    let (rc, text) = verdict(&work);
    assert_eq!(rc, Some(0), "{text}");
    assert!(text.contains("VERDICT: PASS"), "{text}");

    // The broken shim: the 64 MiB round trip's checksum is wrong, the program fails, and the
    // verdict fails naming the case.
    let (ok, stdout) = run_on(&program, &daemon, &bad_shim, &work.join("e2e.vgpu.out"));
    assert!(!ok, "the program passed on a corrupting shim:\n{stdout}");
    assert!(
        stdout.contains("copy 64 MiB: checksum") && stdout.contains("MISMATCH"),
        "{stdout}"
    );
    assert!(stdout.contains("E2E FAIL"), "{stdout}");
    let (rc, text) = verdict(&work);
    assert_eq!(rc, Some(1), "{text}");
    assert!(
        text.contains("VERDICT: FAIL (1 failing: e2e (DIFFER"),
        "{text}"
    );
}

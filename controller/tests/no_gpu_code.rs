//! The controller has no GPU code: GPU discovery (cudarc) is the host agent's only, so nothing
//! the controller builds on, its tests and benches included, may pull in cudarc.

mod common;

use std::process::Command;

use common::output_ok;

/// Lines of `cargo tree -p PACKAGE` (normal, build and dev dependencies) naming `cudarc`.
fn cudarc_lines(package: &str) -> usize {
    crate_lines(package, "cudarc ")
}

/// Lines of `cargo tree -p PACKAGE` naming the crate `name ` (with its trailing space).
fn crate_lines(package: &str, name: &str) -> usize {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = output_ok(
        Command::new(cargo)
            .args(["tree", "--offline", "--prefix", "none", "-p", package])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/..")),
    );
    String::from_utf8_lossy(&tree.stdout)
        .lines()
        .filter(|l| l.starts_with(name))
        .count()
}

#[test]
fn the_controller_does_not_link_cudarc() {
    // The agent does (its GPU discovery), so the count below is not zero for want of a match.
    assert!(cudarc_lines("vgpu-agent") > 0, "the agent lost its cudarc");
    assert_eq!(cudarc_lines("vgpu-controller"), 0);
    // Nor NVML: GPU telemetry is the agent's too.
    assert!(crate_lines("vgpu-agent", "nvml-wrapper ") > 0);
    assert_eq!(crate_lines("vgpu-controller", "nvml-wrapper "), 0);
}

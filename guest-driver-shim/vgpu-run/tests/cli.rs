//! The binary end to end: errors and their exit status, the child's environment, and that
//! the program's own exit status comes back. `/dev/null` stands in for `/dev/vgpu0` (both
//! are character devices); the "library" is an empty file (nothing loads it here).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// A fresh directory (0700) under the system temp dir, removed on drop.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("vgpu-run-cli-{tag}-"))
        .tempdir()
        .unwrap()
}

fn vgpu_run(args: &[&str], tmp: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vgpu-run"))
        .args(args)
        .env_remove("VGPU_DEVICE")
        .env_remove("VGPU_LIB_DIR")
        .env_remove("VGPU_TRACE")
        .env_remove("XDG_RUNTIME_DIR")
        .env("TMPDIR", tmp)
        .env("LD_LIBRARY_PATH", "/old")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn lib_dir(t: &tempfile::TempDir, both_names: bool) -> PathBuf {
    let d = t.path().join("lib");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("libcuda.so.1"), b"").unwrap();
    if both_names {
        std::fs::write(d.join("libcuda.so"), b"").unwrap();
    }
    d
}

#[test]
fn no_command_is_exit_2() {
    let t = temp_dir("nocmd");
    let o = vgpu_run(&["--device", "/dev/null"], t.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no command given"), "{}", stderr(&o));
}

#[test]
fn sets_the_environment_and_passes_the_exit_status() {
    let t = temp_dir("env");
    let lib = lib_dir(&t, true);
    let lib = lib.to_str().unwrap();
    let o = vgpu_run(
        &[
            "--device",
            "/dev/null",
            "--lib-dir",
            lib,
            "--trace",
            "--",
            "sh",
            "-c",
            "echo \"$LD_LIBRARY_PATH|$VGPU_DEVICE|$TRITON_LIBCUDA_PATH|$VGPU_TRACE\"; exit 7",
        ],
        t.path(),
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("{lib}:/old|/dev/null|{lib}|1")
    );
}

#[test]
fn lib_dir_without_unversioned_name_gets_a_private_link_dir() {
    let t = temp_dir("links");
    let lib = lib_dir(&t, false);
    let o = vgpu_run(
        &[
            "--device",
            "/dev/null",
            "--lib-dir",
            lib.to_str().unwrap(),
            "sh",
            "-c",
            "readlink \"$TRITON_LIBCUDA_PATH/libcuda.so\"",
        ],
        t.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let target = lib.join("libcuda.so.1").canonicalize().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        target.to_str().unwrap()
    );
}

#[test]
fn clear_errors() {
    let t = temp_dir("errors");
    let lib = lib_dir(&t, true);
    let lib = lib.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--lib-dir", lib, "--device", "/nonexistent/vgpu9", "true"],
            "does not exist",
        ),
        (
            &["--lib-dir", lib, "--device", "/", "true"],
            "not a character device",
        ),
        (
            &["--lib-dir", lib, "--socket", "/nonexistent/v.sock", "true"],
            "is `vhost-gpu --socket",
        ),
        (
            &[
                "--lib-dir",
                "/nonexistent/lib",
                "--device",
                "/dev/null",
                "true",
            ],
            "/nonexistent/lib/libcuda.so.1",
        ),
    ];
    for (args, want) in cases {
        let o = vgpu_run(args, t.path());
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr(&o);
        assert!(
            e.starts_with("vgpu-run: ") && e.contains(want),
            "{args:?}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn missing_program_is_127() {
    let t = temp_dir("missing");
    let lib = lib_dir(&t, true);
    let o = vgpu_run(
        &[
            "--lib-dir",
            lib.to_str().unwrap(),
            "--device",
            "/dev/null",
            "/nonexistent/prog",
        ],
        t.path(),
    );
    assert_eq!(o.status.code(), Some(127));
}

//! The GPU suites run only on the GPU machine, but their verdicts are checked here: the
//! scripts parse, the table-and-verdict logic (`tests/gpu/verdict.py`) passes its self-test on
//! fake results, `tests/vm/h200-run.sh --verdict` judges fake serial logs, and `run.sh`'s fixed
//! case list names every runtime program of `tests/runtime/`.

use std::process::Command;

use vgpu_tests::{repo, run_text, scratch};

fn run(cmd: &mut Command) -> (i32, String) {
    let (status, text) = run_text(cmd.current_dir(repo()));
    (status.code().unwrap_or(-1), text)
}

#[test]
fn the_gpu_scripts_parse() {
    for script in [
        "tests/gpu/run.sh",
        "tests/gpu/slices.sh",
        "tests/gpu/seal.sh",
        "tests/gpu/setup.sh",
        "tests/gpu/isolation.sh",
        "tests/gpu/session.sh",
        "tests/vm/h200-run.sh",
        "tests/vm/h200-guest.sh",
        "tests/vm/run.sh",
        "tests/vm/guest-test.sh",
        "tests/runtime/build.sh",
    ] {
        let (rc, text) = run(Command::new("bash").args(["-n", script]));
        assert_eq!(rc, 0, "{script}: {text}");
    }
}

#[test]
fn the_verdict_logic_passes_its_self_test() {
    let (rc, text) = run(Command::new("python3").args(["tests/gpu/verdict.py", "--selftest"]));
    assert_eq!(rc, 0, "{text}");
    assert!(text.contains("verdict.py selftest: ok"), "{text}");
}

#[test]
fn the_guest_suite_verdict_follows_the_serial_log() {
    let dir = scratch("h200-verdict");
    let good = "boot\r\nVGPU-STEP driver_api_e2e /usr/share/vgpu/kernels.cubin\r\nE2E PASS\r\n\
                VGPU-STEP-OK driver_api_e2e\r\nVGPU-STEP cross_tenant_vm\r\n\
                CROSS-TENANT RESULT owner_intact=1\r\n\
                CROSS-TENANT RESULT thief_error=CUDA_ERROR_ILLEGAL_ADDRESS thief_matching_words=0\r\n\
                VGPU-STEP-OK cross_tenant_vm\r\nVGPU-STEP rt_basic_static\r\nPASS rt_basic\r\n\
                VGPU-STEP-OK rt_basic_static\r\nVGPU-STEP rt_streams_static\r\nPASS rt_streams\r\n\
                VGPU-STEP-OK rt_streams_static\r\nVGPU-GUEST-DONE fail=0\r\n";
    let cases = [
        ("good", good.to_string(), "0", 0, "VERDICT: PASS"),
        (
            "failed-step",
            good.replace(
                "VGPU-STEP-OK rt_basic_static",
                "VGPU-STEP-FAIL rc=1: rt_basic_static",
            )
            .replace("fail=0", "fail=1"),
            "0",
            1,
            "rt_basic_static (VGPU-STEP-FAIL rc=1",
        ),
        (
            "missing-step",
            good.lines()
                .filter(|l| !l.contains("rt_streams"))
                .map(|l| format!("{l}\n"))
                .collect(),
            "0",
            1,
            "rt_streams_static (MISSING",
        ),
        (
            "no-pass-line",
            good.replace("E2E PASS", "E2E FAIL (1)"),
            "0",
            1,
            "driver_api_e2e (no 'E2E PASS' line)",
        ),
        (
            "owner-damaged",
            good.replace("owner_intact=1", "owner_intact=0"),
            "0",
            1,
            "cross_tenant_vm (no 'CROSS-TENANT RESULT owner_intact=1' line)",
        ),
        ("timeout", good.to_string(), "124", 1, "qemu timed out"),
    ];
    for (name, log, qrc, want, says) in cases {
        let path = dir.join(name);
        std::fs::write(&path, log).expect("serial log");
        let (rc, text) = run(Command::new("bash").args([
            "tests/vm/h200-run.sh",
            "--verdict",
            &path.display().to_string(),
            qrc,
        ]));
        assert_eq!(rc, want, "{name}: {text}");
        assert!(text.contains(says), "{name}: {text}");
    }
}

/// run.sh's case list is literal (a program that fails to build is MISSING, not forgotten):
/// it must name every runtime program there is.
#[test]
fn the_gpu_suite_lists_every_runtime_program() {
    let script = std::fs::read_to_string(repo().join("tests/gpu/run.sh")).expect("run.sh");
    let list = script
        .split("runtime_programs=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("runtime_programs=\"...\" in run.sh");
    let listed: Vec<&str> = list.split_whitespace().collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(repo().join("tests/runtime")).expect("tests/runtime") {
        let file = entry.expect("entry").file_name();
        if let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".cu"))
            && !listed.contains(&name)
        {
            missing.push(name.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "not in run.sh's runtime_programs: {missing:?}"
    );
}

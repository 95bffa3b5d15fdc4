//! `vgpuctl`'s output formats, filters, `allocate --wait`, shell completion, the man page and
//! the reasons it prints for a refusal, against a real controller and agents (simulated GPUs).

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::{Value, json};

const VGPUCTL: &str = env!("CARGO_BIN_EXE_vgpuctl");

fn ctl(url: &str, token: &str, args: &[&str]) -> Output {
    Command::new(VGPUCTL)
        .args(args)
        .env("VGPU_URL", url)
        .env("VGPU_TOKEN", token)
        .env_remove("VGPU_CA_CERT")
        .output()
        .expect("run vgpuctl")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "vgpuctl failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_of(url: &str, token: &str, args: &[&str]) -> Value {
    let mut a = vec!["-o", "json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(&ctl(url, token, &a))).expect("-o json prints JSON")
}

fn vms(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["vm"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn formats_filters_wait_and_reasons() {
    let d = TempDir::new("vgpuctl");
    let c = Controller::start(&d.0, 5_000, 200);
    let _h1 = Agent::start(&d.0, &c.url, "h1", 2, &[], 7001);
    let _h2 = Agent::start(&d.0, &c.url, "h2", 1, &[], 7002);
    c.wait_hosts(2);
    let team = c.create_project("team", json!({"max_sm": 100}));
    let u = c.url.as_str();

    // --wait: returns once the agent runs the worker, with progress on stderr.
    let o = ctl(
        u,
        &team,
        &[
            "allocate",
            "--vm",
            "v1",
            "--host",
            "h1",
            "--profile",
            "1/2",
            "--wait",
        ],
    );
    let out = ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(": running ("), "progress on stderr: {err}");
    assert!(out.contains("running"), "{out}");
    let o = ctl(
        u,
        ADMIN,
        &["allocate", "--vm", "v2", "--host", "h2", "--profile", "1/4"],
    );
    ok(&o);

    // Filters, in every format.
    let all = json_of(u, ADMIN, &["allocations"]);
    assert_eq!(vms(&all), ["v1", "v2"]);
    assert_eq!(
        vms(&json_of(u, ADMIN, &["allocations", "--project", "team"])),
        ["v1"]
    );
    assert_eq!(
        vms(&json_of(u, ADMIN, &["allocations", "--host", "h2"])),
        ["v2"]
    );
    assert_eq!(
        vms(&json_of(
            u,
            ADMIN,
            &["slices", "--host", "h1", "--project", "team"]
        )),
        ["v1"]
    );
    assert!(
        json_of(u, ADMIN, &["allocations", "--state", "nonesuch"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let t = ok(&ctl(u, ADMIN, &["allocations", "--host", "h2"]));
    assert!(t.contains("v2") && !t.contains("v1"), "{t}");
    let gpus = json_of(u, ADMIN, &["gpus", "--host", "h1"]);
    assert_eq!(gpus.as_array().unwrap().len(), 2, "{gpus}");
    let e = refused(&ctl(u, ADMIN, &["gpus", "--project", "team"]));
    assert!(e.contains("--project does not apply"), "{e}");

    // YAML is the same document as JSON.
    let y = ok(&ctl(u, ADMIN, &["-o", "yaml", "allocations"]));
    let from_yaml: Value = serde_norway::from_str(&y).expect("-o yaml prints YAML");
    assert_eq!(from_yaml, all);
    // Wide tables add columns; the default table has none of them.
    let narrow = ok(&ctl(u, ADMIN, &["allocations"]));
    let wide = ok(&ctl(u, ADMIN, &["-o", "wide", "allocations"]));
    let head = |t: &str| t.lines().next().unwrap_or("").to_string();
    assert!(
        head(&wide).contains("GPU HOST") && head(&wide).contains("AGE"),
        "{wide}"
    );
    assert!(
        !head(&narrow).contains("AGE") && !narrow.contains('+'),
        "{narrow}"
    );
    assert!(head(&ok(&ctl(u, ADMIN, &["-o", "wide", "hosts"]))).contains("SOCKET DIR"));

    // Refusals say which constraint.
    ok(&ctl(u, ADMIN, &["drain", "h2"]));
    let drained = json_of(u, ADMIN, &["hosts", "--state", "drained"]);
    assert_eq!(drained.as_array().unwrap().len(), 1, "{drained}");
    assert_eq!(drained[0]["name"], json!("h2"));
    let e = refused(&ctl(
        u,
        ADMIN,
        &["allocate", "--vm", "v3", "--host", "h2", "--profile", "1/4"],
    ));
    assert!(e.contains("HTTP 409 no_capacity (drained)"), "{e}");
    let e = refused(&ctl(
        u,
        ADMIN,
        &[
            "allocate", "--vm", "v3", "--host", "h1", "--sm", "500", "--memory", "1GiB",
        ],
    ));
    assert!(e.contains("no_capacity (too_large)"), "{e}");
    assert!(e.contains("larger than the GPU"), "{e}");
    let e = refused(&ctl(
        u,
        &team,
        &["allocate", "--vm", "v4", "--host", "h1", "--profile", "1/2"],
    ));
    assert!(e.contains("HTTP 403 quota_exceeded (sm)"), "{e}");
}

#[test]
fn completion_and_man_page() {
    let bash = ok(&ctl("http://127.0.0.1:1", "x", &["completion", "bash"]));
    assert!(
        bash.contains("_vgpuctl") && bash.contains("allocations"),
        "{bash}"
    );
    let zsh = ok(&ctl("http://127.0.0.1:1", "x", &["completion", "zsh"]));
    assert!(zsh.starts_with("#compdef vgpuctl"), "{zsh}");
    let fish = ok(&ctl("http://127.0.0.1:1", "x", &["completion", "fish"]));
    assert!(fish.contains("complete -c vgpuctl"), "{fish}");
    let man = ok(&ctl("http://127.0.0.1:1", "x", &["man"]));
    assert!(
        man.contains(".TH vgpuctl") && man.contains("allocate"),
        "{man}"
    );
}

#[test]
fn wait_gives_up_or_says_the_allocation_went_away() {
    let d = TempDir::new("vgpuctl-wait");
    let c = Controller::start(&d.0, 5_000, 200);
    // h3's workers exit at once: the controller releases their allocations.
    let _h3 = Agent::start_with_worker(&d.0, &c.url, "h3", 1, &[], 7003, "exit 3");
    let mut h4 = Agent::start(&d.0, &c.url, "h4", 1, &[], 7004);
    c.wait_hosts(2);
    let u = c.url.as_str();
    let e = refused(&ctl(
        u,
        ADMIN,
        &[
            "allocate",
            "--vm",
            "w1",
            "--host",
            "h3",
            "--profile",
            "1",
            "--wait",
        ],
    ));
    assert!(e.contains("went away while waiting"), "{e}");
    // h4's agent stops: its host stays alive until the lease runs out, the worker never runs.
    h4.kill9();
    let o = ctl(
        u,
        ADMIN,
        &[
            "allocate",
            "--vm",
            "w2",
            "--host",
            "h4",
            "--profile",
            "1",
            "--wait",
            "--timeout",
            "1",
        ],
    );
    let e = refused(&o);
    assert!(e.contains(": pending (0.0 s)"), "progress: {e}");
    assert!(e.contains("is still pending after 1 s"), "{e}");
}

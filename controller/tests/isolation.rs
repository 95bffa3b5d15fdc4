//! Tenant isolation and hostile input on the control plane (issue 16): per-host agent
//! credentials, workers that die with their agent, leftovers a returning agent stops, private
//! files, nothing left after released slices, and bounded REST and metrics connections.
//! Real controller and agent processes on loopback; the orphan and file tests run the real
//! `vhost-gpu` daemon on a simulated GPU.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn gpu(uuid: &str) -> Value {
    json!({"uuid": uuid, "index": 0, "model": "x", "pci_bus_id": "0000:00:00.0", "numa_node": null,
           "sm_count": 132, "memory_bytes": 1u64 << 30, "sim": true})
}

fn register_body(name: &str, socket_dir: &str, gpus: Value) -> String {
    json!({"name": name, "address": "127.0.0.1", "serve_port": 1, "socket_dir": socket_dir, "gpus": gpus})
        .to_string()
}

fn host(c: &Controller, name: &str) -> Value {
    let (st, h) = c.admin("GET", &format!("/v1/hosts/{name}"), None);
    assert_eq!(st, 200, "{h}");
    h
}

#[test]
fn an_agent_credential_acts_for_its_own_host_only() {
    let d = TempDir::new("ident");
    let c = Controller::start(&d.0, 3_000, 150);
    let h1 = Agent::start(&d.0, &c.url, "h1", 1, &[], 0);
    let h2 = Agent::start(&d.0, &c.url, "h2", 1, &[], 0);
    c.wait_hosts(2);
    let (cred1, cred2) = (h1.credential(), h2.credential());
    assert_ne!(cred1, cred2);
    assert_eq!(mode(&h1.state.join("host.token")), 0o600);
    assert_eq!(host(&c, "h1")["enrolled"], json!(true));
    let (_, who) = c.get("/v1/whoami", Some(&cred1));
    assert_eq!(who, json!({"role": "host", "host": "h1"}));

    // The pool's agent token no longer registers anything, and cannot re-enrol a host.
    let empty = register_body("h1", "/tmp/elsewhere", json!([]));
    let r = http(
        &c.url,
        "POST",
        "/v1/agents/register",
        Some(AGENT),
        Some(empty.clone()),
    );
    assert_error(&r, 403, "forbidden");
    let r = http(
        &c.url,
        "POST",
        "/v1/agents/enroll",
        Some(AGENT),
        Some(json!({"host": "h1"}).to_string()),
    );
    assert_error_says(&r, 409, "conflict", "vgpuctl host-token h1");
    // Another host's credential: 403 naming both hosts, for registration and heartbeat.
    let r = http(
        &c.url,
        "POST",
        "/v1/agents/register",
        Some(&cred2),
        Some(empty),
    );
    assert_error(&r, 403, "forbidden");
    let msg = r.1["error"]["message"].as_str().unwrap();
    assert!(msg.contains("\"h2\"") && msg.contains("\"h1\""), "{msg}");
    let r = http(
        &c.url,
        "POST",
        "/v1/agents/h1/heartbeat",
        Some(&cred2),
        Some("{}".into()),
    );
    assert_error(&r, 403, "forbidden");
    // h1 kept its inventory and socket directory.
    let h = host(&c, "h1");
    assert_eq!(h["gpus"], json!(1), "{h}");
    assert_eq!(
        h["socket_dir"],
        json!(h1.state.join("sockets").display().to_string())
    );
    // A host's own credential works for itself.
    let r = http(
        &c.url,
        "POST",
        "/v1/agents/h2/heartbeat",
        Some(&cred2),
        Some("{}".into()),
    );
    assert_eq!(r.0, 200, "{}", r.1);

    // A new host enrols once with the pool token; its registration must give a plain
    // absolute socket directory.
    let r = http(
        &c.url,
        "POST",
        "/v1/agents/enroll",
        Some(AGENT),
        Some(json!({"host": "h3"}).to_string()),
    );
    assert_eq!(r.0, 201, "{}", r.1);
    let cred3 = r.1["token"].as_str().unwrap().to_string();
    for dir in ["relative/dir", "/var/../etc", "/a/./b"] {
        let r = http(
            &c.url,
            "POST",
            "/v1/agents/register",
            Some(&cred3),
            Some(register_body("h3", dir, json!([gpu("G3")]))),
        );
        assert_error(&r, 400, "bad_request");
    }
    let r = http(
        &c.url,
        "POST",
        "/v1/agents/register",
        Some(&cred3),
        Some(register_body("h3", "/run/h3", json!([gpu("G3")]))),
    );
    assert_eq!(r.0, 200, "{}", r.1);

    // The operator issues h1 a new credential: the old one stops working; the agent picks up
    // the new one from its credential file and stays alive.
    let out = output_ok(Command::new(env!("CARGO_BIN_EXE_vgpuctl")).args([
        "--url",
        &c.url,
        "--token",
        ADMIN,
        "host-token",
        "h1",
    ]));
    let new = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(new.starts_with("vgpu_") && new != cred1, "{new}");
    let r = http(
        &c.url,
        "POST",
        "/v1/agents/h1/heartbeat",
        Some(&cred1),
        Some("{}".into()),
    );
    assert_error(&r, 401, "unauthorized");
    let cred_file = h1.state.join("host.token");
    // An operator's copy readable by others (0644) is made private when the agent reads it.
    let copy = d.0.join("h1.token");
    std::fs::write(&copy, format!("{new}\n")).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::rename(&copy, &cred_file).unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    let before = host(&c, "h1")["last_seen_ms_ago"].as_u64().unwrap();
    assert!(
        before < 1_000,
        "h1 heartbeats again with its new credential"
    );
    assert_eq!(mode(&cred_file), 0o600);
}

#[test]
fn workers_die_with_their_agent() {
    let d = TempDir::new("orphan");
    let lease = 2_000;
    let c = Controller::start(&d.0, lease, 150);
    let mut h = Agent::start_daemon(&d.0, &c.url, "h1", 1);
    c.wait_hosts(1);
    let (st, a) = c.allocate("vm", "h1", json!({"profile": "1/4"}), json!({}));
    assert_eq!(st, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    let socket = std::path::PathBuf::from(a["socket_path"].as_str().unwrap());
    assert!(socket.starts_with(h.state.join("sockets")), "{socket:?}");
    c.wait_state(&id, "running");
    wait_until(Duration::from_secs(10), || {
        UnixStream::connect(&socket).is_ok()
    });
    let pid = h.worker_pid(&id).unwrap();
    h.kill9();
    let t = Instant::now();
    // Gone, and nobody serves the slice any more (a dying process's threads can outlive its
    // main thread for a moment, so both are checked).
    wait_until(Duration::from_millis(lease), || {
        !pid_alive(pid) && UnixStream::connect(&socket).is_err()
    });
    assert!(t.elapsed() < Duration::from_millis(lease));
    // The controller releases it after the lease; the returning agent removes the stale socket.
    wait_until(Duration::from_millis(3 * lease), || {
        c.admin("GET", &format!("/v1/allocations/{id}"), None).0 == 404
    });
    h.spawn();
    c.wait_hosts(1);
    wait_until(Duration::from_secs(5), || !socket.exists());
    assert_eq!(h.worker_pid(&id), None);
}

/// A process not started by the agent, standing for a worker that outlived an older agent.
fn leftover(env: Option<&str>) -> std::process::Child {
    let mut c = Command::new("sleep");
    c.arg("60").stdin(Stdio::null());
    if let Some(id) = env {
        c.env("VGPU_AGENT_ALLOCATION", id);
    }
    c.spawn().unwrap()
}

#[test]
fn a_returning_agent_stops_leftover_workers_and_leaves_other_processes_alone() {
    let d = TempDir::new("leftover");
    let c = Controller::start(&d.0, 3_000, 150);
    let mut h = Agent::start(&d.0, &c.url, "h1", 1, &[], 0);
    c.wait_hosts(1);
    h.kill9();
    let workers = h.state.join("workers");
    let sockets = h.state.join("sockets");
    // A leftover worker for an allocation the controller does not have...
    let mut gone = leftover(Some("a-gone-000001"));
    std::fs::write(workers.join("a-gone-000001.pid"), gone.id().to_string()).unwrap();
    // ...and a pid file whose pid is now an unrelated process.
    let mut other = leftover(None);
    std::fs::write(workers.join("a-reused-000002.pid"), other.id().to_string()).unwrap();
    for f in [
        "a-gone-000001.sock",
        "a-gone-000001.sock.status",
        "a-old-000003.sock",
    ] {
        std::fs::write(sockets.join(f), "").unwrap();
    }
    h.spawn();
    let t = Instant::now();
    wait_until(Duration::from_secs(5), || {
        gone.try_wait().unwrap().is_some()
    });
    assert!(t.elapsed() < Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        other.try_wait().unwrap().is_none(),
        "a process that is not a worker is not killed"
    );
    let _ = other.kill();
    let _ = other.wait();
    let left: Vec<_> = std::fs::read_dir(&sockets)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "stale sockets left: {left:?}");
    assert!(!workers.join("a-gone-000001.pid").exists());
    assert!(!workers.join("a-reused-000002.pid").exists());
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn state_is_private_and_released_slices_leave_no_files() {
    let d = TempDir::new("files");
    let c = Controller::start(&d.0, 5_000, 100);
    let h = Agent::start_daemon(&d.0, &c.url, "h1", 1);
    c.wait_hosts(1);
    let db = c.state.join("pool.db");
    for f in ["pool.db", "pool.db-wal", "pool.db-shm"] {
        assert_eq!(mode(&c.state.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&h.state.join("host.token")), 0o600);
    assert_eq!(mode(&h.state.join("workers")), 0o700);
    let workers = h.state.join("workers");
    let sockets = h.state.join("sockets");
    for round in 0..5 {
        let ids: Vec<String> = (0..10)
            .map(|i| {
                let (st, a) = c.allocate(
                    &format!("vm{round}-{i}"),
                    "h1",
                    json!({"profile": "1/16"}),
                    json!({}),
                );
                assert_eq!(st, 201, "{a}");
                a["id"].as_str().unwrap().to_string()
            })
            .collect();
        for id in &ids {
            c.wait_state(id, "running");
        }
        if round == 0 {
            let id = &ids[0];
            wait_until(Duration::from_secs(10), || {
                sockets.join(format!("{id}.sock.status")).exists()
            });
            assert_eq!(mode(&workers.join(format!("{id}.log"))), 0o600);
            assert_eq!(mode(&workers.join(format!("{id}.pid"))), 0o600);
        }
        for id in &ids {
            let (st, b) = c.admin("DELETE", &format!("/v1/allocations/{id}"), None);
            assert_eq!(st, 200, "{b}");
        }
        wait_until(Duration::from_secs(15), || {
            files(&sockets).is_empty() && files(&workers).is_empty()
        });
    }
    assert_eq!(mode(&db), 0o600);
    assert_eq!(files(&sockets), Vec::<String>::new());
    assert_eq!(files(&workers), Vec::<String>::new());
}

#[test]
fn up_writes_its_tokens_and_database_private() {
    let d = TempDir::new("up");
    let state = d.0.join("state");
    let addr_file = d.0.join("addr");
    let mut child = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--sim-gpus", "1"])
        .args(["--agent-metrics-addr", "127.0.0.1:0"])
        .args([
            "--worker-bin",
            "/bin/sh",
            "--worker-arg=-c",
            "--worker-arg=exec sleep 60",
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--addr-file")
        .arg(&addr_file)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_file(&addr_file, Duration::from_secs(20));
    wait_file(&state.join("agent/host.token"), Duration::from_secs(20));
    let modes: Vec<(String, u32)> = [
        "admin.token",
        "agent.token",
        "agent/host.token",
        "pool.db",
        "pool.db-wal",
        "pool.db-shm",
    ]
    .iter()
    .map(|f| (f.to_string(), mode(&state.join(f))))
    .collect();
    let _ = child.kill();
    let _ = child.wait();
    for (f, m) in modes {
        assert_eq!(m, 0o600, "{f} has mode {m:o}");
    }
}

/// True when the server closes `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

#[test]
fn rest_connections_are_capped_and_idle_ones_dropped() {
    let d = TempDir::new("conns");
    let c = Controller::start_with(
        &d.0,
        "127.0.0.1:0",
        5_000,
        200,
        &["--idle-timeout-ms", "1500", "--max-connections", "4"],
    );
    // Half a request, then nothing: dropped within the bound.
    let t = Instant::now();
    let mut half = TcpStream::connect(&c.addr).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert!(closed_within(&mut half, Duration::from_secs(5)));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1_300) && took < Duration::from_millis(3_500),
        "half-open connection dropped after {took:?}"
    );
    // A kept-alive connection that goes quiet after its answer is dropped too.
    let mut quiet = TcpStream::connect(&c.addr).unwrap();
    quiet
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut quiet, Duration::from_secs(5)));
    assert!(t.elapsed() < Duration::from_millis(3_500));
    // Four silent connections fill the cap: a fifth is closed at once...
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&c.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut fifth = TcpStream::connect(&c.addr).unwrap();
    let t = Instant::now();
    // (well before the idle timeout would close it)
    assert!(closed_within(&mut fifth, Duration::from_millis(1_000)));
    assert!(t.elapsed() < Duration::from_millis(1_000));
    // ...and once the silent ones are dropped, the server answers again.
    for s in &mut held {
        assert!(closed_within(s, Duration::from_secs(5)));
    }
    assert_eq!(c.get("/healthz", None).0, 200);
}

#[test]
fn the_agent_metrics_port_drops_a_silent_client() {
    let d = TempDir::new("agentport");
    let c = Controller::start(&d.0, 5_000, 200);
    let _h = Agent::start(&d.0, &c.url, "h1", 1, &[], 0);
    let addr = wait_file(&d.0.join("agent-h1.metrics"), Duration::from_secs(10));
    let mut silent = TcpStream::connect(&addr).unwrap();
    let t = Instant::now();
    // Another client is answered while the silent one is open (every connection is served at
    // once)...
    let (st, body) = http(&format!("http://{addr}"), "GET", "/metrics", None, None);
    assert_eq!(st, 200);
    assert!(body.as_str().unwrap().contains("vgpu_agent_workers"));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "answered after {:?}",
        t.elapsed()
    );
    // ...and the silent one is dropped after the first-request timeout (2 s).
    assert!(closed_within(&mut silent, Duration::from_secs(4)));
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "dropped after {:?}",
        t.elapsed()
    );
}

#[test]
fn agents_heartbeating_slower_than_the_idle_timeout_keep_working() {
    let d = TempDir::new("slowhb");
    // Each heartbeat finds its kept-alive connection closed by the server and opens another.
    let c = Controller::start_with(
        &d.0,
        "127.0.0.1:0",
        6_000,
        1_000,
        &["--idle-timeout-ms", "400"],
    );
    let _h = Agent::start(&d.0, &c.url, "h1", 1, &[], 0);
    c.wait_hosts(1);
    let addr = wait_file(&d.0.join("agent-h1.metrics"), Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(4_500));
    let (_, body) = http(&format!("http://{addr}"), "GET", "/metrics", None, None);
    let m = body.as_str().unwrap().to_string();
    assert!(
        m.contains("vgpu_agent_heartbeat_failures_total{host=\"h1\"} 0"),
        "{m}"
    );
    let beats: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("vgpu_agent_heartbeats_total{host=\"h1\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(beats >= 4, "{beats} heartbeats");
    assert_eq!(host(&c, "h1")["alive"], json!(true));
}

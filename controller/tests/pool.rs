//! Pool scenarios against a real controller process and real agent processes (simulated GPUs).
//! See `common/mod.rs` for the harness and the stand-in worker the agents run.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const SIM_MEM: u64 = 141 << 30;

#[test]
fn local_first_then_remote_by_topology_and_drain() {
    let d = TempDir::new("local");
    let c = Controller::start(&d.0, 5_000, 200);
    let _h1 = Agent::start(&d.0, &c.url, "h1", 1, &["rack=r1", "zone=z1"], 7001);
    let _h2 = Agent::start(&d.0, &c.url, "h2", 1, &["rack=r2", "zone=z1"], 7002);
    let _h3 = Agent::start(&d.0, &c.url, "h3", 1, &["rack=r1", "zone=z1"], 7003);
    let _h4 = Agent::start(&d.0, &c.url, "h4", 1, &["rack=r9", "zone=z9"], 7004);
    c.wait_hosts(4);

    let (s, a1) = c.allocate("vm1", "h1", json!({"profile": "1"}), json!({}));
    assert_eq!(s, 201, "{a1}");
    assert_eq!(a1["gpu_host"], json!("h1"));
    assert_eq!(a1["remote"], json!(false));
    assert_eq!(a1["endpoint"], Value::Null);
    assert_eq!(a1["memory_bytes"], json!(SIM_MEM));
    assert_eq!(a1["sm_count"], json!(132));

    // Local host full, no remote allowed: refused with a clear error.
    let r = c.allocate(
        "vm2",
        "h1",
        json!({"profile": "1/2"}),
        json!({"allow_remote": false}),
    );
    assert_error_says(&r, 409, "no_capacity", "h1");

    // Remote: same rack (h3) before same zone (h2) before anything (h4).
    let (s, a2) = c.allocate(
        "vm2",
        "h1",
        json!({"profile": "1"}),
        json!({"allow_remote": true}),
    );
    assert_eq!(s, 201, "{a2}");
    assert_eq!(a2["gpu_host"], json!("h3"));
    assert_eq!(a2["remote"], json!(true));
    assert_eq!(a2["endpoint"], json!("127.0.0.1:7003"));
    let (_, a3) = c.allocate(
        "vm3",
        "h1",
        json!({"profile": "1"}),
        json!({"allow_remote": true}),
    );
    assert_eq!(a3["gpu_host"], json!("h2"));
    // Drained host gets nothing; h4 would be next but is drained.
    assert_eq!(c.admin("POST", "/v1/hosts/h4/drain", None).0, 200);
    let r = c.allocate(
        "vm4",
        "h1",
        json!({"profile": "1"}),
        json!({"allow_remote": true}),
    );
    assert_error(&r, 409, "no_capacity");
    assert_eq!(c.admin("POST", "/v1/hosts/h4/undrain", None).0, 200);
    let (s, a4) = c.allocate(
        "vm4",
        "h1",
        json!({"profile": "1"}),
        json!({"allow_remote": true}),
    );
    assert_eq!((s, a4["gpu_host"].clone()), (201, json!("h4")));

    // The VM host's agent starts the workers (local and remote ones) and reports them running.
    for a in [&a1, &a2, &a3, &a4] {
        c.wait_state(a["id"].as_str().unwrap(), "running");
    }
    let pid = _h1
        .worker_pid(a2["id"].as_str().unwrap())
        .expect("worker pid file");
    assert!(pid_alive(pid));
    assert!(
        _h3.worker_pid(a2["id"].as_str().unwrap()).is_none(),
        "GPU host does not run the VM's worker"
    );

    // Release returns capacity; the worker is stopped.
    assert_eq!(
        c.admin(
            "DELETE",
            &format!("/v1/allocations/{}", a2["id"].as_str().unwrap()),
            None
        )
        .0,
        200
    );
    wait_until(Duration::from_secs(10), || !pid_alive(pid));
    let (_, g) = c.admin("GET", "/v1/gpus/SIM-GPU-h3-0", None);
    assert_eq!(g["memory_allocated_bytes"], json!(0));
    let m = c.metrics();
    assert!(m.contains("vgpu_pool_remote_allocations_total 3"), "{m}");
    assert!(m.contains("vgpu_pool_remote_sessions 2"), "{m}");
}

#[test]
fn binpack_versus_spread_and_arbitrary_slices() {
    let d = TempDir::new("pack");
    let c = Controller::start(&d.0, 5_000, 200);
    let _h = Agent::start(&d.0, &c.url, "h1", 2, &[], 7001);
    c.wait_hosts(1);
    let (_, a) = c.allocate(
        "a",
        "h1",
        json!({"profile": "1/4"}),
        json!({"strategy": "binpack"}),
    );
    let (_, b) = c.allocate(
        "b",
        "h1",
        json!({"profile": "1/4"}),
        json!({"strategy": "binpack"}),
    );
    assert_eq!(a["gpu_uuid"], b["gpu_uuid"], "binpack fills one GPU");
    let (_, s) = c.allocate(
        "c",
        "h1",
        json!({"profile": "1/4"}),
        json!({"strategy": "spread"}),
    );
    assert_ne!(s["gpu_uuid"], a["gpu_uuid"], "spread takes the emptier GPU");
    // Homogeneous GPUs: a 1/2 cannot join GPUs holding 1/4 slices; arbitrary slices neither.
    let r = c.allocate("d", "h1", json!({"profile": "1/2"}), json!({}));
    assert_error(&r, 409, "no_capacity");
    let uuid = a["gpu_uuid"].as_str().unwrap().to_string();
    let (st, g) = c.admin(
        "PATCH",
        &format!("/v1/gpus/{uuid}"),
        Some(json!({"slice_mode": "mixed"})),
    );
    assert_eq!(st, 200, "{g}");
    let (st, e) = c.allocate(
        "e",
        "h1",
        json!({"sm_count": 40, "memory_bytes": 10u64 << 30}),
        json!({}),
    );
    assert_eq!(st, 201, "{e}");
    assert_eq!(e["gpu_uuid"].as_str().unwrap(), uuid);
    assert_eq!(e["profile"], Value::Null);
    // SMs: 33+33+40 = 106 of 132 used on the mixed GPU; the other GPU holds a 1/4 profile slice
    // and is homogeneous, so an arbitrary slice of 100 SMs fits nowhere.
    let r = c.allocate(
        "g",
        "h1",
        json!({"sm_count": 100, "memory_bytes": 1u64 << 30}),
        json!({}),
    );
    assert_error(&r, 409, "no_capacity");
    // Compute oversubscription 2x on the mixed GPU lets it in; memory is never oversubscribed.
    assert_eq!(
        c.admin(
            "PATCH",
            &format!("/v1/gpus/{uuid}"),
            Some(json!({"oversubscription_ratio": 2.0}))
        )
        .0,
        200
    );
    let (st, gg) = c.allocate(
        "g",
        "h1",
        json!({"sm_count": 100, "memory_bytes": 1u64 << 30}),
        json!({}),
    );
    assert_eq!((st, gg["gpu_uuid"].as_str().unwrap()), (201, uuid.as_str()));
    let r = c.allocate(
        "h",
        "h1",
        json!({"sm_count": 1, "memory_bytes": 140u64 << 30}),
        json!({}),
    );
    assert_error(&r, 409, "no_capacity");
    let (_, slices) = c.admin("GET", "/v1/slices", None);
    assert_eq!(slices.as_array().unwrap().len(), 5);
}

#[test]
fn quotas_and_project_isolation() {
    let d = TempDir::new("quota");
    let c = Controller::start(&d.0, 5_000, 200);
    let _h = Agent::start(&d.0, &c.url, "h1", 1, &[], 7001);
    c.wait_hosts(1);
    let tok = c.create_project(
        "team-a",
        json!({"max_allocations": 2, "max_memory_bytes": 40u64 << 30}),
    );
    let body = |vm: &str, mem: u64| {
        json!({"vm": vm, "host": "h1", "slice": {"sm_count": 10, "memory_bytes": mem}}).to_string()
    };
    let r = c.allocate_as(&tok, body("v1", 30 << 30));
    assert_eq!(r.0, 201, "{}", r.1);
    assert_eq!(r.1["project"], json!("team-a"));
    let r = c.allocate_as(&tok, body("v2", 20 << 30));
    assert_error_says(&r, 403, "quota_exceeded", "memory_bytes");
    let r = c.allocate_as(&tok, body("v2", 10 << 30));
    assert_eq!(r.0, 201);
    let r = c.allocate_as(&tok, body("v3", 1 << 30));
    assert_error_says(&r, 403, "quota_exceeded", "allocations");
    // The admin's allocation in another project is invisible to the project token.
    let (_, other) = c.allocate(
        "adm",
        "h1",
        json!({"sm_count": 10, "memory_bytes": 1u64 << 30}),
        json!({}),
    );
    assert_eq!(other["project"], json!("default"));
    let (st, mine) = http(&c.url, "GET", "/v1/allocations", Some(&tok), None);
    assert_eq!(st, 200);
    assert_eq!(mine.as_array().unwrap().len(), 2);
    let r = http(
        &c.url,
        "DELETE",
        &format!("/v1/allocations/{}", other["id"].as_str().unwrap()),
        Some(&tok),
        None,
    );
    assert_error(&r, 404, "not_found");
    let r = http(
        &c.url,
        "POST",
        "/v1/allocations",
        Some(&tok),
        Some(
            json!({"vm": "x", "host": "h1", "project": "default", "slice": {"profile": "1/8"}})
                .to_string(),
        ),
    );
    assert_error(&r, 403, "forbidden");
    // Admin-only routes refuse project tokens.
    assert_error(
        &http(&c.url, "GET", "/v1/hosts", Some(&tok), None),
        403,
        "forbidden",
    );
    let m = c.metrics();
    assert!(
        m.contains("hami_resource_quota_used{namespace=\"team-a\",quota_name=\"allocations\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("vgpu_pool_allocation_requests_total{result=\"quota_exceeded\"} 2"),
        "{m}"
    );
}

#[test]
fn racing_requests_for_the_last_slice_exactly_one_wins() {
    let d = TempDir::new("race");
    let c = Controller::start(&d.0, 5_000, 200);
    let _h = Agent::start(&d.0, &c.url, "h1", 1, &[], 7001);
    c.wait_hosts(1);
    let (s, _) = c.allocate("first", "h1", json!({"profile": "1/2"}), json!({}));
    assert_eq!(s, 201);
    let url = c.url.clone();
    let threads: Vec<_> = (0..24)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let b =
                    json!({"vm": format!("racer{i}"), "host": "h1", "slice": {"profile": "1/2"}})
                        .to_string();
                http(&url, "POST", "/v1/allocations", Some(ADMIN), Some(b)).0
            })
        })
        .collect();
    let codes: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 201).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 409).count(), 23, "{codes:?}");
    let (_, g) = c.admin("GET", "/v1/gpus/SIM-GPU-h1-0", None);
    assert_eq!(g["memory_allocated_bytes"], json!(SIM_MEM));
    assert_eq!(g["slices"], json!(2));
}

#[test]
fn killed_agent_slices_reclaimed_within_lease() {
    let d = TempDir::new("agentdie");
    let lease = 2_000;
    let c = Controller::start(&d.0, lease, 150);
    let mut h1 = Agent::start(&d.0, &c.url, "h1", 1, &[], 7001);
    let _h2 = Agent::start(&d.0, &c.url, "h2", 1, &[], 7002);
    c.wait_hosts(2);
    let (_, a) = c.allocate("vm", "h1", json!({"profile": "1/2"}), json!({}));
    let (_, b) = c.allocate("vm2", "h2", json!({"profile": "1/2"}), json!({}));
    let id = a["id"].as_str().unwrap().to_string();
    c.wait_state(&id, "running");
    // Leases are renewed: the allocation outlives several lease periods while the agent lives.
    std::thread::sleep(Duration::from_millis(2 * lease));
    assert_eq!(
        c.admin("GET", &format!("/v1/allocations/{id}"), None).0,
        200
    );
    h1.kill9();
    let t = Instant::now();
    wait_until(Duration::from_millis(4 * lease), || {
        c.admin("GET", &format!("/v1/allocations/{id}"), None).0 == 404
    });
    let took = t.elapsed();
    assert!(
        took <= Duration::from_millis(lease + 1_000),
        "reclaimed after {took:?}, lease {lease} ms"
    );
    let (_, g) = c.admin("GET", "/v1/gpus/SIM-GPU-h1-0", None);
    assert_eq!(g["memory_allocated_bytes"], json!(0));
    let (_, hosts) = c.admin("GET", "/v1/hosts", None);
    let h = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == json!("h1"))
        .unwrap()
        .clone();
    assert_eq!(h["alive"], json!(false));
    // No new allocation for a VM on the lost host.
    let r = c.allocate(
        "vm3",
        "h1",
        json!({"profile": "1/8"}),
        json!({"allow_remote": true}),
    );
    assert_error_says(&r, 409, "conflict", "lost");
    // The other host's allocation is untouched.
    assert_eq!(
        c.admin(
            "GET",
            &format!("/v1/allocations/{}", b["id"].as_str().unwrap()),
            None
        )
        .0,
        200
    );
    let m = c.metrics();
    assert!(m.contains("vgpu_pool_hosts_lost_total 1"), "{m}");
    assert!(m.contains("vgpu_pool_reclamations_total 1"), "{m}");
    // The agent returns: it registers again and stops the orphaned worker the controller no longer wants.
    let pid = h1.worker_pid(&id).unwrap();
    h1.spawn();
    c.wait_hosts(2);
    wait_until(Duration::from_secs(10), || !pid_alive(pid));
}

#[test]
fn worker_crash_returns_the_slice() {
    let d = TempDir::new("crash");
    let c = Controller::start(&d.0, 3_000, 150);
    let h = Agent::start(&d.0, &c.url, "h1", 1, &[], 7001);
    c.wait_hosts(1);
    let (_, a) = c.allocate("vm", "h1", json!({"profile": "1/2"}), json!({}));
    let id = a["id"].as_str().unwrap().to_string();
    c.wait_state(&id, "running");
    let pid = h.worker_pid(&id).unwrap();
    std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let t = Instant::now();
    wait_until(Duration::from_secs(5), || {
        c.admin("GET", &format!("/v1/allocations/{id}"), None).0 == 404
    });
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "worker exit is reported by the next heartbeat"
    );
    let m = c.metrics();
    assert!(
        m.contains("vgpu_pool_releases_total{reason=\"worker_exited\"} 1"),
        "{m}"
    );
    let (_, g) = c.admin("GET", "/v1/gpus/SIM-GPU-h1-0", None);
    assert_eq!(g["slices"], json!(0));
}

#[test]
fn the_memory_a_worker_reports_shows_on_its_allocation() {
    let d = TempDir::new("memused");
    let c = Controller::start(&d.0, 3_000, 150);
    // The stand-in worker is `sh -c SCRIPT --socket PATH ...`: $1 is its socket, and the agent
    // reads the worker's ledger from `<socket>.status`, as vhost-gpu writes it.
    let _h = Agent::start_with_worker(
        &d.0,
        &c.url,
        "h1",
        1,
        &[],
        7001,
        r#"echo '{"memory_used_bytes": 12345, "clients": 1}' > "$1.status"; exec sleep 60"#,
    );
    c.wait_hosts(1);
    let (_, a) = c.allocate("vm", "h1", json!({"profile": "1/2"}), json!({}));
    let id = a["id"].as_str().unwrap().to_string();
    assert_eq!(
        a.get("memory_used_bytes"),
        None,
        "nothing reported yet: {a}"
    );
    c.wait_state(&id, "running");
    wait_until(Duration::from_secs(5), || {
        c.admin("GET", &format!("/v1/allocations/{id}"), None).1["memory_used_bytes"]
            == json!(12345)
    });
    let (_, list) = c.admin("GET", "/v1/allocations", None);
    assert_eq!(list[0]["memory_used_bytes"], json!(12345), "{list}");
}

#[test]
fn vm_stop_reported_by_agent_releases_the_slice_once() {
    let d = TempDir::new("vmstop");
    let c = Controller::start(&d.0, 3_000, 150);
    // The stand-in worker ends by itself with exit code 0, as when its VM shuts down.
    let _h = Agent::start_with_worker(&d.0, &c.url, "h1", 1, &[], 7001, "sleep 1; exit 0");
    c.wait_hosts(1);
    let (_, a) = c.allocate("vm", "h1", json!({"profile": "1/2"}), json!({}));
    let id = a["id"].as_str().unwrap().to_string();
    c.wait_state(&id, "running");
    wait_until(Duration::from_secs(5), || {
        c.admin("GET", &format!("/v1/allocations/{id}"), None).0 == 404
    });
    let m = c.metrics();
    assert!(
        m.contains("vgpu_pool_releases_total{reason=\"vm_stopped\"} 1"),
        "{m}"
    );
    // The agent does not start the worker again for a released allocation.
    std::thread::sleep(Duration::from_millis(600));
    let addr = wait_file(&d.0.join("agent-h1.metrics"), Duration::from_secs(5));
    let (_, body) = http(&format!("http://{addr}"), "GET", "/metrics", None, None);
    let t = body.as_str().unwrap_or("").to_string();
    assert!(
        t.contains("vgpu_agent_worker_starts_total{host=\"h1\"} 1"),
        "{t}"
    );
    assert!(
        t.contains("vgpu_agent_worker_exits_total{host=\"h1\"} 1"),
        "{t}"
    );
}

#[test]
fn agent_restart_keeps_the_allocation_with_a_new_worker() {
    let d = TempDir::new("adopt");
    let c = Controller::start(&d.0, 3_000, 150);
    let mut h = Agent::start(&d.0, &c.url, "h1", 1, &[], 7001);
    c.wait_hosts(1);
    let (_, a) = c.allocate("vm", "h1", json!({"profile": "1/4"}), json!({}));
    let id = a["id"].as_str().unwrap().to_string();
    c.wait_state(&id, "running");
    let pid = h.worker_pid(&id).unwrap();
    h.kill9();
    // The worker dies with its agent.
    wait_until(Duration::from_secs(2), || !pid_alive(pid));
    h.spawn();
    // Well past the lease: the allocation lives on, served by a worker of the new agent.
    std::thread::sleep(Duration::from_millis(4_000));
    let (st, now) = c.admin("GET", &format!("/v1/allocations/{id}"), None);
    assert_eq!(st, 200, "{now}");
    let new = h.worker_pid(&id).expect("a new worker");
    assert_ne!(new, pid);
    assert!(pid_alive(new));
}

#[test]
fn controller_sigkill_restart_loses_and_doubles_nothing() {
    let d = TempDir::new("restart");
    let mut c = Controller::start(&d.0, 2_000, 150);
    let h1 = Agent::start(&d.0, &c.url, "h1", 2, &["rack=r1"], 7001);
    let _h2 = Agent::start(&d.0, &c.url, "h2", 1, &["rack=r1"], 7002);
    c.wait_hosts(2);
    let tok = c.create_project("p1", json!({"max_allocations": 3}));
    let mut ids = Vec::new();
    for (i, slice) in [
        json!({"profile": "1"}),
        json!({"profile": "1/2"}),
        json!({"sm_count": 50, "memory_bytes": 30u64 << 30}),
    ]
    .iter()
    .enumerate()
    {
        let b = json!({"vm": format!("vm{i}"), "host": "h1", "slice": slice, "policy": {"allow_remote": true}}).to_string();
        let r = http(&c.url, "POST", "/v1/allocations", Some(&tok), Some(b));
        assert_eq!(r.0, 201, "{}", r.1);
        ids.push(r.1["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        c.wait_state(id, "running");
    }
    let pids: Vec<u32> = ids.iter().map(|id| h1.worker_pid(id).unwrap()).collect();
    let before_allocs = c.admin("GET", "/v1/allocations", None).1;
    let before_gpus = c.admin("GET", "/v1/gpus", None).1;
    let addr = c.addr.clone();
    c.kill9();
    let c = Controller::start_on(&d.0, &addr, 2_000, 150);
    assert_eq!(c.admin("GET", "/v1/allocations", None).1, before_allocs);
    let strip = |v: &Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|g| {
                json!([
                    g["uuid"],
                    g["memory_allocated_bytes"],
                    g["sm_allocated"],
                    g["slices"]
                ])
            })
            .collect()
    };
    assert_eq!(
        strip(&c.admin("GET", "/v1/gpus", None).1),
        strip(&before_gpus)
    );
    // Project token still valid (stored hashed), quota still counts the three allocations.
    let b = json!({"vm": "vm9", "host": "h1", "slice": {"profile": "1/8"}}).to_string();
    assert_error(
        &http(&c.url, "POST", "/v1/allocations", Some(&tok), Some(b)),
        403,
        "quota_exceeded",
    );
    // Agents keep heartbeating into the new process; leases renew; same workers keep running.
    std::thread::sleep(Duration::from_millis(3_000));
    assert_eq!(
        c.admin("GET", "/v1/allocations", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        3
    );
    c.wait_hosts(2);
    for (id, pid) in ids.iter().zip(&pids) {
        assert_eq!(h1.worker_pid(id), Some(*pid));
        assert!(pid_alive(*pid));
    }
    // Capacity is exact: h1 has 2 GPUs; GPU A holds a full slice; GPU B holds 1/2 + 50 SM/30 GiB?
    // No: homogeneous GPUs cannot mix profile and arbitrary slices, so the arbitrary one went remote.
    let allocs = c.admin("GET", "/v1/allocations", None).1;
    let remote: Vec<_> = allocs
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["remote"] == json!(true))
        .collect();
    assert_eq!(remote.len(), 1);
    assert_eq!(remote[0]["gpu_host"], json!("h2"));
    let r = c.allocate("last", "h1", json!({"profile": "1/2"}), json!({}));
    assert_eq!(r.0, 201, "{}", r.1);
    let r = c.allocate("over", "h1", json!({"profile": "1/2"}), json!({}));
    assert_error(&r, 409, "no_capacity");
}

#[test]
fn bad_requests_get_4xx_json_errors() {
    let d = TempDir::new("bad");
    let c = Controller::start(&d.0, 5_000, 200);
    let _h = Agent::start(&d.0, &c.url, "h1", 1, &[], 7001);
    c.wait_hosts(1);
    let post = |body: &str| c.allocate_as(ADMIN, body.to_string());
    assert_error(&post("{not json"), 400, "bad_request");
    assert_error(
        &post(r#"{"vm": "v", "host": "h1", "slice": {"sm_count": -4, "memory_bytes": 100}}"#),
        400,
        "bad_request",
    );
    assert_error(
        &post(r#"{"vm": "v", "host": "h1", "slice": {"sm_count": 4, "memory_bytes": -100}}"#),
        400,
        "bad_request",
    );
    assert_error(
        &post(r#"{"vm": "v", "host": "h1", "slice": {"sm_count": 0, "memory_bytes": 100}}"#),
        400,
        "bad_request",
    );
    assert_error(
        &post(r#"{"vm": "v", "host": "h1", "slice": {"profile": "1/3"}}"#),
        400,
        "bad_request",
    );
    assert_error(
        &post(r#"{"vm": "v", "host": "h1", "slice": {"profile": "1/2", "sm_count": 3}}"#),
        400,
        "bad_request",
    );
    assert_error(
        &post(r#"{"vm": "v", "host": "h1", "slice": {}, "bogus": 1}"#),
        400,
        "bad_request",
    );
    assert_error(
        &post(
            r#"{"vm": "v", "host": "h1", "slice": {"profile": "1/2"}, "policy": {"strategy": "random"}}"#,
        ),
        400,
        "bad_request",
    );
    assert_error(
        &post(r#"{"vm": "v", "host": "nohost", "slice": {"profile": "1/2"}}"#),
        404,
        "not_found",
    );
    assert_error(
        &post(r#"{"vm": "v", "host": "h1", "project": "nope", "slice": {"profile": "1/2"}}"#),
        404,
        "not_found",
    );
    assert_error(
        &post(r#"{"vm": "bad name!", "host": "h1", "slice": {"profile": "1/2"}}"#),
        400,
        "bad_request",
    );
    assert_error(
        &c.admin("GET", "/v1/allocations/a-doesnotexist", None),
        404,
        "not_found",
    );
    assert_error(
        &c.admin("DELETE", "/v1/allocations/a-doesnotexist", None),
        404,
        "not_found",
    );
    assert_error(
        &c.admin("POST", "/v1/hosts/nohost/drain", None),
        404,
        "not_found",
    );
    assert_error(&c.admin("GET", "/v1/gpus/nogpu", None), 404, "not_found");
    assert_error(
        &c.admin(
            "PATCH",
            "/v1/gpus/SIM-GPU-h1-0",
            Some(json!({"oversubscription_ratio": 0.5})),
        ),
        400,
        "bad_request",
    );
    assert_error(
        &c.admin(
            "PATCH",
            "/v1/gpus/SIM-GPU-h1-0",
            Some(json!({"slice_mode": "weird"})),
        ),
        400,
        "bad_request",
    );
    assert_error(&c.admin("GET", "/v1/nothing-here", None), 404, "not_found");
    // Auth: missing, malformed, wrong token; agent token cannot allocate.
    assert_error(
        &http(&c.url, "GET", "/v1/allocations", None, None),
        401,
        "unauthorized",
    );
    assert_error(
        &http(&c.url, "GET", "/v1/allocations", Some("wrong"), None),
        401,
        "unauthorized",
    );
    assert_error(
        &http(
            &c.url,
            "POST",
            "/v1/allocations",
            None,
            Some("{not json".into()),
        ),
        401,
        "unauthorized",
    );
    assert_error(
        &http(&c.url, "GET", "/v1/allocations", Some(AGENT), None),
        403,
        "forbidden",
    );
    assert_error(
        &http(
            &c.url,
            "POST",
            "/v1/agents/register",
            Some(ADMIN),
            Some("{}".into()),
        ),
        400,
        "bad_request",
    );
    assert_error(
        &http(
            &c.url,
            "POST",
            "/v1/agents/ghost/heartbeat",
            Some(ADMIN),
            Some("{}".into()),
        ),
        404,
        "not_found",
    );
    // The pool's agent token only enrols: it cannot heartbeat (or register) any host.
    assert_error(
        &http(
            &c.url,
            "POST",
            "/v1/agents/ghost/heartbeat",
            Some(AGENT),
            Some("{}".into()),
        ),
        403,
        "forbidden",
    );
    // Nothing was allocated by any of that.
    assert_eq!(c.admin("GET", "/v1/allocations", None).1, json!([]));
}

#[test]
fn metrics_families_of_the_controller_and_the_agent() {
    // The OpenAPI document is checked by tests/openapi.rs.
    let d = TempDir::new("doc");
    let c = Controller::start(&d.0, 5_000, 200);
    let _h = Agent::start(&d.0, &c.url, "h1", 1, &[], 7001);
    c.wait_hosts(1);
    c.allocate("vm", "h1", json!({"profile": "1/2"}), json!({}));
    let m = c.metrics();
    for fam in [
        "vgpu_pool_allocations{remote=\"false\"} 1",
        "vgpu_pool_gpus 1",
        "hami_gpu_memory_allocated_bytes{node=\"h1\",device_uuid=\"SIM-GPU-h1-0\"",
        "hami_vgpu_memory_allocated_bytes{namespace=\"default\"",
        "hami_gpu_shared_count{",
        "vgpu_scheduler_decision_seconds_count 1",
    ] {
        assert!(m.contains(fam), "missing {fam} in\n{m}");
    }
    // The agent's endpoint has DCGM names per physical GPU and HAMi names per running slice.
    let addr = wait_file(&d.0.join("agent-h1.metrics"), Duration::from_secs(5));
    wait_until(Duration::from_secs(10), || {
        let (_, body) = http(&format!("http://{addr}"), "GET", "/metrics", None, None);
        let t = body.as_str().unwrap_or("").to_string();
        t.contains("DCGM_FI_DEV_FB_TOTAL{gpu=\"0\",UUID=\"SIM-GPU-h1-0\"")
            && t.contains("hami_vgpu_memory_limit_bytes{namespace=\"default\"")
    });
}

#[test]
fn the_web_console_is_served_with_a_strict_policy() {
    let d = TempDir::new("console");
    let c = Controller::start(&d.0, 5_000, 200);
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent();
    let get = |path: &str| {
        let mut r = agent.get(&format!("{}{path}", c.url)).call().expect("GET");
        let status = r.status().as_u16();
        let csp = r
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let kind = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (
            status,
            kind,
            csp,
            location,
            r.body_mut().read_to_string().unwrap_or_default(),
        )
    };
    let (st, kind, csp, _, body) = get("/console");
    assert_eq!(st, 200);
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(body.contains("<title>vGPU pool</title>") && body.contains("/console/console.js"));
    let (st, kind, _, _, js) = get("/console/console.js");
    assert_eq!(st, 200);
    assert!(kind.starts_with("text/javascript"), "{kind}");
    // The script talks to the API the controller serves, and never builds HTML from data.
    for call in ["\"/whoami\"", "\"/allocations\"", "\"/gpus\"", "\"/hosts\""] {
        assert!(js.contains(call), "console.js does not call {call}");
    }
    assert!(
        !js.contains("innerHTML"),
        "the console must not parse API data as HTML"
    );
    let (st, kind, _, _, _) = get("/console/console.css");
    assert_eq!((st, kind.starts_with("text/css")), (200, true));
    assert_eq!(get("/console/../pool.db").0, 404);
    assert_eq!(get("/console/secrets").0, 404);
    let (st, _, _, location, _) = get("/");
    assert!(
        (300..400).contains(&st) && location == "/console",
        "{st} {location}"
    );
}

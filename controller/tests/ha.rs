//! Controller replicas on a three-member etcd cluster (loopback, random ports, temporary data
//! directories): allocations from several clients while the leader controller is SIGKILLed, then
//! the etcd raft leader. Nothing acknowledged may be lost, doubled or undone, and allocation must
//! resume within `RESUME_LIMIT`. Needs `etcd` on PATH (scripts/test.sh installs it); without it
//! the test says SKIPPED loudly.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const RESUME_LIMIT: Duration = Duration::from_secs(5);
const LEASE_MS: u64 = 2_000;
const HB_MS: u64 = 200;

fn find(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Option<Child>);

impl Proc {
    fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Etcd {
    members: Vec<Proc>,
    client_urls: Vec<String>,
}

/// etcd member `name` of `cluster`, its data in `DIR/etcd-NAME`, serving clients on loopback
/// port `ports.0` and peers on `ports.1`.
fn etcd_member(bin: &Path, name: &str, dir: &Path, ports: (u16, u16), cluster: &str) -> Command {
    let (c, p) = ports;
    let mut cmd = Command::new(bin);
    cmd.args(["--name", name, "--data-dir"])
        .arg(dir.join(format!("etcd-{name}")))
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{c}")])
        .args(["--advertise-client-urls", &format!("http://127.0.0.1:{c}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{p}"),
        ])
        .args(["--initial-cluster", cluster]);
    cmd
}

impl Etcd {
    fn start(bin: &Path, dir: &Path) -> Etcd {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let mut members = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            let child = etcd_member(bin, &format!("m{i}"), dir, (*c, *p), &cluster.join(","))
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "vgpu-ha-test"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.join(format!("etcd-m{i}.log"))).unwrap(),
                ))
                .spawn()
                .expect("spawn etcd");
            members.push(Proc(Some(child)));
        }
        Etcd {
            members,
            client_urls: ports
                .iter()
                .map(|(c, _)| format!("127.0.0.1:{c}"))
                .collect(),
        }
    }

    /// Index of the raft leader, asked through etcdctl (None if it cannot tell).
    fn leader(&self) -> Option<usize> {
        let ctl = find("etcdctl")?;
        let out = Command::new(ctl)
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.client_urls.join(","),
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?.iter().position(|s| {
            s["Status"]["leader"].as_u64().is_some()
                && s["Status"]["leader"] == s["Status"]["header"]["member_id"]
        })
    }
}

struct Ctl {
    proc: Proc,
    url: String,
    log: PathBuf,
}

fn start_controller(dir: &Path, i: usize, store: &str) -> Ctl {
    let addr_file = dir.join(format!("ctl{i}.addr"));
    let log = dir.join(format!("ctl{i}.log"));
    let child = serve_command("127.0.0.1:0", &dir.join(format!("ctl{i}")), &addr_file)
        .args(["--store", store])
        .args([
            "--lease-ttl-ms",
            &LEASE_MS.to_string(),
            "--heartbeat-ms",
            &HB_MS.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("spawn controller");
    let addr = wait_file(&addr_file, Duration::from_secs(30));
    Ctl {
        proc: Proc(Some(child)),
        url: format!("http://{addr}"),
        log,
    }
}

fn is_leader(c: &Ctl) -> bool {
    let log = std::fs::read_to_string(&c.log).unwrap_or_default();
    let gained = log.matches("is now the leader").count();
    let lost = log.matches("lost its election lease").count();
    gained > lost
}

enum Outcome {
    Answer(u16, Value),
    /// Could not connect: nothing was sent.
    Refused,
    /// Sent, no answer: the outcome is unknown.
    Unknown,
}

fn request(
    agent: &ureq::Agent,
    base: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Outcome {
    let url = format!("{base}{path}");
    let auth = format!("Bearer {ADMIN}");
    let r = match (method, body) {
        ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
        ("DELETE", _) => agent.delete(&url).header("authorization", &auth).call(),
        (_, b) => agent
            .post(&url)
            .header("authorization", &auth)
            .send_json(b.cloned().unwrap_or(json!({}))),
    };
    match r {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            Outcome::Answer(status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(ureq::Error::ConnectionFailed) => Outcome::Refused,
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Outcome::Refused
        }
        Err(_) => Outcome::Unknown,
    }
}

/// Send to the first controller that accepts the connection (a refused one got nothing).
fn call(
    agent: &ureq::Agent,
    urls: &[String],
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Outcome {
    for u in urls {
        match request(agent, u, method, path, body) {
            Outcome::Refused => continue,
            o => return o,
        }
    }
    Outcome::Refused
}

#[derive(Default)]
struct Record {
    acked: Vec<(String, String)>,
    released: BTreeSet<String>,
    /// Releases sent whose answer was cut off: they may or may not have happened.
    release_unknown: BTreeSet<String>,
    /// Completion times of acknowledged allocations.
    ack_times: Vec<Instant>,
    unknown: usize,
    no_capacity: usize,
    errors: Vec<String>,
}

fn active(agent: &ureq::Agent, url: &str) -> Option<Vec<Value>> {
    match request(agent, url, "GET", "/v1/allocations", None) {
        Outcome::Answer(200, Value::Array(v)) => Some(v),
        _ => None,
    }
}

fn max_gap(times: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut prev = from;
    let mut gap = Duration::ZERO;
    for &t in times.iter().filter(|t| **t > from && **t <= to) {
        gap = gap.max(t - prev);
        prev = t;
    }
    gap.max(to.saturating_duration_since(prev).min(to - from))
}

/// On failure, keep the logs (etcd members, controllers, agents) for the reader.
struct KeepOnPanic(PathBuf);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let keep = self.0.with_extension("failed");
            let _ = std::fs::remove_dir_all(&keep);
            let _ = std::fs::create_dir_all(&keep);
            if let Ok(rd) = std::fs::read_dir(&self.0) {
                for e in rd
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                {
                    let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
                }
            }
            eprintln!("logs kept in {}", keep.display());
        }
    }
}

#[test]
fn replicas_on_etcd_survive_leader_and_member_loss() {
    let Some(etcd_bin) = find("etcd") else {
        eprintln!(
            "SKIPPED replicas_on_etcd_survive_leader_and_member_loss: no `etcd` on PATH \
             (apt-get install etcd-server etcd-client; scripts/test.sh does)"
        );
        return;
    };
    let t_test = Instant::now();
    let d = TempDir::new("ha");
    let _keep = KeepOnPanic(d.0.clone());
    let etcd = Etcd::start(&etcd_bin, &d.0);
    let mut etcd = etcd;
    let stage = |s: &str| eprintln!("[{:6.2} s] {s}", t_test.elapsed().as_secs_f64());
    let store = format!("etcd://{}/ha-test", etcd.client_urls.join(","));
    let mut ctls: Vec<Ctl> = (0..3).map(|i| start_controller(&d.0, i, &store)).collect();
    let urls: Vec<String> = ctls.iter().map(|c| c.url.clone()).collect();
    let rotated = |k: usize| -> Vec<String> { (0..3).map(|j| urls[(j + k) % 3].clone()).collect() };
    let http = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .new_agent();
    stage("etcd and controllers started; waiting for a leader");
    wait_until(Duration::from_secs(30), || {
        ctls.iter().filter(|c| is_leader(c)).count() == 1
    });
    stage("leader elected; starting agents");
    // Agents talk to different replicas first, so heartbeats reach followers too.
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| Agent::start(&d.0, &rotated(i).join(","), &format!("h{i}"), 1, &[], 0))
        .collect();
    for c in &ctls {
        wait_until(Duration::from_secs(20), || {
            matches!(request(&http, &c.url, "GET", "/v1/hosts", None),
                Outcome::Answer(200, Value::Array(v)) if v.iter().filter(|h| h["alive"] == json!(true)).count() == 3)
        });
    }

    stage("agents registered on every replica; starting clients");
    // Six clients, two per replica first, competing for 12 quarter slices (3 hosts x 1 GPU x 4).
    let stop = Arc::new(AtomicBool::new(false));
    let rec = Arc::new(Mutex::new(Record::default()));
    let mut clients = Vec::new();
    for t in 0..6usize {
        let (stop, rec, urls, http) = (stop.clone(), rec.clone(), rotated(t % 3), http.clone());
        clients.push(std::thread::spawn(move || {
            let mut mine: Vec<String> = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let vm = format!("c{t}-vm{n}");
                let body = json!({"vm": vm, "host": format!("h{}", n % 3),
                    "slice": {"profile": "1/4"}, "policy": {"allow_remote": true}});
                match call(&http, &urls, "POST", "/v1/allocations", Some(&body)) {
                    Outcome::Answer(201, a) => {
                        let id = a["id"].as_str().unwrap().to_string();
                        let mut r = rec.lock().unwrap();
                        r.acked.push((id.clone(), vm));
                        r.ack_times.push(Instant::now());
                        mine.push(id);
                    }
                    Outcome::Answer(409, e) if e["error"]["code"] == json!("no_capacity") => {
                        rec.lock().unwrap().no_capacity += 1;
                    }
                    Outcome::Answer(s, e) => rec
                        .lock()
                        .unwrap()
                        .errors
                        .push(format!("allocate {s}: {e}")),
                    Outcome::Unknown => rec.lock().unwrap().unknown += 1,
                    Outcome::Refused => rec
                        .lock()
                        .unwrap()
                        .errors
                        .push("allocate: no controller".into()),
                }
                if mine.len() >= 2 {
                    let id = mine.remove(0);
                    match call(
                        &http,
                        &urls,
                        "DELETE",
                        &format!("/v1/allocations/{id}"),
                        None,
                    ) {
                        Outcome::Answer(200, _) => {
                            rec.lock().unwrap().released.insert(id);
                        }
                        Outcome::Answer(s, e) => rec
                            .lock()
                            .unwrap()
                            .errors
                            .push(format!("release {id} {s}: {e}")),
                        _ => {
                            let mut r = rec.lock().unwrap();
                            r.unknown += 1;
                            r.release_unknown.insert(id);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }

    std::thread::sleep(Duration::from_secs(3));
    let leader = ctls.iter().position(is_leader).expect("a leader");
    stage(&format!("SIGKILL leader controller {leader}"));
    let t_kill = Instant::now();
    ctls[leader].proc.kill9();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    wait_until(Duration::from_secs(15), || {
        survivors.iter().any(|&i| is_leader(&ctls[i]))
    });
    let leader_failover = t_kill.elapsed();
    std::thread::sleep(Duration::from_secs(4).saturating_sub(leader_failover));

    let raft_leader = etcd.leader().unwrap_or(0);
    stage(&format!("SIGKILL etcd raft leader m{raft_leader}"));
    let t_member = Instant::now();
    etcd.members[raft_leader].kill9();
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let t_end = Instant::now();

    stage("clients stopped; comparing the surviving replicas");
    // Both surviving replicas agree, and hold what was acknowledged.
    let mut views: Vec<Vec<Value>> = Vec::new();
    wait_until(Duration::from_secs(10), || {
        views = survivors
            .iter()
            .filter_map(|&i| active(&http, &ctls[i].url))
            .collect();
        views.len() == 2 && {
            let ids = |v: &Vec<Value>| -> BTreeSet<String> {
                v.iter()
                    .map(|a| a["id"].as_str().unwrap().to_string())
                    .collect()
            };
            ids(&views[0]) == ids(&views[1])
        }
    });
    let r = rec.lock().unwrap();
    let present: BTreeMap<String, Value> = views[0]
        .iter()
        .map(|a| (a["id"].as_str().unwrap().to_string(), a.clone()))
        .collect();
    let lost: Vec<&String> = r
        .acked
        .iter()
        .map(|(id, _)| id)
        .filter(|id| {
            !r.released.contains(*id)
                && !r.release_unknown.contains(*id)
                && !present.contains_key(*id)
        })
        .collect();
    let undone: Vec<&String> = r
        .released
        .iter()
        .filter(|id| present.contains_key(*id))
        .collect();
    let mut per_vm: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_gpu: BTreeMap<&str, usize> = BTreeMap::new();
    for a in present.values() {
        *per_vm.entry(a["vm"].as_str().unwrap()).or_default() += 1;
        *per_gpu.entry(a["gpu_uuid"].as_str().unwrap()).or_default() += 1;
    }
    let doubled = per_vm.values().filter(|&&n| n > 1).count();
    let gap_ctl = max_gap(&r.ack_times, t_kill, t_member);
    let gap_etcd = max_gap(&r.ack_times, t_member, t_end);
    println!(
        "HA figures: {} allocations acknowledged, {} releases acknowledged, {} refused for capacity, \
         {} with unknown outcome (connection cut), errors {}",
        r.acked.len(),
        r.released.len(),
        r.no_capacity,
        r.unknown,
        r.errors.len()
    );
    println!(
        "HA figures: controller leader SIGKILL: new leader after {:.2} s, longest pause in acknowledged allocations {:.3} s",
        leader_failover.as_secs_f64(),
        gap_ctl.as_secs_f64()
    );
    println!(
        "HA figures: etcd raft leader (member m{raft_leader}) SIGKILL: longest pause in acknowledged allocations {:.3} s",
        gap_etcd.as_secs_f64()
    );
    println!(
        "HA figures: allocations lost {}, doubled {}, releases undone {}",
        lost.len(),
        doubled,
        undone.len()
    );
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    assert!(
        r.acked.len() >= 20,
        "too few allocations to tell: {}",
        r.acked.len()
    );
    for id in &lost {
        // What became of it (the release record says who released it and why).
        if let Some(ctl) = find("etcdctl") {
            let out = Command::new(ctl)
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &etcd.client_urls.join(",")])
                .args(["get", &format!("/ha-test/released/{id}")])
                .output();
            if let Ok(o) = out {
                eprintln!("lost {id}: {}", String::from_utf8_lossy(&o.stdout));
            }
        }
    }
    assert!(lost.is_empty(), "acknowledged allocations lost: {lost:?}");
    assert!(
        undone.is_empty(),
        "acknowledged releases undone: {undone:?}"
    );
    assert_eq!(doubled, 0, "VMs with two allocations: {per_vm:?}");
    for (g, n) in &per_gpu {
        assert!(*n <= 4, "GPU {g} holds {n} quarter slices");
    }
    assert!(
        gap_ctl < RESUME_LIMIT,
        "allocation paused {gap_ctl:?} after the controller kill"
    );
    assert!(
        gap_etcd < RESUME_LIMIT,
        "allocation paused {gap_etcd:?} after the etcd member kill"
    );

    // The old leader's death keeps nothing for ever: a host that dies now is reclaimed by the
    // new leader within a lease (plus its check interval).
    let dead = &present
        .values()
        .find(|a| a["vm_host"] == json!("h2"))
        .map(|a| a["id"].as_str().unwrap().to_string());
    stage("SIGKILL agent h2");
    agents[2].kill9();
    let t_dead = Instant::now();

    wait_until(Duration::from_millis(LEASE_MS * 3), || {
        survivors.iter().all(|&i| {
            active(&http, &ctls[i].url)
                .is_some_and(|v| v.iter().all(|a| a["vm_host"] != json!("h2")))
        })
    });
    println!(
        "HA figures: host h2 killed, its slices ({}) reclaimed by the new leader after {:.2} s",
        if dead.is_some() { "some" } else { "none held" },
        t_dead.elapsed().as_secs_f64()
    );
    drop(agents);
    println!("HA test took {:.1} s", t_test.elapsed().as_secs_f64());
}

fn run_ok(args: &[&str]) {
    output_ok(Command::new(BIN).args(args));
}

fn doc(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// SQLite -> export -> etcd -> export -> SQLite -> export: the same document each time, and a
/// controller on the etcd copy serves the same pool (project token included).
#[test]
fn export_import_through_etcd() {
    let Some(etcd_bin) = find("etcd") else {
        eprintln!(
            "SKIPPED export_import_through_etcd: no `etcd` on PATH (apt-get install etcd-server)"
        );
        return;
    };
    let d = TempDir::new("xfer");
    let (c, p) = (free_port(), free_port());
    let mut member = Proc(Some(
        etcd_member(
            &etcd_bin,
            "x",
            &d.0,
            (c, p),
            &format!("x=http://127.0.0.1:{p}"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(d.0.join("etcd.log")).unwrap(),
        ))
        .spawn()
        .expect("spawn etcd"),
    ));
    let mut ctl = Controller::start(&d.0, 60_000, 200);
    let agent = Agent::start(&d.0, &ctl.url, "h1", 2, &["rack=r1"], 0);
    ctl.wait_hosts(1);
    let token = ctl.create_project("team-a", json!({"max_allocations": 4}));
    for vm in ["vm1", "vm2"] {
        let (s, a) = ctl.allocate_as(
            &token,
            json!({"vm": vm, "host": "h1", "slice": {"profile": "1/2"}}).to_string(),
        );
        assert_eq!(s, 201, "{a}");
    }
    assert_eq!(ctl.admin("POST", "/v1/hosts/h1/drain", None).0, 200);
    ctl.kill9();
    drop(agent);

    let sqlite = ctl.state.display().to_string();
    let etcd = format!("etcd://127.0.0.1:{c}/xfer");
    let (a, b, cc) = (d.0.join("a.json"), d.0.join("b.json"), d.0.join("c.json"));
    let back = d.0.join("back");
    run_ok(&[
        "export",
        "--store",
        "sqlite",
        "--state-dir",
        &sqlite,
        "-o",
        a.to_str().unwrap(),
    ]);
    run_ok(&["import", "--store", &etcd, a.to_str().unwrap()]);
    run_ok(&["export", "--store", &etcd, "-o", b.to_str().unwrap()]);
    run_ok(&[
        "import",
        "--store",
        "sqlite",
        "--state-dir",
        back.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    run_ok(&[
        "export",
        "--store",
        "sqlite",
        "--state-dir",
        back.to_str().unwrap(),
        "-o",
        cc.to_str().unwrap(),
    ]);
    let (da, db, dc) = (doc(&a), doc(&b), doc(&cc));
    assert_eq!(da["allocations"].as_array().unwrap().len(), 2);
    assert_eq!(da["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(
        da["host_credentials"].as_array().unwrap().len(),
        1,
        "the enrolled host's credential travels"
    );
    assert_eq!(da, db, "etcd copy differs");
    assert_eq!(da, dc, "SQLite copy differs");
    // A second import into the same prefix is refused.
    let out = Command::new(BIN)
        .args(["import", "--store", &etcd, a.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "import into a non-empty store must fail"
    );

    // A controller on the etcd copy: same allocations, the project's token still works.
    let dir2 = d.0.join("on-etcd");
    std::fs::create_dir_all(&dir2).unwrap();
    let on_etcd = start_controller(&dir2, 0, &etcd);
    let (s, list) = http(&on_etcd.url, "GET", "/v1/allocations", Some(&token), None);
    assert_eq!(s, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (_, h) = http(&on_etcd.url, "GET", "/v1/hosts/h1", Some(ADMIN), None);
    assert_eq!(h["schedulable"], json!(false), "drain travels: {h}");
    drop(on_etcd);
    member.kill9();
}

/// The agent and `vgpuctl` skip a controller URL that refuses connections (no etcd needed).
#[test]
fn clients_skip_an_unreachable_controller() {
    let d = TempDir::new("failover");
    let c = Controller::start(&d.0, 5_000, 200);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let list = format!("{dead},{}", c.url);
    let _agent = Agent::start(&d.0, &list, "h1", 1, &[], 0);
    c.wait_hosts(1);
    let vgpuctl = env!("CARGO_BIN_EXE_vgpuctl");
    let out = Command::new(vgpuctl)
        .args(["--url", &list, "--token", ADMIN, "--json"])
        .args([
            "allocate",
            "--vm",
            "vm1",
            "--host",
            "h1",
            "--profile",
            "1/2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(a["gpu_host"], json!("h1"));
    let out = Command::new(vgpuctl)
        .args(["--url", &dead, "--token", ADMIN, "hosts"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the dead URL alone must fail");
}

//! Scheduler benchmark at scale (not a test): 10,000 simulated hosts x 8 GPUs.
//!
//! Run: `cargo bench -p vgpu-controller --bench scheduler` (release profile).
//! Measures, in-process (no HTTP):
//!   - `Pool::allocate` end to end: lock, quota, placement decision, SQLite insert (WAL), index update;
//!   - the placement decision alone (`scheduler::Index::place`) in three situations: local fit,
//!     remote fallback within the rack, and the worst case (the whole pool scanned);
//!   - process RSS after loading the inventory and after the allocations.
//!
//! On etcd instead of SQLite: `VGPU_BENCH_STORE=etcd://127.0.0.1:2379/bench` (an empty prefix);
//! `VGPU_BENCH_ALLOCS=N` changes the number of end-to-end allocations (default 50,000).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vgpu_controller::auth::Role;
use vgpu_controller::model::{AllocationRequest, Policy, SliceSpec, Strategy};
use vgpu_controller::pool::{Pool, PoolConfig};
use vgpu_controller::scheduler::{Decision, GpuSpec, Index, PlaceRequest, Want};
use vgpu_pool_wire::{GpuInfo, RegisterRequest};

const HOSTS: usize = 10_000;
const GPUS: u32 = 8;
const ALLOCS_DEFAULT: usize = 50_000;

/// Times one placement of a 4-SM, 1 GiB custom slice asked from `vm_host`, remote allowed.
fn place_custom(
    ix: &Index,
    vm_host: &str,
    strategy: Strategy,
    topology: &[String],
) -> (Duration, Decision) {
    let req = PlaceRequest {
        vm_host,
        want: Want::Custom {
            sm: 4,
            mem: 1 << 30,
        },
        allow_remote: true,
        strategy,
        numa: None,
        topology,
        only_gpu: None,
    };
    let s = Instant::now();
    let d = ix.place(&req).unwrap();
    (s.elapsed(), d)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| k / 1024.0)
        .unwrap_or(0.0)
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

/// Prints `  <label>p50 .. us, p99 .. us<note>` for the durations `v`.
fn print_pct(label: &str, v: &mut [Duration], note: &str) {
    println!(
        "  {label}p50 {:.1} us, p99 {:.1} us{note}",
        pct(v, 0.5),
        pct(v, 0.99)
    );
}

fn host(i: usize) -> String {
    format!("host{i:05}")
}

fn main() {
    let dir = std::env::temp_dir().join(format!("vgpu-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rss0 = rss_mib();
    let spec = std::env::var("VGPU_BENCH_STORE").unwrap_or_else(|_| "sqlite".into());
    let store_name = if spec == "sqlite" { "SQLite" } else { "etcd" };
    #[allow(non_snake_case)]
    let ALLOCS: usize = std::env::var("VGPU_BENCH_ALLOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ALLOCS_DEFAULT);
    let store = vgpu_controller::server::open_store(&spec, &dir.join("pool.db")).unwrap();
    let pool = std::sync::Arc::new(
        Pool::open(
            store,
            PoolConfig {
                lease_ttl: Duration::from_secs(3600),
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let t = Instant::now();
    for i in 0..HOSTS {
        let name = host(i);
        let gpus = (0..GPUS)
            .map(|g| GpuInfo {
                uuid: format!("SIM-GPU-{name}-{g}"),
                index: g,
                model: "SIM H200".into(),
                pci_bus_id: format!("SIM:{g:02x}:00.0"),
                numa_node: Some((g / 4) as i32),
                sm_count: 132,
                memory_bytes: 141 << 30,
                sim: true,
            })
            .collect();
        let labels: BTreeMap<String, String> = [
            ("rack".to_string(), format!("r{}", i / 40)),
            ("zone".to_string(), format!("z{}", i / 1000)),
        ]
        .into();
        pool.register(RegisterRequest {
            name,
            address: "127.0.0.1".into(),
            serve_port: 7470,
            socket_dir: "/run/vgpu".into(),
            labels,
            gpus,
            agent_version: String::new(),
            gpu_source: "sim".into(),
        })
        .unwrap();
    }
    let reg = t.elapsed();
    let rss_inv = rss_mib();

    // End-to-end allocations: random VM host, random slice, both strategies, remote allowed.
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut lat = Vec::with_capacity(ALLOCS);
    let mut ids = Vec::with_capacity(ALLOCS);
    let mut remote = 0usize;
    let t = Instant::now();
    for i in 0..ALLOCS {
        // Hot spot: a quarter of the requests come from the first 200 hosts, so they fill up and
        // fall back to remote GPUs in the same rack or zone.
        let h = if i % 4 == 0 {
            rng.below(200)
        } else {
            rng.below(HOSTS as u64)
        } as usize;
        let slice = match rng.below(5) {
            0 => SliceSpec {
                profile: Some("1/8".into()),
                sm_count: None,
                memory_bytes: None,
            },
            1 => SliceSpec {
                profile: Some("1/4".into()),
                sm_count: None,
                memory_bytes: None,
            },
            2 => SliceSpec {
                profile: Some("1/2".into()),
                sm_count: None,
                memory_bytes: None,
            },
            _ => SliceSpec {
                profile: None,
                sm_count: Some(8 + rng.below(60) as u32),
                memory_bytes: Some((1 + rng.below(40)) << 30),
            },
        };
        let req = AllocationRequest {
            vm: format!("vm{i}"),
            host: host(h),
            project: None,
            slice,
            policy: Policy {
                allow_remote: true,
                strategy: if i % 2 == 0 {
                    Strategy::Binpack
                } else {
                    Strategy::Spread
                },
                ..Default::default()
            },
        };
        let s = Instant::now();
        let r = pool.allocate(&Role::Admin, req);
        lat.push(s.elapsed());
        if let Ok(a) = r {
            remote += usize::from(a.remote);
            ids.push(a.id);
        }
    }
    let wall = t.elapsed();
    let rss_alloc = rss_mib();
    let ok = ids.len();

    // Churn: release one, allocate one.
    let churn_rounds = ALLOCS / 5;
    let mut churn = Vec::with_capacity(churn_rounds);
    let t2 = Instant::now();
    for i in 0..churn_rounds {
        let id = ids.swap_remove(rng.below(ids.len() as u64) as usize);
        pool.release(&Role::Admin, &id).unwrap();
        let req = AllocationRequest {
            vm: format!("churn{i}"),
            host: host(rng.below(HOSTS as u64) as usize),
            project: None,
            slice: SliceSpec {
                profile: Some("1/4".into()),
                sm_count: None,
                memory_bytes: None,
            },
            policy: Policy {
                allow_remote: true,
                ..Default::default()
            },
        };
        let s = Instant::now();
        if let Ok(a) = pool.allocate(&Role::Admin, req) {
            ids.push(a.id);
        }
        churn.push(s.elapsed());
    }
    let churn_wall = t2.elapsed();

    // Decision alone on a fresh index of the same size.
    let mut ix = Index::default();
    for i in 0..HOSTS {
        let labels: BTreeMap<String, String> = [
            ("rack".to_string(), format!("r{}", i / 40)),
            ("zone".to_string(), format!("z{}", i / 1000)),
        ]
        .into();
        let gs: Vec<_> = (0..GPUS)
            .map(|g| GpuSpec {
                uuid: format!("{i}-{g}"),
                numa: Some((g / 4) as i32),
                sm: 132,
                mem: 141 << 30,
                mode: Default::default(),
                ratio: 1.0,
                healthy: true,
            })
            .collect();
        ix.upsert_host(&host(i), &labels, true, &gs);
    }
    let topo = vec!["rack".to_string(), "zone".to_string()];
    let mut local = Vec::new();
    for i in 0..20_000 {
        let h = host(rng.below(HOSTS as u64) as usize);
        let req = PlaceRequest {
            vm_host: &h,
            want: Want::Profile(8),
            allow_remote: true,
            strategy: if i % 2 == 0 {
                Strategy::Binpack
            } else {
                Strategy::Spread
            },
            numa: Some(0),
            topology: &topo,
            only_gpu: None,
        };
        let s = Instant::now();
        let d = ix.place(&req).unwrap();
        local.push(s.elapsed());
        ix.apply(
            d.gpu,
            vgpu_controller::scheduler::Shape::Profile(8),
            d.sm,
            d.mem,
        );
    }
    // Fill host00000..host00019 completely, then ask from them: remote within the rack.
    for i in 0..20 {
        for &g in &ix.hosts[i].gpus.clone() {
            let slot = &ix.gpus[g as usize];
            let (sm, mem) = (slot.sm_cap - slot.sm_used, slot.mem_total - slot.mem_used);
            ix.apply(g, vgpu_controller::scheduler::Shape::Custom, sm as u32, mem);
        }
    }
    let mut rack = Vec::new();
    for i in 0..2_000 {
        let (took, d) = place_custom(&ix, &host(i % 20), Strategy::Binpack, &topo);
        rack.push(took);
        assert!(d.remote);
    }
    // Worst case: no topology preference, so the whole pool (80,000 GPUs) is scanned.
    let mut global = Vec::new();
    for i in 0..500 {
        global.push(place_custom(&ix, &host(i % 20), Strategy::Spread, &[]).0);
    }

    println!(
        "scheduler benchmark: {HOSTS} hosts x {GPUS} GPUs = {} GPUs (simulated H200: 132 SMs, 141 GiB)",
        HOSTS * GPUS as usize
    );
    println!(
        "inventory load (register {HOSTS} hosts through Pool::register, {store_name}): {:.2} s",
        reg.as_secs_f64()
    );
    println!(
        "allocate end to end (lock + quota + decision + {store_name} insert + index), {ALLOCS} requests, {ok} placed ({remote} remote):"
    );
    println!(
        "  throughput {:.0} allocations/s",
        ALLOCS as f64 / wall.as_secs_f64()
    );
    println!(
        "  latency p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );
    println!(
        "churn (release + allocate 1/4), {churn_rounds} rounds: {:.0} rounds/s; allocate p50 {:.1} us, p99 {:.1} us",
        churn_rounds as f64 / churn_wall.as_secs_f64(),
        pct(&mut churn, 0.5),
        pct(&mut churn, 0.99)
    );
    println!("decision only (Index::place):");
    print_pct("local fit           ", &mut local, "");
    print_pct("remote, same rack   ", &mut rack, "");
    print_pct(
        "remote, whole pool  ",
        &mut global,
        " (worst case: 80,000 GPUs scanned)",
    );
    println!(
        "RSS: start {rss0:.1} MiB, after inventory {rss_inv:.1} MiB, after {ok} allocations {rss_alloc:.1} MiB (pool + second index for the decision runs: {:.1} MiB)",
        rss_mib()
    );
    // Through the REST API on loopback: axum server and ureq clients share the same 2 cores.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let st = vgpu_controller::api::AppState {
        pool: pool.clone(),
        auth: std::sync::Arc::new(vgpu_controller::auth::Auth::new(
            &["bench-token".to_string()],
            &[],
            None,
        )),
        legacy_metrics: false,
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(vgpu_controller::api::serve(
        listener,
        vgpu_controller::api::router(st),
        None,
        vgpu_controller::limits::ConnLimits::default(),
        std::future::pending(),
    ));
    const HTTP_REQS: usize = 4_000;
    const CLIENTS: usize = 4;
    let t3 = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let agent = vgpu_pool_wire::http_client(None, Duration::from_secs(30)).unwrap();
                let mut rng = Rng(0x1234 + c as u64 * 7919);
                let mut lat = Vec::new();
                let mut ok = 0usize;
                for i in 0..HTTP_REQS / CLIENTS {
                    let body = serde_json::json!({
                        "vm": format!("http{c}-{i}"),
                        "host": host(rng.below(HOSTS as u64) as usize),
                        "slice": {"profile": "1/8"},
                        "policy": {"allow_remote": true}
                    });
                    let s = Instant::now();
                    let mut r = agent
                        .post(&format!("http://{addr}/v1/allocations"))
                        .header("authorization", "Bearer bench-token")
                        .send_json(&body)
                        .unwrap();
                    let _ = r.body_mut().read_to_string();
                    lat.push(s.elapsed());
                    ok += usize::from(r.status().as_u16() == 201);
                }
                (lat, ok)
            })
        })
        .collect();
    let mut hlat = Vec::new();
    let mut hok = 0;
    for h in handles {
        let (l, o) = h.join().unwrap();
        hlat.extend(l);
        hok += o;
    }
    let hwall = t3.elapsed();
    println!(
        "REST API on loopback, {CLIENTS} client threads, {HTTP_REQS} POST /v1/allocations (1/8), {hok} placed: {:.0} allocations/s; latency p50 {:.1} us, p99 {:.1} us",
        HTTP_REQS as f64 / hwall.as_secs_f64(),
        pct(&mut hlat, 0.5),
        pct(&mut hlat, 0.99)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

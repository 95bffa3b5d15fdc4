//! Hostile peers on the GPU host's remote-slice port, on the simulator (issue 16): sessions
//! that declare a gibibyte and go silent, silent and idle connections, too many connections, a
//! byte altered in transit, and one process per slice.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use vgpu_remote::{FrameError, Secret, SessionParams, client::Channel, tls::Transport};
use vgpu_tests::{Daemon, compile_c, e2e_command, output_ok, scratch};

fn session(port: u16, secret: Option<&Secret>) -> Result<Channel, FrameError> {
    vgpu_remote::client::connect(
        &format!("127.0.0.1:{port}"),
        &SessionParams::default(),
        secret,
        Duration::from_secs(20),
    )
}

/// Processes whose parent is `pid` (from /proc/*/stat), zombies left out.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so read after its last ')'.
        let mut rest = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace();
        let state = rest.next();
        let ppid = rest.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) && state != Some("Z") {
            out.push(child);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

/// Resident memory of a process, in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of the GPU host: the listener and its session processes, in KiB.
fn host_rss_kib(listener: u32) -> (u64, usize) {
    let children = children_of(listener);
    let sum = rss_kib(listener) + children.iter().map(|&c| rss_kib(c)).sum::<u64>();
    (sum, children.len())
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A request header: message length, data-in length, room for data out.
fn request(msg_len: u32, data_in: u64, data_out: u64) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(b"VGTQ");
    v.extend_from_slice(&msg_len.to_le_bytes());
    v.extend_from_slice(&data_in.to_le_bytes());
    v.extend_from_slice(&data_out.to_le_bytes());
    v
}

/// What a session process may hold beyond the first: its program, a TLS session, a simulated
/// GPU, and one piece of bulk data.
const PER_SESSION_KIB: u64 = 24 << 10;

#[test]
fn a_hundred_sessions_that_declare_a_gibibyte_and_go_silent_cost_little_and_are_closed() {
    let dir = scratch("hostile-gib");
    let (host, port) = Daemon::start_remote_host(
        &dir,
        &[
            "--remote-progress-timeout",
            "20s",
            "--max-remote-sessions",
            "128",
        ],
    );
    let listener = host.child.id();
    let mut held = Vec::new();
    let mut first = None;
    for i in 0..100u64 {
        let mut s = session(port, None).expect("a session");
        // 40 bytes: a header declaring a gibibyte of data-in, a 16-byte message; then silence.
        let mut frame = request(16, 1 << 30, 0);
        frame.extend_from_slice(&[0u8; 16]);
        s.write_all(&frame).expect("send");
        s.flush().expect("send");
        held.push(s);
        let (rss, n) = host_rss_kib(listener);
        let base = *first.get_or_insert(rss);
        // Checked at every step: without the bound, a gibibyte per session would take the
        // machine down long before the hundredth.
        assert!(
            rss <= base + (i + 1) * PER_SESSION_KIB,
            "the GPU host holds {rss} KiB with {n} session processes ({} connections)",
            i + 1
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let (rss, n) = host_rss_kib(listener);
    eprintln!(
        "GPU host with 100 silent 1 GiB requests: {n} session processes, {} MiB resident",
        rss >> 10
    );
    assert_eq!(n, 100, "{}", host.log_text());
    assert!(
        rss <= first.unwrap_or(0) + 100 * PER_SESSION_KIB,
        "the GPU host holds {rss} KiB"
    );
    // The progress timeout closes every one of them, and their processes end.
    wait_until(
        "the session processes to end",
        Duration::from_secs(40),
        || children_of(listener).is_empty(),
    );
    for s in &mut held {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "a silent request got an answer");
    }
    let log = host.log_text();
    assert_eq!(
        log.matches("progress timeout: the request did not arrive in full within 20s")
            .count(),
        100,
        "{log}"
    );
}

#[test]
fn silent_and_idle_connections_are_closed_by_their_timeouts() {
    let dir = scratch("hostile-idle");
    let (host, port) = Daemon::start_remote_host(
        &dir,
        &[
            "--remote-idle-timeout",
            "1s",
            "--remote-handshake-timeout",
            "1s",
        ],
    );
    let start = Instant::now();
    // TCP only, no TLS hello: the handshake timeout.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    // A session that never sends a request (and, unlike a VM host, no keepalives).
    let mut idle = session(port, None).expect("a session");
    assert!(
        idle.idle_timeout == Duration::from_secs(1),
        "the server announces its idle timeout"
    );
    // Bounded waits on this side: a server that never closes fails the test, not hangs it.
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    idle.set_deadline(Some(Instant::now() + Duration::from_secs(10)));
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    let _ = idle.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "closed after {:?}",
        start.elapsed()
    );
    let log = host.wait_for_log("idle timeout", Duration::from_secs(10));
    assert!(
        log.contains("idle timeout: no request came within 1s"),
        "{log}"
    );
    assert!(
        log.contains("handshake timeout: TLS did not complete within 1s"),
        "{log}"
    );
}

#[test]
fn over_the_session_cap_a_connection_is_refused_at_once() {
    let dir = scratch("hostile-cap");
    let (host, port) = Daemon::start_remote_host(&dir, &["--max-remote-sessions", "2"]);
    let a = session(port, None).expect("first session");
    let _b = session(port, None).expect("second session");
    let start = Instant::now();
    match session(port, None) {
        Err(FrameError::Refused(why)) => {
            assert!(why.contains("maximum of 2 remote slices"), "{why}");
        }
        Err(e) => panic!("refused unclearly: {e}"),
        Ok(_) => panic!("a third session over a cap of 2"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    host.wait_for_log("the most this host serves", Duration::from_secs(10));
    // A session that ends makes room (its process is reaped).
    drop(a);
    let listener = host.child.id();
    wait_until("the first session to end", Duration::from_secs(10), || {
        children_of(listener).len() == 1
    });
    // The listener counts a session out when it reaps the process, which can come a moment
    // after the process is gone from its children: a refusal in that moment is no failure.
    wait_until(
        "a session once there is room",
        Duration::from_secs(10),
        || match session(port, None) {
            Ok(_) => true,
            Err(FrameError::Refused(_)) => false,
            Err(e) => panic!("a session once there is room: {e}"),
        },
    );
}

#[test]
fn each_session_is_a_process_of_its_own_that_dies_with_the_listener() {
    let dir = scratch("hostile-procs");
    let (mut host, port) = Daemon::start_remote_host(&dir, &[]);
    let listener = host.child.id();
    let _a = session(port, None).expect("a session");
    let _b = session(port, None).expect("another session");
    let log = host.wait_for_log("remote session 2 from", Duration::from_secs(10));
    let pids: Vec<u32> = log
        .lines()
        .filter(|l| l.contains("remote session ") && l.contains(": process "))
        .filter_map(|l| l.rsplit(": process ").next()?.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "{log}");
    assert_ne!(pids[0], pids[1], "two sessions in one process");
    let mut children = children_of(listener);
    children.sort_unstable();
    let mut expected = pids.clone();
    expected.sort_unstable();
    assert_eq!(
        children, expected,
        "the sessions are the listener's children"
    );
    assert!(!pids.contains(&listener));
    // The session processes do not outlive the listener.
    host.child.kill().expect("kill the listener");
    let _ = host.child.wait();
    wait_until(
        "the session processes to die with the listener",
        Duration::from_secs(10),
        || pids.iter().all(|&p| !alive(p)),
    );
}

/// Relays TCP to `upstream`, altering one byte (the last of the record, part of its
/// authentication tag) of the `nth` encrypted TLS record from client to server.
fn tampering_relay(upstream: u16, nth: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let Ok(u) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (Ok(mut c2), Ok(mut u2)) = (c.try_clone(), u.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut c2);
                let _ = c2.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || flip_one(c, u, nth));
        }
    });
    port
}

fn flip_one(mut from: TcpStream, mut to: TcpStream, nth: usize) {
    let (mut buf, mut chunk, mut encrypted) = (Vec::new(), vec![0u8; 1 << 16], 0);
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        // Whole records only: type, version, 16-bit length, payload.
        let mut off = 0;
        while buf.len() - off >= 5 {
            let len = usize::from(u16::from_be_bytes([buf[off + 3], buf[off + 4]]));
            if buf.len() - off < 5 + len {
                break;
            }
            if buf[off] == 0x17 {
                encrypted += 1;
                if encrypted == nth {
                    buf[off + 4 + len] ^= 0x01;
                }
            }
            off += 5 + len;
        }
        if to.write_all(&buf[..off]).is_err() {
            break;
        }
        buf.drain(..off);
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn a_byte_altered_in_transit_ends_the_session_with_a_clear_error_on_both_sides() {
    let dir = scratch("hostile-tamper");
    let program = compile_c("driver_api_e2e.c", &dir);
    let (host, port) = Daemon::start_remote_host(&dir, &[]);
    // Client to server, encrypted records: 1 is TLS's Finished, 2 the session header, 3 on the
    // requests (those of cuInit first). The twelfth is altered.
    let relay = tampering_relay(port, 12);
    let local = Daemon::start_sim(&dir, &["--remote", &format!("127.0.0.1:{relay}")]);
    let out = e2e_command(&program, &local.socket)
        .output()
        .expect("run the program");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran through a tampering relay");
    // CUDA_ERROR_DEVICE_UNAVAILABLE, as for a dead GPU host.
    assert!(stderr.contains("-> 46"), "{stderr}");
    let host_log = host.wait_for_log("altered in transit", Duration::from_secs(10));
    assert!(
        host_log.contains("data was altered in transit: a TLS record failed its integrity check"),
        "{host_log}"
    );
    let log = local.wait_for_log("the vGPU is unavailable", Duration::from_secs(10));
    assert!(
        log.contains("the peer found data altered in transit"),
        "{log}"
    );
    // An honest path still works.
    let local2dir = dir.join("honest");
    std::fs::create_dir_all(&local2dir).expect("dir");
    let honest = Daemon::start_sim(&local2dir, &["--remote", &format!("127.0.0.1:{port}")]);
    output_ok(&mut e2e_command(&program, &honest.socket));
}

#[test]
fn a_vm_host_with_the_secret_refuses_a_gpu_host_that_cannot_prove_it() {
    let dir = scratch("hostile-mutual");
    let token = dir.join("pool.token");
    std::fs::write(&token, "pool-secret").expect("token");
    // A GPU host without the pool's secret (an impostor that accepts anyone).
    let (host, port) = Daemon::start_remote_host(&dir, &[]);
    let secret = Secret::new("pool-secret").expect("secret");
    match session(port, Some(&secret)) {
        Err(FrameError::ServerNotProven) => {}
        Err(e) => panic!("refused unclearly: {e}"),
        Ok(_) => panic!("a VM host with the secret accepted a GPU host without it"),
    }
    drop(host);
    // With the secret on both sides: served.
    let (_host, port) =
        Daemon::start_remote_host(&dir, &["--remote-token-file", &token.display().to_string()]);
    session(port, Some(&secret)).expect("a mutually authenticated session");
    match session(port, Some(&Secret::new("wrong").expect("secret"))) {
        Err(FrameError::Refused(why)) => assert!(why.contains("authentication failed"), "{why}"),
        Err(e) => panic!("refused unclearly: {e}"),
        Ok(_) => panic!("served the wrong secret"),
    }
}

/// A man in the middle that terminates TLS on both sides (it may present any certificate: the
/// VM host accepts any) and relays the session handshake between them: challenge, header,
/// answer.
fn tls_interceptor(upstream: u16) -> u16 {
    use rustls::{ClientConnection, ServerConnection, StreamOwned};
    use vgpu_remote::tls;
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let server = ServerConnection::new(tls::server_config().expect("config"))
                    .expect("TLS server");
                let mut down = StreamOwned::new(server, c);
                let up_tcp = TcpStream::connect(("127.0.0.1", upstream)).expect("upstream");
                let client = ClientConnection::new(
                    tls::client_config().expect("config"),
                    tls::server_name(),
                )
                .expect("TLS client");
                let mut up = StreamOwned::new(client, up_tcp);
                let relay = |from: &mut dyn Read, to: &mut dyn Write, n: usize| {
                    let mut b = vec![0u8; n];
                    from.read_exact(&mut b).is_ok()
                        && to.write_all(&b).is_ok()
                        && to.flush().is_ok()
                };
                let _ = relay(&mut up, &mut down, 48)
                    && relay(&mut down, &mut up, 56)
                    && relay(&mut up, &mut down, 240);
            });
        }
    });
    port
}

#[test]
fn a_man_in_the_middle_cannot_relay_the_proofs() {
    let dir = scratch("hostile-mitm");
    let token = dir.join("pool.token");
    std::fs::write(&token, "pool-secret").expect("token");
    let (host, port) =
        Daemon::start_remote_host(&dir, &["--remote-token-file", &token.display().to_string()]);
    let secret = Secret::new("pool-secret").expect("secret");
    let mitm = tls_interceptor(port);
    match session(mitm, Some(&secret)) {
        Err(FrameError::Refused(why)) => assert!(why.contains("authentication failed"), "{why}"),
        Err(e) => panic!("refused unclearly: {e}"),
        Ok(_) => panic!("a session through a man in the middle"),
    }
    host.wait_for_log("authentication failed", Duration::from_secs(10));
    // Without the interceptor the same secret is served.
    session(port, Some(&secret)).expect("a direct session");
}

#[test]
fn a_request_over_the_sessions_bytes_in_flight_is_refused_before_its_data() {
    let dir = scratch("hostile-in-flight");
    let (host, port) = Daemon::start_remote_host(&dir, &["--remote-max-in-flight", "1M"]);
    let mut s = session(port, None).expect("a session");
    // 512 KiB in, room for 1 MiB out: each within the frame limits, together over the cap.
    let mut frame = request(16, 512 << 10, 1 << 20);
    frame.extend_from_slice(&[0u8; 16]);
    s.write_all(&frame).expect("send");
    s.flush().expect("send");
    let log = host.wait_for_log("over the limit", Duration::from_secs(10));
    assert!(
        log.contains("bulk data of one request of 1572864 bytes is over the limit of 1048576"),
        "{log}"
    );
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "an over-the-cap request got an answer");
}

//! `vgpuctl` against a real controller, and the controller serving HTTPS with a given
//! certificate (made here with the `openssl` command-line tool), with the agent and `vgpuctl`
//! trusting it through `--ca-cert`.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

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

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn vgpuctl_tables_json_allocate_release_drain() {
    let d = TempDir::new("ctl");
    let c = Controller::start(&d.0, 5_000, 200);
    let _h = Agent::start(&d.0, &c.url, "h1", 1, &["rack=r1"], 7001);
    c.wait_hosts(1);
    let o = ctl(&c.url, ADMIN, &["hosts"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.starts_with("HOST") && t.contains("h1") && t.contains("alive") && t.contains("rack=r1"),
        "{t}"
    );

    let o = ctl(
        &c.url,
        ADMIN,
        &["allocate", "--vm", "v1", "--host", "h1", "--profile", "1/2"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("1/2") && t.contains("VGPU_DEVICE=vhost-user:") && t.contains(".sock"),
        "{t}"
    );

    let o = ctl(
        &c.url,
        ADMIN,
        &[
            "--json", "allocate", "--vm", "v2", "--host", "h1", "--sm", "10", "--memory", "2GiB",
        ],
    );
    assert!(
        !o.status.success(),
        "homogeneous GPU holding a 1/2 takes no arbitrary slice"
    );
    assert!(text(&o).contains("HTTP 409 no_capacity"), "{}", text(&o));

    let o = ctl(&c.url, ADMIN, &["--json", "allocations"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("--json prints JSON");
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let id = list[0]["id"].as_str().unwrap().to_string();

    let o = ctl(&c.url, "wrong-token", &["allocations"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("HTTP 401 unauthorized"), "{}", text(&o));

    let o = ctl(&c.url, ADMIN, &["release", &id]);
    assert!(
        o.status.success() && text(&o).contains(&format!("released {id}")),
        "{}",
        text(&o)
    );
    let o = ctl(&c.url, ADMIN, &["drain", "h1"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = ctl(
        &c.url,
        ADMIN,
        &["allocate", "--vm", "v3", "--host", "h1", "--profile", "1/8"],
    );
    assert!(
        !o.status.success() && text(&o).contains("no_capacity"),
        "{}",
        text(&o)
    );
    let o = ctl(&c.url, ADMIN, &["gpus"]);
    assert!(
        text(&o).contains("SIM-GPU-h1-0") && text(&o).contains("0/132"),
        "{}",
        text(&o)
    );
}

#[test]
fn https_with_given_certificate() {
    let d = TempDir::new("tls");
    // A private CA and a server certificate it signs (rustls refuses a CA certificate used
    // directly as the server's).
    let ca_pem = d.0.join("ca.pem");
    let cert = d.0.join("cert.pem");
    let key = d.0.join("key.pem");
    let ext = d.0.join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let dir = d.0.display().to_string();
    let script = format!(
        "set -e; cd {dir}; \
         openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=vgpu-test-ca -keyout ca.key -out ca.pem; \
         openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out srv.csr; \
         openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out cert.pem"
    );
    let st = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("this test needs sh and the openssl command-line tool");
    assert!(st.success(), "openssl failed");
    let addr_file = d.0.join("addr");
    let child = serve_command("127.0.0.1:0", &d.0.join("state"), &addr_file)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(["--heartbeat-ms", "200"])
        .stderr(Stdio::from(
            std::fs::File::create(d.0.join("controller.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let addr = wait_file(&addr_file, Duration::from_secs(20));
    // Owns the process (killed on drop).
    let c = Controller {
        child: Some(child),
        url: format!("https://{addr}"),
        addr: addr.clone(),
        state: d.0.join("state"),
        lease_ms: 30_000,
        hb_ms: 200,
    };
    let ca = ca_pem.display().to_string();
    let mut ok = None;
    wait_until(Duration::from_secs(10), || {
        let o = ctl(&c.url, ADMIN, &["--ca-cert", &ca, "--json", "hosts"]);
        let s = o.status.success();
        ok = Some(o);
        s
    });
    assert_eq!(String::from_utf8_lossy(&ok.unwrap().stdout).trim(), "[]");
    // Without trusting the certificate: refused. Plain HTTP to the TLS port: no answer.
    let o = ctl(&c.url, ADMIN, &["hosts"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Cannot reach"), "{}", text(&o));
    assert_eq!(
        http(&format!("http://{addr}"), "GET", "/healthz", None, None).0,
        0
    );
    // An agent trusting the certificate registers over HTTPS.
    let mut a = Agent::start(&d.0, &c.url, "h1", 1, &[], 7001);
    a.kill9();
    a.add_args(&["--ca-cert", &ca]);
    a.spawn();
    wait_until(Duration::from_secs(20), || {
        let o = ctl(&c.url, ADMIN, &["--ca-cert", &ca, "--json", "hosts"]);
        serde_json::from_slice::<Value>(&o.stdout)
            .is_ok_and(|v| v[0]["name"] == "h1" && v[0]["alive"] == true)
    });
}

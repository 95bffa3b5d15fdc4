//! Who may connect to the vhost-user socket (`--socket-mode`, `--socket-group`), set on the
//! command line or in the configuration file (`--config`), the command line winning.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon(Child, PathBuf);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vhost-gpu-socket-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start(dir: PathBuf, extra: &[&str]) -> Daemon {
    let child = Command::new(env!("CARGO_BIN_EXE_vhost-gpu"))
        .args(["--gpu", "sim", "--seccomp", "off", "--socket"])
        .arg(dir.join("vgpu.sock"))
        .args(extra)
        .env_remove("VHOST_GPU_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Daemon(child, dir)
}

/// The socket's mode bits and group, once they are `want` (they are set just after it is
/// bound), or what they are after 20 s.
fn access(socket: &Path, want: (u32, u32)) -> (u32, u32) {
    let start = Instant::now();
    loop {
        if let Ok(md) = std::fs::metadata(socket) {
            let got = (md.mode() & 0o777, md.gid());
            if got == want || start.elapsed() > Duration::from_secs(20) {
                return got;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A group this process may give: any as root (CI), else its own.
fn a_group() -> u32 {
    // SAFETY: geteuid and getegid have no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        4242
    } else {
        // SAFETY: as above.
        unsafe { libc::getegid() }
    }
}

// Mutation: `run` not applying `socket_mode`/`socket_gid` after binding fails this.
#[test]
fn the_socket_gets_the_mode_and_group_asked_for() {
    let gid = a_group();
    let d = start(
        dir("flags"),
        &["--socket-mode", "0660", "--socket-group", &gid.to_string()],
    );
    assert_eq!(access(&d.1.join("vgpu.sock"), (0o660, gid)), (0o660, gid));
}

// Mutations: the file not read (mode stays the umask's), or the file beating the command line
// (0640 in the second daemon), fail this.
#[test]
fn the_configuration_file_sets_them_and_the_command_line_wins() {
    let gid = a_group();
    let d = dir("file");
    let conf = d.join("vhost-gpu.toml");
    std::fs::write(
        &conf,
        format!("socket_mode = \"0640\"\nsocket_group = \"{gid}\"\n"),
    )
    .unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let a = start(d, &["--config", &conf]);
    assert_eq!(access(&a.1.join("vgpu.sock"), (0o640, gid)), (0o640, gid));
    let b = start(
        dir("file-cli"),
        &["--config", &conf, "--socket-mode", "0600"],
    );
    assert_eq!(access(&b.1.join("vgpu.sock"), (0o600, gid)), (0o600, gid));
}

// Mutation: exiting 1 (or starting) on a bad file, or an error without its line, fails this.
#[test]
fn a_bad_configuration_file_stops_the_daemon_with_its_line() {
    let d = dir("bad");
    let conf = d.join("vhost-gpu.toml");
    std::fs::write(
        &conf,
        "queues = 2\nsocket_group = \"no-such-group-vgpu\"\nsocket_mode = 660.5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-gpu"))
        .args(["--gpu", "sim", "--socket"])
        .arg(d.join("vgpu.sock"))
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "{}:3: key `socket_mode`: invalid value \"660.5\"",
            conf.display()
        )),
        "{err}"
    );
    assert!(!d.join("vgpu.sock").exists());
    // A group that does not exist is refused before the socket is made, also with exit 2.
    std::fs::write(&conf, "socket_group = \"no-such-group-vgpu\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-gpu"))
        .args(["--gpu", "sim", "--socket"])
        .arg(d.join("vgpu.sock"))
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no-such-group-vgpu"), "{err}");
    assert!(!d.join("vgpu.sock").exists());
    let _ = std::fs::remove_dir_all(&d);
}

//! Support for the cross-component tests: building and locating our binaries, running the
//! daemon as a child process, compiling C test programs, and a raw protocol client that can
//! send anything (including garbage) to the daemon over virtio-user.

use std::{
    io::{BufRead, BufReader, Lines, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use vgpu_virtio_user::{Options, Seg, SharedBuf, VirtioUser};

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The directory holding this build's binaries (`target/debug` or `target/release`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf()
}

/// Builds the daemon and the shim (once per test process) and returns their directory.
pub fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = bin_dir();
        let release = dir.ends_with("release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "vhost-gpu", "-p", "vgpu-libcuda"])
            .current_dir(repo());
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building vhost-gpu and libcuda failed");
        link_shim(&dir);
        dir
    })
}

/// A scratch directory unique to one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vgpu-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A `vhost-gpu` child process; killed when dropped.
/// The status file's name in the dir of `Daemon::start_sim_with_status`.
const STATUS_FILE: &str = "slice.status";

pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Runs `cmd`, a guest program on this daemon, to its end and fails the test unless it
    /// exits 0 and its stdout says `marker` (showing its output and the daemon's log).
    pub fn run_passing(&self, cmd: &mut Command, marker: &str) -> Ran {
        let r = run(cmd);
        assert!(
            r.status.success() && r.stdout.contains(marker),
            "{cmd:?} failed ({}):\n{}\n{}\n{}",
            r.status,
            r.stdout,
            r.stderr,
            self.log_text()
        );
        r
    }

    /// Runs `vhost-gpu ARGS...`, logging to `log`, with no remote secret from our environment.
    fn spawn(args: &[&str], extra: &[&str], socket: PathBuf, log: PathBuf) -> Self {
        let child = Command::new(built().join("vhost-gpu"))
            .args(args)
            .args(extra)
            .env_remove("VGPU_REMOTE_TOKEN")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start vhost-gpu");
        Self { child, socket, log }
    }

    /// Starts `vhost-gpu --gpu sim` on a socket in `dir` with extra arguments.
    pub fn start_sim(dir: &Path, extra: &[&str]) -> Self {
        let socket = dir.join("vgpu.sock");
        let socket_arg = socket.display().to_string();
        let args = ["--socket", &socket_arg, "--gpu", "sim", "--poll-us", "20"];
        let d = Self::spawn(&args, extra, socket, dir.join("daemon.log"));
        d.wait_for_log("vhost-gpu: serving", Duration::from_secs(20));
        d
    }

    /// Like `start_sim`, writing the slice's status to [`Daemon::status_file`].
    pub fn start_sim_with_status(dir: &Path, extra: &[&str]) -> Self {
        let status_arg = dir.join(STATUS_FILE).display().to_string();
        let mut args = extra.to_vec();
        args.extend(["--status-file", &status_arg]);
        Self::start_sim(dir, &args)
    }

    /// Where a daemon of `start_sim_with_status` writes the slice's status (by its socket).
    pub fn status_file(&self) -> PathBuf {
        self.socket.with_file_name(STATUS_FILE)
    }

    /// Starts `vhost-gpu --listen 127.0.0.1:0 --gpu sim`, a GPU host serving remote slices on
    /// the simulator; returns it with the port it chose.
    pub fn start_remote_host(dir: &Path, extra: &[&str]) -> (Self, u16) {
        let args = ["--listen", "127.0.0.1:0", "--gpu", "sim"];
        let d = Self::spawn(&args, extra, PathBuf::new(), dir.join("gpu-host.log"));
        let text = d.wait_for_log("serving remote slices on ", Duration::from_secs(20));
        let port = text
            .split("serving remote slices on 127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .expect("the port in the log");
        (d, port)
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the log holds `needle` (panics with the log after `timeout`).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                start.elapsed() < timeout,
                "daemon log never said {needle:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Compiles a C program of `tests/programs` against our libcuda with the system compiler.
pub fn compile_c(source: &str, out_dir: &Path) -> PathBuf {
    let dir = built();
    let out = out_dir.join(source.trim_end_matches(".c"));
    let programs = repo().join("tests/programs");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O1", "-Wall", "-o"])
        .arg(&out)
        .arg(programs.join(source))
        .arg(format!("-I{}", programs.display()))
        .arg(format!("-L{}", dir.join("shim").display()))
        .arg("-l:libcuda.so.1")
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling {source} failed");
    out
}

/// A command that runs `program` as a guest application on the daemon's socket.
pub fn guest_command(program: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("LD_LIBRARY_PATH", built().join("shim"))
        .env("VGPU_DEVICE", format!("vhost-user:{}", socket.display()));
    cmd
}

/// The driver-API end-to-end program (`driver_api_e2e.c`, or `graph_e2e.c`) on the daemon's
/// socket with the test kernels, checking launches only as the simulator can.
pub fn e2e_command(program: &Path, socket: &Path) -> Command {
    let mut cmd = guest_command(program, socket);
    cmd.arg(fixture("kernels.cubin")).arg("--no-kernel-check");
    cmd
}

/// Starts `cmd` with its standard streams piped: the child, its stdin, and its stdout's lines.
pub fn spawn_piped(cmd: &mut Command) -> (Child, ChildStdin, Lines<BufReader<ChildStdout>>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let stdin = child.stdin.take().expect("stdin");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, stdin, lines)
}

/// Runs `cmd` to its end and fails the test unless it exits 0 (showing its status and
/// stderr); returns its output.
pub fn output_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What a command that ran to its end did: its exit status and its output as text.
#[derive(Debug)]
pub struct Ran {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to its end.
pub fn run(cmd: &mut Command) -> Ran {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    Ran {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cmd` to its end: its exit status and what it wrote (stdout, then stderr).
pub fn run_text(cmd: &mut Command) -> (std::process::ExitStatus, String) {
    let r = run(cmd);
    (r.status, r.stdout + &r.stderr)
}

/// Makes `DIR/shim/libcuda.so.1` point at `DIR/libcuda.so`: the shim is loaded by its soname.
pub fn link_shim(dir: &Path) {
    let shim = dir.join("shim");
    std::fs::create_dir_all(&shim).expect("shim dir");
    let link = shim.join("libcuda.so.1");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(dir.join("libcuda.so"), &link).expect("libcuda.so.1 link");
}

/// A test fixture of `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// A raw client: sends arbitrary messages and descriptor chains to the daemon.
pub struct RawClient {
    pub vu: VirtioUser,
    pub msg: SharedBuf,
    pub reply: SharedBuf,
}

impl RawClient {
    pub fn connect(socket: &Path) -> Self {
        let mut vu = VirtioUser::connect(socket, Options::default(), Duration::from_secs(10))
            .expect("connect");
        let msg = vu.alloc(1 << 16, 4096).expect("msg buffer");
        let reply = vu.alloc(1 << 16, 4096).expect("reply buffer");
        Self { vu, msg, reply }
    }

    /// Submits `segs` and waits for the completion; returns the used length.
    pub fn submit_wait(&mut self, segs: &[Seg]) -> u32 {
        let head = self.vu.submit(segs).expect("submit");
        let mut used = None;
        while used.is_none() {
            self.vu
                .wait_for_used(Duration::from_secs(10))
                .expect("completion");
            self.vu.reap(|h, len| {
                if h == head {
                    used = Some(len);
                }
            });
        }
        used.unwrap_or_default()
    }

    /// Sends `msg` (message bytes as given) with the reply buffer attached; returns the reply.
    pub fn send(&mut self, msg: &[u8]) -> Vec<u8> {
        self.send_with(msg, &[], &[])
    }

    /// Sends `msg` followed by extra readable and writable segments.
    pub fn send_with(&mut self, msg: &[u8], data_in: &[Seg], data_out: &[Seg]) -> Vec<u8> {
        // SAFETY: the message buffer is shared memory of this client, 64 KiB long.
        unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), self.msg.hva, msg.len()) };
        // SAFETY: as above for the reply buffer.
        unsafe { std::ptr::write_bytes(self.reply.hva, 0, self.reply.len) };
        let mut segs = vec![Seg {
            gpa: self.msg.gpa,
            len: msg.len() as u32,
            writable: false,
        }];
        segs.extend_from_slice(data_in);
        segs.push(Seg {
            gpa: self.reply.gpa,
            len: self.reply.len as u32,
            writable: true,
        });
        segs.extend_from_slice(data_out);
        let used = self.submit_wait(&segs) as usize;
        // SAFETY: the chain completed; the reply buffer is ours again.
        unsafe { std::slice::from_raw_parts(self.reply.hva, used.min(self.reply.len)) }.to_vec()
    }
}

/// The `meminfo: free F total T` lines `driver_api_e2e.c` prints (at its start, and after
/// freeing everything), in order: what `cuMemGetInfo` answered, which with no slice limit is
/// the GPU's own (the simulator's) notion of free memory, not the executor's ledger.
pub fn meminfo_lines(stdout: &str) -> Vec<(u64, u64)> {
    stdout
        .lines()
        .filter(|l| l.starts_with("meminfo"))
        .filter_map(|l| {
            let num = |key: &str| -> Option<u64> {
                l.split(key).nth(1)?.split_whitespace().next()?.parse().ok()
            };
            Some((num("free ")?, num("total ")?))
        })
        .collect()
}

/// The parent of process `pid`, from `/proc/PID/stat` (`None` if it is gone).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Process `pid` and all its descendants (children, their children, ...), from `/proc`, so
/// that a daemon which serves its clients in child processes is measured (or killed) whole.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| Some((p, parent_of(p)?)))
                .collect()
        })
        .unwrap_or_default();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|&&(_, pp)| pp == parent).map(|&(p, _)| p));
        i += 1;
    }
    tree
}

/// What a process tree holds: processes, open descriptors, threads, resident memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeUsage {
    pub processes: usize,
    pub fds: usize,
    pub threads: usize,
    pub rss_kib: u64,
}

/// `VmRSS` of process `pid` in KiB (`None` if it is gone).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Descriptors, threads and RSS of `pid` and its descendants, summed.
pub fn tree_usage(pid: u32) -> TreeUsage {
    let count = |p: u32, what: &str| {
        std::fs::read_dir(format!("/proc/{p}/{what}")).map_or(0, Iterator::count)
    };
    let mut u = TreeUsage::default();
    for p in process_tree(pid) {
        let Some(rss) = rss_kib(p) else { continue };
        u.processes += 1;
        u.rss_kib += rss;
        u.fds += count(p, "fd");
        u.threads += count(p, "task");
    }
    u
}

/// Sends `signal` to `pid` and every descendant (the tree as it is now, parents first).
pub fn signal_tree(pid: u32, signal: i32) {
    for p in process_tree(pid) {
        // SAFETY: kill(2) on a pid of our own children's tree; failures (gone) are harmless.
        unsafe { libc::kill(p as libc::pid_t, signal) };
    }
}

/// Starts the driver-API program holding two 64 MiB buffers (E2E_HOLD) and returns it once it
/// says it holds them.
pub fn start_holder(program: &Path, daemon: &Daemon) -> Child {
    let mut holder = e2e_command(program, &daemon.socket)
        .env("E2E_HOLD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the holding program");
    let stdout = holder.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("HOLDING"))),
        "the program never reached its hold point:\n{}",
        daemon.log_text()
    );
    holder
}

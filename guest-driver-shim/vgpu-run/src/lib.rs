//! `vgpu-run`: points an unmodified CUDA program at our `libcuda.so.1` and at the vGPU, then
//! execs it.
//!
//! What is decided is decided by pure functions of their inputs (the options, the
//! environment, vgpu-run's own path, and a probe of the file system passed in), so it is
//! tested without a GPU, a device or a daemon. What touches the system is small: probing
//! paths, the private symlink directory ([`make_link_dir`]), and the exec in `main.rs`.

#![forbid(unsafe_code)]

use std::{
    ffi::{OsStr, OsString},
    io,
    os::unix::{
        ffi::OsStrExt,
        fs::{DirBuilderExt, FileTypeExt, MetadataExt},
    },
    path::{Path, PathBuf},
};

/// The name programs load the driver by.
pub const SONAME: &str = "libcuda.so.1";
/// The name linkers look for (`-lcuda`; Triton builds its launchers with it).
pub const UNVERSIONED: &str = "libcuda.so";
/// The guest kernel driver's first device: the shim's default.
pub const DEFAULT_DEVICE: &str = "/dev/vgpu0";
/// `VGPU_DEVICE` prefix that selects virtio-user (this process speaks to `vhost-gpu` itself).
pub const VHOST_USER_PREFIX: &str = "vhost-user:";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no command given (usage: vgpu-run [OPTIONS] -- COMMAND [ARGS]...)")]
    NoCommand,
    #[error(
        "the vGPU libcuda.so.1 was not found ({source_}); looked for {}",
        list(looked)
    )]
    LibNotFound {
        source_: LibSource,
        looked: Vec<PathBuf>,
    },
    #[error(
        "vGPU device {} does not exist (is vgpu.ko loaded? outside a VM, use --socket PATH)",
        .0.display()
    )]
    DeviceMissing(PathBuf),
    #[error(
        "{} is not a character device (a vGPU is a /dev/vgpuN node; for a vhost-gpu socket use --socket)",
        .0.display()
    )]
    NotCharDevice(PathBuf),
    #[error(
        "vhost-gpu socket {} does not exist (is `vhost-gpu --socket {}` running?)",
        .0.display(),
        .0.display()
    )]
    SocketMissing(PathBuf),
    #[error("{} is not a socket (a vGPU device node is given with --device)", .0.display())]
    NotSocket(PathBuf),
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("refusing to use {}: {why}", path.display())]
    UnsafeDir { path: PathBuf, why: &'static str },
}

fn list(paths: &[PathBuf]) -> String {
    let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.join(", ")
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// What the user asked for on the command line (paths as given).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub lib_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub device: Option<PathBuf>,
    pub trace: bool,
}

// ---------------------------------------------------------------------------------------------
// The library
// ---------------------------------------------------------------------------------------------

/// Where the library search came from (for the error message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibSource {
    Arg,
    Env,
    Exe,
}

impl std::fmt::Display for LibSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Arg => "from --lib-dir",
            Self::Env => "from VGPU_LIB_DIR",
            Self::Exe => "next to vgpu-run; use --lib-dir or VGPU_LIB_DIR to say where it is",
        })
    }
}

/// Joins a relative path onto `cwd` (the child keeps the cwd, but may change it before it
/// loads the driver, so everything handed to it is absolute).
pub fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

fn non_empty(v: Option<&OsStr>) -> Option<&OsStr> {
    v.filter(|v| !v.is_empty())
}

/// The files that may be our library, best first: `--lib-dir`, else `$VGPU_LIB_DIR` (each
/// alone: an explicit place that is wrong is an error, not a reason to look elsewhere), else
/// next to the executable (an install: `libcuda.so.1` beside it or in `../lib/vgpu/`; a cargo
/// build tree: the cdylib `libcuda.so` beside it).
pub fn lib_candidates(
    lib_dir_arg: Option<&Path>,
    env_lib_dir: Option<&OsStr>,
    exe: &Path,
    cwd: &Path,
) -> (LibSource, Vec<PathBuf>) {
    let explicit = |dir: &Path| {
        let dir = absolute(cwd, dir);
        vec![dir.join(SONAME), dir.join(UNVERSIONED)]
    };
    if let Some(dir) = lib_dir_arg {
        return (LibSource::Arg, explicit(dir));
    }
    if let Some(dir) = non_empty(env_lib_dir) {
        return (LibSource::Env, explicit(Path::new(dir)));
    }
    let exe = absolute(cwd, exe);
    let exe_dir = exe.parent().unwrap_or(Path::new("/"));
    let lib_vgpu = match exe_dir.parent() {
        Some(prefix) => prefix.join("lib/vgpu"),
        None => exe_dir.join("../lib/vgpu"),
    };
    (
        LibSource::Exe,
        vec![
            exe_dir.join(SONAME),
            lib_vgpu.join(SONAME),
            exe_dir.join(UNVERSIONED),
        ],
    )
}

/// How the child gets both names of the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibPlan {
    /// This directory has `libcuda.so.1` and `libcuda.so`: use it as it is.
    Dir(PathBuf),
    /// Make a private directory whose `libcuda.so.1` and `libcuda.so` link to this file.
    Link(PathBuf),
}

/// Picks the first candidate that is a file (`is_file` follows symlinks) and decides how to
/// present it.
pub fn plan_lib(
    source: LibSource,
    candidates: &[PathBuf],
    is_file: impl Fn(&Path) -> bool,
) -> Result<LibPlan, Error> {
    let found = candidates
        .iter()
        .find(|c| is_file(c))
        .ok_or_else(|| Error::LibNotFound {
            source_: source,
            looked: candidates.to_vec(),
        })?;
    if let Some(dir) = found.parent()
        && found.file_name() == Some(OsStr::new(SONAME))
        && is_file(&dir.join(UNVERSIONED))
        // A ':' would split the LD_LIBRARY_PATH entry.
        && !dir.as_os_str().as_bytes().contains(&b':')
    {
        return Ok(LibPlan::Dir(dir.to_path_buf()));
    }
    Ok(LibPlan::Link(found.clone()))
}

/// The directory under which private link directories are made: `$XDG_RUNTIME_DIR` when it
/// names a directory (already per user, on tmpfs), else `$TMPDIR`, else `/tmp`; then
/// `vgpu-run-<uid>`.
pub fn private_base(
    xdg_runtime_dir: Option<&OsStr>,
    tmpdir: Option<&OsStr>,
    uid: u32,
    is_dir: impl Fn(&Path) -> bool,
) -> PathBuf {
    let usable = |v: Option<&OsStr>| -> Option<PathBuf> {
        let p = Path::new(non_empty(v)?);
        (p.is_absolute() && is_dir(p)).then(|| p.to_path_buf())
    };
    let root = usable(xdg_runtime_dir)
        .or_else(|| usable(tmpdir))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    root.join(format!("vgpu-run-{uid}"))
}

/// A stable name for the link directory of one library file (FNV-1a of its path), so two
/// runs with different builds never repoint each other's links.
pub fn link_dir_name(target: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in target.as_os_str().as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The effective uid of this process (the owner of its `/proc` directory).
pub fn current_uid() -> Result<u32, Error> {
    let p = Path::new("/proc/self");
    std::fs::metadata(p)
        .map(|m| m.uid())
        .map_err(io_err("stat", p))
}

/// Creates (or reuses) `base/<link_dir_name(target)>/` holding `libcuda.so.1` and
/// `libcuda.so` as symlinks to `target` (an absolute path), and returns it. `base` must be a
/// real directory owned by `uid` that nobody else can write, since whatever it holds ends up
/// on the child's library path.
pub fn make_link_dir(base: &Path, uid: u32, target: &Path) -> Result<PathBuf, Error> {
    ensure_private_dir(base, uid)?;
    let dir = base.join(link_dir_name(target));
    ensure_private_dir(&dir, uid)?;
    for name in [SONAME, UNVERSIONED] {
        ensure_link(&dir.join(name), target)?;
    }
    Ok(dir)
}

fn ensure_private_dir(dir: &Path, uid: u32) -> Result<(), Error> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("create", dir)(e)),
    }
    let m = std::fs::symlink_metadata(dir).map_err(io_err("stat", dir))?;
    let unsafe_dir = |why| Error::UnsafeDir {
        path: dir.to_path_buf(),
        why,
    };
    if !m.file_type().is_dir() {
        return Err(unsafe_dir("it is not a directory (or is a symlink)"));
    }
    if m.uid() != uid {
        return Err(unsafe_dir("it belongs to another user"));
    }
    if m.mode() & 0o022 != 0 {
        return Err(unsafe_dir("others can write to it"));
    }
    Ok(())
}

/// Makes `link` a symlink to `target`, replacing whatever is there atomically.
fn ensure_link(link: &Path, target: &Path) -> Result<(), Error> {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let mut tmp_name = OsString::from(".");
    tmp_name.push(link.file_name().unwrap_or_default());
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = link.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err("create the symlink", &tmp))?;
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err("replace", link)(e)
    })
}

// ---------------------------------------------------------------------------------------------
// The device
// ---------------------------------------------------------------------------------------------

/// Where the shim sends calls (what `VGPU_DEVICE` says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `vhost-user:PATH`: the process connects to `vhost-gpu --socket PATH` itself.
    Socket(PathBuf),
    /// A `/dev/vgpuN` node of the guest kernel driver.
    Device(PathBuf),
}

impl Target {
    /// Reads a `VGPU_DEVICE` value the way the shim does.
    pub fn from_spec(spec: &OsStr) -> Self {
        match spec.as_bytes().strip_prefix(VHOST_USER_PREFIX.as_bytes()) {
            Some(path) => Self::Socket(PathBuf::from(OsStr::from_bytes(path))),
            None => Self::Device(PathBuf::from(spec)),
        }
    }

    /// The `VGPU_DEVICE` value for this target.
    pub fn spec(&self) -> OsString {
        match self {
            Self::Socket(p) => {
                let mut s = OsString::from(VHOST_USER_PREFIX);
                s.push(p);
                s
            }
            Self::Device(p) => p.clone().into_os_string(),
        }
    }
}

/// `--socket`, else `--device`, else an inherited `VGPU_DEVICE` (kept as it is), else
/// `/dev/vgpu0`. Paths from the command line are made absolute.
pub fn choose_target(
    socket: Option<&Path>,
    device: Option<&Path>,
    env_device: Option<&OsStr>,
    cwd: &Path,
) -> Target {
    if let Some(s) = socket {
        return Target::Socket(absolute(cwd, s));
    }
    if let Some(d) = device {
        return Target::Device(absolute(cwd, d));
    }
    match non_empty(env_device) {
        Some(spec) => Target::from_spec(spec),
        None => Target::Device(PathBuf::from(DEFAULT_DEVICE)),
    }
}

/// What a path is, as far as the target check cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Missing,
    CharDevice,
    Socket,
    Other,
}

/// Probes `path`, following symlinks (`/dev/vgpu0` may be a udev link). A path that cannot
/// be examined is reported as it is.
pub fn probe(path: &Path) -> Result<FileKind, Error> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_char_device() => Ok(FileKind::CharDevice),
        Ok(m) if m.file_type().is_socket() => Ok(FileKind::Socket),
        Ok(_) => Ok(FileKind::Other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FileKind::Missing),
        Err(e) => Err(io_err("examine", path)(e)),
    }
}

/// Checks that the target is there and of the right kind.
pub fn check_target(
    target: &Target,
    probe: impl Fn(&Path) -> Result<FileKind, Error>,
) -> Result<(), Error> {
    match target {
        Target::Socket(p) => match probe(p)? {
            FileKind::Socket => Ok(()),
            FileKind::Missing => Err(Error::SocketMissing(p.clone())),
            _ => Err(Error::NotSocket(p.clone())),
        },
        Target::Device(p) => match probe(p)? {
            FileKind::CharDevice => Ok(()),
            FileKind::Missing => Err(Error::DeviceMissing(p.clone())),
            _ => Err(Error::NotCharDevice(p.clone())),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The child's environment
// ---------------------------------------------------------------------------------------------

/// The variables to set in the child (everything else is inherited).
pub fn child_env(
    lib_dir: &Path,
    target: &Target,
    trace: bool,
    ld_library_path: Option<&OsStr>,
) -> Vec<(OsString, OsString)> {
    let mut llp = lib_dir.as_os_str().to_os_string();
    if let Some(old) = non_empty(ld_library_path) {
        llp.push(":");
        llp.push(old);
    }
    let mut env = vec![
        (OsString::from("LD_LIBRARY_PATH"), llp),
        (OsString::from("VGPU_DEVICE"), target.spec()),
        (
            OsString::from("TRITON_LIBCUDA_PATH"),
            lib_dir.as_os_str().to_os_string(),
        ),
    ];
    if trace {
        env.push((OsString::from("VGPU_TRACE"), OsString::from("1")));
    }
    env
}

/// Everything the child needs, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// The directory on the child's library path with both names of our library.
    pub lib_dir: PathBuf,
    pub target: Target,
    pub env: Vec<(OsString, OsString)>,
}

/// Finds the library (making the private link directory if needed), checks the target and
/// builds the child's environment. `get_env` reads this process's environment.
pub fn prepare(
    opts: &Options,
    get_env: impl Fn(&str) -> Option<OsString>,
    exe: &Path,
    cwd: &Path,
) -> Result<Setup, Error> {
    let (source, candidates) = lib_candidates(
        opts.lib_dir.as_deref(),
        get_env("VGPU_LIB_DIR").as_deref(),
        exe,
        cwd,
    );
    let lib_dir = match plan_lib(source, &candidates, Path::is_file)? {
        LibPlan::Dir(dir) => dir,
        LibPlan::Link(file) => {
            let target = std::fs::canonicalize(&file).map_err(io_err("resolve", &file))?;
            let uid = current_uid()?;
            let base = private_base(
                get_env("XDG_RUNTIME_DIR").as_deref(),
                get_env("TMPDIR").as_deref(),
                uid,
                Path::is_dir,
            );
            make_link_dir(&base, uid, &target)?
        }
    };
    let target = choose_target(
        opts.socket.as_deref(),
        opts.device.as_deref(),
        get_env("VGPU_DEVICE").as_deref(),
        cwd,
    );
    check_target(&target, probe)?;
    let env = child_env(
        &lib_dir,
        &target,
        opts.trace,
        get_env("LD_LIBRARY_PATH").as_deref(),
    );
    Ok(Setup {
        lib_dir,
        target,
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn files(list: &[&str]) -> impl Fn(&Path) -> bool {
        let set: HashSet<PathBuf> = list.iter().map(|s| p(s)).collect();
        move |q: &Path| set.contains(q)
    }

    /// A fresh directory (0700) under the system temp dir, removed on drop.
    fn temp_dir(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("vgpu-run-test-{tag}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn lib_dir_arg_wins_and_is_made_absolute() {
        let (src, c) = lib_candidates(
            Some(Path::new("shim")),
            Some(OsStr::new("/env/lib")),
            Path::new("/opt/vgpu/bin/vgpu-run"),
            Path::new("/home/u"),
        );
        assert_eq!(src, LibSource::Arg);
        assert_eq!(
            c,
            vec![p("/home/u/shim/libcuda.so.1"), p("/home/u/shim/libcuda.so")]
        );
    }

    #[test]
    fn env_lib_dir_is_next_and_empty_means_unset() {
        let exe = Path::new("/opt/vgpu/bin/vgpu-run");
        let (src, c) = lib_candidates(None, Some(OsStr::new("/env/lib")), exe, Path::new("/"));
        assert_eq!(src, LibSource::Env);
        assert_eq!(c[0], p("/env/lib/libcuda.so.1"));
        let (src, _) = lib_candidates(None, Some(OsStr::new("")), exe, Path::new("/"));
        assert_eq!(src, LibSource::Exe);
    }

    #[test]
    fn exe_dir_candidates_in_order() {
        let (src, c) = lib_candidates(
            None,
            None,
            Path::new("/opt/vgpu/bin/vgpu-run"),
            Path::new("/"),
        );
        assert_eq!(src, LibSource::Exe);
        assert_eq!(
            c,
            vec![
                p("/opt/vgpu/bin/libcuda.so.1"),
                p("/opt/vgpu/lib/vgpu/libcuda.so.1"),
                p("/opt/vgpu/bin/libcuda.so"),
            ]
        );
    }

    #[test]
    fn dir_with_both_names_is_used_as_is() {
        let c = [p("/a/libcuda.so.1"), p("/a/libcuda.so")];
        let plan = plan_lib(
            LibSource::Arg,
            &c,
            files(&["/a/libcuda.so.1", "/a/libcuda.so"]),
        );
        assert_eq!(plan.unwrap(), LibPlan::Dir(p("/a")));
    }

    #[test]
    fn dir_without_unversioned_name_gets_links() {
        let c = [p("/a/libcuda.so.1"), p("/a/libcuda.so")];
        let plan = plan_lib(LibSource::Arg, &c, files(&["/a/libcuda.so.1"]));
        assert_eq!(plan.unwrap(), LibPlan::Link(p("/a/libcuda.so.1")));
    }

    #[test]
    fn cargo_build_tree_gets_links() {
        let (src, c) = lib_candidates(
            None,
            None,
            Path::new("/w/target/release/vgpu-run"),
            Path::new("/"),
        );
        let plan = plan_lib(src, &c, files(&["/w/target/release/libcuda.so"]));
        assert_eq!(
            plan.unwrap(),
            LibPlan::Link(p("/w/target/release/libcuda.so"))
        );
    }

    #[test]
    fn installed_lib_vgpu_is_found() {
        let (src, c) = lib_candidates(None, None, Path::new("/usr/bin/vgpu-run"), Path::new("/"));
        let plan = plan_lib(
            src,
            &c,
            files(&["/usr/lib/vgpu/libcuda.so.1", "/usr/lib/vgpu/libcuda.so"]),
        );
        assert_eq!(plan.unwrap(), LibPlan::Dir(p("/usr/lib/vgpu")));
    }

    #[test]
    fn colon_in_dir_gets_links() {
        let c = [p("/a:b/libcuda.so.1")];
        let plan = plan_lib(
            LibSource::Env,
            &c,
            files(&["/a:b/libcuda.so.1", "/a:b/libcuda.so"]),
        );
        assert_eq!(plan.unwrap(), LibPlan::Link(p("/a:b/libcuda.so.1")));
    }

    #[test]
    fn not_found_says_where_it_looked() {
        let (src, c) = lib_candidates(None, None, Path::new("/x/bin/vgpu-run"), Path::new("/"));
        let e = plan_lib(src, &c, files(&[])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/x/bin/libcuda.so.1"), "{msg}");
        assert!(msg.contains("/x/lib/vgpu/libcuda.so.1"), "{msg}");
        assert!(msg.contains("/x/bin/libcuda.so"), "{msg}");
        assert!(msg.contains("--lib-dir"), "{msg}");
    }

    #[test]
    fn private_base_prefers_runtime_dir() {
        let dirs = files(&["/run/user/1000", "/scratch"]);
        let b = private_base(
            Some(OsStr::new("/run/user/1000")),
            Some(OsStr::new("/scratch")),
            1000,
            &dirs,
        );
        assert_eq!(b, p("/run/user/1000/vgpu-run-1000"));
        // A runtime dir that is not there (after `su`, say) or relative is skipped.
        let b = private_base(
            Some(OsStr::new("/run/user/0")),
            Some(OsStr::new("/scratch")),
            7,
            &dirs,
        );
        assert_eq!(b, p("/scratch/vgpu-run-7"));
        let b = private_base(Some(OsStr::new("rel")), None, 7, |_: &Path| true);
        assert_eq!(b, p("/tmp/vgpu-run-7"));
        assert_eq!(private_base(None, None, 0, &dirs), p("/tmp/vgpu-run-0"));
    }

    #[test]
    fn link_dir_names_differ_per_target() {
        let a = link_dir_name(Path::new("/w/target/release/libcuda.so"));
        let b = link_dir_name(Path::new("/w/target/debug/libcuda.so"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert_eq!(a, link_dir_name(Path::new("/w/target/release/libcuda.so")));
    }

    #[test]
    fn target_choice() {
        let cwd = Path::new("/work");
        let env = Some(OsStr::new("vhost-user:/run/v.sock"));
        assert_eq!(
            choose_target(Some(Path::new("v.sock")), None, env, cwd),
            Target::Socket(p("/work/v.sock"))
        );
        assert_eq!(
            choose_target(None, Some(Path::new("/dev/vgpu1")), env, cwd),
            Target::Device(p("/dev/vgpu1"))
        );
        assert_eq!(
            choose_target(None, None, env, cwd),
            Target::Socket(p("/run/v.sock"))
        );
        assert_eq!(
            choose_target(None, None, Some(OsStr::new("/dev/vgpu3")), cwd),
            Target::Device(p("/dev/vgpu3"))
        );
        assert_eq!(
            choose_target(None, None, None, cwd),
            Target::Device(p("/dev/vgpu0"))
        );
        assert_eq!(
            choose_target(None, None, Some(OsStr::new("")), cwd),
            Target::Device(p("/dev/vgpu0"))
        );
    }

    #[test]
    fn spec_round_trips() {
        for spec in ["vhost-user:/tmp/vgpu.sock", "/dev/vgpu0"] {
            assert_eq!(Target::from_spec(OsStr::new(spec)).spec(), spec);
        }
    }

    #[test]
    fn target_checks() {
        let kind = |k: FileKind| move |_: &Path| Ok(k);
        let sock = Target::Socket(p("/s"));
        let dev = Target::Device(p("/dev/vgpu0"));
        assert!(check_target(&sock, kind(FileKind::Socket)).is_ok());
        assert!(matches!(
            check_target(&sock, kind(FileKind::Missing)),
            Err(Error::SocketMissing(_))
        ));
        assert!(matches!(
            check_target(&sock, kind(FileKind::CharDevice)),
            Err(Error::NotSocket(_))
        ));
        assert!(check_target(&dev, kind(FileKind::CharDevice)).is_ok());
        assert!(matches!(
            check_target(&dev, kind(FileKind::Missing)),
            Err(Error::DeviceMissing(_))
        ));
        assert!(matches!(
            check_target(&dev, kind(FileKind::Other)),
            Err(Error::NotCharDevice(_))
        ));
    }

    #[test]
    fn probe_real_files() {
        assert_eq!(probe(Path::new("/dev/null")).unwrap(), FileKind::CharDevice);
        assert_eq!(probe(Path::new("/")).unwrap(), FileKind::Other);
        assert_eq!(
            probe(Path::new("/nonexistent/vgpu-run/x")).unwrap(),
            FileKind::Missing
        );
        let t = temp_dir("sock");
        let s = t.path().join("s");
        let _l = std::os::unix::net::UnixListener::bind(&s).unwrap();
        assert_eq!(probe(&s).unwrap(), FileKind::Socket);
    }

    #[test]
    fn env_for_the_child() {
        let env = child_env(
            Path::new("/l"),
            &Target::Socket(p("/s")),
            true,
            Some(OsStr::new("/a:/b")),
        );
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(get("LD_LIBRARY_PATH").unwrap(), "/l:/a:/b");
        assert_eq!(get("VGPU_DEVICE").unwrap(), "vhost-user:/s");
        assert_eq!(get("TRITON_LIBCUDA_PATH").unwrap(), "/l");
        assert_eq!(get("VGPU_TRACE").unwrap(), "1");

        let env = child_env(
            Path::new("/l"),
            &Target::Device(p("/dev/vgpu0")),
            false,
            Some(OsStr::new("")),
        );
        assert_eq!(env[0].1, "/l");
        assert_eq!(env[1].1, "/dev/vgpu0");
        assert!(!env.iter().any(|(n, _)| n == "VGPU_TRACE"));
    }

    #[test]
    fn link_dir_is_made_and_reused() {
        let t = temp_dir("links");
        let lib = t.path().join("libcuda.so");
        std::fs::write(&lib, b"not really").unwrap();
        let uid = current_uid().unwrap();
        let base = t.path().join("base");
        let d1 = make_link_dir(&base, uid, &lib).unwrap();
        for name in [SONAME, UNVERSIONED] {
            assert_eq!(std::fs::read_link(d1.join(name)).unwrap(), lib);
        }
        let m = std::fs::metadata(&base).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        // Again: same directory, links untouched.
        assert_eq!(make_link_dir(&base, uid, &lib).unwrap(), d1);
        // A stale link is repointed.
        std::fs::remove_file(d1.join(SONAME)).unwrap();
        std::os::unix::fs::symlink("/elsewhere", d1.join(SONAME)).unwrap();
        make_link_dir(&base, uid, &lib).unwrap();
        assert_eq!(std::fs::read_link(d1.join(SONAME)).unwrap(), lib);
        // Another library gets its own directory.
        let other = t.path().join("other.so");
        std::fs::write(&other, b"").unwrap();
        assert_ne!(make_link_dir(&base, uid, &other).unwrap(), d1);
    }

    #[test]
    fn link_dir_refuses_unsafe_bases() {
        use std::os::unix::fs::PermissionsExt;
        let t = temp_dir("unsafe");
        let uid = current_uid().unwrap();
        let lib = Path::new("/x/libcuda.so");
        // World-writable.
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            make_link_dir(&open, uid, lib),
            Err(Error::UnsafeDir { .. })
        ));
        // A symlink to a directory.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(t.path(), &link).unwrap();
        assert!(matches!(
            make_link_dir(&link, uid, lib),
            Err(Error::UnsafeDir { .. })
        ));
        // Someone else's.
        let mine = t.path().join("mine");
        assert!(matches!(
            make_link_dir(&mine, uid.wrapping_add(1), lib),
            Err(Error::UnsafeDir { .. })
        ));
    }

    #[test]
    fn prepare_end_to_end() {
        let t = temp_dir("prep");
        let lib_dir = t.path().join("lib");
        std::fs::create_dir(&lib_dir).unwrap();
        std::fs::write(lib_dir.join(SONAME), b"").unwrap();
        let tmp = t.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let env = |k: &str| match k {
            "XDG_RUNTIME_DIR" => None,
            "TMPDIR" => Some(tmp.clone().into_os_string()),
            "LD_LIBRARY_PATH" => Some(OsString::from("/old")),
            _ => None,
        };
        let opts = Options {
            lib_dir: Some(lib_dir.clone()),
            device: Some(p("/dev/null")),
            ..Options::default()
        };
        let s = prepare(&opts, env, Path::new("/nowhere/vgpu-run"), t.path()).unwrap();
        // No unversioned name in the lib dir: a private link dir under $TMPDIR.
        assert!(s.lib_dir.starts_with(&tmp), "{}", s.lib_dir.display());
        assert!(s.lib_dir.join(UNVERSIONED).is_file());
        assert_eq!(s.target, Target::Device(p("/dev/null")));
        let mut llp = s.lib_dir.clone().into_os_string();
        llp.push(":/old");
        assert_eq!(s.env[0].1, llp);

        // With both names the directory is used as it is.
        std::fs::write(lib_dir.join(UNVERSIONED), b"").unwrap();
        let s = prepare(&opts, env, Path::new("/nowhere/vgpu-run"), t.path()).unwrap();
        assert_eq!(s.lib_dir, lib_dir);
    }
}

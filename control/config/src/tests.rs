use super::*;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Kill,
    Log,
}

#[derive(Parser, Debug)]
#[command(name = "prog")]
struct Flags {
    #[arg(long, default_value = "./state")]
    state_dir: PathBuf,
    #[arg(long, default_value_t = 7)]
    port: u16,
    #[arg(long, env = "VGPU_CONFIG_TEST_ENV")]
    from_env: Option<String>,
    #[arg(long)]
    legacy: bool,
    #[arg(long = "label")]
    labels: Vec<String>,
    #[arg(long, value_enum, default_value_t = Mode::Kill)]
    mode: Mode,
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    prestart: bool,
}

const TEST: Program = Program {
    default_path: "/nonexistent/vgpu-config-test.toml",
    env: "VGPU_CONFIG_TEST_FILE",
    no_default_for: &[],
};

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

fn parse_with<T: clap::Parser>(
    f: &tempfile::NamedTempFile,
    args: &[&str],
) -> Result<T, ConfigError> {
    let mut v: Vec<OsString> = vec!["prog".into(), "--config".into(), f.path().into()];
    v.extend(args.iter().map(OsString::from));
    try_parse_from::<T>(&TEST, v)
}

// Mutation: `file_args` returning no arguments (the file ignored) fails this.
#[test]
fn the_file_sets_every_kind_of_flag() {
    let f = file(
        "state_dir = \"/var/lib/vgpu\"\nport = 8\nlegacy = true\nlabel = [\"rack=r1\", \"zone=z\"]\nmode = \"log\"\nprestart = false\n",
    );
    let t: Flags = parse_with(&f, &[]).unwrap();
    assert_eq!(t.state_dir, Path::new("/var/lib/vgpu"));
    assert_eq!(t.port, 8);
    assert!(t.legacy);
    assert_eq!(t.labels, ["rack=r1", "zone=z"]);
    assert_eq!(t.mode, Mode::Log);
    assert!(!t.prestart);
}

#[test]
fn without_a_file_the_defaults_hold() {
    let t: Flags = try_parse_from(&TEST, vec!["prog".into()]).unwrap();
    assert_eq!(t.state_dir, Path::new("./state"));
    assert_eq!(t.port, 7);
    assert!(t.prestart);
    // `legacy = false` in a file leaves the flag off.
    let f = file("legacy = false\n");
    let t: Flags = parse_with(&f, &[]).unwrap();
    assert!(!t.legacy);
}

// Mutation: skipping the `value_source` check (the file's value added although the command
// line set the flag) makes clap refuse `--port` twice, and the label list grows.
#[test]
fn the_command_line_beats_the_file() {
    let f = file("port = 8\nlabel = [\"from=file\"]\nstate_dir = \"/from/file\"\n");
    let t: Flags = parse_with(&f, &["--port", "9", "--label", "from=cli"]).unwrap();
    assert_eq!(t.port, 9);
    assert_eq!(t.labels, ["from=cli"]);
    assert_eq!(t.state_dir, Path::new("/from/file"));
}

/// Run by `the_environment_beats_the_file` in a child process with the environment set (the
/// test process's own environment is shared by every test thread).
#[test]
#[ignore = "run by the_environment_beats_the_file"]
fn environment_child() {
    let Ok(want) = std::env::var("VGPU_CONFIG_TEST_ENV") else {
        return;
    };
    // The file comes from VGPU_CONFIG_TEST_FILE, not --config.
    let t: Flags = try_parse_from(&TEST, vec!["prog".into()]).unwrap();
    assert_eq!(t.from_env.as_deref(), Some(want.as_str()));
    assert_eq!(t.port, 8, "the file named by the environment was read");
    println!("CHILD-OK");
}

// Mutation: treating `ValueSource::EnvVariable` like a default (the file wins over the
// environment) makes the child see "from-file"; not reading the file the environment names
// makes it see port 7.
#[test]
fn the_environment_beats_the_file() {
    let f = file("from_env = \"from-file\"\nport = 8\n");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::environment_child",
            "--ignored",
            "--nocapture",
        ])
        .env("VGPU_CONFIG_TEST_ENV", "from-env")
        .env("VGPU_CONFIG_TEST_FILE", f.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("CHILD-OK"), "{text}");
}

fn error(text: &str) -> String {
    let f = file(text);
    let e = parse_with::<Flags>(&f, &[]).unwrap_err();
    let shown = e.to_string();
    let name = f.path().display().to_string();
    assert!(shown.starts_with(&name), "{shown}");
    shown[name.len()..].to_string()
}

// Mutations: a line counted from 0, or the value's parser not run on file values (clap's
// error from the second parse names no line), fail these.
#[test]
fn a_bad_file_names_its_line_and_key() {
    assert_eq!(
        error("# comment\nstate_dir = \"/x\"\nport = \"eighty\"\n"),
        ":3: key `port`: invalid value \"eighty\": invalid digit found in string"
    );
    assert_eq!(
        error("port = 8\n\nport_number = 9\n"),
        ":3: unknown key `port_number` (the keys are the program's flags, `--help`, with `_` for `-`)"
    );
    assert_eq!(
        error("mode = \"strict\"\n"),
        ":1: key `mode`: invalid value \"strict\" (possible: kill, log)"
    );
    assert_eq!(
        error("legacy = \"yes\"\n"),
        ":1: key `legacy`: expected true or false"
    );
    assert_eq!(
        error("port = 8\nstate_dir = [\"a\"]\n"),
        ":2: key `state_dir`: expected one value, not an array"
    );
    assert_eq!(error("port = 70000\n").split(':').nth(1), Some("1"));
    let syntax = error("port = 8\nstate_dir = \"unterminated\n");
    assert!(syntax.starts_with(":2: not valid TOML"), "{syntax}");
    // `help` and `config` are not keys.
    assert!(error("config = \"/etc/x\"\n").starts_with(":1: unknown key `config`"));
}

#[test]
fn a_missing_file_named_by_config_is_an_error() {
    let e = try_parse_from::<Flags>(
        &TEST,
        vec![
            "prog".into(),
            "--config".into(),
            "/nonexistent/x.toml".into(),
        ],
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
}

#[derive(Parser, Debug)]
#[command(name = "prog")]
struct WithSubcommands {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(Subcommand, Debug)]
enum Sub {
    Serve {
        #[arg(long, default_value = "127.0.0.1:1")]
        listen: String,
        #[arg(long, default_value = "s")]
        store: String,
    },
    Export {
        #[arg(long, default_value = "s")]
        store: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

// Mutations: validating keys against the chosen subcommand only (`listen` unknown to `export`),
// or applying a key the subcommand does not have (clap refuses `--listen` there), fail this.
#[test]
fn keys_apply_to_the_chosen_subcommand() {
    let f = file("listen = \"0.0.0.0:9\"\nstore = \"etcd://x:1\"\n");
    let WithSubcommands { cmd } = parse_with(&f, &["serve"]).unwrap();
    assert!(
        matches!(cmd, Sub::Serve { listen, store } if listen == "0.0.0.0:9" && store == "etcd://x:1")
    );
    let WithSubcommands { cmd } = parse_with(&f, &["export", "--", "--store=cli"]).unwrap();
    assert!(
        matches!(&cmd, Sub::Export { store, rest } if store == "etcd://x:1" && rest == &["--store=cli"]),
        "{cmd:?}"
    );
    // `--config` after the subcommand too.
    let WithSubcommands { cmd } = try_parse_from(
        &TEST,
        vec![
            "prog".into(),
            "serve".into(),
            "--config".into(),
            f.path().into(),
        ],
    )
    .unwrap();
    assert!(matches!(cmd, Sub::Serve { listen, .. } if listen == "0.0.0.0:9"));
    // A bad value of a flag the chosen subcommand lacks is still an error.
    let bad = file("listen = [1]\n");
    assert!(matches!(
        parse_with::<WithSubcommands>(&bad, &["export"]),
        Err(ConfigError::Value { line: 1, .. })
    ));
}

// Mutations: the default path not read when it exists, or read for a subcommand in
// `no_default_for`, fail this.
#[test]
fn the_default_file_is_read_when_it_exists_but_not_for_listed_subcommands() {
    let f = file("listen = \"0.0.0.0:9\"\n");
    let path: &'static str = Box::leak(f.path().to_str().unwrap().to_string().into_boxed_str());
    let p = Program {
        default_path: path,
        env: "VGPU_CONFIG_TEST_UNSET",
        no_default_for: &["export"],
    };
    let WithSubcommands { cmd } = try_parse_from(&p, vec!["prog".into(), "serve".into()]).unwrap();
    assert!(matches!(cmd, Sub::Serve { listen, .. } if listen == "0.0.0.0:9"));
    // `export` does not know `listen`: with the file read it would still parse, so make the
    // file set `store`, which it knows.
    std::fs::write(f.path(), "store = \"from-file\"\n").unwrap();
    let WithSubcommands { cmd } = try_parse_from(&p, vec!["prog".into(), "export".into()]).unwrap();
    assert!(
        matches!(&cmd, Sub::Export { store, .. } if store == "s"),
        "{cmd:?}"
    );
    let WithSubcommands { cmd } = try_parse_from(
        &p,
        vec![
            "prog".into(),
            "export".into(),
            "--config".into(),
            f.path().into(),
        ],
    )
    .unwrap();
    assert!(
        matches!(&cmd, Sub::Export { store, .. } if store == "from-file"),
        "{cmd:?}"
    );
}

//! One TOML configuration file per program (`/etc/vgpu/controller.toml`, `agent.toml`,
//! `vhost-gpu.toml`), under the program's own clap flags and environment.
//!
//! Every long flag of a program (but `--help`, `--version`, `--config` and hidden ones) is a key
//! of its file, spelt as the flag with `_` for `-` (`--state-dir` is `state_dir`). A flag that
//! takes several values takes a TOML array; a flag without a value (`--legacy-metrics`) takes
//! `true` or `false`. Precedence: a flag on the command line, then the flag's environment
//! variable, then the file, then the flag's default.
//!
//! How: clap parses the command line once; every key of the file whose flag the command line
//! and the environment left unset is checked with the flag's own value parser (so a bad value is
//! reported with the file, line and key), added as `--flag=value`, and clap parses again. The
//! file is `--config FILE` (a flag every program gets from here), else the program's environment
//! variable (`VGPU_AGENT_CONFIG`, ...), else its default path when that file exists (not for
//! `vgpu-controller up`, the one-host pool of a checkout: see [`Program::no_default_for`]). An unknown
//! key, a bad value or a file that is not TOML is an error, and the program exits 2 without
//! starting.
//!
//! Subcommands: the keys of a program with subcommands (`vgpu-controller serve|up|export`) are
//! the flags of all of them; a key applies to the subcommand that was chosen when it has that
//! flag, and is left out otherwise (so one `controller.toml` serves `serve` and `export`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub mod socket;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory};

/// The id and flag of the option every program gets for its file.
pub const CONFIG_FLAG: &str = "config";

/// Which program reads which file.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    /// Its file when neither `--config` nor the environment variable names one, read only when
    /// it exists (`/etc/vgpu/agent.toml`).
    pub default_path: &'static str,
    /// Environment variable naming its file (`VGPU_AGENT_CONFIG`).
    pub env: &'static str,
    /// Subcommands that read no file unless one is named (`vgpu-controller up`, the one-host
    /// pool of a checkout, which must not pick up an installed host's paths).
    pub no_default_for: &'static [&'static str],
}

pub const CONTROLLER: Program = Program {
    default_path: "/etc/vgpu/controller.toml",
    env: "VGPU_CONTROLLER_CONFIG",
    no_default_for: &["up"],
};
pub const AGENT: Program = Program {
    default_path: "/etc/vgpu/agent.toml",
    env: "VGPU_AGENT_CONFIG",
    no_default_for: &[],
};
pub const VHOST_GPU: Program = Program {
    default_path: "/etc/vgpu/vhost-gpu.toml",
    env: "VHOST_GPU_CONFIG",
    no_default_for: &[],
};

/// Why a program's configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: not valid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: unknown key `{key}` (the keys are the program's flags, `--help`, with `_` for `-`)", path.display())]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
    },
    #[error("{}:{line}: key `{key}`: {message}", path.display())]
    Value {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    /// The command line (with the file's values) is not accepted; clap's own error, printed as
    /// clap prints it.
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

impl ConfigError {
    /// Prints the error and exits: 2 as clap does for usage errors (0 for `--help`/`--version`).
    pub fn exit(self, program: &str) -> ! {
        match self {
            ConfigError::Clap(e) => e.exit(),
            e => {
                eprintln!("{program}: error: {e}");
                std::process::exit(2)
            }
        }
    }
}

/// Parses this process's command line and configuration file into `T`; on an error prints it
/// and exits 2.
pub fn parse<T: clap::Parser>(program: &Program) -> T {
    let args: Vec<OsString> = std::env::args_os().collect();
    match try_parse_from(program, args) {
        Ok(t) => t,
        Err(e) => e.exit(T::command().get_name()),
    }
}

/// [`parse`] of `args` (the program's name first), returning errors.
pub fn try_parse_from<T: clap::Parser>(
    program: &Program,
    args: Vec<OsString>,
) -> Result<T, ConfigError> {
    let cmd = command::<T>(program);
    let matches = cmd.clone().try_get_matches_from(&args)?;
    let Some(path) = config_path(program, &matches) else {
        return Ok(T::from_arg_matches(&matches)?);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let extra = file_args(&cmd, &matches, &path, &text)?;
    if extra.is_empty() {
        return Ok(T::from_arg_matches(&matches)?);
    }
    // The file's flags go before a `--` (after it everything is a value), else at the end.
    let mut full = args;
    let at = full
        .iter()
        .skip(1)
        .position(|a| a == "--")
        .map_or(full.len(), |i| i + 1);
    full.splice(at..at, extra);
    let matches = cmd.try_get_matches_from(full)?;
    Ok(T::from_arg_matches(&matches)?)
}

/// `T`'s command with the `--config` option.
pub fn command<T: CommandFactory>(program: &Program) -> Command {
    T::command().arg(
        Arg::new(CONFIG_FLAG)
            .long(CONFIG_FLAG)
            .value_name("FILE")
            .env(program.env)
            .value_parser(clap::value_parser!(PathBuf))
            .global(true)
            .help(format!(
                "Configuration file (TOML; its keys are these flags with `_` for `-`; flags and their environment variables override it) [default: {} when it exists]",
                program.default_path
            )),
    )
}

fn config_path(program: &Program, matches: &ArgMatches) -> Option<PathBuf> {
    // `--config` is global: the chosen subcommand's matches hold it.
    let mut m = matches;
    let mut skip_default = false;
    while let Some((name, sub)) = m.subcommand() {
        skip_default |= program.no_default_for.contains(&name);
        m = sub;
    }
    if let Some(p) = m
        .get_one::<PathBuf>(CONFIG_FLAG)
        .or_else(|| matches.get_one::<PathBuf>(CONFIG_FLAG))
    {
        return Some(p.clone());
    }
    let p = Path::new(program.default_path);
    (p.exists() && !skip_default).then(|| p.to_path_buf())
}

/// The key of a flag in the file: its long name with `_` for `-`.
pub fn key_of(arg: &Arg) -> Option<String> {
    let long = arg.get_long()?;
    if arg.is_hide_set() || matches!(long, "help" | "version" | CONFIG_FLAG) {
        return None;
    }
    Some(long.replace('-', "_"))
}

/// Every key of `cmd`'s file with its flag: `cmd`'s own flags and those of all its subcommands.
pub fn keys(cmd: &Command) -> BTreeMap<String, Arg> {
    let mut out = BTreeMap::new();
    collect_keys(cmd, &mut out);
    out
}

fn collect_keys(cmd: &Command, out: &mut BTreeMap<String, Arg>) {
    for a in cmd.get_arguments() {
        if let Some(k) = key_of(a) {
            out.entry(k).or_insert_with(|| a.clone());
        }
    }
    for s in cmd.get_subcommands() {
        collect_keys(s, out);
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

type Entries = BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>;

/// The `--flag=value` arguments the file adds to the command line `matches` came from.
fn file_args(
    cmd: &Command,
    matches: &ArgMatches,
    path: &Path,
    text: &str,
) -> Result<Vec<OsString>, ConfigError> {
    let entries: Entries = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        message: e.message().to_string(),
    })?;
    let all = keys(cmd);
    // The chosen subcommand: its flags are the ones the file can set now.
    let (mut leaf, mut leaf_matches) = (cmd, matches);
    while let Some((name, sub)) = leaf_matches.subcommand() {
        match leaf.find_subcommand(name) {
            Some(c) => (leaf, leaf_matches) = (c, sub),
            None => break,
        }
    }
    let mut out = Vec::new();
    for (key, value) in &entries {
        let line = line_of(text, key.span().start);
        let err = |message: String| ConfigError::Value {
            path: path.to_path_buf(),
            line,
            key: key.get_ref().clone(),
            message,
        };
        let Some(known) = all.get(key.get_ref()) else {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                line,
                key: key.get_ref().clone(),
            });
        };
        let here = leaf
            .get_arguments()
            .find(|a| key_of(a).as_deref() == Some(key.get_ref().as_str()));
        let arg = here.unwrap_or(known);
        let values = flag_values(arg, value.get_ref()).map_err(err)?;
        for v in &values {
            check_value(arg, v).map_err(err)?;
        }
        let Some(arg) = here else { continue };
        let id = arg.get_id().as_str();
        let set_outside = matches!(
            leaf_matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if set_outside {
            continue;
        }
        let long = arg.get_long().unwrap_or_default();
        for v in values {
            match v {
                None => out.push(format!("--{long}").into()),
                Some(v) => out.push(format!("--{long}={v}").into()),
            }
        }
    }
    Ok(out)
}

/// What `--flag` gets from a TOML value: one element per occurrence, `None` for a flag given
/// without a value.
fn flag_values(arg: &Arg, value: &toml::Value) -> Result<Vec<Option<String>>, String> {
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            toml::Value::Datetime(d) => Ok(d.to_string()),
            toml::Value::Array(_) | toml::Value::Table(_) => {
                Err("expected a string, number or boolean".into())
            }
        }
    };
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match value {
            toml::Value::Boolean(b) => {
                let given = *b == matches!(arg.get_action(), ArgAction::SetTrue);
                Ok(if given { vec![None] } else { vec![] })
            }
            _ => Err("expected true or false".into()),
        },
        ArgAction::Append => match value {
            toml::Value::Array(items) => items.iter().map(|v| scalar(v).map(Some)).collect(),
            v => Ok(vec![Some(scalar(v)?)]),
        },
        ArgAction::Set => match value {
            toml::Value::Array(_) => Err("expected one value, not an array".into()),
            v => Ok(vec![Some(scalar(v)?)]),
        },
        other => Err(format!("flag action {other:?} cannot be set from a file")),
    }
}

/// Runs the flag's own value parser (and possible values) on one value from the file.
fn check_value(arg: &Arg, value: &Option<String>) -> Result<(), String> {
    let Some(value) = value else { return Ok(()) };
    let probe = Arg::new("value")
        .long("value")
        .action(ArgAction::Set)
        .value_parser(arg.get_value_parser().clone())
        .allow_hyphen_values(true);
    Command::new("file")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from([format!("--value={value}")])
        .map(drop)
        .map_err(|e| match e.kind() {
            clap::error::ErrorKind::InvalidValue | clap::error::ErrorKind::ValueValidation => {
                let why = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                let possible: Vec<String> = arg
                    .get_possible_values()
                    .iter()
                    .map(|p| p.get_name().to_string())
                    .collect();
                if possible.is_empty() {
                    format!("invalid value {value:?}{why}")
                } else {
                    format!(
                        "invalid value {value:?}{why} (possible: {})",
                        possible.join(", ")
                    )
                }
            }
            _ => e
                .render()
                .to_string()
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        })
}

#[cfg(test)]
mod tests;

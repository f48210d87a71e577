//! The config file (`--config FILE`), `--check-config`, `--print-config`,
//! and what SIGHUP reloads.
//!
//! A file's top-level keys are its mode's flags (`proxy`, `mtu`, ...): they
//! become those flags (`file.rs`) and go through clap with the command
//! line's own, so a value is parsed and validated the same way (and fails
//! with the same text) whichever it came from; a flag on the command line
//! overrides the file's key. The server's `[[rule]]` tables have no flag:
//! they are read with serde into `ServerArgs::rules`. Passwords can come from
//! files (`secret.rs`); `print.rs` prints the result back as a config file.
//!
//! A reload is a new load of the same command line and file, validated by
//! the same code as at start: a bad one is refused and the old configuration
//! kept.

mod file;
mod print;
pub mod secret;

use crate::cli::{Cli, Command, ExecArgs, ServerArgs, TunArgs};
use crate::server::rules::RuleSpec;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use std::ffi::OsString;
use std::fmt;
use std::path::Path;

pub use secret::PasswordFiles;

/// Why a command line with its config file did not load.
#[derive(Debug)]
pub enum LoadError {
    /// The command line itself (usage errors, `--help`): clap prints it.
    Clap(clap::Error),
    /// The config file, or a value it gave: names the file, line and key.
    Config(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Clap(e) => write!(f, "{}", first_line(e)),
            LoadError::Config(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    /// Print and exit: clap's own way for the command line (status 2, or 0
    /// for --help), status 1 for the config file.
    pub fn exit(self) -> ! {
        match self {
            LoadError::Clap(e) => e.exit(),
            LoadError::Config(m) => {
                eprintln!("sockstun: {m}");
                std::process::exit(1)
            }
        }
    }
}

/// clap's message without its `error: ` prefix and usage lines.
fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or("");
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// The command line of this process, with its config file.
/// Under `--check-config` every invalid configuration exits with status 1,
/// a bad flag included.
pub fn cli_or_exit() -> Cli {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let checking = argv.iter().any(|a| a == "--check-config");
    match load(argv) {
        Ok(cli) => cli,
        Err(LoadError::Clap(e)) if checking && e.exit_code() == 2 => {
            LoadError::Config(first_line(&e)).exit()
        }
        Err(e) => e.exit(),
    }
}

/// Parse `argv` (program name first) with the config file it names.
pub fn load<I, T>(argv: I) -> Result<Cli, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    load_full(argv).map(|l| l.cli)
}

/// A loaded command line, and what printing it needs.
struct Loaded {
    cli: Cli,
    matches: ArgMatches,
    cmd: clap::Command,
}

/// The command, built (global flags propagated into the subcommands);
/// `relaxed`: without `tun`'s required `--proxy`, which the file may give.
fn command(relaxed: bool) -> clap::Command {
    let mut c = Cli::command();
    if relaxed {
        // Without `tun`'s (and `exec`'s) required --proxy, which the file
        // may give (--rules-test needs none).
        for sub in ["tun", "exec"] {
            c = c.mut_subcommand(sub, |s| {
                s.mut_arg("proxy", |a| {
                    a.required(false)
                        .required_unless_present(clap::builder::Resettable::Reset)
                })
            });
        }
    }
    c.build();
    c
}

fn load_full<I, T>(argv: I) -> Result<Loaded, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let relaxed = command(true);
    let first = relaxed
        .clone()
        .try_get_matches_from(&argv)
        .map_err(LoadError::Clap)?;
    let cmd = command(false);
    let file = first.subcommand().and_then(|(name, sm)| {
        let path = sm.try_get_one::<std::path::PathBuf>("config").ok()??;
        Some((name.to_string(), path.clone(), sm.clone()))
    });
    let Some((name, path, sm)) = file else {
        let matches = cmd
            .clone()
            .try_get_matches_from(&argv)
            .map_err(LoadError::Clap)?;
        let cli = Cli::from_arg_matches(&matches).map_err(LoadError::Clap)?;
        return Ok(Loaded { cli, matches, cmd });
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| LoadError::Config(format!("--config {}: {e}", path.display())))?;
    let sub = relaxed.find_subcommand(&name).expect("a subcommand");
    let given =
        |a: &clap::Arg| sm.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine);
    let extra: &[&str] = if name == "server" { &["rule"] } else { &[] };
    let fa = file::file_args(&path, &text, sub, &given, extra).map_err(LoadError::Config)?;
    let mut full = argv;
    // `exec`'s program comes after `--`: the file's flags go before it.
    let at = match name.as_str() {
        "exec" => full.iter().position(|a| a == "--").unwrap_or(full.len()),
        _ => full.len(),
    };
    full.splice(at..at, fa.words.iter().map(OsString::from));
    let matches = cmd
        .clone()
        .try_get_matches_from(&full)
        .map_err(|e| annotate(e, &fa, &path))?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(LoadError::Clap)?;
    match &mut cli.command {
        Command::Server(a) => {
            a.rules = rules_of(&path, &text).map_err(LoadError::Config)?;
            a.ops.password_files = fa.passwords;
        }
        Command::Tun(a) => a.ops.password_files = fa.passwords,
        Command::Exec(a) => a.tun.ops.password_files = fa.passwords,
        #[allow(unreachable_patterns)]
        _ => {}
    }
    Ok(Loaded { cli, matches, cmd })
}

/// A clap error about a value the file gave names the file, line and key.
fn annotate(e: clap::Error, fa: &file::FileArgs, path: &Path) -> LoadError {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(flag)) = e.get(ContextKind::InvalidArg) else {
        return LoadError::Clap(e);
    };
    let name = flag
        .trim_start_matches('-')
        .split([' ', '='])
        .next()
        .unwrap_or("");
    match fa.origins.get(name) {
        Some(o) => LoadError::Config(format!(
            "{} line {}: {}: {}",
            path.display(),
            o.line,
            o.key,
            first_line(&e)
        )),
        None => LoadError::Clap(e),
    }
}

/// The server's `[[rule]]` tables (an unknown key in one is an error naming
/// its line: `RuleSpec` denies unknown fields).
fn rules_of(path: &Path, text: &str) -> Result<Vec<RuleSpec>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default)]
        rule: Vec<RuleSpec>,
    }
    let doc: Doc = toml::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(doc.rule)
}

/// Validate a server's arguments as `sockstun server` does at start.
pub fn validate_server(args: &ServerArgs) -> anyhow::Result<crate::server::Config> {
    crate::server::Config::from_args(args, crate::net::fd_limit())
}

/// `--check-config` and `--print-config` of `argv`: the text to print on
/// success, or why the configuration is not valid.
pub fn check(argv: &[OsString]) -> Result<String, String> {
    let l = load_full(argv.iter().cloned()).map_err(|e| e.to_string())?;
    let (print, rules) = match &l.cli.command {
        Command::Tun(a) => {
            crate::tun::TunConfig::from_args(a).map_err(|e| format!("{e:#}"))?;
            (a.ops.print_config, None)
        }
        Command::Exec(a) => {
            crate::tun::TunConfig::from_args(&crate::exec::tun_args(a))
                .map_err(|e| format!("{e:#}"))?;
            (a.tun.ops.print_config, None)
        }
        Command::Server(a) => {
            validate_server(a).map_err(|e| format!("{e:#}"))?;
            let rules = match a.rules.is_empty() {
                true => None,
                false => Some(toml::Value::try_from(&a.rules).map_err(|e| e.to_string())?),
            };
            (a.ops.print_config, rules)
        }
        #[allow(unreachable_patterns)]
        _ => return Err("--check-config and --print-config are options of tun and server".into()),
    };
    if !print {
        return Ok("configuration OK\n".into());
    }
    let (name, sm) = l.matches.subcommand().expect("a subcommand");
    let sub = l.cmd.find_subcommand(name).expect("a subcommand");
    let pf = match &l.cli.command {
        Command::Tun(a) => &a.ops.password_files,
        Command::Exec(a) => &a.tun.ops.password_files,
        Command::Server(a) => &a.ops.password_files,
        #[allow(unreachable_patterns)]
        _ => return Err("no configuration to print".into()),
    };
    print::render(sub, sm, pf, rules)
}

/// Run `--check-config`/`--print-config` of this process's command line:
/// print, and exit 0, or 1 with the reason.
fn check_and_exit() -> ! {
    let argv: Vec<OsString> = std::env::args_os().collect();
    match check(&argv) {
        Ok(out) => {
            print!("{out}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("sockstun: {e}");
            std::process::exit(1)
        }
    }
}

/// `sockstun tun`: with `--config`, SIGHUP reloads the upstream group.
pub fn run_tun(args: TunArgs) -> anyhow::Result<()> {
    if args.ops.check_config || args.ops.print_config {
        check_and_exit();
    }
    let reload: Option<crate::tun::Reload> = args.ops.config.as_ref().map(|_| {
        Box::new(|| -> anyhow::Result<crate::tun::TunConfig> {
            let a = match load(std::env::args_os())?.command {
                Command::Tun(a) => a,
                _ => anyhow::bail!("not `sockstun tun`"),
            };
            crate::tun::TunConfig::from_args(&a)
        }) as crate::tun::Reload
    });
    crate::tun::run_with(args, reload)
}

/// `sockstun exec`: the program's exit status; with `--config`, SIGHUP
/// reloads the upstream group as in `sockstun tun`.
pub fn run_exec(args: ExecArgs, log: &str) -> anyhow::Result<i32> {
    if args.tun.ops.check_config || args.tun.ops.print_config {
        check_and_exit();
    }
    let reload: Option<crate::tun::Reload> = args.tun.ops.config.as_ref().map(|_| {
        Box::new(|| -> anyhow::Result<crate::tun::TunConfig> {
            let a = match load(std::env::args_os())?.command {
                Command::Exec(a) => a,
                _ => anyhow::bail!("not `sockstun exec`"),
            };
            crate::tun::TunConfig::from_args(&crate::exec::tun_args(&a))
        }) as crate::tun::Reload
    });
    crate::exec::run(args, reload, log)
}

/// `sockstun server`: with `--config`, SIGHUP reloads users and rules.
pub fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    if args.ops.check_config || args.ops.print_config {
        check_and_exit();
    }
    let reload: Option<crate::server::Reload> = args.ops.config.as_ref().map(|_| {
        Box::new(|fd_limit: u64| -> anyhow::Result<crate::server::Config> {
            let a = match load(std::env::args_os())?.command {
                Command::Server(a) => a,
                _ => anyhow::bail!("not `sockstun server`"),
            };
            crate::server::Config::from_args(&a, fd_limit)
        }) as crate::server::Reload
    });
    crate::server::run_with(args, reload)
}

#[cfg(test)]
mod tests;

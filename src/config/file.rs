//! The config file's keys turned into the flags they name (`mtu = 1500` is
//! `--mtu=1500`), so clap's parsers and the mode's validator see a file's
//! value exactly as they would see the flag: one validator, one error text.

use super::secret::{self, PasswordFiles};
use clap::{Arg, ArgAction, Command};
use std::collections::HashMap;
use std::path::Path;
use toml::de::{DeTable, DeValue};

/// Options of the command line only: a file naming them is an error.
pub(super) const CLI_ONLY: &[&str] = &[
    "config",
    "check-config",
    "print-config",
    "rules-test",
    "help",
    "version",
];

/// Keys naming a file: a relative path is taken from the config file's folder.
const PATH_KEYS: &[&str] = &["rules-file"];

/// Where in the file a flag's value came from, for error messages.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    pub key: String,
    pub line: usize,
}

/// The flags a config file stands for.
#[derive(Default)]
pub(super) struct FileArgs {
    /// `--key=value` (or `--key`) words, added after the command line's.
    pub words: Vec<String>,
    /// Flag name → where the file set it.
    pub origins: HashMap<String, Origin>,
    pub passwords: PasswordFiles,
}

/// 1-based line of byte `offset` in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The flags of `text` for the subcommand `sub`. `given(id)`: whether the
/// command line gave that argument (then the file's value is ignored);
/// `extra`: keys with no flag that the mode reads itself (the server's
/// `rule` tables).
pub(super) fn file_args(
    path: &Path,
    text: &str,
    sub: &Command,
    given: &dyn Fn(&Arg) -> bool,
    extra: &[&str],
) -> Result<FileArgs, String> {
    let doc = DeTable::parse(text).map_err(|e| format!("{}: {e}", path.display()))?;
    // Password files are taken from the config file's folder, and printed
    // as absolute paths (the printed file may be saved elsewhere).
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let dir = dir.as_path();
    let mut entries: Vec<_> = doc.get_ref().iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let mut out = FileArgs::default();
    for (k, v) in entries {
        let key: &str = k.get_ref();
        let line = line_of(text, k.span().start);
        let at = |msg: String| format!("{} line {line}: {key}: {msg}", path.display());
        if extra.contains(&key) {
            continue;
        }
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(key) && !CLI_ONLY.contains(&key));
        let Some(arg) = arg else {
            let why = if CLI_ONLY.contains(&key) {
                format!("--{key} is a command-line option, not a setting")
            } else {
                format!("unknown key (`sockstun {}` has no --{key})", sub.get_name())
            };
            return Err(format!("{} line {line}: {why}", path.display()));
        };
        // A flag on the command line overrides the file, and so does one it
        // conflicts with (`--fd` over the file's `device`).
        if given(arg) || conflicts_with_given(sub, arg, given) {
            continue;
        }
        let words = words_of(arg, key, v.get_ref(), dir, &mut out.passwords).map_err(at)?;
        out.words.extend(words);
        out.origins.insert(
            key.to_string(),
            Origin {
                key: key.to_string(),
                line,
            },
        );
    }
    Ok(out)
}

/// Whether an argument given conflicts with `arg` (clap records a conflict
/// on one side only: `device` names `fd`).
pub(super) fn conflicts_with_given(sub: &Command, arg: &Arg, given: &dyn Fn(&Arg) -> bool) -> bool {
    let id = arg.get_id();
    sub.get_arguments().filter(|g| given(g)).any(|g| {
        sub.get_arg_conflicts_with(arg)
            .iter()
            .any(|c| c.get_id() == g.get_id())
            || sub
                .get_arg_conflicts_with(g)
                .iter()
                .any(|c| c.get_id() == id)
    })
}

/// The `--key=value` words of one key.
fn words_of(
    arg: &Arg,
    key: &str,
    v: &DeValue<'_>,
    dir: &Path,
    pf: &mut PasswordFiles,
) -> Result<Vec<String>, String> {
    match arg.get_action() {
        ArgAction::SetTrue => match v {
            DeValue::Boolean(true) => Ok(vec![format!("--{key}")]),
            DeValue::Boolean(false) => Ok(Vec::new()),
            v => Err(format!("expected true or false, not {}", v.type_str())),
        },
        ArgAction::Append => {
            let items: Vec<&DeValue<'_>> = match v {
                DeValue::Array(a) => a.iter().map(|x| x.get_ref()).collect(),
                v => vec![v],
            };
            let mut words = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                let s = element(key, item, dir, pf).map_err(|e| match v {
                    DeValue::Array(_) => format!("item {}: {e}", i + 1),
                    _ => e,
                })?;
                words.push(format!("--{key}={s}"));
            }
            Ok(words)
        }
        // A file the config file names is found beside it, as its
        // password files are.
        _ if PATH_KEYS.contains(&key) => {
            let p = dir.join(scalar(v)?);
            Ok(vec![format!("--{key}={}", p.display())])
        }
        _ => Ok(vec![format!("--{key}={}", scalar(v)?)]),
    }
}

/// One value of a repeatable flag: a scalar, or for `proxy` and `user` a
/// table with a `password-file`.
fn element(
    key: &str,
    v: &DeValue<'_>,
    dir: &Path,
    pf: &mut PasswordFiles,
) -> Result<String, String> {
    match (key, v) {
        ("proxy", DeValue::Table(t)) => secret::proxy_table(t, dir, pf),
        ("user", DeValue::Table(t)) => secret::user_table(t, dir, pf),
        ("group", DeValue::Table(t)) => secret::group_table(t, dir, pf),
        ("group", v) => {
            let s = scalar(v)?;
            secret::check_group(&s)?;
            Ok(s)
        }
        ("proxy", v) => {
            let s = scalar(v)?;
            secret::check_proxy(&s)?;
            Ok(s)
        }
        ("user", v) => {
            let s = scalar(v)?;
            secret::check_user(&s)?;
            Ok(s)
        }
        (_, v) => scalar(v),
    }
}

/// A string as it is, an integer in decimal (TOML's `0x438` is 1080).
fn scalar(v: &DeValue<'_>) -> Result<String, String> {
    match v {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
            .map(|n| n.to_string())
            .map_err(|e| format!("{e}")),
        v => Err(format!(
            "expected a string or a number, not {}",
            v.type_str()
        )),
    }
}

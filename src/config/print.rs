//! `--print-config`: the effective configuration (file, flags and defaults)
//! as a config file, passwords masked or named by their file, so that
//! loading what is printed gives the same configuration.

use super::file::CLI_ONLY;
use super::secret::{self, PasswordFiles};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// The TOML of the subcommand `sub` as `m` parsed it. `rules`: the server's
/// rule tables, if any.
pub(super) fn render(
    sub: &Command,
    m: &ArgMatches,
    pf: &PasswordFiles,
    rules: Option<toml::Value>,
) -> Result<String, String> {
    let mut t = toml::Table::new();
    for arg in sub.get_arguments() {
        let Some(key) = arg.get_long() else { continue };
        let id = arg.get_id().as_str();
        if CLI_ONLY.contains(&key) || key == "log" {
            continue;
        }
        // A default that something given conflicts with is not in force
        // (`device` when `fd` is set).
        let given = |a: &clap::Arg| {
            matches!(
                m.value_source(a.get_id().as_str()),
                Some(ValueSource::CommandLine)
            )
        };
        if m.value_source(id) == Some(ValueSource::DefaultValue)
            && super::file::conflicts_with_given(sub, arg, &given)
        {
            continue;
        }
        let value = match arg.get_action() {
            ArgAction::SetTrue => toml::Value::Boolean(m.get_flag(id)),
            action => {
                let Some(raw) = m.get_raw(id) else { continue };
                let vals: Vec<toml::Value> = raw
                    .map(|v| value_of(key, &v.to_string_lossy(), pf))
                    .collect();
                match action {
                    ArgAction::Append => toml::Value::Array(vals),
                    _ => match vals.into_iter().next() {
                        Some(v) => v,
                        None => continue,
                    },
                }
            }
        };
        t.insert(key.to_string(), value);
    }
    if let Some(rules) = rules {
        t.insert("rule".into(), rules);
    }
    let body = toml::to_string(&t).map_err(|e| e.to_string())?;
    Ok(format!(
        "# sockstun {}: the effective configuration (--print-config)\n{body}",
        sub.get_name()
    ))
}

/// A decimal number prints as a TOML integer, anything else as a string;
/// passwords never.
fn value_of(key: &str, s: &str, pf: &PasswordFiles) -> toml::Value {
    match key {
        "proxy" => return secret::print_proxy(s, pf),
        "user" => return secret::print_user(s, pf),
        "group" => return secret::print_group(s, pf),
        _ => {}
    }
    let decimal = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s.len() == 1 || !s.starts_with('0'));
    match s.parse::<i64>() {
        Ok(n) if decimal => toml::Value::Integer(n),
        _ => toml::Value::String(s.to_string()),
    }
}

//! Passwords in the config file: read from a `password-file` (a proxy URL's
//! or a server user's), masked when the configuration is printed, and a
//! masked password refused when it is loaded back (it would silently be the
//! wrong one).

use std::fmt;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// What `--print-config` prints instead of a password given inline.
pub const MASK: &str = "********";

/// The passwords that came from files: printed as their file, so the printed
/// configuration loads back to the same one. Never prints a password.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct PasswordFiles {
    /// A proxy URL without its password, and the password's file.
    pub(super) proxies: Vec<(String, PathBuf)>,
    /// A server user's name, and the password's file.
    pub(super) users: Vec<(String, PathBuf)>,
}

impl fmt::Debug for PasswordFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFiles")
            .field("proxies", &self.proxies)
            .field("users", &self.users)
            .finish()
    }
}

/// The first line of `path`, without its line end. `dir` is the config
/// file's folder, which a relative path is taken from.
pub(super) fn read_password(dir: &Path, path: &str) -> Result<(PathBuf, String), String> {
    let p = dir.join(path);
    let text =
        std::fs::read_to_string(&p).map_err(|e| format!("password-file {}: {e}", p.display()))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(format!("password-file {}: empty", p.display()));
    }
    Ok((p, line.to_string()))
}

/// The string field `key` of a table, if there.
fn field<'a>(t: &'a DeTable<'_>, key: &str) -> Result<Option<&'a str>, String> {
    match t.get(key).map(|v| v.get_ref()) {
        None => Ok(None),
        Some(DeValue::String(s)) => Ok(Some(s.as_ref())),
        Some(v) => Err(format!("`{key}` must be a string, not {}", v.type_str())),
    }
}

fn only_keys(t: &DeTable<'_>, allowed: &[&str]) -> Result<(), String> {
    for k in t.keys() {
        if !allowed.contains(&k.get_ref().as_ref()) {
            return Err(format!(
                "unknown key `{}` (expected {})",
                k.get_ref(),
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

/// `(scheme://, userinfo, rest)` of a URL, userinfo without its `@`.
fn split_url(url: &str) -> (&str, Option<&str>, &str) {
    let (scheme, after) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = after.find('/').unwrap_or(after.len());
    match after[..authority_end].rfind('@') {
        Some(at) => (scheme, Some(&after[..at]), &after[at + 1..]),
        None => (scheme, None, after),
    }
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A proxy given as a table, `{ url = "socks5://alice@host:1080",
/// password-file = "..." }`: the URL with the file's password in it.
pub(super) fn proxy_table(
    t: &DeTable<'_>,
    dir: &Path,
    pf: &mut PasswordFiles,
) -> Result<String, String> {
    only_keys(t, &["url", "password-file"])?;
    url_of_table(t, dir, pf)
}

/// A `--group` member given as a table, `{ name = "eu", url = "...",
/// password-file = "..." }`: the `NAME=URL` of `--group`.
pub(super) fn group_table(
    t: &DeTable<'_>,
    dir: &Path,
    pf: &mut PasswordFiles,
) -> Result<String, String> {
    only_keys(t, &["name", "url", "password-file"])?;
    let name = field(t, "name")?.ok_or("a group table needs `name`")?;
    Ok(format!("{name}={}", url_of_table(t, dir, pf)?))
}

/// The URL of a proxy table, with its password file's password in it.
fn url_of_table(t: &DeTable<'_>, dir: &Path, pf: &mut PasswordFiles) -> Result<String, String> {
    let url = field(t, "url")?.ok_or("a proxy table needs `url`")?;
    let Some(file) = field(t, "password-file")? else {
        check_proxy(url)?;
        return Ok(url.to_string());
    };
    let (scheme, userinfo, rest) = split_url(url);
    let user = match userinfo {
        Some(u) if u.contains(':') => {
            return Err("`url` has a password and `password-file` another: give one".into())
        }
        Some(u) if !u.is_empty() => u,
        _ => {
            return Err(
                "`password-file` needs a user name in `url` (socks5://USER@host:port)".into(),
            )
        }
    };
    let (path, password) = read_password(dir, file)?;
    pf.proxies.push((url.to_string(), path));
    Ok(format!("{scheme}{user}:{}@{rest}", encode(&password)))
}

/// A server user given as a table, `{ name = "alice", password-file = "..." }`:
/// the `NAME:PASSWORD` of `--user`.
pub(super) fn user_table(
    t: &DeTable<'_>,
    dir: &Path,
    pf: &mut PasswordFiles,
) -> Result<String, String> {
    only_keys(t, &["name", "password-file"])?;
    let name = field(t, "name")?.ok_or("a user table needs `name`")?;
    let file = field(t, "password-file")?.ok_or("a user table needs `password-file`")?;
    let (path, password) = read_password(dir, file)?;
    pf.users.push((name.to_string(), path));
    Ok(format!("{name}:{password}"))
}

/// A password printed masked and loaded back would be the wrong one.
fn masked() -> String {
    format!(
        "the password is masked ({MASK}, as --print-config prints it): put it in a password-file"
    )
}

/// Refuse a proxy URL whose password is the mask.
pub(super) fn check_proxy(url: &str) -> Result<(), String> {
    match split_url(url).1.and_then(|u| u.split_once(':')) {
        Some((_, p)) if p == MASK || p == encode(MASK) => Err(masked()),
        _ => Ok(()),
    }
}

/// Refuse a `NAME=URL` whose password is the mask.
pub(super) fn check_group(s: &str) -> Result<(), String> {
    check_proxy(s.split_once('=').map_or(s, |(_, u)| u))
}

/// Refuse a `NAME:PASSWORD` whose password is the mask.
pub(super) fn check_user(s: &str) -> Result<(), String> {
    match s.split_once(':') {
        Some((_, p)) if p == MASK => Err(masked()),
        _ => Ok(()),
    }
}

/// How a proxy URL is printed: its table when its password came from a file,
/// else the URL with any password masked.
pub(super) fn print_proxy(url: &str, pf: &PasswordFiles) -> toml::Value {
    let (scheme, userinfo, rest) = split_url(url);
    let Some((user, _)) = userinfo.and_then(|u| u.split_once(':')) else {
        return toml::Value::String(url.to_string());
    };
    let bare = format!("{scheme}{user}@{rest}");
    if let Some((_, path)) = pf.proxies.iter().find(|(u, _)| *u == bare) {
        return table(&[
            ("url", bare.as_str()),
            ("password-file", &*path.to_string_lossy()),
        ]);
    }
    toml::Value::String(format!("{scheme}{user}:{MASK}@{rest}"))
}

/// How a `NAME=URL` of `--group` is printed: as its URL would be, with the name.
pub(super) fn print_group(s: &str, pf: &PasswordFiles) -> toml::Value {
    let Some((name, url)) = s.split_once('=') else {
        return toml::Value::String(s.to_string());
    };
    match print_proxy(url, pf) {
        toml::Value::Table(mut t) => {
            t.insert("name".into(), toml::Value::String(name.to_string()));
            toml::Value::Table(t)
        }
        v => toml::Value::String(format!("{name}={}", v.as_str().unwrap_or(url))),
    }
}

/// How a `NAME:PASSWORD` is printed: its table when the password came from a
/// file, else masked.
pub(super) fn print_user(s: &str, pf: &PasswordFiles) -> toml::Value {
    let name = s.split_once(':').map_or(s, |(n, _)| n);
    match pf.users.iter().find(|(n, _)| n == name) {
        Some((_, path)) => table(&[("name", name), ("password-file", &*path.to_string_lossy())]),
        None => toml::Value::String(format!("{name}:{MASK}")),
    }
}

fn table(kv: &[(&str, &str)]) -> toml::Value {
    let mut t = toml::Table::new();
    for (k, v) in kv {
        t.insert(k.to_string(), toml::Value::String(v.to_string()));
    }
    toml::Value::Table(t)
}

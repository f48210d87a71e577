//! A device's settings as the kernel has them, and the few changes sockstun
//! makes to a device it did not create (only those the operator asked for by
//! flag), each recorded so that it is undone at exit.

use anyhow::{bail, Context as _};
use std::process::Command;

/// What an existing device looked like when sockstun opened it.
#[derive(Debug)]
pub struct Found {
    pub mtu: Option<u16>,
    pub up: bool,
    pub qlen: Option<u32>,
    /// Addresses as `ip` prints them (`198.18.0.1/30`, `2001:db8::1/64`).
    pub addrs: Vec<String>,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mtu = self.mtu.map_or("?".into(), |m| m.to_string());
        let qlen = self.qlen.map_or("?".into(), |q| q.to_string());
        let addrs = if self.addrs.is_empty() {
            "none".to_string()
        } else {
            self.addrs.join(" ")
        };
        let state = if self.up { "up" } else { "down" };
        write!(f, "{state}, mtu {mtu}, qlen {qlen}, addresses {addrs}")
    }
}

/// One change made to a device sockstun did not create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// Put this MTU back.
    Mtu(u16),
    /// Remove an address sockstun added (CIDR as `ip` takes it).
    DelAddr(String),
    /// The device was down: take it down again.
    Down,
}

fn sys(name: &str, attr: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/{attr}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// What a network device of some name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    Tun,
    /// A TAP device (Ethernet frames), which sockstun cannot read.
    Tap,
    /// Not made by the tun driver at all.
    Other,
}

/// What `name` is in this namespace.
pub fn kind(name: &str) -> Kind {
    if !std::path::Path::new("/sys/class/net").join(name).exists() {
        return Kind::Missing;
    }
    // IFF_TUN 0x0001, IFF_TAP 0x0002 (<linux/if_tun.h>).
    match sys(name, "tun_flags")
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
    {
        None => Kind::Other,
        Some(f) if f & 0x0002 != 0 => Kind::Tap,
        Some(_) => Kind::Tun,
    }
}

/// The changes made to a device sockstun did not create; dropping this
/// undoes them, so they are undone also when start-up fails half-way.
pub struct Changes {
    name: String,
    pub list: Vec<Undo>,
}

impl Changes {
    pub fn new(name: &str) -> Changes {
        Changes {
            name: name.to_string(),
            list: Vec::new(),
        }
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        undo_all(&self.name, &self.list);
    }
}

/// The device's MTU, from sysfs.
pub fn mtu(name: &str) -> Option<u16> {
    sys(name, "mtu")?.parse().ok()
}

/// Read what is configured on `name` now.
pub fn read(name: &str) -> Found {
    // IFF_UP is bit 0 of the interface flags (<linux/if.h>).
    let up = sys(name, "flags")
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & 1 != 0);
    let addrs = Command::new("ip")
        .args(["-o", "addr", "show", "dev", name])
        .output()
        .map(|o| parse_addrs(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    Found {
        mtu: mtu(name),
        up,
        qlen: sys(name, "tx_queue_len").and_then(|q| q.parse().ok()),
        addrs,
    }
}

/// The addresses in `ip -o addr show` output: the word after `inet`/`inet6`.
fn parse_addrs(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.by_ref().find(|&t| t == "inet" || t == "inet6")?;
            w.next().map(str::to_string)
        })
        .collect()
}

pub fn ip_cmd(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running `ip {}` (is iproute2 installed?)", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Add `cidr` to an existing device unless it is there already. Adding, not
/// replacing: the kernel drops every route through a device whose address
/// prefix changes, and the operator's routes must stay.
pub fn add_addr(name: &str, found: &Found, cidr: &str, undo: &mut Vec<Undo>) -> anyhow::Result<()> {
    if found.addrs.iter().any(|a| a == cidr) {
        return Ok(());
    }
    let v6 = cidr.contains(':');
    let mut args = vec![
        if v6 { "-6" } else { "-4" },
        "addr",
        "add",
        cidr,
        "dev",
        name,
    ];
    if v6 {
        args.push("nodad");
    }
    if let Err(e) = ip_cmd(&args) {
        // There already, in a form `ip -o` prints differently (a peer address).
        if format!("{e}").contains("File exists") {
            return Ok(());
        }
        return Err(e.context(format!("adding {cidr} to {name}")));
    }
    tracing::info!("{name}: added {cidr} (removed again at exit)");
    undo.push(Undo::DelAddr(cidr.to_string()));
    Ok(())
}

/// Set the MTU of an existing device, remembering the old one.
pub fn set_mtu(name: &str, found: &Found, mtu: u16, undo: &mut Vec<Undo>) -> anyhow::Result<()> {
    if found.mtu == Some(mtu) {
        return Ok(());
    }
    ip_cmd(&["link", "set", "dev", name, "mtu", &mtu.to_string()])
        .with_context(|| format!("setting the MTU of {name} to {mtu}"))?;
    if let Some(old) = found.mtu {
        tracing::info!("{name}: MTU {old} -> {mtu} (put back at exit)");
        undo.push(Undo::Mtu(old));
    }
    Ok(())
}

/// A down device carries nothing: bring it up, and down again at exit.
pub fn bring_up(name: &str, found: &Found, undo: &mut Vec<Undo>) -> anyhow::Result<()> {
    if found.up {
        return Ok(());
    }
    ip_cmd(&["link", "set", "dev", name, "up"]).with_context(|| format!("bringing {name} up"))?;
    tracing::info!("{name}: was down, brought up (down again at exit)");
    undo.push(Undo::Down);
    Ok(())
}

/// Undo `changes`, last first. Failures are logged: at exit there is nothing
/// else to do about them.
pub fn undo_all(name: &str, changes: &[Undo]) {
    for u in changes.iter().rev() {
        let r = match u {
            Undo::Mtu(m) => ip_cmd(&["link", "set", "dev", name, "mtu", &m.to_string()]),
            Undo::DelAddr(a) => ip_cmd(&["addr", "del", a, "dev", name]),
            Undo::Down => ip_cmd(&["link", "set", "dev", name, "down"]),
        };
        match r {
            Ok(()) => tracing::info!("{name}: undid {u:?}"),
            Err(e) => tracing::warn!("{name}: could not undo {u:?}: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_ip_o() {
        let text = "7: t0    inet 198.18.0.1/30 scope global t0\\       valid_lft forever preferred_lft forever\n\
                    7: t0    inet6 2001:db8:ff::1/64 scope global \\       valid_lft forever\n\
                    7: t0    inet6 fe80::1/64 scope link \\       valid_lft forever\n";
        assert_eq!(
            parse_addrs(text),
            ["198.18.0.1/30", "2001:db8:ff::1/64", "fe80::1/64"]
        );
        assert!(parse_addrs("").is_empty());
    }
}

//! The program's resolver: `/etc/resolv.conf` names the virtual DNS, through
//! a bind mount in the program's own mount namespace (the host's file is
//! never written). Local resolver caches whose sockets would reach the
//! host's resolver from any network namespace (systemd-resolved's varlink
//! socket, nscd) are hidden under an empty tmpfs, so the C library falls
//! back to `/etc/resolv.conf`.

use crate::dns::DnsMode;
use crate::tun::TunConfig;
use anyhow::{bail, Context as _};
use nix::mount::{mount, MsFlags};
use std::net::IpAddr;
use std::path::Path;

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Directories hidden under an empty tmpfs; with the files written into it
/// (systemd-resolved's stub files, which /etc/resolv.conf often links to).
const HIDDEN: &[(&str, &[&str])] = &[
    ("/run/systemd/resolve", &["stub-resolv.conf", "resolv.conf"]),
    ("/run/nscd", &[]),
];

/// The address the program's resolv.conf names: in virtual and tcp modes
/// sockstun answers any address routed into the TUN, and the one after the
/// TUN's own is inside its subnet (as scripts/route-up picks it); in udp
/// mode queries travel to the resolver named, so that is `--dns-upstream`.
pub fn nameserver(cfg: &TunConfig) -> anyhow::Result<IpAddr> {
    if cfg.dns.mode == DnsMode::Udp {
        return match cfg.dns.resolver {
            Some(r) if r.port() == 53 => Ok(r.ip()),
            Some(r) => bail!(
                "--dns udp with exec: resolv.conf cannot name port {} of --dns-upstream",
                r.port()
            ),
            None => bail!(
                "--dns udp with exec: give --dns-upstream ADDR, the resolver the program's \
                 /etc/resolv.conf names (reached through the proxy over UDP)"
            ),
        };
    }
    if let Some(v4) = cfg.ipv4 {
        let next = u32::from(v4.ip()).wrapping_add(1).into();
        if v4.contains(next) && next != v4.broadcast() {
            return Ok(IpAddr::V4(next));
        }
    }
    if let Some(v6) = cfg.ipv6 {
        let next = u128::from(v6.ip()).wrapping_add(1).into();
        if v6.contains(next) {
            return Ok(IpAddr::V6(next));
        }
    }
    bail!("exec needs room for the DNS address in the TUN's subnet: give --ipv4 or --ipv6 a prefix of /30 or shorter")
}

/// The program's resolv.conf: `nameserver` only, with the host's `search`,
/// `domain` and `options` lines kept (short names resolve as on the host).
pub fn content(host: &str, nameserver: IpAddr) -> String {
    let mut out =
        String::from("# sockstun exec: every name is resolved through the proxy (virtual DNS)\n");
    out += &format!("nameserver {nameserver}\n");
    for line in host.lines() {
        let word = line.split_whitespace().next().unwrap_or("");
        if matches!(word, "search" | "domain" | "options") {
            out += line.trim();
            out.push('\n');
        }
    }
    out
}

/// In the program's mount namespace (already private): hide the local
/// caches, then bind the generated file over /etc/resolv.conf (over what it
/// links to, if a link).
pub fn install(nameserver: IpAddr) -> anyhow::Result<()> {
    let host = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    let text = content(&host, nameserver);
    for (dir, files) in HIDDEN {
        if !Path::new(dir).is_dir() || Path::new(dir).is_symlink() {
            continue;
        }
        mount(
            Some("tmpfs"),
            *dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=64k"),
        )
        .with_context(|| format!("hiding {dir} under a tmpfs"))?;
        for f in *files {
            let p = Path::new(dir).join(f);
            std::fs::write(&p, &text).with_context(|| format!("writing {}", p.display()))?;
        }
    }
    let target = std::fs::canonicalize(RESOLV_CONF).with_context(|| {
        format!("{RESOLV_CONF} (or what it links to) is missing: exec binds the program's over it")
    })?;
    // The source of a bind mount must be a file in this mount tree: a
    // temporary one, removed at once (the mount keeps it).
    let src = std::env::temp_dir().join(format!("sockstun-resolv.{}", std::process::id()));
    std::fs::write(&src, &text).with_context(|| format!("writing {}", src.display()))?;
    let r = mount(
        Some(&src),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    );
    let _ = std::fs::remove_file(&src);
    r.with_context(|| {
        format!(
            "bind-mounting the program's resolv.conf over {}",
            target.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn cfg(extra: &[&str]) -> TunConfig {
        let mut argv = vec!["sockstun", "tun", "--proxy", "socks5://127.0.0.1:1080"];
        argv.extend_from_slice(extra);
        let Command::Tun(a) = Cli::parse_from(argv).command else {
            unreachable!()
        };
        TunConfig::from_args(&a).unwrap()
    }

    #[test]
    fn nameserver_is_after_the_tun_address() {
        assert_eq!(nameserver(&cfg(&[])).unwrap().to_string(), "198.18.0.2");
        let c = cfg(&["--ipv4", "10.9.0.1/24"]);
        assert_eq!(nameserver(&c).unwrap().to_string(), "10.9.0.2");
        // The next address is the broadcast: IPv6 then.
        let c = cfg(&["--ipv4", "10.9.0.2/30", "--ipv6", "2001:2::1/64"]);
        assert_eq!(nameserver(&c).unwrap().to_string(), "2001:2::2");
        let c = cfg(&["--ipv4", "none", "--ipv6", "2001:2::1/64"]);
        assert_eq!(nameserver(&c).unwrap().to_string(), "2001:2::2");
        assert!(nameserver(&cfg(&["--ipv4", "10.9.0.1/32"])).is_err());
        let c = cfg(&["--dns", "udp", "--dns-upstream", "192.0.2.53"]);
        assert_eq!(nameserver(&c).unwrap().to_string(), "192.0.2.53");
        assert!(nameserver(&cfg(&["--dns", "udp"])).is_err());
        let c = cfg(&["--dns", "udp", "--dns-upstream", "192.0.2.53:5353"]);
        assert!(nameserver(&c).is_err());
    }

    #[test]
    fn content_names_only_the_virtual_dns() {
        let host = "# generated\nnameserver 127.0.0.53\nnameserver ::1\n\
                    search corp.example\n  options edns0 trust-ad\nsortlist 10.0.0.0\n";
        let c = content(host, "198.18.0.2".parse().unwrap());
        let lines: Vec<&str> = c.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "nameserver 198.18.0.2",
                "search corp.example",
                "options edns0 trust-ad"
            ]
        );
        assert!(content("", "2001:2::2".parse().unwrap()).contains("nameserver 2001:2::2\n"));
    }
}

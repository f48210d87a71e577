//! Command line: the `server` and `tun` subcommands. Each mode validates its
//! own arguments into a config at start (see `server::run`, `tun::run`).

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "sockstun",
    version,
    about = "TUN-to-SOCKS socksifier and SOCKS4/4a/5 server"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax); SOCKSTUN_LOG overrides it.
    #[arg(long = "log", global = true, default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start and taken apart at once: the size of the largest
// variant costs nothing, and boxing it would only add noise to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a SOCKS4/4a/5 server.
    Server(ServerArgs),
    /// Route packets from a TUN device through upstream proxies (SOCKS, HTTP CONNECT).
    Tun(TunArgs),
    /// Test a proxy step by step (connect, greeting, authentication, CONNECT,
    /// UDP ASSOCIATE, pipelining), with the time of each; exit status 0 when
    /// every step that ran passed, 1 otherwise.
    Check(CheckArgs),
    /// Run one program with all its traffic (TCP, UDP, DNS, IPv4 and IPv6)
    /// through the proxies, in a network namespace of its own: nothing of
    /// the host's network changes. Exit status: the program's (128+N if
    /// signal N ended it).
    Exec(ExecArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page (roff), as in sockstun man > sockstun.1; with a
    /// subcommand, its own page (sockstun-tun.1).
    Man(ManArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The proxy: socks5://[user:pass@]host:port, socks5h://, socks4://,
    /// socks4a://, http://.
    #[arg(value_name = "URL")]
    pub url: String,
    /// HOST:PORT to CONNECT to through the proxy (repeatable): an address is
    /// sent as an address, a name as a name (never resolved here). Give both
    /// to test both.
    #[arg(long = "target", value_name = "HOST:PORT")]
    pub targets: Vec<String>,
    /// HOST:PORT of a UDP echo to send one datagram to through UDP ASSOCIATE
    /// (a proxy without UDP is then a failure).
    #[arg(long = "udp", value_name = "HOST:PORT")]
    pub udp: Option<String>,
    /// Seconds each step may take.
    #[arg(long = "timeout", default_value_t = 5, value_parser = number::<u64>)]
    pub timeout: u64,
    /// Mark the sockets towards the proxy (SO_MARK), as `sockstun tun --fwmark`.
    #[arg(long = "fwmark", value_parser = fwmark)]
    pub fwmark: Option<u32>,
    /// Bind the sockets towards the proxy to this interface (SO_BINDTODEVICE).
    #[arg(long = "bind-interface")]
    pub bind_interface: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug, Clone)]
pub struct ManArgs {
    /// A subcommand's page instead of the main one (sockstun-SUBCOMMAND(1)).
    #[arg(value_name = "SUBCOMMAND")]
    pub subcommand: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Address to listen on (repeatable).
    #[arg(long = "listen", default_value = "127.0.0.1:1080")]
    pub listen: Vec<SocketAddr>,
    /// A user as NAME:PASSWORD (repeatable). Any user makes SOCKS5 auth mandatory.
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// File of NAME:PASSWORD lines ('#' comments).
    #[arg(long = "users-file")]
    pub users_file: Option<PathBuf>,
    /// Client networks allowed to connect (repeatable CIDR). Default: anyone who can reach the listener.
    #[arg(long = "allow-client")]
    pub allow_client: Vec<String>,
    /// Destinations allowed even if the default deny list covers them (repeatable CIDR).
    #[arg(long = "allow-dest")]
    pub allow_dest: Vec<String>,
    /// Extra destinations to refuse (repeatable CIDR).
    #[arg(long = "deny-dest")]
    pub deny_dest: Vec<String>,
    /// Maximum concurrent relaying sessions [default: from the open-file
    /// limit, which is raised to its hard limit at start].
    #[arg(long = "max-clients", value_parser = number::<usize>)]
    pub max_clients: Option<usize>,
    /// Connections still in the SOCKS handshake: a budget apart from
    /// --max-clients [default: a quarter of --max-clients].
    #[arg(long = "max-handshakes", value_parser = number::<usize>)]
    pub max_handshakes: Option<usize>,
    /// One client address's (IPv4, or IPv6 /64) share of --max-handshakes:
    /// when the budget is full, an address holding more makes room for
    /// others at once, and its own newcomers are closed until its
    /// handshakes stall [default: half of --max-handshakes].
    #[arg(long = "max-handshakes-per-source", value_parser = number::<usize>)]
    pub max_handshakes_per_source: Option<usize>,
    /// Seconds a client has to complete the SOCKS handshake.
    #[arg(long = "handshake-timeout", default_value_t = 10, value_parser = number::<u64>)]
    pub handshake_timeout: u64,
    /// Seconds a relayed connection or UDP association may stay idle.
    #[arg(long = "idle-timeout", default_value_t = 300, value_parser = number::<u64>)]
    pub idle_timeout: u64,
    /// Seconds to wait for the outgoing connection.
    #[arg(long = "connect-timeout", default_value_t = 10, value_parser = number::<u64>)]
    pub connect_timeout: u64,
    /// Seconds BIND waits for the incoming connection.
    #[arg(long = "bind-timeout", default_value_t = 60, value_parser = number::<u64>)]
    pub bind_timeout: u64,
    /// The config file and the admin endpoint.
    #[command(flatten)]
    pub ops: OperateArgs,
    /// Access rules of the config file (`[[rule]]` tables): no flag.
    #[arg(skip)]
    pub rules: Vec<crate::server::rules::RuleSpec>,
}

#[derive(Args, Debug, Clone)]
pub struct TunArgs {
    /// Upstream proxy: socks5://[user:pass@]host:port, socks5h://, socks4://,
    /// socks4a://, http:// (HTTP CONNECT, TCP only). Give it several times for
    /// a group with failover (--proxy-policy).
    #[arg(long = "proxy", required_unless_present = "rules_test")]
    pub proxy: Vec<String>,
    /// How a group of proxies is used: failover (the first healthy one, in
    /// the order given), round-robin, hash (the same destination host always
    /// through the same proxy) or fastest (lowest probe latency).
    #[arg(long = "proxy-policy", default_value = "failover")]
    pub proxy_policy: String,
    /// Seconds between health probes of each proxy (connect, greeting,
    /// authentication) [default: 10 with several proxies; with one, no probes
    /// unless given].
    #[arg(long = "health-interval", value_parser = number::<u64>)]
    pub health_interval: Option<u64>,
    /// HOST:PORT the health probes also CONNECT to through each proxy.
    #[arg(long = "health-target")]
    pub health_target: Option<String>,
    /// A named group of proxies for rules (`=> proxy:NAME`): NAME=URL, URL
    /// as --proxy takes it (repeatable; the same NAME again adds a member, in
    /// failover order). It has --proxy's policy and health settings.
    #[arg(long = "group", value_name = "NAME=URL")]
    pub group: Vec<String>,
    /// Routing rule `MATCH... => ACTION` (repeatable; the first rule that
    /// holds wins, these before --rules-file's). Matches, all of which must
    /// hold: domain:NAME, suffix:NAME (the name and those below it),
    /// keyword:TEXT, cidr:NET, port:N or port:N-M, src:NET, tcp, udp.
    /// Actions: proxy, proxy:GROUP (a --group), direct (from this host, with
    /// --fwmark and --bind-interface), block. Name matches see the name behind a virtual
    /// DNS address only.
    #[arg(long = "rule", value_name = "RULE")]
    pub rule: Vec<String>,
    /// File of rules, one a line as --rule, `#` comments; read again at SIGHUP
    /// with --config.
    #[arg(long = "rules-file", value_name = "FILE")]
    pub rules_file: Option<PathBuf>,
    /// What flows no rule matches get: proxy, proxy:GROUP, direct or block.
    #[arg(long = "default-action", default_value = "proxy")]
    pub default_action: String,
    /// Resolver (ADDR or ADDR:PORT; repeatable) for the names a direct rule
    /// sends from this host [default: the nameservers of /etc/resolv.conf
    /// when sockstun starts].
    #[arg(long = "direct-dns", value_name = "ADDR")]
    pub direct_dns: Vec<String>,
    /// Print the way and the rule a destination (NAME, ADDR, NAME:PORT,
    /// ADDR:PORT) gets, for TCP and UDP, and exit; nothing is started
    /// (repeatable).
    #[arg(long = "rules-test", value_name = "DEST")]
    pub rules_test: Vec<String>,
    /// TUN device to create, or to open if it exists. A created device gets
    /// --ipv4/--ipv6/--mtu (or their defaults) and is removed at exit; an
    /// existing one keeps its addresses, MTU, queue and routes, and only
    /// what a flag names is changed (addresses added, not replaced), then
    /// undone at exit.
    #[arg(long = "device", default_value = "sockstun0", conflicts_with = "fd")]
    pub device: String,
    /// Adopt an already open TUN file descriptor.
    #[arg(long = "fd", value_parser = number::<i32>)]
    pub fd: Option<i32>,
    /// IPv4 address/prefix for the device [default: 198.18.0.1/15 on a device
    /// sockstun creates; an existing device is left as it is unless given].
    /// "none" for no IPv4 address.
    #[arg(long = "ipv4")]
    pub ipv4: Option<String>,
    /// IPv6 address/prefix for the device (added to an existing device, and
    /// removed again at exit).
    #[arg(long = "ipv6")]
    pub ipv6: Option<String>,
    /// Device MTU [default: 65000 on a device sockstun creates; an existing
    /// device keeps its own unless given, and gets it back at exit].
    #[arg(long = "mtu", value_parser = number::<u16>)]
    pub mtu: Option<u16>,
    /// Mark every socket towards the proxy with SO_MARK (policy routing
    /// exemption); decimal or 0x hex, as `ip rule` and nft write it.
    #[arg(long = "fwmark", value_parser = fwmark)]
    pub fwmark: Option<u32>,
    /// Bind every socket towards the proxy to this interface (SO_BINDTODEVICE).
    #[arg(long = "bind-interface")]
    pub bind_interface: Option<String>,
    /// DNS handling: virtual, tcp or udp.
    #[arg(long = "dns", default_value = "virtual")]
    pub dns: String,
    /// DNS server (ADDR or ADDR:PORT) reached through the proxy over TCP.
    #[arg(long = "dns-upstream")]
    pub dns_upstream: Option<String>,
    /// Fake IPv4 pool for virtual DNS.
    #[arg(long = "dns-pool4", default_value = "198.19.0.0/16")]
    pub dns_pool4: String,
    /// Fake IPv6 pool for virtual DNS.
    #[arg(long = "dns-pool6", default_value = "fc00:5::/96")]
    pub dns_pool6: String,
    /// Idle timeout of a UDP association, seconds.
    #[arg(long = "udp-timeout", default_value_t = 60, value_parser = number::<u64>)]
    pub udp_timeout: u64,
    /// Maximum number of UDP associations.
    #[arg(long = "max-udp-flows", default_value_t = 1024, value_parser = number::<usize>)]
    pub max_udp_flows: usize,
    /// Maximum number of concurrent TCP flows.
    #[arg(long = "max-tcp-flows", default_value_t = 65536, value_parser = number::<usize>)]
    pub max_tcp_flows: usize,
    /// Seconds to wait for the proxy to accept a CONNECT.
    #[arg(long = "connect-timeout", default_value_t = 10, value_parser = number::<u64>)]
    pub connect_timeout: u64,
    /// SOCKS5: always send greeting, credentials and request in one write
    /// (one round trip instead of two or three), without asking the proxy
    /// first. With credentials only username/password is offered. [default:
    /// each proxy is asked once in the background whether it takes it (dante
    /// and sockstun server do, microsocks does not) and dials are pipelined
    /// when it does]
    #[arg(long = "socks-pipeline", conflicts_with = "no_socks_pipeline")]
    pub socks_pipeline: bool,
    /// SOCKS5: never pipeline the handshake, nor ask the proxy whether it
    /// takes it.
    #[arg(long = "no-socks-pipeline")]
    pub no_socks_pipeline: bool,
    /// Connections kept ready (connected, greeted, authenticated) to each
    /// SOCKS proxy, so a new flow sends only its request: one round trip to
    /// the proxy. Each is replaced after 7 s (before a server's handshake
    /// timeout); the pool is kept full while flows came in the last 5
    /// minutes. 0: no pool.
    #[arg(long = "warm", default_value_t = 4, value_parser = number::<usize>)]
    pub warm: usize,
    /// Do not ask the TUN for checksum and segmentation offload (virtio-net
    /// headers): one packet of at most the MTU per read, as without it.
    #[arg(long = "no-offload")]
    pub no_offload: bool,
    /// Queues of the TUN, each read by a thread of its own with its own
    /// stack and flow table (the kernel keeps each flow on one queue): the
    /// device is opened multi-queue (IFF_MULTI_QUEUE) when more than 1. An
    /// existing device is opened as it was made: a single-queue one with 1.
    /// `--fd` uses 1. [default: half the CPUs this process may run on, at
    /// least 1, at most 8]
    #[arg(long = "queues", value_parser = number::<usize>)]
    pub queues: Option<usize>,
    /// The other queues of the device `--fd` is one queue of (`sockstun
    /// exec` passes them); not a flag.
    #[arg(skip)]
    pub queue_fds: Vec<i32>,
    /// The config file and the admin endpoint.
    #[command(flatten)]
    pub ops: OperateArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// Every option of `sockstun tun` (the device is made inside the
    /// program's namespace; --ipv6 defaults to 2001:2::1/64 there).
    #[command(flatten)]
    pub tun: TunArgs,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// What `sockstun exec` tells its namespace side, `sockstun exec-child`:
/// internal (sockstun runs it itself), so not a subcommand of `Cli`, which
/// would show it in the completions and help.
#[derive(Parser, Debug, Clone)]
#[command(name = "sockstun exec-child")]
pub struct ExecChildArgs {
    #[arg(long = "log", default_value = "info")]
    pub log: String,
    /// The inherited socket to sockstun (SOCK_SEQPACKET).
    #[arg(long = "sock", value_parser = number::<i32>)]
    pub sock: i32,
    #[arg(long = "device")]
    pub device: String,
    #[arg(long = "ipv4")]
    pub ipv4: Option<String>,
    #[arg(long = "ipv6")]
    pub ipv6: Option<String>,
    #[arg(long = "mtu", value_parser = number::<u16>)]
    pub mtu: u16,
    #[arg(long = "offload")]
    pub offload: bool,
    /// Queues to make (a multi-queue device when more than 1).
    #[arg(long = "queues", default_value_t = 1, value_parser = number::<usize>)]
    pub queues: usize,
    /// The address /etc/resolv.conf names (the virtual DNS).
    #[arg(long = "nameserver")]
    pub nameserver: std::net::IpAddr,
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// What both modes take to be operated: the config file (and what it read
/// that has no flag) and the admin endpoint.
#[derive(Args, Debug, Clone)]
pub struct OperateArgs {
    /// Serve /metrics (Prometheus), /flows (JSON) and /health over HTTP on
    /// ADDR:PORT [default: off]. Loopback only unless --admin-public.
    #[arg(long = "admin")]
    pub admin: Option<SocketAddr>,
    /// Allow --admin on a non-loopback address (it shows every flow).
    #[arg(long = "admin-public", requires = "admin")]
    pub admin_public: bool,
    /// TOML file of this mode's settings, each key named as its flag
    /// (`mtu = 1500`; repeatable flags as arrays); a flag given here
    /// overrides the file. SIGHUP reloads it (docs/operations.md).
    #[arg(long = "config")]
    pub config: Option<PathBuf>,
    /// Validate the config file and flags, then exit: 0 if they are valid,
    /// 1 (with the reason) if not. Nothing is started.
    #[arg(long = "check-config")]
    pub check_config: bool,
    /// Print the effective configuration (file, flags and defaults) as TOML,
    /// passwords masked, and exit.
    #[arg(long = "print-config")]
    pub print_config: bool,
    /// Passwords read from files named in the config file (`password-file`),
    /// so --print-config can name the file instead of the password.
    #[arg(skip)]
    pub password_files: crate::config::secret::PasswordFiles,
}

/// An integer as the surrounding tools write it: decimal, or hexadecimal after
/// `0x` (`ip rule` prints marks as `0x438`, nft and systemd units pass them on).
pub fn number<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    let t = s.trim();
    let (digits, radix) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (t, 10),
    };
    // from_str_radix would take a sign; a number here never has one.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(format!("{s:?} is not a number (decimal, or hex as 0x1f)"));
    }
    // `ip` (strtoul, base 0) reads a leading 0 as octal: refuse the ambiguity.
    if radix == 10 && digits.len() > 1 && digits.starts_with('0') {
        return Err(format!(
            "{s:?}: a leading 0 reads as octal to `ip`; write it without, or in hex (0x...)"
        ));
    }
    let v = u64::from_str_radix(digits, radix).map_err(|_| format!("{s:?} is too large"))?;
    T::try_from(v).map_err(|_| format!("{s:?} is out of range"))
}

/// A firewall mark: a non-zero 32-bit number (0 would mark nothing).
fn fwmark(s: &str) -> Result<u32, String> {
    match number::<u32>(s)? {
        0 => Err("0 marks nothing: give a non-zero mark, e.g. 0x438".into()),
        m => Ok(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn numbers_decimal_and_hex() {
        assert_eq!(number::<u32>("1080"), Ok(1080));
        assert_eq!(number::<u32>("0x438"), Ok(0x438));
        assert_eq!(number::<u32>("0X438"), Ok(0x438));
        assert_eq!(number::<u32>("0xffffffff"), Ok(u32::MAX));
        assert!(number::<u32>("0x1_0000_0000").is_err());
        assert!(number::<u32>("0x100000000").is_err());
        assert!(number::<u16>("65536").is_err());
        assert_eq!(number::<u32>("0"), Ok(0));
        assert_eq!(number::<u32>("0x0438"), Ok(0x438));
        for bad in [
            "", "0x", "-1", "+1", "1e3", "0x-1", "12a", "0b101", "010", "00",
        ] {
            assert!(number::<u32>(bad).is_err(), "{bad:?}");
        }
        assert_eq!(number::<i32>("0x7fffffff"), Ok(i32::MAX));
        assert!(number::<i32>("0x80000000").is_err());
        assert!(fwmark("0").is_err() && fwmark("0x0").is_err());
    }

    #[test]
    fn every_numeric_flag_takes_hex() {
        let cli = Cli::parse_from([
            "sockstun",
            "tun",
            "--proxy",
            "socks5://127.0.0.1:1",
            "--fwmark",
            "0x438",
            "--mtu",
            "0x5dc",
            "--max-tcp-flows",
            "0x10",
            "--udp-timeout",
            "0x3c",
            "--fd",
            "0x3",
        ]);
        let Command::Tun(t) = cli.command else {
            unreachable!()
        };
        assert_eq!(t.fwmark, Some(1080));
        assert_eq!(t.mtu, Some(1500));
        assert_eq!((t.max_tcp_flows, t.udp_timeout, t.fd), (16, 60, Some(3)));
        let cli = Cli::parse_from(["sockstun", "server", "--max-clients", "0x1388"]);
        let Command::Server(a) = cli.command else {
            unreachable!()
        };
        assert_eq!(a.max_clients, Some(5000));
        assert!(Cli::try_parse_from(["sockstun", "tun", "--proxy", "x", "--fwmark", "0"]).is_err());
    }
}

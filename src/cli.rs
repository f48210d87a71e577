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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a SOCKS4/4a/5 server.
    Server(ServerArgs),
    /// Route packets from a TUN device through an upstream SOCKS server.
    Tun(TunArgs),
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
    /// Maximum concurrent client connections.
    #[arg(long = "max-clients", default_value_t = 1024)]
    pub max_clients: usize,
    /// Seconds a client has to complete the SOCKS handshake.
    #[arg(long = "handshake-timeout", default_value_t = 10)]
    pub handshake_timeout: u64,
    /// Seconds a relayed connection or UDP association may stay idle.
    #[arg(long = "idle-timeout", default_value_t = 300)]
    pub idle_timeout: u64,
    /// Seconds to wait for the outgoing connection.
    #[arg(long = "connect-timeout", default_value_t = 10)]
    pub connect_timeout: u64,
    /// Seconds BIND waits for the incoming connection.
    #[arg(long = "bind-timeout", default_value_t = 60)]
    pub bind_timeout: u64,
}

#[derive(Args, Debug, Clone)]
pub struct TunArgs {
    /// Upstream proxy: socks5://[user:pass@]host:port, socks5h://, socks4://, socks4a://.
    #[arg(long = "proxy")]
    pub proxy: String,
    /// TUN device name to create or open.
    #[arg(long = "device", default_value = "sockstun0", conflicts_with = "fd")]
    pub device: String,
    /// Adopt an already open TUN file descriptor.
    #[arg(long = "fd")]
    pub fd: Option<i32>,
    /// IPv4 address/prefix for the device.
    #[arg(long = "ipv4", default_value = "198.18.0.1/15")]
    pub ipv4: String,
    /// IPv6 address/prefix for the device.
    #[arg(long = "ipv6")]
    pub ipv6: Option<String>,
    /// Device MTU.
    #[arg(long = "mtu", default_value_t = 65000)]
    pub mtu: u16,
    /// Mark every socket towards the proxy with SO_MARK (policy routing exemption).
    #[arg(long = "fwmark")]
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
    #[arg(long = "udp-timeout", default_value_t = 60)]
    pub udp_timeout: u64,
    /// Maximum number of UDP associations.
    #[arg(long = "max-udp-flows", default_value_t = 1024)]
    pub max_udp_flows: usize,
    /// Maximum number of concurrent TCP flows.
    #[arg(long = "max-tcp-flows", default_value_t = 65536)]
    pub max_tcp_flows: usize,
    /// Seconds to wait for the proxy to accept a CONNECT.
    #[arg(long = "connect-timeout", default_value_t = 10)]
    pub connect_timeout: u64,
    /// SOCKS5: send greeting, credentials and request in one write (one round
    /// trip instead of two or three). dante and sockstun server take it;
    /// servers that drop bytes after the greeting (microsocks) hang. With
    /// credentials only username/password is offered.
    #[arg(long = "socks-pipeline")]
    pub socks_pipeline: bool,
    /// Do not ask the TUN for checksum and segmentation offload (virtio-net
    /// headers): one packet of at most the MTU per read, as without it.
    #[arg(long = "no-offload")]
    pub no_offload: bool,
}

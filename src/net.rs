//! Outgoing sockets towards the proxy, with the options policy routing needs.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::SocketAddr;

/// Raise the soft open-file limit to the hard one. Every relayed flow or
/// client holds at least one descriptor towards the other side, so the
/// common soft limit of 1024 would cap either mode at about a thousand.
/// Returns the limit now in force, or an error when it could not be raised.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// Options applied to every socket sockstun opens towards its upstream, so that
/// policy routing can exempt sockstun's own traffic (fwmark) or pin it to an
/// interface (SO_BINDTODEVICE) whatever the proxy's address is.
#[derive(Debug, Clone, Default)]
pub struct SocketOpts {
    pub fwmark: Option<u32>,
    pub bind_interface: Option<String>,
}

impl SocketOpts {
    fn apply(&self, s: &Socket) -> io::Result<()> {
        if let Some(mark) = self.fwmark {
            s.set_mark(mark)?;
        }
        if let Some(dev) = &self.bind_interface {
            s.bind_device(Some(dev.as_bytes()))?;
        }
        Ok(())
    }

    /// A non-blocking TCP socket ready to `connect` to `dest`.
    pub fn tcp_socket(&self, dest: SocketAddr) -> io::Result<tokio::net::TcpSocket> {
        // Created non-blocking (SOCK_NONBLOCK): two fcntl calls fewer per
        // flow, which counts when connections are short.
        let s = Socket::new(
            Domain::for_address(dest),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        s.set_tcp_nodelay(true)?;
        self.apply(&s)?;
        Ok(tokio::net::TcpSocket::from_std_stream(s.into()))
    }

    /// Connect a TCP stream to `dest` with these options.
    pub async fn connect_tcp(&self, dest: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        // TCP_NODELAY was set on the socket before connecting and stays.
        self.tcp_socket(dest)?.connect(dest).await
    }

    /// A UDP socket bound to `local` with these options.
    pub fn udp_socket(&self, local: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        self.udp(local, false)
    }

    /// An IPv6 UDP socket bound to `local` that also sends to and receives
    /// from IPv4 (as ::ffff:a.b.c.d), whatever net.ipv6.bindv6only says.
    pub fn udp_socket_dual(&self, local: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        self.udp(local, true)
    }

    fn udp(&self, local: SocketAddr, dual: bool) -> io::Result<tokio::net::UdpSocket> {
        let s = Socket::new(
            Domain::for_address(local),
            Type::DGRAM.nonblocking(),
            Some(Protocol::UDP),
        )?;
        if dual {
            s.set_only_v6(false)?;
        }
        self.apply(&s)?;
        s.bind(&SockAddr::from(local))?;
        tokio::net::UdpSocket::from_std(s.into())
    }
}

/// The soft open-file limit in force (1024 if it cannot be read).
pub fn fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// An IPv4-mapped IPv6 address as plain IPv4 (`::ffff:a.b.c.d` → `a.b.c.d`).
pub fn unmap(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::IpAddr;
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::unmap;
    use std::net::IpAddr;

    #[test]
    fn unmap_mapped() {
        assert_eq!(
            unmap("::ffff:127.0.0.1".parse().unwrap()),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            unmap("::1".parse().unwrap()),
            "::1".parse::<IpAddr>().unwrap()
        );
    }
}

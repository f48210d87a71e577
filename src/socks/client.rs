//! Dial through an upstream SOCKS server: CONNECT, UDP ASSOCIATE, auth.
//!
//! Used by TUN mode for every flow. A domain target is never resolved here
//! (that would leak the name to the local resolver): SOCKS4a and SOCKS5 carry
//! the name to the proxy, plain SOCKS4 refuses it.
//!
//! Every socket towards the proxy is made with `Proxy::opts` (fwmark,
//! bind-interface), so policy routing can keep sockstun's own traffic out of
//! the TUN. The proxy itself (`Proxy`, `ProxyKind`) is described in `url`,
//! with the URL syntax it is written in; it is re-exported here.

use super::codec::{self, cmd, method, Reply};
pub use super::error::DialError;
use super::handshake::{ReadError, Reader};
use super::TargetAddr;
pub use crate::proxy::{Proxy, ProxyKind, UrlError};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UdpSocket};

fn proto(e: impl fmt::Display) -> DialError {
    DialError::Protocol(e.to_string())
}

fn read_err(e: io::Error) -> DialError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        DialError::Protocol("proxy closed the connection during the handshake".into())
    } else {
        DialError::Protocol(format!("handshake: {e}"))
    }
}

/// Open a TCP connection to the first of the proxy's addresses that answers.
pub async fn connect_proxy(up: &Proxy) -> Result<TcpStream, DialError> {
    up.connect_tcp().await.map_err(DialError::ProxyUnreachable)
}

/// Refuse before connecting what the dialect cannot carry.
pub fn check_carriable(kind: ProxyKind, dest: &TargetAddr) -> Result<(), DialError> {
    match (kind, dest) {
        (ProxyKind::Socks4 | ProxyKind::Socks4a, TargetAddr::Ip(SocketAddr::V6(_))) => {
            Err(DialError::AddrTypeNotSupported)
        }
        // Resolving here would leak the name to the local resolver.
        (ProxyKind::Socks4, TargetAddr::Domain(..)) => Err(DialError::AddrTypeNotSupported),
        _ => Ok(()),
    }
}

/// The proxy's side of a handshake, read with the shared reader
/// (`handshake::Reader`, which reads each reply whole). Bytes past the last
/// reply are the target's first data (a server that speaks first, or a proxy
/// that sent its reply and the target's banner together): they are handed
/// on, never lost.
struct Replies {
    /// Larger than any reply (a SOCKS5 reply with a name is at most 262 bytes).
    r: Reader<512>,
    /// SOCKS5 is spoken (a cut-short `VER REP` means something only there).
    socks5: bool,
}

impl Replies {
    fn new(socks5: bool) -> Replies {
        Replies {
            r: Reader::new(),
            socks5,
        }
    }

    /// The next reply, parsed by `parse`, reading from `s` until it is whole.
    async fn next<S: AsyncRead + Unpin, T>(
        &mut self,
        s: &mut S,
        parse: fn(&[u8]) -> codec::Parsed<T>,
    ) -> Result<T, DialError> {
        self.r.next(s, parse).await.map_err(|e| match e {
            ReadError::Codec(e) => proto(e),
            ReadError::TooLong => proto("reply longer than any SOCKS reply"),
            ReadError::Closed => self.eof(),
            ReadError::Io(e) => read_err(e),
        })
    }

    /// The proxy closed before a whole reply. A SOCKS5 failure code that made
    /// it (some servers send only `VER REP` and close) is still the answer.
    fn eof(&self) -> DialError {
        match self.r.pending() {
            [5, rep, ..] if self.socks5 && *rep != Reply::Succeeded.socks5() => {
                DialError::from_socks5_reply(*rep)
            }
            _ => read_err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// What came after the last reply.
    fn rest(&self) -> Vec<u8> {
        self.r.pending().to_vec()
    }
}

/// Run the SOCKS handshake for `command` on an open connection to the proxy.
/// Returns the bound address of the (first) reply, and the target's bytes
/// that arrived with it (usually none), which come before anything still in
/// the stream.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    up: &Proxy,
    command: u8,
    dest: &TargetAddr,
) -> Result<(TargetAddr, Vec<u8>), DialError> {
    handshake_as(s, up, command, dest, up.pipeline).await
}

/// `handshake`, SOCKS5 pipelined or not as `pipelined` says (whatever
/// `up.pipeline` is): the upstream decides per dial what it learned.
pub async fn handshake_as<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    up: &Proxy,
    command: u8,
    dest: &TargetAddr,
    pipelined: bool,
) -> Result<(TargetAddr, Vec<u8>), DialError> {
    check_carriable(up.kind, dest)?;
    let mut r = Replies::new(up.kind.is_socks5());
    if !up.kind.is_socks5() {
        let uid = up
            .auth
            .as_ref()
            .map(|(u, _)| u.as_bytes())
            .unwrap_or_default();
        let req = codec::encode_socks4_request(command, dest, uid)
            .map_err(|_| DialError::AddrTypeNotSupported)?;
        s.write_all(&req).await.map_err(read_err)?;
        let reply = read_socks4_reply(s, &mut r).await?;
        return Ok((TargetAddr::Ip(reply.into()), r.rest()));
    }

    if pipelined {
        let bound = handshake_pipelined(s, &mut r, up, command, dest).await?;
        return Ok((bound, r.rest()));
    }
    greet(s, &mut r, up).await?;
    let bound = request(s, &mut r, command, dest).await?;
    Ok((bound, r.rest()))
}

/// The SOCKS5 greeting and, when the proxy asks for it, authentication.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    r: &mut Replies,
    up: &Proxy,
) -> Result<(), DialError> {
    let chosen = offer_methods(s, r, up).await?;
    authenticate(s, r, up, chosen).await.map(drop)
}

/// The SOCKS5 greeting: offer no authentication, and username/password too
/// when we have credentials; the proxy's choice, as it came.
async fn offer_methods<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    r: &mut Replies,
    up: &Proxy,
) -> Result<u8, DialError> {
    let methods: &[u8] = if up.auth.is_some() {
        &[method::NO_AUTH, method::USER_PASS]
    } else {
        &[method::NO_AUTH]
    };
    s.write_all(&codec::encode_greeting(methods))
        .await
        .map_err(read_err)?;
    r.next(s, codec::parse_method_choice).await
}

/// What the proxy's `chosen` method asks for: nothing, or our RFC 1929
/// credentials. True when credentials were sent and accepted.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    r: &mut Replies,
    up: &Proxy,
    chosen: u8,
) -> Result<bool, DialError> {
    match (chosen, &up.auth) {
        (method::NO_AUTH, _) => Ok(false),
        (method::USER_PASS, Some((u, p))) => {
            let req = codec::encode_auth_request(u, p).map_err(|_| DialError::AuthFailed)?;
            s.write_all(&req).await.map_err(read_err)?;
            if !r.next(s, codec::parse_auth_reply).await? {
                return Err(DialError::AuthFailed);
            }
            Ok(true)
        }
        (method::NO_ACCEPTABLE, _) | (method::USER_PASS, None) => Err(DialError::AuthFailed),
        (m, _) => Err(proto(format!(
            "proxy chose method 0x{m:02x} we did not offer"
        ))),
    }
}

/// A SOCKS5 request and its reply; a failure code becomes its `DialError`.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    r: &mut Replies,
    command: u8,
    dest: &TargetAddr,
) -> Result<TargetAddr, DialError> {
    let req =
        codec::encode_socks5_request(command, dest).map_err(|_| DialError::AddrTypeNotSupported)?;
    s.write_all(&req).await.map_err(read_err)?;
    read_socks5_reply(s, r).await
}

/// The SOCKS5 handshake one message at a time, for a caller that reports
/// each (`sockstun check`): the very messages `handshake` sends, in its
/// order, with the proxy's answer to each.
pub struct Socks5Steps {
    r: Replies,
}

impl Default for Socks5Steps {
    fn default() -> Self {
        Socks5Steps {
            r: Replies::new(true),
        }
    }
}

impl Socks5Steps {
    /// The greeting: the method the proxy chose (`codec::method`), which may
    /// be `NO_ACCEPTABLE`.
    pub async fn greeting<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        s: &mut S,
        up: &Proxy,
    ) -> Result<u8, DialError> {
        offer_methods(s, &mut self.r, up).await
    }

    /// Authentication as `chosen` asks: true when our credentials were sent
    /// and accepted, false when the proxy asked for none;
    /// `DialError::AuthFailed` when it refused them, or wants what we lack.
    pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        s: &mut S,
        up: &Proxy,
        chosen: u8,
    ) -> Result<bool, DialError> {
        authenticate(s, &mut self.r, up, chosen).await
    }

    /// A request (`codec::cmd`): the bound address of the reply.
    pub async fn request<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        s: &mut S,
        command: u8,
        dest: &TargetAddr,
    ) -> Result<TargetAddr, DialError> {
        request(s, &mut self.r, command, dest).await
    }
}

/// Check that the proxy answers and takes our credentials: connect, greet
/// and authenticate (SOCKS5; SOCKS4 has no greeting: connect only), then
/// close cleanly, which servers log as a probe rather than an error.
pub async fn probe(up: &Proxy) -> Result<(), DialError> {
    let mut s = connect_proxy(up).await?;
    if up.kind.is_socks5() {
        let mut r = Replies::new(true);
        greet(&mut s, &mut r, up).await?;
    }
    // All the proxy sent was read, so closing sends a FIN, not a reset.
    let _ = s.shutdown().await;
    Ok(())
}

/// The SOCKS5 handshake with everything sent up front: the greeting offers
/// exactly one method (credentials when we have them, none otherwise), since
/// the bytes after it are only right for the method we announced.
async fn handshake_pipelined<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    r: &mut Replies,
    up: &Proxy,
    command: u8,
    dest: &TargetAddr,
) -> Result<TargetAddr, DialError> {
    let want = if up.auth.is_some() {
        method::USER_PASS
    } else {
        method::NO_AUTH
    };
    let mut out = codec::encode_greeting(&[want]);
    if let Some((u, p)) = &up.auth {
        out.extend(codec::encode_auth_request(u, p).map_err(|_| DialError::AuthFailed)?);
    }
    out.extend(
        codec::encode_socks5_request(command, dest).map_err(|_| DialError::AddrTypeNotSupported)?,
    );
    s.write_all(&out).await.map_err(read_err)?;
    match r.next(s, codec::parse_method_choice).await? {
        m if m == want => {}
        method::NO_ACCEPTABLE => return Err(DialError::AuthFailed),
        m => {
            return Err(proto(format!(
                "proxy chose method 0x{m:02x} we did not offer"
            )))
        }
    }
    if up.auth.is_some() && !r.next(s, codec::parse_auth_reply).await? {
        return Err(DialError::AuthFailed);
    }
    read_socks5_reply(s, r).await
}

/// Read one SOCKS5 reply; a failure code becomes the matching `DialError`.
async fn read_socks5_reply<S: AsyncRead + Unpin>(
    s: &mut S,
    r: &mut Replies,
) -> Result<TargetAddr, DialError> {
    let reply = r.next(s, codec::parse_socks5_reply).await?;
    if reply.rep != Reply::Succeeded.socks5() {
        return Err(DialError::from_socks5_reply(reply.rep));
    }
    Ok(reply.bound)
}

/// Read one SOCKS4 reply; a failure code becomes the matching `DialError`.
async fn read_socks4_reply<S: AsyncRead + Unpin>(
    s: &mut S,
    r: &mut Replies,
) -> Result<std::net::SocketAddrV4, DialError> {
    let r = r.next(s, codec::parse_socks4_reply).await?;
    match Reply::from_socks4(r.code) {
        Some(Reply::Succeeded) => Ok(r.bound),
        Some(failure) => Err(failure.into()),
        None => Err(proto(format!("unknown SOCKS4 reply code 0x{:02x}", r.code))),
    }
}

/// A connection to the target through the proxy: the socket (TCP_NODELAY
/// set), with the target's bytes that came in with the reply read first.
/// The HTTP CONNECT client (`upstream::http`) hands its tunnels out as one too.
#[derive(Debug)]
pub struct ProxyStream {
    io: TcpStream,
    early: Vec<u8>,
    /// How much of `early` has been read.
    at: usize,
}

impl ProxyStream {
    /// The connection `io`, whose first bytes from the target, `early`, came
    /// in with the proxy's answer: they are read before anything in `io`.
    pub fn new(io: TcpStream, early: Vec<u8>) -> ProxyStream {
        ProxyStream { io, early, at: 0 }
    }
}

impl AsyncRead for ProxyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.early.len() {
            let n = buf.remaining().min(self.early.len() - self.at);
            buf.put_slice(&self.early[self.at..self.at + n]);
            self.at += n;
            if self.at == self.early.len() {
                self.early = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProxyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl crate::relay::RelayStream for ProxyStream {
    fn reset(&mut self) {
        self.io.reset()
    }
}

/// CONNECT to `dest` through the proxy.
pub async fn connect(up: &Proxy, dest: &TargetAddr) -> Result<ProxyStream, DialError> {
    connect_as(up, dest, up.pipeline).await
}

/// `connect`, the SOCKS5 handshake pipelined or not as `pipelined` says.
pub async fn connect_as(
    up: &Proxy,
    dest: &TargetAddr,
    pipelined: bool,
) -> Result<ProxyStream, DialError> {
    check_carriable(up.kind, dest)?;
    let mut s = connect_proxy(up).await?;
    match tokio::time::timeout(
        up.connect_timeout,
        handshake_as(&mut s, up, cmd::CONNECT, dest, pipelined),
    )
    .await
    {
        Ok(Ok((_bound, early))) => Ok(ProxyStream::new(s, early)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(DialError::Timeout),
    }
}

/// A SOCKS5 UDP association. Datagrams go to `relay` with the RFC 1928 §7
/// header (`codec::encode_udp_header`). The association lives as long as
/// `control` stays open: drop it to end the association.
///
/// `socket` is not connected: check that replies come from `relay`.
#[derive(Debug)]
pub struct UdpAssociation {
    pub control: TcpStream,
    /// BND.ADDR:BND.PORT of the reply, with 0.0.0.0 / :: replaced by the
    /// address of the proxy we reached (a common server bug, and what RFC 1928
    /// servers behind NAT send).
    pub relay: SocketAddr,
    /// A local UDP socket (made with `up.opts`) of the relay's family.
    pub socket: UdpSocket,
}

/// Where to send datagrams, from the reply's BND.ADDR:BND.PORT. A host name
/// is never resolved here: the local resolver would leak it (and may answer
/// through the TUN itself); like 0.0.0.0 / :: it means the proxy's address.
fn relay_addr(bound: TargetAddr, proxy_ip: IpAddr) -> SocketAddr {
    let proxy_ip = crate::net::unmap(proxy_ip);
    match bound {
        TargetAddr::Ip(a) => {
            let ip = crate::net::unmap(a.ip());
            SocketAddr::new(if ip.is_unspecified() { proxy_ip } else { ip }, a.port())
        }
        TargetAddr::Domain(_, port) => SocketAddr::new(proxy_ip, port),
    }
}

/// DST.ADDR of a UDP ASSOCIATE: the address we will send from; not known
/// yet, so all zeros (RFC 1928 §7 allows it).
fn any_addr() -> TargetAddr {
    TargetAddr::Ip(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0))
}

/// UDP ASSOCIATE through a SOCKS5 proxy.
pub async fn udp_associate(up: &Proxy) -> Result<UdpAssociation, DialError> {
    udp_associate_as(up, up.pipeline).await
}

/// `udp_associate`, the handshake pipelined or not as `pipelined` says.
pub async fn udp_associate_as(up: &Proxy, pipelined: bool) -> Result<UdpAssociation, DialError> {
    if !up.kind.is_socks5() {
        return Err(DialError::CommandNotSupported);
    }
    let mut control = connect_proxy(up).await?;
    // The control connection carries no data: anything after the reply is
    // dropped with the rest of what the proxy may send on it.
    let bound = match tokio::time::timeout(
        up.connect_timeout,
        handshake_as(&mut control, up, cmd::UDP_ASSOCIATE, &any_addr(), pipelined),
    )
    .await
    {
        Ok(r) => r?.0,
        Err(_) => return Err(DialError::Timeout),
    };
    associated(up, control, bound)
}

/// The association the proxy's reply `bound` names, on `control`.
fn associated(
    up: &Proxy,
    control: TcpStream,
    bound: TargetAddr,
) -> Result<UdpAssociation, DialError> {
    let proxy_ip = control
        .peer_addr()
        .map_err(DialError::ProxyUnreachable)?
        .ip();
    let relay = relay_addr(bound, proxy_ip);
    if relay.port() == 0 {
        return Err(proto("UDP relay port 0"));
    }
    let local: SocketAddr = match relay {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = up
        .opts
        .udp_socket(local)
        .map_err(DialError::ProxyUnreachable)?;
    Ok(UdpAssociation {
        control,
        relay,
        socket,
    })
}

/// Why a request on a ready connection (`ready`, kept in a warm pool)
/// failed.
#[derive(Debug)]
pub enum ReadyError {
    /// The connection was dead before the proxy answered anything: closed
    /// or reset while it waited (a proxy restarted, its handshake timeout).
    /// Not an answer to this request: try it again on a fresh connection.
    Stale(DialError),
    /// The proxy's answer, or its failure, as on a fresh connection.
    Failed(DialError),
}

/// A connection to the proxy ready for its request: connected and, for
/// SOCKS5, greeted and authenticated (within the connect timeout). What a
/// warm pool keeps.
pub async fn ready(up: &Proxy) -> Result<TcpStream, DialError> {
    let mut s = connect_proxy(up).await?;
    if up.kind.is_socks5() {
        let mut r = Replies::new(true);
        match tokio::time::timeout(up.connect_timeout, greet(&mut s, &mut r, up)).await {
            Ok(r) => r?,
            Err(_) => return Err(DialError::Timeout),
        }
        if !r.rest().is_empty() {
            return Err(proto("bytes after the method choice"));
        }
    }
    Ok(s)
}

/// Whether a ready connection still looks open: nothing (no close, no
/// reset, no stray byte) has come from the proxy since it was greeted.
pub fn still_open(s: &TcpStream) -> bool {
    matches!(s.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The request alone on a connection `ready` made, within the connect
/// timeout: the bound address and the target's early bytes, as
/// `handshake` gives them.
pub async fn request_on(
    s: &mut TcpStream,
    up: &Proxy,
    command: u8,
    dest: &TargetAddr,
) -> Result<(TargetAddr, Vec<u8>), ReadyError> {
    check_carriable(up.kind, dest).map_err(ReadyError::Failed)?;
    let mut r = Replies::new(up.kind.is_socks5());
    let ask = async {
        if up.kind.is_socks5() {
            return request(s, &mut r, command, dest).await;
        }
        let uid = up.auth.as_ref().map(|(u, _)| u.as_bytes());
        let req = codec::encode_socks4_request(command, dest, uid.unwrap_or_default())
            .map_err(|_| DialError::AddrTypeNotSupported)?;
        s.write_all(&req).await.map_err(read_err)?;
        Ok(TargetAddr::Ip(read_socks4_reply(s, &mut r).await?.into()))
    };
    match tokio::time::timeout(up.connect_timeout, ask).await {
        Ok(Ok(bound)) => Ok((bound, r.rest())),
        // Closed or reset (the only `Protocol` errors with nothing read):
        // the proxy never saw this request.
        Ok(Err(e @ DialError::Protocol(_))) if r.r.pending().is_empty() => {
            Err(ReadyError::Stale(e))
        }
        Ok(Err(e)) => Err(ReadyError::Failed(e)),
        Err(_) => Err(ReadyError::Failed(DialError::Timeout)),
    }
}

/// CONNECT to `dest` on a connection `ready` made.
pub async fn connect_on(
    mut s: TcpStream,
    up: &Proxy,
    dest: &TargetAddr,
) -> Result<ProxyStream, ReadyError> {
    let (_bound, early) = request_on(&mut s, up, cmd::CONNECT, dest).await?;
    Ok(ProxyStream::new(s, early))
}

/// UDP ASSOCIATE (SOCKS5) on a connection `ready` made.
pub async fn udp_associate_on(
    mut control: TcpStream,
    up: &Proxy,
) -> Result<UdpAssociation, ReadyError> {
    if !up.kind.is_socks5() {
        return Err(ReadyError::Failed(DialError::CommandNotSupported));
    }
    let (bound, _) = request_on(&mut control, up, cmd::UDP_ASSOCIATE, &any_addr()).await?;
    associated(up, control, bound).map_err(ReadyError::Failed)
}

#[cfg(test)]
mod tests;

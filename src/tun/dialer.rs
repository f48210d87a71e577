//! How a new TCP flow from the TUN reaches its destination: DNS to port 53
//! answered in-process while DNS is intercepted, fake-pool addresses dialed
//! by name, everything else by address through the upstream. A failure is
//! turned into the answer the application gets (the stack's `Refusal`).

use super::route::Router;
use crate::dns::pool::PoolPin;
use crate::dns::{Dns, TcpRoute};
use crate::relay::RelayStream;
use crate::rules::{Action, Proto};
use crate::socks::TargetAddr;
use crate::stack::{DialFailed, DialFuture, Dialed, Dialer, FlowNote, Refusal, Unreachable};
use crate::upstream::{self, Upstream};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of the in-memory pipe of a DNS-over-TCP flow (one message fits).
const DNS_PIPE: usize = 64 * 1024 + 2;

/// The stack's dialer in TUN mode.
pub struct FlowDialer {
    pub upstream: Arc<dyn Upstream>,
    pub dns: Arc<Dns>,
    pub router: Arc<Router>,
}

impl Dialer for FlowDialer {
    fn dial(&self, src: SocketAddr, dst: SocketAddr) -> DialFuture {
        let (target, pin) = match self.dns.route_tcp(dst) {
            TcpRoute::Direct => (TargetAddr::Ip(dst), None),
            TcpRoute::Name(target, pin) => (target, Some(pin)),
            TcpRoute::Dns => return self.dns_stream(src),
            TcpRoute::Unknown => {
                tracing::debug!(
                    "tcp {src} -> {dst}: fake address not assigned (stale DNS answer?)"
                );
                return Box::pin(async { Err(refused(upstream::Error::HostUnreachable)) });
            }
        };
        if let TargetAddr::Domain(..) = target {
            tracing::debug!("tcp {src} -> {dst} is {target}: dialing by name");
        }
        let way = self.router.way(src, &target, Proto::Tcp);
        let note = FlowNote {
            name: match &target {
                TargetAddr::Domain(n, _) => Some(Arc::from(n.as_str())),
                TargetAddr::Ip(_) => None,
            },
            rule: way.rule,
        };
        match way.action {
            Action::Proxy(_) => {
                let up = way.upstream.unwrap_or_else(|| self.upstream.clone());
                Box::pin(async move {
                    let c = up
                        .connect(&target)
                        .await
                        .map_err(|e| refused(e).noted(note.clone()))?;
                    Ok(Dialed {
                        stream: pinned(c.stream, pin),
                        via: c.via,
                        note,
                    })
                })
            }
            Action::Direct => {
                let router = self.router.clone();
                Box::pin(async move {
                    let s = router
                        .direct()
                        .connect(&target)
                        .await
                        .map_err(|e| e.noted(note.clone()))?;
                    Ok(Dialed {
                        stream: pinned(Box::new(s), pin),
                        via: Arc::clone(&DIRECT),
                        note,
                    })
                })
            }
            Action::Block => Box::pin(async move {
                Err(DialFailed::new(Refusal::Reset, "blocked by rule").noted(note))
            }),
        }
    }
}

/// The `via` of a direct flow.
static DIRECT: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("direct"));

/// The stream, holding the fake address it was dialed by (if any) for as
/// long as it lives.
fn pinned(s: upstream::Stream, pin: Option<PoolPin>) -> upstream::Stream {
    match pin {
        Some(pin) => Box::new(Pinned { s, _pin: pin }),
        None => s,
    }
}

impl FlowDialer {
    /// DNS over TCP to the intercepted resolver address: answered in-process.
    fn dns_stream(&self, src: SocketAddr) -> DialFuture {
        let (app, ours) = tokio::io::duplex(DNS_PIPE);
        let dns = self.dns.clone();
        tokio::spawn(async move {
            if let Err(e) = dns.serve_stream(ours).await {
                tracing::debug!("dns over tcp from {src}: {e}");
            }
        });
        Box::pin(async move {
            Ok(Dialed {
                stream: Box::new(app),
                via: "in-process DNS".into(),
                note: FlowNote::default(),
            })
        })
    }
}

/// The answer the application gets when the upstream gave no stream: what a
/// direct connection would have met, so Happy Eyeballs and error messages
/// behave as without a proxy.
fn refused(e: upstream::Error) -> DialFailed {
    use upstream::Error as E;
    let answer = match e {
        E::NetUnreachable => Refusal::Unreachable(Unreachable::Net),
        E::HostUnreachable | E::TtlExpired | E::Timeout => Refusal::Unreachable(Unreachable::Host),
        E::NotAllowed => Refusal::Unreachable(Unreachable::Prohibited),
        // Refused, and every failure of the proxy itself: fail fast and
        // plainly rather than leave the application waiting.
        _ => Refusal::Reset,
    };
    DialFailed::new(answer, e)
}

/// A connection dialed by name, holding its fake address for as long as it lives.
struct Pinned {
    s: upstream::Stream,
    _pin: PoolPin,
}

impl AsyncRead for Pinned {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.s).poll_read(cx, buf)
    }
}

impl AsyncWrite for Pinned {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.s).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.s).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.s).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.s).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.s.is_write_vectored()
    }
}

impl RelayStream for Pinned {
    fn reset(&mut self) {
        self.s.reset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy's answer reaches the application as a direct connection
    /// would have failed; the proxy's own failures as a plain RST.
    #[test]
    fn upstream_failures_become_the_answer_a_direct_connection_gets() {
        use upstream::Error as E;
        let host = Refusal::Unreachable(Unreachable::Host);
        for (e, want) in [
            (E::Refused, Refusal::Reset),
            (E::NetUnreachable, Refusal::Unreachable(Unreachable::Net)),
            (E::HostUnreachable, host),
            (E::TtlExpired, host),
            (E::Timeout, host),
            (E::NotAllowed, Refusal::Unreachable(Unreachable::Prohibited)),
            (E::AuthFailed, Refusal::Reset),
            (E::General, Refusal::Reset),
            (E::Protocol("x".into()), Refusal::Reset),
            (
                E::ProxyUnreachable(io::ErrorKind::ConnectionRefused.into()),
                Refusal::Reset,
            ),
        ] {
            let shown = e.to_string();
            let f = refused(e);
            assert_eq!(f.answer, want, "{shown}");
            assert_eq!(
                f.to_string(),
                shown,
                "the log line keeps the proxy's reason"
            );
        }
    }
}

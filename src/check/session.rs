//! The TCP steps: connect to the proxy, greeting and method, authentication,
//! then a CONNECT to each target, each on a connection of its own (the first
//! on the connection the greeting went over). The messages are the SOCKS
//! client's (`socks::client`: `Socks5Steps` for SOCKS5, `handshake` for
//! SOCKS4/4a) and the HTTP CONNECT client's (`upstream::http::handshake`).

use super::plan::Plan;
use super::report::{Report, Status};
use crate::proxy::ProxyKind;
use crate::socks::client::{self, DialError, Socks5Steps};
use crate::socks::codec::{cmd, method};
use crate::socks::TargetAddr;
use crate::upstream::{self, Blame};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// `f`, given the plan's timeout.
pub async fn within<T>(
    plan: &Plan,
    f: impl Future<Output = Result<T, DialError>>,
) -> Result<T, DialError> {
    tokio::time::timeout(plan.timeout, f)
        .await
        .unwrap_or(Err(DialError::Timeout))
}

/// A connection to the proxy, and where its SOCKS5 handshake stands.
struct Conn {
    s: TcpStream,
    steps: Socks5Steps,
}

/// Every TCP step, reported.
pub async fn run(plan: &Plan, report: &mut Report) {
    let start = Instant::now();
    let s = match plan.proxy.connect_tcp().await {
        Ok(s) => s,
        Err(e) => {
            let addrs: Vec<String> = plan.proxy.addrs.iter().map(|a| a.to_string()).collect();
            let detail = format!(
                "{}: {e} (is the proxy running, is the port right?)",
                addrs.join(", ")
            );
            return report.fatal("tcp connect", start, detail);
        }
    };
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    report.timed("tcp connect", Status::Ok, start, peer);
    let mut first = Conn {
        s,
        steps: Socks5Steps::default(),
    };
    match plan.proxy.kind {
        ProxyKind::Socks5 | ProxyKind::Socks5h => {
            if !login(plan, report, &mut first).await {
                for t in &plan.targets {
                    report.blocked(Plan::connect_step(t));
                }
                return;
            }
        }
        ProxyKind::Socks4 | ProxyKind::Socks4a => {
            report.skip(
                "greeting",
                "SOCKS4 has none: the request carries everything",
            );
            let auth = match &plan.proxy.auth {
                Some((u, _)) => format!("SOCKS4 has none; user id {u:?} goes with each request"),
                None => "SOCKS4 has none".into(),
            };
            report.skip("auth", auth);
        }
        ProxyKind::Http => {
            report.skip(
                "greeting",
                "HTTP has none: the CONNECT request carries everything",
            );
        }
    }
    connects(plan, report, first).await;
}

/// Greeting and authentication (SOCKS5) on `c`; false when either failed.
async fn login(plan: &Plan, report: &mut Report, c: &mut Conn) -> bool {
    let start = Instant::now();
    let chosen = match within(plan, c.steps.greeting(&mut c.s, &plan.proxy)).await {
        Ok(m) => m,
        Err(e) => {
            report.fatal("greeting", start, e.to_string());
            return false;
        }
    };
    let offered =
        chosen == method::NO_AUTH || (chosen == method::USER_PASS && plan.proxy.auth.is_some());
    if !offered && chosen != method::NO_ACCEPTABLE {
        report.fatal(
            "greeting",
            start,
            format!(
                "the proxy chose {}, which we did not offer",
                method_name(chosen)
            ),
        );
        return false;
    }
    report.timed(
        "greeting",
        Status::Ok,
        start,
        format!("method: {}", method_name(chosen)),
    );
    let start = Instant::now();
    match within(plan, c.steps.authenticate(&mut c.s, &plan.proxy, chosen)).await {
        Ok(true) => {
            let user = plan.proxy.auth.as_ref().map_or("", |(u, _)| u.as_str());
            report.timed(
                "auth",
                Status::Ok,
                start,
                format!("user {user:?} accepted (RFC 1929)"),
            );
            true
        }
        Ok(false) => {
            let unused = match plan.proxy.auth {
                Some(_) => " (the URL's credentials are not used)",
                None => "",
            };
            report.timed(
                "auth",
                Status::Ok,
                start,
                format!("none asked for by the proxy{unused}"),
            );
            true
        }
        Err(DialError::AuthFailed) => {
            report.fatal("auth", start, refused(plan, chosen));
            false
        }
        Err(e) => {
            report.fatal("auth", start, e.to_string());
            false
        }
    }
}

/// Why the proxy would not let us in, from the method it chose.
fn refused(plan: &Plan, chosen: u8) -> String {
    match (chosen, &plan.proxy.auth) {
        (method::USER_PASS, Some((u, _))) => {
            format!("proxy authentication failed: user {u:?} refused (is the password right?)")
        }
        (method::NO_ACCEPTABLE, Some(_)) => {
            "the proxy accepts none of the methods offered (none, username/password)".into()
        }
        _ => "the proxy wants a username and password: put user:password@ in the URL".into(),
    }
}

/// A SOCKS5 method (RFC 1928 section 3) by name.
pub fn method_name(m: u8) -> String {
    match m {
        method::NO_AUTH => "no authentication".into(),
        method::GSSAPI => "GSSAPI".into(),
        method::USER_PASS => "username/password".into(),
        method::NO_ACCEPTABLE => "no acceptable method (0xff)".into(),
        m => format!("0x{m:02x}"),
    }
}

/// A CONNECT to each target; the first on `first`.
async fn connects(plan: &Plan, report: &mut Report, first: Conn) {
    if plan.targets.is_empty() {
        if plan.proxy.kind == ProxyKind::Http {
            report.skip(
                "auth",
                "HTTP checks credentials with a CONNECT: give --target",
            );
        }
        report.skip(
            "connect",
            "give --target HOST:PORT (an address, a name, or both)",
        );
        return close(first.s).await;
    }
    let mut first = Some(first);
    for (i, t) in plan.targets.iter().enumerate() {
        let name = Plan::connect_step(t);
        if let Some(why) = not_carried(plan.proxy.kind, t) {
            report.skip(name, format!("{t}: {why}"));
            continue;
        }
        let mut c = match first.take() {
            Some(c) => c,
            None => match within(plan, fresh(plan)).await {
                Ok(c) => c,
                Err(e) => {
                    report.add(
                        name,
                        Status::Fail,
                        None,
                        format!("{t}: a new connection: {e}"),
                    );
                    continue;
                }
            },
        };
        let start = Instant::now();
        let r = within(plan, request(plan, &mut c, t)).await;
        if plan.proxy.kind == ProxyKind::Http && i == 0 && !http_auth(plan, report, start, &r) {
            return;
        }
        outcome(report, name, t, start, r);
        close(c.s).await;
    }
    if let Some(c) = first {
        close(c.s).await;
    }
}

/// What a SOCKS4 proxy cannot carry (the name is never resolved here).
fn not_carried(kind: ProxyKind, t: &TargetAddr) -> Option<&'static str> {
    match (kind, t) {
        (ProxyKind::Socks4, TargetAddr::Domain(..)) => {
            Some("SOCKS4 cannot carry a name (socks4a can), and it is not resolved here")
        }
        (ProxyKind::Socks4 | ProxyKind::Socks4a, TargetAddr::Ip(SocketAddr::V6(_))) => {
            Some("SOCKS4 carries IPv4 addresses only")
        }
        _ => None,
    }
}

/// A new connection to the proxy, through greeting and authentication.
async fn fresh(plan: &Plan) -> Result<Conn, DialError> {
    let s = client::connect_proxy(&plan.proxy).await?;
    let mut c = Conn {
        s,
        steps: Socks5Steps::default(),
    };
    if plan.proxy.kind.is_socks5() {
        let chosen = c.steps.greeting(&mut c.s, &plan.proxy).await?;
        c.steps.authenticate(&mut c.s, &plan.proxy, chosen).await?;
    }
    Ok(c)
}

/// The CONNECT request to `t` and its answer: the bound address, when the
/// protocol has one.
async fn request(
    plan: &Plan,
    c: &mut Conn,
    t: &TargetAddr,
) -> Result<Option<TargetAddr>, DialError> {
    match plan.proxy.kind {
        ProxyKind::Http => upstream::http::handshake(&mut c.s, &plan.proxy, t)
            .await
            .map(|_| None),
        ProxyKind::Socks5 | ProxyKind::Socks5h => {
            c.steps.request(&mut c.s, cmd::CONNECT, t).await.map(Some)
        }
        ProxyKind::Socks4 | ProxyKind::Socks4a => {
            client::handshake(&mut c.s, &plan.proxy, cmd::CONNECT, t)
                .await
                .map(|(bound, _)| Some(bound))
        }
    }
}

/// An HTTP proxy checks credentials with the first CONNECT: its answer is
/// the auth step's (reported before the CONNECT's). False when it refused.
fn http_auth(
    plan: &Plan,
    report: &mut Report,
    start: Instant,
    r: &Result<Option<TargetAddr>, DialError>,
) -> bool {
    let with = if plan.proxy.auth.is_some() {
        "Basic credentials accepted"
    } else {
        "none asked for by the proxy"
    };
    match r {
        Err(DialError::AuthFailed) => {
            let why = match &plan.proxy.auth {
                Some((u, _)) => {
                    format!(
                        "proxy authentication failed: user {u:?} refused (is the password right?)"
                    )
                }
                None => {
                    "the proxy wants a username and password: put user:password@ in the URL".into()
                }
            };
            report.fatal("auth", start, why);
            return false;
        }
        Ok(_) => report.add(
            "auth",
            Status::Ok,
            None,
            format!("{with} (with the CONNECT below)"),
        ),
        Err(e) if upstream::blame(e) != Blame::Proxy => report.add(
            "auth",
            Status::Ok,
            None,
            format!("{with} (the CONNECT below got past them)"),
        ),
        Err(_) => report.skip("auth", "unknown: the CONNECT below got no answer"),
    }
    true
}

/// The CONNECT step's line.
fn outcome(
    report: &mut Report,
    name: &'static str,
    t: &TargetAddr,
    start: Instant,
    r: Result<Option<TargetAddr>, DialError>,
) {
    let by_name = match t {
        TargetAddr::Domain(..) => " (name sent to the proxy)",
        TargetAddr::Ip(_) => "",
    };
    match r {
        Ok(Some(bound)) => report.timed(
            name,
            Status::Ok,
            start,
            format!("{t}{by_name}: connected, bound {bound}"),
        ),
        Ok(None) => report.timed(name, Status::Ok, start, format!("{t}{by_name}: connected")),
        Err(e) => {
            let whose = match upstream::blame(&e) {
                Blame::Target => "the target's answer, relayed: the proxy works",
                Blame::Refusal => "the proxy will not carry it",
                Blame::Proxy => "the proxy failed",
            };
            report.timed(
                name,
                Status::Fail,
                start,
                format!("{t}{by_name}: {e} ({whose})"),
            );
        }
    }
}

/// Close cleanly: everything the proxy sent was read (or is dropped with the
/// socket), and a FIN is what servers log as a normal end.
pub async fn close(mut s: TcpStream) {
    let _ = s.shutdown().await;
}

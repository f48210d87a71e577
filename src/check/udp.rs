//! The UDP steps: UDP ASSOCIATE (`socks::client::udp_associate`), then one
//! datagram to `--udp` and back through the relay, framed by
//! `socks::codec` (RFC 1928 section 7).

use super::plan::Plan;
use super::report::{Report, Status};
use super::session::within;
use crate::proxy::ProxyKind;
use crate::socks::client::{self, DialError, UdpAssociation};
use crate::socks::codec;
use crate::socks::TargetAddr;
use std::time::Instant;

const PAYLOAD: &[u8] = b"sockstun check: one datagram";

/// The UDP steps, reported. A proxy without UDP is a failure only when
/// `--udp` asked for UDP.
pub async fn run(plan: &Plan, report: &mut Report) {
    if report.blocked("udp associate") {
        report.blocked("udp round trip");
        return;
    }
    let lacking = if plan.udp.is_some() {
        Status::Fail
    } else {
        Status::No
    };
    let why = match plan.proxy.kind {
        ProxyKind::Http => Some("HTTP CONNECT carries TCP only"),
        ProxyKind::Socks4 | ProxyKind::Socks4a => Some("SOCKS4 has no UDP (SOCKS5 has)"),
        ProxyKind::Socks5 | ProxyKind::Socks5h => None,
    };
    if let Some(why) = why {
        report.add("udp associate", lacking, None, why);
        report.skip("udp round trip", "no association");
        return;
    }
    let start = Instant::now();
    let assoc = match within(plan, client::udp_associate(&plan.proxy)).await {
        Ok(a) => a,
        Err(e) => {
            let (status, detail) = match e {
                DialError::CommandNotSupported => (
                    lacking,
                    "the proxy has no UDP ASSOCIATE (command not supported)".to_string(),
                ),
                e => (Status::Fail, e.to_string()),
            };
            report.timed("udp associate", status, start, detail);
            report.skip("udp round trip", "no association");
            return;
        }
    };
    report.timed(
        "udp associate",
        Status::Ok,
        start,
        format!("relay {}", assoc.relay),
    );
    let Some(dest) = &plan.udp else {
        report.skip(
            "udp round trip",
            "give --udp HOST:PORT (a UDP echo) to send a datagram",
        );
        return;
    };
    let start = Instant::now();
    let (status, detail) = match round_trip(plan, &assoc, dest).await {
        Ok(d) => (Status::Ok, d),
        Err(d) => (Status::Fail, d),
    };
    report.timed("udp round trip", status, start, detail);
}

/// One datagram to `dest` through the relay, and its answer. Sent up to
/// three times within the timeout: one lost datagram is not a verdict.
async fn round_trip(plan: &Plan, a: &UdpAssociation, dest: &TargetAddr) -> Result<String, String> {
    let mut d = Vec::new();
    codec::encode_udp_header(dest, &mut d).map_err(|e| format!("{dest}: {e}"))?;
    d.extend_from_slice(PAYLOAD);
    let mut buf = vec![0u8; 65536];
    for _ in 0..3 {
        a.socket
            .send_to(&d, a.relay)
            .await
            .map_err(|e| format!("send to the relay {}: {e}", a.relay))?;
        let until = tokio::time::Instant::now() + plan.timeout / 3;
        while let Ok(got) = tokio::time::timeout_at(until, a.socket.recv_from(&mut buf)).await {
            let (n, from) = got.map_err(|e| format!("receive: {e}"))?;
            // Only the relay may answer (the association is not connected).
            if from != a.relay {
                continue;
            }
            let h = codec::parse_udp_header(&buf[..n])
                .map_err(|e| format!("a datagram from the relay with a bad header: {e}"))?;
            let data = &buf[h.header_len..n];
            let echoed = if data == PAYLOAD { ", echoed" } else { "" };
            return Ok(format!(
                "{} bytes to {dest}, {} back from {}{echoed}",
                PAYLOAD.len(),
                data.len(),
                h.addr
            ));
        }
    }
    Err(format!(
        "{dest}: no answer within {} s (3 datagrams sent to the relay {}; is a UDP echo there?)",
        plan.timeout.as_secs(),
        a.relay
    ))
}

use super::process::Stat;
use super::*;
use http_body_util::BodyExt;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

struct Fake {
    healthy: AtomicBool,
}

impl Report for Fake {
    fn metrics(&self, m: &mut Scrape<'_>) -> fmt::Result {
        m.counter("tcp_flows_opened", "Flows.", 3)?;
        m.gauge("tcp_flows_open", "Open.", 2.0)?;
        m.counters(
            "tcp_flows_refused",
            "Refused.",
            "reason",
            &[("reset", 1), ("flow_limit", 0)],
        )?;
        m.gauges(
            "proxy_up",
            "Up.",
            "proxy",
            &[("socks5://10.0.0.1:1080", 1.0)],
        )
    }

    fn flows(&self) -> Vec<FlowInfo> {
        vec![FlowInfo {
            protocol: "tcp",
            source: "198.18.0.1:40000".into(),
            destination: "198.19.0.7:80".into(),
            name: Some("web.test".into()),
            via: Some("socks5://10.0.0.1:1080".into()),
            bytes_up: 10,
            bytes_down: 20,
            datagrams_up: None,
            datagrams_down: None,
            age_ms: 5,
            state: "open",
        }]
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

fn fake() -> Arc<dyn Report> {
    Arc::new(Fake {
        healthy: AtomicBool::new(true),
    })
}

fn body(r: Response<Full<Bytes>>) -> (StatusCode, String) {
    let status = r.status();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let b = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
    (status, String::from_utf8(b.to_vec()).unwrap())
}

#[test]
fn metrics_are_prefixed_typed_and_labelled() {
    let text = render(&fake());
    for line in [
        "# TYPE sockstun_tcp_flows_opened counter",
        "sockstun_tcp_flows_opened_total 3",
        "# TYPE sockstun_tcp_flows_open gauge",
        "sockstun_tcp_flows_open 2.0",
        "sockstun_tcp_flows_refused_total{reason=\"reset\"} 1",
        "sockstun_tcp_flows_refused_total{reason=\"flow_limit\"} 0",
        "sockstun_proxy_up{proxy=\"socks5://10.0.0.1:1080\"} 1.0",
        "# TYPE process_cpu_seconds counter",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_open_fds gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    // The process's real numbers: some memory, some descriptors.
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(value("process_resident_memory_bytes") > 1e6, "{text}");
    assert!(value("process_open_fds") >= 3.0, "{text}");
}

#[test]
fn endpoints_answer_as_documented() {
    let rep = fake();
    let (st, text) = body(respond(&rep, &Method::GET, "/metrics"));
    assert_eq!(st, StatusCode::OK);
    assert!(text.contains("sockstun_tcp_flows_opened_total 3"));
    let (st, json) = body(respond(&rep, &Method::GET, "/flows"));
    assert_eq!(st, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["name"], "web.test");
    assert_eq!(v[0]["bytes_down"], 20);
    assert_eq!(v[0]["protocol"], "tcp");
    assert_eq!(
        body(respond(&rep, &Method::GET, "/health")).0,
        StatusCode::OK
    );
    assert_eq!(
        body(respond(&rep, &Method::GET, "/nope")).0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        body(respond(&rep, &Method::POST, "/health")).0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let down: Arc<dyn Report> = Arc::new(Fake {
        healthy: AtomicBool::new(false),
    });
    assert_eq!(
        body(respond(&down, &Method::GET, "/health")).0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[test]
fn proc_stat_is_parsed_past_a_strange_command_name() {
    let stat = "4242 (sock stun) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 3 0 100 \
                20000000 1200 18446744073709551615";
    let st = Stat::parse(stat, "5000 1200 300 10 0 200 0\n", 100, 4096);
    assert_eq!(
        st,
        Stat {
            cpu_seconds: 3.0,
            rss_bytes: 1200 * 4096,
            threads: 3
        }
    );
}

#[test]
fn the_admin_address_is_loopback_unless_public() {
    let lo: SocketAddr = "127.0.0.1:9090".parse().unwrap();
    let any: SocketAddr = "0.0.0.0:9090".parse().unwrap();
    assert!(check_addr(lo, false, "--admin-public").is_ok());
    assert!(check_addr("[::1]:9090".parse().unwrap(), false, "x").is_ok());
    let e = check_addr(any, false, "--admin-public").unwrap_err();
    assert!(e.contains("--admin-public"), "{e}");
    assert!(check_addr(any, true, "--admin-public").is_ok());
}

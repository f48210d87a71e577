//! The routing rules (`--rule`, `--rules-file`): parsing and the index.
//!
//! Invariants:
//! - any text is parsed or refused with an error naming its line, never a
//!   panic;
//! - an accepted rule, written back (`Display`), parses to the same rule;
//! - the index chooses as the plain first-match scan does, for queries made
//!   from the rules' own values (names below and beside each name, the edges
//!   of each network and port range, both protocols).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockstun::rules::{parse_file, parse_rule, Action, Match, Proto, Query, Rules};
use std::net::IpAddr;

/// Names, addresses and ports near the rules' own.
fn probes(rules: &Rules) -> (Vec<String>, Vec<IpAddr>, Vec<u16>) {
    let (mut names, mut addrs, mut ports) = (vec!["a.test".to_string()], vec![], vec![1u16]);
    for r in rules.rules().iter().take(16) {
        for m in &r.matches {
            match m {
                Match::Domain(d) | Match::Suffix(d) => {
                    names.push(d.to_string());
                    names.push(format!("x.{d}"));
                    names.push(format!("x{d}"));
                }
                Match::Keyword(k) => names.push(format!("a{k}b")),
                Match::Cidr(n) | Match::Src(n) => {
                    addrs.push(n.network());
                    addrs.push(n.broadcast());
                }
                Match::Port(lo, hi) => {
                    ports.extend([*lo, *hi, hi.saturating_add(1), lo.saturating_sub(1)])
                }
                Match::Proto(_) => {}
            }
        }
    }
    names.truncate(24);
    addrs.truncate(24);
    ports.truncate(8);
    (names, addrs, ports)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Each line alone: a rule written back reads the same.
    for line in text.lines().take(64) {
        if let Ok((matches, action)) = parse_rule(line) {
            let r = sockstun::rules::Rule {
                matches: matches.clone(),
                action: action.clone(),
                origin: "x".into(),
            };
            let again = parse_rule(&r.to_string()).expect("a rule written back parses");
            assert_eq!(again, (matches, action), "{line:?} -> {r}");
        }
    }
    let rules = match parse_file("f", text) {
        Ok(r) => Rules::new(r, Action::Proxy(None)),
        Err(e) => {
            assert!(e.starts_with("f:"), "{e}");
            return;
        }
    };
    let (names, addrs, ports) = probes(&rules);
    let names = names.iter().map(|n| Some(n.as_str())).chain([None]);
    for name in names {
        for dst in addrs.iter().map(|a| Some(*a)).chain([None]) {
            for &port in &ports {
                for proto in [Proto::Tcp, Proto::Udp] {
                    let q = Query {
                        name: name.filter(|n| !n.bytes().any(|b| b.is_ascii_uppercase())),
                        dst,
                        port: Some(port),
                        proto,
                        src: addrs.first().copied(),
                    };
                    let plain = rules.rules().iter().position(|r| r.holds(&q));
                    let got = rules.decide(&q).rule.map(|r| r as *const _);
                    let want = plain.map(|i| &rules.rules()[i] as *const _);
                    assert_eq!(got, want, "{q:?}");
                }
            }
        }
    }
});

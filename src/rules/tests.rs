use super::*;

fn rules(lines: &[&str], default: Action) -> Rules {
    let text = lines.join("\n");
    Rules::new(parse_file("t", &text).unwrap(), default)
}

fn q<'a>(name: Option<&'a str>, dst: Option<&str>, port: u16, proto: Proto) -> Query<'a> {
    Query {
        name,
        dst: dst.map(|d| d.parse().unwrap()),
        port: Some(port),
        proto,
        src: Some("192.168.1.7".parse().unwrap()),
    }
}

fn way(r: &Rules, q: &Query<'_>) -> (Action, String) {
    let d = r.decide(q);
    (d.action.clone(), d.origin().to_string())
}

#[test]
fn first_match_wins_and_matches_are_anded() {
    let r = rules(
        &[
            "# comment",
            "suffix:bank.example port:443 => direct",
            "suffix:example => block  # trailing comment",
            "",
            "cidr:10.0.0.0/8 udp => block",
            "cidr:10.0.0.0/8 => direct",
            "keyword:video => direct",
            "src:192.168.1.0/24 port:8000-9000 => block",
        ],
        Action::Proxy(None),
    );
    let t = Proto::Tcp;
    assert_eq!(
        way(&r, &q(Some("www.bank.example"), None, 443, t)),
        (Action::Direct, "t:2".into())
    );
    // The same name on another port: the first rule's port does not hold.
    assert_eq!(
        way(&r, &q(Some("www.bank.example"), None, 80, t)),
        (Action::Block, "t:3".into())
    );
    assert_eq!(
        way(&r, &q(None, Some("10.1.2.3"), 53, Proto::Udp)),
        (Action::Block, "t:5".into())
    );
    assert_eq!(
        way(&r, &q(None, Some("10.1.2.3"), 53, t)),
        (Action::Direct, "t:6".into())
    );
    assert_eq!(
        way(&r, &q(Some("myvideos.org"), None, 1, t)),
        (Action::Direct, "t:7".into())
    );
    assert_eq!(
        way(&r, &q(None, Some("203.0.113.9"), 8080, t)),
        (Action::Block, "t:8".into())
    );
    assert_eq!(
        way(&r, &q(None, Some("203.0.113.9"), 80, t)),
        (Action::Proxy(None), "default".into())
    );
}

#[test]
fn suffixes_match_on_label_boundaries_and_names_fold_case() {
    let r = rules(
        &["suffix:example.org => direct", "domain:a.test => block"],
        Action::Proxy(None),
    );
    let t = Proto::Tcp;
    for (n, want) in [
        ("example.org", Action::Direct),
        ("www.example.org", Action::Direct),
        ("WWW.Example.ORG.", Action::Direct),
        ("badexample.org", Action::Proxy(None)),
        ("example.org.evil", Action::Proxy(None)),
        ("a.test", Action::Block),
        ("b.a.test", Action::Proxy(None)),
    ] {
        assert_eq!(
            r.decide(&q(Some(n), None, 80, t)).action.clone(),
            want,
            "{n}"
        );
    }
}

#[test]
fn name_rules_do_not_match_an_address_nor_address_rules_a_name() {
    let r = rules(
        &["cidr:0.0.0.0/0 => block", "keyword:a => direct"],
        Action::Proxy(None),
    );
    assert_eq!(
        r.decide(&q(Some("a.test"), None, 80, Proto::Tcp))
            .action
            .clone(),
        Action::Direct
    );
    assert_eq!(
        r.decide(&q(None, Some("1.2.3.4"), 80, Proto::Tcp))
            .action
            .clone(),
        Action::Block
    );
    // v4-mapped v6 addresses are their v4 selves.
    assert_eq!(
        r.decide(&q(None, Some("::ffff:1.2.3.4"), 80, Proto::Tcp))
            .action
            .clone(),
        Action::Block
    );
    let v6 = rules(&["cidr:2001:db8::/32 => direct"], Action::Block);
    assert_eq!(
        v6.decide(&q(None, Some("2001:db8::1"), 1, Proto::Udp))
            .action
            .clone(),
        Action::Direct
    );
    assert_eq!(
        v6.decide(&q(None, Some("2001:db9::1"), 1, Proto::Udp))
            .action
            .clone(),
        Action::Block
    );
}

#[test]
fn parse_errors_say_what_and_where() {
    for (text, want) in [
        ("suffix:x", "expected `MATCH... => ACTION`"),
        (" => direct", "at least one match"),
        ("dom:x => direct", "unknown match \"dom:x\""),
        ("domain:exa mple => direct", "unknown match \"mple\""),
        ("domain:a..b => direct", "\"a..b\" is not a domain name"),
        ("cidr:10.0.0.0/33 => direct", "not an address"),
        ("port:0 => direct", "not a port"),
        ("port:9-8 => direct", "not a port"),
        ("port:70000 => direct", "not a port"),
        ("keyword: => block", "needs some text"),
        ("tcp => allow", "unknown action \"allow\""),
    ] {
        let e = parse_rule(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
    let e = parse_file("rules.txt", "# ok\ntcp => proxy\nudp => nope\n").unwrap_err();
    assert!(e.starts_with("rules.txt:3: unknown action"), "{e}");
}

#[test]
fn values_are_read_as_the_surrounding_tools_write_them() {
    let (m, a) =
        parse_rule("cidr:10.1.2.3/8, PORT:0x1bb, suffix:.Example.org. TCP => DIRECT").unwrap();
    assert_eq!(a, Action::Direct);
    assert_eq!(
        m,
        vec![
            Match::Cidr("10.0.0.0/8".parse().unwrap()),
            Match::Port(443, 443),
            Match::Suffix("example.org".into()),
            Match::Proto(Proto::Tcp),
        ]
    );
    let (_, a) = parse_rule("udp => proxy:eu-1").unwrap();
    assert_eq!(a, Action::Proxy(Some("eu-1".into())));
    assert_eq!(a.to_string(), "proxy:eu-1");
    assert!(parse_rule("udp => direct:x").is_err());
    let (m, _) = parse_rule("cidr:::ffff:10.0.0.0/104 => block").unwrap();
    assert_eq!(m, vec![Match::Cidr("10.0.0.0/8".parse().unwrap())]);
    let e = parse_rule("udp => proxy:e u").unwrap_err().to_string();
    assert!(e.contains("not a group name"), "{e}");
    let (m, _) = parse_rule("cidr:192.0.2.1 => block").unwrap();
    assert_eq!(m, vec![Match::Cidr("192.0.2.1/32".parse().unwrap())]);
    let r = Rule {
        matches: m,
        action: Action::Block,
        origin: "x".into(),
    };
    assert_eq!(r.to_string(), "cidr:192.0.2.1/32 => block");
}

#[test]
fn rules_test_targets() {
    let t = |name: Option<&str>, addr: Option<&str>, port| TestTarget {
        name: name.map(String::from),
        addr: addr.map(|a| a.parse().unwrap()),
        port,
    };
    for (text, want) in [
        ("Example.org:443", t(Some("example.org"), None, Some(443))),
        ("example.org", t(Some("example.org"), None, None)),
        ("[2001:db8::1]:53", t(None, Some("2001:db8::1"), Some(53))),
        ("2001:db8::1", t(None, Some("2001:db8::1"), None)),
        ("10.0.0.1:80", t(None, Some("10.0.0.1"), Some(80))),
    ] {
        assert_eq!(parse_target(text).unwrap(), want, "{text}");
    }
    assert!(parse_target("bad name:80").is_err());
}

/// A small deterministic generator, so the index is checked against the
/// plain first-match scan on many rule sets without a random crate.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn random_match(g: &mut Lcg) -> String {
    let names = [
        "a.test",
        "b.a.test",
        "c.b.a.test",
        "video.test",
        "x.org",
        "org",
    ];
    let nets = [
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.3",
        "0.0.0.0/0",
        "2001:db8::/32",
        "2001:db8::1",
        "::/0",
    ];
    match g.next(8) {
        0 => format!("domain:{}", names[g.next(6) as usize]),
        1 => format!("suffix:{}", names[g.next(6) as usize]),
        2 => format!("keyword:{}", ["vid", "a.t", "org", "b"][g.next(4) as usize]),
        3 => format!("cidr:{}", nets[g.next(7) as usize]),
        4 => format!("port:{}-{}", 1 + g.next(100), 100 + g.next(100)),
        5 => ["tcp", "udp"][g.next(2) as usize].to_string(),
        6 => format!(
            "src:{}",
            ["192.168.1.0/24", "192.168.2.0/24"][g.next(2) as usize]
        ),
        _ => format!("suffix:{}", names[g.next(6) as usize]),
    }
}

#[test]
fn the_index_chooses_as_the_plain_scan_does() {
    let mut g = Lcg(7);
    let names = [
        None,
        Some("a.test"),
        Some("c.b.a.test"),
        Some("video.test"),
        Some("x.org"),
        Some("zz"),
    ];
    let dsts = [
        None,
        Some("10.1.2.3"),
        Some("10.9.9.9"),
        Some("2001:db8::1"),
        Some("8.8.4.4"),
    ];
    for _ in 0..300 {
        let n = 1 + g.next(12) as usize;
        let text: Vec<String> = (0..n)
            .map(|_| {
                let k = 1 + g.next(3) as usize;
                let ms: Vec<String> = (0..k).map(|_| random_match(&mut g)).collect();
                format!(
                    "{} => {}",
                    ms.join(" "),
                    ["proxy", "direct", "block"][g.next(3) as usize]
                )
            })
            .collect();
        let r = Rules::new(
            parse_file("t", &text.join("\n")).unwrap(),
            Action::Proxy(None),
        );
        for name in names {
            for dst in dsts {
                for port in [50u16, 150] {
                    for proto in [Proto::Tcp, Proto::Udp] {
                        let mut qq = q(name, dst, port, proto);
                        qq.src = Some(
                            ["192.168.1.5", "192.168.2.5"][g.next(2) as usize]
                                .parse()
                                .unwrap(),
                        );
                        let plain = r.rules.iter().position(|x| x.holds(&qq));
                        let got = r.decide(&qq).rule.map(|x| x.origin.clone());
                        let want = plain.map(|i| r.rules[i].origin.clone());
                        assert_eq!(got, want, "rules {text:?} query {qq:?}");
                    }
                }
            }
        }
    }
}

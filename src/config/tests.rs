use super::*;
use crate::tun::TunConfig;
use std::path::PathBuf;

/// A scratch folder, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("sockstun-config-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tun(argv: &[&str]) -> Result<TunArgs, String> {
    let mut v = vec!["sockstun", "tun"];
    v.extend_from_slice(argv);
    match load(v).map_err(|e| e.to_string())?.command {
        Command::Tun(a) => Ok(a),
        _ => unreachable!(),
    }
}

fn server(argv: &[&str]) -> Result<ServerArgs, String> {
    let mut v = vec!["sockstun", "server"];
    v.extend_from_slice(argv);
    match load(v).map_err(|e| e.to_string())?.command {
        Command::Server(a) => Ok(a),
        _ => unreachable!(),
    }
}

/// Debug text of the settings, without the file's own name.
fn tun_settings(mut a: TunArgs) -> String {
    a.ops.config = None;
    format!("{a:?}")
}

fn server_settings(mut a: ServerArgs) -> String {
    a.ops.config = None;
    format!("{a:?}")
}

/// Every flag of TUN mode with a value other than its default: TOML text,
/// flag words.
const TUN_FLAGS: &[(&str, &str, &[&str])] = &[
    (
        "proxy",
        r#"["socks5://127.0.0.1:1080", "http://127.0.0.1:3128"]"#,
        &[
            "--proxy",
            "socks5://127.0.0.1:1080",
            "--proxy",
            "http://127.0.0.1:3128",
        ],
    ),
    (
        "proxy-policy",
        r#""round-robin""#,
        &["--proxy-policy", "round-robin"],
    ),
    ("health-interval", "5", &["--health-interval", "5"]),
    (
        "health-target",
        r#""example.org:80""#,
        &["--health-target", "example.org:80"],
    ),
    ("device", r#""st9""#, &["--device", "st9"]),
    ("fd", "3", &["--fd", "3"]),
    ("ipv4", r#""10.9.0.1/24""#, &["--ipv4", "10.9.0.1/24"]),
    ("ipv6", r#""fd00:9::1/64""#, &["--ipv6", "fd00:9::1/64"]),
    ("mtu", "1500", &["--mtu", "1500"]),
    ("fwmark", "0x438", &["--fwmark", "0x438"]),
    ("bind-interface", r#""eth0""#, &["--bind-interface", "eth0"]),
    (
        "admin",
        r#""127.0.0.1:9090""#,
        &["--admin", "127.0.0.1:9090"],
    ),
    // --admin-public needs --admin.
    (
        "admin-public",
        "true\nadmin = \"0.0.0.0:9090\"",
        &["--admin-public", "--admin", "0.0.0.0:9090"],
    ),
    ("dns", r#""tcp""#, &["--dns", "tcp"]),
    (
        "dns-upstream",
        r#""1.1.1.1""#,
        &["--dns-upstream", "1.1.1.1"],
    ),
    (
        "dns-pool4",
        r#""198.19.0.0/24""#,
        &["--dns-pool4", "198.19.0.0/24"],
    ),
    ("dns-pool6", r#""none""#, &["--dns-pool6", "none"]),
    ("udp-timeout", "30", &["--udp-timeout", "30"]),
    ("max-udp-flows", "64", &["--max-udp-flows", "64"]),
    ("max-tcp-flows", "100", &["--max-tcp-flows", "100"]),
    ("connect-timeout", "3", &["--connect-timeout", "3"]),
    ("socks-pipeline", "true", &["--socks-pipeline"]),
    ("no-socks-pipeline", "true", &["--no-socks-pipeline"]),
    ("warm", "0", &["--warm", "0"]),
    ("no-offload", "true", &["--no-offload"]),
    ("queues", "2", &["--queues", "2"]),
    (
        "group",
        r#"["eu=socks5://127.0.0.1:1081", "eu=http://127.0.0.1:3128"]"#,
        &[
            "--group",
            "eu=socks5://127.0.0.1:1081",
            "--group",
            "eu=http://127.0.0.1:3128",
        ],
    ),
    (
        "rule",
        r#"["suffix:lan.example => direct", "port:25 => block"]"#,
        &[
            "--rule",
            "suffix:lan.example => direct",
            "--rule",
            "port:25 => block",
        ],
    ),
    (
        "rules-file",
        r#""/etc/sockstun/rules.txt""#,
        &["--rules-file", "/etc/sockstun/rules.txt"],
    ),
    (
        "default-action",
        r#""direct""#,
        &["--default-action", "direct"],
    ),
    (
        "direct-dns",
        r#"["192.0.2.53", "192.0.2.54:5353"]"#,
        &[
            "--direct-dns",
            "192.0.2.53",
            "--direct-dns",
            "192.0.2.54:5353",
        ],
    ),
];

const SERVER_FLAGS: &[(&str, &str, &[&str])] = &[
    (
        "listen",
        r#"["127.0.0.1:1081", "[::1]:1081"]"#,
        &["--listen", "127.0.0.1:1081", "--listen", "[::1]:1081"],
    ),
    (
        "admin",
        r#""127.0.0.1:9091""#,
        &["--admin", "127.0.0.1:9091"],
    ),
    // --admin-public needs --admin.
    (
        "admin-public",
        "true\nadmin = \"0.0.0.0:9090\"",
        &["--admin-public", "--admin", "0.0.0.0:9090"],
    ),
    ("user", r#"["alice:s3cret"]"#, &["--user", "alice:s3cret"]),
    (
        "allow-client",
        r#"["10.0.0.0/8"]"#,
        &["--allow-client", "10.0.0.0/8"],
    ),
    (
        "allow-dest",
        r#"["127.0.0.1"]"#,
        &["--allow-dest", "127.0.0.1"],
    ),
    (
        "deny-dest",
        r#"["192.0.2.0/24"]"#,
        &["--deny-dest", "192.0.2.0/24"],
    ),
    ("max-clients", "100", &["--max-clients", "100"]),
    ("max-handshakes", "40", &["--max-handshakes", "40"]),
    (
        "max-handshakes-per-source",
        "4",
        &["--max-handshakes-per-source", "4"],
    ),
    ("handshake-timeout", "5", &["--handshake-timeout", "5"]),
    ("idle-timeout", "60", &["--idle-timeout", "60"]),
    ("connect-timeout", "3", &["--connect-timeout", "3"]),
    ("bind-timeout", "30", &["--bind-timeout", "30"]),
];

/// The flags of `mode` a file may set (`--users-file` is checked apart: it
/// names a file that must exist).
fn settable(mode: &str) -> Vec<String> {
    let cmd = command(false);
    let sub = cmd.find_subcommand(mode).unwrap();
    sub.get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !file::CLI_ONLY.contains(l) && *l != "log" && *l != "users-file")
        .map(String::from)
        .collect()
}

#[test]
fn every_flag_round_trips_through_the_file() {
    let d = Dir::new("flags");
    for (mode, flags) in [("tun", TUN_FLAGS), ("server", SERVER_FLAGS)] {
        let listed: Vec<&str> = flags.iter().map(|f| f.0).collect();
        for key in settable(mode) {
            assert!(
                listed.contains(&key.as_str()),
                "{mode} --{key} is not tested"
            );
        }
        for (key, toml_value, words) in flags {
            // `fd` and `device` conflict: the other one is not given.
            let base: &[&str] = if mode == "tun" && *key != "proxy" {
                &["--proxy", "socks5://127.0.0.1:1080"]
            } else {
                &[]
            };
            let text = match base {
                [] => format!("{key} = {toml_value}\n"),
                _ => format!("proxy = \"socks5://127.0.0.1:1080\"\n{key} = {toml_value}\n"),
            };
            let f = d.file(&format!("{mode}-{key}.toml"), &text);
            let mut by_flag: Vec<&str> = base.to_vec();
            by_flag.extend_from_slice(words);
            let by_file = ["--config", f.as_str()];
            let (a, b) = if mode == "tun" {
                (
                    tun_settings(tun(&by_flag).unwrap()),
                    tun_settings(tun(&by_file).unwrap_or_else(|e| panic!("{key}: {e}"))),
                )
            } else {
                (
                    server_settings(server(&by_flag).unwrap()),
                    server_settings(server(&by_file).unwrap_or_else(|e| panic!("{key}: {e}"))),
                )
            };
            assert_eq!(a, b, "{mode} {key}");
        }
    }
}

/// `--print-config`, then loading what it printed, gives the same settings.
#[test]
fn printed_config_loads_back_the_same() {
    let d = Dir::new("print");
    let pass = d.file("proxy.pass", "pa ss:w@rd\n");
    let upass = d.file("alice.pass", "s3cret\n");
    let tun_toml = d.file(
        "tun.toml",
        &format!(
            "proxy = [{{ url = \"socks5://bob@127.0.0.1:1080\", password-file = \"{pass}\" }}, \"socks4a://127.0.0.1:1081\"]\n\
             group = [{{ name = \"eu\", url = \"socks5://bob@127.0.0.1:1082\", password-file = \"{pass}\" }}]\n\
             mtu = 1500\nfwmark = 0x438\nsocks-pipeline = true\nipv6 = \"fd00:9::1/64\"\n"
        ),
    );
    let server_toml = d.file(
        "server.toml",
        &format!(
            "listen = [\"127.0.0.1:1081\"]\nuser = [{{ name = \"alice\", password-file = \"{upass}\" }}]\n\
             max-clients = 100\n\n[[rule]]\nname = \"no-smtp\"\naction = \"block\"\nports = [25, \"465-587\"]\n\n\
             [[rule]]\naction = \"pass\"\nusers = [\"alice\"]\ncommands = [\"connect\"]\nfrom = [\"127.0.0.0/8\"]\n"
        ),
    );
    for (mode, f) in [("tun", tun_toml.as_str()), ("server", server_toml.as_str())] {
        let argv: Vec<OsString> = [
            "sockstun",
            mode,
            "--config",
            f,
            "--mtu",
            "9000",
            "--print-config",
        ]
        .iter()
        .filter(|w| mode == "tun" || !["--mtu", "9000"].contains(w))
        .map(OsString::from)
        .collect();
        let printed = check(&argv).unwrap();
        assert!(
            !printed.contains("s3cret") && !printed.contains("w@rd"),
            "{printed}"
        );
        let again = d.file(&format!("{mode}-printed.toml"), &printed);
        if mode == "tun" {
            let a = tun(&["--config", f, "--mtu", "9000"]).unwrap();
            assert_eq!(a.mtu, Some(9000));
            assert_eq!(a.proxy[0], "socks5://bob:pa%20ss%3Aw%40rd@127.0.0.1:1080");
            assert_eq!(a.group, ["eu=socks5://bob:pa%20ss%3Aw%40rd@127.0.0.1:1082"]);
            let b = tun(&["--config", &again]).unwrap_or_else(|e| panic!("{e}\n{printed}"));
            assert_eq!(tun_settings(a), tun_settings(b), "{printed}");
        } else {
            let a = server(&["--config", f]).unwrap();
            assert_eq!(a.users, ["alice:s3cret"]);
            assert_eq!(a.rules.len(), 2);
            let b = server(&["--config", &again]).unwrap_or_else(|e| panic!("{e}\n{printed}"));
            assert_eq!(server_settings(a), server_settings(b), "{printed}");
        }
    }
}

#[test]
fn proxy_password_reaches_the_proxy_from_its_file() {
    let d = Dir::new("pw");
    let pass = d.file("p", "pa ss:w@rd\r\n");
    let f = d.file(
        "t.toml",
        "proxy = { url = \"socks5://bob@127.0.0.1:1080\", password-file = \"p\" }\n",
    );
    let cfg = TunConfig::from_args(&tun(&["--config", &f]).unwrap()).unwrap();
    assert_eq!(
        cfg.proxies[0].auth,
        Some(("bob".to_string(), "pa ss:w@rd".to_string()))
    );
    let _ = pass;
    // Inline and from a file at once, no user, a missing file: errors.
    for (t, why) in [
        (
            "{ url = \"socks5://bob:x@h:1\", password-file = \"p\" }",
            "has a password",
        ),
        (
            "{ url = \"socks5://h:1\", password-file = \"p\" }",
            "needs a user name",
        ),
        (
            "{ url = \"socks5://bob@h:1\", password-file = \"nope\" }",
            "nope",
        ),
        (
            "{ url = \"socks5://bob@h:1\", pasword-file = \"p\" }",
            "unknown key `pasword-file`",
        ),
        ("\"socks5://bob:********@h:1\"", "masked"),
    ] {
        let f = d.file("bad.toml", &format!("mtu = 1500\nproxy = {t}\n"));
        let e = tun(&["--config", &f]).unwrap_err();
        assert!(e.contains("line 2: proxy") && e.contains(why), "{t}: {e}");
    }
    let f = d.file("u.toml", "user = [\"carol:********\"]\n");
    assert!(server(&["--config", &f]).unwrap_err().contains("masked"));
}

#[test]
fn unknown_key_fails_naming_its_line() {
    let d = Dir::new("unknown");
    let f = d.file(
        "t.toml",
        "# a comment\nproxy = \"socks5://127.0.0.1:1080\"\n\nmtuu = 1500\n",
    );
    let e = tun(&["--config", &f]).unwrap_err();
    assert!(
        e.contains(&format!("{f} line 4")) && e.contains("mtuu"),
        "{e}"
    );
    // A server key is no TUN key, a rule key is checked too, and a
    // command-line option is no setting.
    let f = d.file(
        "t2.toml",
        "proxy = \"socks5://127.0.0.1:1\"\nmax-clients = 3\n",
    );
    assert!(tun(&["--config", &f]).unwrap_err().contains("line 2"));
    let f = d.file("s.toml", "[[rule]]\naction = \"pass\"\nuser = [\"a\"]\n");
    let e = server(&["--config", &f]).unwrap_err();
    assert!(e.contains("line 3") && e.contains("user"), "{e}");
    let f = d.file("s2.toml", "print-config = true\n");
    assert!(server(&["--config", &f]).unwrap_err().contains("line 1"));
}

#[test]
fn a_flag_overrides_the_file() {
    let d = Dir::new("override");
    let f = d.file(
        "t.toml",
        "proxy = [\"socks5://127.0.0.1:1\", \"socks5://127.0.0.1:2\"]\nmtu = 1500\ndevice = \"st1\"\nno-offload = true\n",
    );
    let a = tun(&[
        "--config",
        &f,
        "--mtu",
        "9000",
        "--proxy",
        "socks5://127.0.0.1:3",
    ])
    .unwrap();
    assert_eq!(a.mtu, Some(9000));
    assert_eq!(a.proxy, ["socks5://127.0.0.1:3"]);
    assert_eq!(a.device, "st1");
    assert!(a.no_offload);
    // --fd on the command line wins over the file's device (they conflict).
    let a = tun(&["--config", &f, "--fd", "3"]).unwrap();
    assert_eq!(a.fd, Some(3));
    // Without the file's proxy, --proxy is required as before.
    let f = d.file("t2.toml", "mtu = 1500\n");
    assert!(tun(&["--config", &f]).is_err());
}

#[test]
fn bad_values_give_the_same_error_from_file_and_flag() {
    let d = Dir::new("same");
    let p = "socks5://127.0.0.1:1";
    // (TOML, flag words): clap's value parsers, then the mode's validator.
    let cases: &[(&str, &[&str])] = &[
        ("mtu = \"0x\"", &["--mtu", "0x"]),
        ("fwmark = 0", &["--fwmark", "0"]),
        ("mtu = 1000", &["--mtu", "1000"]),
        ("proxy-policy = \"random\"", &["--proxy-policy", "random"]),
        ("ipv4 = \"10.0.0.300/8\"", &["--ipv4", "10.0.0.300/8"]),
        ("dns = \"tcp\"", &["--dns", "tcp"]),
        ("udp-timeout = 0", &["--udp-timeout", "0"]),
    ];
    let err = |r: Result<TunArgs, String>| match r {
        Err(e) => e,
        Ok(a) => TunConfig::from_args(&a)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap(),
    };
    for (toml_line, words) in cases {
        let f = d.file("t.toml", &format!("proxy = \"{p}\"\n{toml_line}\n"));
        let from_file = err(tun(&["--config", &f]));
        let mut argv = vec!["--proxy", p];
        argv.extend_from_slice(words);
        let from_flag = err(tun(&argv));
        assert!(
            from_file.contains(&from_flag),
            "{toml_line}: {from_file:?} vs {from_flag:?}"
        );
    }
    let f = d.file("s.toml", "allow-client = [\"nonsense\"]\n");
    let from_file = validate_server(&server(&["--config", &f]).unwrap())
        .err()
        .unwrap();
    let from_flag = validate_server(&server(&["--allow-client", "nonsense"]).unwrap())
        .err()
        .unwrap();
    assert_eq!(from_file.to_string(), from_flag.to_string());
    // A wrong type names the line.
    let f = d.file("t.toml", &format!("proxy = \"{p}\"\nmtu = [1500]\n"));
    assert!(tun(&["--config", &f]).unwrap_err().contains("line 2: mtu"));
}

#[test]
fn rules_are_validated_with_the_server() {
    let d = Dir::new("rules");
    let f = d.file(
        "s.toml",
        "[[rule]]\naction = \"pass\"\ncommands = [\"jump\"]\n",
    );
    let e = validate_server(&server(&["--config", &f]).unwrap())
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("rule \"rule 1\"") && e.to_string().contains("jump"),
        "{e}"
    );
    let f = d.file("s.toml", "[[rule]]\naction = \"maybe\"\n");
    assert!(server(&["--config", &f]).unwrap_err().contains("line 2"));
}

#[test]
fn examples_pass_check_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    for mode in ["tun", "server"] {
        let f = format!("{root}/examples/{mode}.toml");
        let argv: Vec<OsString> = ["sockstun", mode, "--config", &f, "--check-config"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(check(&argv), Ok("configuration OK\n".to_string()), "{f}");
    }
}

#[test]
fn inline_passwords_are_masked_when_printed() {
    let argv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
    let t = check(&argv(&[
        "sockstun",
        "tun",
        "--proxy",
        "socks5://u:inl1ne@127.0.0.1:1080",
        "--print-config",
    ]))
    .unwrap();
    assert!(
        !t.contains("inl1ne") && t.contains("\"socks5://u:********@127.0.0.1:1080\""),
        "{t}"
    );
    let s = check(&argv(&[
        "sockstun",
        "server",
        "--user",
        "carol:inl1ne",
        "--print-config",
    ]))
    .unwrap();
    assert!(
        !s.contains("inl1ne") && s.contains("\"carol:********\""),
        "{s}"
    );
}

#[test]
fn exec_takes_the_file_before_its_program() {
    let d = Dir::new("exec");
    let f = d.file(
        "t.toml",
        "proxy = [\"socks5://127.0.0.1:1\"]\nmtu = 1500\ndns-pool4 = \"198.19.0.0/20\"\n",
    );
    let v = [
        "sockstun", "exec", "--config", &f, "--", "curl", "--mtu", "x",
    ];
    let a = match load(v).map_err(|e| e.to_string()).unwrap().command {
        Command::Exec(a) => a,
        _ => unreachable!(),
    };
    // The file's settings are exec's, and the program's words its own.
    assert_eq!(a.tun.proxy, ["socks5://127.0.0.1:1"]);
    assert_eq!(
        (a.tun.mtu, a.tun.dns_pool4.as_str()),
        (Some(1500), "198.19.0.0/20")
    );
    assert_eq!(a.command, ["curl", "--mtu", "x"]);
    let argv: Vec<OsString> = [
        "sockstun",
        "exec",
        "--config",
        &f,
        "--check-config",
        "--",
        "true",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    assert_eq!(check(&argv).unwrap(), "configuration OK\n");
}

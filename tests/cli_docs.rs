//! `sockstun completions SHELL` and `sockstun man [SUBCOMMAND]`: what
//! packaging saves. No root, no namespace.

mod common;

use common::sockstun_bin;
use std::io::Write;
use std::process::{Command, Stdio};

fn sockstun(args: &[&str]) -> String {
    let out = Command::new(sockstun_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "sockstun {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_name_the_flags() {
    let bash = sockstun(&["completions", "bash"]);
    assert!(!bash.is_empty() && bash.contains("--proxy"), "{bash}");
    for shell in ["zsh", "fish"] {
        let s = sockstun(&["completions", shell]);
        assert!(s.contains("proxy"), "{shell}: {s}");
    }
    let bad = Command::new(sockstun_bin())
        .args(["completions", "cmd.exe"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// `man -l -` renders `page` (when man is installed): its text.
fn rendered(page: &str) -> Option<String> {
    let mut child = Command::new("man")
        .args(["-l", "-"])
        .env("MANPAGER", "cat")
        .env("LC_ALL", "C")
        .env("MANWIDTH", "100")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "man -l - refused the page: {out:?}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn man_pages_are_roff() {
    let page = sockstun(&["man"]);
    assert!(page.starts_with(".TH sockstun 1"), "{page}");
    let tun = sockstun(&["man", "tun"]);
    assert!(tun.starts_with(".TH sockstun-tun 1"), "{tun}");
    match rendered(&page) {
        Some(text) => {
            assert!(text.contains("sockstun"), "{text}");
            assert!(text.contains("check"), "{text}");
            let text = rendered(&tun).unwrap();
            assert!(text.contains("--proxy"), "{text}");
        }
        None => eprintln!("man is not installed: only the roff header was checked"),
    }
}

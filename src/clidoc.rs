//! The command line's own documentation, generated from `cli::Cli` (the
//! definition the parser uses, so neither can drift from the flags): shell
//! completions (`clap_complete`) and man pages (`clap_mangen`). Packaging
//! saves them: `sockstun completions bash > sockstun.bash`,
//! `sockstun man > sockstun.1`, `sockstun man tun > sockstun-tun.1`.

use crate::cli::Cli;
use anyhow::{anyhow, Result};
use clap::CommandFactory;
use std::io::Write;

/// The completion script for `shell` into `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<()> {
    clap_complete::generate(shell, &mut Cli::command(), "sockstun", out);
    Ok(())
}

/// The man page (roff) of sockstun, or of one of its subcommands, into `out`.
pub fn man(subcommand: Option<&str>, out: &mut dyn Write) -> Result<()> {
    let mut cmd = Cli::command();
    // Built, so that the subcommands carry the global flags (--log).
    cmd.build();
    let page = match subcommand {
        None => cmd,
        Some(name) => {
            let sub = cmd
                .find_subcommand(name)
                .filter(|s| !s.is_hide_set())
                .ok_or_else(|| anyhow!("no subcommand {name:?}"))?
                .clone();
            // A page of its own, named as man(7) names them: sockstun-tun(1).
            let title: &'static str =
                Box::leak(format!("sockstun-{}", sub.get_name()).into_boxed_str());
            let bin: &'static str =
                Box::leak(format!("sockstun {}", sub.get_name()).into_boxed_str());
            sub.name(title).display_name(title).bin_name(bin)
        }
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page).render(&mut roff)?;
    out.write_all(title_first(&String::from_utf8_lossy(&roff)).as_bytes())?;
    Ok(())
}

/// The page with its `.TH` line first, as man-pages(7) wants it (and as
/// tools that sniff a page's first line expect): clap_mangen starts with the
/// definition of the apostrophe string (`.ie`/`.el ... Aq`), which works as
/// well right after the title, before any text uses it.
fn title_first(page: &str) -> String {
    let lines: Vec<&str> = page.lines().collect();
    match lines.iter().position(|l| l.starts_with(".TH ")) {
        Some(i) if i > 0 => {
            let mut v = vec![lines[i]];
            v.extend_from_slice(&lines[..i]);
            v.extend_from_slice(&lines[i + 1..]);
            v.join("\n") + "\n"
        }
        _ => page.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_completions() {
        let mut page = Vec::new();
        man(None, &mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.starts_with(".TH sockstun 1 "), "{page}");
        // The apostrophe string is still defined, after the title.
        assert!(page.contains("\n.ie \\n(.g .ds Aq"), "{page}");
        for sub in ["check", "completions", "man", "server", "tun"] {
            assert!(page.contains(sub), "{sub} missing from the main page");
        }
        let mut tun = Vec::new();
        man(Some("tun"), &mut tun).unwrap();
        let tun = String::from_utf8(tun).unwrap();
        assert!(tun.starts_with(".TH sockstun-tun 1 "), "{tun}");
        assert!(tun.contains("proxy") && tun.contains("log"), "{tun}");
        assert!(man(Some("nope"), &mut Vec::new()).is_err());
        let mut bash = Vec::new();
        completions(clap_complete::Shell::Bash, &mut bash).unwrap();
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("--proxy") && bash.contains("--target"));
    }
}

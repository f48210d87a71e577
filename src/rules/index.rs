//! Lookup tables over the rules, so a choice costs a few hash lookups
//! whatever the number of rules: names exact and by label suffix in hash
//! maps, keywords in one Aho-Corasick automaton, addresses by prefix length
//! (one map per length in use). Each rule is filed under one of its matches
//! (the most selective) and checked whole when that match hits; the rules
//! no table can file (ports, protocol, source only) are checked in order.

use super::rule::{Match, Query, Rule};
use aho_corasick::AhoCorasick;
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Default)]
pub(super) struct Index {
    exact: HashMap<Box<str>, Vec<usize>>,
    suffix: HashMap<Box<str>, Vec<usize>>,
    keywords: Option<AhoCorasick>,
    /// Pattern id of the automaton -> the rules filed under it.
    keyword_rules: Vec<Vec<usize>>,
    v4: Vec<(u8, HashMap<u32, Vec<usize>>)>,
    v6: Vec<(u8, HashMap<u128, Vec<usize>>)>,
    rest: Vec<usize>,
}

/// The match a rule is filed under, most selective first.
fn key_of(rule: &Rule) -> Option<&Match> {
    let rank = |m: &Match| match m {
        Match::Domain(_) => 0,
        Match::Suffix(_) => 1,
        Match::Cidr(_) => 2,
        Match::Keyword(_) => 3,
        _ => 4,
    };
    rule.matches
        .iter()
        .filter(|m| rank(m) < 4)
        .min_by_key(|m| rank(m))
}

fn mask4(ip: u32, len: u8) -> u32 {
    ip.checked_shr(32 - len as u32)
        .unwrap_or(0)
        .checked_shl(32 - len as u32)
        .unwrap_or(0)
}

fn mask6(ip: u128, len: u8) -> u128 {
    ip.checked_shr(128 - len as u32)
        .unwrap_or(0)
        .checked_shl(128 - len as u32)
        .unwrap_or(0)
}

fn file_under<K: std::hash::Hash + Eq>(
    tables: &mut Vec<(u8, HashMap<K, Vec<usize>>)>,
    len: u8,
    key: K,
    i: usize,
) {
    let pos = match tables.iter().position(|(l, _)| *l == len) {
        Some(p) => p,
        None => {
            tables.push((len, HashMap::new()));
            tables.len() - 1
        }
    };
    tables[pos].1.entry(key).or_default().push(i);
}

impl Index {
    pub(super) fn build(rules: &[Rule]) -> Index {
        let mut ix = Index::default();
        let mut patterns: Vec<Box<str>> = Vec::new();
        let mut pattern_of: HashMap<Box<str>, usize> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            match key_of(r) {
                Some(Match::Domain(d)) => ix.exact.entry(d.clone()).or_default().push(i),
                Some(Match::Suffix(s)) => ix.suffix.entry(s.clone()).or_default().push(i),
                Some(Match::Cidr(net)) => match crate::net::unmap(net.network()) {
                    IpAddr::V4(a) if net.is_ipv4() => {
                        let len = net.prefix();
                        file_under(&mut ix.v4, len, mask4(a.into(), len), i)
                    }
                    IpAddr::V6(a) => {
                        let len = net.prefix();
                        file_under(&mut ix.v6, len, mask6(a.into(), len), i)
                    }
                    IpAddr::V4(_) => ix.rest.push(i),
                },
                Some(Match::Keyword(k)) => {
                    let p = *pattern_of.entry(k.clone()).or_insert_with(|| {
                        patterns.push(k.clone());
                        ix.keyword_rules.push(Vec::new());
                        patterns.len() - 1
                    });
                    ix.keyword_rules[p].push(i);
                }
                _ => ix.rest.push(i),
            }
        }
        if !patterns.is_empty() {
            // Keywords are plain lower-case strings: building cannot fail
            // short of a size limit thousands of keywords are far from.
            match AhoCorasick::new(patterns.iter().map(|p| p.as_bytes())) {
                Ok(ac) => ix.keywords = Some(ac),
                Err(_) => ix.rest.extend(ix.keyword_rules.drain(..).flatten()),
            }
        }
        ix
    }

    /// The index of the first rule that holds for `q`.
    pub(super) fn first(&self, rules: &[Rule], q: &Query<'_>) -> Option<usize> {
        let mut best = usize::MAX;
        // Candidates in each list are in rule order: stop at the first that
        // holds, or at one later than the best so far.
        let mut consider = |list: &[usize]| {
            for &i in list {
                if i >= best {
                    break;
                }
                if rules[i].holds(q) {
                    best = i;
                    break;
                }
            }
        };
        if let Some(name) = q.name {
            if let Some(l) = self.exact.get(name) {
                consider(l);
            }
            if !self.suffix.is_empty() {
                let mut rest = name;
                loop {
                    if let Some(l) = self.suffix.get(rest) {
                        consider(l);
                    }
                    match rest.find('.') {
                        Some(dot) => rest = &rest[dot + 1..],
                        None => break,
                    }
                }
            }
            if let Some(ac) = &self.keywords {
                for m in ac.find_overlapping_iter(name) {
                    consider(&self.keyword_rules[m.pattern().as_usize()]);
                }
            }
        }
        match q.dst.map(crate::net::unmap) {
            Some(IpAddr::V4(a)) => {
                let a = u32::from(a);
                for (len, t) in &self.v4 {
                    if let Some(l) = t.get(&mask4(a, *len)) {
                        consider(l);
                    }
                }
            }
            Some(IpAddr::V6(a)) => {
                let a = u128::from(a);
                for (len, t) in &self.v6 {
                    if let Some(l) = t.get(&mask6(a, *len)) {
                        consider(l);
                    }
                }
            }
            None => {}
        }
        consider(&self.rest);
        (best != usize::MAX).then_some(best)
    }
}

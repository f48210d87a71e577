//! Lookup tables over the rules, so a choice costs a few lookups whatever
//! the number of rules: names exact and by label suffix in hash maps,
//! keywords in one Aho-Corasick automaton, destination and source addresses
//! by prefix length (one FxHash map per length in use). Each rule is filed
//! under one of its matches (the most selective) and checked whole when that
//! match hits; the rules no table can file (ports and protocol only) are
//! checked in order.

use super::rule::{Match, Query, Rule};
use aho_corasick::AhoCorasick;
use ipnetwork::IpNetwork;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Default)]
pub(super) struct Index {
    exact: FxHashMap<Box<str>, Vec<usize>>,
    suffix: FxHashMap<Box<str>, Vec<usize>>,
    keywords: Option<AhoCorasick>,
    /// Pattern id of the automaton -> the rules filed under it.
    keyword_rules: Vec<Vec<usize>>,
    v4: Tables<u32>,
    v6: Tables<u128>,
    /// Rules filed under their source network (`src:`, gateway mode).
    src4: Tables<u32>,
    src6: Tables<u128>,
    rest: Vec<usize>,
}

/// One map per prefix length in use: masked address -> rules.
type Tables<K> = Vec<(u8, FxHashMap<K, Vec<usize>>)>;

/// The match a rule is filed under, most selective first.
fn key_of(rule: &Rule) -> Option<&Match> {
    let rank = |m: &Match| match m {
        Match::Domain(_) => 0,
        Match::Suffix(_) => 1,
        Match::Cidr(_) => 2,
        Match::Keyword(_) => 3,
        Match::Src(_) => 4,
        _ => 5,
    };
    rule.matches
        .iter()
        .filter(|m| rank(m) < 5)
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

fn file_under<K: std::hash::Hash + Eq>(tables: &mut Tables<K>, len: u8, key: K, i: usize) {
    let pos = match tables.iter().position(|(l, _)| *l == len) {
        Some(p) => p,
        None => {
            tables.push((len, FxHashMap::default()));
            tables.len() - 1
        }
    };
    tables[pos].1.entry(key).or_default().push(i);
}

/// File rule `i` under `net` in the table of its family; false for a v6
/// network of v4-mapped addresses (no table: checked in order).
fn file_net(v4: &mut Tables<u32>, v6: &mut Tables<u128>, net: &IpNetwork, i: usize) -> bool {
    let len = net.prefix();
    match crate::net::unmap(net.network()) {
        IpAddr::V4(a) if net.is_ipv4() => file_under(v4, len, mask4(a.into(), len), i),
        IpAddr::V6(a) => file_under(v6, len, mask6(a.into(), len), i),
        IpAddr::V4(_) => return false,
    }
    true
}

/// The rules filed under a network that holds `ip`.
fn lookup<'a>(
    v4: &'a Tables<u32>,
    v6: &'a Tables<u128>,
    ip: IpAddr,
    mut f: impl FnMut(&'a [usize]),
) {
    match crate::net::unmap(ip) {
        IpAddr::V4(a) => {
            let a = u32::from(a);
            for (len, t) in v4 {
                if let Some(l) = t.get(&mask4(a, *len)) {
                    f(l);
                }
            }
        }
        IpAddr::V6(a) => {
            let a = u128::from(a);
            for (len, t) in v6 {
                if let Some(l) = t.get(&mask6(a, *len)) {
                    f(l);
                }
            }
        }
    }
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
                Some(Match::Cidr(net)) => {
                    if !file_net(&mut ix.v4, &mut ix.v6, net, i) {
                        ix.rest.push(i)
                    }
                }
                Some(Match::Src(net)) => {
                    if !file_net(&mut ix.src4, &mut ix.src6, net, i) {
                        ix.rest.push(i)
                    }
                }
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
                Err(_) => {
                    // The in-order list must stay in rule order.
                    ix.rest.extend(ix.keyword_rules.drain(..).flatten());
                    ix.rest.sort_unstable();
                }
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
        if let Some(ip) = q.dst {
            lookup(&self.v4, &self.v6, ip, &mut consider);
        }
        if let Some(ip) = q.src {
            lookup(&self.src4, &self.src6, ip, &mut consider);
        }
        consider(&self.rest);
        (best != usize::MAX).then_some(best)
    }
}

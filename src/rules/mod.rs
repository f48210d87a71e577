//! Routing rules of TUN mode: which way each new flow goes (`proxy`,
//! `direct` or `block`), chosen by the first rule all of whose matches hold,
//! else by the default action.
//!
//! Pure code: parsing (`parse`), the lookup tables that keep the choice
//! cheap with thousands of rules (`index`), and the choice itself. The TUN
//! side builds a [`Query`] per new flow and acts on the [`Decision`].

mod index;
mod parse;
mod rule;
#[cfg(test)]
mod tests;

pub use parse::{parse_file, parse_rule, parse_target, ParseError, TestTarget};
pub use rule::{group_name, Action, Match, Proto, Query, Rule};

use index::Index;
use std::sync::Arc;

/// The way chosen for a flow, and the rule that chose it (None: the default).
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    pub action: &'a Action,
    pub rule: Option<&'a Rule>,
}

impl Decision<'_> {
    /// The rule's origin, or "default", for the flow's log line.
    pub fn origin(&self) -> &str {
        self.rule.map_or("default", |r| &r.origin)
    }
}

/// The rules in force, ready to be asked.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    default: Action,
    index: Index,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules::new(Vec::new(), Action::Proxy(None))
    }
}

impl Rules {
    pub fn new(rules: Vec<Rule>, default: Action) -> Rules {
        let index = Index::build(&rules);
        Rules {
            rules,
            default,
            index,
        }
    }

    /// No rules, everything through the proxy: nothing to ask per flow.
    pub fn is_plain(&self) -> bool {
        self.rules.is_empty() && self.default == Action::Proxy(None)
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn default_action(&self) -> &Action {
        &self.default
    }

    /// Every group a rule (or the default) sends flows to, for validation.
    pub fn groups(&self) -> impl Iterator<Item = &Arc<str>> {
        self.rules
            .iter()
            .map(|r| &r.action)
            .chain(std::iter::once(&self.default))
            .filter_map(|a| match a {
                Action::Proxy(Some(g)) => Some(g),
                _ => None,
            })
    }

    /// Whether any flow can go direct (the host then dials, and may resolve).
    pub fn can_go_direct(&self) -> bool {
        self.default == Action::Direct || self.rules.iter().any(|r| r.action == Action::Direct)
    }

    /// The first rule that holds for `q`, else the default.
    pub fn decide<'a>(&'a self, q: &Query<'_>) -> Decision<'a> {
        if self.rules.is_empty() {
            return Decision {
                action: &self.default,
                rule: None,
            };
        }
        // Names are kept lower case (the virtual DNS hands them out so);
        // one that is not is folded here rather than missed.
        let folded;
        let mut q = *q;
        if let Some(n) = q.name {
            let n = n.strip_suffix('.').unwrap_or(n);
            if n.bytes().any(|b| b.is_ascii_uppercase()) {
                folded = n.to_ascii_lowercase();
                q.name = Some(&folded);
            } else {
                q.name = Some(n);
            }
        }
        match self.index.first(&self.rules, &q) {
            Some(i) => {
                let r = &self.rules[i];
                Decision {
                    action: &r.action,
                    rule: Some(r),
                }
            }
            None => Decision {
                action: &self.default,
                rule: None,
            },
        }
    }
}

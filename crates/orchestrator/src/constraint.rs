//! Placement constraints (`--constraint`) and placement preferences (`--placement-pref`), with
//! Docker's syntax and swarmkit's matching rules.
//!
//! A constraint is `KEY==VALUE` or `KEY!=VALUE` (spaces around the operator are allowed). Keys:
//! `node.id`, `node.hostname`, `node.role`, `node.platform.os`, `node.platform.arch`,
//! `node.labels.<label>` and `engine.labels.<label>`. As in swarmkit, the fixed keys are matched
//! without regard to case, label names are case-sensitive, and **values are compared without regard
//! to ASCII case for every key** (swarmkit's `strings.EqualFold`). An absent attribute compares as
//! the empty string, so `node.labels.zone!=a` matches a node without a `zone` label and
//! `node.labels.zone==a` does not. rswarm nodes carry no engine labels: `engine.labels.*` is always
//! absent.
//!
//! Unlike swarmkit, which accepts any key and then matches no node, an unknown key is refused at
//! parse time, so a typo is reported when the service is created rather than as a service that
//! never schedules.

use std::fmt;

use rswarm_store::{Node, NodeRole};

/// Why a constraint or preference could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    /// No `==` or `!=` in the expression.
    #[error("constraint {expr:?} has no operator: write KEY==VALUE or KEY!=VALUE, e.g. node.labels.zone==a")]
    NoOperator {
        /// The expression as given.
        expr: String,
    },
    /// The key is not one rswarm knows.
    #[error("constraint {expr:?} uses unknown key {key:?}: use node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.<label> or engine.labels.<label>")]
    UnknownKey {
        /// The expression as given.
        expr: String,
        /// The key found left of the operator.
        key: String,
    },
    /// The value is empty or holds characters a value may not hold.
    #[error("constraint {expr:?} has invalid value {value:?}: a value is a non-empty run of letters, digits, spaces and : - _ . * ( ) ? + [ ] \\ ^ $ | / (no further = ! < > ~)")]
    InvalidValue {
        /// The expression as given.
        expr: String,
        /// The value found right of the operator.
        value: String,
    },
    /// `node.role` compared with something other than `manager` or `worker`.
    #[error(
        "constraint {expr:?} compares node.role with {value:?}: the role is manager or worker"
    )]
    InvalidRole {
        /// The expression as given.
        expr: String,
        /// The value given.
        value: String,
    },
    /// A placement preference not of the form `spread=node.labels.<label>`.
    #[error("placement preference {expr:?} is invalid: write spread=node.labels.<label> (or spread=engine.labels.<label>)")]
    InvalidPreference {
        /// The preference as given.
        expr: String,
    },
}

/// `==` or `!=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// `==`: the attribute equals the value.
    Eq,
    /// `!=`: the attribute differs from the value (an absent attribute differs from every value).
    NotEq,
}

/// The node attribute a constraint looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConstraintKey {
    /// `node.id`.
    NodeId,
    /// `node.hostname`.
    Hostname,
    /// `node.role`.
    Role,
    /// `node.platform.os`.
    Os,
    /// `node.platform.arch`.
    Arch,
    /// `node.labels.<label>` (the label name, case-sensitive).
    NodeLabel(String),
    /// `engine.labels.<label>`: rswarm has no engine labels, so this is always absent.
    EngineLabel(String),
}

/// One parsed placement constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    /// The attribute compared.
    pub key: ConstraintKey,
    /// How it is compared.
    pub op: Operator,
    /// The value compared with (ASCII case-insensitively).
    pub value: String,
    expr: String,
}

const NODE_LABELS: &str = "node.labels.";
const ENGINE_LABELS: &str = "engine.labels.";

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() > prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

fn valid_value(v: &str) -> bool {
    !v.is_empty()
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || c.is_whitespace()
                || matches!(
                    c,
                    ':' | '-'
                        | '_'
                        | '.'
                        | '*'
                        | '('
                        | ')'
                        | '?'
                        | '+'
                        | '['
                        | ']'
                        | '\\'
                        | '^'
                        | '$'
                        | '|'
                        | '/'
                )
        })
}

impl Constraint {
    /// Parses `KEY==VALUE` or `KEY!=VALUE`.
    pub fn parse(expr: &str) -> Result<Constraint, ConstraintError> {
        // Like swarmkit: look for `==` first, then `!=`, and split at the first occurrence.
        let (op, key, value) = if let Some((k, v)) = expr.split_once("==") {
            (Operator::Eq, k, v)
        } else if let Some((k, v)) = expr.split_once("!=") {
            (Operator::NotEq, k, v)
        } else {
            return Err(ConstraintError::NoOperator { expr: expr.into() });
        };
        let key = key.trim();
        let value = value.trim();
        let unknown = || ConstraintError::UnknownKey {
            expr: expr.into(),
            key: key.into(),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let parsed_key = if key.eq_ignore_ascii_case("node.id") {
            ConstraintKey::NodeId
        } else if key.eq_ignore_ascii_case("node.hostname") {
            ConstraintKey::Hostname
        } else if key.eq_ignore_ascii_case("node.role") {
            ConstraintKey::Role
        } else if key.eq_ignore_ascii_case("node.platform.os") {
            ConstraintKey::Os
        } else if key.eq_ignore_ascii_case("node.platform.arch") {
            ConstraintKey::Arch
        } else if let Some(label) = strip_prefix_ignore_case(key, NODE_LABELS) {
            if !label_ok(label) {
                return Err(unknown());
            }
            ConstraintKey::NodeLabel(label.into())
        } else if let Some(label) = strip_prefix_ignore_case(key, ENGINE_LABELS) {
            if !label_ok(label) {
                return Err(unknown());
            }
            ConstraintKey::EngineLabel(label.into())
        } else {
            return Err(unknown());
        };
        if !valid_value(value) {
            return Err(ConstraintError::InvalidValue {
                expr: expr.into(),
                value: value.into(),
            });
        }
        if parsed_key == ConstraintKey::Role
            && !value.eq_ignore_ascii_case("manager")
            && !value.eq_ignore_ascii_case("worker")
        {
            return Err(ConstraintError::InvalidRole {
                expr: expr.into(),
                value: value.into(),
            });
        }
        Ok(Constraint {
            key: parsed_key,
            op,
            value: value.into(),
            expr: expr.trim().into(),
        })
    }

    /// Parses every expression of a list (a service's `placement.constraints`).
    pub fn parse_all(exprs: &[String]) -> Result<Vec<Constraint>, ConstraintError> {
        exprs.iter().map(|e| Constraint::parse(e)).collect()
    }

    /// The expression as the user wrote it (trimmed), for messages.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// Whether `node` satisfies this constraint.
    pub fn matches(&self, node: &Node) -> bool {
        let actual: &str = match &self.key {
            ConstraintKey::NodeId => &node.id,
            ConstraintKey::Hostname => &node.hostname,
            ConstraintKey::Role => match node.role() {
                NodeRole::Manager => "manager",
                NodeRole::Worker => "worker",
            },
            ConstraintKey::Os => &node.os,
            ConstraintKey::Arch => &node.arch,
            ConstraintKey::NodeLabel(l) => node.labels.get(l).map_or("", String::as_str),
            ConstraintKey::EngineLabel(_) => "",
        };
        let equal = actual.eq_ignore_ascii_case(&self.value);
        match self.op {
            Operator::Eq => equal,
            Operator::NotEq => !equal,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

/// Whether `node` satisfies every constraint of the list.
pub fn matches_all(constraints: &[Constraint], node: &Node) -> bool {
    constraints.iter().all(|c| c.matches(node))
}

/// Docker's architecture aliases: `x86_64` is `amd64`, `aarch64` is `arm64`. Compare the result
/// without regard to ASCII case.
pub fn canonical_arch(arch: &str) -> &str {
    if arch.eq_ignore_ascii_case("x86_64") || arch.eq_ignore_ascii_case("x86-64") {
        "amd64"
    } else if arch.eq_ignore_ascii_case("aarch64") {
        "arm64"
    } else {
        arch
    }
}

/// Whether the platform `os/arch[/variant]` describes a node with `node_os` and `node_arch` (the
/// variant is not compared; an empty part matches anything).
pub(crate) fn platform_eq(platform: &str, node_os: &str, node_arch: &str) -> bool {
    let mut parts = platform.split('/');
    let os = parts.next().unwrap_or("");
    let arch = canonical_arch(parts.next().unwrap_or(""));
    (os.is_empty() || os.eq_ignore_ascii_case(node_os))
        && (arch.is_empty() || arch.eq_ignore_ascii_case(canonical_arch(node_arch)))
}

/// Whether `node` runs one of `platforms` (`os/arch[/variant]`); an empty list matches every node.
pub fn platform_matches(platforms: &[String], node: &Node) -> bool {
    platforms.is_empty()
        || platforms
            .iter()
            .any(|p| platform_eq(p, &node.os, &node.arch))
}

/// A placement preference: `spread=node.labels.<label>` spreads a service's tasks evenly over the
/// values of the label; nodes without the label form one more group of their own (Docker's rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Preference {
    /// Spread over the values of this node label.
    SpreadNodeLabel(String),
    /// Spread over an engine label: rswarm has none, so every node is in the same (absent) group
    /// and the preference changes nothing.
    SpreadEngineLabel(String),
}

impl Preference {
    /// Parses `spread=node.labels.<label>` (or `spread=engine.labels.<label>`).
    pub fn parse(expr: &str) -> Result<Preference, ConstraintError> {
        let bad = || ConstraintError::InvalidPreference { expr: expr.into() };
        let (kind, descriptor) = expr.split_once('=').ok_or_else(bad)?;
        if !kind.trim().eq_ignore_ascii_case("spread") {
            return Err(bad());
        }
        let descriptor = descriptor.trim();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if let Some(label) = strip_prefix_ignore_case(descriptor, NODE_LABELS) {
            if label_ok(label) {
                return Ok(Preference::SpreadNodeLabel(label.into()));
            }
        } else if let Some(label) = strip_prefix_ignore_case(descriptor, ENGINE_LABELS) {
            if label_ok(label) {
                return Ok(Preference::SpreadEngineLabel(label.into()));
            }
        }
        Err(bad())
    }

    /// Parses every preference of a list, in order of precedence.
    pub fn parse_all(exprs: &[String]) -> Result<Vec<Preference>, ConstraintError> {
        exprs.iter().map(|e| Preference::parse(e)).collect()
    }

    /// The node's value for this preference; `None` when the node lacks the label.
    pub fn value<'n>(&self, node: &'n Node) -> Option<&'n str> {
        match self {
            Preference::SpreadNodeLabel(l) => node.labels.get(l).map(String::as_str),
            Preference::SpreadEngineLabel(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        let mut n = Node {
            id: "n1".into(),
            hostname: "Host-A".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            role: Some(NodeRole::Manager),
            ..Node::default()
        };
        n.labels.insert("zone".into(), "eu-1".into());
        n
    }

    fn m(expr: &str) -> bool {
        Constraint::parse(expr).unwrap().matches(&node())
    }

    #[test]
    fn parses_keys_operators_and_whitespace() {
        let c = Constraint::parse("  node.labels.zone  ==  eu-1 ").unwrap();
        assert_eq!(c.key, ConstraintKey::NodeLabel("zone".into()));
        assert_eq!(c.op, Operator::Eq);
        assert_eq!(c.value, "eu-1");
        assert_eq!(c.expr(), "node.labels.zone  ==  eu-1");
        let c = Constraint::parse("NODE.ROLE!=worker").unwrap();
        assert_eq!((c.key, c.op), (ConstraintKey::Role, Operator::NotEq));
        assert_eq!(
            Constraint::parse("engine.labels.os==x").unwrap().key,
            ConstraintKey::EngineLabel("os".into())
        );
        assert_eq!(
            Constraint::parse("node.platform.arch==x86_64").unwrap().key,
            ConstraintKey::Arch
        );
    }

    #[test]
    fn refuses_bad_syntax_with_the_expression_and_the_form() {
        let e = Constraint::parse("node.labels.zone=a").unwrap_err();
        assert!(matches!(e, ConstraintError::NoOperator { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("node.labels.zone=a") && msg.contains("KEY==VALUE"),
            "{msg}"
        );
        assert!(matches!(
            Constraint::parse("node.foo==a"),
            Err(ConstraintError::UnknownKey { .. })
        ));
        assert!(matches!(
            Constraint::parse("node.labels.==a"),
            Err(ConstraintError::UnknownKey { .. })
        ));
        assert!(matches!(
            Constraint::parse("node.labels.zone=="),
            Err(ConstraintError::InvalidValue { .. })
        ));
        assert!(matches!(
            Constraint::parse("node.labels.zone==a>b"),
            Err(ConstraintError::InvalidValue { .. })
        ));
        assert!(matches!(
            Constraint::parse("node.role==boss"),
            Err(ConstraintError::InvalidRole { .. })
        ));
    }

    #[test]
    fn matches_like_swarmkit() {
        assert!(m("node.id==n1"));
        assert!(!m("node.id!=n1"));
        assert!(
            m("node.hostname==host-a"),
            "values compare case-insensitively"
        );
        assert!(m("node.role==manager"));
        assert!(m("node.role!=worker"));
        assert!(m("node.platform.os==Linux"));
        assert!(m("node.platform.arch==amd64"));
        assert!(m("node.labels.zone==eu-1"));
        assert!(!m("node.labels.zone==eu-2"));
        assert!(m("node.labels.zone!=eu-2"));
        assert!(
            !m("node.labels.Zone==eu-1"),
            "label names are case-sensitive"
        );
        assert!(
            m("node.labels.disk!=ssd"),
            "!= matches a node without the label"
        );
        assert!(!m("node.labels.disk==ssd"));
        assert!(!m("engine.labels.os==linux"), "no engine labels");
        assert!(m("engine.labels.os!=linux"));
        let worker = Node {
            role: None,
            ..node()
        };
        assert!(Constraint::parse("node.role==worker")
            .unwrap()
            .matches(&worker));
        let all =
            Constraint::parse_all(&["node.role==manager".into(), "node.id==n2".into()]).unwrap();
        assert!(!matches_all(&all, &node()));
        assert!(matches_all(&all[..1], &node()));
    }

    #[test]
    fn platforms_match_with_arch_aliases() {
        let n = Node {
            os: "linux".into(),
            arch: "aarch64".into(),
            ..Node::default()
        };
        assert!(platform_matches(&[], &n));
        assert!(platform_matches(&["linux/arm64".into()], &n));
        assert!(platform_matches(
            &["windows/amd64".into(), "Linux/arm64/v8".into()],
            &n
        ));
        assert!(!platform_matches(&["linux/amd64".into()], &n));
        assert_eq!(canonical_arch("X86_64"), "amd64");
    }

    #[test]
    fn parses_preferences() {
        assert_eq!(
            Preference::parse("spread=node.labels.zone").unwrap(),
            Preference::SpreadNodeLabel("zone".into())
        );
        assert_eq!(
            Preference::parse("spread = engine.labels.x").unwrap(),
            Preference::SpreadEngineLabel("x".into())
        );
        for bad in [
            "spread=node.zone",
            "pack=node.labels.zone",
            "spread",
            "spread=node.labels.",
        ] {
            let e = Preference::parse(bad).unwrap_err();
            assert!(e.to_string().contains("spread=node.labels.<label>"), "{e}");
        }
        let p = Preference::SpreadNodeLabel("zone".into());
        assert_eq!(p.value(&node()), Some("eu-1"));
        assert_eq!(Preference::SpreadNodeLabel("x".into()).value(&node()), None);
    }
}

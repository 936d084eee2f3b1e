//! Where a service may and would like to run: constraints on node labels,
//! weighted affinities, spread over a label, taints and tolerations.
//!
//! Each type is written in specs and on the command line as one short
//! string (`zone == a`, `gpu=true:NoSchedule`) and stored parsed; it prints
//! back the same way, so a spec read back from the cluster applies again.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Built-in node labels every node has, beside the ones set by `--label`.
pub const LABEL_NODE_NAME: &str = "node.name";
pub const LABEL_NODE_OS: &str = "node.os";
pub const LABEL_NODE_ARCH: &str = "node.arch";
/// The label voters and replicas are spread over by convention.
pub const LABEL_ZONE: &str = "zone";

/// Constraints of one service's placement, at most.
pub const CONSTRAINTS_MAX: usize = 32;
/// Affinities of one service's placement, at most.
pub const AFFINITIES_MAX: usize = 32;
/// Spread rules of one service's placement, at most.
pub const SPREADS_MAX: usize = 4;
/// Tolerations of one service, at most.
pub const TOLERATIONS_MAX: usize = 32;
/// Taints of one node, at most.
pub const TAINTS_MAX: usize = 64;
/// Values of one `in (…)` constraint, at most.
pub const IN_VALUES_MAX: usize = 64;
/// The highest priority a service may have (a plain number, 0 the lowest).
pub const PRIORITY_MAX: u32 = 1000;
/// The largest weight of one affinity (a plain number; the lowest is its
/// negative).
pub const AFFINITY_WEIGHT_MAX: i32 = 100;

/// A view of one node's labels, the built-in ones included.
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A condition on one node label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Constraint {
    pub key: String,
    pub op: Operator,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    Equal(String),
    NotEqual(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

impl Constraint {
    /// Whether a node with these labels satisfies the condition. A node
    /// without the label satisfies `!=`, `not in` and `not exists` only.
    pub fn matches(&self, labels: &impl Labels) -> bool {
        let value = labels.label(&self.key);
        match &self.op {
            Operator::Equal(wanted) => value == Some(wanted.as_str()),
            Operator::NotEqual(unwanted) => value != Some(unwanted.as_str()),
            Operator::In(values) => value.is_some_and(|v| values.iter().any(|w| w == v)),
            Operator::NotIn(values) => !value.is_some_and(|v| values.iter().any(|w| w == v)),
            Operator::Exists => value.is_some(),
            Operator::NotExists => value.is_none(),
        }
    }
}

impl FromStr for Constraint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        const FORMS: &str = "write `KEY == VALUE`, `KEY != VALUE`, `KEY in (A, B)`, `KEY not in (A, B)`, `KEY exists` or `KEY not exists`, e.g. `zone == a`";
        let text = text.trim();
        let bad = |why: &str| format!("`{text}` is not a constraint ({why}); {FORMS}");
        let (key, rest) = match text.find(|c: char| c.is_whitespace() || c == '=' || c == '!') {
            Some(at) => (&text[..at], text[at..].trim_start()),
            None => (text, ""),
        };
        check_label_key(key).map_err(|why| bad(&why))?;
        let value = |rest: &str| -> Result<String, String> {
            let value = rest.trim();
            if value.is_empty() {
                return Err(bad("the value is missing"));
            }
            check_label_value(value).map_err(|why| bad(&why))?;
            Ok(value.to_string())
        };
        let list = |rest: &str| -> Result<Vec<String>, String> {
            let rest = rest.trim();
            let inner = rest
                .strip_prefix('(')
                .and_then(|rest| rest.strip_suffix(')'))
                .unwrap_or(rest);
            let values: Vec<String> = inner
                .split(',')
                .map(|value| value.trim().to_string())
                .filter(|value| !value.is_empty())
                .collect();
            if values.is_empty() {
                return Err(bad("the list of values is empty"));
            }
            if values.len() > IN_VALUES_MAX {
                return Err(bad(&format!("more than {IN_VALUES_MAX} values")));
            }
            for value in &values {
                check_label_value(value).map_err(|why| bad(&why))?;
            }
            Ok(values)
        };
        let op = if let Some(rest) = rest.strip_prefix("==") {
            Operator::Equal(value(rest)?)
        } else if let Some(rest) = rest.strip_prefix("!=") {
            Operator::NotEqual(value(rest)?)
        } else if let Some(rest) = rest.strip_prefix('=') {
            Operator::Equal(value(rest)?)
        } else if let Some(rest) = strip_word(rest, "in") {
            Operator::In(list(rest)?)
        } else if let Some(rest) = strip_word(rest, "not") {
            let rest = rest.trim_start();
            if let Some(rest) = strip_word(rest, "in") {
                Operator::NotIn(list(rest)?)
            } else if strip_word(rest, "exists").is_some_and(|rest| rest.trim().is_empty()) {
                Operator::NotExists
            } else {
                return Err(bad("`not` must be followed by `in` or `exists`"));
            }
        } else if strip_word(rest, "exists").is_some_and(|rest| rest.trim().is_empty()) {
            Operator::Exists
        } else if rest.is_empty() {
            return Err(bad("the operator is missing"));
        } else {
            return Err(bad("unknown operator"));
        };
        Ok(Constraint {
            key: key.to_string(),
            op,
        })
    }
}

fn strip_word<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let rest = text.strip_prefix(word)?;
    (rest.is_empty() || rest.starts_with(|c: char| c.is_whitespace() || c == '(')).then_some(rest)
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        match &self.op {
            Operator::Equal(value) => write!(f, "{key} == {value}"),
            Operator::NotEqual(value) => write!(f, "{key} != {value}"),
            Operator::In(values) => write!(f, "{key} in ({})", values.join(", ")),
            Operator::NotIn(values) => write!(f, "{key} not in ({})", values.join(", ")),
            Operator::Exists => write!(f, "{key} exists"),
            Operator::NotExists => write!(f, "{key} not exists"),
        }
    }
}

/// A soft preference: nodes matching `expr` score `weight` (−100 to 100,
/// negative to avoid them).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Affinity {
    pub expr: Constraint,
    #[serde(default = "default_weight")]
    #[schemars(range(min = -100, max = 100))]
    pub weight: i32,
}

fn default_weight() -> i32 {
    50
}

/// Spread a service's replicas over the values of a node label: evenly
/// (a preference), and with `max_per` at most that many on any one value
/// (a rule; nodes without the label count as one value, "").
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spread {
    /// A node label, e.g. `zone` or `node.name`.
    pub over: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_per: Option<u32>,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum TaintEffect {
    /// New work that does not tolerate it is not placed on the node.
    NoSchedule,
    /// New work avoids the node when another one fits.
    PreferNoSchedule,
    /// Like NoSchedule, and running work that does not tolerate it is moved away.
    NoExecute,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

impl FromStr for TaintEffect {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "NoSchedule" => Ok(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Ok(TaintEffect::PreferNoSchedule),
            "NoExecute" => Ok(TaintEffect::NoExecute),
            _ => Err(format!(
                "`{text}` is not a taint effect; use NoSchedule, PreferNoSchedule or NoExecute"
            )),
        }
    }
}

/// A mark on a node that keeps work off it unless the work tolerates it:
/// `key=value:Effect` or `key:Effect`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: TaintEffect,
}

impl FromStr for Taint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = |why: String| {
            format!("`{text}` is not a taint ({why}); write `KEY=VALUE:EFFECT` or `KEY:EFFECT`, e.g. `gpu=true:NoSchedule`")
        };
        let (pair, effect) = text
            .rsplit_once(':')
            .ok_or_else(|| bad("the effect is missing".into()))?;
        let effect = effect.parse().map_err(bad)?;
        let (key, value) = split_pair(pair).map_err(bad)?;
        Ok(Taint { key, value, effect })
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={}:{}", self.key, value, self.effect.as_str()),
            None => write!(f, "{}:{}", self.key, self.effect.as_str()),
        }
    }
}

/// Lets a service run on nodes with matching taints: `key=value:Effect`,
/// `key:Effect` (any value), `key=value` or `key` (any effect).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Toleration {
    pub key: String,
    pub value: Option<String>,
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    pub fn tolerates(&self, taint: &Taint) -> bool {
        self.key == taint.key
            && (self.value.is_none() || self.value == taint.value)
            && self.effect.is_none_or(|effect| effect == taint.effect)
    }
}

impl FromStr for Toleration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = |why: String| {
            format!("`{text}` is not a toleration ({why}); write `KEY=VALUE:EFFECT`, `KEY:EFFECT`, `KEY=VALUE` or `KEY`, e.g. `gpu=true:NoSchedule`")
        };
        let (pair, effect) = match text.rsplit_once(':') {
            Some((pair, effect)) => (pair, Some(effect.parse().map_err(bad)?)),
            None => (text, None),
        };
        let (key, value) = split_pair(pair).map_err(bad)?;
        Ok(Toleration { key, value, effect })
    }
}

impl fmt::Display for Toleration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key)?;
        if let Some(value) = &self.value {
            write!(f, "={value}")?;
        }
        if let Some(effect) = self.effect {
            write!(f, ":{}", effect.as_str())?;
        }
        Ok(())
    }
}

fn split_pair(pair: &str) -> Result<(String, Option<String>), String> {
    let (key, value) = match pair.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (pair, None),
    };
    check_label_key(key)?;
    if let Some(value) = value {
        if value.is_empty() {
            return Err("the value after `=` is empty".into());
        }
        check_label_value(value)?;
    }
    Ok((key.to_string(), value.map(str::to_string)))
}

/// Label keys: 1-253 characters of letters, digits, `.`, `-`, `_` and `/`.
pub fn check_label_key(key: &str) -> Result<(), String> {
    if !key.is_empty() && label_characters(key) {
        Ok(())
    } else {
        Err(format!(
            "`{key}` is not a label key: use 1-253 letters, digits, `.`, `-`, `_` and `/`"
        ))
    }
}

fn check_label_value(value: &str) -> Result<(), String> {
    if label_characters(value) {
        Ok(())
    } else {
        Err(format!(
            "`{value}` is not a label value here: use up to 253 letters, digits, `.`, `-`, `_` and `/`"
        ))
    }
}

/// At most 253 letters, digits, `.`, `-`, `_` and `/`.
fn label_characters(text: &str) -> bool {
    text.len() <= 253
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
}

macro_rules! string_serde {
    ($type:ty, $name:literal, $description:literal) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $type {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "description": $description, "type": "string" })
            }
        }
    };
}

string_serde!(
    Constraint,
    "Constraint",
    "A condition on a node label: `KEY == VALUE`, `KEY != VALUE`, `KEY in (A, B)`, `KEY not in (A, B)`, `KEY exists`, `KEY not exists`."
);
string_serde!(
    Taint,
    "Taint",
    "`KEY=VALUE:EFFECT` or `KEY:EFFECT`; EFFECT is NoSchedule, PreferNoSchedule or NoExecute."
);
string_serde!(
    Toleration,
    "Toleration",
    "`KEY=VALUE:EFFECT`, `KEY:EFFECT`, `KEY=VALUE` or `KEY`: tolerates the matching taints."
);

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn constraints_parse_print_and_match() {
        let node = labels(&[("zone", "a"), ("gpu", "true")]);
        let cases = [
            ("zone == a", "zone == a", true),
            ("zone==b", "zone == b", false),
            ("zone = a", "zone == a", true),
            ("zone != a", "zone != a", false),
            ("disk != ssd", "disk != ssd", true),
            ("zone in (a, b)", "zone in (a, b)", true),
            ("zone in b,c", "zone in (b, c)", false),
            ("zone not in (b)", "zone not in (b)", true),
            ("gpu exists", "gpu exists", true),
            ("disk exists", "disk exists", false),
            ("disk not exists", "disk not exists", true),
            ("node.name == n1", "node.name == n1", false),
        ];
        for (text, printed, matches) in cases {
            let constraint: Constraint = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(constraint.to_string(), printed, "{text}");
            assert_eq!(constraint.matches(&node), matches, "{text}");
            assert_eq!(printed.parse::<Constraint>().as_ref(), Ok(&constraint));
        }
    }

    #[test]
    fn bad_constraints_say_what_to_write() {
        for text in [
            "",
            "zone",
            "zone ~ a",
            "zone ==",
            "zone in ()",
            "zone not a",
            "zo ne == a",
        ] {
            let error = text.parse::<Constraint>().expect_err(text);
            assert!(error.contains("KEY == VALUE"), "{text}: {error}");
        }
    }

    #[test]
    fn taints_and_tolerations() {
        let taint: Taint = "gpu=true:NoSchedule".parse().expect("taint");
        assert_eq!(taint.to_string(), "gpu=true:NoSchedule");
        let bare: Taint = "maintenance:NoExecute".parse().expect("taint");
        assert_eq!(bare.value, None);
        for (toleration, tolerates) in [
            ("gpu=true:NoSchedule", true),
            ("gpu:NoSchedule", true),
            ("gpu=true", true),
            ("gpu", true),
            ("gpu=false", false),
            ("gpu:NoExecute", false),
            ("disk", false),
        ] {
            let parsed: Toleration = toleration.parse().expect(toleration);
            assert_eq!(parsed.to_string(), toleration);
            assert_eq!(parsed.tolerates(&taint), tolerates, "{toleration}");
        }
        assert!("gpu=true".parse::<Taint>().is_err());
        assert!("gpu=true:Sometimes".parse::<Taint>().is_err());
        assert!("gpu=:NoSchedule".parse::<Taint>().is_err());
    }
}

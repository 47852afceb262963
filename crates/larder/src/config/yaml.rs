//! A YAML document as a tree of nodes that remember where they were written.
//!
//! Config errors must name the line of the offending value, and unknown keys must be reported
//! rather than dropped, so the config is first read into this generic tree (serde-saphyr does the
//! YAML work: anchors, aliases and `<<` merges) and only then interpreted key by key.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// One YAML node with the 1-based line and column where it was written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub line: u64,
    pub column: u64,
}

/// The value of a YAML node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order; YAML keys that are not scalars are rejected while reading.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A short name of the kind of value, as used in "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// Returns the value stored under `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_key() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a scalar used as a mapping key.
    pub fn as_key(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses YAML text into a located tree.
pub(crate) fn parse(text: &str) -> Result<Node, serde_saphyr::Error> {
    // Only `true`/`false` become booleans here. PyYAML, which AI Toolkit uses, also reads
    // yes/no/on/off as booleans but not `y`/`n`; the typed readers in `extract` accept those
    // spellings where a boolean is expected, so a trigger word `y` stays a string.
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    let spanned: Spanned<Value> = serde_saphyr::from_str_with_options(text, options)?;
    Ok(Node::from(spanned))
}

impl From<Spanned<Value>> for Node {
    fn from(s: Spanned<Value>) -> Self {
        Node {
            value: s.value,
            line: s.referenced.line(),
            column: s.referenced.column(),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(Node::from(item));
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries: Vec<(Node, Node)> = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Value>>()? {
            let key = Node::from(key);
            let key = match key.value {
                Value::Str(_) => key,
                // Numeric and boolean keys are written as text so that lookups by name work.
                Value::Int(i) => Node {
                    value: Value::Str(i.to_string()),
                    ..key
                },
                Value::Bool(b) => Node {
                    value: Value::Str(b.to_string()),
                    ..key
                },
                other => {
                    return Err(de::Error::custom(format!(
                        "line {}: a mapping key must be a plain scalar, found {}",
                        key.line,
                        other.kind()
                    )));
                }
            };
            let value = Node::from(map.next_value::<Spanned<Value>>()?);
            // A later duplicate replaces an earlier one, as in PyYAML (which AI Toolkit uses).
            if let Some(slot) = entries.iter_mut().find(|(k, _)| k.as_key() == key.as_key()) {
                slot.1 = value;
            } else {
                entries.push((key, value));
            }
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_lines_through_anchors_and_merges() {
        let text = "base: &b\n  resolution: 512\n  flip_x: yes\nds:\n  <<: *b\n  caption_ext: txt\n  t: [y, n, true]\n";
        let root = parse(text).expect("valid yaml");
        let ds = root.get("ds").expect("ds");
        assert_eq!(ds.get("caption_ext").map(|n| n.line), Some(6));
        assert_eq!(
            ds.get("resolution").map(|n| &n.value),
            Some(&Value::Int(512))
        );
        let base = root.get("base").expect("base");
        assert_eq!(base.get("resolution").map(|n| n.line), Some(2));
        assert_eq!(
            ds.get("flip_x").map(|n| &n.value),
            Some(&Value::Str("yes".into()))
        );
        let t = ds.get("t").map(|n| &n.value);
        assert!(
            matches!(t, Some(Value::Seq(v)) if v[0].value == Value::Str("y".into()) && v[2].value == Value::Bool(true)),
            "{t:?}"
        );
    }
}

//! Typed reading of located YAML nodes, with errors that name the file, line and key.
//!
//! Values are read with PyYAML's leniency (AI Toolkit configs are written for PyYAML): an
//! integer is accepted where a number is expected, and `yes`/`no`/`on`/`off` are booleans.

use std::path::Path;

use super::yaml::{Node, Value};
use crate::{Error, Result};

/// Where a value sits: the file and the dotted key path, e.g. `datasets[0].resolution`.
#[derive(Debug, Clone)]
pub(crate) struct At<'a> {
    pub file: &'a Path,
    pub key: String,
}

impl<'a> At<'a> {
    /// The location of a top-level key of `file`.
    pub fn root(file: &'a Path, key: &str) -> Self {
        At {
            file,
            key: key.to_owned(),
        }
    }

    /// The location of `name` inside this mapping (a top-level key when this is the file).
    pub fn child(&self, name: &str) -> At<'a> {
        At {
            file: self.file,
            key: if self.key.is_empty() {
                name.to_owned()
            } else {
                format!("{}.{name}", self.key)
            },
        }
    }

    /// The location of item `index` of this list.
    pub fn index(&self, index: usize) -> At<'a> {
        At {
            file: self.file,
            key: format!("{}[{index}]", self.key),
        }
    }

    /// An error about `node` at this key.
    pub fn error(&self, node: &Node, message: impl Into<String>) -> Error {
        Error::Config {
            path: self.file.to_path_buf(),
            line: node.line,
            key: self.key.clone(),
            message: message.into(),
        }
    }

    /// An "expected X, found Y" error.
    pub fn expected(&self, node: &Node, what: &str) -> Error {
        self.error(
            node,
            format!("expected {what}, found {}", describe(&node.value)),
        )
    }

    pub fn bool(&self, node: &Node) -> Result<bool> {
        match &node.value {
            Value::Bool(b) => Ok(*b),
            Value::Str(s) => match s.to_ascii_lowercase().as_str() {
                "yes" | "on" | "true" => Ok(true),
                "no" | "off" | "false" => Ok(false),
                _ => Err(self.expected(node, "true or false")),
            },
            _ => Err(self.expected(node, "true or false")),
        }
    }

    pub fn int(&self, node: &Node, min: i64, max: i64) -> Result<i64> {
        let what = || format!("an integer from {min} to {max}");
        match &node.value {
            Value::Int(i) if (min..=max).contains(i) => Ok(*i),
            // PyYAML users write `2.0` for an integer now and then; accept whole floats.
            Value::Float(f) if f.fract() == 0.0 && (min as f64..=max as f64).contains(f) => {
                Ok(*f as i64)
            }
            _ => Err(self.expected(node, &what())),
        }
    }

    pub fn uint(&self, node: &Node, min: u32, max: u32) -> Result<u32> {
        self.int(node, i64::from(min), i64::from(max))
            .map(|v| v as u32)
    }

    pub fn float(&self, node: &Node, min: f64, max: f64) -> Result<f64> {
        let v = match &node.value {
            Value::Int(i) => *i as f64,
            Value::Float(f) => *f,
            _ => return Err(self.expected(node, &format!("a number from {min} to {max}"))),
        };
        if v.is_finite() && (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(self.expected(node, &format!("a number from {min} to {max}")))
        }
    }

    pub fn string(&self, node: &Node) -> Result<String> {
        match &node.value {
            Value::Str(s) => Ok(s.clone()),
            // An unquoted `1234` as a trigger word or caption is still meant as text.
            Value::Int(i) => Ok(i.to_string()),
            Value::Float(f) => Ok(f.to_string()),
            _ => Err(self.expected(node, "a string")),
        }
    }

    /// A string, or `None` for null or an empty string (AI Toolkit treats both as unset).
    pub fn opt_string(&self, node: &Node) -> Result<Option<String>> {
        match &node.value {
            Value::Null => Ok(None),
            _ => self.string(node).map(|s| (!s.is_empty()).then_some(s)),
        }
    }

    /// A string or a list of strings, as `control_path` and `random_triggers` allow.
    pub fn strings(&self, node: &Node) -> Result<Vec<String>> {
        match &node.value {
            Value::Null => Ok(Vec::new()),
            Value::Seq(items) => items.iter().map(|n| self.string(n)).collect(),
            _ => self.string(node).map(|s| vec![s]),
        }
    }

    /// The entries of a mapping.
    pub fn map<'n>(&self, node: &'n Node) -> Result<&'n [(Node, Node)]> {
        match &node.value {
            Value::Map(entries) => Ok(entries),
            _ => Err(self.expected(node, "a mapping of keys to values")),
        }
    }

    /// The items of a list.
    pub fn seq<'n>(&self, node: &'n Node) -> Result<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Ok(items),
            _ => Err(self.expected(node, "a list")),
        }
    }
}

/// A value as shown in error messages: its kind, and the text for short scalars.
fn describe(value: &Value) -> String {
    match value {
        Value::Str(s) if s.chars().count() <= 40 => format!("the string {s:?}"),
        Value::Int(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Bool(b) => format!("the boolean {b}"),
        other => other.kind().to_owned(),
    }
}

/// Returns true if and only if `value` is what an unset key looks like: null, false, zero,
/// an empty string or an empty list.
pub(crate) fn is_unset(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Int(i) => *i == 0,
        Value::Float(f) => *f == 0.0,
        Value::Str(s) => s.is_empty(),
        Value::Seq(v) => v.is_empty(),
        Value::Map(v) => v.is_empty(),
    }
}

//! Spanned parsing: TOML text → sections → [`ParkConfig`], with FILE:LINE:COL errors.

use super::file::*;
use super::validate::{ParkConfig, Raw, validate};
use crate::store::spool::SpoolConfig;
use parkguard_drivers::influx::InfluxConfig;
use parkguard_rules::engine::EngineConfig;
use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use std::ops::Range;
use std::path::Path;
use toml::de::{DeTable, DeValue, ValueDeserializer};

/// One config error with its position (1-based line and column, column in characters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// File name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// Load and validate a config file.
pub fn load_file(path: &Path) -> Result<ParkConfig, Vec<ConfigError>> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&name, &text),
        Err(e) => Err(vec![ConfigError {
            file: name,
            line: 1,
            col: 1,
            message: format!("cannot read config file: {e}"),
        }]),
    }
}

/// Turns byte offsets into line:col.
pub(super) struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(name: &'a str, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            name,
            text,
            line_starts,
        }
    }

    pub fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let offset = span.map(|s| s.start).unwrap_or(0).min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        ConfigError {
            file: self.name.to_string(),
            line,
            col,
            message: message.into(),
        }
    }
}

/// A deserialized array element together with its spanned source, so that validation
/// errors can point at the offending key.
pub(super) struct Item<'i, T> {
    pub value: T,
    pub node: Spanned<DeValue<'i>>,
}

impl<T> Item<'_, T> {
    /// Span of the value at dotted `path` inside this item (the item itself for "").
    /// Falls back to the deepest existing ancestor.
    pub fn span_of(&self, path: &str) -> Range<usize> {
        span_of(&self.node, path)
    }
}

pub(super) fn span_of(node: &Spanned<DeValue<'_>>, path: &str) -> Range<usize> {
    let mut cur = node;
    if path.is_empty() {
        return first_key_span(cur).unwrap_or_else(|| cur.span());
    }
    for part in path.split('.') {
        let next = match cur.get_ref() {
            DeValue::Table(t) => t.get(part),
            DeValue::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return cur.span(),
        }
    }
    cur.span()
}

/// For a table, the span of its first key (array-of-table elements have no useful span of
/// their own in every case; the first key is on the line after the header).
fn first_key_span(node: &Spanned<DeValue<'_>>) -> Option<Range<usize>> {
    match node.get_ref() {
        DeValue::Table(t) => t.iter().next().map(|(k, _)| k.span()),
        _ => None,
    }
}

fn de<T: DeserializeOwned>(
    src: &Source<'_>,
    node: &Spanned<DeValue<'_>>,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match T::deserialize(ValueDeserializer::from(node.clone())) {
        Ok(v) => Some(v),
        Err(e) => {
            let span = e.span().or_else(|| Some(node.span()));
            errors.push(src.error(span, e.message().to_string()));
            None
        }
    }
}

fn de_array<'i, T: DeserializeOwned>(
    src: &Source<'_>,
    key: &str,
    node: &Spanned<DeValue<'i>>,
    errors: &mut Vec<ConfigError>,
) -> Vec<Item<'i, T>> {
    let DeValue::Array(arr) = node.get_ref() else {
        errors.push(src.error(
            Some(node.span()),
            format!("`{key}` must be an array of tables: write `[[{key}]]`"),
        ));
        return Vec::new();
    };
    arr.iter()
        .filter_map(|el| {
            de::<T>(src, el, errors).map(|value| Item {
                value,
                node: el.clone(),
            })
        })
        .collect()
}

const SECTIONS: &[&str] = &[
    "park",
    "data",
    "api",
    "alarm",
    "influx",
    "spool",
    "enterprise",
    "modbus_device",
    "mqtt_broker",
    "mqtt_subscription",
    "point",
    "vote_group",
    "channel",
    "route",
    "escalation",
    "outbox",
];

/// Load and validate config text; `name` is used in error messages.
pub fn load_str(name: &str, text: &str) -> Result<ParkConfig, Vec<ConfigError>> {
    let src = Source::new(name, text);
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Err(syntax
            .iter()
            .map(|e| src.error(e.span(), e.message().to_string()))
            .collect());
    }
    let mut errors = Vec::new();
    let root_span = root.span();
    let root = root.into_inner();
    let mut raw = Raw::default();
    for (key, node) in root.iter() {
        let k: &str = key.get_ref();
        match k {
            "park" => {
                raw.park = de::<ParkSection>(&src, node, &mut errors).map(|v| (v, node.clone()))
            }
            "data" => raw.data = de::<DataSection>(&src, node, &mut errors),
            "api" => raw.api = de::<ApiSection>(&src, node, &mut errors),
            "alarm" => {
                raw.alarm = de::<EngineConfig>(&src, node, &mut errors).map(|v| (v, node.clone()))
            }
            "influx" => {
                raw.influx = de::<InfluxConfig>(&src, node, &mut errors).map(|v| (v, node.clone()))
            }
            "spool" => {
                raw.spool = de::<SpoolConfig>(&src, node, &mut errors).map(|v| (v, node.clone()))
            }
            "enterprise" => raw.enterprises = de_array(&src, k, node, &mut errors),
            "modbus_device" => raw.modbus_devices = de_array(&src, k, node, &mut errors),
            "mqtt_broker" => raw.mqtt_brokers = de_array(&src, k, node, &mut errors),
            "mqtt_subscription" => raw.mqtt_subscriptions = de_array(&src, k, node, &mut errors),
            "point" => raw.points = de_array(&src, k, node, &mut errors),
            "vote_group" => raw.vote_groups = de_array(&src, k, node, &mut errors),
            "channel" => raw.channels = de_array(&src, k, node, &mut errors),
            "route" => raw.routes = de_array(&src, k, node, &mut errors),
            "escalation" => raw.escalations = de_array(&src, k, node, &mut errors),
            "outbox" => {
                raw.outbox = de::<crate::linkage::outbox::OutboxConfig>(&src, node, &mut errors)
                    .map(|v| (v, node.clone()))
            }
            other => errors.push(src.error(
                Some(key.span()),
                format!(
                    "unknown section `{other}`, expected one of: {}",
                    SECTIONS.join(", ")
                ),
            )),
        }
    }
    let parsed_ok = errors.is_empty();
    let result = validate(&src, root_span, raw, &mut errors);
    match result {
        Some(cfg) if errors.is_empty() && parsed_ok => Ok(cfg),
        _ => {
            errors.sort_by_key(|e| (e.line, e.col));
            errors.dedup();
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let text = "a = 1\n名称 = \"x\"\n";
        let s = Source::new("f.toml", text);
        let off = text.find('=').map(|_| text.rfind('=').unwrap_or(0));
        let e = s.error(off.map(|o| o..o + 1), "m");
        assert_eq!((e.line, e.col), (2, 4));
        assert_eq!(e.to_string(), "f.toml:2:4: m");
    }
}

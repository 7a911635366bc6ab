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

/// Deserialize every element of an array of tables, keeping each element's spanned source
/// for validation errors. Takes the array by value and *moves* each node into its [`Item`]:
/// cloning them kept a second copy of the whole parse tree alive (with 10,000 points the
/// tree is ~40 MB, and the copy made loading peak at 92 MB of heap, which glibc then kept
/// as resident memory for the life of the daemon; issue #11).
fn de_array<'i, T: DeserializeOwned>(
    src: &Source<'_>,
    key: &str,
    node: Spanned<DeValue<'i>>,
    errors: &mut Vec<ConfigError>,
) -> Vec<Item<'i, T>> {
    let span = node.span();
    let DeValue::Array(arr) = node.into_inner() else {
        errors.push(src.error(
            Some(span),
            format!("`{key}` must be an array of tables: write `[[{key}]]`"),
        ));
        return Vec::new();
    };
    let mut items = Vec::with_capacity(arr.len());
    for el in arr {
        if let Some(value) = de::<T>(src, &el, errors) {
            items.push(Item { value, node: el });
        }
    }
    items
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

/// Size of the pieces a large config is parsed in, bytes.
///
/// `toml` parses a document by first collecting every token and every parser event of it
/// in two vectors, then building the tree: for the 2 MB file of a 10,000-point park that
/// was 23 MB of tokens + 28 MB of events + 38 MB of tree at once, 92 MB of heap for a
/// moment at start, most of the daemon's peak resident size (issue #11). Parsed in pieces
/// of 256 kB, the token and event vectors stay under 7 MB.
const PIECE_BYTES: usize = 256 * 1024;

/// Parse `src.text` as one TOML document, in pieces of about `piece` bytes cut before
/// top-level `[[name]]` headers (never inside a string, a multi-line array or inline
/// table, nor before a `[[a.b]]` header that belongs to the previous element), then merge
/// the pieces' root tables: arrays of tables are appended, tables merged key by key, and
/// a key defined in two pieces is reported as a duplicate, as in one document.
/// Spans are offsets into the whole text, as if it had been parsed at once.
fn parse_in_pieces<'i>(src: &Source<'i>, piece: usize) -> (Spanned<DeTable<'i>>, Vec<ConfigError>) {
    let text = src.text;
    let cuts = piece_starts(text, piece);
    if cuts.len() <= 1 {
        let (root, syntax) = DeTable::parse_recoverable(text);
        let errors = syntax
            .iter()
            .map(|e| src.error(e.span(), e.message().to_string()))
            .collect();
        return (root, errors);
    }
    let mut errors = Vec::new();
    let mut root = DeTable::new();
    for (i, &start) in cuts.iter().enumerate() {
        let end = cuts.get(i + 1).copied().unwrap_or(text.len());
        let (part, syntax) = DeTable::parse_recoverable(&text[start..end]);
        for e in &syntax {
            let span = e.span().map(|r| r.start + start..r.end + start);
            errors.push(src.error(span, e.message().to_string()));
        }
        if syntax.is_empty() {
            merge_tables(
                &mut root,
                shift_table(part.into_inner(), start),
                src,
                &mut errors,
            );
        }
    }
    (Spanned::new(0..text.len(), root), errors)
}

/// Byte offsets where the pieces of `text` start (the first is 0): the start of the first
/// line that opens a top-level `[[name]]` header (a bare key, no dots) after each `piece`
/// bytes. Streams the lexer's tokens, so it allocates nothing per token.
fn piece_starts(text: &str, piece: usize) -> Vec<usize> {
    use toml_parser::lexer::TokenKind as K;
    let mut cuts = vec![0];
    if text.len() <= piece {
        return cuts;
    }
    // Brackets open in a value (arrays, inline tables); headers only occur at depth 0.
    let mut depth = 0usize;
    let mut line_start = true;
    let mut in_header = false;
    for tok in toml_parser::Source::new(text).lex() {
        let span = tok.span();
        match tok.kind() {
            K::Eof => break,
            K::Newline => {
                line_start = true;
                in_header = false;
                continue;
            }
            K::Whitespace => continue,
            K::LeftSquareBracket if depth == 0 && line_start => {
                in_header = true;
                let at = span.start();
                let due = at >= cuts.last().copied().unwrap_or(0) + piece;
                if due && let Some(rest) = text[at..].strip_prefix("[[") {
                    let key = rest.split("]]").next().unwrap_or("").trim();
                    let bare = !key.is_empty()
                        && key
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if bare {
                        cuts.push(at);
                    }
                }
            }
            K::LeftSquareBracket | K::LeftCurlyBracket if !in_header => depth += 1,
            K::RightSquareBracket | K::RightCurlyBracket if !in_header => {
                depth = depth.saturating_sub(1)
            }
            _ => {}
        }
        line_start = false;
    }
    cuts
}

/// `node` with every span moved `by` bytes later.
fn shift_node(node: Spanned<DeValue<'_>>, by: usize) -> Spanned<DeValue<'_>> {
    let span = node.span();
    let value = match node.into_inner() {
        DeValue::Array(mut arr) => {
            for el in arr.iter_mut() {
                let taken = std::mem::replace(el, Spanned::new(0..0, DeValue::Boolean(false)));
                *el = shift_node(taken, by);
            }
            DeValue::Array(arr)
        }
        DeValue::Table(t) => DeValue::Table(shift_table(t, by)),
        other => other,
    };
    Spanned::new(span.start + by..span.end + by, value)
}

fn shift_table(table: DeTable<'_>, by: usize) -> DeTable<'_> {
    table
        .into_iter()
        .map(|(k, v)| {
            let span = k.span();
            (
                Spanned::new(span.start + by..span.end + by, k.into_inner()),
                shift_node(v, by),
            )
        })
        .collect()
}

/// Merge the root table of a later piece into `into` (see [`parse_in_pieces`]).
fn merge_tables<'i>(
    into: &mut DeTable<'i>,
    from: DeTable<'i>,
    src: &Source<'_>,
    errors: &mut Vec<ConfigError>,
) {
    for (key, node) in from {
        let Some(have) = into.get_mut(key.get_ref().as_ref()) else {
            into.insert(key, node);
            continue;
        };
        let tables =
            |a: &[Spanned<DeValue<'_>>]| a.iter().all(|e| matches!(e.get_ref(), DeValue::Table(_)));
        match (have.get_mut(), node.into_inner()) {
            (DeValue::Array(a), DeValue::Array(b)) if tables(a) && tables(&b) => {
                for el in b {
                    a.push(el);
                }
            }
            (DeValue::Table(a), DeValue::Table(b)) => merge_tables(a, b, src, errors),
            _ => errors.push(src.error(
                Some(key.span()),
                format!("duplicate key `{}`", key.get_ref()),
            )),
        }
    }
}

/// Load and validate config text; `name` is used in error messages.
pub fn load_str(name: &str, text: &str) -> Result<ParkConfig, Vec<ConfigError>> {
    let src = Source::new(name, text);
    let (root, syntax) = parse_in_pieces(&src, PIECE_BYTES);
    if !syntax.is_empty() {
        return Err(syntax);
    }
    let mut errors = Vec::new();
    let root_span = root.span();
    let root = root.into_inner();
    let mut raw = Raw::default();
    for (key, node) in root {
        let k: &str = key.get_ref();
        match k {
            "park" => raw.park = de::<ParkSection>(&src, &node, &mut errors).map(|v| (v, node)),
            "data" => raw.data = de::<DataSection>(&src, &node, &mut errors),
            "api" => raw.api = de::<ApiSection>(&src, &node, &mut errors),
            "alarm" => raw.alarm = de::<EngineConfig>(&src, &node, &mut errors).map(|v| (v, node)),
            "influx" => {
                raw.influx = de::<InfluxConfig>(&src, &node, &mut errors).map(|v| (v, node))
            }
            "spool" => raw.spool = de::<SpoolConfig>(&src, &node, &mut errors).map(|v| (v, node)),
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
                raw.outbox = de::<crate::linkage::outbox::OutboxConfig>(&src, &node, &mut errors)
                    .map(|v| (v, node))
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

    fn dump(node: &Spanned<DeValue<'_>>, path: &str, out: &mut Vec<String>) {
        match node.get_ref() {
            DeValue::Table(t) => {
                out.push(format!("{path} {:?} table", node.span()));
                for (k, v) in t.iter() {
                    out.push(format!("{path}.{} key {:?}", k.get_ref(), k.span()));
                    dump(v, &format!("{path}.{}", k.get_ref()), out);
                }
            }
            DeValue::Array(a) => {
                out.push(format!("{path} {:?} array", node.span()));
                for (i, v) in a.iter().enumerate() {
                    dump(v, &format!("{path}[{i}]"), out);
                }
            }
            other => out.push(format!("{path} {:?} {other:?}", node.span())),
        }
    }

    fn parsed(text: &str, piece: usize) -> (Vec<String>, Vec<ConfigError>, usize) {
        let src = Source::new("t.toml", text);
        let pieces = piece_starts(text, piece).len();
        let (root, errors) = parse_in_pieces(&src, piece);
        let mut out = Vec::new();
        dump(
            &Spanned::new(0..0, DeValue::Table(root.into_inner())),
            "",
            &mut out,
        );
        (out, errors, pieces)
    }

    /// A document with what could fool the cutting: a multi-line string holding a header
    /// line, nested arrays starting a line, inline tables over several lines, sub-tables
    /// and nested arrays of tables after an element, comments, and a table that gets a
    /// sub-table in a later piece (`[alarm.limits]` after `[alarm.deadband]`).
    fn tricky_doc() -> String {
        let mut t = String::from("title = \"x\"\n[park]\nid = \"p\"\n[alarm.deadband]\nx = 1\n");
        for i in 0..40 {
            t.push_str(&format!(
                "\n# point {i}\n[[point]]\ntag = \"T{i}\"\nnote = \"\"\"\n[[point]]\nnot a header\n\"\"\"\n\
                 range = [\n[0, 1],\n[2, 3],\n]\nlimits = {{ h = 1,\n hh = 2 }}\n\
                 [point.modbus]\ndevice = \"d{i}\"\n[[point.extra]]\nk = {i}\n"
            ));
            if i == 20 {
                t.push_str("[alarm.limits]\ny = 2\n[[enterprise]]\ncode = \"E\"\n");
            }
        }
        t
    }

    #[test]
    fn pieces_parse_like_one_document() {
        let text = tricky_doc();
        let (whole, e1, n1) = parsed(&text, usize::MAX);
        let (cut, e2, n2) = parsed(&text, 64);
        assert_eq!((n1, e1), (1, vec![]));
        assert!(n2 > 30, "cut into {n2} pieces");
        assert_eq!(e2, vec![]);
        assert_eq!(cut, whole);
    }

    #[test]
    fn a_key_defined_in_two_pieces_is_a_duplicate() {
        let mut text = tricky_doc();
        text.push_str("[park]\nid = \"again\"\n");
        let line = text.lines().count() - 1;
        let (_, errors, pieces) = parsed(&text, 64);
        assert!(pieces > 30);
        assert_eq!(errors.len(), 1, "{errors:?}");
        // One document rejects the second `[park]` header; in pieces the tables are merged
        // and the key defined twice is the error.
        assert_eq!((errors[0].line, errors[0].col), (line + 1, 1), "{errors:?}");
        assert!(errors[0].message.contains("duplicate key `id`"));
        let (_, whole, _) = parsed(&text, usize::MAX);
        assert!(!whole.is_empty(), "one document rejects it too");
    }

    #[test]
    fn syntax_errors_in_a_later_piece_point_at_the_whole_file() {
        let mut text = tricky_doc();
        let line = text.lines().count() + 2;
        text.push_str("[[point]]\ntag = \"bad\"\nrange = [0,\n");
        let (_, cut, _) = parsed(&text, 64);
        let (_, whole, _) = parsed(&text, usize::MAX);
        assert!(!cut.is_empty());
        assert_eq!(cut[0].line, whole[0].line);
        assert!(cut[0].line >= line, "{cut:?}");
    }
}

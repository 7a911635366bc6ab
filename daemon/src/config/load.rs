//! Spanned parsing: TOML text → sections → [`ParkConfig`], with FILE:LINE:COL errors.

use super::file::*;
use super::validate::{ParkConfig, Raw, validate};
use crate::store::spool::SpoolConfig;
use parkguard_drivers::influx::InfluxConfig;
use parkguard_rules::engine::EngineConfig;
use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;
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

/// A deserialized array element with where each of its keys is in the file, so that
/// validation errors can point at the offending key. The element's parse tree is not
/// kept: its spans are flattened into [`Spans`] as it is deserialized, so a 10,000-point
/// config's tree (~2 kB per point) is never whole in memory (issue #11).
pub(super) struct Item<'i, T> {
    pub value: T,
    spans: Spans,
    paths: Rc<Paths>,
    _text: PhantomData<&'i str>,
}

impl<T> Item<'_, T> {
    /// Span of the value at dotted `path` inside this item (its first key for "").
    /// Falls back to the deepest existing ancestor, as [`span_of`] does on a tree.
    pub fn span_of(&self, path: &str) -> Range<usize> {
        let whole = self.spans.whole.0 as usize..self.spans.whole.1 as usize;
        if path.is_empty() {
            return self
                .spans
                .first_key
                .map(|(a, b)| a as usize..b as usize)
                .unwrap_or(whole);
        }
        let mut p = path;
        loop {
            let hit = self.paths.get(p).and_then(|id| {
                self.spans
                    .entries
                    .iter()
                    .find(|e| e.0 == id)
                    .map(|e| e.1 as usize..e.2 as usize)
            });
            if let Some(span) = hit {
                return span;
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return whole,
            }
        }
    }
}

/// The dotted key paths of array elements, interned once per load (every `[[point]]` has
/// the same dozen or so).
#[derive(Default)]
pub(super) struct Paths(RefCell<HashMap<Box<str>, u32>>);

impl Paths {
    fn id(&self, path: &str) -> u32 {
        let mut m = self.0.borrow_mut();
        if let Some(&id) = m.get(path) {
            return id;
        }
        let id = u32::try_from(m.len()).unwrap_or(u32::MAX);
        m.insert(path.into(), id);
        id
    }

    fn get(&self, path: &str) -> Option<u32> {
        self.0.borrow().get(path).copied()
    }
}

/// One element's spans: its own, its first key's, and every nested value's by path id
/// (byte offsets; a config file is far below 4 GiB).
struct Spans {
    whole: (u32, u32),
    first_key: Option<(u32, u32)>,
    entries: Box<[(u32, u32, u32)]>,
}

impl Spans {
    fn of(node: &Spanned<DeValue<'_>>, paths: &Paths) -> Self {
        fn at(r: Range<usize>) -> (u32, u32) {
            (
                u32::try_from(r.start).unwrap_or(u32::MAX),
                u32::try_from(r.end).unwrap_or(u32::MAX),
            )
        }
        fn walk(
            node: &Spanned<DeValue<'_>>,
            prefix: &mut String,
            paths: &Paths,
            out: &mut Vec<(u32, u32, u32)>,
        ) {
            let mut visit = |part: &str, v: &Spanned<DeValue<'_>>, prefix: &mut String| {
                let len = prefix.len();
                if len > 0 {
                    prefix.push('.');
                }
                prefix.push_str(part);
                let (a, b) = at(v.span());
                out.push((paths.id(prefix), a, b));
                walk(v, prefix, paths, out);
                prefix.truncate(len);
            };
            match node.get_ref() {
                DeValue::Table(t) => {
                    for (k, v) in t.iter() {
                        visit(k.get_ref(), v, prefix);
                    }
                }
                DeValue::Array(arr) => {
                    for (i, v) in arr.iter().enumerate() {
                        visit(&i.to_string(), v, prefix);
                    }
                }
                _ => {}
            }
        }
        let mut entries = Vec::new();
        walk(node, &mut String::new(), paths, &mut entries);
        Self {
            whole: at(node.span()),
            first_key: first_key_span(node).map(at),
            entries: entries.into_boxed_slice(),
        }
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
    paths: &Rc<Paths>,
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
            items.push(Item {
                value,
                spans: Spans::of(&el, paths),
                paths: Rc::clone(paths),
                _text: PhantomData,
            });
        }
    }
    items
}

/// Deserialize `node` into `raw` when `key` is a section that is an array of tables, after
/// what earlier pieces gave (file order is kept); these are deserialized piece by piece
/// (see [`parse_pieces`]) and never merged into one tree. Any other section's node is
/// given back.
fn take_array<'i>(
    src: &Source<'_>,
    raw: &mut Raw<'i>,
    paths: &Rc<Paths>,
    key: &str,
    node: Spanned<DeValue<'i>>,
    errors: &mut Vec<ConfigError>,
) -> Option<Spanned<DeValue<'i>>> {
    let n = node;
    match key {
        "enterprise" => raw.enterprises.extend(de_array(src, key, n, paths, errors)),
        "modbus_device" => raw
            .modbus_devices
            .extend(de_array(src, key, n, paths, errors)),
        "mqtt_broker" => raw
            .mqtt_brokers
            .extend(de_array(src, key, n, paths, errors)),
        "mqtt_subscription" => raw
            .mqtt_subscriptions
            .extend(de_array(src, key, n, paths, errors)),
        "point" => raw.points.extend(de_array(src, key, n, paths, errors)),
        "vote_group" => raw.vote_groups.extend(de_array(src, key, n, paths, errors)),
        "channel" => raw.channels.extend(de_array(src, key, n, paths, errors)),
        "route" => raw.routes.extend(de_array(src, key, n, paths, errors)),
        "escalation" => raw.escalations.extend(de_array(src, key, n, paths, errors)),
        _ => return Some(n),
    }
    None
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
/// table, nor before a `[[a.b]]` header that belongs to the previous element), handing
/// each piece's root table to `each` in file order. Spans are offsets into the whole text,
/// as if it had been parsed at once. Returns the syntax errors; a piece with any is not
/// handed on.
fn parse_pieces<'i>(
    src: &Source<'i>,
    piece: usize,
    mut each: impl FnMut(DeTable<'i>),
) -> Vec<ConfigError> {
    let text = src.text;
    let cuts = piece_starts(text, piece);
    let mut errors = Vec::new();
    for (i, &start) in cuts.iter().enumerate() {
        let end = cuts.get(i + 1).copied().unwrap_or(text.len());
        let (part, syntax) = DeTable::parse_recoverable(&text[start..end]);
        for e in &syntax {
            let span = e.span().map(|r| r.start + start..r.end + start);
            errors.push(src.error(span, e.message().to_string()));
        }
        if syntax.is_empty() {
            let part = part.into_inner();
            each(if start == 0 {
                part
            } else {
                shift_table(part, start)
            });
        }
    }
    errors
}

/// [`parse_pieces`], merging the pieces' root tables into one: arrays of tables are
/// appended, tables merged key by key, and a key defined in two pieces is reported as a
/// duplicate, as in one document.
#[cfg(test)]
fn parse_in_pieces<'i>(src: &Source<'i>, piece: usize) -> (Spanned<DeTable<'i>>, Vec<ConfigError>) {
    let mut root = DeTable::new();
    let mut merged = Vec::new();
    let mut errors = parse_pieces(src, piece, |part| {
        merge_tables(&mut root, part, src, &mut merged)
    });
    errors.extend(merged);
    (Spanned::new(0..src.text.len(), root), errors)
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
    load_in_pieces(name, text, PIECE_BYTES)
}

/// [`load_str`] with pieces of about `piece` bytes.
fn load_in_pieces(name: &str, text: &str, piece: usize) -> Result<ParkConfig, Vec<ConfigError>> {
    let src = Source::new(name, text);
    // Array sections are deserialized piece by piece as they are parsed (their trees
    // freed at once); the other sections are merged into one small tree.
    let paths = Rc::new(Paths::default());
    let mut raw = Raw::default();
    let mut errors = Vec::new();
    let mut root = DeTable::new();
    let mut merged = Vec::new();
    let mut syntax = parse_pieces(&src, piece, |part| {
        let mut rest = DeTable::new();
        for (key, node) in part {
            if let Some(node) = take_array(&src, &mut raw, &paths, key.get_ref(), node, &mut errors)
            {
                rest.insert(key, node);
            }
        }
        merge_tables(&mut root, rest, &src, &mut merged);
    });
    syntax.extend(merged);
    if !syntax.is_empty() {
        syntax.sort_by_key(|e| (e.line, e.col));
        return Err(syntax);
    }
    let root_span = 0..text.len();
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

    /// Validation errors in array elements of later pieces (whose trees are gone by then)
    /// point where they point when the file is parsed at once.
    #[test]
    fn errors_in_later_pieces_point_at_the_same_place() {
        let planted = include_str!("../../tests/data/five_mistakes.toml");
        let at = planted.find("[[point]]").expect("points");
        let mut text = planted[..at].to_string();
        for i in 0..400 {
            text.push_str(&format!(
                "[[point]]\ntag = \"F-{i}\"\nname = \"f\"\nenterprise = \"E1\"\nkind = \"pressure\"\n\
                 unit = \"MPa\"\nrange = [0, 2.5]\nlimits = {{ h = 2.0 }}\n\n"
            ));
        }
        text.push_str(&planted[at..]);
        let errors = |piece| match load_in_pieces("f.toml", &text, piece) {
            Ok(_) => panic!("the planted mistakes must be found"),
            Err(e) => e
                .iter()
                .map(|e| format!("{}:{}: {}", e.line, e.col, e.message))
                .collect::<Vec<_>>(),
        };
        let whole = errors(usize::MAX);
        let cut = errors(512);
        assert!(piece_starts(&text, 512).len() > 50);
        assert_eq!(cut, whole);
        assert_eq!(whole.len(), 6, "{whole:?}");
        let colour = text[..text.find("colour").expect("colour")].lines().count() + 1;
        assert!(
            whole
                .iter()
                .any(|e| e.starts_with(&format!("{colour}:1: unknown field `colour`"))),
            "{whole:?}"
        );
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

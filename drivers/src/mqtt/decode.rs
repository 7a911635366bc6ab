//! Pure payload mappers: (subscription, topic, payload, receive time) → raw readings by tag.
//! No I/O, no clock; the table-driven tests below pin every format.
//!
//! The raw readings still carry tags and the payload's unit; [`resolve`] maps them onto
//! points of the [`PointTable`] and converts them into the point's unit.

use super::config::{FieldPath, PathPart, PayloadFormat, Subscription, TagSource, TimeFormat};
use super::sparkplug::SparkplugState;
use parkguard_rules::{PointTable, Quality, Reading, Timestamp, Unit};
use serde_json::Value;
use std::borrow::Cow;

/// A reading as found in a payload, before it is mapped onto a point.
#[derive(Clone, Debug, PartialEq)]
pub struct RawReading {
    /// Tag (with the subscription's prefix).
    pub tag: String,
    /// Value.
    pub value: f64,
    /// Unit the payload states (or the subscription's `unit`); `None` = the point's unit.
    pub unit: Option<Unit>,
    /// Quality.
    pub quality: Quality,
    /// Source time (payload time or receive time).
    pub source_time: Timestamp,
}

/// Why (part of) a payload was not turned into readings. [`DecodeError::reason`] is the
/// stable counter name.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The payload is not JSON.
    #[error("payload is not json: {0}")]
    Json(String),
    /// The payload is not a number.
    #[error("payload is not a number: {0:?}")]
    NotNumber(String),
    /// A field is missing.
    #[error("field `{0}` missing")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("field `{field}` has the wrong type: {found}")]
    WrongType {
        /// Which field.
        field: &'static str,
        /// What was found (truncated).
        found: String,
    },
    /// The tag could not be taken from the topic.
    #[error("topic `{0}` has no tag level")]
    NoTagInTopic(String),
    /// Time field unreadable.
    #[error("time {0:?} cannot be read")]
    BadTime(String),
    /// Unit text unknown.
    #[error("unit {0:?} is not known")]
    UnknownUnit(String),
    /// Sparkplug payload problems.
    #[error("sparkplug: {0}")]
    Sparkplug(String),
    /// Sparkplug alias without a birth certificate.
    #[error("sparkplug metric alias {0} unknown (no birth seen)")]
    UnknownAlias(u64),
}

impl DecodeError {
    /// Counter name.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Json(_) | DecodeError::NotNumber(_) | DecodeError::Sparkplug(_) => {
                "unparseable"
            }
            DecodeError::Missing(_) | DecodeError::NoTagInTopic(_) => "missing_field",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::BadTime(_) => "bad_time",
            DecodeError::UnknownUnit(_) => "unknown_unit",
            DecodeError::UnknownAlias(_) => "unknown_alias",
        }
    }
}

/// What one payload gave: readings, and errors for the parts that could not be read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decoded {
    /// Readings found.
    pub readings: Vec<RawReading>,
    /// Problems (one per reading or per payload).
    pub errors: Vec<DecodeError>,
}

fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 40 {
        let mut cut = 40;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Decode one payload of a json or number subscription (Sparkplug needs a
/// [`SparkplugState`], see [`decode`]).
pub fn decode_stateless(
    sub: &Subscription,
    topic: &str,
    payload: &[u8],
    receive_time: Timestamp,
) -> Decoded {
    let mut out = Decoded::default();
    decode_stateless_into(sub, topic, payload, receive_time, &mut out);
    out
}

/// [`decode_stateless`], appending to `out` (a subscriber reuses one `Decoded` for every
/// message instead of allocating its vectors per message).
pub fn decode_stateless_into(
    sub: &Subscription,
    topic: &str,
    payload: &[u8],
    receive_time: Timestamp,
    out: &mut Decoded,
) {
    match sub.format {
        PayloadFormat::Number => match decode_number(sub, topic, payload, receive_time) {
            Ok(r) => out.readings.push(r),
            Err(e) => out.errors.push(e),
        },
        PayloadFormat::Json => decode_json(sub, topic, payload, receive_time, out),
        PayloadFormat::SparkplugB => out.errors.push(DecodeError::Sparkplug(
            "sparkplug payload given to the stateless decoder".into(),
        )),
    }
}

/// Decode one payload of any format; Sparkplug aliases live in `spb`.
pub fn decode(
    sub: &Subscription,
    spb: &mut SparkplugState,
    topic: &str,
    payload: &[u8],
    receive_time: Timestamp,
) -> Decoded {
    let mut out = Decoded::default();
    decode_into(sub, spb, topic, payload, receive_time, &mut out);
    out
}

/// [`decode`], appending to `out`.
pub fn decode_into(
    sub: &Subscription,
    spb: &mut SparkplugState,
    topic: &str,
    payload: &[u8],
    receive_time: Timestamp,
    out: &mut Decoded,
) {
    if sub.format == PayloadFormat::SparkplugB {
        let d = spb.decode(&sub.tag_prefix, topic, payload, receive_time);
        out.readings.extend(d.readings);
        out.errors.extend(d.errors);
    } else {
        decode_stateless_into(sub, topic, payload, receive_time, out);
    }
}

/// The tag the topic (or the subscription) gives, prefixed; borrowed when there is no
/// prefix (no allocation per message on the common path).
fn topic_tag<'a>(
    sub: &'a Subscription,
    topic: &'a str,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    let tag = |s: &'a str| {
        if sub.tag_prefix.is_empty() {
            Cow::Borrowed(s)
        } else {
            Cow::Owned(prefixed(&sub.tag_prefix, s))
        }
    };
    match &sub.tag {
        TagSource::Segment(i) => match topic.split('/').nth(*i) {
            Some(s) if !s.is_empty() => Ok(Some(tag(s))),
            _ => Err(DecodeError::NoTagInTopic(topic.to_string())),
        },
        TagSource::Fixed(t) => Ok(Some(tag(t))),
        TagSource::Field(_) | TagSource::MetricName => Ok(None),
    }
}

fn decode_number(
    sub: &Subscription,
    topic: &str,
    payload: &[u8],
    receive_time: Timestamp,
) -> Result<RawReading, DecodeError> {
    let tag = topic_tag(sub, topic)?
        .ok_or(DecodeError::Missing("tag"))?
        .into_owned();
    let text = std::str::from_utf8(payload)
        .map_err(|_| DecodeError::NotNumber(String::from_utf8_lossy(payload).into_owned()))?
        .trim();
    let value = match text {
        "true" => 1.0,
        "false" => 0.0,
        t => t
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| DecodeError::NotNumber(t.chars().take(40).collect()))?,
    };
    Ok(RawReading {
        tag,
        value,
        unit: sub.unit,
        quality: Quality::Good,
        source_time: receive_time,
    })
}

fn decode_json(
    sub: &Subscription,
    topic: &str,
    payload: &[u8],
    receive_time: Timestamp,
    out: &mut Decoded,
) {
    // Fast path: one flat object, every field a top-level key (the common gateway shape).
    // Only the configured fields are materialised; everything else is skipped without
    // allocating. Any other shape, and every error, takes the general path below, so
    // results and error texts are the same on both. One difference: fields the
    // subscription does not read are only checked for syntax (a number out of f64 range
    // there is not an error).
    if let Some(keys) = flat_keys(sub)
        && let Some(slots) = flat_fields(&keys, payload)
    {
        flat_readings(sub, topic, std::slice::from_ref(&slots), receive_time, out);
        return;
    }
    // Fast path for arrays of readings (a gateway's batch): the root array, or the array
    // under one top-level key (`readings_field`), each element a flat object. As above:
    // any other shape and every error take the general path.
    if let (Some(keys), Some(rows_key)) = (flat_item_keys(sub), readings_key(sub))
        && let Some(rows) = flat_rows(&keys, rows_key, payload)
    {
        flat_readings(sub, topic, &rows, receive_time, out);
        return;
    }
    decode_json_general(sub, topic, payload, receive_time, out);
}

/// The readings of the fast paths' objects (`rows`: their fields, see [`flat_fields`]).
fn flat_readings(
    sub: &Subscription,
    topic: &str,
    rows: &[Slots],
    receive_time: Timestamp,
    out: &mut Decoded,
) {
    let topic_tag = match topic_tag(sub, topic) {
        Ok(t) => t,
        Err(e) => {
            out.errors.push(e);
            return;
        }
    };
    out.readings.reserve(rows.len());
    for slots in rows {
        let fields = Fields {
            value: slots[0].as_ref(),
            unit: slots[1].as_ref(),
            time: slots[2].as_ref(),
            quality: slots[3].as_ref(),
            tag: slots[4].as_ref(),
        };
        match json_item(sub, topic_tag.as_deref(), &fields, receive_time) {
            Ok(r) => out.readings.push(r),
            Err(e) => out.errors.push(e),
        }
    }
}

/// Any JSON shape: the whole payload as a `serde_json::Value`, fields found by path.
/// [`decode_stateless`] uses it for every payload the fast path does not take; public so
/// that `mqtt_bench` can measure both paths on the same payloads.
pub fn decode_json_general(
    sub: &Subscription,
    topic: &str,
    payload: &[u8],
    receive_time: Timestamp,
    out: &mut Decoded,
) {
    let root: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            out.errors.push(DecodeError::Json(e.to_string()));
            return;
        }
    };
    let topic_tag = match topic_tag(sub, topic) {
        Ok(t) => t,
        Err(e) => {
            out.errors.push(e);
            return;
        }
    };
    let items: &[Value] = match (&sub.json.readings, &root) {
        (Some(p), _) => match p.get(&root) {
            Some(Value::Array(a)) => a,
            Some(other) => {
                out.errors.push(DecodeError::WrongType {
                    field: "readings_field",
                    found: short(other),
                });
                return;
            }
            None => {
                out.errors.push(DecodeError::Missing("readings_field"));
                return;
            }
        },
        (None, Value::Array(a)) => a,
        (None, _) => std::slice::from_ref(&root),
    };
    out.readings.reserve(items.len());
    let opt = |p: &Option<FieldPath>, item| p.as_ref().and_then(|p| p.get(item));
    for item in items {
        let fields = Fields {
            value: sub.json.value.get(item),
            unit: opt(&sub.json.unit, item),
            time: opt(&sub.json.time, item),
            quality: opt(&sub.json.quality, item),
            tag: match &sub.tag {
                TagSource::Field(p) => p.get(item),
                _ => None,
            },
        };
        match json_item(sub, topic_tag.as_deref(), &fields, receive_time) {
            Ok(r) => out.readings.push(r),
            Err(e) => out.errors.push(e),
        }
    }
}

/// The JSON values one reading is made of (found by the subscription's field paths).
struct Fields<'a> {
    value: Option<&'a Value>,
    unit: Option<&'a Value>,
    time: Option<&'a Value>,
    quality: Option<&'a Value>,
    tag: Option<&'a Value>,
}

/// Number of fields of the fast path: value, unit, time, quality, tag.
const FLAT_FIELDS: usize = 5;

/// The top-level keys of the fields, when the subscription reads one flat object per
/// payload and every configured path is a single object key; `None` otherwise.
fn flat_keys(sub: &Subscription) -> Option<[Option<&str>; FLAT_FIELDS]> {
    if sub.json.readings.is_some() {
        return None;
    }
    flat_item_keys(sub)
}

/// The single object key of a field path, if it is one.
fn single_key(p: &FieldPath) -> Option<&str> {
    match p.0.as_slice() {
        [PathPart::Key(k)] => Some(k.as_str()),
        _ => None,
    }
}

/// Where the array of readings is, for the fast path: `Some(None)` the root array (no
/// `readings_field`), `Some(Some(key))` under one top-level key; `None` for a nested path.
fn readings_key(sub: &Subscription) -> Option<Option<&str>> {
    match &sub.json.readings {
        None => Some(None),
        Some(p) => single_key(p).map(Some),
    }
}

/// The keys of the fields within one reading object, when every configured path is a
/// single object key; `None` otherwise.
fn flat_item_keys(sub: &Subscription) -> Option<[Option<&str>; FLAT_FIELDS]> {
    use single_key as key;
    fn opt(p: &Option<FieldPath>) -> Option<Option<&str>> {
        match p {
            None => Some(None),
            Some(p) => key(p).map(Some),
        }
    }
    let tag = match &sub.tag {
        TagSource::Field(p) => Some(key(p)?),
        _ => None,
    };
    Some([
        Some(key(&sub.json.value)?),
        opt(&sub.json.unit)?,
        opt(&sub.json.time)?,
        opt(&sub.json.quality)?,
        tag,
    ])
}

/// The visitor of one flat reading object ([`flat_fields`], [`flat_rows`]).
mod flat_object {
    use super::{FLAT_FIELDS, Value};
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

    /// Which wanted field a key is (its index), or none.
    struct KeySeed<'k>(pub(super) &'k [Option<&'k str>; FLAT_FIELDS]);
    impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
        type Value = Option<usize>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl Visitor<'_> for KeySeed<'_> {
        type Value = Option<usize>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object key")
        }
        fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<Self::Value, E> {
            Ok(self.0.iter().position(|w| *w == Some(k)))
        }
    }
    pub(super) struct Object<'k>(pub(super) &'k [Option<&'k str>; FLAT_FIELDS]);
    impl<'de> Visitor<'de> for Object<'_> {
        type Value = [Option<Value>; FLAT_FIELDS];
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut slots: [Option<Value>; FLAT_FIELDS] = Default::default();
            while let Some(k) = map.next_key_seed(KeySeed(self.0))? {
                match k {
                    Some(i) => {
                        let v = map.next_value::<Value>()?;
                        // A key may serve several fields (e.g. unit and quality both
                        // "u"): fill every slot that names it.
                        for (j, w) in self.0.iter().enumerate().skip(i + 1) {
                            if *w == self.0[i] {
                                slots[j] = Some(v.clone());
                            }
                        }
                        slots[i] = Some(v);
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(slots)
        }
    }
}

/// Read one JSON object, keeping only the values of `keys` (the last one when a key
/// repeats, as `serde_json::Value` does). `None` when the payload is not a well-formed
/// object.
fn flat_fields(
    keys: &[Option<&str>; FLAT_FIELDS],
    payload: &[u8],
) -> Option<[Option<Value>; FLAT_FIELDS]> {
    use serde::de::Deserializer;
    let mut de = serde_json::Deserializer::from_slice(payload);
    let slots = de.deserialize_map(flat_object::Object(keys)).ok()?;
    de.end().ok()?;
    Some(slots)
}

/// Fields of one flat reading object (see [`flat_fields`]).
type Slots = [Option<Value>; FLAT_FIELDS];

/// Read an array of flat reading objects — the root array (`rows_key` `None`) or the
/// array under the top-level key `rows_key` (the last one when it repeats) — keeping only
/// the values of `keys` in each. `None` when the payload has another shape (an element
/// that is not an object, no such key, not an array) or is not well-formed.
fn flat_rows(
    keys: &[Option<&str>; FLAT_FIELDS],
    rows_key: Option<&str>,
    payload: &[u8],
) -> Option<Vec<Slots>> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

    /// One element: a flat object, through [`flat_fields`]'s visitor.
    struct Row<'k>(&'k [Option<&'k str>; FLAT_FIELDS]);
    impl<'de> DeserializeSeed<'de> for Row<'_> {
        type Value = Slots;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Slots, D::Error> {
            d.deserialize_map(flat_object::Object(self.0))
        }
    }
    struct Rows<'k>(&'k [Option<&'k str>; FLAT_FIELDS]);
    impl<'de> DeserializeSeed<'de> for Rows<'_> {
        type Value = Vec<Slots>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Slots>, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Rows<'_> {
        type Value = Vec<Slots>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of reading objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Slots>, A::Error> {
            let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(16));
            while let Some(r) = seq.next_element_seed(Row(self.0))? {
                rows.push(r);
            }
            Ok(rows)
        }
    }
    struct Root<'k> {
        keys: &'k [Option<&'k str>; FLAT_FIELDS],
        rows_key: &'k str,
    }
    impl<'de> Visitor<'de> for Root<'_> {
        type Value = Vec<Slots>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Slots>, A::Error> {
            let mut rows = None;
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if k == self.rows_key {
                    rows = Some(map.next_value_seed(Rows(self.keys))?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            rows.ok_or_else(|| serde::de::Error::custom("no readings field"))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    let rows = match rows_key {
        None => Rows(keys).deserialize(&mut de).ok()?,
        Some(rows_key) => de.deserialize_map(Root { keys, rows_key }).ok()?,
    };
    de.end().ok()?;
    Some(rows)
}

fn json_item(
    sub: &Subscription,
    topic_tag: Option<&str>,
    f: &Fields<'_>,
    receive_time: Timestamp,
) -> Result<RawReading, DecodeError> {
    let tag = match (topic_tag, &sub.tag) {
        (Some(t), _) => t.to_string(),
        (None, TagSource::Field(_)) => match f.tag {
            Some(Value::String(s)) if !s.is_empty() => prefixed(&sub.tag_prefix, s),
            Some(Value::Number(n)) => format!("{}{n}", sub.tag_prefix),
            Some(other) => {
                return Err(DecodeError::WrongType {
                    field: "tag",
                    found: short(other),
                });
            }
            None => return Err(DecodeError::Missing("tag")),
        },
        (None, _) => return Err(DecodeError::Missing("tag")),
    };
    let value = match f.value {
        Some(Value::Number(n)) => {
            n.as_f64()
                .filter(|v| v.is_finite())
                .ok_or_else(|| DecodeError::WrongType {
                    field: "value",
                    found: n.to_string(),
                })?
        }
        Some(Value::Bool(b)) => f64::from(u8::from(*b)),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| DecodeError::WrongType {
                field: "value",
                found: short(&Value::String(s.clone())),
            })?,
        Some(other) => {
            return Err(DecodeError::WrongType {
                field: "value",
                found: short(other),
            });
        }
        None => return Err(DecodeError::Missing("value")),
    };
    let unit = match f.unit {
        None | Some(Value::Null) => sub.unit,
        Some(Value::String(s)) => {
            Some(Unit::parse(s).ok_or_else(|| DecodeError::UnknownUnit(s.clone()))?)
        }
        Some(other) => {
            return Err(DecodeError::WrongType {
                field: "unit",
                found: short(other),
            });
        }
    };
    let source_time = match f.time {
        None | Some(Value::Null) => receive_time,
        Some(v) => json_time(v, sub.time_format)?,
    };
    let quality = match f.quality {
        None | Some(Value::Null) => Quality::Good,
        Some(v) => json_quality(v),
    };
    Ok(RawReading {
        tag,
        value,
        unit,
        quality,
        source_time,
    })
}

/// `prefix` + `s` in one allocation.
fn prefixed(prefix: &str, s: &str) -> String {
    let mut t = String::with_capacity(prefix.len() + s.len());
    t.push_str(prefix);
    t.push_str(s);
    t
}

/// Exact decimal text (`-?digits[.digits]`) × 10^`scale` as an integer; `None` for other
/// shapes (exponents), which then go through `f64`.
fn decimal_scaled(text: &str, scale: u32) -> Option<i64> {
    let (neg, t) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() || !int.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut v: i64 = int
        .parse::<i64>()
        .ok()?
        .checked_mul(10i64.checked_pow(scale)?)?;
    let mut f: i64 = 0;
    for (i, c) in frac.bytes().enumerate() {
        if i as u32 >= scale {
            break;
        }
        f += i64::from(c - b'0') * 10i64.pow(scale - 1 - i as u32);
    }
    v = v.checked_add(f)?;
    Some(if neg { -v } else { v })
}

/// Read a JSON time value.
pub fn json_time(v: &Value, fmt: TimeFormat) -> Result<Timestamp, DecodeError> {
    let bad = || DecodeError::BadTime(short(v));
    // An integer epoch (the usual gateway payload): scaled directly, as `decimal_scaled`
    // would scale its text, without formatting it first.
    if let (Value::Number(n), Some(scale)) = (v, fmt.scale())
        && let Some(i) = n.as_i64()
    {
        return i
            .checked_mul(10i64.pow(scale))
            .map(Timestamp)
            .ok_or_else(bad);
    }
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let t = s.trim();
            if t.parse::<f64>().is_err() {
                return parse_rfc3339(t).ok_or_else(bad);
            }
            t.to_string()
        }
        _ => return Err(bad()),
    };
    let scale = fmt.scale().ok_or_else(bad)?;
    if let Some(ns) = decimal_scaled(&text, scale) {
        return Ok(Timestamp(ns));
    }
    let ns = text
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(bad)?
        * 10f64.powi(scale as i32);
    if ns.abs() >= 9.2e18 {
        return Err(bad());
    }
    Ok(Timestamp(ns.round() as i64))
}

/// Map a JSON quality value.
pub fn json_quality(v: &Value) -> Quality {
    match v {
        Value::Bool(true) => Quality::Good,
        Value::Bool(false) => Quality::Fault,
        Value::Number(n) => match n.as_u64() {
            // OPC DA quality: 192 (0xC0) good; 0..63 bad, 64..191 uncertain.
            Some(192) => Quality::Good,
            Some(c) if c <= u64::from(u16::MAX) => {
                Quality::from_code(c as u16).unwrap_or(Quality::Fault)
            }
            _ => Quality::Fault,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "good" | "ok" | "normal" | "正常" => Quality::Good,
            "comm_lost" | "commlost" | "offline" | "通讯中断" => Quality::CommLost,
            "out_of_range" | "over_range" | "under_range" | "超量程" => Quality::OutOfRange,
            "maintenance" | "calibration" | "calibrating" | "维护" | "标定" => {
                Quality::Maintenance
            }
            "inhibited" | "disabled" | "屏蔽" => Quality::Inhibited,
            // Everything else ("bad", "fault", "uncertain", ...) is not good.
            _ => Quality::Fault,
        },
        _ => Quality::Fault,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse RFC 3339 (`2026-11-26T08:00:00.123+08:00`, `Z`, space instead of `T` allowed).
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ns: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                frac_ns = frac_ns * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = (i - start).min(9);
        if digits == 0 {
            return None;
        }
        frac_ns *= 10i64.pow(9 - digits as u32);
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se.min(59) - offset_s;
    Some(Timestamp(
        secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)?,
    ))
}

/// Why a raw reading was not handed to the engine. [`Reject::reason`] is the counter name.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Reject {
    /// No point has this tag.
    #[error("no point has tag `{0}`")]
    UnknownTag(String),
    /// The payload unit cannot be converted into the point's unit.
    #[error("point `{tag}`: {error}")]
    Unit {
        /// Tag.
        tag: String,
        /// Conversion error.
        error: parkguard_rules::units::UnitError,
    },
}

impl Reject {
    /// Counter name.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::UnknownTag(_) => "unknown_tag",
            Reject::Unit { .. } => "unit_rejected",
        }
    }
}

/// Map a raw reading onto its point and convert it into the point's unit (with the point's
/// gas for ppm ↔ mg/m³ ↔ %vol ↔ %LEL).
pub fn resolve(
    table: &PointTable,
    raw: &RawReading,
    receive_time: Timestamp,
) -> Result<Reading, Reject> {
    let point = table
        .by_tag(&raw.tag)
        .ok_or_else(|| Reject::UnknownTag(raw.tag.clone()))?;
    let value = match raw.unit {
        Some(u) if u != point.unit => {
            u.convert(raw.value, point.unit, point.gas)
                .map_err(|error| Reject::Unit {
                    tag: raw.tag.clone(),
                    error,
                })?
        }
        _ => raw.value,
    };
    Ok(Reading {
        point: point.id,
        value,
        unit: point.unit,
        quality: raw.quality,
        source_time: raw.source_time,
        receive_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::config::MqttSubscriptionConfig;

    const RT: Timestamp = Timestamp(1_800_000_000_000_000_000);

    fn sub(json: &str) -> Subscription {
        let c: MqttSubscriptionConfig = serde_json::from_str(json).expect("config");
        c.validate(&["b"]).expect("valid")
    }

    fn raw(tag: &str, value: f64, unit: Option<Unit>, q: Quality, t: Timestamp) -> RawReading {
        RawReading {
            tag: tag.into(),
            value,
            unit,
            quality: q,
            source_time: t,
        }
    }

    #[test]
    fn json_and_number_vectors() {
        let g = Quality::Good;
        let ms = Timestamp::from_millis(1_764_144_000_123);
        // (subscription, topic, payload, readings, error reasons)
        type Case<'a> = (&'a str, &'a str, &'a str, Vec<RawReading>, Vec<&'a str>);
        let cases: Vec<Case<'_>> = vec![
            (
                r#"{"broker":"b","topic":"p/+/gds/+","format":"json","tag_segment":3}"#,
                "p/e1/gds/AT-101",
                r#"{"value": 12.5}"#,
                vec![raw("AT-101", 12.5, None, g, RT)],
                vec![],
            ),
            (
                r#"{"broker":"b","topic":"p/+/gds/+","format":"json","tag_segment":3,
                    "tag_prefix":"E1.","unit_field":"u","time_field":"ts","quality_field":"q"}"#,
                "p/e1/gds/AT-101",
                r#"{"value": "7", "u": "ppm", "ts": 1764144000123, "q": "maintenance"}"#,
                vec![raw(
                    "E1.AT-101",
                    7.0,
                    Some(Unit::Ppm),
                    Quality::Maintenance,
                    ms,
                )],
                vec![],
            ),
            (
                r#"{"broker":"b","topic":"gw/1","format":"json","tag_field":"id",
                    "value_field":"data.v","time_field":"data.t","time_format":"epoch_s",
                    "readings_field":"rows"}"#,
                "gw/1",
                r#"{"rows":[{"id":"A","data":{"v":1,"t":1764144000.123}},
                            {"id":"B","data":{"v":true,"t":"2025-11-26T08:00:00.123Z"}},
                            {"id":"C","data":{"v":"x"}},
                            {"data":{"v":2}},
                            {"id":"D","data":{"v":3,"t":[1]}}]}"#,
                vec![raw("A", 1.0, None, g, ms), raw("B", 1.0, None, g, ms)],
                vec!["wrong_type", "missing_field", "bad_time"],
            ),
            (
                r#"{"broker":"b","topic":"gw/1","format":"json","tag_field":"tag",
                    "time_field":"t","time_format":"epoch_ns","unit":"mg/m3"}"#,
                "gw/1",
                r#"[{"tag":"X","value":-1.5e0,"t":1764144000123000000},{"tag":"Y"}]"#,
                vec![raw("X", -1.5, Some(Unit::MgPerM3), g, ms)],
                vec!["missing_field"],
            ),
            (
                r#"{"broker":"b","topic":"gw/1","format":"json","tag":"T","unit_field":"u"}"#,
                "gw/1",
                r#"{"value":1,"u":"furlong"}"#,
                vec![],
                vec!["unknown_unit"],
            ),
            (
                r#"{"broker":"b","topic":"gw/1","format":"json","tag":"T"}"#,
                "gw/1",
                r#"{"value":1,"#,
                vec![],
                vec!["unparseable"],
            ),
            (
                r#"{"broker":"b","topic":"gw/1","format":"json","tag":"T"}"#,
                "gw/1",
                r#"{"value":null}"#,
                vec![],
                vec!["wrong_type"],
            ),
            (
                r#"{"broker":"b","topic":"gw/1","format":"json","tag":"T","quality_field":"q"}"#,
                "gw/1",
                r#"[{"value":1,"q":192},{"value":2,"q":0},{"value":3,"q":1},{"value":4,"q":"bad"},{"value":5,"q":false}]"#,
                vec![
                    raw("T", 1.0, None, g, RT),
                    raw("T", 2.0, None, g, RT),
                    raw("T", 3.0, None, Quality::CommLost, RT),
                    raw("T", 4.0, None, Quality::Fault, RT),
                    raw("T", 5.0, None, Quality::Fault, RT),
                ],
                vec![],
            ),
            (
                r#"{"broker":"b","topic":"s/+","format":"number","tag_segment":1,"unit":"%LEL"}"#,
                "s/LT-1",
                " 42.25\n",
                vec![raw("LT-1", 42.25, Some(Unit::PercentLel), g, RT)],
                vec![],
            ),
            (
                r#"{"broker":"b","topic":"s/+","format":"number","tag_segment":1}"#,
                "s/V-1",
                "true",
                vec![raw("V-1", 1.0, None, g, RT)],
                vec![],
            ),
            (
                r#"{"broker":"b","topic":"s/+","format":"number","tag_segment":1}"#,
                "s/V-1",
                "NaN",
                vec![],
                vec!["unparseable"],
            ),
            (
                r#"{"broker":"b","topic":"s/#","format":"number","tag_segment":3}"#,
                "s/a",
                "1",
                vec![],
                vec!["missing_field"],
            ),
        ];
        for (i, (s, topic, payload, want, want_err)) in cases.into_iter().enumerate() {
            let d = decode_stateless(&sub(s), topic, payload.as_bytes(), RT);
            assert_eq!(d.readings, want, "case {i}");
            let reasons: Vec<_> = d.errors.iter().map(DecodeError::reason).collect();
            assert_eq!(reasons, want_err, "case {i}: {:?}", d.errors);
        }
    }

    #[test]
    fn fast_path_agrees_with_the_general_path() {
        let subs = [
            r#"{"broker":"b","topic":"p/+","format":"json","tag_segment":1}"#,
            r#"{"broker":"b","topic":"p/+","format":"json","tag_segment":1,"tag_prefix":"E1.",
                "unit_field":"u","time_field":"ts","quality_field":"q"}"#,
            r#"{"broker":"b","topic":"p/+","format":"json","tag_field":"id","value_field":"v",
                "unit_field":"u","quality_field":"u","time_field":"t","time_format":"epoch_ns"}"#,
            r#"{"broker":"b","topic":"p/#","format":"json","tag_segment":3}"#,
            r#"{"broker":"b","topic":"p/+","format":"json","tag_field":"tag","readings_field":"r",
                "time_field":"ts","time_format":"epoch_ms","unit_field":"u"}"#,
            r#"{"broker":"b","topic":"p/+","format":"json","tag_field":"tag","unit_field":"u",
                "quality_field":"u"}"#,
        ];
        let payloads = [
            r#"{"value": 12.5}"#,
            r#"{"value": "7", "u": "ppm", "ts": 1764144000123, "q": "maintenance"}"#,
            r#" {"value": 1, "value": 2, "ts": "2025-11-26T08:00:00.123Z"} "#,
            r#"{"id":"A","v":3.25,"u":null,"t":1764144000123000000,"x":{"deep":[1,2,{"a":"b"}]}}"#,
            r#"{"id":7,"v":true,"u":"ppm"}"#,
            r#"{"id":"","v":1}"#,
            r#"{"id":"B","v":[1]}"#,
            r#"{"id":"B","v":1,"t":[1]}"#,
            r#"{"id":"B","v":1,"u":"furlong"}"#,
            r#"{"id":"B","v":1e400,"value":1e400}"#,
            r#"{"id":"B","value":1,"ts":1,"q":192,"u":"%LEL","v":2}"#,
            r#"{"escaped":1,"value":4.5,"ts":-12.5}"#,
            r#"{"value":1,}"#,
            r#"{"value":1} trailing"#,
            r#"[{"value":1}]"#,
            r#"42"#,
            r#""#,
            r#"{"value":null}"#,
            r#"{"r":[{"tag":"A","value":1,"ts":1764144000123},{"tag":"B","value":"2","u":"ppm"}]}"#,
            r#"{"x":1,"r":[],"y":[1,{"r":2}]}"#,
            r#"{"r":[{"tag":"A","value":1},5]}"#,
            r#"{"r":{"tag":"A","value":1}}"#,
            r#"{"r":[{"tag":"A","value":1}],"r":[{"tag":"B","value":2}]}"#,
            r#"{"r":[{"tag":7,"value":1,"value":3},{"tag":"","value":1},{"value":1}]}"#,
            r#"{"q":[{"tag":"A","value":1}]}"#,
            r#"[{"value":1,"u":"ppm"},{"value":2,"tag":"Z","u":"%LEL"}]"#,
            r#"[{"value":1},]"#,
            r#"[{"tag":"A","value":1}] x"#,
            r#"[]"#,
        ];
        let mut fast_used = 0;
        let mut rows_used = 0;
        for s in subs {
            let sub = sub(s);
            for topic in ["p/AT-1", "p/x/y/T"] {
                for p in payloads {
                    let mut general = Decoded::default();
                    decode_json_general(&sub, topic, p.as_bytes(), RT, &mut general);
                    let mut any = Decoded::default();
                    decode_json(&sub, topic, p.as_bytes(), RT, &mut any);
                    assert_eq!(any, general, "{s} {topic} {p}");
                    if flat_keys(&sub)
                        .and_then(|k| flat_fields(&k, p.as_bytes()))
                        .is_some()
                    {
                        fast_used += 1;
                    }
                    if let (Some(k), Some(r)) = (flat_item_keys(&sub), readings_key(&sub))
                        && flat_rows(&k, r, p.as_bytes()).is_some()
                    {
                        rows_used += 1;
                    }
                }
            }
        }
        assert!(fast_used > 40, "the fast path was taken {fast_used} times");
        assert!(
            rows_used > 20,
            "the array fast path was taken {rows_used} times"
        );
        // Nested paths and arrays of readings never take the fast path.
        let nested =
            sub(r#"{"broker":"b","topic":"gw/1","format":"json","tag":"T","value_field":"d.v"}"#);
        assert!(flat_keys(&nested).is_none());
        let rows = sub(
            r#"{"broker":"b","topic":"gw/1","format":"json","tag":"T","readings_field":"rows"}"#,
        );
        assert!(flat_keys(&rows).is_none());
        // Arrays under a nested path take the general path.
        let deep = sub(
            r#"{"broker":"b","topic":"gw/1","format":"json","tag":"T","readings_field":"d.rows"}"#,
        );
        assert!(readings_key(&deep).is_none());
    }

    #[test]
    fn rfc3339_vectors() {
        let cases = [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2025-11-26T08:00:00.123Z", Some(1_764_144_000_123_000_000)),
            (
                "2025-11-26T16:00:00.123+08:00",
                Some(1_764_144_000_123_000_000),
            ),
            (
                "2025-11-26 08:00:00.123456789z",
                Some(1_764_144_000_123_456_789),
            ),
            ("2000-02-29T00:00:00-01:30", Some(951_787_800_000_000_000)),
            ("1969-12-31T23:59:59Z", Some(-1_000_000_000)),
            ("2025-13-01T00:00:00Z", None),
            ("2025-11-26T08:00:00", None),
            ("2025-11-26T08:00:00.Z", None),
            ("2025-11-26T08:00:00+0800", None),
            ("yesterday at noon, roughly", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_rfc3339(s).map(|t| t.0), want, "{s}");
        }
    }

    #[test]
    fn resolve_converts_units_and_rejects() {
        use parkguard_rules::*;
        let mk = |id: u32, tag: &str, unit: Unit, gas: Option<Gas>| Point {
            id: PointId(id),
            tag: tag.into(),
            name: tag.into(),
            enterprise: "E1".into(),
            device: None,
            hazard_installation: None,
            area: None,
            kind: PointKind::Toxic,
            gas,
            unit,
            range_lo: 0.0,
            range_hi: 100.0,
            limits: AlarmLimits::default(),
            expected_interval: std::time::Duration::from_secs(1),
            location: None,
        };
        let table = PointTable::new(vec![
            mk(0, "H2S", Unit::MgPerM3, Some(Gas::H2s)),
            mk(1, "P", Unit::MPa, None),
        ])
        .expect("table");
        let g = Quality::Good;
        let r = resolve(&table, &raw("H2S", 10.0, Some(Unit::Ppm), g, RT), RT).expect("ok");
        assert_eq!(r.point, PointId(0));
        assert_eq!(r.unit, Unit::MgPerM3);
        assert!((r.value - 10.0 * Gas::H2s.molar_mass() / 24.04).abs() < 1e-9);
        let r = resolve(&table, &raw("P", 250.0, Some(Unit::KPa), g, RT), RT).expect("ok");
        assert!((r.value - 0.25).abs() < 1e-12);
        let e = resolve(&table, &raw("P", 1.0, Some(Unit::Ppm), g, RT), RT).expect_err("unit");
        assert_eq!(e.reason(), "unit_rejected");
        let e = resolve(&table, &raw("Q", 1.0, None, g, RT), RT).expect_err("tag");
        assert_eq!(e.reason(), "unknown_tag");
    }

    /// Integer epochs take a direct path (no text); every form must give the same instant
    /// as the text path, and overflow is a bad time, never a wrapped one.
    #[test]
    fn json_times_in_every_epoch_unit() {
        use serde_json::json;
        let t = 1_795_688_531_i64; // 2026-11-26T10:22:11Z
        let cases: Vec<(Value, TimeFormat, Option<i64>)> = vec![
            (json!(t), TimeFormat::EpochS, Some(t * 1_000_000_000)),
            (
                json!(t * 1000 + 250),
                TimeFormat::EpochMs,
                Some((t * 1000 + 250) * 1_000_000),
            ),
            (
                json!(t * 1_000_000_000 + 7),
                TimeFormat::EpochNs,
                Some(t * 1_000_000_000 + 7),
            ),
            (json!(-5), TimeFormat::EpochS, Some(-5_000_000_000)),
            (json!(1.5), TimeFormat::EpochS, Some(1_500_000_000)),
            (
                json!("1795688531"),
                TimeFormat::EpochS,
                Some(t * 1_000_000_000),
            ),
            (
                json!(" 1795688531250 "),
                TimeFormat::EpochMs,
                Some((t * 1000 + 250) * 1_000_000),
            ),
            (json!(u64::MAX), TimeFormat::EpochNs, None),
            (json!(i64::MAX), TimeFormat::EpochS, None),
            (json!(i64::MIN), TimeFormat::EpochMs, None),
            (json!(t), TimeFormat::Rfc3339, None),
            (
                json!("2026-11-26T18:22:11+08:00"),
                TimeFormat::Rfc3339,
                Some(t * 1_000_000_000),
            ),
            (json!(true), TimeFormat::EpochMs, None),
        ];
        for (v, fmt, want) in cases {
            let got = json_time(&v, fmt);
            match want {
                Some(ns) => assert_eq!(got.ok(), Some(Timestamp(ns)), "{v} as {fmt:?}"),
                None => assert_eq!(
                    got.map_err(|e| e.reason()),
                    Err("bad_time"),
                    "{v} as {fmt:?}"
                ),
            }
        }
    }
}

//! Replay sources: InfluxDB line-protocol files and InfluxDB annotated CSV exports
//! (`influx query --raw`), so that a drill or backtest can replay data taken from the
//! production InfluxDB. (parkguard's own local archive is read by the store module.)
//!
//! Records are matched to points by the `tag` tag; the `value` and `quality` fields of the
//! `reading` measurement carry the data (the names of the storage schema). Rows of other
//! measurements are skipped; rows naming unknown tags are counted, never silently dropped.

use parkguard_rules::{PointTable, Quality, Reading, Timestamp};
use std::collections::BTreeMap;

/// Measurement of readings.
pub const MEASUREMENT: &str = "reading";
/// Tag key of the point tag.
pub const TAG_KEY: &str = "tag";
/// Field of the value.
pub const VALUE_FIELD: &str = "value";
/// Field of the quality code.
pub const QUALITY_FIELD: &str = "quality";

/// One recorded reading, before it is matched to a point.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// Point tag.
    pub tag: String,
    /// Value.
    pub value: f64,
    /// Quality (good when the record has no quality field).
    pub quality: Quality,
    /// Time.
    pub time: Timestamp,
}

/// What a parse skipped, with reasons, for the operator.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayStats {
    /// Records read.
    pub records: u64,
    /// Lines or rows that could not be parsed: (line number, reason), first 20 kept.
    pub errors: Vec<(usize, String)>,
    /// Number of unparseable lines.
    pub error_count: u64,
    /// Rows of other measurements.
    pub other_measurements: u64,
    /// Records whose tag is not in the park: tag → count.
    pub unknown_tags: BTreeMap<String, u64>,
}

impl ReplayStats {
    fn error(&mut self, line: usize, msg: impl Into<String>) {
        self.error_count += 1;
        if self.errors.len() < 20 {
            self.errors.push((line, msg.into()));
        }
    }
}

/// Parse InfluxDB line protocol (timestamps in nanoseconds).
pub fn parse_line_protocol(text: &str, stats: &mut ReplayStats) -> Vec<Recorded> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match parse_lp_line(line) {
            Ok(p) => {
                if p.measurement != MEASUREMENT {
                    stats.other_measurements += 1;
                    continue;
                }
                let Some(tag) = p
                    .tags
                    .iter()
                    .find(|(k, _)| k == TAG_KEY)
                    .map(|(_, v)| v.clone())
                else {
                    stats.error(i + 1, format!("no `{TAG_KEY}` tag"));
                    continue;
                };
                let Some(value) = p
                    .fields
                    .iter()
                    .find(|(k, _)| k == VALUE_FIELD)
                    .and_then(|(_, v)| v.as_f64())
                else {
                    stats.error(i + 1, format!("no numeric `{VALUE_FIELD}` field"));
                    continue;
                };
                let quality = quality_of(
                    p.fields
                        .iter()
                        .find(|(k, _)| k == QUALITY_FIELD)
                        .and_then(|(_, v)| v.as_f64()),
                );
                let Some(ts) = p.timestamp else {
                    stats.error(i + 1, "no timestamp: replay needs recorded times");
                    continue;
                };
                stats.records += 1;
                out.push(Recorded {
                    tag,
                    value,
                    quality,
                    time: Timestamp::from_nanos(ts),
                });
            }
            Err(e) => stats.error(i + 1, e),
        }
    }
    out
}

fn quality_of(code: Option<f64>) -> Quality {
    match code {
        None => Quality::Good,
        Some(c) if c >= 0.0 && c <= f64::from(u16::MAX) && c.fract() == 0.0 => {
            Quality::from_code(c as u16).unwrap_or(Quality::Fault)
        }
        Some(_) => Quality::Fault,
    }
}

/// A field value.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// Float.
    Float(f64),
    /// Integer (`i` suffix).
    Int(i64),
    /// Unsigned (`u` suffix).
    UInt(u64),
    /// Boolean.
    Bool(bool),
    /// String.
    Str(String),
}

impl FieldValue {
    fn as_f64(&self) -> Option<f64> {
        match self {
            FieldValue::Float(f) => Some(*f),
            FieldValue::Int(i) => Some(*i as f64),
            FieldValue::UInt(u) => Some(*u as f64),
            _ => None,
        }
    }
}

/// One parsed line.
#[derive(Clone, Debug, PartialEq)]
pub struct LpLine {
    /// Measurement.
    pub measurement: String,
    /// Tags in order.
    pub tags: Vec<(String, String)>,
    /// Fields in order.
    pub fields: Vec<(String, FieldValue)>,
    /// Timestamp, ns.
    pub timestamp: Option<i64>,
}

/// Read an identifier up to an unescaped delimiter in `stops`; `\` escapes the next char.
fn ident<'a>(s: &'a str, stops: &[char]) -> (String, &'a str) {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some((_, n))
                    if stops.contains(&n) || n == '\\' || n == '=' || n == ',' || n == ' ' =>
                {
                    out.push(n)
                }
                Some((_, n)) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else if stops.contains(&c) {
            return (out, &s[i..]);
        } else {
            out.push(c);
        }
    }
    (out, "")
}

/// Parse one line of line protocol.
pub fn parse_lp_line(line: &str) -> Result<LpLine, String> {
    let (measurement, mut rest) = ident(line, &[',', ' ']);
    if measurement.is_empty() {
        return Err("empty measurement".into());
    }
    let mut tags = Vec::new();
    while let Some(r) = rest.strip_prefix(',') {
        let (k, r) = ident(r, &['=', ',', ' ']);
        let r = r
            .strip_prefix('=')
            .ok_or_else(|| format!("tag `{k}` has no value"))?;
        let (v, r) = ident(r, &[',', ' ']);
        if k.is_empty() || v.is_empty() {
            return Err("empty tag key or value".into());
        }
        tags.push((k, v));
        rest = r;
    }
    let mut rest = rest.strip_prefix(' ').ok_or("missing fields")?;
    let mut fields = Vec::new();
    loop {
        let (k, r) = ident(rest, &['=', ',', ' ']);
        let r = r
            .strip_prefix('=')
            .ok_or_else(|| format!("field `{k}` has no value"))?;
        let (v, r) = if let Some(body) = r.strip_prefix('"') {
            let mut s = String::new();
            let mut end = None;
            let mut it = body.char_indices();
            while let Some((i, c)) = it.next() {
                match c {
                    '\\' => match it.next() {
                        Some((_, n @ ('"' | '\\'))) => s.push(n),
                        Some((_, n)) => {
                            s.push('\\');
                            s.push(n);
                        }
                        None => return Err("unterminated string".into()),
                    },
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => s.push(c),
                }
            }
            let end = end.ok_or("unterminated string field")?;
            (FieldValue::Str(s), &body[end..])
        } else {
            let stop = r.find([',', ' ']).unwrap_or(r.len());
            let raw = &r[..stop];
            let v = if let Some(n) = raw.strip_suffix('i') {
                FieldValue::Int(n.parse().map_err(|_| format!("bad integer `{raw}`"))?)
            } else if let Some(n) = raw.strip_suffix('u') {
                FieldValue::UInt(n.parse().map_err(|_| format!("bad unsigned `{raw}`"))?)
            } else {
                match raw {
                    "t" | "T" | "true" | "True" | "TRUE" => FieldValue::Bool(true),
                    "f" | "F" | "false" | "False" | "FALSE" => FieldValue::Bool(false),
                    _ => FieldValue::Float(
                        raw.parse()
                            .map_err(|_| format!("bad field value `{raw}`"))?,
                    ),
                }
            };
            (v, &r[stop..])
        };
        fields.push((k, v));
        if let Some(r2) = r.strip_prefix(',') {
            rest = r2;
            continue;
        }
        rest = r;
        break;
    }
    let timestamp = match rest.trim() {
        "" => None,
        t => Some(
            t.parse::<i64>()
                .map_err(|_| format!("bad timestamp `{t}`"))?,
        ),
    };
    Ok(LpLine {
        measurement,
        tags,
        fields,
        timestamp,
    })
}

/// Parse InfluxDB annotated CSV (as `influx query --raw` prints it): several tables, each
/// with `#datatype`/`#group`/`#default` annotations and a header row. Rows of the `value`
/// and `quality` fields of one (tag, time) are merged into one record.
pub fn parse_annotated_csv(text: &str, stats: &mut ReplayStats) -> Vec<Recorded> {
    let mut header: Option<Vec<String>> = None;
    let mut rows: BTreeMap<(i64, String), (Option<f64>, Option<f64>)> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            header = None;
            continue;
        }
        if line.starts_with('#') {
            header = None;
            continue;
        }
        let cols = split_csv(line);
        let Some(h) = &header else {
            header = Some(cols);
            continue;
        };
        let get = |name: &str| h.iter().position(|c| c == name).and_then(|j| cols.get(j));
        let (Some(time), Some(value), Some(field), Some(meas)) = (
            get("_time"),
            get("_value"),
            get("_field"),
            get("_measurement"),
        ) else {
            stats.error(i + 1, "row lacks _time, _value, _field or _measurement");
            continue;
        };
        if meas != MEASUREMENT {
            stats.other_measurements += 1;
            continue;
        }
        let Some(tag) = get(TAG_KEY) else {
            stats.error(i + 1, format!("no `{TAG_KEY}` column"));
            continue;
        };
        let Some(ts) = parse_rfc3339(time) else {
            stats.error(i + 1, format!("bad time `{time}`"));
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            stats.error(i + 1, format!("bad value `{value}`"));
            continue;
        };
        let e = rows.entry((ts, tag.clone())).or_default();
        match field.as_str() {
            VALUE_FIELD => e.0 = Some(v),
            QUALITY_FIELD => e.1 = Some(v),
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for ((ts, tag), (value, quality)) in rows {
        match value {
            Some(value) => {
                stats.records += 1;
                out.push(Recorded {
                    tag,
                    value,
                    quality: quality_of(quality),
                    time: Timestamp::from_nanos(ts),
                });
            }
            None => stats.error(0, format!("`{tag}` at {ts} has a quality but no value")),
        }
    }
    out
}

fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Parse RFC 3339 (`2026-11-26T10:00:00.5Z`, `...+08:00`) to ns since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut nanos = 0i64;
    if let Some(fr) = rest.strip_prefix('.') {
        let n = fr.find(|c: char| !c.is_ascii_digit()).unwrap_or(fr.len());
        let digits = &fr[..n.min(9)];
        nanos = format!("{digits:0<9}").parse().ok()?;
        rest = &fr[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 => {
            let sign = match &o[..1] {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            sign * (o[1..3].parse::<i64>().ok()? * 3600 + o[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset) * 1_000_000_000) + nanos)
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

/// Match records to points (unknown tags counted in `stats`) and sort by time (stable, so
/// records of equal time keep file order). The records' time is both source and receive
/// time: the engine runs on the replayed clock.
pub fn to_readings(
    records: Vec<Recorded>,
    table: &PointTable,
    stats: &mut ReplayStats,
) -> Vec<Reading> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        match table.by_tag(&r.tag) {
            Some(p) => out.push(Reading {
                point: p.id,
                value: r.value,
                unit: p.unit,
                quality: r.quality,
                source_time: r.time,
                receive_time: r.time,
            }),
            None => *stats.unknown_tags.entry(r.tag).or_default() += 1,
        }
    }
    out.sort_by_key(|r| r.source_time);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_protocol_with_escapes_and_types() {
        let l = parse_lp_line(
            r#"reading,park=yk,tag=GT\ 1\,a\=b,enterprise=营口化工 value=12.5,quality=0i,note="say \"hi\"" 1764151200000000000"#,
        )
        .unwrap();
        assert_eq!(l.measurement, "reading");
        assert_eq!(l.tags[1], ("tag".into(), "GT 1,a=b".into()));
        assert_eq!(l.tags[2].1, "营口化工");
        assert_eq!(l.fields[0], ("value".into(), FieldValue::Float(12.5)));
        assert_eq!(l.fields[1], ("quality".into(), FieldValue::Int(0)));
        assert_eq!(
            l.fields[2],
            ("note".into(), FieldValue::Str("say \"hi\"".into()))
        );
        assert_eq!(l.timestamp, Some(1_764_151_200_000_000_000));
        assert!(parse_lp_line("reading,tag=x").is_err());
        assert!(parse_lp_line("reading value=abc 1").is_err());
    }

    #[test]
    fn line_protocol_file_to_records() {
        let text = "# comment\nreading,tag=A value=1,quality=0i 1000\nreading,tag=A value=2,quality=1i 2000\nalarm_event,tag=A state=\"x\" 3000\nbroken line\nreading,tag=B value=3 4000\n";
        let mut st = ReplayStats::default();
        let r = parse_line_protocol(text, &mut st);
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].quality, Quality::CommLost);
        assert_eq!(r[2].quality, Quality::Good);
        assert_eq!(st.other_measurements, 1);
        assert_eq!(st.error_count, 1);
        assert_eq!(st.errors[0].0, 5);
    }

    #[test]
    fn annotated_csv_merges_value_and_quality() {
        let text = "#group,false,false,true,true,false,false,true,true,true\n\
#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,double,string,string,string\n\
#default,_result,,,,,,,,\n\
,result,table,_start,_stop,_time,_value,_field,_measurement,tag\n\
,,0,2026-11-26T00:00:00Z,2026-11-27T00:00:00Z,2026-11-26T10:00:00Z,12.5,value,reading,GT-1\n\
,,0,2026-11-26T00:00:00Z,2026-11-27T00:00:00Z,2026-11-26T10:00:01.5Z,13,value,reading,GT-1\n\
\n\
#group,false,false,true,true,false,false,true,true,true\n\
#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,long,string,string,string\n\
#default,_result,,,,,,,,\n\
,result,table,_start,_stop,_time,_value,_field,_measurement,tag\n\
,,1,2026-11-26T00:00:00Z,2026-11-27T00:00:00Z,2026-11-26T10:00:00Z,0,quality,reading,GT-1\n\
,,1,2026-11-26T00:00:00Z,2026-11-27T00:00:00Z,2026-11-26T10:00:01.5Z,4,quality,reading,GT-1\n";
        let mut st = ReplayStats::default();
        let r = parse_annotated_csv(text, &mut st);
        assert_eq!(r.len(), 2, "{st:?}");
        assert_eq!(r[0].value, 12.5);
        assert_eq!(r[0].quality, Quality::Good);
        assert_eq!(r[1].quality, Quality::Fault);
        assert_eq!(r[1].time.nanos() - r[0].time.nanos(), 1_500_000_000);
        assert_eq!(
            r[0].time.nanos(),
            parse_rfc3339("2026-11-26T18:00:00+08:00").unwrap()
        );
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:00Z"),
            Some(951_868_800_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-26T10:00:00.123456789Z").map(|n| n % 1_000_000_000),
            Some(123_456_789)
        );
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}

//! Eclipse Sparkplug B (3.0): the subset of `sparkplug_b.proto` parkguard reads, written
//! out by hand with prost derives (no protoc build step), and the per-edge-node alias state.
//!
//! Topics: `spBv1.0/<group>/<NBIRTH|NDATA|NDEATH|DBIRTH|DDATA|DDEATH>/<edge node>[/<device>]`.
//! A BIRTH names every metric and may give it a numeric alias; DATA messages then carry only
//! the alias. Aliases are unique per edge node (across its devices). A DEATH makes every
//! metric of that node (or device) comm-lost. The tag of a reading is the metric name.
//!
//! Data whose alias is unknown (parkguard started after the node's birth, or a birth was
//! lost) is counted as `unknown_alias`, and the subscriber asks that node to rebirth with an
//! NCMD `Node Control/Rebirth` (at most every 30 s per node). Such data cannot be mapped
//! and is dropped until the rebirth arrives.

use super::decode::{DecodeError, Decoded, RawReading};
use parkguard_rules::{Quality, Timestamp};
use std::collections::HashMap;

/// `org.eclipse.tahu.protobuf.Payload` (fields parkguard uses; others are skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Milliseconds since the epoch.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    /// Metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// Sequence number 0..=255.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    /// UUID.
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    /// Opaque body.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric` (without metadata, properties, datasets, templates).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// Name (in BIRTH; optional in DATA when an alias is used).
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Alias.
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Milliseconds since the epoch.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// Data type code (see [`datatype`]).
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    /// Historical (store, but it is not the current value).
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    /// Transient (do not store).
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    /// Null value.
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    /// The value.
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

/// `Metric.value` oneof (the scalar cases).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    /// Int8/16/32 (two's complement in 32 bits), UInt8/16/32.
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    /// Int64 (two's complement), UInt64, DateTime.
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    /// Float.
    #[prost(float, tag = "12")]
    FloatValue(f32),
    /// Double.
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    /// Boolean.
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    /// String, Text, UUID.
    #[prost(string, tag = "15")]
    StringValue(String),
    /// Bytes, File.
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
}

/// Sparkplug data type codes used here.
pub mod datatype {
    /// Int8.
    pub const INT8: u32 = 1;
    /// Int16.
    pub const INT16: u32 = 2;
    /// Int32.
    pub const INT32: u32 = 3;
    /// Int64.
    pub const INT64: u32 = 4;
    /// UInt32.
    pub const UINT32: u32 = 7;
    /// UInt64.
    pub const UINT64: u32 = 8;
    /// Float.
    pub const FLOAT: u32 = 9;
    /// Double.
    pub const DOUBLE: u32 = 10;
    /// Boolean.
    pub const BOOLEAN: u32 = 11;
    /// String.
    pub const STRING: u32 = 12;
}

#[derive(Clone, Debug)]
struct KnownMetric {
    name: String,
    datatype: u32,
    /// Device id, or empty for node metrics.
    device: String,
}

#[derive(Debug, Default)]
struct Node {
    by_alias: HashMap<u64, KnownMetric>,
    by_name: HashMap<String, KnownMetric>,
}

/// Alias and birth state of every Sparkplug edge node seen (keyed by `group/edge node`).
#[derive(Debug, Default)]
pub struct SparkplugState {
    nodes: HashMap<String, Node>,
    /// Edge nodes (`group/edge node`) whose data could not be read for want of a birth
    /// certificate: the subscriber asks them to rebirth (NCMD `Node Control/Rebirth`).
    rebirth: std::collections::BTreeSet<String>,
}

/// The NCMD payload asking an edge node to publish its births again (Sparkplug 3.0 §6.4.5:
/// a host application that sees data it cannot interpret requests a rebirth).
pub fn rebirth_request(now_ms: u64) -> Vec<u8> {
    prost::Message::encode_to_vec(&Payload {
        timestamp: Some(now_ms),
        metrics: vec![Metric {
            name: Some("Node Control/Rebirth".into()),
            alias: None,
            timestamp: Some(now_ms),
            datatype: Some(datatype::BOOLEAN),
            is_historical: None,
            is_transient: None,
            is_null: None,
            value: Some(MetricValue::BooleanValue(true)),
        }],
        seq: None,
        uuid: None,
        body: None,
    })
}

enum Kind {
    NBirth,
    NData,
    NDeath,
    DBirth,
    DData,
    DDeath,
}

fn numeric(v: &MetricValue, datatype: u32) -> Option<f64> {
    Some(match v {
        // Signed types are two's complement of their own width: Tahu sign-extends to 32
        // bits, pysparkplug does not; the low bits agree, so read only those.
        MetricValue::IntValue(u) => match datatype {
            datatype::INT8 => f64::from(*u as u8 as i8),
            datatype::INT16 => f64::from(*u as u16 as i16),
            datatype::INT32 => f64::from(*u as i32),
            _ => f64::from(*u),
        },
        MetricValue::LongValue(u) => match datatype {
            datatype::INT64 => *u as i64 as f64,
            _ => *u as f64,
        },
        MetricValue::FloatValue(f) => f64::from(*f),
        MetricValue::DoubleValue(d) => *d,
        MetricValue::BooleanValue(b) => f64::from(u8::from(*b)),
        MetricValue::StringValue(s) => s.trim().parse().ok()?,
        MetricValue::BytesValue(_) => return None,
    })
    .filter(|x: &f64| x.is_finite())
}

/// Node control and properties (`Node Control/Rebirth`, `bdSeq`, ...) are not measurements.
fn is_control(name: &str) -> bool {
    name.starts_with("Node Control/") || name.starts_with("Properties/") || name == "bdSeq"
}

impl SparkplugState {
    /// Edge nodes to ask for a rebirth (`group/edge node`), emptied by the call. The NCMD
    /// topic is `spBv1.0/<group>/NCMD/<edge node>`.
    pub fn take_rebirth_requests(&mut self) -> Vec<String> {
        std::mem::take(&mut self.rebirth).into_iter().collect()
    }

    /// Decode one Sparkplug message. `prefix` is put before each metric name.
    pub fn decode(
        &mut self,
        prefix: &str,
        topic: &str,
        payload: &[u8],
        receive_time: Timestamp,
    ) -> Decoded {
        let mut out = Decoded::default();
        let parts: Vec<&str> = topic.split('/').collect();
        let (group, kind, edge, device) = match parts.as_slice() {
            ["spBv1.0", g, k, e] => (*g, *k, *e, ""),
            ["spBv1.0", g, k, e, d] => (*g, *k, *e, *d),
            _ => {
                out.errors.push(DecodeError::Sparkplug(format!(
                    "topic `{topic}` is not in the spBv1.0 namespace"
                )));
                return out;
            }
        };
        let kind = match kind {
            "NBIRTH" => Kind::NBirth,
            "NDATA" => Kind::NData,
            "NDEATH" => Kind::NDeath,
            "DBIRTH" => Kind::DBirth,
            "DDATA" => Kind::DData,
            "DDEATH" => Kind::DDeath,
            // Commands and STATE are not readings.
            _ => return out,
        };
        let p = match <Payload as prost::Message>::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                out.errors.push(DecodeError::Sparkplug(e.to_string()));
                return out;
            }
        };
        let key = format!("{group}/{edge}");
        let payload_time = p
            .timestamp
            .and_then(|t| i64::try_from(t).ok())
            .map(Timestamp::from_millis)
            .unwrap_or(receive_time);
        match kind {
            Kind::NDeath | Kind::DDeath => {
                // Every metric of the node (NDEATH) or device (DDEATH) is now comm-lost.
                if let Some(node) = self.nodes.get(&key) {
                    let mut names: Vec<&KnownMetric> = node
                        .by_name
                        .values()
                        .filter(|m| matches!(kind, Kind::NDeath) || m.device == device)
                        .filter(|m| !is_control(&m.name))
                        .collect();
                    names.sort_by(|a, b| a.name.cmp(&b.name));
                    for m in names {
                        out.readings.push(RawReading {
                            tag: format!("{prefix}{}", m.name),
                            value: f64::NAN,
                            unit: None,
                            quality: Quality::CommLost,
                            source_time: payload_time,
                        });
                    }
                }
                return out;
            }
            Kind::NBirth => {
                // A new birth of the node replaces everything known about it.
                self.nodes.insert(key.clone(), Node::default());
            }
            Kind::DBirth => {
                let node = self.nodes.entry(key.clone()).or_default();
                node.by_alias.retain(|_, m| m.device != device);
                node.by_name.retain(|_, m| m.device != device);
            }
            Kind::NData | Kind::DData => {}
        }
        let birth = matches!(kind, Kind::NBirth | Kind::DBirth);
        let node = self.nodes.entry(key.clone()).or_default();
        for m in &p.metrics {
            let known = if birth {
                let Some(name) = m.name.clone() else {
                    out.errors
                        .push(DecodeError::Sparkplug("birth metric without a name".into()));
                    continue;
                };
                let k = KnownMetric {
                    name,
                    datatype: m.datatype.unwrap_or(0),
                    device: device.to_string(),
                };
                if let Some(a) = m.alias {
                    node.by_alias.insert(a, k.clone());
                }
                node.by_name.insert(k.name.clone(), k.clone());
                k
            } else {
                match (&m.name, m.alias) {
                    (Some(n), _) => node.by_name.get(n).cloned().unwrap_or(KnownMetric {
                        name: n.clone(),
                        datatype: m.datatype.unwrap_or(0),
                        device: device.to_string(),
                    }),
                    (None, Some(a)) => match node.by_alias.get(&a) {
                        Some(k) => k.clone(),
                        None => {
                            out.errors.push(DecodeError::UnknownAlias(a));
                            self.rebirth.insert(key.clone());
                            continue;
                        }
                    },
                    (None, None) => {
                        out.errors.push(DecodeError::Sparkplug(
                            "metric with neither name nor alias".into(),
                        ));
                        continue;
                    }
                }
            };
            // Node control and properties (`Node Control/Rebirth`, `bdSeq`, ...) are not
            // measurements.
            if is_control(&known.name) {
                continue;
            }
            let source_time = m
                .timestamp
                .and_then(|t| i64::try_from(t).ok())
                .map(Timestamp::from_millis)
                .unwrap_or(payload_time);
            let tag = format!("{prefix}{}", known.name);
            if m.is_null == Some(true) {
                out.readings.push(RawReading {
                    tag,
                    value: f64::NAN,
                    unit: None,
                    quality: Quality::Fault,
                    source_time,
                });
                continue;
            }
            let Some(v) = &m.value else {
                out.errors.push(DecodeError::Missing("value"));
                continue;
            };
            let datatype = m.datatype.unwrap_or(known.datatype);
            match numeric(v, datatype) {
                Some(value) => out.readings.push(RawReading {
                    tag,
                    value,
                    unit: None,
                    quality: Quality::Good,
                    source_time,
                }),
                None => out.errors.push(DecodeError::WrongType {
                    field: "value",
                    found: format!("{v:?}").chars().take(40).collect(),
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    const RT: Timestamp = Timestamp(5);

    fn metric(name: Option<&str>, alias: Option<u64>, dt: Option<u32>, v: MetricValue) -> Metric {
        Metric {
            name: name.map(String::from),
            alias,
            timestamp: None,
            datatype: dt,
            is_historical: None,
            is_transient: None,
            is_null: None,
            value: Some(v),
        }
    }

    fn payload(ts: u64, metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(ts),
            metrics,
            seq: Some(0),
            uuid: None,
            body: None,
        }
        .encode_to_vec()
    }

    /// Bytes written by hand from the Tahu `.proto` field numbers and the protobuf wire
    /// format, independent of prost: NDATA, timestamp 1000, one metric alias 7 with
    /// datatype Int16 and int_value -5 (two's complement 0xFFFFFFFB), seq 1.
    #[test]
    fn decodes_hand_encoded_wire_bytes() {
        let mut st = SparkplugState::default();
        let birth = payload(
            999,
            vec![metric(
                Some("AT-101"),
                Some(7),
                Some(datatype::INT16),
                MetricValue::IntValue(0),
            )],
        );
        st.decode("", "spBv1.0/G/NBIRTH/E", &birth, RT);
        let wire: &[u8] = &[
            0x08, 0xe8, 0x07, // 1: timestamp = 1000
            0x12, 0x08, // 2: metric, 8 bytes
            0x10, 0x07, // 2: alias = 7
            0x50, 0xfb, 0xff, 0xff, 0xff, 0x0f, // 10: int_value = 0xFFFFFFFB
            0x18, 0x01, // 3: seq = 1
        ];
        let d = st.decode("", "spBv1.0/G/NDATA/E", wire, RT);
        assert_eq!(d.errors, vec![]);
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.readings[0].tag, "AT-101");
        assert_eq!(d.readings[0].value, -5.0);
        assert_eq!(d.readings[0].source_time, Timestamp::from_millis(1000));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Payloads encoded by an independent implementation, PyPI `pysparkplug` 0.6.1:
    /// ```python
    /// import pysparkplug as p
    /// ts = 1764144000000
    /// p.DBirth(timestamp=ts, seq=1, metrics=(
    ///     p.Metric(timestamp=ts, name="AT-101", datatype=p.DataType.FLOAT, value=0.25, alias=1),
    ///     p.Metric(timestamp=ts, name="TT-7", datatype=p.DataType.INT16, value=-40, alias=2),
    ///     p.Metric(timestamp=ts, name="LS-1", datatype=p.DataType.BOOLEAN, value=True, alias=3),
    ///     p.Metric(timestamp=ts, name="FQ-9", datatype=p.DataType.INT64, value=-5000000000,
    ///              alias=4))).encode().hex()
    /// p.DData(timestamp=ts+1000, seq=2, metrics=(
    ///     p.Metric(timestamp=ts+1000, name=None, datatype=p.DataType.FLOAT, value=1.5, alias=1),
    ///     p.Metric(timestamp=ts+900, name=None, datatype=p.DataType.INT16, value=-12, alias=2),
    ///     p.Metric(timestamp=ts+1000, name=None, datatype=p.DataType.INT64, value=7,
    ///              alias=4))).encode().hex()
    /// ```
    #[test]
    fn decodes_pysparkplug_vectors() {
        let dbirth = hex(
            "0880d8b4f9ab3312180a0641542d31303110011880d8b4f9ab332009650000803e12150a0454542d37\
             10021880d8b4f9ab33200250d8ff0312130a044c532d3110031880d8b4f9ab33200b7001121c0a04\
             46512d3910041880d8b4f9ab33200458809ce8afedffffffff011801",
        );
        let ddata = hex(
            "08e8dfb4f9ab33120e100118e8dfb4f9ab33650000c03f120d10021884dfb4f9ab3350f4ff03120b10\
             0418e8dfb4f9ab3358071802",
        );
        let mut st = SparkplugState::default();
        let d = st.decode("", "spBv1.0/park/DBIRTH/gw1/gds1", &dbirth, RT);
        assert_eq!(d.errors, vec![]);
        let t0 = Timestamp::from_millis(1_764_144_000_000);
        let view: Vec<_> = d
            .readings
            .iter()
            .map(|r| (r.tag.as_str(), r.value, r.source_time))
            .collect();
        assert_eq!(
            view,
            [
                ("AT-101", 0.25, t0),
                ("TT-7", -40.0, t0),
                ("LS-1", 1.0, t0),
                ("FQ-9", -5e9, t0),
            ]
        );
        let d = st.decode("", "spBv1.0/park/DDATA/gw1/gds1", &ddata, RT);
        assert_eq!(d.errors, vec![]);
        let view: Vec<_> = d
            .readings
            .iter()
            .map(|r| {
                (
                    r.tag.as_str(),
                    r.value,
                    r.source_time.millis() - 1_764_144_000_000,
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("AT-101", 1.5, 1000),
                ("TT-7", -12.0, 900),
                ("FQ-9", 7.0, 1000)
            ]
        );
    }

    #[test]
    fn birth_alias_data_death() {
        let mut st = SparkplugState::default();
        // DATA before any birth: alias unknown.
        let data = payload(
            2000,
            vec![metric(None, Some(1), None, MetricValue::FloatValue(3.5))],
        );
        let d = st.decode("", "spBv1.0/park/DDATA/gw1/gds1", &data, RT);
        assert_eq!(d.errors, vec![DecodeError::UnknownAlias(1)]);
        assert_eq!(st.take_rebirth_requests(), vec!["park/gw1".to_string()]);
        assert!(st.take_rebirth_requests().is_empty());

        let nbirth = payload(
            1000,
            vec![
                metric(
                    Some("bdSeq"),
                    None,
                    Some(datatype::UINT64),
                    MetricValue::LongValue(0),
                ),
                metric(
                    Some("PT-1"),
                    Some(2),
                    Some(datatype::DOUBLE),
                    MetricValue::DoubleValue(1.25),
                ),
            ],
        );
        let d = st.decode("E1.", "spBv1.0/park/NBIRTH/gw1", &nbirth, RT);
        let tags: Vec<_> = d
            .readings
            .iter()
            .map(|r| (r.tag.as_str(), r.value))
            .collect();
        assert_eq!(tags, [("E1.PT-1", 1.25)]);

        let dbirth = payload(
            1500,
            vec![
                metric(
                    Some("AT-101"),
                    Some(1),
                    Some(datatype::FLOAT),
                    MetricValue::FloatValue(0.0),
                ),
                metric(
                    Some("AT-102"),
                    Some(3),
                    Some(datatype::INT64),
                    MetricValue::LongValue(u64::MAX),
                ),
            ],
        );
        let d = st.decode("", "spBv1.0/park/DBIRTH/gw1/gds1", &dbirth, RT);
        assert_eq!(d.readings.len(), 2);
        assert_eq!(d.readings[1].value, -1.0);
        assert_eq!(d.readings[1].source_time, Timestamp::from_millis(1500));

        let d = st.decode("", "spBv1.0/park/DDATA/gw1/gds1", &data, RT);
        assert_eq!(d.errors, vec![]);
        assert_eq!(d.readings[0].tag, "AT-101");
        assert_eq!(d.readings[0].value, 3.5);
        assert_eq!(d.readings[0].source_time, Timestamp::from_millis(2000));

        // Device death: only the device's metrics go comm-lost.
        let d = st.decode(
            "",
            "spBv1.0/park/DDEATH/gw1/gds1",
            &payload(3000, vec![]),
            RT,
        );
        let lost: Vec<_> = d
            .readings
            .iter()
            .map(|r| (r.tag.as_str(), r.quality))
            .collect();
        assert_eq!(
            lost,
            [("AT-101", Quality::CommLost), ("AT-102", Quality::CommLost)]
        );
        // Node death: all of them.
        let d = st.decode("", "spBv1.0/park/NDEATH/gw1", &payload(3000, vec![]), RT);
        assert_eq!(d.readings.len(), 3);

        let d = st.decode("", "spBv1.0/park/NDATA/gw1", b"\xff\xff\xff", RT);
        assert_eq!(d.errors[0].reason(), "unparseable");
        let d = st.decode("", "other/topic", &data, RT);
        assert_eq!(d.errors[0].reason(), "unparseable");
    }
}

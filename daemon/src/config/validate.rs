//! Validation: plain config structs → runtime types, every error with its position.

use super::file::*;
use super::load::{ConfigError, Item, Source, span_of};
use crate::linkage::escalate::{EscalationConfig, Policy};
use crate::linkage::outbox::{OutboxConfig, WorkerConfig};
use crate::linkage::route::{Route, RouteConfig};
use crate::store::spool::{SpoolConfig, SpoolSettings};
use parkguard_drivers::influx::{InfluxConfig, InfluxSettings};
use parkguard_drivers::modbus::{
    self, ModbusDevice, ModbusDeviceConfig, ModbusMapping, ModbusPlan, PlanTarget,
};
use parkguard_drivers::mqtt::{MqttBroker, MqttBrokerConfig, MqttSubscriptionConfig, Subscription};
use parkguard_drivers::notify::ChannelConfig;
use parkguard_rules::defaults;
use parkguard_rules::engine::{EngineConfig, VoteGroup, VoteGroupConfig};
use parkguard_rules::model::{Flatline, RateOfChange};
use parkguard_rules::{AlarmLimits, Enterprise, Point, PointId, PointKind, PointTable, Unit};
use serde_spanned::Spanned;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use toml::de::DeValue;

/// Sections as deserialized, before validation.
#[derive(Default)]
pub(super) struct Raw<'i> {
    pub park: Option<(ParkSection, Spanned<DeValue<'i>>)>,
    pub data: Option<DataSection>,
    pub api: Option<ApiSection>,
    pub alarm: Option<(EngineConfig, Spanned<DeValue<'i>>)>,
    pub influx: Option<(InfluxConfig, Spanned<DeValue<'i>>)>,
    pub spool: Option<(SpoolConfig, Spanned<DeValue<'i>>)>,
    pub enterprises: Vec<Item<'i, EnterpriseEntry>>,
    pub modbus_devices: Vec<Item<'i, ModbusDeviceConfig>>,
    pub mqtt_brokers: Vec<Item<'i, MqttBrokerConfig>>,
    pub mqtt_subscriptions: Vec<Item<'i, MqttSubscriptionConfig>>,
    pub points: Vec<Item<'i, PointEntry>>,
    pub vote_groups: Vec<Item<'i, VoteGroupConfig>>,
    pub channels: Vec<Item<'i, ChannelConfig>>,
    pub routes: Vec<Item<'i, RouteConfig>>,
    pub escalations: Vec<Item<'i, EscalationConfig>>,
    pub outbox: Option<(OutboxConfig, Spanned<DeValue<'i>>)>,
}

/// A validated park configuration: what the daemon runs.
#[derive(Clone, Debug)]
pub struct ParkConfig {
    /// `[park]`.
    pub park: ParkSection,
    /// `[data]`.
    pub data: DataSection,
    /// `[api]`.
    pub api: ApiSection,
    /// Enterprises in file order.
    pub enterprises: Vec<Enterprise>,
    /// Every point, ids in file order.
    pub table: Arc<PointTable>,
    /// `[alarm]`: the engine's settings.
    pub engine: EngineConfig,
    /// `[influx]`, validated (secrets are read when the writer starts).
    pub influx: Option<InfluxSettings>,
    /// `[spool]`, validated (defaults when absent).
    pub spool: SpoolSettings,
    /// `[[modbus_device]]`, validated.
    pub modbus_devices: Vec<ModbusDevice>,
    /// The Modbus request plan (lines, merged reads, point slots), computed once.
    pub modbus_plan: ModbusPlan,
    /// `[[mqtt_broker]]`, validated.
    pub mqtt_brokers: Vec<MqttBroker>,
    /// `[[mqtt_subscription]]`, validated.
    pub mqtt_subscriptions: Vec<Subscription>,
    /// `[[vote_group]]`, validated against the points.
    pub vote_groups: Vec<VoteGroup>,
    /// `[[channel]]`, validated (secrets are read when the channel is built at start).
    pub channels: Vec<ChannelConfig>,
    /// `[[route]]`, validated against the channels.
    pub routes: Vec<Route>,
    /// `[[escalation]]`, validated.
    pub escalations: Vec<Policy>,
    /// `[outbox]`, validated (defaults when absent).
    pub outbox: WorkerConfig,
}

impl ParkConfig {
    /// One-line summary for `check-config`.
    pub fn summary(&self) -> String {
        let mut by_kind: Vec<(PointKind, usize)> = Vec::new();
        for p in self.table.points() {
            match by_kind.iter_mut().find(|(k, _)| *k == p.kind) {
                Some((_, n)) => *n += 1,
                None => by_kind.push((p.kind, 1)),
            }
        }
        let kinds: Vec<String> = by_kind
            .iter()
            .map(|(k, n)| format!("{n} {}", k.as_str()))
            .collect();
        format!(
            "park `{}` ({}): {} enterprises, {} points ({}), {} Modbus devices, {} MQTT brokers, {} MQTT subscriptions",
            self.park.id,
            self.park.name,
            self.enterprises.len(),
            self.table.len(),
            kinds.join(", "),
            self.modbus_devices.len(),
            self.mqtt_brokers.len(),
            self.mqtt_subscriptions.len(),
        )
    }
}

struct Ctx<'s, 'a> {
    src: &'s Source<'a>,
    errors: &'s mut Vec<ConfigError>,
}

impl Ctx<'_, '_> {
    fn at(&mut self, span: Range<usize>, msg: impl Into<String>) {
        self.errors.push(self.src.error(Some(span), msg));
    }
}

pub(super) fn validate(
    src: &Source<'_>,
    root_span: Range<usize>,
    raw: Raw<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<ParkConfig> {
    let mut cx = Ctx { src, errors };

    // [park]
    let park = match &raw.park {
        Some((p, node)) => {
            if p.id.is_empty()
                || !p
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                cx.at(
                    span_of(node, "id"),
                    format!(
                        "park id `{}` must be non-empty ASCII letters, digits, `-` or `_` (it is used in MQTT topics and InfluxDB tags)",
                        p.id
                    ),
                );
            }
            if p.timezone != "Asia/Shanghai" {
                cx.at(
                    span_of(node, "timezone"),
                    format!(
                        "unsupported timezone `{}`: parkguard displays times in Asia/Shanghai",
                        p.timezone
                    ),
                );
            }
            Some(p.clone())
        }
        None => {
            cx.at(
                root_span.start..root_span.start,
                "missing `[park]` section (id and name of the park)",
            );
            None
        }
    };

    // [[enterprise]]
    let mut ent_codes: HashMap<String, usize> = HashMap::new();
    let mut enterprises = Vec::new();
    for item in &raw.enterprises {
        let e = &item.value;
        if let Some(first) = ent_codes.get(&e.code) {
            let line = src.error(Some(*first..*first), "").line;
            cx.at(
                item.span_of("code"),
                format!(
                    "duplicate enterprise code `{}` (first defined on line {line})",
                    e.code
                ),
            );
            continue;
        }
        ent_codes.insert(e.code.clone(), item.span_of("code").start);
        enterprises.push(Enterprise {
            code: e.code.clone(),
            name: e.name.clone(),
            location: e.location,
            boundary: e.boundary.clone(),
        });
    }

    // [[modbus_device]]
    let mut device_ids: HashMap<String, usize> = HashMap::new();
    let mut devices: Vec<ModbusDevice> = Vec::new();
    for (i, item) in raw.modbus_devices.iter().enumerate() {
        let id = &item.value.id;
        if device_ids.insert(id.clone(), i).is_some() {
            cx.at(
                item.span_of("id"),
                format!("duplicate Modbus device id `{id}`"),
            );
            continue;
        }
        match item.value.validate() {
            Ok(d) => devices.push(d),
            Err(es) => {
                for fe in es {
                    cx.at(item.span_of(&fe.field), fe.message);
                }
            }
        }
    }
    let poll_interval: HashMap<&str, Duration> = devices
        .iter()
        .map(|d| (d.id.as_str(), d.poll_interval))
        .collect();

    // [[point]]
    let mut tags: HashMap<String, usize> = HashMap::new();
    let mut points = Vec::with_capacity(raw.points.len());
    // Index into raw.points of each accepted point, and its Modbus mapping.
    let mut point_items: Vec<usize> = Vec::with_capacity(raw.points.len());
    let mut mappings: Vec<(PointId, ModbusMapping)> = Vec::new();
    for (item_index, item) in raw.points.iter().enumerate() {
        let p = &item.value;
        let before = cx.errors.len();
        if p.tag.trim().is_empty() {
            cx.at(item.span_of("tag"), "tag must not be empty");
        }
        if let Some(first) = tags.get(&p.tag) {
            let line = src.error(Some(*first..*first), "").line;
            cx.at(
                item.span_of("tag"),
                format!("duplicate tag `{}` (first defined on line {line})", p.tag),
            );
        } else {
            tags.insert(p.tag.clone(), item.span_of("tag").start);
        }
        if !ent_codes.contains_key(&p.enterprise) {
            cx.at(
                item.span_of("enterprise"),
                format!(
                    "point `{}` names enterprise `{}`, which no `[[enterprise]]` defines",
                    p.tag, p.enterprise
                ),
            );
        }
        let [lo, hi] = p.range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            cx.at(
                item.span_of("range"),
                format!("range [{lo}, {hi}] must be finite with low < high"),
            );
        }
        let open_path = p.kind == PointKind::Combustible && p.unit == Unit::LelMetre;
        if p.kind.is_gas() && p.gas.is_none() && !open_path {
            cx.at(
                item.span_of("kind"),
                format!(
                    "a {} point needs `gas` (e.g. gas = \"h2s\")",
                    p.kind.as_str()
                ),
            );
        }
        let mut device = None;
        let mut mapping = None;
        if let Some(m) = &p.modbus {
            if device_ids.contains_key(&m.device) {
                device = Some(m.device.clone());
            } else {
                cx.at(
                    item.span_of("modbus.device"),
                    format!(
                        "point `{}` reads from Modbus device `{}`, which no `[[modbus_device]]` defines",
                        p.tag, m.device
                    ),
                );
            }
            match m.validate() {
                Ok(v) => mapping = Some(v),
                Err(es) => {
                    for fe in es {
                        cx.at(item.span_of(&format!("modbus.{}", fe.field)), fe.message);
                    }
                }
            }
        }
        let limits = validate_limits(&mut cx, item, p);
        if cx.errors.len() > before {
            continue;
        }
        let Some(limits) = limits else { continue };
        let id = PointId(points.len() as u32);
        point_items.push(item_index);
        if let Some(m) = mapping {
            mappings.push((id, m));
        }
        let default_interval = device
            .as_deref()
            .and_then(|d| poll_interval.get(d).copied())
            .unwrap_or(Duration::from_secs(10));
        points.push(Point {
            id,
            tag: p.tag.clone(),
            name: p.name.clone(),
            enterprise: p.enterprise.clone(),
            device,
            hazard_installation: p.hazard_installation.clone(),
            area: p.area.clone(),
            kind: p.kind,
            gas: p.gas,
            unit: p.unit,
            range_lo: lo,
            range_hi: hi,
            limits,
            expected_interval: p.interval.map(|d| d.0).unwrap_or(default_interval),
            location: p.location,
        });
    }

    let table = match PointTable::new(points) {
        Ok(t) => t,
        Err(e) => {
            cx.at(root_span.start..root_span.start, e);
            return None;
        }
    };

    // Modbus request plan: cross checks between devices and point mappings.
    let modbus_plan = match modbus::plan(
        &devices,
        mappings
            .iter()
            .filter_map(|(id, m)| table.get(*id).map(|p| (*id, m, p))),
    ) {
        Ok(plan) => Some(plan),
        Err(errs) => {
            for e in errs {
                match e.target {
                    PlanTarget::Device(id) => {
                        if let Some(&i) = device_ids.get(&id) {
                            let item = &raw.modbus_devices[i];
                            cx.at(item.span_of(&e.error.field), e.error.message);
                        }
                    }
                    PlanTarget::Point(pid) => {
                        if let Some(&i) = point_items.get(pid.index()) {
                            let item = &raw.points[i];
                            let field = if e.error.field.is_empty() {
                                "modbus".to_string()
                            } else {
                                format!("modbus.{}", e.error.field)
                            };
                            cx.at(item.span_of(&field), e.error.message);
                        }
                    }
                }
            }
            None
        }
    };

    // [influx], [spool]
    let influx = match &raw.influx {
        Some((c, node)) => match c.validate() {
            Ok(v) => Some(v),
            Err(es) => {
                for fe in es {
                    cx.at(span_of(node, &fe.field), fe.message);
                }
                None
            }
        },
        None => None,
    };
    let spool = match &raw.spool {
        Some((c, node)) => match c.validate() {
            Ok(v) => Some(v),
            Err(es) => {
                for fe in es {
                    cx.at(span_of(node, &fe.field), fe.message);
                }
                None
            }
        },
        None => SpoolConfig::default().validate().ok(),
    };

    // [[mqtt_broker]], [[mqtt_subscription]]
    let mut brokers = Vec::new();
    let mut broker_ids: Vec<String> = Vec::new();
    for item in &raw.mqtt_brokers {
        if broker_ids.contains(&item.value.id) {
            cx.at(
                item.span_of("id"),
                format!("duplicate MQTT broker id `{}`", item.value.id),
            );
            continue;
        }
        broker_ids.push(item.value.id.clone());
        match item.value.validate() {
            Ok(b) => brokers.push(b),
            Err(es) => {
                for fe in es {
                    cx.at(item.span_of(&fe.field), fe.message);
                }
            }
        }
    }
    let ids: Vec<&str> = broker_ids.iter().map(String::as_str).collect();
    let mut subscriptions = Vec::new();
    for item in &raw.mqtt_subscriptions {
        match item.value.validate(&ids) {
            Ok(s) => subscriptions.push(s),
            Err(es) => {
                for fe in es {
                    cx.at(item.span_of(&fe.field), fe.message);
                }
            }
        }
    }

    // [alarm]
    let engine = match &raw.alarm {
        Some((cfg, node)) => {
            for fe in cfg.validate() {
                cx.at(span_of(node, &fe.field), fe.message);
            }
            cfg.clone()
        }
        None => EngineConfig::default(),
    };

    // [[vote_group]]
    let mut vote_groups = Vec::new();
    let mut group_ids: HashMap<String, ()> = HashMap::new();
    for item in &raw.vote_groups {
        if group_ids.insert(item.value.id.clone(), ()).is_some() {
            cx.at(
                item.span_of("id"),
                format!("duplicate vote group id `{}`", item.value.id),
            );
        }
        match item.value.validate(&table) {
            Ok(g) => vote_groups.push(g),
            Err(es) => {
                for fe in es {
                    cx.at(item.span_of(&fe.field), fe.message);
                }
            }
        }
    }
    // [[channel]], [[escalation]], [[route]], [outbox]
    let mut channel_flags: std::collections::BTreeMap<String, bool> = Default::default();
    let mut channels = Vec::new();
    for item in &raw.channels {
        let c = &item.value;
        if channel_flags
            .insert(c.name().to_string(), c.drill())
            .is_some()
        {
            cx.at(
                item.span_of("name"),
                format!("duplicate channel name `{}`", c.name()),
            );
            continue;
        }
        let mut errs = c.validate();
        if let parkguard_drivers::notify::ChannelConfig::Mqtt(m) = c
            && !m.broker.trim().is_empty()
            && !broker_ids.contains(&m.broker)
        {
            errs.push(parkguard_rules::FieldError::new(
                "broker",
                format!(
                    "unknown broker `{}`: define it in an [[mqtt_broker]] table",
                    m.broker
                ),
            ));
        }
        for fe in &errs {
            cx.at(item.span_of(&fe.field), fe.message.clone());
        }
        if errs.is_empty() {
            channels.push(c.clone());
        }
    }
    let mut escalations = Vec::new();
    for item in &raw.escalations {
        match item.value.validate(&channel_flags) {
            Ok(p) => escalations.push(p),
            Err(es) => {
                for fe in es {
                    cx.at(item.span_of(&fe.field), fe.message);
                }
            }
        }
    }
    let escalation_names: Vec<String> = raw
        .escalations
        .iter()
        .map(|e| e.value.name.clone())
        .collect();
    let mut routes = Vec::new();
    for (i, item) in raw.routes.iter().enumerate() {
        match item.value.validate(i, &channel_flags, &escalation_names) {
            Ok(r) => routes.push(r),
            Err(es) => {
                for fe in es {
                    cx.at(item.span_of(&fe.field), fe.message);
                }
            }
        }
    }
    let outbox = match &raw.outbox {
        Some((c, node)) => match c.validate() {
            Ok(w) => Some(w),
            Err(es) => {
                for fe in es {
                    cx.at(span_of(node, &fe.field), fe.message);
                }
                None
            }
        },
        None => OutboxConfig::default().validate().ok(),
    };

    let park = park?;
    let modbus_plan = modbus_plan?;
    let outbox = outbox?;
    let spool = spool?;
    Some(ParkConfig {
        park,
        data: raw.data.unwrap_or_default(),
        api: raw.api.unwrap_or_default(),
        enterprises,
        table: Arc::new(table),
        engine,
        spool,
        influx,
        modbus_devices: devices,
        modbus_plan,
        mqtt_brokers: brokers,
        mqtt_subscriptions: subscriptions,
        vote_groups,
        channels,
        routes,
        escalations,
        outbox,
    })
}

/// Limits of one point: aliases resolved, units converted, GB/T 50493 defaults filled,
/// order and range checked.
fn validate_limits(
    cx: &mut Ctx<'_, '_>,
    item: &Item<'_, PointEntry>,
    p: &PointEntry,
) -> Option<AlarmLimits> {
    let l = &p.limits;
    let before = cx.errors.len();
    let [lo, hi] = p.range;
    let span = |k: &str| item.span_of(&format!("limits.{k}"));

    // Aliases.
    let pick = |cx: &mut Ctx<'_, '_>,
                a: (&'static str, Option<f64>),
                b: (&'static str, Option<f64>)|
     -> Option<(&'static str, f64)> {
        match (a.1, b.1) {
            (Some(_), Some(_)) => {
                cx.at(
                    span(b.0),
                    format!("give either `{}` or `{}`, not both", a.0, b.0),
                );
                None
            }
            (Some(v), None) => Some((a.0, v)),
            (None, Some(v)) => Some((b.0, v)),
            (None, None) => None,
        }
    };
    let h = pick(cx, ("level1", l.level1), ("h", l.h));
    let hh = pick(cx, ("level2", l.level2), ("hh", l.hh));
    let low = l.l.map(|v| ("l", v));
    let lowlow = l.ll.map(|v| ("ll", v));

    // Unit conversion of written limits into the point's unit.
    let from = l.unit.unwrap_or(p.unit);
    let mut conv_failed = false;
    let mut convert =
        |cx: &mut Ctx<'_, '_>, x: Option<(&'static str, f64)>| -> Option<(&'static str, f64)> {
            let (k, v) = x?;
            match from.convert(v, p.unit, p.gas) {
                Ok(c) => Some((k, c)),
                Err(e) => {
                    if !conv_failed {
                        cx.at(
                            span("unit"),
                            format!(
                                "limits in {from} cannot be converted to the point's unit {}: {e}",
                                p.unit
                            ),
                        );
                        conv_failed = true;
                    }
                    None
                }
            }
        };
    let (h, hh, low, lowlow) = (
        convert(cx, h),
        convert(cx, hh),
        convert(cx, low),
        convert(cx, lowlow),
    );
    if conv_failed {
        return None;
    }

    // GB/T 50493 defaults for gas points where the engineer wrote nothing.
    let (mut h, mut hh, mut low) = (h, hh, low);
    if p.kind.is_gas() {
        match defaults::gas_setpoints(p.kind, p.gas, p.unit, hi) {
            Ok(s) => {
                if h.is_none() {
                    h = Some(("level1", s.level1));
                }
                if hh.is_none() {
                    hh = s.level2.map(|v| ("level2", v));
                }
                if low.is_none() {
                    low = s.low.map(|v| ("l", v));
                }
            }
            Err(e) if h.is_none() && hh.is_none() && low.is_none() => {
                cx.at(
                    item.span_of("unit"),
                    format!("no default setpoints: {e}; write `limits`"),
                );
            }
            Err(_) => {}
        }
    }

    // Inside the range.
    for (k, v) in [h, hh, low, lowlow].into_iter().flatten() {
        if !(lo..=hi).contains(&v) {
            cx.at(
                span(k),
                format!(
                    "limit `{k}` = {} {} lies outside the measuring range [{lo}, {hi}] {}",
                    fmt_num(v),
                    p.unit,
                    p.unit
                ),
            );
        }
    }
    // Order: ll < l < h < hh.
    let order = [lowlow, low, h, hh];
    let present: Vec<(&str, f64)> = order.into_iter().flatten().collect();
    for w in present.windows(2) {
        let ((ka, a), (kb, b)) = (w[0], w[1]);
        if a >= b {
            cx.at(
                span(kb),
                format!(
                    "limit `{ka}` ({}) must be below `{kb}` ({})",
                    fmt_num(a),
                    fmt_num(b)
                ),
            );
        }
    }

    // Deadband.
    let span_len = hi - lo;
    let deadband = match (l.deadband, l.deadband_percent) {
        (Some(_), Some(_)) => {
            cx.at(
                span("deadband_percent"),
                "give either `deadband` or `deadband_percent`, not both",
            );
            0.0
        }
        (Some(d), None) => match from.convert(d, p.unit, p.gas) {
            Ok(d) if d >= 0.0 && d < span_len / 2.0 => d,
            _ => {
                cx.at(
                    span("deadband"),
                    format!("deadband {d} must be ≥ 0 and below half the span"),
                );
                0.0
            }
        },
        (None, Some(pct)) if (0.0..50.0).contains(&pct) => pct / 100.0 * span_len,
        (None, Some(pct)) => {
            cx.at(
                span("deadband_percent"),
                format!("deadband_percent {pct} must be in [0, 50)"),
            );
            0.0
        }
        (None, None) => defaults::deadband_fraction(p.kind) * span_len,
    };
    let on_delay = l
        .on_delay
        .map(|d| d.0)
        .unwrap_or(defaults::on_delay(p.kind));
    if p.kind.is_gas() && on_delay > Duration::from_secs(30) {
        cx.at(
            span("on_delay"),
            format!(
                "on_delay {}s on a gas point is too long: gas detectors must alarm within 30 s (GB/T 50493); use 0–5 s",
                on_delay.as_secs_f64()
            ),
        );
    }
    let off_delay = l
        .off_delay
        .map(|d| d.0)
        .unwrap_or(defaults::off_delay(p.kind));
    let rate_of_change = l.rate_of_change.as_ref().and_then(|r| {
        // Rates convert like values: every conversion we have is a pure factor.
        match from.convert(r.rise_per_min, p.unit, p.gas) {
            Ok(rise) if rise.is_finite() && rise > 0.0 && !r.window.0.is_zero() => {
                Some(RateOfChange {
                    rise_per_min: rise,
                    window: r.window.0,
                })
            }
            _ => {
                cx.at(
                    span("rate_of_change"),
                    "rate_of_change needs rise_per_min > 0 and a window > 0",
                );
                None
            }
        }
    });
    let flatline = l.flatline.as_ref().and_then(|f| {
        if f.after.0.is_zero() || !(f.tolerance.is_finite() && f.tolerance >= 0.0) {
            cx.at(
                span("flatline"),
                "flatline needs after > 0 and tolerance ≥ 0",
            );
            None
        } else {
            Some(Flatline {
                after: f.after.0,
                tolerance: f.tolerance,
            })
        }
    });

    if cx.errors.len() > before {
        return None;
    }
    Some(AlarmLimits {
        hh: hh.map(|x| x.1),
        h: h.map(|x| x.1),
        l: low.map(|x| x.1),
        ll: lowlow.map(|x| x.1),
        deadband,
        on_delay,
        off_delay,
        rate_of_change,
        flatline,
    })
}

fn fmt_num(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

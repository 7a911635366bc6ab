//! An in-process **test double** of the engine behind [`ApiBackend`], for router and
//! browser tests. It keeps points, alarms, limits and warnings in memory, lets a test push
//! values and raise alarms, and publishes the same events the engine will.
//!
//! It is not the engine: it has no alarm rules, delays or deadbands — a test raises alarms
//! explicitly. The real backend is the engine task's handles, wired by `run`.

use super::backend::*;
use super::{EventHub, ParkInfo};
use parkguard_rules::AlarmLimits;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Default)]
struct State {
    points: Vec<PointView>,
    history: HashMap<String, Vec<Sample>>,
    alarms: Vec<AlarmView>,
    limits: HashMap<String, Vec<LimitsVersion>>,
    warnings: Vec<EnterpriseGrade>,
    park_grade: Option<Grade>,
    warning_history: Vec<WarningChange>,
    unmapped: Vec<UnmappedEntry>,
    next_alarm: u64,
}

/// The test double.
pub struct TestBackend {
    state: Mutex<State>,
    hub: Arc<EventHub>,
    /// The park's points (for backtest previews over the stored history).
    table: Arc<parkguard_rules::PointTable>,
    /// Longest shelving allowed. Default 8 h.
    pub max_shelve: Duration,
    /// Readiness answered by `/readyz`.
    pub ready: Mutex<Vec<ReadyCheck>>,
}

impl TestBackend {
    /// A backend over the park's points (all normal, no value yet).
    pub fn new(park: &ParkInfo, hub: Arc<EventHub>) -> Arc<Self> {
        let mut st = State {
            next_alarm: 1,
            ..State::default()
        };
        for p in park.table.points() {
            st.points.push(PointView {
                tag: p.tag.clone(),
                name: p.name.clone(),
                enterprise: p.enterprise.clone(),
                kind: p.kind,
                unit: p.unit.symbol().to_string(),
                value: None,
                quality: "stale".into(),
                source_time_ms: None,
                receive_time_ms: None,
                state: PointState::Normal,
                range: [p.range_lo, p.range_hi],
                limits: LimitsDto::from(&p.limits),
                location: p.location,
            });
            st.limits.insert(
                p.tag.clone(),
                vec![LimitsVersion {
                    tag: p.tag.clone(),
                    version: 1,
                    limits: LimitsDto::from(&p.limits),
                    changed_by: "config".into(),
                    changed_ms: 0,
                    reason: "as configured".into(),
                }],
            );
        }
        Arc::new(Self {
            state: Mutex::new(st),
            hub,
            table: Arc::clone(&park.table),
            max_shelve: Duration::from_secs(8 * 3600),
            ready: Mutex::new(vec![ReadyCheck {
                name: "engine".into(),
                ok: true,
                detail: "test backend".into(),
            }]),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A new good value of `tag` at `t_ms` (published as a throttled point update).
    pub fn set_value(&self, tag: &str, value: f64, t_ms: i64) {
        let view = {
            let mut st = self.lock();
            st.history.entry(tag.to_string()).or_default().push(Sample {
                t: t_ms,
                v: value,
                good: true,
            });
            let Some(p) = st.points.iter_mut().find(|p| p.tag == tag) else {
                return;
            };
            p.value = Some(value);
            p.quality = "good".into();
            p.source_time_ms = Some(t_ms);
            p.receive_time_ms = Some(t_ms);
            p.clone()
        };
        self.hub.publish_point(tag, &view, Instant::now());
    }

    /// Raise an alarm on `tag` (as the engine would after its rules); returns its id.
    pub fn raise_alarm(
        &self,
        tag: &str,
        condition: &str,
        priority: Priority,
        value: f64,
        limit: Option<f64>,
        drill: Option<&str>,
    ) -> u64 {
        let (alarm, point) = {
            let mut st = self.lock();
            let id = st.next_alarm;
            st.next_alarm += 1;
            let first = !st
                .alarms
                .iter()
                .any(|a| a.state != AlarmState::Normal && a.drill.is_none());
            let (enterprise, unit) = st
                .points
                .iter()
                .find(|p| p.tag == tag)
                .map(|p| (p.enterprise.clone(), p.unit.clone()))
                .unwrap_or_default();
            let a = AlarmView {
                id,
                point: tag.to_string(),
                enterprise,
                condition: condition.to_string(),
                priority,
                state: AlarmState::Unack,
                value,
                limit,
                unit,
                raised_ms: now_ms(),
                first: first && drill.is_none(),
                acked_by: None,
                acked_ms: None,
                comment: None,
                shelved_until_ms: None,
                cleared_ms: None,
                drill: drill.map(str::to_string),
            };
            st.alarms.push(a.clone());
            let p = st.points.iter_mut().find(|p| p.tag == tag).map(|p| {
                if drill.is_none() {
                    p.state = PointState::AlarmUnack;
                }
                p.clone()
            });
            (a, p)
        };
        self.hub.publish("alarm", &alarm);
        if let Some(p) = point
            && drill.is_none()
        {
            self.hub.publish_point_state(&p.tag, &p, Instant::now());
        }
        alarm.id
    }

    /// Set a warning grade (`park` or an enterprise code) and publish the change.
    pub fn set_warning(&self, scope: &str, grade: Grade, reason: &str) {
        let view = {
            let mut st = self.lock();
            let from;
            if scope == "park" {
                from = st.park_grade.unwrap_or(Grade::None);
                st.park_grade = Some(grade);
            } else {
                match st.warnings.iter_mut().find(|w| w.code == scope) {
                    Some(w) => {
                        from = w.grade;
                        w.grade = grade;
                        w.since_ms = Some(now_ms());
                        w.reason = Some(reason.to_string());
                    }
                    None => {
                        from = Grade::None;
                        st.warnings.push(EnterpriseGrade {
                            code: scope.to_string(),
                            grade,
                            since_ms: Some(now_ms()),
                            reason: Some(reason.to_string()),
                        });
                    }
                }
            }
            st.warning_history.push(WarningChange {
                scope: scope.to_string(),
                from,
                to: grade,
                at_ms: now_ms(),
                reason: reason.to_string(),
            });
            Self::warnings_view(&st)
        };
        self.hub.publish("warning", &view);
    }

    /// Every alarm so far (any state), oldest first.
    pub fn alarms_snapshot(&self) -> Vec<AlarmView> {
        self.lock().alarms.clone()
    }

    /// Record an unmapped message.
    pub fn add_unmapped(&self, e: UnmappedEntry) {
        self.lock().unmapped.push(e);
    }

    fn warnings_view(st: &State) -> WarningsView {
        WarningsView {
            park: st.park_grade.unwrap_or(Grade::None),
            enterprises: st.warnings.clone(),
        }
    }

    fn point_state_for(st: &State, tag: &str) -> PointState {
        let mut state = PointState::Normal;
        for a in st
            .alarms
            .iter()
            .filter(|a| a.point == tag && a.drill.is_none())
        {
            let s = match a.state {
                AlarmState::Unack => PointState::AlarmUnack,
                AlarmState::Ack => PointState::AlarmAck,
                AlarmState::RtnUnack => PointState::RtnUnack,
                AlarmState::Shelved => PointState::Shelved,
                AlarmState::OutOfService => PointState::OutOfService,
                AlarmState::Normal => continue,
            };
            // Most urgent wins.
            if s.rank() > state.rank() {
                state = s;
            }
        }
        state
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFut<'static, T> {
    Box::pin(std::future::ready(v))
}

impl ApiBackend for TestBackend {
    fn points(&self) -> BoxFut<'_, Result<Vec<PointView>, BackendError>> {
        ready(Ok(self.lock().points.clone()))
    }

    fn point(&self, tag: String) -> BoxFut<'_, Result<PointView, BackendError>> {
        let r = self
            .lock()
            .points
            .iter()
            .find(|p| p.tag == tag)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(format!("no point `{tag}`")));
        ready(r)
    }

    fn point_history(
        &self,
        tag: String,
        from_ms: i64,
        to_ms: i64,
    ) -> BoxFut<'_, Result<Vec<Sample>, BackendError>> {
        let v = self
            .lock()
            .history
            .get(&tag)
            .map(|h| {
                h.iter()
                    .filter(|s| s.t >= from_ms && s.t <= to_ms)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        ready(Ok(v))
    }

    fn alarms_active(&self) -> BoxFut<'_, Result<Vec<AlarmView>, BackendError>> {
        let v = self
            .lock()
            .alarms
            .iter()
            .filter(|a| a.state != AlarmState::Normal)
            .cloned()
            .collect();
        ready(Ok(v))
    }

    fn alarm_history(&self, f: AlarmFilter) -> BoxFut<'_, Result<Vec<AlarmView>, BackendError>> {
        let v: Vec<AlarmView> = self
            .lock()
            .alarms
            .iter()
            .rev()
            .filter(|a| f.enterprise.as_ref().is_none_or(|e| &a.enterprise == e))
            .filter(|a| f.point.as_ref().is_none_or(|p| &a.point == p))
            .filter(|a| f.priority.is_none_or(|p| a.priority == p))
            .filter(|a| f.state.is_none_or(|s| a.state == s))
            .filter(|a| f.from_ms.is_none_or(|t| a.raised_ms >= t))
            .filter(|a| f.to_ms.is_none_or(|t| a.raised_ms < t))
            .take(f.limit.unwrap_or(200) as usize)
            .cloned()
            .collect();
        ready(Ok(v))
    }

    fn alarm_command(
        &self,
        id: u64,
        cmd: AlarmCommand,
        by: Actor,
    ) -> BoxFut<'_, Result<(AlarmView, AlarmView), BackendError>> {
        let r = (|| {
            let mut st = self.lock();
            let a = st
                .alarms
                .iter_mut()
                .find(|a| a.id == id)
                .ok_or_else(|| BackendError::NotFound(format!("no alarm {id}")))?;
            let before = a.clone();
            let now = now_ms();
            match &cmd {
                AlarmCommand::Ack { comment } => {
                    a.state = match a.state {
                        AlarmState::Unack => AlarmState::Ack,
                        AlarmState::RtnUnack => AlarmState::Normal,
                        s => {
                            return Err(BackendError::Conflict(format!(
                                "alarm {id} is {s:?}, not unacknowledged"
                            )));
                        }
                    };
                    a.acked_by = Some(by.username.clone());
                    a.acked_ms = Some(now);
                    a.comment = Some(comment.clone()).filter(|c| !c.is_empty());
                }
                AlarmCommand::Shelve { duration, reason } => {
                    if matches!(a.state, AlarmState::Normal | AlarmState::Shelved) {
                        return Err(BackendError::Conflict(format!(
                            "alarm {id} cannot be shelved in state {:?}",
                            a.state
                        )));
                    }
                    a.state = AlarmState::Shelved;
                    a.shelved_until_ms = Some(now + duration.as_millis() as i64);
                    a.comment = Some(reason.clone());
                }
                AlarmCommand::Unshelve { reason } => {
                    if a.state != AlarmState::Shelved {
                        return Err(BackendError::Conflict(format!("alarm {id} is not shelved")));
                    }
                    a.state = if a.acked_ms.is_some() {
                        AlarmState::Ack
                    } else {
                        AlarmState::Unack
                    };
                    a.shelved_until_ms = None;
                    a.comment = Some(reason.clone());
                }
                AlarmCommand::Close { cause, action, .. } => {
                    if a.state == AlarmState::Normal {
                        return Err(BackendError::Conflict(format!("alarm {id} is closed")));
                    }
                    a.state = AlarmState::Normal;
                    a.cleared_ms = Some(now);
                    a.comment = Some(format!("{cause} / {action}"));
                }
            }
            let after = a.clone();
            let tag = after.point.clone();
            let ps = Self::point_state_for(&st, &tag);
            let point = st.points.iter_mut().find(|p| p.tag == tag).map(|p| {
                p.state = ps;
                p.clone()
            });
            Ok(((before, after), point))
        })();
        let r = r.map(|(pair, point)| {
            self.hub.publish("alarm", &pair.1);
            if let Some(p) = point {
                self.hub.publish_point_state(&p.tag, &p, Instant::now());
            }
            pair
        });
        ready(r)
    }

    fn point_command(
        &self,
        tag: String,
        cmd: PointCommand,
        _by: Actor,
    ) -> BoxFut<'_, Result<(PointView, PointView), BackendError>> {
        let r = (|| {
            let mut st = self.lock();
            let p = st
                .points
                .iter_mut()
                .find(|p| p.tag == tag)
                .ok_or_else(|| BackendError::NotFound(format!("no point `{tag}`")))?;
            let before = p.clone();
            match cmd {
                PointCommand::OutOfService { .. } => {
                    if p.state == PointState::OutOfService {
                        return Err(BackendError::Conflict(format!(
                            "`{tag}` is already out of service"
                        )));
                    }
                    p.state = PointState::OutOfService;
                }
                PointCommand::ReturnToService { .. } => {
                    if p.state != PointState::OutOfService {
                        return Err(BackendError::Conflict(format!("`{tag}` is in service")));
                    }
                    p.state = PointState::Normal;
                }
            }
            Ok((before, p.clone()))
        })();
        if let Ok((_, after)) = &r {
            self.hub
                .publish_point_state(&after.tag, after, Instant::now());
        }
        ready(r)
    }

    fn max_shelve(&self) -> Duration {
        self.max_shelve
    }

    fn warnings(&self) -> BoxFut<'_, Result<WarningsView, BackendError>> {
        ready(Ok(Self::warnings_view(&self.lock())))
    }

    fn warning_history(&self, limit: u32) -> BoxFut<'_, Result<Vec<WarningChange>, BackendError>> {
        let v = self
            .lock()
            .warning_history
            .iter()
            .rev()
            .take(limit as usize)
            .cloned()
            .collect();
        ready(Ok(v))
    }

    fn unmapped(&self) -> BoxFut<'_, Result<Vec<UnmappedEntry>, BackendError>> {
        ready(Ok(self.lock().unmapped.clone()))
    }

    fn limit_versions(&self, tag: String) -> BoxFut<'_, Result<Vec<LimitsVersion>, BackendError>> {
        let r = self
            .lock()
            .limits
            .get(&tag)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(format!("no point `{tag}`")));
        ready(r)
    }

    fn set_limits(
        &self,
        tag: String,
        limits: AlarmLimits,
        expected_version: Option<u32>,
        reason: String,
        by: Actor,
    ) -> BoxFut<'_, Result<(LimitsVersion, LimitsVersion), BackendError>> {
        let r = (|| {
            let mut st = self.lock();
            let versions = st
                .limits
                .get_mut(&tag)
                .ok_or_else(|| BackendError::NotFound(format!("no point `{tag}`")))?;
            let before = versions
                .last()
                .cloned()
                .ok_or_else(|| BackendError::NotFound(format!("no limits for `{tag}`")))?;
            if let Some(v) = expected_version
                && v != before.version
            {
                return Err(BackendError::Conflict(format!(
                    "`{tag}` limits changed meanwhile (now version {}, you edited {v}); reload",
                    before.version
                )));
            }
            let after = LimitsVersion {
                tag: tag.clone(),
                version: before.version + 1,
                limits: LimitsDto::from(&limits),
                changed_by: by.username,
                changed_ms: now_ms(),
                reason,
            };
            versions.push(after.clone());
            if let Some(p) = st.points.iter_mut().find(|p| p.tag == tag) {
                p.limits = after.limits.clone();
            }
            Ok((before, after))
        })();
        if let Ok((_, after)) = &r {
            self.hub.publish("limits", after);
        }
        ready(r)
    }

    fn set_limits_many(
        &self,
        changes: Vec<(String, AlarmLimits)>,
        reason: String,
        by: Actor,
    ) -> BoxFut<'_, Result<Vec<(LimitsVersion, LimitsVersion)>, BackendError>> {
        Box::pin(async move {
            if let Some((t, _)) = changes
                .iter()
                .find(|(t, _)| !self.lock().limits.contains_key(t))
            {
                return Err(BackendError::NotFound(format!("no point `{t}`")));
            }
            let mut out = Vec::with_capacity(changes.len());
            for (tag, limits) in changes {
                out.push(
                    self.set_limits(tag, limits, None, reason.clone(), by.clone())
                        .await?,
                );
            }
            Ok(out)
        })
    }

    fn backtest_limits(
        &self,
        candidate: Vec<(String, AlarmLimits)>,
        hours: u32,
    ) -> BoxFut<'_, Result<serde_json::Value, BackendError>> {
        // The stored history of the candidate points, replayed by the real backtest.
        let from = now_ms() - i64::from(hours) * 3_600_000;
        let r = (|| {
            let st = self.lock();
            let mut cand = Vec::new();
            let mut readings = Vec::new();
            for (tag, limits) in candidate {
                let p = self
                    .table
                    .by_tag(&tag)
                    .ok_or_else(|| BackendError::NotFound(format!("no point `{tag}`")))?;
                for s in st
                    .history
                    .get(&tag)
                    .into_iter()
                    .flatten()
                    .filter(|s| s.t >= from)
                {
                    let t = parkguard_rules::Timestamp(s.t * 1_000_000);
                    readings.push(parkguard_rules::Reading {
                        point: p.id,
                        value: s.v,
                        unit: p.unit,
                        quality: parkguard_rules::Quality::Good,
                        source_time: t,
                        receive_time: t,
                    });
                }
                cand.push((p.id, limits));
            }
            readings.sort_by_key(|r| r.receive_time.0);
            let report = crate::drill::backtest::backtest(
                Arc::clone(&self.table),
                parkguard_rules::EngineConfig::default(),
                Vec::new(),
                &readings,
                &cand,
            )
            .map_err(BackendError::Invalid)?;
            let mut v = serde_json::to_value(&report)
                .map_err(|e| BackendError::Unavailable(e.to_string()))?;
            if let Some(m) = v.as_object_mut() {
                m.insert("hours".into(), hours.into());
                m.insert("from_ms".into(), (report.from.0 / 1_000_000).into());
                m.insert("to_ms".into(), (report.to.0 / 1_000_000).into());
            }
            Ok(v)
        })();
        ready(r)
    }

    fn kpis(&self) -> BoxFut<'_, Result<serde_json::Value, BackendError>> {
        let st = self.lock();
        let mut by_point: HashMap<&str, u64> = HashMap::new();
        let mut mix = [0u64; 3];
        for a in st.alarms.iter().filter(|a| a.drill.is_none()) {
            *by_point.entry(&a.point).or_default() += 1;
            mix[a.priority as usize] += 1;
        }
        let mut top: Vec<(&str, u64)> = by_point.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        top.truncate(10);
        let v = serde_json::json!({
            "alarms_per_10min": [],
            "floods": 0,
            "chattering": [],
            "top10": top.iter().map(|(p, n)| serde_json::json!({"point": p, "count": n})).collect::<Vec<_>>(),
            "priority_mix": {"high": mix[0], "medium": mix[1], "low": mix[2]},
        });
        ready(Ok(v))
    }

    fn readiness(&self) -> BoxFut<'_, Vec<ReadyCheck>> {
        let v = match self.ready.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        ready(v)
    }

    fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let st = self.lock();
        let _ = writeln!(
            out,
            "# HELP parkguard_active_alarms Active alarms by priority.\n# TYPE parkguard_active_alarms gauge"
        );
        for (i, p) in ["high", "medium", "low"].iter().enumerate() {
            let n = st
                .alarms
                .iter()
                .filter(|a| a.state != AlarmState::Normal && a.priority as usize == i)
                .count();
            let _ = writeln!(out, "parkguard_active_alarms{{priority=\"{p}\"}} {n}");
        }
    }
}

/// A small invented park for tests: two enterprises with site boundaries, six points.
pub const SAMPLE_PARK_TOML: &str = r#"
[park]
id = "test-park"
name = "测试化工园区"
boundary = [
  { lat = 40.6150, lon = 122.1250 }, { lat = 40.6150, lon = 122.1750 },
  { lat = 40.5850, lon = 122.1750 }, { lat = 40.5850, lon = 122.1250 },
]

[[enterprise]]
code = "E01"
name = "示范氯碱化工有限公司"
location = { lat = 40.6080, lon = 122.1380 }
boundary = [
  { lat = 40.6120, lon = 122.1300 }, { lat = 40.6120, lon = 122.1460 },
  { lat = 40.6030, lon = 122.1460 }, { lat = 40.6030, lon = 122.1300 },
]

[[enterprise]]
code = "E02"
name = "示范石化储运有限公司"
location = { lat = 40.5960, lon = 122.1560 }
boundary = [
  { lat = 40.6000, lon = 122.1500 }, { lat = 40.6000, lon = 122.1680 },
  { lat = 40.5900, lon = 122.1680 }, { lat = 40.5900, lon = 122.1500 },
]

[[point]]
tag = "E01-GT-101"
name = "液氯储罐区氯气检测"
enterprise = "E01"
kind = "toxic"
gas = "cl2"
unit = "ppm"
range = [0, 10]
location = { lat = 40.6090, lon = 122.1375 }

[[point]]
tag = "E01-GT-102"
name = "电解车间氢气检测"
enterprise = "E01"
kind = "combustible"
gas = "h2"
unit = "%LEL"
range = [0, 100]
location = { lat = 40.6060, lon = 122.1420 }

[[point]]
tag = "E01-PT-201"
name = "氯气缓冲罐压力"
enterprise = "E01"
kind = "pressure"
unit = "MPa"
range = [0, 1.6]
limits = { h = 1.0, hh = 1.2 }
location = { lat = 40.6100, lon = 122.1330 }

[[point]]
tag = "E02-GT-301"
name = "储罐区可燃气体检测"
enterprise = "E02"
kind = "combustible"
gas = "ch4"
unit = "%LEL"
range = [0, 100]
location = { lat = 40.5960, lon = 122.1560 }

[[point]]
tag = "E02-GT-302"
name = "装车站硫化氢检测"
enterprise = "E02"
kind = "toxic"
gas = "h2s"
unit = "ppm"
range = [0, 100]
location = { lat = 40.5930, lon = 122.1620 }

[[point]]
tag = "E02-LT-401"
name = "1号储罐液位"
enterprise = "E02"
kind = "level"
unit = "m"
range = [0, 20]
limits = { h = 17.0, hh = 18.5, l = 1.0 }
location = { lat = 40.5980, lon = 122.1650 }
"#;

/// [`SAMPLE_PARK_TOML`] loaded and validated.
pub fn sample_park() -> Result<ParkInfo, String> {
    crate::config::load_str("sample-park.toml", SAMPLE_PARK_TOML)
        .map(|c| ParkInfo::from_config(&c))
        .map_err(|e| {
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
}

/// A complete API over the test backend: users file, audit log and hub in a temp dir.
pub struct TestApp {
    /// Handler state (build the router with [`super::router`]).
    pub state: super::AppState,
    /// The backend, to push values and raise alarms.
    pub backend: Arc<TestBackend>,
    /// Temp dir holding `users.toml` and `audit.db`.
    pub dir: tempfile::TempDir,
}

impl TestApp {
    /// Build with these users (username, role, password).
    pub fn new(users: &[(&str, crate::auth::Role, &str)]) -> anyhow::Result<Self> {
        use anyhow::Context;
        let dir = tempfile::tempdir()?;
        let users_file = dir.path().join("users.toml");
        for (name, role, pw) in users {
            crate::auth::add_user(&users_file, name, *role, pw)?;
        }
        let auth =
            crate::auth::AuthService::from_file(&users_file, crate::auth::AuthSettings::default())?;
        let audit = crate::audit::AuditLog::open(&dir.path().join("audit.db"))?;
        let park = Arc::new(
            sample_park()
                .map_err(anyhow::Error::msg)
                .context("sample park")?,
        );
        let hub = Arc::new(EventHub::new(super::HubSettings::default(), 1));
        let backend = TestBackend::new(&park, hub.clone());
        let backend_table = park.table.clone();
        // Drills: scenario `walk` (an hour; E01-GT-101 at 9 ppm from the first step).
        std::fs::create_dir_all(dir.path().join("scenarios"))?;
        std::fs::write(
            dir.path().join("scenarios/walk.toml"),
            "[scenario]\nname = \"walk\"\nduration = \"1h\"\n\n[[event]]\nat = \"0s\"\naction = \"set\"\ntag = \"E01-GT-101\"\nvalue = 9.0\n",
        )?;
        let state = super::AppState {
            backend: backend.clone(),
            auth: Arc::new(auth),
            audit: Arc::new(audit),
            hub,
            metrics: Arc::new(super::Metrics::default()),
            park,
            drills: Arc::new(crate::drill::live::Drills::new(
                crate::drill::live::DrillParts {
                    table: backend_table.clone(),
                    engine: parkguard_rules::engine::EngineConfig::default(),
                    vote_groups: Vec::new(),
                    journal: None,
                    data_dir: dir.path().to_path_buf(),
                    spool_dir: dir.path().join("spool"),
                    shutdown: tokio_util::sync::CancellationToken::new(),
                },
            )),
        };
        Ok(Self {
            state,
            backend,
            dir,
        })
    }

    /// The router.
    pub fn router(&self) -> axum::Router {
        super::router(self.state.clone())
    }
}

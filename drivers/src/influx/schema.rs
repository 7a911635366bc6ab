//! Every measurement, tag and field name parkguard writes to InfluxDB, in one place.
//!
//! Dashboards (`dashboards/`) and the API name series by these constants; a test ties the
//! dashboard JSON to this module (STYLE.md §10). Tags are listed in the order the encoder
//! writes them, which is sorted by key (InfluxDB's own canonical order, cheapest to index).
//! Renaming anything here breaks every stored series: add, never rename.

/// Measurement of sensor readings: one point per reading.
pub const READING: &str = "reading";
/// Measurement of alarm events (raise, clear, acknowledge, shelve, ...).
pub const ALARM_EVENT: &str = "alarm_event";
/// Measurement of warning-grade changes (GB/T 50493 levels, park warning grades).
pub const WARNING: &str = "warning";

/// Tag keys.
pub mod tag {
    /// Park id (from the park config), so several parks can share a bucket.
    pub const PARK: &str = "park";
    /// Enterprise code of the point's owner.
    pub const ENTERPRISE: &str = "enterprise";
    /// Point tag (位号).
    pub const TAG: &str = "tag";
    /// Point kind (`combustible`, `toxic`, `oxygen`, `pressure`, ...).
    pub const KIND: &str = "kind";
    /// Unit symbol of the value (`%LEL`, `ppm`, `mg/m3`, `degC`, ...).
    pub const UNIT: &str = "unit";
    /// Alarm id (alarm events).
    pub const ALARM: &str = "alarm";
    /// Event kind (`alarm`, `warning`, `operator`, `config`, `system`).
    pub const EVENT: &str = "event";
    /// Drill id, present only on drill events (real series never carry it).
    pub const DRILL: &str = "drill";
}

/// Field keys.
pub mod field {
    /// Reading value in the unit of the `unit` tag (float). Absent when the value is not a
    /// finite number (line protocol has no NaN/inf); `quality` is always present.
    pub const VALUE: &str = "value";
    /// Quality code (integer, [`parkguard_rules::Quality::code`]): 0 = good.
    pub const QUALITY: &str = "quality";
    /// Journal event id (integer), the link back to the SQLite journal.
    pub const EVENT_ID: &str = "event_id";
    /// New alarm state or warning grade name (string).
    pub const STATE: &str = "state";
    /// Warning grade / alarm priority as a number (integer).
    pub const GRADE: &str = "grade";
    /// Value that caused the event, if any (float).
    pub const TRIGGER_VALUE: &str = "trigger_value";
    /// Human-readable message (string).
    pub const MESSAGE: &str = "message";
}

/// Tag keys of [`READING`], in written order.
pub const READING_TAGS: [&str; 5] = [tag::ENTERPRISE, tag::KIND, tag::PARK, tag::TAG, tag::UNIT];
/// Field keys of [`READING`].
pub const READING_FIELDS: [&str; 2] = [field::QUALITY, field::VALUE];

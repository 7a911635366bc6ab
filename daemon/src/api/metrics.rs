//! A small Prometheus registry for `/metrics` (text exposition format 0.0.4).
//!
//! Any task may hold an `Arc<Metrics>` and count into it by name and labels; the first use
//! of a name fixes its help text and type. Drivers, engine and storage either count here or
//! append their own text through [`super::backend::ApiBackend::render_metrics`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

struct Family {
    help: String,
    kind: Kind,
    series: BTreeMap<String, f64>,
}

/// The registry.
#[derive(Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<String, Family>>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_text(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

impl Metrics {
    fn update(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        f: impl FnOnce(&mut f64),
    ) {
        let Ok(mut g) = self.families.lock() else {
            return;
        };
        let fam = g.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            kind,
            series: BTreeMap::new(),
        });
        f(fam.series.entry(label_text(labels)).or_insert(0.0));
    }

    /// Add `by` to a counter.
    pub fn inc(&self, name: &str, help: &str, labels: &[(&str, &str)], by: f64) {
        self.update(name, help, Kind::Counter, labels, |v| *v += by);
    }

    /// Set a gauge.
    pub fn set(&self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.update(name, help, Kind::Gauge, labels, |v| *v = value);
    }

    /// Current value of a series (tests, readiness).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let g = self.families.lock().ok()?;
        g.get(name)?.series.get(&label_text(labels)).copied()
    }

    /// The exposition text.
    pub fn render(&self, out: &mut String) {
        let Ok(g) = self.families.lock() else {
            return;
        };
        for (name, fam) in g.iter() {
            let kind = match fam.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}", fam.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in &fam.series {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        }
    }
}

//! VictoriaMetrics (Debian `victoria-metrics`), the stand-in for InfluxDB 2: it accepts
//! `POST /api/v2/write` line protocol. Measurement `m` field `f` becomes metric `m_f`,
//! tags become labels, timestamps are cut to milliseconds (TESTING.md).

use crate::{Server, free_port, spawn_in, wait_listening};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Start VictoriaMetrics on a free port with its data in the server's own temp dir.
pub fn start() -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    start_with(&data, free_port()?, dir)
}

/// Start VictoriaMetrics storing in `data` (kept by the caller, so a restart on the same
/// data dir and port finds what was written before) on `port`.
pub fn start_on(data: &Path, port: u16) -> Result<Server> {
    start_with(data, port, tempfile::tempdir()?)
}

fn start_with(data: &Path, port: u16, dir: tempfile::TempDir) -> Result<Server> {
    let mut cmd = Command::new("victoria-metrics");
    cmd.arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg(format!("-storageDataPath={}", data.display()))
        // Fixed old timestamps would otherwise be dropped while the server answers 204.
        .arg("-retentionPeriod=100y")
        .arg("-search.latencyOffset=0s")
        .arg("-memory.allowedBytes=256MiB")
        .arg("-loggerLevel=ERROR");
    let mut s = spawn_in("victoria-metrics", cmd, port, dir)?;
    wait_listening(&mut s, Duration::from_secs(20))?;
    Ok(s)
}

/// Base URL of a running server.
pub fn url(s: &Server) -> String {
    format!("http://127.0.0.1:{}", s.port)
}

/// Make everything written so far searchable (`/internal/force_flush`).
pub async fn force_flush(base: &str) -> Result<()> {
    let r = reqwest::get(format!("{base}/internal/force_flush")).await?;
    if !r.status().is_success() {
        bail!("force_flush: HTTP {}", r.status());
    }
    Ok(())
}

/// One exported series: labels (with `__name__`), values and millisecond timestamps.
#[derive(Debug, Clone)]
pub struct Series {
    /// Labels, `__name__` included.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Values.
    pub values: Vec<f64>,
    /// Timestamps, ms since the epoch.
    pub timestamps: Vec<i64>,
}

/// Flush, then export every series matching the selector (`/api/v1/export`).
pub async fn export(base: &str, selector: &str) -> Result<Vec<Series>> {
    force_flush(base).await?;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/api/v1/export"))
        .form(&[("match[]", selector)])
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("export: HTTP {}: {}", r.status(), r.text().await?);
    }
    let text = r.text().await?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).context("export line")?;
        let labels = v["metric"]
            .as_object()
            .context("metric")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let values = v["values"]
            .as_array()
            .context("values")?
            .iter()
            .map(|x| x.as_f64().unwrap_or(f64::NAN))
            .collect();
        let timestamps = v["timestamps"]
            .as_array()
            .context("timestamps")?
            .iter()
            .map(|x| x.as_i64().unwrap_or(i64::MIN))
            .collect();
        out.push(Series {
            labels,
            values,
            timestamps,
        });
    }
    Ok(out)
}

//! The `parkguard backtest` command.

use super::backtest::{self as bt, BacktestReport};
use super::replay::{
    ReplayStats, parse_annotated_csv, parse_line_protocol, parse_rfc3339, to_readings,
};
use crate::config::{self, ParkConfig};
use anyhow::{Context, Result, anyhow, bail};
use parkguard_rules::{Reading, Timestamp};
use std::path::Path;

fn load(path: &Path) -> Result<ParkConfig> {
    config::load_file(path).map_err(|errs| {
        anyhow!(
            "{} has {} error(s):\n{}",
            path.display(),
            errs.len(),
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// Read recorded readings from a line-protocol or annotated-CSV file (detected by content).
pub fn read_history(
    cfg: &ParkConfig,
    data: &Path,
    stats: &mut ReplayStats,
) -> Result<Vec<Reading>> {
    let text =
        std::fs::read_to_string(data).with_context(|| format!("cannot read {}", data.display()))?;
    let annotated = text
        .lines()
        .any(|l| l.starts_with("#datatype") || l.starts_with(",result,table"));
    let records = if annotated {
        parse_annotated_csv(&text, stats)
    } else {
        parse_line_protocol(&text, stats)
    };
    Ok(to_readings(records, &cfg.table, stats))
}

fn window(from: Option<&str>, to: Option<&str>) -> Result<(Option<Timestamp>, Option<Timestamp>)> {
    let parse = |s: &str| {
        parse_rfc3339(s)
            .map(Timestamp::from_nanos)
            .ok_or_else(|| anyhow!("`{s}` is not an RFC 3339 time like 2026-11-25T00:00:00+08:00"))
    };
    Ok((from.map(parse).transpose()?, to.map(parse).transpose()?))
}

/// `parkguard backtest`.
pub fn backtest_cmd(
    config: &Path,
    limits: &Path,
    data: &Path,
    from: Option<&str>,
    to: Option<&str>,
    json: bool,
) -> Result<BacktestReport> {
    let current = load(config)?;
    let candidate = load(limits)?;
    let mut candidate_limits = Vec::new();
    for p in candidate.table.points() {
        match current.table.by_tag(&p.tag) {
            Some(cur) => candidate_limits.push((cur.id, p.limits.clone())),
            None => bail!(
                "candidate point `{}` is not in {}: a backtest compares limits, not parks",
                p.tag,
                config.display()
            ),
        }
    }
    let mut stats = ReplayStats::default();
    let mut readings = read_history(&current, data, &mut stats)?;
    let (from, to) = window(from, to)?;
    readings.retain(|r| {
        from.is_none_or(|f| r.receive_time >= f) && to.is_none_or(|t| r.receive_time < t)
    });
    if stats.error_count > 0 || !stats.unknown_tags.is_empty() {
        eprintln!(
            "parkguard: {} unparseable line(s) (first: {:?}); {} unknown tag(s): {:?}",
            stats.error_count,
            stats.errors.first(),
            stats.unknown_tags.len(),
            stats.unknown_tags.keys().take(5).collect::<Vec<_>>()
        );
    }
    let report = bt::backtest(
        current.table.clone(),
        current.engine.clone(),
        current.vote_groups.clone(),
        &readings,
        &candidate_limits,
    )
    .map_err(|e| anyhow!(e))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(report)
}

/// Entry point used by `main`.
pub fn backtest(
    config: &Path,
    limits: &Path,
    data: &Path,
    from: Option<&str>,
    to: Option<&str>,
    json: bool,
) -> Result<()> {
    backtest_cmd(config, limits, data, from, to, json).map(|_| ())
}

fn print_report(r: &BacktestReport) {
    println!(
        "回测 / backtest: {} readings, {} changed point(s): {}",
        r.readings,
        r.changed_points.len(),
        r.changed_points.join(", ")
    );
    println!("                      current   candidate");
    println!(
        "limit alarms      {:>10} {:>11}",
        r.current.alarms, r.candidate.alarms
    );
    println!(
        "time in alarm (s) {:>10.0} {:>11.0}",
        r.current.time_in_alarm_s, r.candidate.time_in_alarm_s
    );
    println!(
        "chattering points {:>10} {:>11}",
        r.current.chattering_points, r.candidate.chattering_points
    );
    println!(
        "flood periods     {:>10} {:>11}",
        r.current.kpi.floods.len(),
        r.candidate.kpi.floods.len()
    );
    for d in &r.points {
        println!(
            "  {:<24} alarms {:>4} → {:<4} time in alarm {:>7.0}s → {:<7.0}s first alarm Δ {}",
            d.tag,
            d.current.alarms,
            d.candidate.alarms,
            d.current.time_in_alarm_s,
            d.candidate.time_in_alarm_s,
            d.first_alarm_delta_s
                .map(|s| format!("{s:+.0}s"))
                .unwrap_or_else(|| "—".into())
        );
    }
}

/// `parkguard drill`: run a scenario as a drill on the park's journal and write the report.
pub fn drill(
    config: &Path,
    scenario: &Path,
    id: Option<String>,
    speed: f64,
    report_dir: &Path,
) -> Result<()> {
    let cfg = load(config)?;
    let text = std::fs::read_to_string(scenario)
        .with_context(|| format!("cannot read {}", scenario.display()))?;
    let file = super::scenario::Scenario::parse(&text)
        .map_err(|e| anyhow!("{}: {e}", scenario.display()))?;
    let now = crate::engine_task::system_now();
    let id = id.unwrap_or_else(|| format!("drill-{}", now.nanos() / 1_000_000_000));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = rt.block_on(async {
        std::fs::create_dir_all(&cfg.data.dir)?;
        let mut journal =
            crate::store::journal::Journal::open(&cfg.data.dir.join("journal.sqlite"))
                .context("cannot open the journal")?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let cancel = tokio_util::sync::CancellationToken::new();
        // The limits a daemon on this data dir runs (changed through the API), not only
        // the file's: see drill::limits.
        let limits = super::limits::from_data_dir(&cfg.data.dir, &cfg.table, now.millis())
            .context("cannot read the stored limits")?;
        for l in &limits.used {
            eprintln!(
                "限值 / limits {} version {} ({} {})",
                l.tag, l.version, l.changed_by, l.reason
            );
        }
        let runner = super::runner::run(&cfg, &id, file, limits, speed, now, Some(tx), cancel);
        let writer = async {
            let mut n = 0usize;
            while let Some(batch) = rx.recv().await {
                let recs: Vec<_> = batch.iter().map(crate::topology::record_of).collect();
                journal.append(&recs).context("journal write")?;
                n += recs.len();
            }
            anyhow::Ok(n)
        };
        let (report, written) = tokio::join!(runner, writer);
        let report = report.map_err(|e| anyhow!(e))?;
        eprintln!(
            "演练 / drill {id}: {} events journalled (drill id on every one)",
            written?
        );
        anyhow::Ok(report)
    })?;
    std::fs::create_dir_all(report_dir)?;
    let json = report_dir.join(format!("{id}.json"));
    let html = report_dir.join(format!("{id}.html"));
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(&html, super::runner::html(&report))?;
    println!(
        "演练报告 / drill report: {} alarms, {} never acknowledged → {} , {}",
        report.kpi.alarms,
        report.never_acknowledged.len(),
        json.display(),
        html.display()
    );
    Ok(())
}

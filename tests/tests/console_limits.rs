//! Threshold tuning through the REAL `parkguard` binary (real mosquitto, API over HTTP):
//! a backtest preview on the recorded history, a class change (all combustible points of
//! an enterprise) validated all-or-nothing with a mandatory reason and audited, versions
//! that survive a restart and steer the restarted engine, restoring an earlier version,
//! and the configuration file winning when it changed between runs; and stored limits
//! judging the very first readings after a restart (readings the broker queued while the
//! daemon was down, delivered the moment it subscribes again).

mod console_common;

use anyhow::{Context, Result, bail};
use console_common::{
    ApiClient, Daemon, add_user, browser, click, config, console_login, js, now_ms, select, shot,
    type_into, wait_eq,
};
use parkguard_tests::servers::mosquitto;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const ENGINEER: &str = "zhang.gong";
const ENGINEER_PASS: &str = "engineer-pass-8812";

fn publish(broker: &parkguard_tests::Server, tag: &str, value: f64) -> Result<()> {
    let payload = format!(r#"{{"value": {value}, "ts": {}}}"#, now_ms());
    mosquitto::publish(broker, &format!("gw/{tag}"), payload.as_bytes(), 1, false)
}

/// Poll the API until `f` finds what it wants (the bound only stops a hung test).
async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(cfg: &Path, log: &Path) -> Result<(Daemon, ApiClient, String)> {
    let mut pg = Daemon::start(cfg, log)?;
    let base = pg.console_url().await?;
    pg.wait_log("mqtt connected").await?;
    let api = ApiClient::login(&base, ENGINEER, ENGINEER_PASS).await?;
    Ok((pg, api, base))
}

async fn versions(api: &ApiClient, tag: &str) -> Result<Vec<Value>> {
    api.get(&format!("/api/v1/limits/{tag}/versions"))
        .await?
        .as_array()
        .cloned()
        .context("versions array")
}

/// The standing unacknowledged alarm of `tag`, if any (returned ones of earlier runs
/// stay in the list until acknowledged).
async fn active_alarm(api: &ApiClient, tag: &str) -> Result<Option<Value>> {
    let v = api.get("/api/v1/alarms/active").await?;
    Ok(v.as_array().and_then(|a| {
        a.iter()
            .find(|a| a["point"] == tag && a["state"] == "unack")
            .cloned()
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_preview_class_change_persist_restore_and_config_wins() -> Result<()> {
    let broker = mosquitto::start()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    add_user(
        &data.join("users.toml"),
        ENGINEER,
        "engineer",
        ENGINEER_PASS,
    )?;
    add_user(
        &data.join("users.toml"),
        "li.ban",
        "operator",
        "operator-pass-4711",
    )?;
    let cfg = dir.path().join("park.toml");
    let text = config(&data, broker.port);
    std::fs::write(&cfg, &text)?;

    // ---- run 1
    let (pg, api, base) = start(&cfg, &dir.path().join("run1.log")).await?;
    let configured = api.get("/api/v1/limits/GT-2").await?["current"]["limits"].clone();
    let h0 = configured["h"].as_f64().context("configured h")?;
    let hh0 = configured["hh"].as_f64().context("configured hh")?;
    eprintln!("GT-2 configured: h = {h0}, hh = {hh0} %LEL");

    // Recorded history for the preview: GT-2 goes above the configured level-1 twice.
    let over = h0 + 3.0;
    for v in [1.0, over, 1.0, over, 1.0] {
        publish(&broker, "GT-2", v)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    until("the readings in the archive", async || {
        let h = api.get("/api/v1/points/GT-2/history?minutes=10").await?;
        Ok((h["samples"].as_array().map_or(0, Vec::len) >= 5).then_some(()))
    })
    .await?;

    // What would level-1 at h0 + 5 have done? The two excursions would not have alarmed.
    let mut candidate = configured.clone();
    candidate["h"] = json!(h0 + 5.0);
    let (st, preview) = api
        .send(
            Method::POST,
            "/api/v1/limits/GT-2/preview",
            &json!({"limits": candidate, "hours": 1}),
        )
        .await?;
    assert_eq!(st, 200, "{preview}");
    eprintln!("preview: {preview}");
    assert_eq!(preview["readings"], 5, "{preview}");
    assert_eq!(preview["current"]["alarms"], 2, "{preview}");
    assert_eq!(preview["candidate"]["alarms"], 0, "{preview}");
    assert_eq!(preview["changed_points"], json!(["GT-2"]));

    // A class change: every combustible point of E2. The reason is mandatory.
    let class = json!({"enterprise": "E2", "kind": "combustible"});
    let set = json!({"h": h0 + 5.0, "hh": hh0 + 5.0});
    let (st, body) = api
        .send(
            Method::PUT,
            "/api/v1/class-limits",
            &json!({"selector": class, "set": set, "reason": " "}),
        )
        .await?;
    assert_eq!(st, 422, "{body}");
    assert_eq!(body["fields"][0]["field"], "reason", "{body}");
    // Validated like the config file, per point, all or nothing.
    let (st, body) = api
        .send(
            Method::PUT,
            "/api/v1/class-limits",
            &json!({"selector": {"kind": "combustible"}, "set": {"h": 150.0}, "reason": "typo"}),
        )
        .await?;
    assert_eq!(st, 422, "{body}");
    let fields: Vec<&str> = body["fields"]
        .as_array()
        .context("fields")?
        .iter()
        .filter_map(|f| f["field"].as_str())
        .collect();
    assert!(fields.contains(&"points.GT-1.limits.h"), "{body}");
    assert!(fields.contains(&"points.GT-2.limits.h"), "{body}");
    assert_eq!(versions(&api, "GT-1").await?.len(), 1, "nothing applied");
    // An operator may not.
    let op = ApiClient::login(&base, "li.ban", "operator-pass-4711").await?;
    let (st, _) = op
        .send(
            Method::PUT,
            "/api/v1/class-limits",
            &json!({"selector": class, "set": set, "reason": "x"}),
        )
        .await?;
    assert_eq!(st, 403);
    // The preview of the class says the same as the point's.
    let (st, cp) = api
        .send(
            Method::POST,
            "/api/v1/class-limits/preview",
            &json!({"selector": class, "set": set, "hours": 1}),
        )
        .await?;
    assert_eq!(st, 200, "{cp}");
    assert_eq!(cp["candidate"]["alarms"], 0, "{cp}");
    let live = api.watch_events("event: limits").await?;
    let (st, body) = api
        .send(
            Method::PUT,
            "/api/v1/class-limits",
            &json!({"selector": class, "set": set, "reason": "E2 装卸区检测器更换为红外型，按厂家建议复核"}),
        )
        .await?;
    assert_eq!(st, 200, "{body}");
    // Open consoles learn of it over SSE.
    let msg = tokio::time::timeout(Duration::from_secs(20), live).await??;
    assert!(
        msg.contains(r#""tag":"GT-2""#) && msg.contains(r#""version":2"#),
        "{msg}"
    );
    assert_eq!(body["points"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["points"][0]["tag"], "GT-2");
    assert_eq!(body["points"][0]["version"], 2);
    assert_eq!(versions(&api, "GT-1").await?.len(), 1, "GT-1 is in E1");
    let audit = api.get("/api/v1/audit?limit=10").await?;
    let entry = audit
        .as_array()
        .and_then(|a| a.iter().find(|e| e["action"] == "limits.class"))
        .with_context(|| format!("limits.class in {audit}"))?;
    assert_eq!(entry["actor"], ENGINEER, "{entry}");
    let after: Value = serde_json::from_str(entry["after"].as_str().context("after")?)?;
    assert_eq!(after["points"]["GT-2"]["limits"]["h"], h0 + 5.0, "{entry}");
    let before: Value = serde_json::from_str(entry["before"].as_str().context("before")?)?;
    assert_eq!(before["GT-2"]["limits"]["h"], h0, "{entry}");
    assert_eq!(
        entry["target"], r#"class {"enterprise":"E2","kind":"combustible"}"#,
        "{entry}"
    );
    pg.stop()?;

    // ---- run 2: the change survived, and the engine runs it.
    let (pg, api, _) = start(&cfg, &dir.path().join("run2.log")).await?;
    let v = versions(&api, "GT-2").await?;
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(v[1]["limits"]["h"], h0 + 5.0);
    assert_eq!(v[1]["changed_by"], ENGINEER);
    // Above the configured level-1, below the stored one: no alarm…
    publish(&broker, "GT-2", h0 + 2.0)?;
    until("the reading", async || {
        let p = api.get("/api/v1/points/GT-2").await?;
        Ok((p["value"] == h0 + 2.0).then_some(()))
    })
    .await?;
    assert!(active_alarm(&api, "GT-2").await?.is_none());
    // …above the stored level-1: the alarm, at the stored limit.
    publish(&broker, "GT-2", h0 + 6.0)?;
    let alarm = until("the alarm", async || active_alarm(&api, "GT-2").await).await?;
    assert_eq!(alarm["limit"], h0 + 5.0, "{alarm}");

    // Restore the configured version 1: a new version, with the reason.
    let (st, body) = api
        .send(
            Method::POST,
            "/api/v1/limits/GT-2/restore",
            &json!({"version": 1, "reason": "红外型检测器到货延期，恢复原设定"}),
        )
        .await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["version"], 3);
    assert_eq!(body["limits"]["h"], h0);
    pg.stop()?;

    // ---- run 3: the restored version persisted too.
    let (pg, api, _) = start(&cfg, &dir.path().join("run3.log")).await?;
    let v = versions(&api, "GT-2").await?;
    assert_eq!(v.len(), 3, "{v:?}");
    assert_eq!(v[2]["limits"]["h"], h0);
    // Change it once more through the API, then edit the file before the next start.
    let mut l = v[2]["limits"].clone();
    l["h"] = json!(h0 + 4.0);
    let (st, body) = api
        .send(
            Method::PUT,
            "/api/v1/limits/GT-2",
            &json!({"limits": l, "reason": "试运行", "expected_version": 3}),
        )
        .await?;
    assert_eq!(st, 200, "{body}");
    pg.stop()?;

    // ---- run 4: the configuration file changed GT-2's limits: the file wins, recorded.
    let edited = text.clone();
    let pos = edited
        .rfind(r#"limits = { on_delay = "0s" }"#)
        .context("GT-2 limits")?;
    let edited = format!(
        "{}limits = {{ on_delay = \"0s\", level1 = {} }}{}",
        &edited[..pos],
        h0 - 2.0,
        &edited[pos + r#"limits = { on_delay = "0s" }"#.len()..]
    );
    std::fs::write(&cfg, edited)?;
    let (pg, api, _) = start(&cfg, &dir.path().join("run4.log")).await?;
    let v = versions(&api, "GT-2").await?;
    assert_eq!(v.len(), 5, "{v:?}");
    assert_eq!(v[4]["changed_by"], "config", "{v:?}");
    assert_eq!(v[4]["limits"]["h"], h0 - 2.0, "{v:?}");
    let cur = api.get("/api/v1/limits/GT-2").await?;
    assert_eq!(cur["current"]["version"], 5, "{cur}");
    assert!(
        pg.log()
            .contains("the configuration file changed this point's limits"),
        "{}",
        pg.log()
    );
    pg.stop()?;
    Ok(())
}

/// The alarm history of `tag` from the journal (`/api/v1/alarms/history`).
async fn alarm_history(api: &ApiClient, tag: &str) -> Result<Vec<Value>> {
    api.get(&format!("/api/v1/alarms/history?point={tag}"))
        .await?
        .as_array()
        .cloned()
        .context("history array")
}

/// Limits changed through the API must judge the first readings after a restart — not
/// the configuration file's for the moments before the API is up. GT-1's level-1 is
/// lowered and GT-2's raised; while the daemon is down a reading between the configured
/// and the stored level-1 is published for each (QoS 1: the broker keeps them for the
/// daemon's persistent session and delivers them the moment it subscribes again, before
/// its API even listens). The stored limits decide: GT-1 alarms at its stored level-1,
/// GT-2 does not alarm at all (journal and live view).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_limits_judge_the_first_readings_after_a_restart() -> Result<()> {
    let broker = Arc::new(mosquitto::start()?);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    add_user(
        &data.join("users.toml"),
        ENGINEER,
        "engineer",
        ENGINEER_PASS,
    )?;
    let cfg = dir.path().join("park.toml");
    std::fs::write(&cfg, config(&data, broker.port))?;

    // ---- run 1: change both points' level-1 through the API.
    let (pg, api, _) = start(&cfg, &dir.path().join("run1.log")).await?;
    let set = |tag: &'static str, delta: f64| {
        let api = &api;
        async move {
            let cur = api.get(&format!("/api/v1/limits/{tag}")).await?;
            let mut l = cur["current"]["limits"].clone();
            let h0 = l["h"].as_f64().context("configured h")?;
            l["h"] = json!(h0 + delta);
            let (st, body) = api
                .send(
                    Method::PUT,
                    &format!("/api/v1/limits/{tag}"),
                    &json!({"limits": l, "reason": "标定后复核", "expected_version": 1}),
                )
                .await?;
            assert_eq!(st, 200, "{body}");
            assert_eq!(body["version"], 2, "{body}");
            anyhow::Ok(h0)
        }
    };
    let h1 = set("GT-1", -5.0).await?;
    let h2 = set("GT-2", 5.0).await?;
    eprintln!(
        "GT-1 level-1 {h1} -> {}, GT-2 level-1 {h2} -> {}",
        h1 - 5.0,
        h2 + 5.0
    );
    pg.stop()?;

    // ---- while it is down: one reading each between the configured and the stored
    // level-1, queued by the broker for the daemon's session.
    publish(&broker, "GT-2", h2 + 2.0)?;
    publish(&broker, "GT-1", h1 - 2.0)?;

    // ---- run 2. GT-2 keeps getting such readings all through the start-up, until the
    // API answers.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (broker, stop) = (broker.clone(), stop.clone());
        std::thread::spawn(move || -> Result<u32> {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                publish(&broker, "GT-2", h2 + 2.0)?;
                n += 1;
            }
            Ok(n)
        })
    };
    let started = start(&cfg, &dir.path().join("run2.log")).await;
    stop.store(true, Ordering::Relaxed);
    let flooded = flood
        .join()
        .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
    let (pg, api, _) = started?;
    eprintln!("{flooded} more GT-2 readings published during the start-up");
    // GT-1: the stored (lowered) level-1 raised the alarm, at the stored limit.
    let alarm = until("GT-1's alarm in the journal", async || {
        Ok(alarm_history(&api, "GT-1").await?.first().cloned())
    })
    .await?;
    eprintln!("GT-1 alarm: {alarm}");
    assert_eq!(alarm["condition"], "h", "{alarm}");
    assert_eq!(alarm["limit"], h1 - 5.0, "{alarm}");
    assert_eq!(alarm["value"], h1 - 2.0, "{alarm}");
    let live = until("GT-1's live alarm", async || {
        active_alarm(&api, "GT-1").await
    })
    .await?;
    assert_eq!(live["limit"], h1 - 5.0, "{live}");
    // A marker published after every GT-2 reading: GT-1 back to 0. When its return shows,
    // every GT-2 reading has been judged (one subscriber, in order).
    publish(&broker, "GT-1", 0.0)?;
    until("GT-1's return", async || {
        let v = api.get("/api/v1/alarms/active").await?;
        Ok(v.as_array()
            .is_some_and(|a| {
                a.iter()
                    .any(|a| a["point"] == "GT-1" && a["state"] == "rtn_unack")
            })
            .then_some(()))
    })
    .await?;
    // GT-2 raised nothing, although every reading lay above its configured level-1.
    let p = api.get("/api/v1/points/GT-2").await?;
    assert_eq!(p["value"], h2 + 2.0, "{p}");
    let history = alarm_history(&api, "GT-2").await?;
    assert!(history.is_empty(), "GT-2 alarmed: {history:?}");
    let active = api.get("/api/v1/alarms/active").await?;
    assert!(
        active
            .as_array()
            .is_some_and(|a| a.iter().all(|a| a["point"] != "GT-2")),
        "{active}"
    );
    // The stored limits were applied before the engine started, not afterwards.
    let log = pg.log();
    let applied = log
        .find("stored limits applied before the engine starts")
        .context("start-up application logged")?;
    let engine = log
        .find("engine task started")
        .context("engine start logged")?;
    assert!(applied < engine, "{log}");
    pg.stop()?;
    Ok(())
}

/// The engineer's limits editor in headless Chromium over the real binary: preview a
/// point's change on recorded history, change a class with a mandatory reason, restore an
/// earlier version, and find the class change in the audit view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engineer_previews_changes_a_class_and_restores_in_the_console() -> Result<()> {
    let broker = Arc::new(mosquitto::start()?);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    add_user(
        &data.join("users.toml"),
        ENGINEER,
        "engineer",
        ENGINEER_PASS,
    )?;
    let cfg = dir.path().join("park.toml");
    std::fs::write(&cfg, config(&data, broker.port))?;
    let (pg, api, base) = start(&cfg, &dir.path().join("run.log")).await?;
    let h0 = api.get("/api/v1/limits/GT-2").await?["current"]["limits"]["h"]
        .as_f64()
        .context("configured h")?;
    for v in [1.0, h0 + 3.0, 1.0, h0 + 3.0, 1.0] {
        publish(&broker, "GT-2", v)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    until("the readings in the archive", async || {
        let h = api.get("/api/v1/points/GT-2/history?minutes=10").await?;
        Ok((h["samples"].as_array().map_or(0, Vec::len) >= 5).then_some(()))
    })
    .await?;

    let (_driver, c) = browser("engineer").await?;
    let result = engineer_flow(&c, &base, h0).await;
    if result.is_err() {
        let _ = shot(&c, "limits-failure").await;
    }
    c.close().await?;
    result?;

    // What the console did is what the engine and the store hold.
    let v = versions(&api, "GT-2").await?;
    assert_eq!(v.len(), 3, "{v:?}");
    assert_eq!(v[1]["limits"]["h"], h0 + 5.0, "{v:?}");
    assert_eq!(v[1]["changed_by"], ENGINEER);
    assert_eq!(v[2]["limits"]["h"], h0, "restored: {v:?}");
    assert_eq!(versions(&api, "GT-1").await?.len(), 1, "E1 untouched");
    pg.stop()?;
    Ok(())
}

async fn engineer_flow(c: &fantoccini::Client, base: &str, h0: f64) -> Result<()> {
    console_login(c, base, ENGINEER, ENGINEER_PASS).await?;

    // Point editor: preview level-1 at h0 + 5 over the last hour.
    c.goto(&format!("{base}/#/limits/GT-2")).await?;
    type_into(c, "#lim-h", &format!("{}", h0 + 5.0)).await?;
    type_into(c, "#lim-hours", "1").await?;
    click(c, "#lim-preview").await?;
    let cell = |table: &str, row: usize, col: usize| {
        format!(
            "return document.querySelector('{table} tbody tr:nth-child({row}) td:nth-child({col})')?.textContent ?? null"
        )
    };
    wait_eq(
        c,
        &cell("#lim-preview-out #pv-totals", 1, 2),
        "2".into(),
        "alarms with the current limits",
    )
    .await?;
    assert_eq!(
        js(c, &cell("#lim-preview-out #pv-totals", 1, 3)).await?,
        "0",
        "alarms with the candidate limits"
    );
    assert_eq!(
        js(
            c,
            "return document.querySelector('#pv-readings').textContent"
        )
        .await?,
        "5"
    );
    shot(c, "limits-01-preview").await?;

    // Class editor: every combustible point of E2.
    c.goto(&format!("{base}/#/limits")).await?;
    select(c, "#cls-enterprise", "E2").await?;
    select(c, "#cls-kind", "combustible").await?;
    let matched = js(
        c,
        "return document.querySelector('#cls-matched').textContent",
    )
    .await?;
    let matched = matched.as_str().unwrap_or_default();
    assert!(
        matched.contains("GT-2") && !matched.contains("GT-1"),
        "{matched}"
    );
    type_into(c, "#cls-h", &format!("{}", h0 + 5.0)).await?;
    type_into(c, "#cls-hours", "1").await?;
    click(c, "#cls-preview").await?;
    wait_eq(
        c,
        &cell("#cls-preview-out #pv-totals", 1, 3),
        "0".into(),
        "class preview",
    )
    .await?;
    click(c, "#cls-save").await?;
    wait_eq(
        c,
        "return document.querySelector('#cls-msg').textContent",
        "请填写原因".into(),
        "reason is mandatory",
    )
    .await?;
    type_into(c, "#cls-reason", "E2 装卸区检测器更换为红外型").await?;
    click(c, "#cls-save").await?;
    wait_eq(
        c,
        "return document.querySelector('#cls-msg').textContent",
        "已保存 (1)".into(),
        "class saved",
    )
    .await?;
    shot(c, "limits-02-class").await?;

    // The point's history shows the class change; restore version 1 with a reason.
    c.goto(&format!("{base}/#/limits/GT-2")).await?;
    wait_eq(
        c,
        "return document.querySelectorAll('#lim-versions tbody tr').length",
        2.into(),
        "two versions",
    )
    .await?;
    type_into(c, "#lim-reason", "红外型检测器到货延期，恢复原设定").await?;
    click(c, "[data-restore='1']").await?;
    wait_eq(
        c,
        "return document.querySelectorAll('#lim-versions tbody tr').length",
        3.into(),
        "restored as version 3",
    )
    .await?;
    shot(c, "limits-03-restored").await?;

    // The audit view lists the class change with its reason.
    c.goto(&format!("{base}/#/audit")).await?;
    let row = "const r = document.querySelector(\"#audit-table tr[data-action='limits.class']\"); return r ? r.textContent : null";
    let start = Instant::now();
    let text = loop {
        if let Some(s) = js(c, row).await?.as_str() {
            break s.to_string();
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("no limits.class row in the audit view");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(text.contains("E2 装卸区检测器更换为红外型"), "{text}");
    assert!(text.contains(ENGINEER), "{text}");
    shot(c, "limits-04-audit").await?;
    Ok(())
}

//! The operator console through the REAL `parkguard` binary: a small park config, a real
//! mosquitto, a users file made with `parkguard user add`, headless Chromium (Debian
//! `chromium` + `chromedriver`). An operator logs in, a reading published over MQTT raises
//! an alarm that appears in the console, the operator acknowledges it in the UI, and the
//! acknowledgement is checked where it must have landed: the engine's state (API) and the
//! alarm journal (SQLite, read after the daemon stopped). Screenshots go to
//! `target/console-screenshots/e2e-*.png`.

mod console_common;

use anyhow::{Context, Result};
use console_common::{
    ApiClient, Daemon, add_user, click, config, js, now_ms, shot, type_into, wait_eq,
};
use fantoccini::{Client, ClientBuilder};
use parkguard::store::journal::{EventFilter, Journal};
use parkguard_tests::servers::{chromium, mosquitto};
use serde_json::Value;
use std::time::Instant;

const OPERATOR: &str = "li.ban";
const OPERATOR_PASS: &str = "operator-pass-4711";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_acknowledges_a_live_mqtt_alarm_through_the_real_binary() -> Result<()> {
    let broker = mosquitto::start()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    add_user(
        &data.join("users.toml"),
        OPERATOR,
        "operator",
        OPERATOR_PASS,
    )?;
    let cfg = dir.path().join("park.toml");
    std::fs::write(&cfg, config(&data, broker.port))?;
    let mut pg = Daemon::start(&cfg, &dir.path().join("run.log"))?;
    let base = pg.console_url().await?;
    pg.wait_log("mqtt connected").await?;

    let driver = chromium::start()?;
    let profile = chromium::profile_dir(&driver, "e2e-operator")?;
    let caps = chromium::capabilities(&profile, 1400, 900);
    let caps = caps.as_object().cloned().context("capabilities object")?;
    let http = hyper_util::client::legacy::connect::HttpConnector::new();
    let c = ClientBuilder::new(http)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .context("WebDriver session")?;
    let result = flow(&c, &base, &broker).await;
    if result.is_err() {
        let _ = shot(&c, "failure").await;
    }
    c.close().await?;
    let alarm_id = result?;

    // The engine holds the acknowledgement: the API (a separate session) says so.
    let api = ApiClient::login(&base, OPERATOR, OPERATOR_PASS).await?;
    let active = api.get("/api/v1/alarms/active").await?;
    let alarm = active
        .as_array()
        .and_then(|a| a.iter().find(|a| a["id"] == alarm_id))
        .with_context(|| format!("alarm {alarm_id} in {active}"))?;
    assert_eq!(alarm["state"], "ack", "{alarm}");
    assert_eq!(alarm["acked_by"], OPERATOR, "{alarm}");
    assert_eq!(alarm["point"], "GT-1", "{alarm}");
    pg.stop()?;

    // And the journal recorded who acknowledged it, with the comment, after the activation.
    let j = Journal::open_readonly(&data.join("journal.sqlite"))?;
    let recs = j.query(&EventFilter {
        alarm_id: Some("GT-1:H".into()),
        limit: Some(100),
        ..Default::default()
    })?;
    let kinds: Vec<&str> = recs
        .iter()
        .filter_map(|r| r.payload["kind"].as_str())
        .collect();
    let ack = recs
        .iter()
        .find(|r| r.payload["kind"] == "acknowledge")
        .with_context(|| format!("no acknowledge record in the journal: {kinds:?}"))?;
    assert_eq!(ack.payload["user"], OPERATOR, "{}", ack.payload);
    assert_eq!(
        ack.payload["comment"], "已通知企业值班长现场确认",
        "{}",
        ack.payload
    );
    assert_eq!(ack.payload["to"], "acknowledged", "{}", ack.payload);
    let act = recs
        .iter()
        .find(|r| r.payload["kind"] == "activate")
        .context("activation")?;
    assert!(act.id < ack.id, "activation journalled before the ack");
    Ok(())
}

/// The browser part; returns the alarm's wire id.
async fn flow(c: &Client, base: &str, broker: &parkguard_tests::Server) -> Result<Value> {
    c.goto(base).await?;
    wait_eq(
        c,
        "return !document.querySelector('#login').hidden",
        Value::Bool(true),
        "login page",
    )
    .await?;
    // Chinese by default.
    assert_eq!(
        js(c, "return document.querySelector('#login-btn').textContent").await?,
        "登录"
    );
    type_into(c, "#username", OPERATOR).await?;
    type_into(c, "#password", OPERATOR_PASS).await?;
    click(c, "#login-btn").await?;
    wait_eq(
        c,
        "return !document.querySelector('#app').hidden",
        Value::Bool(true),
        "console after login",
    )
    .await?;
    click(c, "nav a[href='#/alarms']").await?;
    wait_eq(
        c,
        "return document.querySelector('#view h2')?.textContent.includes('(0)') ?? false",
        Value::Bool(true),
        "empty alarm list",
    )
    .await?;
    shot(c, "01-no-alarm").await?;

    // A reading above level-1 (20 %LEL by default) arrives over MQTT.
    let published = Instant::now();
    let payload = format!(r#"{{"value": 31.5, "ts": {}}}"#, now_ms());
    mosquitto::publish(broker, "gw/GT-1", payload.as_bytes(), 1, false)?;
    let row_state = "const r = document.querySelector(\"tr[id^='alarm-'][data-point='GT-1']\") \
        ?? [...document.querySelectorAll(\"tr[id^='alarm-']\")].find(r => r.textContent.includes('GT-1')); \
        return r ? r.dataset.state : null";
    let seen = wait_eq(c, row_state, "unack".into(), "the alarm row").await?;
    eprintln!(
        "MQTT publish → alarm row visible in the console: {:?} (poll {seen:?})",
        published.elapsed()
    );
    let row_id = js(
        c,
        "return [...document.querySelectorAll(\"tr[id^='alarm-']\")].find(r => r.textContent.includes('GT-1')).id",
    )
    .await?;
    let row_id = row_id.as_str().context("row id")?.to_string();
    let alarm_id: u64 = row_id
        .trim_start_matches("alarm-")
        .parse()
        .context("numeric alarm id")?;
    let text = js(
        c,
        &format!("return document.querySelector('#{row_id}').textContent"),
    )
    .await?;
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains("储罐区可燃气体"), "point name: {text}");
    assert!(text.contains("31.5"), "value: {text}");
    assert!(text.contains("未确认"), "Chinese state label: {text}");
    shot(c, "02-alarm-unack").await?;

    // Acknowledge in the UI, with a comment.
    click(c, &format!("#{row_id} button[data-act='ack']")).await?;
    type_into(c, "#dlg-text", "已通知企业值班长现场确认").await?;
    click(c, "#dlg-ok").await?;
    let row = format!("return document.querySelector('#{row_id}')?.dataset.state ?? null");
    wait_eq(c, &row, "ack".into(), "row acknowledged").await?;
    let state = js(
        c,
        &format!("return document.querySelector('#{row_id} td.state').textContent"),
    )
    .await?;
    let state = state.as_str().unwrap_or_default();
    assert!(state.contains("已确认"), "{state}");
    assert!(state.contains(OPERATOR), "{state}");
    shot(c, "03-alarm-acked").await?;

    // English on request: the same row, English labels.
    click(c, "header .lang-btn").await?;
    wait_eq(
        c,
        "return document.querySelector(\"nav a[href='#/alarms']\").textContent",
        "Alarms".into(),
        "English navigation",
    )
    .await?;
    let state = js(
        c,
        &format!("return document.querySelector('#{row_id} td.state').textContent"),
    )
    .await?;
    assert!(
        state.as_str().unwrap_or_default().contains("Acknowledged"),
        "{state}"
    );
    shot(c, "04-alarm-acked-en").await?;

    // A new value reaches the open point page live. The stream carries only the fields
    // that change (value, quality, times, state); the page still shows the unit and the
    // enterprise it holds from the point list.
    js(c, "location.hash = '#/point/GT-1'; return null").await?;
    wait_eq(
        c,
        "return document.querySelector('#point-value')?.textContent.includes('31.5') ?? false",
        Value::Bool(true),
        "point page with the alarm value",
    )
    .await?;
    let payload = format!(r#"{{"value": 36.25, "ts": {}}}"#, now_ms());
    mosquitto::publish(broker, "gw/GT-1", payload.as_bytes(), 1, false)?;
    wait_eq(
        c,
        "return document.querySelector('#point-value')?.textContent.includes('36.') ?? false",
        Value::Bool(true),
        "the new value on the point page",
    )
    .await?;
    let head = js(
        c,
        "return document.querySelector('#point-head').textContent",
    )
    .await?;
    let head = head.as_str().unwrap_or_default();
    assert!(
        head.contains("%LEL"),
        "unit kept after a live update: {head}"
    );
    assert!(!head.contains("undefined"), "{head}");
    shot(c, "05-point-live-value").await?;
    Ok(alarm_id.into())
}

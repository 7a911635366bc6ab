//! A drill started, acknowledged and stopped in the console, through the REAL `parkguard`
//! binary on the demo park (its field devices unreachable: the drill needs none) in headless
//! Chromium: an engineer starts the shipped chlorine-release scenario at full speed under
//! the DRILL / 演练 banner, one drill alarm is acknowledged in the drill view, the engineer stops the drill, and the report (with the acknowledgement
//! and who made it) is served — while no real gas alarm is raised.

#![allow(clippy::unwrap_used)]

mod console_common;

use anyhow::{Context, Result};
use console_common::{
    ApiClient, Daemon, add_user, browser, click, console_login, js, shot, wait_eq,
};
use serde_json::{Value, json};
use std::path::Path;

const ENGINEER: &str = "chen.gong";
const ENGINEER_PASS: &str = "engineer-pass-2718";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engineer_runs_a_drill_from_the_console() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    add_user(
        &data.join("users.toml"),
        ENGINEER,
        "engineer",
        ENGINEER_PASS,
    )?;
    let text = std::fs::read_to_string(root().join("deploy/examples/demo.toml"))?
        .replace("dir = \"parkguard-data\"", &format!("dir = {:?}", data))
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"");
    let cfg = dir.path().join("park.toml");
    std::fs::write(&cfg, text)?;
    let mut pg = Daemon::start(&cfg, &dir.path().join("run.log"))?;
    let base = pg.console_url().await?;

    let (_driver, c) = browser("drill-engineer").await?;
    let result = async {
        console_login(&c, &base, ENGINEER, ENGINEER_PASS).await?;
        c.goto(&format!("{base}/#/drill")).await?;
        wait_eq(
            &c,
            "return !document.querySelector('#drill-banner').hidden && !!document.querySelector('#drill-start')",
            json!(true),
            "drill view with its banner and start form",
        )
        .await?;
        js(&c, "document.querySelector('#drill-speed').value = 'max'; return true;").await?;
        click(&c, "#drill-start button[type=submit]").await?;
        // The drill runs to the end of its scenario at full speed; its alarms are listed
        // with acknowledge buttons.
        wait_eq(
            &c,
            "return document.querySelectorAll('section.drill [data-dack]').length > 0",
            json!(true),
            "drill alarms with acknowledge buttons",
        )
        .await?;
        let alarm = js(&c, "return document.querySelector('section.drill [data-dack]').dataset.dack")
            .await?
            .as_str()
            .context("drill alarm id")?
            .to_string();
        let drill = js(&c, "return document.querySelector('section.drill [data-dack]').dataset.drill")
            .await?
            .as_str()
            .context("drill id")?
            .to_string();
        click(&c, "section.drill [data-dack]").await?;
        wait_eq(
            &c,
            &format!("return [...document.querySelectorAll('section.drill [data-dack]')].some(b => b.dataset.dack === {alarm:?})"),
            json!(false),
            "the acknowledged drill alarm has no acknowledge button any more",
        )
        .await?;
        let _ = shot(&c, "drill").await;
        click(&c, &format!("[data-drill={drill:?}][data-dact=stop]")).await?;
        wait_eq(
            &c,
            &format!("return (document.querySelector('#drill-{drill} h3') || {{}}).textContent?.includes('stopped') || false"),
            json!(true),
            "drill stopped",
        )
        .await?;
        Ok::<_, anyhow::Error>((drill, alarm))
    }
    .await;
    if result.is_err() {
        let _ = shot(&c, "drill-failure").await;
    }
    let (drill, alarm) = result?;
    c.close().await?;

    // The report names the acknowledgement and who made it; no real alarm was raised.
    let api = ApiClient::login(&base, ENGINEER, ENGINEER_PASS).await?;
    let report: Value = api.get(&format!("/api/v1/drills/{drill}/report")).await?;
    let acks = report["acks"].as_array().context("acks")?;
    assert!(
        acks.iter()
            .any(|a| a["alarm"] == alarm.as_str() && a["operator"] == ENGINEER),
        "{report}"
    );
    // The real alarm list has the unreachable demo devices' comm-lost and stale alarms, but
    // no gas alarm: the drill's readings never reached the real engine.
    let real = api.get("/api/v1/alarms/active").await?;
    let gas: Vec<&Value> = real
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["drill"].is_null())
        .filter(|a| ["h", "hh", "l", "ll"].contains(&a["condition"].as_str().unwrap_or("")))
        .collect();
    assert!(gas.is_empty(), "real gas alarms during a drill: {gas:?}");
    pg.stop()?;
    Ok(())
}

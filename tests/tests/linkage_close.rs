//! 消警 (closing the loop) through the REAL `parkguard` binary: a gas reading over MQTT
//! (real mosquitto) raises an alarm, a normal reading returns it; closing it while its
//! condition is present is refused (409); the operator closes it with cause, action and
//! reviewer through the HTTP API; the closure is published on the park's alarm topic
//! (read back with `mosquitto_sub`), recorded in the journal database with the point's
//! data around the alarm, and a second closure is refused.

#![allow(clippy::unwrap_used)]

mod console_common;

use anyhow::Result;
use console_common::{ApiClient, Daemon, add_user, browser, console_login, now_ms, shot, wait_eq};
use parkguard_tests::servers::mosquitto;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OPERATOR: &str = "wang.fang";
const OPERATOR_PASS: &str = "operator-pass-0815";

fn config(data: &std::path::Path, port: u16) -> String {
    format!(
        r#"
[park]
id = "close-park"
name = "消警测试园区"

[data]
dir = "{data}"

[api]
listen = "127.0.0.1:0"

[[mqtt_broker]]
id = "park"
host = "127.0.0.1"
port = {port}
client_id = "parkguard-close-e2e"

[[mqtt_subscription]]
broker = "park"
topic = "gw/+"
format = "json"
tag_segment = 1
time_field = "ts"
time_format = "epoch_ms"

[[enterprise]]
code = "E1"
name = "一号企业"

[[point]]
tag = "GT-1"
name = "储罐区可燃气体"
enterprise = "E1"
kind = "combustible"
gas = "ch4"
unit = "%LEL"
range = [0, 100]
interval = "1h"
limits = {{ on_delay = "0s", off_delay = "0s" }}

[[channel]]
type = "mqtt"
name = "park-bus"
broker = "park"

[[route]]
name = "everything"
kinds = ["combustible"]
channels = ["park-bus"]
"#,
        data = data.display(),
    )
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_closes_a_returned_alarm_and_the_closure_is_published_and_recorded() -> Result<()>
{
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

    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-t", "parkguard/#", "-F", "%t|%p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let lines: Arc<Mutex<Vec<String>>> = Default::default();
    {
        let out = sub.stdout.take().unwrap();
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        });
    }
    until("mosquitto_sub subscribed", async || {
        mosquitto::publish(&broker, "parkguard/probe", b"{}", 1, false).ok()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        (!lines.lock().unwrap().is_empty()).then_some(())
    })
    .await;

    let mut pg = Daemon::start(&cfg, &dir.path().join("run.log"))?;
    let base = pg.console_url().await?;
    pg.wait_log("mqtt connected").await?;
    let api = ApiClient::login(&base, OPERATOR, OPERATOR_PASS).await?;

    let publish = |v: f64| {
        let payload = format!(r#"{{"value": {v}, "ts": {}}}"#, now_ms());
        mosquitto::publish(&broker, "gw/GT-1", payload.as_bytes(), 1, false)
    };
    publish(40.0)?;
    let alarm: Value = until("the alarm in the API", async || {
        let v = api.get("/api/v1/alarms/active").await.ok()?;
        v.as_array()
            .or_else(|| v["alarms"].as_array())?
            .iter()
            .find(|a| a["point"] == "GT-1")
            .cloned()
    })
    .await;
    let id = alarm["id"].as_u64().unwrap();
    let close_body = json!({"cause": "法兰垫片泄漏 / flange gasket leak",
        "action": "更换垫片并复测 / gasket replaced, re-measured", "reviewer": "赵工"});

    // Condition still present: refused.
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/alarms/{id}/close"),
            &close_body,
        )
        .await?;
    assert_eq!(status, 409, "close while active: {body}");

    // Back to normal (returned, unacknowledged), then closed: acknowledged and closed.
    publish(2.0)?;
    until("the alarm returned to normal", async || {
        let v = api.get("/api/v1/alarms/active").await.ok()?;
        let arr = v.as_array().or_else(|| v["alarms"].as_array())?.clone();
        arr.iter()
            .find(|a| a["id"].as_u64() == Some(id))
            .filter(|a| a["state"] == "returned_unacknowledged" || a["state"] == "rtn_unack")
            .map(|_| ())
    })
    .await;
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/alarms/{id}/close"),
            &close_body,
        )
        .await?;
    assert_eq!(status, 200, "close: {body}");

    // Published on the alarm's topic with state `closed`, cause, action and reviewer.
    let closed: Value = until("the closure on MQTT", async || {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("parkguard/close-park/alarms/E1/GT-1|"))
            .filter_map(|l| serde_json::from_str::<Value>(l.split_once('|')?.1).ok())
            .find(|v| v["state"] == "closed")
    })
    .await;
    let text = closed.to_string();
    assert!(text.contains("法兰垫片泄漏"), "{text}");
    assert!(text.contains("赵工"), "{text}");

    // A second closure of the same alarm is refused.
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/alarms/{id}/close"),
            &close_body,
        )
        .await?;
    assert_eq!(status, 409, "second close: {body}");

    // The console's point page shows the delivery status of the alarm's notifications:
    // the raise and the closure, both confirmed by the broker (PUBACK) on `park-bus`.
    let (_driver, c) = browser("close-operator").await?;
    console_login(&c, &base, OPERATOR, OPERATOR_PASS).await?;
    c.goto(&format!("{base}/#/point/GT-1")).await?;
    let script = "const rows = [...document.querySelectorAll('#deliveries tbody tr')]; \
        return rows.filter(r => r.dataset.channel === 'park-bus' && r.className === 'dl-delivered').length;";
    let seen = wait_eq(&c, script, json!(2), "two delivered rows on park-bus").await;
    let _ = shot(&c, "deliveries").await;
    seen?;
    let text: String = c
        .execute(
            "return document.querySelector('#deliveries').innerText",
            vec![],
        )
        .await?
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(text.contains("已送达") && text.contains("PUBACK"), "{text}");
    c.close().await?;
    pg.stop()?;

    // Recorded in the journal database with the data around the alarm.
    let conn = parkguard::linkage::outbox::open(&data.join("journal.sqlite"))?;
    let (alarm_id, reviewer, snapshot): (String, String, String) = conn.query_row(
        "SELECT alarm_id, reviewer, snapshot FROM closure",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    assert_eq!(alarm_id, "GT-1:H");
    assert_eq!(reviewer, "赵工");
    let snap: Value = serde_json::from_str(&snapshot)?;
    let values: Vec<f64> = snap["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["value"].as_f64())
        .collect();
    assert!(values.contains(&40.0) && values.contains(&2.0), "{snap}");
    // The acknowledgement that closing implies is in the journal too.
    let acks: i64 = conn.query_row(
        "SELECT count(*) FROM events WHERE alarm_id = 'GT-1:H' AND payload LIKE '%\"acknowledge\"%'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(acks, 1);
    let _ = sub.kill();
    let _ = sub.wait();
    Ok(())
}

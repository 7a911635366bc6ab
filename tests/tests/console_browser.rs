//! The operator console in headless Chromium (Debian `chromium` + `chromedriver`), served
//! by the real router over a real socket, fed by the engine test double: log in, see an
//! alarm pushed through SSE appear, silence (still unacknowledged), acknowledge, see the
//! state and the map marker change, close it, change a limit with a reason and find it in
//! the audit view. Screenshots go to `target/console-screenshots/`.

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use parkguard::api::backend::{Grade, Priority};
use parkguard::api::testing::TestApp;
use parkguard::auth::Role;
use parkguard_tests::servers::chromium;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util_shim::CancelOnDrop;

/// Cancels the server when the test ends (tokio_util is not a dependency of this crate).
mod tokio_util_shim {
    pub struct CancelOnDrop(pub tokio::task::JoinHandle<()>);
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| parkguard_tests::tool::workspace_root().join("target"));
    target.join("console-screenshots")
}

async fn shot(c: &Client, name: &str) -> Result<PathBuf> {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir)?;
    let png = c.screenshot().await?;
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png)?;
    Ok(path)
}

/// Poll `script` (a function body returning a JSON value) until it returns `want`.
/// The bound only stops a hung test; how long things took is reported, not asserted.
async fn wait_eq(c: &Client, script: &str, want: Value, what: &str) -> Result<Duration> {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < Duration::from_secs(20) {
        last = c.execute(script, vec![]).await?;
        if last == want {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("{what}: waited 20 s for {want}, last saw {last}")
}

async fn js(c: &Client, script: &str) -> Result<Value> {
    Ok(c.execute(script, vec![]).await?)
}

async fn click(c: &Client, css: &str) -> Result<()> {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .with_context(|| format!("find {css}"))?
        .click()
        .await
        .with_context(|| format!("click {css}"))?;
    Ok(())
}

async fn type_into(c: &Client, css: &str, text: &str) -> Result<()> {
    let e = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .with_context(|| format!("find {css}"))?;
    e.clear().await?;
    e.send_keys(text).await?;
    Ok(())
}

/// `HH:MM:SS` of `ms` in Asia/Shanghai (UTC+8, no DST).
fn shanghai_hms(ms: i64) -> String {
    let s = (ms / 1000 + 8 * 3600).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_flow_in_headless_chromium() -> Result<()> {
    // The API over the engine test double, on a real socket.
    let app = TestApp::new(&[("zhang.gong", Role::Engineer, "engineer-pass-123")])?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let router = app.router();
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    let _server = CancelOnDrop(server);
    let hub = app.state.hub.clone();
    let _flusher = CancelOnDrop(tokio::spawn(async move {
        loop {
            hub.flush_points(Instant::now());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }));
    let backend = app.backend.clone();
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    };
    // Live values for every point, and an hour of history for the trend.
    for (tag, v) in [
        ("E01-GT-101", 0.05),
        ("E01-GT-102", 1.0),
        ("E01-PT-201", 0.62),
        ("E02-GT-301", 2.0),
        ("E02-GT-302", 0.3),
        ("E02-LT-401", 9.4),
    ] {
        let t0 = now_ms() - 3_600_000;
        for i in 0..60 {
            let wobble = (f64::from(i) / 6.0).sin() * 0.05 * v;
            backend.set_value(tag, v + wobble, t0 + i64::from(i) * 60_000);
        }
    }

    // The browser.
    let driver = chromium::start()?;
    let profile = chromium::profile_dir(&driver, "operator")?;
    let caps = chromium::capabilities(&profile, 1400, 900);
    let caps = caps.as_object().cloned().context("capabilities object")?;
    // Plain HTTP: chromedriver listens on loopback only.
    let http = hyper_util::client::legacy::connect::HttpConnector::new();
    let c = ClientBuilder::new(http)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .context("WebDriver session")?;
    let result = flow(&c, &app, &base).await;
    if result.is_err() {
        let _ = shot(&c, "failure").await;
    }
    c.close().await?;
    result
}

async fn flow(c: &Client, app: &TestApp, base: &str) -> Result<()> {
    let backend = &app.backend;
    c.goto(base).await?;
    // Login page, in Chinese by default.
    wait_eq(
        c,
        "return !document.querySelector('#login').hidden",
        Value::Bool(true),
        "login page",
    )
    .await?;
    assert_eq!(
        js(c, "return document.querySelector('#login-btn').textContent").await?,
        "登录"
    );
    shot(c, "01-login").await?;
    // A wrong password is refused with a message.
    type_into(c, "#username", "zhang.gong").await?;
    type_into(c, "#password", "wrong-password").await?;
    click(c, "#login-btn").await?;
    wait_eq(
        c,
        "return document.querySelector('#login-error').textContent",
        "用户名或密码错误".into(),
        "login error",
    )
    .await?;
    type_into(c, "#password", "engineer-pass-123").await?;
    click(c, "#login-btn").await?;
    wait_eq(
        c,
        "return !document.querySelector('#app').hidden",
        Value::Bool(true),
        "console after login",
    )
    .await?;

    // The map: every point a marker, green while normal.
    c.goto(&format!("{base}/#/map")).await?;
    let marker =
        "return document.querySelector('#marker-E01-GT-101')?.getAttribute('fill') ?? null";
    wait_eq(c, marker, "#2e9d4a".into(), "normal marker is green").await?;
    let markers = js(
        c,
        "return document.querySelectorAll('circle.marker').length",
    )
    .await?;
    assert_eq!(markers, 6);

    // The engine raises an alarm: it reaches the map through SSE.
    let raised = Instant::now();
    let id = backend.raise_alarm("E01-GT-101", "hh", Priority::High, 0.92, Some(0.68), None);
    let to_map = wait_eq(c, marker, "#e02424".into(), "alarm marker turns red").await?;
    wait_eq(
        c,
        "return document.querySelector('#marker-E01-GT-101').dataset.state",
        "alarm_unack".into(),
        "marker state",
    )
    .await?;
    shot(c, "02-map-alarm").await?;

    // The alarm list: the row, flashing, first-alarm marker, horn sounding.
    click(c, "nav a[href='#/alarms']").await?;
    let row = format!("return document.querySelector('#alarm-{id}')?.dataset.state ?? null");
    wait_eq(c, &row, "unack".into(), "alarm row").await?;
    eprintln!(
        "alarm raised → marker red in {to_map:?}; → row visible {:?} after raise",
        raised.elapsed()
    );
    let cls = js(
        c,
        &format!("return document.querySelector('#alarm-{id}').className"),
    )
    .await?;
    assert!(cls.as_str().unwrap_or("").contains("row-unack"), "{cls}");
    let first = js(
        c,
        &format!("return document.querySelector('#alarm-{id} .first')?.textContent ?? null"),
    )
    .await?;
    assert_eq!(first, "首报");
    let raised_ms = backend
        .alarms_snapshot()
        .iter()
        .find(|a| a.id == id)
        .map(|a| a.raised_ms)
        .context("alarm")?;
    let time_cell = js(
        c,
        &format!("return document.querySelector('#alarm-{id} td.num').textContent"),
    )
    .await?;
    assert!(
        time_cell
            .as_str()
            .unwrap_or("")
            .contains(&shanghai_hms(raised_ms)),
        "time shown in Asia/Shanghai: {time_cell} vs {}",
        shanghai_hms(raised_ms)
    );
    assert_eq!(
        js(
            c,
            "return document.querySelector('#silence').dataset.sounding"
        )
        .await?,
        "1"
    );
    // The horn is really playing (WebAudio running, not blocked by the autoplay policy).
    assert_eq!(
        js(c, "return S.audio ? S.audio.state : null").await?,
        "running"
    );
    assert_eq!(
        js(c, "return document.querySelector('#silence').dataset.muted").await?,
        "0"
    );
    // A warning grade reaches the banner.
    backend.set_warning("E01", Grade::Orange, "液氯储罐区二级报警");
    wait_eq(
        c,
        "return document.querySelector('#grade-E01')?.dataset.grade ?? null",
        "orange".into(),
        "warning banner",
    )
    .await?;
    shot(c, "03-alarm-unack").await?;

    // Silence is not acknowledge: the horn stops, the alarm stays unacknowledged.
    click(c, "#silence").await?;
    wait_eq(
        c,
        "return document.querySelector('#silence').dataset.sounding",
        "0".into(),
        "silenced",
    )
    .await?;
    assert_eq!(js(c, &row).await?, "unack");

    // Acknowledge with a comment.
    click(c, &format!("#alarm-{id} button[data-act='ack']")).await?;
    type_into(c, "#dlg-text", "已通知企业值班长现场确认").await?;
    click(c, "#dlg-ok").await?;
    wait_eq(c, &row, "ack".into(), "row acknowledged").await?;
    let state_text = js(
        c,
        &format!("return document.querySelector('#alarm-{id} td.state').textContent"),
    )
    .await?;
    assert!(
        state_text.as_str().unwrap_or("").contains("已确认"),
        "{state_text}"
    );
    assert!(
        state_text.as_str().unwrap_or("").contains("zhang.gong"),
        "{state_text}"
    );
    shot(c, "04-alarm-acked").await?;

    // The map marker follows: acknowledged (steady), then normal after closing (消警).
    click(c, "nav a[href='#/map']").await?;
    wait_eq(
        c,
        "return document.querySelector('#marker-E01-GT-101')?.dataset.state ?? null",
        "alarm_ack".into(),
        "marker acked",
    )
    .await?;
    assert_eq!(
        js(
            c,
            "return document.querySelector('#marker-E01-GT-101').classList.contains('flash')"
        )
        .await?,
        false
    );
    click(c, "nav a[href='#/alarms']").await?;
    click(c, &format!("#alarm-{id} button[data-act='close']")).await?;
    type_into(c, "#dlg-text", "检测器零点漂移 / 已重新标定").await?;
    click(c, "#dlg-ok").await?;
    wait_eq(
        c,
        &format!("return document.querySelector('#alarm-{id}') === null"),
        Value::Bool(true),
        "closed alarm leaves the list",
    )
    .await?;
    click(c, "nav a[href='#/map']").await?;
    wait_eq(c, marker, "#2e9d4a".into(), "marker green again").await?;

    // A drill alarm shows under the drill banner, never in the real list.
    let drill_id = backend.raise_alarm(
        "E02-GT-301",
        "h",
        Priority::High,
        30.0,
        Some(25.0),
        Some("2026-H2-E02"),
    );
    wait_eq(
        c,
        "return !document.querySelector('#drill-banner').hidden",
        Value::Bool(true),
        "drill banner",
    )
    .await?;
    click(c, "nav a[href='#/alarms']").await?;
    wait_eq(
        c,
        "return document.querySelector('#view h2').textContent.includes('(0)')",
        Value::Bool(true),
        "no real alarm",
    )
    .await?;
    click(c, "nav a[href='#/drill']").await?;
    wait_eq(
        c,
        &format!("return document.querySelector('#alarm-{drill_id}') !== null"),
        Value::Bool(true),
        "drill list",
    )
    .await?;
    shot(c, "05-drill").await?;

    // Point view: trend of the last hour with the limits drawn.
    c.goto(&format!("{base}/#/point/E01-PT-201")).await?;
    wait_eq(
        c,
        "return document.querySelectorAll('#trend-chart .limit-line').length",
        2.into(),
        "H and HH drawn",
    )
    .await?;
    wait_eq(
        c,
        "return document.querySelectorAll('#trend-chart polyline').length",
        1.into(),
        "trend line",
    )
    .await?;
    shot(c, "06-point").await?;

    // Change a limit with a reason; the diff shows first.
    c.goto(&format!("{base}/#/limits/E01-PT-201")).await?;
    type_into(c, "#lim-h", "1.05").await?;
    wait_eq(
        c,
        "return document.querySelectorAll('#lim-diff-table tbody tr').length",
        1.into(),
        "diff",
    )
    .await?;
    click(c, "#lim-save").await?;
    wait_eq(
        c,
        "return document.querySelector('#lim-msg').textContent",
        "请填写原因".into(),
        "reason is mandatory",
    )
    .await?;
    type_into(c, "#lim-reason", "缓冲罐更换后按新设计压力复核").await?;
    click(c, "#lim-save").await?;
    wait_eq(
        c,
        "return document.querySelector('#lim-msg')?.textContent ?? null",
        "已保存".into(),
        "saved",
    )
    .await?;
    wait_eq(
        c,
        "return document.querySelectorAll('#lim-versions tbody tr').length",
        2.into(),
        "two versions",
    )
    .await?;
    shot(c, "07-limits").await?;

    // The audit view shows it, and the chain verifies.
    click(c, "nav a[href='#/audit']").await?;
    let audit_row = "const r = document.querySelector(\"#audit-table tr[data-action='limits.set']\"); return r ? r.textContent : null";
    let start = Instant::now();
    let text = loop {
        let v = js(c, audit_row).await?;
        if let Some(s) = v.as_str() {
            break s.to_string();
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("no limits.set row in the audit view");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(text.contains("缓冲罐更换后按新设计压力复核"), "{text}");
    assert!(text.contains("zhang.gong"), "{text}");
    assert!(text.contains("E01-PT-201"), "{text}");
    assert!(text.contains("1.05"), "after value shown: {text}");
    click(c, "#verify").await?;
    wait_eq(
        c,
        "return document.querySelector('#verify-msg').className",
        "ok".into(),
        "chain ok",
    )
    .await?;
    shot(c, "08-audit").await?;

    // KPIs as charts; unmapped data with counts.
    click(c, "nav a[href='#/kpi']").await?;
    wait_eq(
        c,
        "return document.querySelectorAll('#view svg.chart').length >= 2",
        Value::Bool(true),
        "KPI charts",
    )
    .await?;
    shot(c, "09-kpi").await?;
    backend.add_unmapped(parkguard::api::backend::UnmappedEntry {
        source: "mqtt:park-broker".into(),
        key: "park/E02/gds/GT-399".into(),
        reason: "unknown_tag".into(),
        count: 17,
        last_ms: 1_764_000_000_000,
        sample: "{\"v\": 3.1}".into(),
    });
    click(c, "nav a[href='#/unmapped']").await?;
    wait_eq(
        c,
        "return document.querySelector('#view table td:nth-child(2)')?.textContent ?? null",
        "park/E02/gds/GT-399".into(),
        "unmapped row",
    )
    .await?;

    // English.
    click(c, "header .lang-btn").await?;
    wait_eq(
        c,
        "return document.querySelector(\"nav a[href='#/alarms']\").textContent",
        "Alarms".into(),
        "English",
    )
    .await?;
    shot(c, "10-unmapped-en").await?;
    let _ = app;
    Ok(())
}

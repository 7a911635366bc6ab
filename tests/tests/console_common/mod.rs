//! Shared helpers of the console tests through the real binary: the park config, the
//! daemon process (killed on drop), users made with `parkguard user add`, and a logged-in
//! API client (session cookie + CSRF header) as an independent look at the engine.
#![allow(dead_code)]

use anyhow::{Context, Result, bail};
use fantoccini::{Client, Locator};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn parkguard_bin() -> Result<PathBuf> {
    // tests run from target/<profile>/deps; the daemon's binary sits in target/<profile>.
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .context("target/<profile>")?
        .join("parkguard");
    if !bin.exists() {
        bail!(
            "{} not built: run `cargo build -p parkguard` (tests/run.sh does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A two-enterprise park: one combustible gas detector per enterprise, on MQTT.
pub fn config(data: &Path, mqtt_port: u16) -> String {
    format!(
        r#"
[park]
id = "console-e2e"
name = "控制台端到端测试园区"

[data]
dir = "{data}"

[api]
listen = "127.0.0.1:0"

[[mqtt_broker]]
id = "park"
host = "127.0.0.1"
port = {mqtt_port}
client_id = "parkguard-console-e2e"

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

[[enterprise]]
code = "E2"
name = "二号企业"

[[point]]
tag = "GT-1"
name = "储罐区可燃气体"
enterprise = "E1"
kind = "combustible"
gas = "ch4"
unit = "%LEL"
range = [0, 100]
interval = "1h"
limits = {{ on_delay = "0s" }}

[[point]]
tag = "GT-2"
name = "装卸区可燃气体"
enterprise = "E2"
kind = "combustible"
gas = "ch4"
unit = "%LEL"
range = [0, 100]
interval = "1h"
limits = {{ on_delay = "0s" }}
"#,
        data = data.display()
    )
}

/// The daemon, killed (SIGKILL) if the test fails before stopping it.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn start(cfg: &Path, log: &Path) -> Result<Self> {
        let err = std::fs::File::create(log)?;
        let child = Command::new(parkguard_bin()?)
            .args(["run", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .context("start parkguard")?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
        })
    }

    /// The daemon's log without colour escapes.
    pub fn log(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ params final-byte
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The console URL the daemon logged (`[api] listen` is port 0).
    pub async fn console_url(&mut self) -> Result<String> {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(i) = log.find("console=http://") {
                let rest = &log[i + "console=".len()..];
                let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
                return Ok(rest[..end].trim_end_matches('/').to_string());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("parkguard exited ({status}) before serving:\n{log}");
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("parkguard did not log its console address:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_log(&mut self, needle: &str) -> Result<()> {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("no `{needle}` in the log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// SIGTERM, and the exit status must be a clean one.
    pub fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait()?;
        if !status.success() {
            bail!("unclean exit on SIGTERM: {status:?}\n{}", self.log());
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn add_user(users: &Path, name: &str, role: &str, password: &str) -> Result<()> {
    let out = Command::new(parkguard_bin()?)
        .args(["user", "add", "--file"])
        .arg(users)
        .args([name, role])
        .env("PARKGUARD_PASSWORD", password)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "parkguard user add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A logged-in API client of the daemon (session cookie + CSRF token), as a second,
/// independent look at the engine's state.
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

impl ApiClient {
    pub async fn login(base: &str, user: &str, password: &str) -> Result<Self> {
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{base}/api/v1/session/login"))
            .json(&serde_json::json!({"username": user, "password": password}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("API login: {} {}", r.status(), r.text().await?);
        }
        // `name=value` of every cookie set, as a browser would send them back.
        let cookie = r
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
            .collect::<Vec<_>>()
            .join("; ");
        // The double-submit CSRF token: the `pg_csrf` cookie's value, sent as a header.
        let csrf = cookie
            .split("; ")
            .find_map(|c| c.strip_prefix("pg_csrf="))
            .context("no pg_csrf cookie at login")?
            .to_string();
        Ok(Self {
            http,
            base: base.to_string(),
            cookie,
            csrf,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header(reqwest::header::COOKIE, &self.cookie)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        if !status.is_success() {
            bail!("GET {path}: {status} {v}");
        }
        Ok(v)
    }

    /// Open the live event stream; the returned task yields the first SSE message whose
    /// text contains `needle` (the caller bounds how long it waits).
    pub async fn watch_events(&self, needle: &str) -> Result<tokio::task::JoinHandle<String>> {
        let mut r = self
            .http
            .get(format!("{}/api/v1/events", self.base))
            .header(reqwest::header::COOKIE, &self.cookie)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET /api/v1/events: {}", r.status());
        }
        let needle = needle.to_string();
        Ok(tokio::spawn(async move {
            let mut buf = String::new();
            while let Ok(Some(chunk)) = r.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let msg: String = buf.drain(..end + 2).collect();
                    if msg.contains(&needle) {
                        return msg;
                    }
                }
            }
            String::new()
        }))
    }

    /// A state-changing request; returns the status and the JSON body (4xx included).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value)> {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::COOKIE, &self.cookie)
            .header("x-csrf-token", &self.csrf)
            .json(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        Ok((status, v))
    }
}

// ------------------------------------------------------------------ browser helpers

pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| parkguard_tests::tool::workspace_root().join("target"));
    target.join("console-screenshots")
}

pub async fn shot(c: &Client, name: &str) -> Result<()> {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("e2e-{name}.png")), c.screenshot().await?)?;
    Ok(())
}

/// Poll `script` until it returns `want`. The bound only stops a hung test; how long things
/// took is printed, not asserted.
pub async fn wait_eq(c: &Client, script: &str, want: Value, what: &str) -> Result<Duration> {
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

pub async fn js(c: &Client, script: &str) -> Result<Value> {
    Ok(c.execute(script, vec![]).await?)
}

/// Find `css` and click it. A view that re-renders between the find and the click leaves
/// a stale element: found again and clicked again (what a user's second click does).
pub async fn click(c: &Client, css: &str) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let e = c
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("find {css}"))?;
        match e.click().await {
            Ok(()) => return Ok(()),
            Err(err) if attempt < 3 && err.to_string().contains("stale element") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err).with_context(|| format!("click {css}")),
        }
    }
}

pub async fn type_into(c: &Client, css: &str, text: &str) -> Result<()> {
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

/// Headless Chromium over chromedriver (both killed when the returned server drops).
pub async fn browser(profile: &str) -> Result<(parkguard_tests::Server, Client)> {
    use parkguard_tests::servers::chromium;
    let driver = chromium::start()?;
    let dir = chromium::profile_dir(&driver, profile)?;
    let caps = chromium::capabilities(&dir, 1400, 1000);
    let caps = caps.as_object().cloned().context("capabilities object")?;
    // Plain HTTP: chromedriver listens on loopback only.
    let http = hyper_util::client::legacy::connect::HttpConnector::new();
    let c = fantoccini::ClientBuilder::new(http)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .context("WebDriver session")?;
    Ok((driver, c))
}

/// Log in through the console's form.
pub async fn console_login(c: &Client, base: &str, user: &str, password: &str) -> Result<()> {
    c.goto(base).await?;
    wait_eq(
        c,
        "return !document.querySelector('#login').hidden",
        Value::Bool(true),
        "login page",
    )
    .await?;
    type_into(c, "#username", user).await?;
    type_into(c, "#password", password).await?;
    click(c, "#login-btn").await?;
    wait_eq(
        c,
        "return !document.querySelector('#app').hidden",
        Value::Bool(true),
        "console after login",
    )
    .await?;
    Ok(())
}

/// Choose `value` in the `<select>` at `css`.
pub async fn select(c: &Client, css: &str, value: &str) -> Result<()> {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .with_context(|| format!("find {css}"))?
        .select_by_value(value)
        .await
        .with_context(|| format!("select {value} in {css}"))?;
    Ok(())
}

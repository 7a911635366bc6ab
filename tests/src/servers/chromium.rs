//! Debian `chromedriver` driving headless Debian `chromium`, for the console's browser
//! tests. The driver listens on a free port; every browser session gets its own profile
//! directory inside the driver's temp dir. Nothing is downloaded.

use crate::{Server, free_port, spawn_in, wait_listening};
use anyhow::Result;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The Chromium binary (Debian package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The driver (Debian package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Start `chromedriver` on a free port, PID-checked. Connect WebDriver clients to
/// `http://127.0.0.1:PORT` and request sessions with [`capabilities`].
pub fn start() -> Result<Server> {
    let dir = tempfile::Builder::new()
        .prefix("pg-chromedriver-")
        .tempdir()?;
    let port = free_port()?;
    let mut cmd = Command::new(CHROMEDRIVER);
    cmd.arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .arg(format!(
            "--log-path={}",
            dir.path().join("chromedriver.log").display()
        ));
    let mut server = spawn_in("chromedriver", cmd, port, dir)?;
    wait_listening(&mut server, Duration::from_secs(20))?;
    Ok(server)
}

/// A fresh profile directory for one browser session inside the driver's dir.
pub fn profile_dir(driver: &Server, name: &str) -> Result<PathBuf> {
    let p = driver.path(&format!("profile-{name}"));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

/// W3C capabilities for headless Chromium with its own profile directory and a fixed
/// window size (screenshots are comparable).
pub fn capabilities(profile: &std::path::Path, width: u32, height: u32) -> serde_json::Value {
    serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--autoplay-policy=no-user-gesture-required",
                format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", profile.display()),
                "--lang=zh-CN",
            ],
        }
    })
}

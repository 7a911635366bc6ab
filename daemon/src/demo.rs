//! `parkguard demo`: the embedded default — a simulated park, local storage and the console
//! in one process, with no outside servers. The config is `deploy/examples/demo.toml`,
//! embedded in the binary.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The demo park config (also at `deploy/examples/demo.toml`).
pub const DEMO_CONFIG: &str = include_str!("../../deploy/examples/demo.toml");

/// Run the demo until SIGTERM/SIGINT.
pub fn run(listen: SocketAddr, data_dir: Option<PathBuf>) -> Result<()> {
    let tmp;
    let dir = match data_dir {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir().context("cannot create a temp data dir")?;
            tmp.path().to_path_buf()
        }
    };
    // The demo's Modbus gateway is the embedded simulator on a free local port.
    let sim_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .context("cannot reserve a local port for the Modbus simulator")?;
    let mqtt_port = parkguard_drivers::mqtt::broker::reserve_port()
        .map_err(|e| anyhow::anyhow!("cannot reserve a local port for the MQTT broker: {e}"))?;
    let text = DEMO_CONFIG
        .replace("port = 15502", &format!("port = {sim_port}"))
        .replace("port = 11883", &format!("port = {mqtt_port}"));
    let mut cfg = crate::config::load_str("demo.toml (embedded)", &text).map_err(|e| {
        anyhow::anyhow!(
            "embedded demo config is invalid (a build defect): {}",
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    cfg.data.dir = dir;
    cfg.api.listen = listen.to_string();
    crate::run::run_config_with(
        cfg,
        crate::run::Extras {
            modbus_sim: Some(std::net::SocketAddr::from(([127, 0, 0, 1], sim_port))),
            embedded_broker: Some(std::net::SocketAddr::from(([127, 0, 0, 1], mqtt_port))),
            mqtt_sim: true,
            demo_users: true,
        },
    )
}

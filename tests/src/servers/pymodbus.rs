//! pymodbus, the independent Modbus peer: a TCP server (MBAP or RTU framing) or a serial
//! RTU server, started from `tests/py/modbus_server.py` with a JSON register layout.

use crate::{Server, free_port, spawn_in, tool, wait_listening};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn script() -> std::path::PathBuf {
    tool::workspace_root().join("tests/py/modbus_server.py")
}

fn command(layout: &Path) -> Command {
    let mut cmd = Command::new(tool::venv_python());
    cmd.arg(script()).arg(layout);
    cmd
}

/// Start a pymodbus TCP server on a free port of 127.0.0.1 serving `layout` (see the
/// script's doc; `transport`, `host` and `port` are filled in here). `framer = "rtu"` in
/// the layout makes it an RTU-over-TCP peer.
pub fn start_tcp(mut layout: serde_json::Value) -> Result<Server> {
    let port = free_port()?;
    layout["transport"] = "tcp".into();
    layout["host"] = "127.0.0.1".into();
    layout["port"] = port.into();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("layout.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&layout)?)?;
    let mut server = spawn_in("pymodbus", command(&path), port, dir)?;
    wait_listening(&mut server, Duration::from_secs(20))?;
    Ok(server)
}

/// Kill the server (as in a crash) and start it again on the same port with the same
/// layout, as a restarted device would come back.
pub fn restart_tcp(server: &mut Server) -> Result<()> {
    server.kill();
    let path = server.path("layout.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let err = std::fs::File::create(server.path("stderr.log"))?;
        let out = std::fs::File::create(server.path("stdout.log"))?;
        let mut cmd = command(&path);
        cmd.stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        server.child = cmd.spawn().context("restart pymodbus")?;
        match wait_listening(server, Duration::from_secs(20)) {
            Ok(()) => return Ok(()),
            // The old socket may linger a moment (TIME_WAIT is fine with SO_REUSEADDR, but
            // a slow kernel may still hold the listener): try again.
            Err(e) if Instant::now() < deadline => {
                eprintln!("pymodbus restart: {e}; retrying");
                server.kill();
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Start a pymodbus serial RTU server on `serial` (e.g. one end of a socat PTY pair).
/// Ready when it printed READY and had a moment to open the port.
pub fn start_rtu(mut layout: serde_json::Value, serial: &Path) -> Result<Server> {
    layout["transport"] = "rtu".into();
    layout["serial"] = serial.to_string_lossy().into_owned().into();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("layout.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&layout)?)?;
    let mut server = spawn_in("pymodbus-rtu", command(&path), 0, dir)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::fs::read_to_string(server.path("stdout.log")).unwrap_or_default();
        if out.contains("READY") {
            return Ok(server);
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!(
                "pymodbus serial server exited with {status}; log:\n{}",
                server.log()
            );
        }
        if Instant::now() > deadline {
            bail!("pymodbus serial server not ready; log:\n{}", server.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Freeze the server process (SIGSTOP): the socket stays open, nothing answers — a
/// controller that hangs mid-poll.
pub fn stall(server: &Server) -> Result<()> {
    signal(server, "-STOP")
}

/// Let a stalled server run again (SIGCONT).
pub fn resume(server: &Server) -> Result<()> {
    signal(server, "-CONT")
}

fn signal(server: &Server, sig: &str) -> Result<()> {
    let st = Command::new("kill")
        .args([sig, &server.pid().to_string()])
        .status()?;
    if !st.success() {
        bail!("kill {sig} {} failed", server.pid());
    }
    Ok(())
}

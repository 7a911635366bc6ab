//! parkguard's real-server test harness.
//!
//! Every test that needs a real peer starts its own server on a free port in a temp dir of
//! its own, checks that the listening socket belongs to the PID it started (other processes
//! on a shared machine may hold ports), and kills it by PID when the guard drops.
//!
//! - [`Server`]: a child process with its temp dir and port, killed on drop.
//! - [`free_port`], [`wait_listening`]: ports and readiness.
//! - [`tool`]: where the external tools are (`PARKGUARD_VENV` for pymodbus).
//!
//! Server-specific starters live in their own modules (mosquitto, VictoriaMetrics,
//! pymodbus, socat) and all return a [`Server`].

use anyhow::{Context, Result, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod loadgen;
pub mod servers;

/// A server process started for one test. Killed (SIGKILL) and reaped on drop; its temp
/// dir is removed with it.
pub struct Server {
    /// What it is, for messages.
    pub name: &'static str,
    /// The child process.
    pub child: Child,
    /// Its TCP port on 127.0.0.1 (0 when it does not listen on TCP).
    pub port: u16,
    /// Its private directory (config, data, logs).
    pub dir: tempfile::TempDir,
}

impl Server {
    /// PID of the child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Path inside the server's dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// The server's stderr log so far (servers are started with stderr to `stderr.log`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
    }
    /// Kill now (SIGKILL) and wait, e.g. to simulate a crash mid-test.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// Stop with SIGTERM and wait up to `grace`, then SIGKILL.
    pub fn terminate(&mut self, grace: Duration) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago on 127.0.0.1 (the OS picks it). The server started on
/// it is then checked with [`wait_listening`], which catches the rare race.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Inodes of TCP sockets in LISTEN state on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let local_port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // st 0A = LISTEN
            if local_port == Some(port)
                && cols[3] == "0A"
                && let Ok(inode) = cols[9].parse::<u64>()
            {
                out.push(inode);
            }
        }
    }
    out
}

/// Whether `pid` (or one of its threads, which share fds) holds a socket listening on `port`.
pub fn pid_listens_on(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    for fd in fds.flatten() {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(num) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'))
                && num.parse::<u64>().is_ok_and(|n| inodes.contains(&n))
            {
                return true;
            }
        }
    }
    false
}

/// Wait until the server's own PID listens on its port, or fail with its log.
pub fn wait_listening(server: &mut Server, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if pid_listens_on(server.pid(), server.port) {
            return Ok(());
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!(
                "{} exited with {status} before listening on {}; log:\n{}",
                server.name,
                server.port,
                server.log()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} (pid {}) did not listen on {} within {timeout:?}; log:\n{}",
                server.name,
                server.pid(),
                server.port,
                server.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawn `cmd` with stdout/stderr to files in `dir` and wrap it in a [`Server`].
pub fn spawn_in(
    name: &'static str,
    mut cmd: Command,
    port: u16,
    dir: tempfile::TempDir,
) -> Result<Server> {
    let err = std::fs::File::create(dir.path().join("stderr.log"))?;
    let out = std::fs::File::create(dir.path().join("stdout.log"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name}: is it installed? run tests/run.sh"))?;
    Ok(Server {
        name,
        child,
        port,
        dir,
    })
}

/// Paths of external tools. `tests/run.sh` exports `PARKGUARD_VENV` (the Python venv with
/// pinned pymodbus); without it the harness looks for `.venv` at the workspace root.
pub mod tool {
    use super::*;

    /// The workspace root (parent of this crate).
    pub fn workspace_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// The Python interpreter of the pymodbus venv.
    pub fn venv_python() -> PathBuf {
        let venv = std::env::var_os("PARKGUARD_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".venv"));
        venv.join("bin").join("python3")
    }
}

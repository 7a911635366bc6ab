//! `socat` PTY pairs: a virtual serial line for RTU tests.

use crate::{Server, spawn_in};
use anyhow::{Result, bail};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A connected pair of pseudo-terminals; bytes written to one end come out of the other.
/// The PTYs ignore the baud rate (a real 19,200-baud line is much slower).
pub struct PtyPair {
    /// The socat process (killed on drop).
    pub server: Server,
    /// End A (give it to the device/server).
    pub a: PathBuf,
    /// End B (give it to parkguard).
    pub b: PathBuf,
}

/// Start `socat` with two raw PTYs linked as `a` and `b` in a temp dir.
pub fn pty_pair() -> Result<PtyPair> {
    let dir = tempfile::tempdir()?;
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let mut cmd = Command::new("socat");
    cmd.arg("-d")
        .arg("-d")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()));
    let mut server = spawn_in("socat", cmd, 0, dir)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.exists() && b.exists()) {
        if let Ok(Some(st)) = server.child.try_wait() {
            bail!("socat exited with {st}; log:\n{}", server.log());
        }
        if Instant::now() > deadline {
            bail!("socat did not create its PTYs; log:\n{}", server.log());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(PtyPair { server, a, b })
}

//! Debian `mosquitto` (2.0.x), one per test on a free port in its own dir (TESTING.md):
//! `user root` (else it cannot write its persistence file), `log_dest stderr`, its own
//! `persistence_location`, and `max_queued_messages 0` / `max_inflight_messages 0` so that
//! no message of an offline or slow persistent session is silently dropped.

use crate::{Server, free_port, spawn_in, wait_listening};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// TLS files for a mosquitto listener.
#[derive(Clone, Debug)]
pub struct MosquittoTls {
    /// CA certificate (PEM) that signed the server and client certificates.
    pub ca: PathBuf,
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// Require a client certificate signed by `ca`.
    pub require_client_cert: bool,
}

/// Options of a test broker.
#[derive(Clone, Debug, Default)]
pub struct MosquittoOptions {
    /// TLS on the listener.
    pub tls: Option<MosquittoTls>,
    /// Extra configuration lines.
    pub extra: String,
}

fn write_conf(dir: &Path, port: u16, opts: &MosquittoOptions) -> Result<PathBuf> {
    let mut conf = format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         user root\n\
         log_dest stderr\n\
         log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
         persistence true\n\
         persistence_location {}/\n\
         max_queued_messages 0\n\
         max_inflight_messages 0\n",
        dir.display()
    );
    if let Some(t) = &opts.tls {
        conf.push_str(&format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
            t.ca.display(),
            t.cert.display(),
            t.key.display(),
            t.require_client_cert
        ));
    }
    conf.push_str(&opts.extra);
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

fn spawn(dir: tempfile::TempDir, port: u16) -> Result<Server> {
    let mut cmd = Command::new("mosquitto");
    cmd.arg("-c").arg(dir.path().join("mosquitto.conf"));
    let mut server = spawn_in("mosquitto", cmd, port, dir)?;
    wait_listening(&mut server, Duration::from_secs(10))?;
    Ok(server)
}

/// Start a plain mosquitto on a free port.
pub fn start() -> Result<Server> {
    start_with(&MosquittoOptions::default())
}

/// Start mosquitto with options.
pub fn start_with(opts: &MosquittoOptions) -> Result<Server> {
    let dir = tempfile::tempdir().context("temp dir for mosquitto")?;
    let port = free_port()?;
    write_conf(dir.path(), port, opts)?;
    spawn(dir, port)
}

/// Kill the broker (SIGKILL: a crash, nothing saved since the last autosave) and start it
/// again on the same port with the same config and persistence dir.
pub fn crash_and_restart(server: &mut Server) -> Result<()> {
    server.kill();
    let mut cmd = Command::new("mosquitto");
    cmd.arg("-c").arg(server.path("mosquitto.conf"));
    let err = std::fs::OpenOptions::new()
        .append(true)
        .open(server.path("stderr.log"))?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(err));
    server.child = cmd.spawn().context("restart mosquitto")?;
    wait_listening(server, Duration::from_secs(10))
}

/// Stop the broker cleanly (SIGTERM: it saves its persistence file: sessions and queued
/// QoS 1 messages) and start it again on the same port with the same config and dir.
pub fn stop_and_restart(server: &mut Server) -> Result<()> {
    server.terminate(Duration::from_secs(10));
    let mut cmd = Command::new("mosquitto");
    cmd.arg("-c").arg(server.path("mosquitto.conf"));
    let err = std::fs::OpenOptions::new()
        .append(true)
        .open(server.path("stderr.log"))?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(err));
    server.child = cmd.spawn().context("restart mosquitto")?;
    wait_listening(server, Duration::from_secs(10))
}

/// Publish with Debian's `mosquitto_pub` (a client no one here wrote). `payload` is sent
/// from a file, so any bytes go through unchanged.
pub fn publish(server: &Server, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), payload)?;
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args(["-t", topic, "-q", &qos.to_string()])
        .arg("-f")
        .arg(file.path());
    if retain {
        cmd.arg("-r");
    }
    let out = cmd.output().context("run mosquitto_pub")?;
    anyhow::ensure!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Read `count` messages with `mosquitto_sub` (retained ones included), printing
/// `topic payload` per line; waits at most `timeout`.
pub fn subscribe_lines(
    server: &Server,
    filter: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<String>> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args(["-t", filter, "-v", "-C", &count.to_string()])
        .args(["-W", &timeout.as_secs().max(1).to_string()])
        .output()
        .context("run mosquitto_sub")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect())
}

/// A test CA with a server certificate for `127.0.0.1`/`localhost` and a client
/// certificate, made with the `openssl` CLI in `dir`.
#[derive(Clone, Debug)]
pub struct TestPki {
    /// CA certificate.
    pub ca: PathBuf,
    /// Server certificate and key.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
    /// A second CA that signed nothing here (to prove verification fails).
    pub other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("run openssl (install it: tests/run.sh)")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Generate a [`TestPki`] in `dir`.
pub fn make_pki(dir: &Path) -> Result<TestPki> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let mut a = vec!["req", "-x509"];
        a.extend_from_slice(&ec);
        a.extend_from_slice(&[
            "-keyout",
            if ca == "ca" { "ca.key" } else { "other-ca.key" },
            "-out",
            if ca == "ca" { "ca.pem" } else { "other-ca.pem" },
            "-days",
            "2",
            "-subj",
            if ca == "ca" {
                "/CN=parkguard test CA"
            } else {
                "/CN=other test CA"
            },
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &a)?;
    }
    for (name, cn, ext) in [
        (
            "server",
            "/CN=localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "/CN=parkguard", "extendedKeyUsage=clientAuth\n"),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let extfile = format!("{name}.ext");
        std::fs::write(dir.join(&extfile), ext)?;
        let mut a = vec!["req"];
        a.extend_from_slice(&ec);
        a.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", cn]);
        openssl(dir, &a)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        )?;
    }
    Ok(TestPki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        other_ca: dir.join("other-ca.pem"),
    })
}

/// A running `mosquitto_sub` whose subscription is confirmed (SUBACK seen): messages
/// published from now on are caught. Killed on drop.
pub struct Watch {
    child: std::process::Child,
    rx: std::sync::mpsc::Receiver<(String, Vec<u8>)>,
}

impl Watch {
    /// The next message (topic, payload), or `None` after `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        self.rx.recv_timeout(timeout).ok()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `mosquitto_sub` on `filter` and return once the broker confirmed the subscription.
pub fn watch(server: &Server, filter: &str) -> Result<Watch> {
    use std::io::BufRead;
    // stdout is block-buffered into a pipe: `stdbuf -oL` makes the SUBACK line visible.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args(["-t", filter, "-d", "-F", "MSG %t %x"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("run mosquitto_sub")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("SUBACK") {
                let _ = ready_tx.send(());
            } else if let Some(rest) = line.strip_prefix("MSG ")
                && let Some((topic, hex)) = rest.rsplit_once(' ')
            {
                let bytes = (0..hex.len() / 2)
                    .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                    .collect();
                if tx.send((topic.to_string(), bytes)).is_err() {
                    break;
                }
            }
        }
    });
    let watch = Watch { child, rx };
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("mosquitto_sub got no SUBACK")?;
    Ok(watch)
}

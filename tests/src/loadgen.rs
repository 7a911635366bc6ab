//! A load generator for the benchmarks: an MQTT 3.1.1 publisher on a plain blocking socket
//! that encodes PUBLISH packets itself and writes many per `write` call.
//!
//! The benchmarks measure parkguard's subscriber, not the publisher; a general MQTT client
//! (rumqttc, one task wake-up and one socket write per message) spent ~3.5 µs of CPU per
//! message and competed with the broker and the subscriber for this machine's 2 cores.
//! This one spends a fraction of that, so more of the machine is left to what is measured.
//! QoS 1 is supported with a window of unacknowledged messages (a reader thread counts the
//! PUBACKs); packet ids cycle through 1..=65535.

use anyhow::{Context, Result, bail, ensure};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One publisher connection.
pub struct Publisher {
    stream: TcpStream,
    qos: u8,
    buf: Vec<u8>,
    pkid: u16,
    sent_qos1: u64,
    acked: Arc<AtomicU64>,
    reader: Option<std::thread::JoinHandle<Result<()>>>,
    /// Largest number of unacknowledged QoS 1 messages.
    pub window: u64,
}

fn put_remaining_length(buf: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        buf.push(b);
        if len == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

/// Connect to `127.0.0.1:port` with MQTT 3.1.1, clean session, as `client_id`, and wait
/// for an accepting CONNACK. The stream is left with a 10 s read timeout.
fn connect_clean(port: u16, client_id: &str) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).context("connect to the broker")?;
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(4); // 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&60u16.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    let mut pkt = vec![0x10];
    put_remaining_length(&mut pkt, body.len());
    pkt.extend_from_slice(&body);
    stream.write_all(&pkt)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (first, body) = read_packet(&mut stream).context("CONNACK")?;
    ensure!(
        first == 0x20 && body.len() == 2 && body[1] == 0,
        "broker refused the connection: {first:#x} {body:?}"
    );
    Ok(stream)
}

/// Read one packet: (first byte, body).
fn read_packet(r: &mut impl Read) -> Result<(u8, Vec<u8>)> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    let first = b[0];
    let mut len = 0usize;
    let mut mult = 1usize;
    loop {
        r.read_exact(&mut b)?;
        len += usize::from(b[0] & 0x7f) * mult;
        if b[0] & 0x80 == 0 {
            break;
        }
        mult *= 128;
        ensure!(mult <= 128 * 128 * 128, "malformed remaining length");
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((first, body))
}

impl Publisher {
    /// Connect (clean session) to `127.0.0.1:port` as `client_id` and publish at `qos` (0
    /// or 1).
    pub fn connect(port: u16, client_id: &str, qos: u8) -> Result<Self> {
        ensure!(qos <= 1, "qos {qos} not supported by the load generator");
        let stream = connect_clean(port, client_id)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(None)?;
        let acked = Arc::new(AtomicU64::new(0));
        let mut rd = stream.try_clone()?;
        let acks = acked.clone();
        let reader = std::thread::spawn(move || -> Result<()> {
            loop {
                let (first, _) = match read_packet(&mut rd) {
                    Ok(p) => p,
                    // Closed by our disconnect (or the broker): the count stands.
                    Err(_) => return Ok(()),
                };
                match first >> 4 {
                    4 => {
                        acks.fetch_add(1, Ordering::Release);
                    }
                    13 => {} // PINGRESP
                    t => bail!("unexpected packet type {t} from the broker"),
                }
            }
        });
        Ok(Self {
            stream,
            qos,
            buf: Vec::with_capacity(1 << 16),
            pkid: 0,
            sent_qos1: 0,
            acked,
            reader: Some(reader),
            window: 10_000,
        })
    }

    /// Queue one PUBLISH; it is written by [`Self::flush`] or when the buffer is full.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<()> {
        let qos1 = self.qos == 1;
        let len = 2 + topic.len() + if qos1 { 2 } else { 0 } + payload.len();
        self.buf.push(if qos1 { 0x32 } else { 0x30 });
        put_remaining_length(&mut self.buf, len);
        put_str(&mut self.buf, topic.as_bytes());
        if qos1 {
            self.pkid = if self.pkid == u16::MAX {
                1
            } else {
                self.pkid + 1
            };
            self.buf.extend_from_slice(&self.pkid.to_be_bytes());
            self.sent_qos1 += 1;
        }
        self.buf.extend_from_slice(payload);
        if self.buf.len() >= 1 << 16 {
            self.flush()?;
        }
        Ok(())
    }

    /// Write what is queued; at QoS 1 first wait until the window has room.
    pub fn flush(&mut self) -> Result<()> {
        if self.qos == 1 {
            let window = self.window.min(60_000);
            while self.sent_qos1 - self.acked.load(Ordering::Acquire) > window {
                ensure!(
                    !self.reader.as_ref().is_some_and(|r| r.is_finished()),
                    "broker connection closed"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        if !self.buf.is_empty() {
            self.stream.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// PUBACKs received so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Flush, wait (up to `patience`) until every QoS 1 message is acknowledged, disconnect.
    /// Returns the number of PUBACKs.
    pub fn finish(mut self, patience: Duration) -> Result<u64> {
        self.flush()?;
        let until = Instant::now() + patience;
        while self.qos == 1 && self.acked() < self.sent_qos1 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        let acked = self.acked();
        self.stream.write_all(&[0xe0, 0x00])?; // DISCONNECT
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            r.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        }
        ensure!(
            self.qos == 0 || acked == self.sent_qos1,
            "{} of {} QoS 1 messages acknowledged",
            acked,
            self.sent_qos1
        );
        Ok(acked)
    }
}

/// The broker's ceiling: a subscriber that does nothing with the messages. Connects to
/// `127.0.0.1:port` (clean session), subscribes to `filter` at QoS 0, signals `ready`, and
/// counts PUBLISH packets (read through a 64 KiB buffer, bodies skipped) until `n` arrived
/// or nothing came for `quiet`. Returns (count, first → last arrival). The benchmarks run
/// it beside parkguard's subscriber to show what mosquitto and the publisher leave of this
/// machine for any subscriber.
pub fn count_publishes(
    port: u16,
    filter: &str,
    n: usize,
    quiet: Duration,
    ready: std::sync::mpsc::Sender<()>,
) -> Result<(usize, Duration)> {
    let mut stream = connect_clean(port, &format!("bench-null-{}", std::process::id()))?;
    let mut body = 1u16.to_be_bytes().to_vec();
    put_str(&mut body, filter.as_bytes());
    body.push(0);
    let mut pkt = vec![0x82];
    put_remaining_length(&mut pkt, body.len());
    pkt.extend_from_slice(&body);
    stream.write_all(&pkt)?;
    let (first, _) = read_packet(&mut stream).context("SUBACK")?;
    ensure!(first == 0x90, "no SUBACK: {first:#x}");
    let _ = ready.send(());
    stream.set_read_timeout(Some(quiet))?;
    let mut r = std::io::BufReader::with_capacity(1 << 16, stream);
    let mut skip = vec![0u8; 1 << 16];
    let (mut count, mut first_at, mut last_at) = (0usize, None, Instant::now());
    while count < n {
        let mut b = [0u8; 1];
        if r.read_exact(&mut b).is_err() {
            break;
        }
        let kind = b[0] >> 4;
        let (mut len, mut mult) = (0usize, 1usize);
        loop {
            r.read_exact(&mut b)?;
            len += (b[0] & 0x7f) as usize * mult;
            if b[0] & 0x80 == 0 {
                break;
            }
            mult *= 128;
        }
        if skip.len() < len {
            skip.resize(len, 0);
        }
        r.read_exact(&mut skip[..len])?;
        if kind == 3 {
            count += 1;
            last_at = Instant::now();
            first_at.get_or_insert(last_at);
        }
    }
    Ok((count, first_at.map(|f| last_at - f).unwrap_or_default()))
}

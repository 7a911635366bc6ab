//! The Modbus poller: one task per line (connection), polling its devices on absolute
//! schedules and handing readings to the engine.
//!
//! Fault classification (STYLE.md §5):
//! - **transport fault** (connect failure, I/O error, timeout, malformed or mismatching
//!   reply): the device's points become `comm_lost` and the device is retried after the
//!   shared back-off. The connection is re-opened before the next request after I/O and
//!   protocol errors, and after timeouts on Modbus TCP (a late reply must never be taken
//!   for the next request's); an RTU line survives a silent slave. While it backs off, each of its
//!   scheduled ticks still reports `comm_lost` without touching the wire, so the operator sees
//!   the cause rather than "stale".
//! - **exception response**: the link is fine; the points of that read get
//!   `device_exception { code }`, the others of the device stay good.
//! - **values**: sentinel, 4–20 mA, range and status bits → `fault` / `out_of_range` /
//!   `maintenance` / `inhibited`; a heartbeat bit that stands still → `fault`.
//!
//! Isolation: each `tcp` device has its own connection and task, so nothing it does can
//! delay another. Devices sharing a line (an RS-485 bus, a serial server) necessarily share
//! its time: requests go one at a time and every request has a timeout. A failing device is
//! only probed at its back-off pace, and each probe (worst case one timeout of line time) is
//! placed in a gap before the next healthy device's slot, so a dead slave does not push the
//! live ones off their interval (see `defer_probe`). On serial lines the 3.5-character
//! silent interval is kept between frames, and the planner rejects lines whose polls need
//! more bus time than the baud rate gives.
//!
//! Schedules are absolute (`next = previous + interval`), so polls do not drift; when a line
//! falls behind, missed slots are skipped and counted (`polls_skipped`), never bunched.
//!
//! Back-pressure: readings go to the engine with `try_send`, one `Vec` per device poll. If
//! the engine's channel is full the batch is dropped and counted in `readings_dropped` (and
//! logged): a poller never waits on the engine, and the next poll brings fresher values.

use super::config::{Function, Transport, TransportConfig};
use super::decode::{StatusFlags, apply_status, decode_status};
use super::metrics::{DeviceMetrics, ModbusMetrics};
use super::plan::{DevicePlan, LinePlan, ModbusPlan, ReadRequest};
use crate::backoff::Backoff;
use parkguard_rules::{Quality, Reading, Timestamp};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_modbus::client::{Context, Reader, rtu, tcp};
use tokio_modbus::prelude::{Slave, SlaveContext};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

/// Start one polling task per line of `plan`. Each task runs until `shutdown` is cancelled
/// or `tx` is closed. Metrics are updated in `metrics` (build it with
/// [`ModbusMetrics::new`] from the same plan; devices missing from it get private
/// counters). Must be called inside a tokio runtime.
pub fn spawn(
    plan: &ModbusPlan,
    tx: mpsc::Sender<Vec<Reading>>,
    metrics: Arc<ModbusMetrics>,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    plan.lines
        .iter()
        .map(|line| {
            let span = info_span!("modbus_line", line = %line.key);
            let task = LineTask::new(line.clone(), &metrics, tx.clone());
            tokio::spawn(task.run(shutdown.clone()).instrument(span))
        })
        .collect()
}

/// Wall-clock now as a [`Timestamp`].
fn wall_now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Timestamp::from_nanos(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Per-point heartbeat watch: the bit must change within the timeout.
#[derive(Clone, Copy, Debug)]
struct Heartbeat {
    last: bool,
    changed_at: Instant,
}

struct DeviceState {
    plan: DevicePlan,
    metrics: Arc<DeviceMetrics>,
    next_due: Instant,
    retry_at: Option<Instant>,
    backoff: Backoff,
    heartbeats: Vec<Option<Heartbeat>>,
    alarm_levels: Vec<u8>,
    dropping: bool,
}

/// Outcome of one read.
enum ReadData {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
    Exception(u8),
}

/// Why a poll failed at the transport level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Timeout,
    Io,
    Protocol,
}

impl Fault {
    fn as_str(self) -> &'static str {
        match self {
            Fault::Timeout => "timeout",
            Fault::Io => "i/o error",
            Fault::Protocol => "protocol error",
        }
    }
}

struct LineTask {
    key: String,
    transport: Transport,
    devices: Vec<DeviceState>,
    tx: mpsc::Sender<Vec<Reading>>,
    conn: Option<Context>,
    line_backoff: Backoff,
    next_connect: Instant,
    /// Minimum silence between frames (serial lines: 3.5 characters, ≥ 1.75 ms).
    frame_gap: Duration,
    last_frame_end: Instant,
    /// When the previous poll on this line finished, and whose it was.
    last_poll_end: Instant,
    last_poll_device: Option<usize>,
}

fn seed(s: &str) -> u64 {
    // FNV-1a: stable across runs, spreads reconnects of different devices.
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl LineTask {
    fn new(line: LinePlan, metrics: &ModbusMetrics, tx: mpsc::Sender<Vec<Reading>>) -> Self {
        let now = Instant::now();
        let n = line.devices.len().max(1) as u32;
        let devices: Vec<DeviceState> = line
            .devices
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let m = metrics
                    .device(&d.device.id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(DeviceMetrics::new(&d.device.id)));
                let np = d.points.len();
                DeviceState {
                    // Stagger first polls of devices sharing a line over one interval.
                    next_due: now + d.device.poll_interval.mul_f64(i as f64 / f64::from(n)),
                    retry_at: None,
                    backoff: Backoff::new(
                        d.device.reconnect_min,
                        d.device.reconnect_max,
                        seed(&d.device.id),
                    ),
                    heartbeats: vec![None; np],
                    alarm_levels: vec![0; np],
                    metrics: m,
                    plan: d,
                    dropping: false,
                }
            })
            .collect();
        let (rmin, rmax) = devices
            .iter()
            .map(|d| (d.plan.device.reconnect_min, d.plan.device.reconnect_max))
            .fold((Duration::MAX, Duration::ZERO), |(a, b), (c, d)| {
                (a.min(c), b.max(d))
            });
        let frame_gap = line
            .transport
            .char_time()
            .map(|ct| ct.mul_f64(3.5).max(Duration::from_micros(1750)))
            .unwrap_or(Duration::ZERO);
        Self {
            line_backoff: Backoff::new(
                rmin.min(Duration::from_secs(3600)),
                rmax.max(rmin.min(Duration::from_secs(3600))),
                seed(&line.key),
            ),
            key: line.key,
            transport: line.transport,
            devices,
            tx,
            conn: None,
            next_connect: now,
            frame_gap,
            last_frame_end: now,
            last_poll_end: now,
            last_poll_device: None,
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        if self.devices.is_empty() {
            return;
        }
        loop {
            let (i, due) = self
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| (i, d.next_due))
                .min_by_key(|(_, due)| *due)
                .expect("line has devices");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sleep_until(due) => {}
            }
            let started = Instant::now();
            if self.defer_probe(i, started) {
                continue;
            }
            {
                let d = &mut self.devices[i];
                d.metrics.polls.fetch_add(1, Relaxed);
                if self.last_poll_device != Some(i)
                    && self.last_poll_end > due + Duration::from_millis(1)
                {
                    d.metrics.polls_delayed_by_line.fetch_add(1, Relaxed);
                }
                d.metrics
                    .record_lateness(started.saturating_duration_since(due));
                // Absolute schedule; skip slots already missed.
                let iv = d.plan.device.poll_interval;
                let mut next = due + iv;
                while next <= started {
                    next += iv;
                    d.metrics.polls_skipped.fetch_add(1, Relaxed);
                }
                d.next_due = next;
            }
            let poll_time = wall_now();
            let keep_going = tokio::select! {
                () = shutdown.cancelled() => return,
                k = self.poll(i, started, poll_time) => k,
            };
            self.last_poll_end = Instant::now();
            self.last_poll_device = Some(i);
            if !keep_going {
                debug!("engine channel closed; stopping");
                return;
            }
        }
    }

    /// Line-time scheduling of probes: a failing device's retry costs up to one timeout of
    /// line time. If that would run into the slot of a healthy device on the same line, the
    /// probe is moved to just after that device's poll (the healthy device keeps its
    /// interval). A probe is deferred at most `reconnect_max` past its retry time, so a
    /// line too busy to ever fit it still probes now and then. Returns true if deferred.
    fn defer_probe(&mut self, i: usize, now: Instant) -> bool {
        if self.devices.len() < 2 {
            return false;
        }
        let d = &self.devices[i];
        let Some(at) = d.retry_at else {
            return false;
        };
        if now < at || now.saturating_duration_since(at) >= d.plan.device.reconnect_max {
            return false;
        }
        // Worst case of a probe: one timeout, the silent intervals around it, and a little
        // room for timer and scheduling slack.
        let t = d.plan.device.timeout;
        let need = t + self.frame_gap * 2 + (t / 4).max(Duration::from_millis(10));
        let free_until = self
            .devices
            .iter()
            .enumerate()
            .filter(|(j, o)| *j != i && o.retry_at.is_none())
            .map(|(_, o)| o.next_due)
            .min();
        match free_until {
            Some(until) if now + need > until => {
                // Right after the healthy device's poll starts (ties go to the lower index,
                // so add a hair).
                self.devices[i].next_due = until + Duration::from_micros(1);
                true
            }
            _ => false,
        }
    }

    /// Poll device `i`. Returns false when the engine's channel is closed.
    async fn poll(&mut self, i: usize, started: Instant, poll_time: Timestamp) -> bool {
        // A device in back-off only reports comm-lost until its retry time.
        if let Some(at) = self.devices[i].retry_at
            && started < at
        {
            return self.send_comm_lost(i, poll_time);
        }
        if self.conn.is_none() {
            if started < self.next_connect {
                return self.send_comm_lost(i, poll_time);
            }
            let d = &self.devices[i];
            let t = d.plan.device.timeout;
            match timeout(t, connect(&self.transport, d.plan.device.unit)).await {
                Ok(Ok(ctx)) => {
                    d.metrics.connects.fetch_add(1, Relaxed);
                    debug!(device = %d.plan.device.id, "connected");
                    self.conn = Some(ctx);
                    self.line_backoff.reset();
                }
                res => {
                    let err = match res {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("connect timed out after {t:?}"),
                    };
                    d.metrics.connect_failures.fetch_add(1, Relaxed);
                    let delay = self.line_backoff.next_delay();
                    self.next_connect = Instant::now() + delay;
                    if self.line_backoff.attempts() == 1 {
                        warn!(error = %err, retry_in = ?delay, "Modbus connect failed");
                    } else {
                        debug!(error = %err, retry_in = ?delay, "Modbus connect failed again");
                    }
                    for d in &self.devices {
                        d.metrics.online.store(false, Relaxed);
                    }
                    return self.send_comm_lost(i, poll_time);
                }
            }
        }
        let (unit, reads, t, pause) = {
            let d = &self.devices[i].plan;
            (
                d.device.unit,
                d.reads.clone(),
                d.device.timeout,
                d.device.pause,
            )
        };
        let Some(ctx) = self.conn.as_mut() else {
            return self.send_comm_lost(i, poll_time);
        };
        ctx.set_slave(Slave(unit));
        let m = Arc::clone(&self.devices[i].metrics);
        let mut data = Vec::with_capacity(reads.len());
        let mut fault = None;
        for (k, r) in reads.iter().enumerate() {
            if k > 0 && !pause.is_zero() {
                sleep(pause).await;
            }
            if !self.frame_gap.is_zero() {
                sleep_until(self.last_frame_end + self.frame_gap).await;
            }
            m.requests.fetch_add(1, Relaxed);
            let t0 = Instant::now();
            let res = timeout(t, read(ctx, r)).await;
            self.last_frame_end = Instant::now();
            match res {
                Err(_) => {
                    m.timeouts.fetch_add(1, Relaxed);
                    fault = Some((Fault::Timeout, format!("no answer within {t:?}")));
                }
                Ok(Err(e)) => {
                    let kind = match e {
                        tokio_modbus::Error::Protocol(_) => {
                            m.protocol_errors.fetch_add(1, Relaxed);
                            Fault::Protocol
                        }
                        tokio_modbus::Error::Transport(_) => {
                            m.io_errors.fetch_add(1, Relaxed);
                            Fault::Io
                        }
                    };
                    fault = Some((kind, e.to_string()));
                }
                Ok(Ok(d)) => {
                    m.record_latency(self.last_frame_end - t0);
                    if matches!(d, ReadData::Exception(_)) {
                        m.exceptions.fetch_add(1, Relaxed);
                    } else {
                        m.responses.fetch_add(1, Relaxed);
                    }
                    data.push(d);
                }
            }
            if fault.is_some() {
                break;
            }
        }
        let receive_time = wall_now();
        let dev = &mut self.devices[i];
        if let Some((kind, err)) = fault {
            // After an I/O or protocol error the stream is in an unknown state: re-open it.
            // After a timeout, a Modbus TCP connection is re-opened too (a stalled server
            // would later answer stale transactions), but an RTU line is kept: a silent
            // slave is normal on a bus, and the RTU client clears its input before each
            // request, so a late frame cannot pass for the next answer (it would at worst
            // fail the header check and be counted as a protocol error).
            if kind != Fault::Timeout || matches!(self.transport, TransportConfig::Tcp { .. }) {
                self.conn = None;
            }
            // The heartbeat watch starts afresh when the device answers again.
            dev.heartbeats.iter_mut().for_each(|h| *h = None);
            let delay = dev.backoff.next_delay();
            dev.retry_at = Some(Instant::now() + delay.max(Duration::from_millis(1)));
            if dev.metrics.online.swap(false, Relaxed) || dev.backoff.attempts() == 1 {
                warn!(device = %dev.plan.device.id, unit, kind = kind.as_str(), error = %err, retry_in = ?delay, "Modbus device not answering; its points are comm-lost");
            }
            return self.send_comm_lost(i, poll_time);
        }
        dev.backoff.reset();
        dev.retry_at = None;
        if !dev.metrics.online.swap(true, Relaxed) {
            info!(device = %dev.plan.device.id, unit, "Modbus device answering");
        }
        let ms = u64::try_from(receive_time.millis()).unwrap_or(0);
        dev.metrics.last_success_ms.store(ms, Relaxed);
        let readings = decode_poll(dev, &data, poll_time, receive_time, Instant::now());
        self.send(i, readings)
    }

    fn send_comm_lost(&mut self, i: usize, poll_time: Timestamp) -> bool {
        let d = &self.devices[i];
        let now = wall_now();
        let readings = d
            .plan
            .points
            .iter()
            .map(|p| Reading {
                point: p.id,
                value: f64::NAN,
                unit: p.codec.unit,
                quality: Quality::CommLost,
                source_time: poll_time,
                receive_time: now,
            })
            .collect();
        self.send(i, readings)
    }

    fn send(&mut self, i: usize, readings: Vec<Reading>) -> bool {
        if readings.is_empty() {
            return true;
        }
        let d = &mut self.devices[i];
        let n = readings.len() as u64;
        match self.tx.try_send(readings) {
            Ok(()) => {
                d.metrics.readings_sent.fetch_add(n, Relaxed);
                d.dropping = false;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                d.metrics.readings_dropped.fetch_add(n, Relaxed);
                if !d.dropping {
                    warn!(device = %d.plan.device.id, line = %self.key, "engine channel full; dropping Modbus readings (counted in readings_dropped)");
                    d.dropping = true;
                }
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Turn the answered reads of one poll into readings.
fn decode_poll(
    dev: &mut DeviceState,
    data: &[ReadData],
    poll_time: Timestamp,
    receive_time: Timestamp,
    now: Instant,
) -> Vec<Reading> {
    let mut out = Vec::with_capacity(dev.plan.points.len());
    for (pi, p) in dev.plan.points.iter().enumerate() {
        let (mut value, mut quality) = match data.get(p.value.read) {
            Some(ReadData::Registers(regs)) => {
                let off = usize::from(p.value.offset);
                p.codec.decode_registers(regs.get(off..).unwrap_or(&[]))
            }
            Some(ReadData::Bits(bits)) => match bits.get(usize::from(p.value.offset)) {
                Some(b) => p.codec.decode_bit(*b),
                None => (f64::NAN, Quality::Fault),
            },
            Some(ReadData::Exception(code)) => (f64::NAN, Quality::DeviceException { code: *code }),
            None => (f64::NAN, Quality::CommLost),
        };
        if let Some((slot, map)) = &p.status {
            match data.get(slot.read) {
                Some(ReadData::Registers(regs)) => {
                    if let Some(reg) = regs.get(usize::from(slot.offset)) {
                        let flags: StatusFlags = decode_status(*reg, map);
                        if !matches!(quality, Quality::DeviceException { .. }) {
                            quality = apply_status(quality, &flags);
                        }
                        if flags.alarm_level != dev.alarm_levels[pi] {
                            info!(point = %p.tag, device = %dev.plan.device.id, level = flags.alarm_level, "device reports alarm level");
                            dev.alarm_levels[pi] = flags.alarm_level;
                        }
                        if let Some(bit) = flags.heartbeat {
                            let hb = dev.heartbeats[pi].get_or_insert(Heartbeat {
                                last: bit,
                                changed_at: now,
                            });
                            if hb.last != bit {
                                hb.last = bit;
                                hb.changed_at = now;
                            }
                            if now.saturating_duration_since(hb.changed_at) > map.heartbeat_timeout
                                && !matches!(quality, Quality::DeviceException { .. })
                            {
                                // A frozen controller behind a live link.
                                quality = Quality::Fault;
                            }
                        }
                    }
                }
                Some(ReadData::Exception(code)) => {
                    quality = Quality::DeviceException { code: *code };
                }
                _ => {}
            }
        }
        if !value.is_finite() && quality.is_good() {
            quality = Quality::Fault;
            value = f64::NAN;
        }
        out.push(Reading {
            point: p.id,
            value,
            unit: p.codec.unit,
            quality,
            source_time: poll_time,
            receive_time,
        });
    }
    out
}

/// Open the line's connection.
async fn connect(transport: &Transport, unit: u8) -> std::io::Result<Context> {
    let slave = Slave(unit);
    match transport {
        TransportConfig::Tcp { host, port } => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            Ok(tcp::attach_slave(s, slave))
        }
        TransportConfig::RtuOverTcp { host, port } => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            Ok(rtu::attach_slave(s, slave))
        }
        TransportConfig::Rtu {
            path,
            baud,
            parity,
            data_bits,
            stop_bits,
        } => {
            use tokio_serial::SerialPortBuilderExt;
            let port = tokio_serial::new(path, *baud)
                .parity(match parity {
                    super::config::Parity::None => tokio_serial::Parity::None,
                    super::config::Parity::Even => tokio_serial::Parity::Even,
                    super::config::Parity::Odd => tokio_serial::Parity::Odd,
                })
                .data_bits(if *data_bits == 7 {
                    tokio_serial::DataBits::Seven
                } else {
                    tokio_serial::DataBits::Eight
                })
                .stop_bits(if *stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                })
                .open_native_async()
                .map_err(std::io::Error::other)?;
            Ok(rtu::attach_slave(port, slave))
        }
    }
}

/// One read request; the outer error is the transport's, the exception becomes data.
async fn read(ctx: &mut Context, r: &ReadRequest) -> Result<ReadData, tokio_modbus::Error> {
    let res = match r.function {
        Function::Coil => ctx
            .read_coils(r.address, r.count)
            .await?
            .map(ReadData::Bits),
        Function::Discrete => ctx
            .read_discrete_inputs(r.address, r.count)
            .await?
            .map(ReadData::Bits),
        Function::Holding => ctx
            .read_holding_registers(r.address, r.count)
            .await?
            .map(ReadData::Registers),
        Function::Input => ctx
            .read_input_registers(r.address, r.count)
            .await?
            .map(ReadData::Registers),
    };
    Ok(res.unwrap_or_else(|e| ReadData::Exception(u8::from(e))))
}

#[cfg(test)]
mod tests {
    //! The poller against the in-process simulator (fault injection); the independent
    //! peer (pymodbus) is exercised in `tests/tests/modbus_*.rs`.
    use super::*;
    use crate::modbus::config::{ModbusDeviceConfig, ModbusPointConfig};
    use crate::modbus::plan::plan;
    use crate::modbus::sim::{self, SimDeviceSpec, SimKind};
    use parkguard_rules::{AlarmLimits, Point, PointId, PointKind, Unit};

    fn point(i: u32, unit: Unit, hi: f64) -> Point {
        Point {
            id: PointId(i),
            tag: format!("P{i}"),
            name: String::new(),
            enterprise: "E".into(),
            device: None,
            hazard_installation: None,
            area: None,
            kind: PointKind::Other,
            gas: None,
            unit,
            range_lo: 0.0,
            range_hi: hi,
            limits: AlarmLimits::default(),
            expected_interval: Duration::from_secs(1),
            location: None,
        }
    }

    async fn next_for(
        rx: &mut mpsc::Receiver<Vec<Reading>>,
        id: PointId,
        pred: impl Fn(&Reading) -> bool,
    ) -> Reading {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let batch = rx.recv().await.expect("poller alive");
                if let Some(r) = batch.into_iter().find(|r| r.point == id && pred(r)) {
                    return r;
                }
            }
        })
        .await
        .expect("reading arrives")
    }

    #[tokio::test]
    async fn polls_simulator_and_classifies_faults() {
        let sim = sim::serve(
            "127.0.0.1:0".parse().expect("addr"),
            &[
                SimDeviceSpec {
                    unit: 1,
                    kind: SimKind::Midas,
                },
                SimDeviceSpec {
                    unit: 2,
                    kind: SimKind::Oldham,
                },
            ],
        )
        .await
        .expect("sim binds");
        let port = sim.addr().port();
        let dev = |id: &str, unit: u8| {
            toml::from_str::<ModbusDeviceConfig>(&format!(
                "id = \"{id}\"\nunit = {unit}\npoll_interval_ms = 50\ntimeout_ms = 200\nreconnect_min_ms = 50\nreconnect_max_ms = 200\naddress_base = 1\ntransport = {{ kind = \"tcp\", host = \"127.0.0.1\", port = {port} }}"
            ))
            .expect("parses")
            .validate()
            .expect("valid")
        };
        let map = |s: &str| {
            toml::from_str::<ModbusPointConfig>(s)
                .expect("parses")
                .validate()
                .expect("valid")
        };
        let devices = [dev("midas", 1), dev("oldham", 2)];
        let maps = [
            map(r#"device = "midas"
                   address = 3
                   type = "f32"
                   order = "CDAB"
                   status = { address = 1, fault_bit = 1, alarm1_bit = 6, alarm2_bit = 7, heartbeat_bit = 11 }"#),
            map(r#"device = "oldham"
                   address = 102
                   type = "i16"
                   decimals = 1
                   range_margin_percent = 5"#),
        ];
        let points = [
            point(0, Unit::PercentLel, 100.0),
            point(1, Unit::Ppm, 100.0),
        ];
        let plan = plan(
            &devices,
            maps.iter().zip(&points).map(|(m, p)| (p.id, m, p)),
        )
        .expect("plans");
        let metrics = Arc::new(ModbusMetrics::new(&plan));
        let (tx, mut rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let tasks = spawn(&plan, tx, Arc::clone(&metrics), stop.clone());

        sim.set_value(1, "gas", 12.5).expect("unit 1");
        let r = next_for(&mut rx, PointId(0), |r| r.value == 12.5).await;
        assert_eq!(r.quality, Quality::Good);
        assert_eq!(r.unit, Unit::PercentLel);
        assert!(r.receive_time >= r.source_time);

        sim.set_fault(1, true).expect("unit 1");
        next_for(&mut rx, PointId(0), |r| r.quality == Quality::Fault).await;
        sim.set_fault(1, false).expect("unit 1");
        next_for(&mut rx, PointId(0), |r| r.quality == Quality::Good).await;

        sim.set_exception(2, Some(4)).expect("unit 2");
        next_for(&mut rx, PointId(1), |r| {
            r.quality == Quality::DeviceException { code: 4 }
        })
        .await;
        sim.set_exception(2, None).expect("unit 2");
        sim.set_silent(2, true).expect("unit 2");
        next_for(&mut rx, PointId(1), |r| r.quality == Quality::CommLost).await;
        // The other device is not affected while unit 2 is dead.
        sim.set_value(1, "gas", 30.0).expect("unit 1");
        next_for(&mut rx, PointId(0), |r| {
            r.value == 30.0 && r.quality.is_good()
        })
        .await;
        sim.set_silent(2, false).expect("unit 2");
        sim.set_value(2, "ch1", 7.5).expect("unit 2");
        next_for(&mut rx, PointId(1), |r| {
            r.quality.is_good() && (r.value - 7.5).abs() < 1e-9
        })
        .await;

        let snap = metrics.snapshot();
        assert!(snap[0].responses > 0 && snap[0].last_success_ms > 0);
        assert!(snap[1].timeouts > 0 && snap[1].exceptions > 0);
        stop.cancel();
        for t in tasks {
            t.await.expect("task ends cleanly");
        }
        sim.shutdown().await;
    }

    /// A controller that freezes behind a live link shows only as a heartbeat bit that
    /// stops toggling: its points go to fault, and come back when it beats again. A ramp
    /// driven by scenario code arrives as such.
    #[tokio::test]
    async fn frozen_heartbeat_is_a_fault_and_ramps_arrive() {
        let sim = sim::serve(
            "127.0.0.1:0".parse().expect("addr"),
            &[SimDeviceSpec {
                unit: 1,
                kind: SimKind::Midas,
            }],
        )
        .await
        .expect("sim binds");
        let dev = toml::from_str::<ModbusDeviceConfig>(&format!(
            "id = \"midas\"\npoll_interval_ms = 50\ntimeout_ms = 500\ntransport = {{ kind = \"tcp\", host = \"127.0.0.1\", port = {} }}",
            sim.addr().port()
        ))
        .expect("parses")
        .validate()
        .expect("valid");
        let map = toml::from_str::<ModbusPointConfig>(
            r#"device = "midas"
               address = 2
               type = "f32"
               order = "CDAB"
               status = { address = 0, fault_bit = 1, heartbeat_bit = 11, heartbeat_timeout_ms = 3000 }"#,
        )
        .expect("parses")
        .validate()
        .expect("valid");
        let p = point(0, Unit::PercentLel, 100.0);
        let plan = plan(&[dev], [(p.id, &map, &p)]).expect("plans");
        let (tx, mut rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let tasks = spawn(&plan, tx, Arc::new(ModbusMetrics::new(&plan)), stop.clone());

        sim.ramp(1, "gas", 60.0, Duration::from_millis(500))
            .expect("unit 1");
        next_for(&mut rx, PointId(0), |r| {
            r.value == 60.0 && r.quality.is_good()
        })
        .await;
        // Freeze the status word (heartbeat stops).
        sim.set_register(1, Function::Holding, 0, Some(0))
            .expect("unit 1");
        next_for(&mut rx, PointId(0), |r| r.quality == Quality::Fault).await;
        sim.set_register(1, Function::Holding, 0, None)
            .expect("unit 1");
        next_for(&mut rx, PointId(0), |r| r.quality.is_good()).await;
        stop.cancel();
        for t in tasks {
            t.await.expect("task ends cleanly");
        }
    }

    /// A full engine channel never blocks the poller: batches are dropped and counted, and
    /// polling goes on at its interval.
    #[tokio::test]
    async fn full_channel_drops_and_counts() {
        let sim = sim::serve(
            "127.0.0.1:0".parse().expect("addr"),
            &[SimDeviceSpec {
                unit: 1,
                kind: SimKind::Oldham,
            }],
        )
        .await
        .expect("sim binds");
        let dev = toml::from_str::<ModbusDeviceConfig>(&format!(
            "id = \"o\"\npoll_interval_ms = 20\ntransport = {{ kind = \"tcp\", host = \"127.0.0.1\", port = {} }}",
            sim.addr().port()
        ))
        .expect("parses")
        .validate()
        .expect("valid");
        let map =
            toml::from_str::<ModbusPointConfig>("device = \"o\"\naddress = 101\ntype = \"i16\"")
                .expect("parses")
                .validate()
                .expect("valid");
        let p = point(0, Unit::Ppm, 1000.0);
        let plan = plan(&[dev], [(p.id, &map, &p)]).expect("plans");
        let metrics = Arc::new(ModbusMetrics::new(&plan));
        // Capacity 1 and nobody reading.
        let (tx, rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let tasks = spawn(&plan, tx, Arc::clone(&metrics), stop.clone());
        let m = Arc::clone(&metrics.devices()[0]);
        tokio::time::timeout(Duration::from_secs(20), async {
            while m.polls.load(Relaxed) < 10 || m.readings_dropped.load(Relaxed) < 5 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("polling goes on and drops are counted");
        assert_eq!(m.readings_sent.load(Relaxed), 1);
        stop.cancel();
        for t in tasks {
            t.await.expect("task ends cleanly");
        }
        drop(rx);
    }

    /// The simulator's 4-in-1 detector, read with the layout its docs give, reports
    /// plausible clean-air values.
    #[tokio::test]
    async fn four_in_one_sim_reads_clean_air() {
        let sim = sim::serve(
            "127.0.0.1:0".parse().expect("addr"),
            &[SimDeviceSpec {
                unit: 3,
                kind: SimKind::FourInOne,
            }],
        )
        .await
        .expect("sim binds");
        let dev = toml::from_str::<ModbusDeviceConfig>(&format!(
            "id = \"d\"\nunit = 3\npoll_interval_ms = 50\ntransport = {{ kind = \"tcp\", host = \"127.0.0.1\", port = {} }}",
            sim.addr().port()
        ))
        .expect("parses")
        .validate()
        .expect("valid");
        let maps: Vec<_> = [
            "address = 0\ndecimals = 1",
            "address = 1\ndecimals = 1",
            "address = 2",
            "address = 3",
        ]
        .iter()
        .map(|m| {
            toml::from_str::<ModbusPointConfig>(&format!(
                "device = \"d\"\n{m}\nstatus = {{ address = 8, fault_bit = 0 }}"
            ))
            .expect("parses")
            .validate()
            .expect("valid")
        })
        .collect();
        let pts = [
            point(0, Unit::PercentLel, 100.0),
            point(1, Unit::PercentVol, 30.0),
            point(2, Unit::Ppm, 100.0),
            point(3, Unit::Ppm, 1000.0),
        ];
        let plan = plan(&[dev], maps.iter().zip(&pts).map(|(m, p)| (p.id, m, p))).expect("plans");
        assert_eq!(plan.read_count(), 1, "registers 0–8 in one read");
        let (tx, mut rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let tasks = spawn(&plan, tx, Arc::new(ModbusMetrics::new(&plan)), stop.clone());
        let batch = rx.recv().await.expect("a poll");
        let v: Vec<(f64, Quality)> = batch.iter().map(|r| (r.value, r.quality)).collect();
        assert!(v.iter().all(|(_, q)| q.is_good()), "{v:?}");
        assert!((0.0..=2.0).contains(&v[0].0), "CH4 {v:?}");
        assert!((20.5..=21.3).contains(&v[1].0), "O2 {v:?}");
        assert!((0.0..=3.0).contains(&v[2].0), "H2S {v:?}");
        assert!((0.0..=8.0).contains(&v[3].0), "CO {v:?}");
        sim.set_fault(3, true).expect("unit 3");
        next_for(&mut rx, PointId(1), |r| r.quality == Quality::Fault).await;
        stop.cancel();
        for t in tasks {
            t.await.expect("task ends cleanly");
        }
    }
}

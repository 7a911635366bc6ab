//! An in-process Modbus TCP simulator (tokio-modbus server) for `parkguard demo`,
//! `parkguard simulate`, benchmarks and fault injection in tests.
//!
//! One server answers for several unit ids (like a gateway); each unit is a simulated device
//! with a realistic register layout (DOMAIN.md §6) whose values drift plausibly and can be
//! driven by scenario code ([`SimHandle::set_value`], [`SimHandle::ramp`],
//! [`SimHandle::set_register`]) and broken on purpose ([`SimHandle::set_silent`],
//! [`SimHandle::set_exception`], [`SimHandle::set_delay`]). Unknown unit ids get no answer,
//! as on a real bus.
//!
//! Layouts (protocol addresses, 0-based; the manuals' 4xxxx numbers are these + 40001):
//!
//! | kind | holding registers |
//! |---|---|
//! | [`SimKind::Midas`] | 0 status (bit 1 fault, 6 AL1 ≥ 25, 7 AL2 ≥ 50, 11 heartbeat toggling every 2 s); 2–3 concentration f32 CDAB, channel `gas` (%LEL) |
//! | [`SimKind::Oldham`] | 101 channel `ch1` i16 ×10; 201 channel `ch2` i16 ×10 |
//! | [`SimKind::FourInOne`] | 0 `ch4` %LEL ×10, 1 `o2` %vol ×10, 2 `h2s` ppm ×1, 3 `co` ppm ×1 (u16); 4–7 decimals of each (1,1,0,0); 8 status (bit 0 fault); 16–19 alarm setpoints |
//! | [`SimKind::Bulk`] | 0..n u16 channels `r0`, `r1`, … (benchmarks) |

use super::config::{ByteOrder, DataType, Function};
use super::decode::encode_raw;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Kind of simulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimKind {
    /// Honeywell Midas-like: status word + f32 CDAB concentration.
    Midas,
    /// Oldham iTrans 2-like: two ×10 int16 channels at 101 and 201.
    Oldham,
    /// Chinese 4-in-1 RTU detector: CH4, O2, H2S, CO integers with decimals registers.
    FourInOne,
    /// `n` plain u16 registers (load tests).
    Bulk(u16),
}

/// One simulated device: a unit id and a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimDeviceSpec {
    /// Unit id it answers to.
    pub unit: u8,
    /// Register layout and behaviour.
    pub kind: SimKind,
}

#[derive(Clone, Copy, Debug)]
struct Ramp {
    from: f64,
    to: f64,
    start: Instant,
    over: Duration,
}

#[derive(Clone, Debug)]
struct Channel {
    name: String,
    address: u16,
    ty: DataType,
    order: ByteOrder,
    /// raw = value × factor
    factor: f64,
    base: f64,
    amplitude: f64,
    period_s: f64,
    phase: f64,
    lo: f64,
    hi: f64,
    ramp: Option<Ramp>,
    hold: Option<f64>,
}

impl Channel {
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &str,
        address: u16,
        ty: DataType,
        order: ByteOrder,
        factor: f64,
        base: f64,
        amplitude: f64,
        (lo, hi): (f64, f64),
        seed: u32,
    ) -> Self {
        Self {
            name: name.to_owned(),
            address,
            ty,
            order,
            factor,
            base,
            amplitude,
            period_s: 60.0 + f64::from(seed % 97),
            phase: f64::from(seed % 628) / 100.0,
            lo,
            hi,
            ramp: None,
            hold: None,
        }
    }

    fn value(&self, now: Instant, t: f64) -> f64 {
        if let Some(r) = self.ramp {
            let f = (now.saturating_duration_since(r.start).as_secs_f64()
                / r.over.as_secs_f64().max(1e-9))
            .min(1.0);
            return r.from + (r.to - r.from) * f;
        }
        if let Some(h) = self.hold {
            return h;
        }
        // Slow drift plus a faster small wobble: plausible sensor noise around the base.
        let v = self.base
            + self.amplitude * (t / self.period_s * std::f64::consts::TAU + self.phase).sin()
            + self.amplitude * 0.2 * (t * 1.7 + self.phase * 3.0).sin();
        v.clamp(self.lo, self.hi)
    }
}

#[derive(Debug)]
struct SimDevice {
    kind: SimKind,
    holding: Vec<u16>,
    input: Vec<u16>,
    coils: Vec<bool>,
    discrete: Vec<bool>,
    channels: Vec<Channel>,
    /// Registers pinned by `set_register` (not overwritten by the simulation).
    pinned: HashMap<(Function, u16), u16>,
    silent: bool,
    exception: Option<u8>,
    delay: Duration,
    fault: bool,
}

impl SimDevice {
    fn new(spec: SimDeviceSpec) -> Self {
        let u = u32::from(spec.unit);
        let s = |i: u32| u.wrapping_mul(7919).wrapping_add(i * 104_729);
        let (size, channels) = match spec.kind {
            SimKind::Midas => (
                16,
                vec![Channel::new(
                    "gas",
                    2,
                    DataType::F32,
                    ByteOrder::CDAB,
                    1.0,
                    1.0,
                    0.6,
                    (0.0, 100.0),
                    s(0),
                )],
            ),
            SimKind::Oldham => (
                256,
                vec![
                    Channel::new(
                        "ch1",
                        101,
                        DataType::I16,
                        ByteOrder::ABCD,
                        10.0,
                        1.5,
                        1.0,
                        (-2.0, 100.0),
                        s(1),
                    ),
                    Channel::new(
                        "ch2",
                        201,
                        DataType::I16,
                        ByteOrder::ABCD,
                        10.0,
                        3.0,
                        2.0,
                        (-2.0, 500.0),
                        s(2),
                    ),
                ],
            ),
            SimKind::FourInOne => (
                32,
                vec![
                    Channel::new(
                        "ch4",
                        0,
                        DataType::U16,
                        ByteOrder::ABCD,
                        10.0,
                        1.0,
                        0.8,
                        (0.0, 100.0),
                        s(3),
                    ),
                    Channel::new(
                        "o2",
                        1,
                        DataType::U16,
                        ByteOrder::ABCD,
                        10.0,
                        20.9,
                        0.1,
                        (0.0, 30.0),
                        s(4),
                    ),
                    Channel::new(
                        "h2s",
                        2,
                        DataType::U16,
                        ByteOrder::ABCD,
                        1.0,
                        1.0,
                        1.0,
                        (0.0, 100.0),
                        s(5),
                    ),
                    Channel::new(
                        "co",
                        3,
                        DataType::U16,
                        ByteOrder::ABCD,
                        1.0,
                        4.0,
                        3.0,
                        (0.0, 1000.0),
                        s(6),
                    ),
                ],
            ),
            SimKind::Bulk(n) => (
                usize::from(n),
                (0..n)
                    .map(|i| {
                        Channel::new(
                            &format!("r{i}"),
                            i,
                            DataType::U16,
                            ByteOrder::ABCD,
                            10.0,
                            50.0,
                            20.0,
                            (0.0, 6000.0),
                            s(u32::from(i)),
                        )
                    })
                    .collect(),
            ),
        };
        let mut holding = vec![0u16; size];
        if spec.kind == SimKind::FourInOne {
            holding[4..8].copy_from_slice(&[1, 1, 0, 0]);
            holding[16..20].copy_from_slice(&[250, 195, 10, 35]);
        }
        Self {
            kind: spec.kind,
            holding,
            input: vec![0; size],
            coils: vec![false; 64],
            discrete: vec![false; 64],
            channels,
            pinned: HashMap::new(),
            silent: false,
            exception: None,
            delay: Duration::ZERO,
            fault: false,
        }
    }

    /// Bring the registers up to date with the simulated values at `now`.
    fn refresh(&mut self, now: Instant, t0: Instant) {
        let t = now.saturating_duration_since(t0).as_secs_f64();
        let mut first = None;
        for c in &self.channels {
            let v = c.value(now, t);
            first.get_or_insert(v);
            let regs = encode_raw((v * c.factor).round_ties_even_if_int(c.ty), c.ty, c.order);
            for (i, r) in regs.into_iter().enumerate() {
                if let Some(slot) = self.holding.get_mut(usize::from(c.address) + i) {
                    *slot = r;
                }
            }
        }
        match self.kind {
            SimKind::Midas => {
                let v = first.unwrap_or(0.0);
                let hb = (t / 2.0) as u64 % 2 == 1;
                self.holding[0] = u16::from(self.fault) << 1
                    | u16::from(v >= 25.0) << 6
                    | u16::from(v >= 50.0) << 7
                    | u16::from(hb) << 11;
            }
            SimKind::FourInOne => self.holding[8] = u16::from(self.fault),
            _ => {}
        }
        for ((f, a), v) in &self.pinned {
            let table = match f {
                Function::Input => &mut self.input,
                _ => &mut self.holding,
            };
            if let Some(slot) = table.get_mut(usize::from(*a)) {
                *slot = *v;
            }
        }
    }
}

trait RoundIfInt {
    fn round_ties_even_if_int(self, ty: DataType) -> f64;
}
impl RoundIfInt for f64 {
    fn round_ties_even_if_int(self, ty: DataType) -> f64 {
        match ty {
            DataType::F32 | DataType::F64 => self,
            _ => self.round(),
        }
    }
}

#[derive(Debug)]
struct SimState {
    t0: Instant,
    devices: HashMap<u8, SimDevice>,
}

/// Errors of the simulator's control calls.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimError {
    /// No device with that unit id.
    #[error("no simulated device has unit id {0}")]
    NoUnit(u8),
    /// The device has no channel of that name.
    #[error("simulated device {unit} has no channel `{channel}`")]
    NoChannel {
        /// Unit.
        unit: u8,
        /// Channel name asked for.
        channel: String,
    },
}

/// A running simulator. Stops when [`SimHandle::shutdown`] is called or the handle drops.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<Mutex<SimState>>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn lock(state: &Mutex<SimState>) -> MutexGuard<'_, SimState> {
    // A panic while holding the lock leaves plain register data: still usable.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimHandle {
    /// The address the server listens on (the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn with<R>(&self, unit: u8, f: impl FnOnce(&mut SimDevice) -> R) -> Result<R, SimError> {
        let mut s = lock(&self.state);
        s.devices
            .get_mut(&unit)
            .map(f)
            .ok_or(SimError::NoUnit(unit))
    }
    fn with_channel(
        &self,
        unit: u8,
        channel: &str,
        f: impl FnOnce(&mut Channel, Instant, f64),
    ) -> Result<(), SimError> {
        let mut s = lock(&self.state);
        let t = Instant::now().saturating_duration_since(s.t0).as_secs_f64();
        let d = s.devices.get_mut(&unit).ok_or(SimError::NoUnit(unit))?;
        let c = d
            .channels
            .iter_mut()
            .find(|c| c.name == channel)
            .ok_or_else(|| SimError::NoChannel {
                unit,
                channel: channel.to_owned(),
            })?;
        f(c, Instant::now(), t);
        Ok(())
    }
    /// Hold a channel at `value` (engineering units), stopping drift and ramps.
    pub fn set_value(&self, unit: u8, channel: &str, value: f64) -> Result<(), SimError> {
        self.with_channel(unit, channel, |c, _, _| {
            c.ramp = None;
            c.hold = Some(value);
        })
    }
    /// Ramp a channel linearly from its current value to `target` over `over`, then hold it
    /// (a leak).
    pub fn ramp(
        &self,
        unit: u8,
        channel: &str,
        target: f64,
        over: Duration,
    ) -> Result<(), SimError> {
        self.with_channel(unit, channel, |c, now, t| {
            let from = c.value(now, t);
            c.ramp = Some(Ramp {
                from,
                to: target,
                start: now,
                over,
            });
            c.hold = Some(target);
        })
    }
    /// Let a channel drift freely again.
    pub fn release(&self, unit: u8, channel: &str) -> Result<(), SimError> {
        self.with_channel(unit, channel, |c, _, _| {
            c.ramp = None;
            c.hold = None;
        })
    }
    /// Pin a raw register (holding or input) to a value; `None` unpins it.
    pub fn set_register(
        &self,
        unit: u8,
        function: Function,
        address: u16,
        value: Option<u16>,
    ) -> Result<(), SimError> {
        self.with(unit, |d| match value {
            Some(v) => {
                d.pinned.insert((function, address), v);
            }
            None => {
                d.pinned.remove(&(function, address));
            }
        })
    }
    /// Set the device's fault status bit.
    pub fn set_fault(&self, unit: u8, fault: bool) -> Result<(), SimError> {
        self.with(unit, |d| d.fault = fault)
    }
    /// Make a unit stop answering (dead slave) or answer again.
    pub fn set_silent(&self, unit: u8, silent: bool) -> Result<(), SimError> {
        self.with(unit, |d| d.silent = silent)
    }
    /// Answer every request of a unit with this exception code (`None`: normal answers).
    pub fn set_exception(&self, unit: u8, code: Option<u8>) -> Result<(), SimError> {
        self.with(unit, |d| d.exception = code)
    }
    /// Delay every answer of a unit (slow device).
    pub fn set_delay(&self, unit: u8, delay: Duration) -> Result<(), SimError> {
        self.with(unit, |d| d.delay = delay)
    }
    /// Stop serving (open connections are closed) and wait for the server task.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

#[derive(Clone)]
struct SimService {
    state: Arc<Mutex<SimState>>,
}

type Answer = Result<Option<Response>, ExceptionCode>;

fn slice<T: Clone>(table: &[T], addr: u16, cnt: u16) -> Result<Vec<T>, ExceptionCode> {
    let a = usize::from(addr);
    let e = a + usize::from(cnt);
    if cnt == 0 || e > table.len() {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(table[a..e].to_vec())
}

impl SimService {
    fn answer(&self, req: SlaveRequest<'static>) -> (Duration, Answer) {
        let mut s = lock(&self.state);
        let t0 = s.t0;
        let Some(d) = s.devices.get_mut(&req.slave) else {
            return (Duration::ZERO, Ok(None));
        };
        if d.silent {
            return (Duration::ZERO, Ok(None));
        }
        if let Some(code) = d.exception {
            return (d.delay, Err(ExceptionCode::new(code)));
        }
        d.refresh(Instant::now(), t0);
        let r = match req.request {
            Request::ReadCoils(a, n) => slice(&d.coils, a, n).map(Response::ReadCoils),
            Request::ReadDiscreteInputs(a, n) => {
                slice(&d.discrete, a, n).map(Response::ReadDiscreteInputs)
            }
            Request::ReadHoldingRegisters(a, n) => {
                slice(&d.holding, a, n).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(a, n) => {
                slice(&d.input, a, n).map(Response::ReadInputRegisters)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        (d.delay, r.map(Some))
    }
}

impl tokio_modbus::server::Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let (delay, answer) = self.answer(req);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer
        })
    }
}

/// Start a simulator on `addr` (port 0 picks a free port; see [`SimHandle::addr`]) with
/// the given devices. Must be called inside a tokio runtime.
pub async fn serve(addr: SocketAddr, devices: &[SimDeviceSpec]) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(Mutex::new(SimState {
        t0: Instant::now(),
        devices: devices
            .iter()
            .map(|s| (s.unit, SimDevice::new(*s)))
            .collect(),
    }));
    let svc = SimService {
        state: Arc::clone(&state),
    };
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        let server = Server::new(listener);
        let on_connected = move |stream, peer| {
            let svc = svc.clone();
            async move { accept_tcp_connection(stream, peer, move |_| Ok(Some(svc.clone()))) }
        };
        let on_error = |e: std::io::Error| debug!(error = %e, "simulator connection ended");
        let res = server
            .serve_until(
                &on_connected,
                on_error,
                async move { stop.cancelled().await },
            )
            .await;
        if let Err(e) = res {
            debug!(error = %e, "simulator stopped");
        }
    });
    Ok(SimHandle {
        addr,
        state,
        cancel,
        task: Some(task),
    })
}

/// The demo park's devices: one of each realistic kind.
pub fn demo_devices() -> Vec<SimDeviceSpec> {
    vec![
        SimDeviceSpec {
            unit: 1,
            kind: SimKind::Midas,
        },
        SimDeviceSpec {
            unit: 2,
            kind: SimKind::Oldham,
        },
        SimDeviceSpec {
            unit: 3,
            kind: SimKind::FourInOne,
        },
    ]
}

//! Shared helpers of the Modbus tests: build devices/points from TOML as a user writes
//! them, run the real poller, and wait for readings.
#![allow(dead_code)]

use parkguard_drivers::modbus::config::{
    ModbusDevice, ModbusDeviceConfig, ModbusMapping, ModbusPointConfig,
};
use parkguard_drivers::modbus::{ModbusMetrics, plan, spawn};
use parkguard_rules::{AlarmLimits, Point, PointId, PointKind, Quality, Reading, Unit};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A `[[modbus_device]]` table, validated.
pub fn device(toml_text: &str) -> ModbusDevice {
    toml::from_str::<ModbusDeviceConfig>(toml_text)
        .expect("device table parses")
        .validate()
        .expect("device table is valid")
}

/// A point's `modbus = { ... }` table, validated.
pub fn mapping(toml_text: &str) -> ModbusMapping {
    toml::from_str::<ModbusPointConfig>(toml_text)
        .expect("modbus table parses")
        .validate()
        .expect("modbus table is valid")
}

/// A point with this id, unit and range.
pub fn point(i: u32, unit: Unit, lo: f64, hi: f64) -> Point {
    Point {
        id: PointId(i),
        tag: format!("P{i}"),
        name: format!("point {i}"),
        enterprise: "E1".into(),
        device: None,
        hazard_installation: None,
        area: None,
        kind: PointKind::Other,
        gas: None,
        unit,
        range_lo: lo,
        range_hi: hi,
        limits: AlarmLimits::default(),
        expected_interval: Duration::from_secs(1),
        location: None,
    }
}

/// The poller running against a peer.
pub struct Rig {
    pub rx: mpsc::Receiver<Vec<Reading>>,
    pub metrics: Arc<ModbusMetrics>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Rig {
    /// Plan and start polling.
    pub fn start(devices: &[ModbusDevice], points: &[(ModbusMapping, Point)]) -> Rig {
        let plan = plan(devices, points.iter().map(|(m, p)| (p.id, m, p))).expect("plan");
        let metrics = Arc::new(ModbusMetrics::new(&plan));
        // Test channel: large, so nothing is dropped while a test looks elsewhere.
        let (tx, rx) = mpsc::channel(10_000);
        let stop = CancellationToken::new();
        let tasks = spawn(&plan, tx, Arc::clone(&metrics), stop.clone());
        Rig {
            rx,
            metrics,
            stop,
            tasks,
        }
    }

    /// Wait (up to 30 s) for a reading of `id` satisfying `pred`; panics with the last
    /// reading seen otherwise.
    pub async fn wait_for(
        &mut self,
        id: u32,
        what: &str,
        pred: impl Fn(&Reading) -> bool,
    ) -> Reading {
        let mut last = None;
        let res = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let batch = self.rx.recv().await.expect("poller alive");
                for r in batch {
                    if r.point == PointId(id) {
                        if pred(&r) {
                            return r;
                        }
                        last = Some(r);
                    }
                }
            }
        })
        .await;
        match res {
            Ok(r) => r,
            Err(_) => panic!("point {id}: no reading with {what} within 30 s; last: {last:?}"),
        }
    }

    /// The latest reading of every point once each has reported at least once with a
    /// quality other than comm-lost (or 30 s passed).
    pub async fn settle(&mut self, n: usize) -> HashMap<u32, Reading> {
        let mut latest: HashMap<u32, Reading> = HashMap::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let batch = self.rx.recv().await.expect("poller alive");
                for r in batch {
                    latest.insert(r.point.0, r);
                }
                if latest.len() >= n && latest.values().all(|r| r.quality != Quality::CommLost) {
                    return;
                }
            }
        })
        .await;
        latest
    }

    /// Collect every reading for `d`.
    pub async fn collect(&mut self, d: Duration) -> Vec<Reading> {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(d, async {
            while let Some(b) = self.rx.recv().await {
                out.extend(b);
            }
        })
        .await;
        out
    }

    /// Stop the pollers and wait for them.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.await.expect("poller task ends cleanly");
        }
    }
}

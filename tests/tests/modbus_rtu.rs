//! Modbus RTU on a serial line: a socat PTY pair with a pymodbus serial server on one end
//! and parkguard's poller on the other.

mod modbus_common;

use modbus_common::{Rig, device, mapping, point};
use parkguard_rules::{PointId, Quality, Unit};
use parkguard_tests::servers::{pymodbus, socat};
use serde_json::json;
use std::time::Duration;

fn rtu_device(id: &str, unit: u8, path: &std::path::Path, extra: &str) -> String {
    format!(
        "id = \"{id}\"\nunit = {unit}\ntransport = {{ kind = \"rtu\", path = \"{}\", baud = 19200, parity = \"none\" }}\n{extra}",
        path.display()
    )
}

/// A Chinese 4-in-1 detector (integers ÷ 10^decimals) and a Midas-like float on one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_line_decodes_two_detectors() {
    let pty = socat::pty_pair().expect("socat");
    let _server = pymodbus::start_rtu(
        json!({"baud": 19200, "devices": [
            {"unit": 3, "holding": {"0": 125, "1": 209, "2": 7, "3": 35, "8": 0}},
            {"unit": 4, "values": [{"table": "holding", "address": 2, "type": "f32", "order": "CDAB", "value": 31.25}],
                        "holding": {"0": 0b1000_0100_0000}}
        ]}),
        &pty.a,
    )
    .expect("pymodbus serial server");
    let extra =
        "poll_interval_ms = 200\ntimeout_ms = 300\nreconnect_min_ms = 100\nreconnect_max_ms = 500";
    let devices = [
        device(&rtu_device("four-in-one", 3, &pty.b, extra)),
        device(&rtu_device("midas", 4, &pty.b, extra)),
    ];
    let status = "status = { address = 8, fault_bit = 0 }";
    let maps = [
        (
            mapping(&format!(
                "device = \"four-in-one\"\naddress = 0\ndecimals = 1\n{status}"
            )),
            point(0, Unit::PercentLel, 0.0, 100.0),
        ),
        (
            mapping(&format!(
                "device = \"four-in-one\"\naddress = 1\ndecimals = 1\n{status}"
            )),
            point(1, Unit::PercentVol, 0.0, 30.0),
        ),
        (
            mapping(&format!("device = \"four-in-one\"\naddress = 2\n{status}")),
            point(2, Unit::Ppm, 0.0, 100.0),
        ),
        (
            mapping(&format!("device = \"four-in-one\"\naddress = 3\n{status}")),
            point(3, Unit::Ppm, 0.0, 1000.0),
        ),
        (
            mapping(
                "device = \"midas\"\naddress = 2\ntype = \"f32\"\norder = \"CDAB\"\nstatus = { address = 0, fault_bit = 1, alarm1_bit = 6, alarm2_bit = 7, heartbeat_bit = 11 }",
            ),
            point(4, Unit::PercentLel, 0.0, 100.0),
        ),
    ];
    let mut rig = Rig::start(&devices, &maps);
    let latest = rig.settle(5).await;
    let got: Vec<(f64, Quality)> = (0..5)
        .map(|i| (latest[&i].value, latest[&i].quality))
        .collect();
    assert_eq!(
        got,
        [
            (12.5, Quality::Good),
            (20.9, Quality::Good),
            (7.0, Quality::Good),
            (35.0, Quality::Good),
            (31.25, Quality::Good),
        ]
    );
    rig.stop().await;
}

/// Two slaves on one line, one of them dead: the live one keeps its poll interval, the dead
/// one is comm-lost and only probed at its back-off pace, each probe fitted into the gap
/// between the live slave's slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_slave_does_not_stall_the_live_one() {
    let pty = socat::pty_pair().expect("socat");
    // Only unit 1 is on the bus; the peer stays silent for unit 2.
    let _server = pymodbus::start_rtu(
        json!({"baud": 19200, "devices": [{"unit": 1, "holding": {"0": 77}}]}),
        &pty.a,
    )
    .expect("pymodbus serial server");
    let interval = Duration::from_millis(400);
    let devices = [
        device(&rtu_device(
            "live",
            1,
            &pty.b,
            "poll_interval_ms = 400\ntimeout_ms = 300\nreconnect_min_ms = 100\nreconnect_max_ms = 1000",
        )),
        // Same interval, its slots half-way between the live slave's (the line staggers
        // them): a probe occupying the line for its 250 ms timeout in its own slot would
        // run into the live slave's next slot every time.
        device(&rtu_device(
            "dead",
            2,
            &pty.b,
            "poll_interval_ms = 400\ntimeout_ms = 250\nreconnect_min_ms = 300\nreconnect_max_ms = 1000",
        )),
    ];
    let maps = [
        (
            mapping("device = \"live\"\naddress = 0"),
            point(0, Unit::None, 0.0, 100.0),
        ),
        (
            mapping("device = \"dead\"\naddress = 0"),
            point(1, Unit::None, 0.0, 100.0),
        ),
    ];
    let mut rig = Rig::start(&devices, &maps);
    rig.wait_for(0, "live good", |r| r.quality.is_good() && r.value == 77.0)
        .await;
    rig.wait_for(1, "dead comm-lost", |r| r.quality == Quality::CommLost)
        .await;
    // The first failure of the dead slave (before anyone knew it was dead) took its own
    // slot and may have delayed the live one once; measure from after that.
    rig.wait_for(0, "live good after the first failure", |r| {
        r.quality.is_good()
    })
    .await;
    let before = rig.metrics.snapshot();

    let window = Duration::from_secs(8);
    let readings = rig.collect(window).await;
    let live: Vec<_> = readings.iter().filter(|r| r.point == PointId(0)).collect();
    let dead: Vec<_> = readings.iter().filter(|r| r.point == PointId(1)).collect();
    assert!(
        live.iter().all(|r| r.quality.is_good() && r.value == 77.0),
        "live point lost quality: {live:?}"
    );
    assert!(dead.iter().all(|r| r.quality == Quality::CommLost));
    let expected = window.as_secs_f64() / interval.as_secs_f64();
    assert!(
        live.len() as f64 >= expected * 0.8,
        "live slave polled {} times in {window:?}, expected ~{expected}",
        live.len()
    );
    let after = rig.metrics.snapshot();
    let (live_m, dead_m) = (&after[0], &after[1]);
    let probes = dead_m.timeouts - before[1].timeouts;
    let delayed = live_m.polls_delayed_by_line - before[0].polls_delayed_by_line;
    eprintln!(
        "live polls {} delayed by the line {delayed}; dead probes {probes}",
        live_m.polls - before[0].polls
    );
    // The dead slave was probed again and again, far less often than it was scheduled…
    assert!(
        probes >= 4 && probes * 3 < dead_m.polls - before[1].polls,
        "{dead_m:?}"
    );
    // …and never in the live slave's slot (one allowed for a starved machine).
    assert!(
        delayed <= 1,
        "live slave pushed off its slots {delayed} times: {live_m:?}"
    );
    assert!(live_m.online && live_m.timeouts == 0, "{live_m:?}");
    rig.stop().await;
}

//! Modbus TCP (and RTU over TCP) against pymodbus, the independent peer: every type and
//! byte order, status bits, sentinels, 4–20 mA, exceptions, a dead unit id, a stalled and a
//! killed-and-restarted server.

mod modbus_common;

use modbus_common::{Rig, device, mapping, point};
use parkguard_rules::{Quality, Unit};
use parkguard_tests::servers::pymodbus;
use serde_json::json;

fn tcp_device(id: &str, unit: u8, port: u16, extra: &str) -> String {
    format!(
        "id = \"{id}\"\nunit = {unit}\npoll_interval_ms = 100\ntimeout_ms = 300\nreconnect_min_ms = 100\nreconnect_max_ms = 500\ntransport = {{ kind = \"tcp\", host = \"127.0.0.1\", port = {port} }}\n{extra}"
    )
}

const TYPES: [(&str, f64); 6] = [
    ("u16", 51234.0),
    ("i16", -12345.0),
    ("u32", 3_000_000_123.0),
    ("i32", -2_000_000_001.0),
    ("f32", -12.375),
    ("f64", 12345.678901234),
];
const ORDERS: [&str; 4] = ["ABCD", "CDAB", "BADC", "DCBA"];

fn regs_of(ty: &str) -> u32 {
    match ty {
        "u16" | "i16" => 1,
        "f64" => 4,
        _ => 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_order_and_status_bit_decodes() {
    // Values are encoded by the Python peer (struct), not by parkguard's encoder.
    let mut values = Vec::new();
    let mut maps = Vec::new();
    let mut expected = Vec::new();
    let mut addr = 10;
    for (ty, v) in TYPES {
        for order in ORDERS {
            values.push(json!({"table": "holding", "address": addr, "type": ty, "order": order, "value": v}));
            let id = maps.len() as u32;
            maps.push((
                mapping(&format!(
                    "device = \"gds\"\naddress = {addr}\ntype = \"{ty}\"\norder = \"{order}\""
                )),
                point(id, Unit::None, -1e10, 1e10),
            ));
            expected.push((id, format!("{ty} {order}"), v, Quality::Good));
            addr += regs_of(ty);
        }
    }
    // Oldham-like ×10 int16 in an input register: −15 → −1.5 ppm.
    values.push(json!({"table": "input", "address": 101, "type": "i16", "value": -15}));
    let mut add = |m: &str, unit: Unit, lo: f64, hi: f64, what: &str, v: f64, q: Quality| {
        let id = maps.len() as u32;
        maps.push((mapping(m), point(id, unit, lo, hi)));
        expected.push((id, what.to_owned(), v, q));
    };
    add(
        "device = \"gds\"\nfunction = \"input\"\naddress = 101\ntype = \"i16\"\ndecimals = 1",
        Unit::Ppm,
        -10.0,
        100.0,
        "oldham x10",
        -1.5,
        Quality::Good,
    );
    add(
        "device = \"gds\"\nfunction = \"coil\"\naddress = 3",
        Unit::None,
        0.0,
        1.0,
        "coil",
        1.0,
        Quality::Good,
    );
    add(
        "device = \"gds\"\nfunction = \"discrete\"\naddress = 5",
        Unit::None,
        0.0,
        1.0,
        "discrete",
        1.0,
        Quality::Good,
    );
    add(
        "device = \"gds\"\naddress = 100\ntype = \"bit\"\nbit = 11",
        Unit::None,
        0.0,
        1.0,
        "register bit 11",
        1.0,
        Quality::Good,
    );
    add(
        "device = \"gds\"\naddress = 100\ntype = \"bit\"\nbit = 10",
        Unit::None,
        0.0,
        1.0,
        "register bit 10",
        0.0,
        Quality::Good,
    );
    let status = "status = { address = 110, fault_bit = 1, maintenance_bit = 2, inhibit_bit = 3, alarm1_bit = 6 }";
    add(
        &format!("device = \"gds\"\naddress = 111\n{status}"),
        Unit::PercentLel,
        0.0,
        100.0,
        "status fault",
        7.0,
        Quality::Fault,
    );
    add(
        &format!(
            "device = \"gds\"\naddress = 113\n{}",
            status.replace("110", "112")
        ),
        Unit::PercentLel,
        0.0,
        100.0,
        "status maintenance",
        7.0,
        Quality::Maintenance,
    );
    add(
        &format!(
            "device = \"gds\"\naddress = 115\n{}",
            status.replace("110", "114")
        ),
        Unit::PercentLel,
        0.0,
        100.0,
        "status inhibit",
        7.0,
        Quality::Inhibited,
    );
    add(
        &format!(
            "device = \"gds\"\naddress = 117\n{}",
            status.replace("110", "116")
        ),
        Unit::PercentLel,
        0.0,
        100.0,
        "status alarm-1 only",
        30.0,
        Quality::Good,
    );
    add(
        "device = \"gds\"\naddress = 120\ntype = \"i16\"\nfault_below = -16385",
        Unit::Celsius,
        -50.0,
        150.0,
        "danfoss sentinel",
        -16386.0,
        Quality::Fault,
    );
    add(
        "device = \"gds\"\naddress = 121\nloop_current = { raw_at_4ma = 4000, raw_at_20ma = 20000 }",
        Unit::PercentLel,
        0.0,
        100.0,
        "4-20 mA at 3.5 mA",
        3.5,
        Quality::Fault,
    );
    add(
        "device = \"gds\"\naddress = 122\nloop_current = { raw_at_4ma = 4000, raw_at_20ma = 20000 }",
        Unit::PercentLel,
        0.0,
        100.0,
        "4-20 mA at 12 mA",
        50.0,
        Quality::Good,
    );
    add(
        "device = \"gds\"\naddress = 123",
        Unit::PercentLel,
        0.0,
        100.0,
        "over range",
        5000.0,
        Quality::OutOfRange,
    );
    add(
        "device = \"gds\"\naddress = 124\nunit = \"kPa\"",
        Unit::MPa,
        0.0,
        10.0,
        "kPa to MPa",
        1.5,
        Quality::Good,
    );

    let server = pymodbus::start_tcp(json!({"devices": [{
        "unit": 1,
        "size": 200,
        "values": values,
        "coils": {"3": true},
        "discrete": {"5": true},
        "holding": {
            "100": 0x0800,
            "110": 0b10, "111": 7,
            "112": 0b100, "113": 7,
            "114": 0b1000, "115": 7,
            "116": 0b100_0000, "117": 30,
            "120": 0xBFFE, "121": 3500, "122": 12000, "123": 5000, "124": 1500
        }
    }]}))
    .expect("pymodbus starts");

    let devices = [device(&tcp_device("gds", 1, server.port, ""))];
    let mut rig = Rig::start(&devices, &maps);
    let latest = rig.settle(maps.len()).await;
    let mut failures = Vec::new();
    for (id, what, v, q) in &expected {
        let Some(r) = latest.get(id) else {
            failures.push(format!("{what}: no reading"));
            continue;
        };
        let value_ok = if *q == Quality::Good || what.starts_with("status") {
            (r.value - v).abs() <= v.abs() * 1e-12
        } else {
            true
        };
        if r.quality != *q || !value_ok {
            failures.push(format!(
                "{what}: got {} {:?}, want {v} {q:?}",
                r.value, r.quality
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(latest[&0].unit, Unit::None);
    let snap = &rig.metrics.snapshot()[0];
    assert!(snap.responses > 0 && snap.exceptions == 0, "{snap:?}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_mark_their_points_and_a_silent_unit_is_comm_lost() {
    let server = pymodbus::start_tcp(json!({"devices": [{
        "unit": 1,
        "size": 200,
        "holding": {"0": 42, "150": 9},
        "fail": [150]
    }]}))
    .expect("pymodbus starts");
    let port = server.port;
    let devices = [
        device(&tcp_device("gds", 1, port, "")),
        // Unit 9 is not served: pymodbus (as our script runs it) stays silent, like a real bus.
        device(&tcp_device("ghost", 9, port, "")),
    ];
    let maps = [
        (
            mapping("device = \"gds\"\naddress = 0"),
            point(0, Unit::None, 0.0, 100.0),
        ),
        // beyond the device's 200 registers → illegal data address (2)
        (
            mapping("device = \"gds\"\naddress = 300"),
            point(1, Unit::None, 0.0, 100.0),
        ),
        // the peer's datastore fails → server device failure (4)
        (
            mapping("device = \"gds\"\naddress = 150"),
            point(2, Unit::None, 0.0, 100.0),
        ),
        (
            mapping("device = \"ghost\"\naddress = 0"),
            point(3, Unit::None, 0.0, 100.0),
        ),
    ];
    let mut rig = Rig::start(&devices, &maps);
    rig.wait_for(1, "illegal address", |r| {
        r.quality == Quality::DeviceException { code: 2 }
    })
    .await;
    rig.wait_for(2, "device failure", |r| {
        r.quality == Quality::DeviceException { code: 4 }
    })
    .await;
    rig.wait_for(3, "comm lost", |r| r.quality == Quality::CommLost)
        .await;
    // The healthy point of the same device, and the device beside the dead unit, stay good.
    let r = rig.wait_for(0, "good", |r| r.quality.is_good()).await;
    assert_eq!(r.value, 42.0);
    let after_dead = rig.wait_for(0, "good again", |r| r.quality.is_good()).await;
    assert!(after_dead.source_time > r.source_time);
    let snap = rig.metrics.snapshot();
    assert!(snap[0].exceptions >= 2, "{:?}", snap[0]);
    assert!(snap[0].online);
    assert!(snap[1].timeouts >= 1 && !snap[1].online, "{:?}", snap[1]);
    assert_eq!(snap[1].last_success_ms, 0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_server_goes_comm_lost_and_comes_back() {
    let server = pymodbus::start_tcp(json!({"devices": [{"unit": 1, "holding": {"4": 17}}]}))
        .expect("pymodbus starts");
    let devices = [device(&tcp_device("gds", 1, server.port, ""))];
    let maps = [(
        mapping("device = \"gds\"\naddress = 4"),
        point(0, Unit::None, 0.0, 100.0),
    )];
    let mut rig = Rig::start(&devices, &maps);
    rig.wait_for(0, "good", |r| r.quality.is_good() && r.value == 17.0)
        .await;
    pymodbus::stall(&server).expect("SIGSTOP");
    rig.wait_for(0, "comm lost while stalled", |r| {
        r.quality == Quality::CommLost
    })
    .await;
    pymodbus::resume(&server).expect("SIGCONT");
    rig.wait_for(0, "good after resume", |r| {
        r.quality.is_good() && r.value == 17.0
    })
    .await;
    let snap = &rig.metrics.snapshot()[0];
    assert!(snap.timeouts >= 1, "{snap:?}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_server_recovers_without_restarting_the_poller() {
    let mut server = pymodbus::start_tcp(json!({"devices": [{"unit": 1, "holding": {"4": 23}}]}))
        .expect("pymodbus starts");
    let devices = [device(&tcp_device("gds", 1, server.port, ""))];
    let maps = [(
        mapping("device = \"gds\"\naddress = 4"),
        point(0, Unit::None, 0.0, 100.0),
    )];
    let mut rig = Rig::start(&devices, &maps);
    rig.wait_for(0, "good", |r| r.quality.is_good() && r.value == 23.0)
        .await;
    server.kill();
    rig.wait_for(0, "comm lost after kill", |r| {
        r.quality == Quality::CommLost
    })
    .await;
    pymodbus::restart_tcp(&mut server).expect("restart");
    rig.wait_for(0, "good after restart", |r| {
        r.quality.is_good() && r.value == 23.0
    })
    .await;
    let snap = &rig.metrics.snapshot()[0];
    assert!(snap.connects >= 2, "{snap:?}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_blocks_are_split_below_125_registers() {
    // pymodbus answers a read of more than 125 registers with a malformed frame; a plan
    // that ever asked for one would show up here as comm-lost.
    let holding: serde_json::Map<String, serde_json::Value> =
        (0..300).map(|a| (a.to_string(), json!(a + 1000))).collect();
    let server =
        pymodbus::start_tcp(json!({"devices": [{"unit": 1, "size": 300, "holding": holding}]}))
            .expect("pymodbus starts");
    let devices = [device(&tcp_device("gds", 1, server.port, ""))];
    let maps: Vec<_> = (0..300u32)
        .map(|a| {
            (
                mapping(&format!("device = \"gds\"\naddress = {a}")),
                point(a, Unit::None, 0.0, 2000.0),
            )
        })
        .collect();
    let mut rig = Rig::start(&devices, &maps);
    let latest = rig.settle(300).await;
    for a in 0..300u32 {
        let r = latest.get(&a).expect("every point reported");
        assert_eq!(
            (r.value, r.quality),
            (f64::from(a + 1000), Quality::Good),
            "address {a}"
        );
    }
    let snap = &rig.metrics.snapshot()[0];
    assert_eq!(snap.protocol_errors, 0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_tcp_serves_two_units_on_one_connection() {
    let server = pymodbus::start_tcp(json!({"framer": "rtu", "devices": [
        {"unit": 1, "values": [{"table": "holding", "address": 2, "type": "f32", "order": "CDAB", "value": 12.5}]},
        {"unit": 2, "holding": {"101": 250}}
    ]}))
    .expect("pymodbus starts");
    let t = format!(
        "transport = {{ kind = \"rtu_over_tcp\", host = \"127.0.0.1\", port = {} }}",
        server.port
    );
    let devices = [
        device(&format!(
            "id = \"midas\"\nunit = 1\npoll_interval_ms = 100\ntimeout_ms = 300\n{t}"
        )),
        device(&format!(
            "id = \"oldham\"\nunit = 2\npoll_interval_ms = 100\ntimeout_ms = 300\n{t}"
        )),
    ];
    let maps = [
        (
            mapping("device = \"midas\"\naddress = 2\ntype = \"f32\"\norder = \"CDAB\""),
            point(0, Unit::PercentLel, 0.0, 100.0),
        ),
        (
            mapping("device = \"oldham\"\naddress = 101\ntype = \"i16\"\ndecimals = 1"),
            point(1, Unit::PercentLel, 0.0, 100.0),
        ),
    ];
    let mut rig = Rig::start(&devices, &maps);
    let latest = rig.settle(2).await;
    assert_eq!(
        (latest[&0].value, latest[&0].quality),
        (12.5, Quality::Good)
    );
    assert_eq!(
        (latest[&1].value, latest[&1].quality),
        (25.0, Quality::Good)
    );
    rig.stop().await;
}

//! The CLI as a user runs it: the real `parkguard` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_parkguard"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("daemon/ has a parent")
        .to_path_buf()
}

#[test]
fn planted_mistakes_are_all_reported_with_line_and_column() {
    let file = root().join("daemon/tests/data/five_mistakes.toml");
    let out = bin().arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "exit status 2 on errors");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let name = file.display().to_string();
    let expect = [
        (17, 1, "unknown field `colour`"),
        (27, 34, "limit `level1` (30) must be below `level2` (20)"),
        (30, 7, "duplicate tag `GT-2` (first defined on line 20)"),
        (
            36,
            26,
            "limit `hh` = 3 MPa lies outside the measuring range [0, 2.5] MPa",
        ),
        (
            41,
            14,
            "names enterprise `E9`, which no `[[enterprise]]` defines",
        ),
        (45, 28, "cannot be converted to the point's unit MPa"),
    ];
    for (line, col, msg) in expect {
        let prefix = format!("{name}:{line}:{col}: ");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(msg)),
            "missing `{prefix}…{msg}` in:\n{stderr}"
        );
    }
    assert!(stderr.contains("6 error(s)"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout for a bad file");
}

#[test]
fn every_example_config_passes_check_config() {
    let dir = root().join("deploy/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no example configs in {}", dir.display());
    for f in files {
        let out = bin().arg("check-config").arg(&f).output().unwrap();
        assert!(
            out.status.success(),
            "{} failed:\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.contains(": ok: park `"), "{stdout}");
    }
}

#[test]
fn syntax_errors_are_reported_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("broken.toml");
    std::fs::write(&f, "[park]\nid = \"x\"\nname = \"y\n\n[[point]\n").unwrap();
    let out = bin().arg("check-config").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let prefix = format!("{}:3:", f.display());
    assert!(stderr.lines().any(|l| l.starts_with(&prefix)), "{stderr}");
}

#[test]
fn missing_park_section_and_unknown_section() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    std::fs::write(&f, "[parc]\nid = \"x\"\n").unwrap();
    let out = bin().arg("check-config").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains(":1:2: unknown section `parc`"), "{stderr}");
    assert!(stderr.contains("missing `[park]` section"), "{stderr}");
}

#[test]
fn run_refuses_to_start_on_a_bad_config() {
    let file = root().join("daemon/tests/data/five_mistakes.toml");
    let out = bin()
        .arg("run")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("nothing was started"), "{stderr}");
}

#[test]
fn config_schema_is_json_schema_of_every_section() {
    let out = bin().arg("config-schema").output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let props = v["properties"].as_object().expect("properties");
    for s in [
        "park",
        "data",
        "api",
        "enterprise",
        "point",
        "modbus_device",
        "mqtt_subscription",
    ] {
        assert!(props.contains_key(s), "schema lacks `{s}`");
    }
    assert_eq!(v["additionalProperties"], serde_json::Value::Bool(false));
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        &["--help"][..],
        &["run", "--help"],
        &["check-config", "--help"],
        &["config-schema", "--help"],
        &["demo", "--help"],
    ] {
        let out = bin().args(sub).output().unwrap();
        assert!(out.status.success(), "{sub:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{sub:?}"
        );
    }
}

#[test]
fn run_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("park.toml");
    let text = std::fs::read_to_string(root().join("deploy/examples/demo.toml"))
        .unwrap()
        .replace(
            "dir = \"parkguard-data\"",
            &format!("dir = {:?}", dir.path().join("data")),
        )
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"");
    std::fs::write(&cfg, text).unwrap();
    let child = bin()
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the data dir: the daemon has started.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !dir.path().join("data").exists() {
        assert!(std::time::Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit after SIGTERM: {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[test]
fn backtest_reports_the_effect_of_a_raised_limit() {
    let dir = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string(root().join("deploy/examples/demo.toml")).unwrap();
    let cur = dir.path().join("current.toml");
    let cand = dir.path().join("candidate.toml");
    std::fs::write(&cur, &demo).unwrap();
    let changed = demo.replace(
        "limits = { h = 1.2, hh = 1.4, l = 0.1 }",
        "limits = { h = 1.3, hh = 1.4, l = 0.1 }",
    );
    assert_ne!(
        changed, demo,
        "the demo's PT-201 limits moved: update this test"
    );
    std::fs::write(&cand, changed).unwrap();
    // Six hours at 0.1 Hz: a 60 s excursion every hour, alternating 1.25 and 1.35 MPa.
    let mut lp = String::new();
    let t0: i64 = 1_764_115_200;
    for i in 0..(6 * 360) {
        let sec = i * 10;
        let peak = if (sec / 3600) % 2 == 0 { 1.25 } else { 1.35 };
        let v = if sec % 3600 < 60 { peak } else { 0.8 };
        lp.push_str(&format!(
            "reading,park=yingkou-demo,enterprise=DEMO01,tag=DEMO01-PT-201,kind=pressure,unit=MPa value={v},quality=0i {}\n",
            (t0 + sec) * 1_000_000_000
        ));
    }
    lp.push_str("reading,tag=NOT-A-POINT value=1 1764115200000000000\n");
    let data = dir.path().join("history.lp");
    std::fs::write(&data, lp).unwrap();
    let out = bin()
        .args(["backtest", "--json", "--config"])
        .arg(&cur)
        .arg("--limits")
        .arg(&cand)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["readings"], 2160);
    assert_eq!(r["changed_points"][0], "DEMO01-PT-201");
    // 6 excursions over 1.2 MPa; 3 of them over 1.3 MPa.
    assert_eq!(r["current"]["alarms"], 6, "{r}");
    assert_eq!(r["candidate"]["alarms"], 3, "{r}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 unknown tag(s)"),
        "unknown tags are reported: {stderr}"
    );
}

#[test]
fn simulate_serves_modbus_until_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = bin()
        .args(["simulate", "--no-mqtt", "--config"])
        .arg(root().join("deploy/examples/demo.toml"))
        .arg("--modbus")
        .arg(format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // A Modbus TCP read of holding register 2-3 (the Midas-like f32) from unit 1.
    let answer = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            s.write_all(&[0, 1, 0, 0, 0, 6, 1, 3, 0, 2, 0, 2]).unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).unwrap();
            break buf;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "simulator did not listen"
        );
        if let Ok(Some(st)) = child.try_wait() {
            panic!("simulate exited early: {st:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // MBAP echo, unit 1, function 3, 4 bytes.
    assert_eq!(&answer[..9], &[0, 1, 0, 0, 0, 7, 1, 3, 4]);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
}

#[test]
fn driver_section_mistakes_are_reported_with_line_and_column() {
    let file = root().join("daemon/tests/data/driver_mistakes.toml");
    let out = bin().arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let name = file.display().to_string();
    for (line, col, msg) in [
        (8, 17, "200 registers per read is outside 1–125"),
        (11, 10, "no `[[mqtt_broker]]` with id `nowhere`"),
        (
            28,
            21,
            "Modbus device `D9`, which no `[[modbus_device]]` defines",
        ),
    ] {
        let prefix = format!("{name}:{line}:{col}: ");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(msg)),
            "missing `{prefix}…{msg}` in:\n{stderr}"
        );
    }
    assert!(stderr.contains("3 error(s)"), "{stderr}");
}

#[test]
fn user_add_writes_an_argon2_hash_and_refuses_weak_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    let out = bin()
        .args(["user", "add", "--file"])
        .arg(&file)
        .args(["zhang.wei", "operator"])
        .env("PARKGUARD_PASSWORD", "control-room-2026!")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("zhang.wei"), "{text}");
    assert!(text.contains("$argon2"), "{text}");
    assert!(
        !text.contains("control-room-2026!"),
        "never the password itself"
    );
    let weak = bin()
        .args(["user", "add", "--file"])
        .arg(&file)
        .args(["li.na", "engineer"])
        .env("PARKGUARD_PASSWORD", "admin")
        .output()
        .unwrap();
    assert!(!weak.status.success(), "a weak password is refused");
}

#[test]
fn drill_runs_offline_journals_with_the_drill_id_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("park.toml");
    let text = std::fs::read_to_string(root().join("deploy/examples/demo.toml"))
        .unwrap()
        .replace(
            "dir = \"parkguard-data\"",
            &format!("dir = {:?}", dir.path().join("data")),
        );
    std::fs::write(&cfg, text).unwrap();
    let out = bin()
        .args(["drill", "run", "--id", "d-2026-11", "--config"])
        .arg(&cfg)
        .arg("--scenario")
        .arg(root().join("deploy/scenarios/chlorine-release.toml"))
        .arg("--report-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("d-2026-11.json")).unwrap())
            .unwrap();
    assert_eq!(report["drill"], "d-2026-11");
    assert!(report["kpi"]["alarms"].as_u64().unwrap() >= 4, "{report}");
    let html = std::fs::read_to_string(dir.path().join("d-2026-11.html")).unwrap();
    assert!(html.contains("演练 / DRILL"));
    // Every journalled event of the run carries the drill id.
    let j =
        parkguard::store::journal::Journal::open_readonly(&dir.path().join("data/journal.sqlite"))
            .unwrap();
    let all = j
        .query(&parkguard::store::journal::EventFilter {
            limit: Some(100_000),
            ..Default::default()
        })
        .unwrap();
    assert!(!all.is_empty());
    assert!(
        all.iter().all(|r| r.drill.as_deref() == Some("d-2026-11")),
        "a drill event without its drill id"
    );
}

#[test]
fn check_config_rejects_demo_users_in_a_production_park() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    parkguard::auth::create_demo_users(&data.join("users.toml")).unwrap();
    let text = std::fs::read_to_string(root().join("deploy/examples/demo.toml"))
        .unwrap()
        .replace("dir = \"parkguard-data\"", &format!("dir = {:?}", data))
        .replace(
            "timezone = \"Asia/Shanghai\"",
            "timezone = \"Asia/Shanghai\"\nproduction = true",
        );
    let cfg = dir.path().join("park.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = bin().arg("check-config").arg(&cfg).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("users file"));
}

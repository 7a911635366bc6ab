//! What can be checked of deploy/ on this machine runs here.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED: systemd-analyze is not installed on this machine");
        return;
    }
    let unit = std::fs::read_to_string(root().join("deploy/systemd/parkguard.service")).unwrap();
    for key in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ReadWritePaths=/var/lib/parkguard",
        "User=parkguard",
        "Restart=always",
    ] {
        assert!(unit.contains(key), "unit lacks {key}");
    }
    // Verify a copy whose binary path exists here.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("parkguard.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/parkguard", env!("CARGO_BIN_EXE_parkguard")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("Unknown key") && !stderr.contains("Unknown section"),
        "{stderr}"
    );
}

#[test]
fn compose_file_names_existing_files_and_services() {
    let text = std::fs::read_to_string(root().join("deploy/compose/compose.yaml")).unwrap();
    for service in [
        "mosquitto:",
        "influxdb:",
        "grafana:",
        "parkguard:",
        "simulator:",
    ] {
        assert!(
            text.contains(&format!("\n  {service}")),
            "compose lacks service {service}"
        );
    }
    // Every relative file a volume mounts exists.
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("- ./") || l.starts_with("- ../"))
    {
        let path = line.trim_start_matches("- ").split(':').next().unwrap();
        let full = root().join("deploy/compose").join(path);
        assert!(full.exists(), "compose mounts missing {}", full.display());
    }
    assert!(!text.contains('\t'), "YAML must not contain tabs");
}

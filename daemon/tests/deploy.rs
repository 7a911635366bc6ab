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
        "prometheus:",
        "prometheus-token:",
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
    // Prometheus loads the alert rules and scrapes with the token the one-shot service makes.
    let prom = std::fs::read_to_string(root().join("deploy/compose/prometheus.yml")).unwrap();
    assert!(prom.contains("- /etc/prometheus/alerts.yml"), "{prom}");
    assert!(
        text.contains("./alerts.yml:/etc/prometheus/alerts.yml:ro"),
        "{text}"
    );
    assert!(
        prom.contains("credentials_file: /etc/prometheus/secrets/parkguard.token")
            && text.contains("prometheus-secrets:/etc/prometheus/secrets:ro")
            && text.contains("prometheus-secrets:/secrets"),
        "the token reaches Prometheus through the shared volume"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Debian package, built with cargo-deb from this test build of the daemon (`--no-build
/// --profile dev`: no second, release, build inside `cargo test`), inspected, and installed
/// with dpkg into a throwaway root (`dpkg --root R --unpack`: dpkg's own file installation
/// and database, without the maintainer scripts, which would create a system user on this
/// host). The installed binary then checks the installed example configs, the config the
/// postinst makes, and adds a console user (the users tool).
#[test]
fn debian_package_builds_and_installs_into_a_temp_root() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_deb,
        "cargo-deb is not installed: tests/run.sh installs it (`cargo install cargo-deb --locked`)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let deb = tmp.path().join("parkguard.deb");
    run(Command::new(&cargo)
        .current_dir(root())
        .args([
            "deb",
            "-p",
            "parkguard",
            "--no-build",
            "--profile",
            "dev",
            "--no-strip",
            "--no-dbgsym",
            // xz at its fast level: cargo-deb's gzip is zopfli, minutes for a debug binary.
            "--fast",
            "--offline",
            "-o",
        ])
        .arg(&deb));

    // Control data: name, dependencies (shared libraries found by dpkg-shlibdeps, adduser
    // for the postinst).
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: parkguard"), "{info}");
    let depends = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends: {info}"));
    assert!(
        depends.contains("adduser") && depends.contains("libc6"),
        "{depends}"
    );

    // Contents.
    let list = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let files: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.'))
        .collect();
    let unit = files
        .iter()
        .find(|f| f.ends_with("/systemd/system/parkguard.service"))
        .unwrap_or_else(|| panic!("no systemd unit in {files:?}"))
        .to_string();
    let dashboards = std::fs::read_dir(root().join("dashboards"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    for want in [
        "/usr/bin/parkguard",
        "/usr/share/parkguard/examples/demo.toml",
        "/usr/share/parkguard/examples/yingkou.toml",
        "/usr/share/parkguard/prometheus/alerts.yml",
        "/usr/share/doc/parkguard/OPERATIONS.md",
        "/usr/share/doc/parkguard/copyright",
    ] {
        assert!(
            files.contains(&want),
            "{want} missing from the package:\n{list}"
        );
    }
    assert_eq!(
        files
            .iter()
            .filter(|f| f.starts_with("/usr/share/parkguard/dashboards/") && f.ends_with(".json"))
            .count(),
        dashboards,
        "every dashboard is packaged:\n{list}"
    );

    // Maintainer scripts: ours, with cargo-deb's systemd snippets in place of #DEBHELPER#,
    // valid sh.
    let control = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(postinst.contains("install -d -o parkguard"), "{postinst}");
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        let p = control.join(script);
        if p.exists() {
            run(Command::new("sh").arg("-n").arg(&p));
        }
    }

    // Install into a throwaway root with dpkg itself.
    let r = tmp.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    // No preinst: `--unpack` would run it chrooted into the empty root.
    assert!(
        !control.join("preinst").exists(),
        "a preinst needs a review of this test"
    );
    let mut unpack = Command::new("dpkg");
    unpack
        .arg(format!("--root={}", r.display()))
        .arg(format!("--log={}", r.join("var/log/dpkg.log").display()))
        .args(["--force-depends", "--force-not-root", "--unpack"])
        .arg(&deb);
    run(&mut unpack);
    let status = run(Command::new("dpkg")
        .arg(format!("--root={}", r.display()))
        .args(["-s", "parkguard"]));
    assert!(status.contains("Status: install ok unpacked"), "{status}");
    let listed = run(Command::new("dpkg")
        .arg(format!("--root={}", r.display()))
        .args(["-L", "parkguard"]));
    assert!(
        listed.lines().any(|l| l == "/usr/bin/parkguard"),
        "{listed}"
    );
    // The installed unit runs the installed binary and points at installed documentation.
    let unit_text = std::fs::read_to_string(r.join(unit.trim_start_matches('/'))).unwrap();
    assert!(
        unit_text.contains("ExecStart=/usr/bin/parkguard "),
        "{unit_text}"
    );
    let docs: Vec<&str> = unit_text
        .lines()
        .filter_map(|l| l.strip_prefix("Documentation="))
        .flat_map(str::split_whitespace)
        .filter_map(|d| d.strip_prefix("file://"))
        .collect();
    assert!(!docs.is_empty(), "{unit_text}");
    for d in docs {
        assert!(
            r.join(d.trim_start_matches('/')).exists(),
            "{d} is not installed"
        );
    }

    // The installed binary is this test build, byte for byte.
    let installed = r.join("usr/bin/parkguard");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_parkguard")).unwrap(),
        "the package holds the binary cargo test built"
    );

    // The installed binary checks the installed example configs.
    for ex in ["demo.toml", "yingkou.toml"] {
        let out = run(Command::new(&installed)
            .arg("check-config")
            .arg(r.join("usr/share/parkguard/examples").join(ex)));
        assert!(!out.trim().is_empty(), "check-config prints a summary");
    }
    // ... and the config the postinst makes on first install (its own sed line, applied to
    // a copy inside the temp root).
    let sed = postinst
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sed -i") && l.ends_with("/etc/parkguard/park.toml"))
        .unwrap_or_else(|| panic!("postinst has no sed on park.toml:\n{postinst}"));
    let expr = sed
        .strip_prefix("sed -i '")
        .and_then(|s| s.split('\'').next())
        .unwrap_or_else(|| panic!("unexpected sed line {sed}"));
    let etc = r.join("etc/parkguard");
    std::fs::create_dir_all(&etc).unwrap();
    let park = etc.join("park.toml");
    std::fs::copy(r.join("usr/share/parkguard/examples/demo.toml"), &park).unwrap();
    run(Command::new("sed").args(["-i", expr]).arg(&park));
    let made = std::fs::read_to_string(&park).unwrap();
    assert!(made.contains("dir = \"/var/lib/parkguard\""), "{made}");
    run(Command::new(&installed).arg("check-config").arg(&park));

    // The users tool: a console user with an argon2 hash.
    let users = tmp.path().join("users.toml");
    run(Command::new(&installed)
        .args(["user", "add", "--file"])
        .arg(&users)
        .args(["wang.li", "operator"])
        .env("PARKGUARD_PASSWORD", "Yingkou-duty-2026"));
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(
        text.contains("wang.li") && text.contains("$argon2id$"),
        "{text}"
    );
}

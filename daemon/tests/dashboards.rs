//! Grafana dashboards are tied to the schema module (STYLE.md §10): every measurement, tag
//! and field a Flux query names exists in `parkguard_drivers::influx::schema`; every
//! dashboard parses and has unique panel ids.

use parkguard_drivers::influx::schema;
use std::collections::HashSet;
use std::path::Path;

fn names_after<'a>(q: &'a str, prefix: &str) -> Vec<&'a str> {
    q.match_indices(prefix)
        .filter_map(|(i, _)| {
            let rest = &q[i + prefix.len()..];
            let rest = rest
                .trim_start()
                .strip_prefix("==")?
                .trim_start()
                .strip_prefix('"')?;
            rest.split('"').next()
        })
        .collect()
}

fn tag_keys(q: &str) -> Vec<String> {
    // `r.<key> ==` filters and `tag: "<key>"` / `columns: [...]` references.
    let mut out = Vec::new();
    for (i, _) in q.match_indices("r.") {
        let key: String = q[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !key.is_empty() && !key.starts_with('_') {
            out.push(key);
        }
    }
    for (i, _) in q.match_indices("tag: \"") {
        out.push(q[i + 6..].split('"').next().unwrap_or_default().to_string());
    }
    out
}

#[test]
fn dashboards_name_only_schema_series() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let measurements = [schema::READING, schema::ALARM_EVENT, schema::WARNING];
    let tags = [
        schema::tag::PARK,
        schema::tag::ENTERPRISE,
        schema::tag::TAG,
        schema::tag::KIND,
        schema::tag::UNIT,
        schema::tag::ALARM,
        schema::tag::EVENT,
        schema::tag::DRILL,
    ];
    let fields = [
        schema::field::VALUE,
        schema::field::QUALITY,
        schema::field::EVENT_ID,
        schema::field::STATE,
        schema::field::GRADE,
        schema::field::TRIGGER_VALUE,
        schema::field::MESSAGE,
    ];
    let mut files = 0;
    let mut queries = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = entry.path();
        if p.extension().is_none_or(|e| e != "json") {
            continue;
        }
        files += 1;
        let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(d["timezone"], "Asia/Shanghai", "{}", p.display());
        let panels = d["panels"].as_array().expect("panels");
        let mut ids = HashSet::new();
        for panel in panels {
            let id = panel["id"].as_u64().expect("panel id");
            assert!(ids.insert(id), "{}: duplicate panel id {id}", p.display());
            for t in panel["targets"].as_array().into_iter().flatten() {
                let q = t["query"].as_str().unwrap_or_default();
                queries += 1;
                for m in names_after(q, "r._measurement") {
                    assert!(
                        measurements.contains(&m),
                        "{}: unknown measurement `{m}`",
                        p.display()
                    );
                }
                for f in names_after(q, "r._field") {
                    assert!(fields.contains(&f), "{}: unknown field `{f}`", p.display());
                }
                for k in tag_keys(q) {
                    assert!(
                        tags.contains(&k.as_str()),
                        "{}: unknown tag `{k}` in {q}",
                        p.display()
                    );
                }
            }
        }
    }
    assert!(
        files >= 3 && queries >= 8,
        "{files} dashboards, {queries} queries"
    );
}

/// Every `r._value == "..."` a dashboard compares with is a state or grade name the daemon
/// writes (the serde names of `AlarmState` and warning `Grade`).
#[test]
fn dashboards_compare_only_real_state_names() {
    use parkguard_rules::AlarmState as S;
    let names: Vec<String> = [
        S::Normal,
        S::Unacknowledged,
        S::Acknowledged,
        S::ReturnedUnacknowledged,
        S::Shelved,
        S::SuppressedByDesign,
        S::OutOfService,
    ]
    .into_iter()
    .map(|s| {
        serde_json::to_value(s)
            .expect("serialisable")
            .as_str()
            .expect("a unit variant is a string")
            .to_string()
    })
    .collect();
    let mut seen = 0;
    for (file, q) in flux_queries() {
        for (i, _) in q.match_indices("r._value == \"") {
            let v = q[i + 13..].split('"').next().unwrap_or_default();
            assert!(
                names.iter().any(|n| n == v),
                "{file}: `{v}` is not a state the daemon writes ({names:?})"
            );
            seen += 1;
        }
    }
    assert!(seen >= 3, "the alarm KPI dashboard filters by state");
}

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards/").flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&p).expect("a dashboard is readable");
            let d = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let name = entry.file_name().to_string_lossy().into_owned();
            out.push((name, d));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn targets(d: &serde_json::Value, ds_type: &str, key: &str) -> Vec<String> {
    d["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["datasource"]["type"] == ds_type)
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t[key].as_str().map(str::to_string))
        .collect()
}

fn flux_queries() -> Vec<(String, String)> {
    dashboards()
        .into_iter()
        .flat_map(|(f, d)| {
            targets(&d, "influxdb", "query")
                .into_iter()
                .map(move |q| (f.clone(), q))
        })
        .collect()
}

/// Metric names (`parkguard_*`) in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in expr.match_indices("parkguard_") {
        if i > 0 {
            let prev = expr.as_bytes()[i - 1];
            if prev.is_ascii_alphanumeric() || prev == b'_' {
                continue;
            }
        }
        out.push(
            expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect(),
        );
    }
    out
}

/// The alert rules file: (alert name, expr) of every rule, read line by line (the file keeps
/// to one layout: `- alert:` then `expr:` either inline or as a folded `>` block).
fn alert_rules(text: &str) -> Vec<(String, String, Vec<String>)> {
    let mut rules: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut in_expr_block = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- alert: ") {
            rules.push((name.to_string(), String::new(), Vec::new()));
            in_expr_block = false;
            continue;
        }
        let Some(rule) = rules.last_mut() else {
            continue;
        };
        if let Some(e) = t.strip_prefix("expr: ") {
            in_expr_block = e == ">";
            if !in_expr_block {
                rule.1 = e.to_string();
            }
            continue;
        }
        if in_expr_block && line.starts_with("          ") {
            rule.1.push_str(t);
            rule.1.push(' ');
            continue;
        }
        in_expr_block = false;
        if let Some((k, _)) = t.split_once(':') {
            rule.2.push(k.to_string());
        }
    }
    rules
}

/// A daemon that runs here (real binary, demo park with its sources unreachable) and is
/// scraped the way the compose stack's Prometheus scrapes it: with the bearer token made by
/// `deploy/compose/prometheus-token.sh`. Every metric a health dashboard or an alert rule
/// names must be on that /metrics page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_dashboard_and_alert_rules_name_metrics_the_daemon_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("parkguard.token");
    let users = dir.path().join("users.toml");

    // The compose stack's one-shot token setup, run as is.
    let out = std::process::Command::new("sh")
        .arg(root.join("deploy/compose/prometheus-token.sh"))
        .env("PARKGUARD_TOKEN_FILE", &token_file)
        .env("PARKGUARD_USERS_FILE", &users)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(token.len(), 64, "{token}");
    // Idempotent: a second run keeps the token.
    let again = std::process::Command::new("sh")
        .arg(root.join("deploy/compose/prometheus-token.sh"))
        .env("PARKGUARD_TOKEN_FILE", &token_file)
        .env("PARKGUARD_USERS_FILE", &users)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);

    // The demo park, its Modbus gateway and MQTT broker pointed at port 1 (nothing listens:
    // the sources stay offline, which /metrics must show).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = std::fs::read_to_string(root.join("deploy/examples/demo.toml"))
        .unwrap()
        .replace("port = 15502", "port = 1")
        .replace("port = 11883", "port = 1")
        .replace(
            "dir = \"parkguard-data\"",
            &format!("dir = {:?}", dir.path().join("data").display().to_string()),
        )
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!(
                "listen = \"127.0.0.1:{port}\"\nusers_file = {:?}",
                users.display().to_string()
            ),
        );
    assert!(
        cfg.contains(&format!("127.0.0.1:{port}")),
        "demo.toml layout changed"
    );
    // An MQTT linkage channel on the demo's broker, so that its refusal counter
    // (`parkguard_linkage_mqtt_rejected_total`, alerted on) is exported too.
    let cfg = format!(
        "{cfg}\n[[channel]]\ntype = \"mqtt\"\nname = \"park-bus\"\nbroker = \"park\"\n\n\
         [[route]]\nname = \"everything\"\nkinds = [\"combustible\"]\nchannels = [\"park-bus\"]\n"
    );
    let cfg_path = dir.path().join("park.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_parkguard"))
        .args(["run", "--config"])
        .arg(&cfg_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Killed(child);

    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut text = None;
    for _ in 0..300 {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            panic!(
                "parkguard exited ({status}): {}",
                std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
            );
        }
        if let Ok(r) = http.get(&url).bearer_auth(&token).send().await {
            assert_eq!(r.status(), 200, "the token script's token is accepted");
            text = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let text = text.expect("parkguard answered /metrics within 30 s");
    let r = http
        .get(&url)
        .bearer_auth("0".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a wrong token is refused");

    let exported: HashSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    // The offline sources are visible as such.
    assert!(
        text.contains("parkguard_modbus_online{device=\"DEMO01-MIDAS\"} 0"),
        "{text}"
    );

    let mut named = 0;
    for (file, d) in dashboards() {
        for expr in targets(&d, "prometheus", "expr") {
            for m in metric_names(&expr) {
                assert!(
                    exported.contains(&m),
                    "{file}: `{m}` is not on /metrics: {exported:?}"
                );
                named += 1;
            }
        }
    }
    assert!(named >= 15, "the health dashboard names {named} metrics");

    let rules_text = std::fs::read_to_string(root.join("deploy/compose/alerts.yml")).unwrap();
    let rules = alert_rules(&rules_text);
    assert!(rules.len() >= 8, "{rules:?}");
    for (name, expr, keys) in &rules {
        assert!(!expr.is_empty(), "{name}: no expr");
        for k in ["for", "severity", "summary", "description"] {
            assert!(keys.iter().any(|x| x == k), "{name}: no `{k}`");
        }
        let ms = metric_names(expr);
        assert!(
            !ms.is_empty() || expr.contains("up{job=\"parkguard\"}"),
            "{name}: names no metric"
        );
        for m in ms {
            assert!(exported.contains(&m), "{name}: `{m}` is not on /metrics");
        }
    }
    // promtool (Debian `prometheus`) parses the PromQL for real where it is installed
    // (PATH, or PARKGUARD_PROMTOOL: e.g. `apt-get download prometheus && dpkg -x ...`).
    let promtool = std::env::var("PARKGUARD_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    // The compose stack's prometheus.yml, its paths pointed at this checkout.
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        std::fs::read_to_string(root.join("deploy/compose/prometheus.yml"))
            .unwrap()
            .replace(
                "/etc/prometheus/alerts.yml",
                &root.join("deploy/compose/alerts.yml").display().to_string(),
            )
            .replace(
                "/etc/prometheus/secrets/parkguard.token",
                &token_file.display().to_string(),
            ),
    )
    .unwrap();
    let checks: [Vec<std::ffi::OsString>; 3] = [
        vec![
            "check".into(),
            "rules".into(),
            root.join("deploy/compose/alerts.yml").into(),
        ],
        // Unit tests: the rules fire on the series the daemon exports, and only then.
        vec![
            "test".into(),
            "rules".into(),
            root.join("deploy/compose/alerts.test.yml").into(),
        ],
        vec!["check".into(), "config".into(), prom_cfg.into()],
    ];
    for args in checks {
        match std::process::Command::new(&promtool).args(&args).output() {
            Ok(out) => assert!(
                out.status.success(),
                "promtool {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) => {
                println!("NOTE: promtool is not installed; alert rules checked structurally only");
                break;
            }
        }
    }
    // The rule unit tests name real metrics too.
    let unit_tests = std::fs::read_to_string(root.join("deploy/compose/alerts.test.yml")).unwrap();
    for m in metric_names(&unit_tests) {
        assert!(
            exported.contains(&m),
            "alerts.test.yml: `{m}` is not on /metrics"
        );
    }
    drop(daemon);
}

/// Kills the child on drop (also when an assertion fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

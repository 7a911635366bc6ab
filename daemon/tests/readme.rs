//! The README's configuration reference stays true: every key used in an example config is
//! documented there (STYLE.md §9).

use std::path::Path;

fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                // Geographic points are documented as `{ lat, lon }`.
                if matches!(k.as_str(), "location" | "boundary") {
                    out.push(format!("{prefix}.{k}"));
                    continue;
                }
                let path = format!("{prefix}.{k}");
                out.push(path.clone());
                // Nested tables of `[[array]]` entries are documented by their own name
                // (`limits.h`, `modbus.device`); nested tables of plain sections by their full
                // path (`alarm.warning.red_areas`).
                let nested = if prefix.contains('.') || !is_array_section(prefix) {
                    path.as_str()
                } else {
                    k.as_str()
                };
                keys(nested, v, out);
            }
        }
        toml::Value::Array(a) => {
            for el in a {
                if el.is_table() {
                    keys(prefix, el, out);
                }
            }
        }
        _ => {}
    }
}

fn is_array_section(name: &str) -> bool {
    matches!(
        name,
        "enterprise"
            | "point"
            | "modbus_device"
            | "mqtt_broker"
            | "mqtt_subscription"
            | "vote_group"
    )
}

#[test]
fn every_example_key_is_in_the_readme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut missing = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("deploy/examples"))
        .unwrap()
        .flatten()
    {
        let p = entry.path();
        if p.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let doc: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let mut all = Vec::new();
        for (section, v) in &doc {
            keys(section, v, &mut all);
        }
        all.sort();
        all.dedup();
        for k in all {
            checked += 1;
            if !readme.contains(&format!("`{k}`")) {
                missing.push(format!("{}: `{k}`", p.display()));
            }
        }
    }
    assert!(checked > 20, "too few keys checked: {checked}");
    assert!(
        missing.is_empty(),
        "undocumented keys:\n{}",
        missing.join("\n")
    );
}

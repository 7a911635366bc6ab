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

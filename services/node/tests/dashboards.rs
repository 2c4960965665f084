//! The Grafana dashboard and the Prometheus alert rules only query metrics
//! that ringstore registers: a renamed metric must not leave a blank panel
//! or an alert that can never fire.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `ringstore_*` identifiers in `text`, without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("ringstore_") {
        let start = i + pos;
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            let mut name = &text[start..end];
            for suffix in ["_bucket", "_count", "_sum"] {
                name = name.strip_suffix(suffix).unwrap_or(name);
            }
            out.insert(name.to_string());
        }
        i = end;
    }
    out
}

/// Names passed to the `register_*!` macros in the services' sources.
fn registered() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut files = Vec::new();
    let mut dirs: Vec<PathBuf> = [
        "services/storage/src",
        "services/router/src",
        "services/api/src",
        "services/peer/src",
        "services/rebalancer/src",
    ]
    .iter()
    .map(|d| repo().join(d))
    .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    {
        for path in files {
            let text = std::fs::read_to_string(path).unwrap();
            for part in text.split("register_").skip(1) {
                if let Some(q) = part.find('"') {
                    let rest = &part[q + 1..];
                    if let Some(e) = rest.find('"') {
                        if rest[..e].starts_with("ringstore_") {
                            names.insert(rest[..e].to_string());
                        }
                    }
                }
            }
        }
    }
    names
}

#[test]
fn dashboard_and_alerts_query_only_registered_metrics() {
    let registered = registered();
    assert!(registered.len() >= 15, "found only {registered:?}");
    for file in ["deploy/grafana/dashboards/ringstore.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} queries no ringstore metric");
        let unknown: Vec<_> = used.difference(&registered).collect();
        assert!(unknown.is_empty(), "{file} queries unregistered metrics {unknown:?}");
    }
}

#[test]
fn the_dashboard_is_valid_provisioning_json() {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/dashboards/ringstore.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["uid"], "ringstore-overview");
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for p in panels {
        assert!(!p["targets"].as_array().unwrap().is_empty(), "panel {} has no query", p["title"]);
    }
}

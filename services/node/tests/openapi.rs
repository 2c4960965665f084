//! docs/openapi.json documents exactly the routes the API serves, and every
//! error code the API can send is in its Error schema.

use std::path::Path;

fn spec() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn api_source() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/src");
    // Production code only: unit-test modules come last in each file.
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            text.split("#[cfg(test)]").next().unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn openapi_paths_match_the_routes() {
    let spec = spec();
    let mut paths: Vec<&str> = spec["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/healthz",
            "/metrics",
            "/readyz",
            "/v1/cluster",
            "/v1/cluster/nodes",
            "/v1/cluster/nodes/{id}/drain",
            "/v1/cluster/shards",
            "/v1/kv",
            "/v1/kv/{key}",
            "/v1/kv:batch",
            "/v1/locks",
            "/v1/locks/{name}",
            "/v1/locks/{name}/acquire",
            "/v1/locks/{name}/refresh",
            "/v1/locks/{name}/release",
            "/v1/node/handover",
            "/v1/rebalance",
            "/v1/rebalance/config",
            "/v1/rebalance/pause",
            "/v1/rebalance/resume",
            "/v1/txn",
            "/v1/watch",
            "/v1/watch/{key}"
        ]
    );
    let kv = &spec["paths"]["/v1/kv/{key}"];
    for m in ["get", "put", "delete"] {
        assert!(kv[m].is_object(), "{m} /v1/kv/{{key}} undocumented");
    }
    for m in ["get", "delete"] {
        assert!(spec["paths"]["/v1/kv"][m].is_object(), "{m} /v1/kv undocumented");
    }
    // The router registers the same set.
    let src = api_source();
    for route in [
        "\"/v1/kv/{key:.*}\"",
        "\"/v1/kv\"",
        "\"/v1/kv:batch\"",
        "\"/v1/txn\"",
        "\"/v1/cluster\"",
        "\"/v1/locks\"",
        "\"/v1/locks/{name:.*}\"",
        "\"/v1/locks/{{name:.*}}/{action}\"",
        "lock_action(\"acquire\"",
        "lock_action(\"release\"",
        "lock_action(\"refresh\"",
        "\"/v1/cluster/nodes\"",
        "\"/v1/cluster/nodes/{id}/drain\"",
        "\"/v1/cluster/shards\"",
        "\"/v1/node/handover\"",
        "\"/v1/rebalance\"",
        "\"/v1/rebalance/pause\"",
        "\"/v1/rebalance/resume\"",
        "\"/v1/rebalance/config\"",
        "\"/healthz\"",
        "\"/readyz\"",
        "\"/metrics\"",
        "\"/v1/watch\"",
        "\"/v1/watch/{key:.*}\"",
    ] {
        assert!(src.contains(route), "route {route} not registered");
    }
}

/// The string literal right after each `StatusCode::NAME,` in the API
/// source: the error codes, as written in `ApiError::new(status, "code", ..)`
/// and in the `(status, "code")` table of `From<StoreError>`.
fn codes_in_source(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in src.split("StatusCode::").skip(1) {
        let Some(comma) = part.find(',') else { continue };
        let name = &part[..comma];
        if !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            continue;
        }
        let rest = part[comma + 1..].trim_start();
        if let Some(lit) = rest.strip_prefix('"') {
            if let Some(end) = lit.find('"') {
                out.push(lit[..end].to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_error_code_the_api_sends_is_documented() {
    let spec = spec();
    let documented: Vec<&str> = spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
        ["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let sent = codes_in_source(&api_source());
    assert!(sent.len() >= 8, "found too few codes in the API source: {sent:?}");
    for code in &sent {
        assert!(documented.contains(&code.as_str()), "error code {code} is not in openapi.json");
    }
    for code in &documented {
        assert!(sent.iter().any(|s| s == code), "openapi.json documents {code}, which the API never sends");
    }
}

//! `ringstore status`: the `/v1/cluster` answer as a table a person reads.
//! Pure: JSON in, text out.

use std::fmt::Write as _;

use serde_json::Value;

pub fn render(v: &Value) -> String {
    let shards = v["shards"].as_array().cloned().unwrap_or_default();
    let data: Vec<&Value> = shards.iter().filter(|s| s["id"] != 0).collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster epoch {}, {} nodes, {} data shards (+ meta shard 0)",
        v["epoch"],
        v["nodes"].as_array().map_or(0, Vec::len),
        data.len()
    );
    let _ = writeln!(
        out,
        "{:>5}  {:<10} {:>6} {:>5} {:>9} {:>8} {:>9} {:>10}",
        "shard", "replicas", "leader", "term", "applied", "ring", "keys", "bytes"
    );
    let show = |x: &Value| if x.is_null() { "-".to_string() } else { x.to_string() };
    for s in data {
        let replicas: Vec<String> =
            s["replicas"].as_array().map(|r| r.iter().map(|x| x.to_string()).collect()).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:>5}  {:<10} {:>6} {:>5} {:>9} {:>7.1}% {:>9} {:>10}",
            s["id"].to_string(),
            replicas.join(","),
            show(&s["leader"]),
            show(&s["term"]),
            show(&s["applied_index"]),
            s["ring_share"].as_f64().unwrap_or(0.0) * 100.0,
            show(&s["key_count"]),
            s["bytes"].as_u64().map_or("-".to_string(), human_bytes),
        );
    }
    out
}

/// `1536` -> `1.5 KiB`.
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_line_per_data_shard() {
        let v = serde_json::json!({
            "epoch": 1,
            "nodes": [{"id": 1}, {"id": 2}],
            "shards": [
                {"id": 0, "replicas": [1, 2], "leader": null},
                {"id": 1, "replicas": [1, 2], "leader": 2, "term": 3, "applied_index": 40, "ring_share": 0.5,
                 "key_count": 12, "bytes": 1536},
                {"id": 2, "replicas": [2, 1], "leader": null, "term": null, "applied_index": null, "ring_share": 0.5}
            ]
        });
        let t = render(&v);
        assert!(t.starts_with("cluster epoch 1, 2 nodes, 2 data shards"), "{t}");
        assert!(t.contains("    1  1,2             2     3        40    50.0%        12    1.5 KiB"), "{t}");
        assert!(t.contains("    2  2,1             -     -         -    50.0%         -          -"), "{t}");
        assert_eq!(t.lines().count(), 4);
    }
}

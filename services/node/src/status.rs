//! `ringstore status`: the `/v1/cluster` and `/v1/rebalance` answers as
//! tables a person reads: shards, nodes with their state, replica and
//! leader counts, and the running moves with progress bars. Pure: JSON in,
//! text out.

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

/// A 20-cell bar for `done` of `total`.
fn bar(done: f64, total: f64) -> String {
    let f = if total > 0.0 { (done / total).clamp(0.0, 1.0) } else { 1.0 };
    let n = (f * 20.0).round() as usize;
    format!("[{}{}] {:>3.0}%", "#".repeat(n), "-".repeat(20 - n), f * 100.0)
}

/// Nodes, the rebalance job and its moves, from `GET /v1/rebalance`.
pub fn render_rebalance(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>5}  {:<9} {:>8} {:>7}", "node", "state", "replicas", "leaders");
    for n in v["nodes"].as_array().cloned().unwrap_or_default() {
        let _ = writeln!(
            out,
            "{:>5}  {:<9} {:>8} {:>7}",
            n["id"].to_string(),
            n["state"].as_str().unwrap_or("-"),
            n["replicas"].to_string(),
            n["leaders"].to_string()
        );
    }
    let moves = v["moves"].as_array().cloned().unwrap_or_default();
    let planned = v["planned"].as_array().map_or(0, |p| p.iter().filter(|m| m["kind"] == "replica").count());
    let done = v["moves_done"].as_u64().unwrap_or(0);
    let total = done as usize + moves.len() + planned;
    let _ = write!(out, "rebalance: {}", v["state"].as_str().unwrap_or("unknown"));
    if total > 0 && v["job_finished_ms"].as_u64() == Some(0) {
        let _ = write!(out, " {} {done}/{total} moves", bar(done as f64, total as f64));
        let _ = write!(out, ", {} moved", human_bytes(v["bytes_done"].as_u64().unwrap_or(0)));
        if let Some(rate) = v["rate_bytes_per_sec"].as_f64().filter(|r| *r > 0.0) {
            let _ = write!(out, " at {}/s", human_bytes(rate as u64));
        }
        if let Some(eta) = v["eta_s"].as_f64() {
            let _ = write!(out, ", ETA {eta:.0}s");
        }
    }
    let _ = writeln!(out);
    for m in &moves {
        let from = if m["from"].is_null() { "-".to_string() } else { m["from"].to_string() };
        let bytes = m["bytes"].as_f64().unwrap_or(0.0);
        let _ = write!(
            out,
            "  shard {:>3}  {from:>3} -> {:<3} {:<15} {} of {}",
            m["shard"].to_string(),
            m["to"].to_string(),
            m["state"].as_str().unwrap_or("-"),
            bar(m["bytes_moved"].as_f64().unwrap_or(0.0), bytes),
            human_bytes(bytes as u64)
        );
        if let Some(b) = m["blocker"].as_str() {
            let _ = write!(out, "  waiting: {b}");
        }
        let _ = writeln!(out);
    }
    for b in v["blockers"].as_array().cloned().unwrap_or_default() {
        let _ = writeln!(out, "  blocked: {}", b.as_str().unwrap_or("-"));
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

    #[test]
    fn renders_nodes_and_moves_with_progress() {
        let v = serde_json::json!({
            "state": "running",
            "nodes": [{"id": 1, "state": "up", "replicas": 13, "leaders": 5},
                      {"id": 4, "state": "joining", "replicas": 2, "leaders": 0}],
            "moves": [{"shard": 3, "from": 1, "to": 4, "state": "snapshot", "bytes": 2048, "bytes_moved": 0,
                       "blocker": null},
                      {"shard": 5, "from": null, "to": 4, "state": "promoting", "bytes": 1024, "bytes_moved": 1024,
                       "blocker": "only 1 of the 3 voters after the move are live"}],
            "planned": [{"kind": "replica"}, {"kind": "leader"}],
            "moves_done": 1, "job_finished_ms": 0, "bytes_done": 4096, "rate_bytes_per_sec": 1024.0, "eta_s": 12.0,
            "blockers": ["node 2 is down"]
        });
        let t = render_rebalance(&v);
        assert!(t.contains("    4  joining          2       0"), "{t}");
        assert!(
            t.contains("rebalance: running [#####---------------]  25% 1/4 moves, 4.0 KiB moved at 1.0 KiB/s, ETA 12s"),
            "{t}"
        );
        assert!(t.contains("shard   3    1 -> 4   snapshot        [--------------------]   0% of 2.0 KiB"), "{t}");
        assert!(
            t.contains("shard   5    - -> 4   promoting       [####################] 100% of 1.0 KiB  waiting: only 1"),
            "{t}"
        );
        assert!(t.contains("  blocked: node 2 is down"), "{t}");
    }
}

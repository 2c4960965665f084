//! An SVG plot of a run: throughput (ops/s) and p99 latency (ms) per second.
//! Hand-written SVG, so the report needs no plotting dependency.

use std::fmt::Write as _;

/// The `p` quantile of `sorted` (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Per bucket: successes scaled to per second (`per_sec`: buckets per
/// second) and the p99 latency (0 when empty), from (bucket, latency ms).
pub fn series(points: impl Iterator<Item = (usize, f64)>, buckets: usize, per_sec: u64) -> (Vec<u64>, Vec<f64>) {
    let mut ops = vec![0u64; buckets];
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); buckets];
    for (b, ms) in points {
        if b < buckets {
            ops[b] += per_sec;
            lat[b].push(ms);
        }
    }
    let p99 = lat
        .iter_mut()
        .map(|l| {
            l.sort_by(f64::total_cmp);
            if l.is_empty() {
                0.0
            } else {
                percentile(l, 0.99)
            }
        })
        .collect();
    (ops, p99)
}

pub fn svg(title: &str, ops_per_sec: &[u64], p99_ms: &[f64]) -> String {
    svg_marked(title, ops_per_sec, p99_ms, &[])
}

/// Like [`svg`], with vertical marks at bucket indexes (events: a node
/// joins, moves end).
pub fn svg_marked(title: &str, ops_per_sec: &[u64], p99_ms: &[f64], marks: &[(usize, &str)]) -> String {
    let (w, h, m) = (800.0, 360.0, 50.0);
    let n = ops_per_sec.len().max(2) as f64;
    let max_ops = ops_per_sec.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let max_lat = p99_ms.iter().copied().fold(0.0, f64::max).max(0.001) * 1.1;
    let x = |i: usize| m + (w - 2.0 * m) * i as f64 / (n - 1.0);
    let y = |v: f64, max: f64| h - m - (h - 2.0 * m) * v / max;
    let line = |pts: Vec<(f64, f64)>| pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect::<Vec<_>>().join(" ");
    let ops_pts = ops_per_sec.iter().enumerate().map(|(i, v)| (x(i), y(*v as f64, max_ops))).collect();
    let lat_pts = p99_ms.iter().enumerate().map(|(i, v)| (x(i), y(*v, max_lat))).collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{m}" y="20" font-size="14">{title}</text>
<line x1="{m}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<line x1="{m}" y1="{m}" x2="{m}" y2="{b}" stroke="#1f77b4"/>
<line x1="{r}" y1="{m}" x2="{r}" y2="{b}" stroke="#d62728"/>
<text x="{m}" y="{lt}" fill="#1f77b4">{max_ops:.0} ops/s</text>
<text x="{rl}" y="{lt}" fill="#d62728">{max_lat:.2} ms p99</text>
<text x="{m}" y="{bt}">0 s</text>
<text x="{rr}" y="{bt}">{secs} s</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{ops}"/>
<polyline fill="none" stroke="#d62728" stroke-width="2" points="{lat}"/>
"##,
        b = h - m,
        r = w - m,
        lt = m - 8.0,
        rl = w - m - 90.0,
        bt = h - m + 18.0,
        rr = w - m - 20.0,
        secs = ops_per_sec.len(),
        ops = line(ops_pts),
        lat = line(lat_pts),
        title = title.replace('&', "&amp;").replace('<', "&lt;"),
    );
    for (i, label) in marks {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{m}" x2="{x:.1}" y2="{b}" stroke="#2ca02c" stroke-dasharray="4 3"/><text x="{tx:.1}" y="{ty}" fill="#2ca02c">{label}</text>"##,
            x = x(*i),
            b = h - m,
            tx = x(*i) + 3.0,
            ty = m + 14.0,
            label = label.replace('&', "&amp;").replace('<', "&lt;"),
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn series_counts_per_second_and_takes_p99() {
        let (ops, p99) = super::series([(0, 1.0), (0, 3.0), (2, 5.0), (9, 1.0)].into_iter(), 3, 10);
        assert_eq!(ops, vec![20, 0, 10]);
        assert_eq!(p99, vec![3.0, 0.0, 5.0]);
        assert!(super::percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn plots_both_series() {
        let s = super::svg("t <x>", &[10, 20, 15], &[1.0, 2.0, 1.5]);
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("20 ops/s") || s.contains("22 ops/s"));
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        let m = super::svg_marked("t", &[1, 2, 3], &[1.0, 1.0, 1.0], &[(1, "join")]);
        assert!(m.contains(">join</text>") && m.trim_end().ends_with("</svg>"));
    }
}

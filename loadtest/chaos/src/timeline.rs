//! An SVG timeline of a window of calls: one row per client process, each
//! call a bar from invocation to answer (green ok, grey refused, orange
//! unknown and open to the right), with the faults active then as bands.
//! Hand-written SVG, no plotting dependency.

use std::fmt::Write as _;

use crate::history::{Call, Micros, Outcome, RegisterOp};

/// A fault's span, for the bands.
pub struct Band<'a> {
    pub from_us: Micros,
    pub to_us: Micros,
    pub label: &'a str,
}

fn label(op: &RegisterOp) -> String {
    match op {
        RegisterOp::Read { value: Some(v) } => format!("r {v}"),
        RegisterOp::Read { value: None } => "r ∅".into(),
        RegisterOp::Write { value } => format!("w {value}"),
        RegisterOp::Cas { from: Some(f), to } => format!("cas {f}→{to}"),
        RegisterOp::Cas { from: None, to } => format!("cas ∅→{to}"),
    }
}

pub fn svg(title: &str, calls: &[&Call<RegisterOp>], until_us: Micros, bands: &[Band<'_>]) -> String {
    let mut procs: Vec<u32> = calls.iter().map(|c| c.process).collect();
    procs.sort_unstable();
    procs.dedup();
    let t0 = calls.iter().map(|c| c.invoke_us).min().unwrap_or(0);
    let t1 = until_us.max(t0 + 1);
    let (w, row, left, top) = (1000.0, 28.0, 90.0, 40.0);
    let h = top + row * procs.len() as f64 + 40.0;
    let x = |t: Micros| left + (w - left - 20.0) * (t.min(t1).saturating_sub(t0)) as f64 / (t1 - t0) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="10" y="18" font-size="13">{}</text>"#, escape(title));
    for b in bands.iter().filter(|b| b.to_us > t0 && b.from_us < t1) {
        let (a, z) = (x(b.from_us.max(t0)), x(b.to_us));
        let _ = writeln!(
            s,
            r##"<rect x="{a:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#fde2e2"/><text x="{a:.1}" y="{:.1}" fill="#b00">{}</text>"##,
            (z - a).max(1.0),
            h - top - 30.0,
            h - 16.0,
            escape(b.label)
        );
    }
    for (r, p) in procs.iter().enumerate() {
        let y = top + row * r as f64;
        let _ = writeln!(s, r#"<text x="10" y="{:.1}">process {p}</text>"#, y + 17.0);
        for c in calls.iter().filter(|c| c.process == *p) {
            let (fill, end) = match c.outcome {
                Outcome::Ok => ("#b7e4b0", c.complete_us),
                Outcome::Fail => ("#d6d6d6", c.complete_us),
                Outcome::Info => ("#f8c471", t1),
            };
            let (a, z) = (x(c.invoke_us), x(end));
            let _ = writeln!(
                s,
                r##"<rect x="{a:.1}" y="{:.1}" width="{:.1}" height="20" fill="{fill}" stroke="#555"/><text x="{:.1}" y="{:.1}">{}</text>"##,
                y + 3.0,
                (z - a).max(2.0),
                a + 3.0,
                y + 17.0,
                escape(&label(&c.op))
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="{:.1}">{:.3} s … {:.3} s after the start</text></svg>"#,
        h - 4.0,
        t0 as f64 / 1e6,
        t1 as f64 / 1e6
    );
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_and_band_is_drawn() {
        let calls = [
            Call {
                process: 1,
                op: RegisterOp::Write { value: 1 },
                outcome: Outcome::Ok,
                invoke_us: 0,
                complete_us: 10,
                node: 1,
            },
            Call {
                process: 2,
                op: RegisterOp::Read { value: None },
                outcome: Outcome::Ok,
                invoke_us: 12,
                complete_us: 20,
                node: 2,
            },
            Call {
                process: 3,
                op: RegisterOp::Write { value: 2 },
                outcome: Outcome::Info,
                invoke_us: 5,
                complete_us: 9,
                node: 3,
            },
        ];
        let refs: Vec<&Call<RegisterOp>> = calls.iter().collect();
        let out = svg("k <1>", &refs, 21, &[Band { from_us: 3, to_us: 15, label: "kill n2" }]);
        assert!(out.starts_with("<svg") && out.trim_end().ends_with("</svg>"));
        for needle in ["w 1", "r ∅", "w 2", "kill n2", "process 3", "k &lt;1&gt;", "#f8c471"] {
            assert!(out.contains(needle), "{needle} missing");
        }
    }
}

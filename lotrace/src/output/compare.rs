//! `compare`: the stage tables of several traced targets side by side,
//! differences marked.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::{
    model::stats::{Row, Stats},
    output::fmt_ns,
};

/// One target's traced run.
pub struct Column {
    pub target: String,
    pub resolved: Option<String>,
    pub resolution: Option<String>,
    pub stats: Stats,
    pub exit: i32,
}

fn keys(m: &std::collections::BTreeMap<impl ToString, u64>) -> String {
    m.keys()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows in journey order: the first column's order, then rows only
/// others have.
fn rows(cols: &[Column]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    for c in cols {
        for r in c.stats.order() {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out
}

/// A cell is marked when its median is more than half again the row's
/// smallest and at least 1 µs more.
fn marked(v: u64, min: u64) -> bool {
    v > min + min / 2 && v - min >= 1_000
}

pub fn text(cols: &[Column]) -> String {
    let mut s = String::new();
    let w = 14;
    let head = |s: &mut String, label: &str, cells: Vec<String>| {
        let _ = write!(s, "{label:<36}");
        for c in cells {
            let _ = write!(s, " {c:>w$}");
        }
        s.push('\n');
    };
    head(&mut s, "", cols.iter().map(|c| c.target.clone()).collect());
    head(
        &mut s,
        "resolved to",
        cols.iter()
            .map(|c| c.resolved.clone().unwrap_or_else(|| "-".into()))
            .collect(),
    );
    head(
        &mut s,
        "family",
        cols.iter().map(|c| keys(&c.stats.families)).collect(),
    );
    head(
        &mut s,
        "socket",
        cols.iter().map(|c| keys(&c.stats.sockets)).collect(),
    );
    head(
        &mut s,
        "sent on device",
        cols.iter().map(|c| keys(&c.stats.xmit_devs)).collect(),
    );
    head(
        &mut s,
        "journeys",
        cols.iter().map(|c| c.stats.journeys.to_string()).collect(),
    );
    head(
        &mut s,
        "NET_RX inline / ksoftirqd",
        cols.iter()
            .map(|c| format!("{} / {}", c.stats.softirq_inline, c.stats.softirq_ksoftirqd))
            .collect(),
    );
    let rtt: Vec<Option<u64>> = cols.iter().map(|c| c.stats.rtt.quantile(0.5)).collect();
    let min = rtt.iter().flatten().min().copied().unwrap_or(0);
    head(
        &mut s,
        "kernel RTT p50",
        rtt.iter()
            .map(|v| match v {
                Some(v) => format!("{}{}", if marked(*v, min) { "▲ " } else { "" }, fmt_ns(*v)),
                None => "—".into(),
            })
            .collect(),
    );
    let _ = writeln!(
        s,
        "\np50 time since the previous stage (▲: over 1.5× the fastest target; —: not seen)"
    );
    for r in rows(cols) {
        let vals: Vec<Option<u64>> = cols
            .iter()
            .map(|c| c.stats.rows.get(&r).and_then(|h| h.quantile(0.5)))
            .collect();
        let min = vals.iter().flatten().min().copied().unwrap_or(0);
        let cells = vals
            .iter()
            .map(|v| match v {
                Some(v) => format!("{}{}", if marked(*v, min) { "▲ " } else { "" }, fmt_ns(*v)),
                None => "—".into(),
            })
            .collect();
        head(&mut s, &format!("{:<8} {}", r.leg.name(), r.label()), cells);
    }
    for c in cols {
        if let Some(r) = &c.resolution {
            let _ = writeln!(s, "\n{r}");
        }
        if c.exit != 0 {
            let _ = writeln!(s, "\nping {} exited with status {}", c.target, c.exit);
        }
    }
    s
}

pub fn json(cols: &[Column]) -> Value {
    let targets: Vec<Value> = cols
        .iter()
        .map(|c| {
            json!({
                "target": c.target,
                "resolved": c.resolved,
                "resolution": c.resolution,
                "journeys": c.stats.journeys,
                "families": c.stats.families,
                "sockets": c.stats.sockets,
                "devices": c.stats.xmit_devs,
                "softirq": {
                    "inline": c.stats.softirq_inline,
                    "ksoftirqd": c.stats.softirq_ksoftirqd,
                    "backlog_thread": c.stats.backlog_thread,
                },
                "rtt_p50_ns": c.stats.rtt.quantile(0.5),
                "exit": c.exit,
                "stages": c.stats.order().iter().map(|r| json!({
                    "leg": r.leg.name(),
                    "stage": r.stage.name(),
                    "at_return": r.at_return,
                    "count": c.stats.rows[r].count,
                    "p50_ns": c.stats.rows[r].quantile(0.5),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"type": "compare", "targets": targets})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{builder::build_journey, journey::tests::echo};

    #[test]
    fn side_by_side_marks_the_slow_cells() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.add(&build_journey(echo(1, 0), &[]));
        // The same journey with a slower route lookup.
        let mut slow = echo(1, 0);
        for e in slow.iter_mut().skip(1) {
            e.ts_ns += 20_000;
        }
        b.add(&build_journey(slow, &[]));
        let cols = vec![
            Column {
                target: "127.0.0.1".into(),
                resolved: Some("127.0.0.1".into()),
                resolution: None,
                stats: a,
                exit: 0,
            },
            Column {
                target: "localhost".into(),
                resolved: Some("::1".into()),
                resolution: Some("localhost resolves to ::1, 127.0.0.1 (from /etc/hosts)".into()),
                stats: b,
                exit: 0,
            },
        ];
        let t = text(&cols);
        let route = t.lines().find(|l| l.starts_with("request  route")).unwrap();
        assert!(route.contains("▲ 20.90 µs"), "{route}");
        assert!(t.contains("localhost resolves to"));
        let v = json(&cols);
        assert_eq!(v["targets"][1]["resolved"], "::1");
    }
}

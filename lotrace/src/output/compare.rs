//! `compare`: the stage tables of several traced targets side by side,
//! differences marked.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use serde_json::{Value, json};

use crate::{
    model::{
        flow::Proto,
        stats::{ExchangeHists, PacketStats, Row, Stats, row_label},
    },
    output::fmt_ns,
};

/// One target's traced run.
pub struct Column {
    pub target: String,
    /// The command traced for it.
    pub command: String,
    pub resolved: Option<String>,
    pub resolution: Option<String>,
    /// Where its flows went: protocol, address and port, once each.
    pub servers: Vec<String>,
    pub flows: usize,
    pub stats: Stats,
    pub packets: PacketStats,
    pub exit: i32,
}

fn keys(m: &BTreeMap<impl ToString, u64>) -> String {
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

/// The packets' stage rows of every column, in stage order.
fn packet_rows(cols: &[Column]) -> BTreeSet<(Proto, u8, bool)> {
    cols.iter()
        .flat_map(|c| c.packets.rows.iter())
        .filter(|(_, (_, h))| h.count > 0)
        .map(|(k, _)| *k)
        .collect()
}

/// The kinds of exchange any column had.
fn exchange_kinds(cols: &[Column]) -> BTreeSet<(Proto, &'static str)> {
    cols.iter()
        .flat_map(|c| c.packets.exchanges.keys().copied())
        .collect()
}

/// A cell is marked when its median is more than half again the row's
/// smallest and at least 1 µs more.
fn marked(v: u64, min: u64) -> bool {
    v > min + min / 2 && v - min >= 1_000
}

/// A row of medians, the slow ones marked.
fn p50_cells(vals: &[Option<u64>]) -> Vec<String> {
    let min = vals.iter().flatten().min().copied().unwrap_or(0);
    vals.iter()
        .map(|v| match v {
            Some(v) => format!("{}{}", if marked(*v, min) { "▲ " } else { "" }, fmt_ns(*v)),
            None => "—".into(),
        })
        .collect()
}

pub fn text(cols: &[Column]) -> String {
    let mut s = String::new();
    let w = cols
        .iter()
        .flat_map(|c| c.servers.iter().chain([&c.target]))
        .map(|t| t.chars().count())
        .max()
        .unwrap_or(0)
        .max(14);
    let head = |s: &mut String, label: &str, cells: Vec<String>| {
        let _ = write!(s, "{label:<36}");
        for c in cells {
            let _ = write!(s, " {c:>w$}");
        }
        s.push('\n');
    };
    let echoes = cols.iter().any(|c| c.stats.journeys > 0);
    let packets = cols.iter().any(|c| !c.packets.is_empty());
    head(&mut s, "", cols.iter().map(|c| c.target.clone()).collect());
    if cols.iter().any(|c| c.resolved.is_some()) {
        head(
            &mut s,
            "resolved to",
            cols.iter()
                .map(|c| c.resolved.clone().unwrap_or_else(|| "-".into()))
                .collect(),
        );
    }
    if echoes || !packets {
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
                .map(|c| format!("{} / {}", c.stats.softirq.inline, c.stats.softirq.ksoftirqd))
                .collect(),
        );
        let rtt: Vec<Option<u64>> = cols.iter().map(|c| c.stats.rtt.quantile(0.5)).collect();
        head(&mut s, "kernel RTT p50", p50_cells(&rtt));
    }
    if packets {
        let most = cols.iter().map(|c| c.servers.len()).max().unwrap_or(0);
        for i in 0..most {
            head(
                &mut s,
                if i == 0 { "sent to" } else { "" },
                cols.iter()
                    .map(|c| c.servers.get(i).cloned().unwrap_or_default())
                    .collect(),
            );
        }
        head(
            &mut s,
            "flows",
            cols.iter().map(|c| c.flows.to_string()).collect(),
        );
        head(
            &mut s,
            "sent on device",
            cols.iter().map(|c| keys(&c.packets.devices)).collect(),
        );
        head(
            &mut s,
            "NET_RX inline / ksoftirqd",
            cols.iter()
                .map(|c| {
                    format!(
                        "{} / {}",
                        c.packets.net_rx.inline, c.packets.net_rx.ksoftirqd
                    )
                })
                .collect(),
        );
        let protos: BTreeSet<Proto> = cols
            .iter()
            .flat_map(|c| c.packets.packets.keys().copied())
            .collect();
        for p in &protos {
            head(
                &mut s,
                &format!("{} {}", p.name().to_uppercase(), p.packet_words().1),
                cols.iter()
                    .map(|c| c.packets.packets.get(p).copied().unwrap_or(0).to_string())
                    .collect(),
            );
        }
        for (p, kind) in exchange_kinds(cols) {
            let count = |c: &Column| {
                c.packets
                    .exchanges
                    .get(&(p, kind))
                    .map_or(0, |x| x.total.count + x.unanswered)
            };
            head(
                &mut s,
                &format!("{} {kind} exchanges", p.name().to_uppercase()),
                cols.iter().map(|c| count(c).to_string()).collect(),
            );
        }
    }
    let _ = writeln!(
        s,
        "\np50 time since the previous stage (▲: over 1.5× the fastest target; —: not seen)"
    );
    for r in rows(cols) {
        let vals: Vec<Option<u64>> = cols
            .iter()
            .map(|c| c.stats.rows.get(&r).and_then(|h| h.quantile(0.5)))
            .collect();
        head(
            &mut s,
            &format!("{:<8} {}", r.leg.name(), r.label()),
            p50_cells(&vals),
        );
    }
    for k in packet_rows(cols) {
        let stage = cols
            .iter()
            .find_map(|c| c.packets.rows.get(&k))
            .map(|r| r.0);
        let Some(stage) = stage else { continue };
        let vals: Vec<Option<u64>> = cols
            .iter()
            .map(|c| c.packets.rows.get(&k).and_then(|r| r.1.quantile(0.5)))
            .collect();
        head(
            &mut s,
            &format!("{:<8} {}", k.0.name(), row_label(stage, k.2)),
            p50_cells(&vals),
        );
    }
    for (p, kind) in exchange_kinds(cols) {
        let hists: Vec<Option<&ExchangeHists>> = cols
            .iter()
            .map(|c| c.packets.exchanges.get(&(p, kind)))
            .collect();
        let Some(labels) = hists.iter().flatten().next().map(|x| x.rows(kind)) else {
            continue;
        };
        for (i, (label, _)) in labels.iter().enumerate() {
            let vals: Vec<Option<u64>> = hists
                .iter()
                .map(|x| x.and_then(|x| x.rows(kind)[i].1.quantile(0.5)))
                .collect();
            head(
                &mut s,
                &format!("{:<8} {label}", p.name()),
                p50_cells(&vals),
            );
        }
    }
    for c in cols {
        if let Some(r) = &c.resolution {
            let _ = writeln!(s, "\n{r}");
        }
        if c.exit != 0 {
            let _ = writeln!(s, "\n{} exited with status {}", c.command, c.exit);
        }
    }
    s
}

/// A column's TCP and UDP part, when it had packets.
fn packets_json(c: &Column) -> Option<Value> {
    if c.packets.is_empty() {
        return None;
    }
    let p = &c.packets;
    Some(json!({
        "flows": c.flows,
        "sent_to": c.servers,
        "devices": p.devices,
        "softirq": {
            "inline": p.net_rx.inline,
            "ksoftirqd": p.net_rx.ksoftirqd,
            "backlog_thread": p.net_rx.backlog_thread,
        },
        "count": p.packets.iter().map(|(k, n)| (k.name(), *n)).collect::<BTreeMap<_, _>>(),
        "stages": p.rows.iter().filter(|(_, (_, h))| h.count > 0).map(|((proto, _, at_return), (stage, h))| json!({
            "proto": proto.name(),
            "stage": stage.name(),
            "at_return": at_return,
            "count": h.count,
            "p50_ns": h.quantile(0.5),
        })).collect::<Vec<_>>(),
        "exchanges": p.exchanges.iter().map(|((proto, kind), x)| json!({
            "proto": proto.name(),
            "kind": kind,
            "count": x.total.count + x.unanswered,
            "unanswered": x.unanswered,
            "request_p50_ns": x.request.quantile(0.5),
            "server_p50_ns": x.server.quantile(0.5),
            "response_p50_ns": x.response.quantile(0.5),
            "total_p50_ns": x.total.quantile(0.5),
        })).collect::<Vec<_>>(),
    }))
}

pub fn json(cols: &[Column]) -> Value {
    let targets: Vec<Value> = cols
        .iter()
        .map(|c| {
            let mut v = json!({
                "target": c.target,
                "command": c.command,
                "resolved": c.resolved,
                "resolution": c.resolution,
                "journeys": c.stats.journeys,
                "families": c.stats.families,
                "sockets": c.stats.sockets,
                "devices": c.stats.xmit_devs,
                "softirq": {
                    "inline": c.stats.softirq.inline,
                    "ksoftirqd": c.stats.softirq.ksoftirqd,
                    "backlog_thread": c.stats.softirq.backlog_thread,
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
            });
            if let Some(p) = packets_json(c) {
                v["packets"] = p;
            }
            v
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
                command: "ping -c 1 127.0.0.1".into(),
                resolved: Some("127.0.0.1".into()),
                resolution: None,
                servers: Vec::new(),
                flows: 0,
                stats: a,
                packets: PacketStats::default(),
                exit: 0,
            },
            Column {
                target: "localhost".into(),
                command: "ping -c 1 localhost".into(),
                resolved: Some("::1".into()),
                resolution: Some("localhost resolves to ::1, 127.0.0.1 (from /etc/hosts)".into()),
                servers: Vec::new(),
                flows: 0,
                stats: b,
                packets: PacketStats::default(),
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

    /// A command's columns: its packets' rows and exchanges side by side,
    /// and no echo rows; the JSON has `packets` only where there were.
    #[test]
    fn a_commands_packets_side_by_side() {
        use crate::model::{
            exchange::ExchangeBuilder,
            flow::{build_packet, tests::packet},
        };
        use lotrace_common::event::{FLOW_REVERSE, PKT_TCP};
        let column = |slow: u64| {
            let mut ps = PacketStats::default();
            let mut x = ExchangeBuilder::default();
            let mut xs = Vec::new();
            for p in [
                build_packet(packet(PKT_TCP, 1, 1, 0, 78, 0x18, 78)),
                build_packet(packet(PKT_TCP, 1, FLOW_REVERSE | 1, slow, 200, 0x18, 200)),
            ] {
                ps.add(&p);
                xs.extend(x.push(&p));
            }
            xs.extend(x.finish());
            for e in &xs {
                ps.add_exchange(e);
            }
            Column {
                target: "127.0.0.1".into(),
                command: "curl http://127.0.0.1:8000/".into(),
                resolved: None,
                resolution: None,
                servers: vec!["TCP 127.0.0.1:8000".into()],
                flows: 1,
                stats: Stats::default(),
                packets: ps,
                exit: 0,
            }
        };
        let mut slow = column(900_000);
        slow.target = "::1".into();
        let cols = vec![column(100_000), slow];
        let t = text(&cols);
        for want in [
            "sent to",
            "TCP segments",
            "TCP request exchanges",
            "tcp      loopback_xmit",
        ] {
            assert!(t.contains(want), "{want}: {t}");
        }
        assert!(!t.contains("kernel RTT"), "{t}");
        let server = t
            .lines()
            .find(|l| l.starts_with("tcp      server: arrived→response"))
            .unwrap();
        assert!(server.contains('▲'), "{server}");
        let v = json(&cols);
        assert_eq!(v["targets"][0]["packets"]["count"]["tcp"], 2);
        assert_eq!(
            v["targets"][1]["packets"]["exchanges"][0]["kind"],
            "request"
        );
        // An echo column has no `packets`.
        let mut e = column(0);
        e.packets = PacketStats::default();
        assert!(json(&[e])["targets"][0].get("packets").is_none());
    }
}

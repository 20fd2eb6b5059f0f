//! Renderers: journeys and the summary as terminal text or JSON Lines.
//! Data in, strings out.

use std::fmt::Write as _;

use lotrace_common::{ProbeId, Stage};
use serde_json::{Value, json};

use crate::{
    model::journey::{Context, Hop, Journey, Leg, Outcome, SoftirqWhere},
    model::meta::Meta,
    model::session::Done,
    model::stats::{Histogram, Stats},
};

/// The language of stage explanations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    #[default]
    En,
    /// 中文, the language of the article lotrace grew from.
    Zh,
}

/// Optional parts of the output.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    /// Annotate each stage with what the kernel does there.
    pub explain: Option<Lang>,
    /// Print a latency histogram per stage in the summary.
    pub hist: bool,
}

/// The catalog's explanation of a stage.
pub fn explain(stage: Stage, lang: Lang) -> &'static str {
    match lang {
        Lang::En => stage.info().explain,
        Lang::Zh => stage.info().explain_zh,
    }
}

/// Everything the summary shows besides the statistics.
#[derive(Default)]
pub struct Totals {
    pub events: u64,
    pub lost: u64,
    pub discarded: u64,
    /// Probe runs the kernel skipped; `None` when not known (a replay of
    /// an older record).
    pub missed: Option<u64>,
    /// Events the probes tried to emit (received + lost).
    pub submitted: Option<u64>,
    /// lotrace's own CPU time and peak RSS, for a live trace.
    pub usage: Option<Usage>,
}

/// What lotrace itself cost while the command ran (after the programs
/// were loaded): CPU time and wall time, and its peak resident set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_ns: u64,
    pub max_rss_kb: u64,
    pub wall_ns: u64,
}

/// 1234 → "1.23 µs".
pub fn fmt_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.2} µs", f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", f / 1e6)
    } else {
        format!("{:.2} s", f / 1e9)
    }
}

fn fmt_signed(ns: i64) -> String {
    if ns < 0 {
        format!("-{}", fmt_ns(ns.unsigned_abs()))
    } else {
        fmt_ns(ns as u64)
    }
}

/// The probe column: a tracepoint's name, or a function probe's label.
fn short_probe(p: ProbeId, meta: &Meta) -> String {
    let label = meta.probe_label(p);
    match label.strip_prefix("tracepoint:") {
        Some(tp) => tp.rsplit(':').next().unwrap_or(tp).to_string(),
        None => label.into_owned(),
    }
}

/// A few words on what a hop's stage-specific value means.
pub fn detail(h: &Hop, meta: &Meta) -> Option<String> {
    let at_return = h.probe.info().at_return;
    match h.stage {
        Stage::Route => {
            let err = h.len as i32;
            Some(if err == -libc::EAGAIN {
                // fib_table_lookup's "nothing in this table".
                format!("table {}: no matching route", h.aux2)
            } else if err != 0 {
                format!("table {}: {}", h.aux2, errno_words(err as i64))
            } else {
                format!("table {}, next hop dev {}", h.aux2, route_dev(h))
            })
        }
        Stage::Drop => Some(format!("dropped: {}", meta.drop_reason(h.aux))),
        Stage::NetRxAction if at_return => Some(format!("ran {}", fmt_ns(h.aux))),
        Stage::ProcessBacklog if at_return => Some(format!("{} packet(s) polled", h.aux)),
        Stage::Wakeup => Some(format!("woke pid {}", h.aux)),
        Stage::Recvmsg | Stage::SockSendmsg if at_return && (h.aux as i64) < 0 => {
            Some(format!("failed: {}", errno_words(h.aux as i64)))
        }
        Stage::Recvmsg | Stage::SockSendmsg if at_return => Some(format!("{} bytes", h.len)),
        Stage::CopyToUser => Some(format!("{} bytes", h.len)),
        Stage::DevQueueXmit | Stage::LoopbackXmit if !at_return && h.aux != 0 => {
            Some(format!("dev {}", xmit_dev(h)))
        }
        _ => None,
    }
}

/// `-101` → `ENETUNREACH (error -101)`.
pub fn errno_words(e: i64) -> String {
    let name = match (-e) as i32 {
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::EAGAIN => "EAGAIN",
        libc::ENOBUFS => "ENOBUFS",
        _ => "error",
    };
    format!("{name} (error {e})")
}

/// A NUL-padded device name.
fn dev_name(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The device a packet is transmitted on, carried in the event's aux.
pub fn xmit_dev(h: &Hop) -> String {
    dev_name(&h.aux.to_le_bytes())
}

/// The device a route lookup chose, carried in the event's skb and aux.
pub fn route_dev(h: &Hop) -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&h.skb.to_le_bytes());
    b[8..].copy_from_slice(&h.aux.to_le_bytes());
    dev_name(&b)
}

fn softirq_words(s: &SoftirqWhere) -> String {
    let mut w = match s.context {
        Context::Ksoftirqd => format!("in {} (handed off to the softirq thread)", s.comm),
        _ => format!("inline in {}/{} on CPU {}", s.comm, s.pid, s.cpu),
    };
    match s.entered {
        Some("local_bh_enable") => w.push_str(", entered on local_bh_enable in its own send"),
        Some("irq_exit") => w.push_str(", entered on irq_exit"),
        _ => {}
    }
    if let Some(ns) = s.wait_ns {
        w.push_str(&format!(", {} after the enqueue", fmt_ns(ns)));
    }
    w
}

/// The outcome in words.
pub fn outcome_words(o: &Outcome, meta: &Meta) -> String {
    match o {
        Outcome::Answered => "answered".into(),
        Outcome::Dropped { reason, after } => format!(
            "dropped{}: {}",
            after
                .map(|s| format!(" after {}", s.name()))
                .unwrap_or_default(),
            meta.drop_reason(*reason)
        ),
        Outcome::NoRoute { .. } => "no route: the packet was never built".into(),
        Outcome::Unanswered => "no reply seen".into(),
    }
}

fn outcome_json(o: &Outcome, meta: &Meta) -> Value {
    match o {
        Outcome::Answered => json!({"kind": "answered"}),
        Outcome::Dropped { reason, after } => json!({
            "kind": "dropped",
            "reason": meta.drop_reason(*reason),
            "reason_code": reason,
            "after": after.map(|s| s.name()),
        }),
        Outcome::NoRoute { err } => json!({"kind": "no_route", "error": err}),
        Outcome::Unanswered => json!({"kind": "unanswered"}),
    }
}

fn target(meta: &Meta) -> &str {
    meta.target.as_deref().unwrap_or("?")
}

/// One journey as a timeline.
pub fn journey_text(d: &Done, meta: &Meta, style: Style) -> String {
    let j = &d.journey;
    let mut s = String::new();
    let rtt = j
        .rtt_ns
        .map(|r| format!("kernel RTT {}", fmt_ns(r)))
        .unwrap_or_else(|| "kernel RTT unknown".into());
    let ping = d
        .ping_rtt_ns
        .map(|r| format!(" · ping said {}", fmt_ns(r)))
        .unwrap_or_default();
    let socket = j
        .socket_name()
        .map(|k| format!(" {k} socket"))
        .unwrap_or_default();
    let outcome = match j.outcome {
        Outcome::Answered => String::new(),
        ref o => format!(" ── {}", outcome_words(o, meta)),
    };
    let _ = writeln!(
        s,
        "── icmp_seq={} id={} {} {}{socket} ── {rtt}{ping}{outcome} ──",
        j.icmp_seq,
        j.icmp_id,
        j.family_name(),
        target(meta)
    );
    let _ = writeln!(
        s,
        "   {:<8} {:<26} {:>10} {:>11} {:>4}  {:<20} {:<9} probe",
        "leg", "stage", "+prev", "since send", "cpu", "task", "context"
    );
    let mut explained = Vec::new();
    for h in &j.hops {
        let stage = if h.probe.info().at_return {
            format!("{} ↩", h.stage.name())
        } else {
            h.stage.name().to_string()
        };
        let task = format!("{}/{}", h.comm, h.pid);
        let mut line = format!(
            "   {:<8} {:<26} {:>10} {:>11} {:>4}  {:<20} {:<9} {}",
            h.leg.name(),
            stage,
            fmt_ns(h.delta_ns),
            fmt_signed(h.t_ns),
            h.cpu,
            task,
            h.context.name(),
            short_probe(h.probe, meta)
        );
        if let Some(d) = detail(h, meta) {
            let _ = write!(line, "  ({d})");
        }
        let _ = writeln!(s, "{}", line.trim_end());
        if let Some(lang) = style.explain
            && !explained.contains(&h.stage)
        {
            explained.push(h.stage);
            let _ = writeln!(s, "{:>14}↳ {}", "", explain(h.stage, lang));
        }
    }
    let mut notes = Vec::new();
    for (i, leg) in [Leg::Request, Leg::Reply].iter().enumerate() {
        if let Some(w) = &j.softirq[i] {
            notes.push(format!("{} received {}", leg.name(), softirq_words(w)));
        }
    }
    let _ = writeln!(
        s,
        "   total {} over {} stages; NET_RX: {}",
        fmt_ns(j.total_ns),
        j.hops.len(),
        if notes.is_empty() {
            "not seen".to_string()
        } else {
            notes.join(", ")
        }
    );
    if !j.complete() {
        let _ = writeln!(s, "   incomplete: missing {}", missing_words(j));
    }
    s
}

fn missing_words(j: &Journey) -> String {
    j.missing
        .iter()
        .map(|(leg, st)| match leg {
            Some(l) => format!("{}/{}", l.name(), st.name()),
            None => st.name().to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn hist_cols(h: &Histogram) -> String {
    let q = |x| h.quantile(x).map(fmt_ns).unwrap_or_default();
    format!(
        "{:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
        h.count,
        if h.count > 0 {
            fmt_ns(h.min)
        } else {
            String::new()
        },
        q(0.5),
        q(0.9),
        q(0.99),
        if h.count > 0 {
            fmt_ns(h.max)
        } else {
            String::new()
        },
    )
}

pub fn summary_text(stats: &Stats, meta: &Meta, t: &Totals, style: Style) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n═══ lotrace summary: {} journeys ({} incomplete), {} events, {} lost{} ═══",
        stats.journeys,
        stats.incomplete,
        t.events,
        t.lost,
        match t.missed {
            Some(m) if m > 0 => format!(", {m} probe runs skipped by the kernel"),
            _ => String::new(),
        }
    );
    if t.lost > 0 {
        let _ = writeln!(
            s,
            "    {} events were lost (ring buffer full): journeys missing stages are marked incomplete; try a larger --ring-size",
            t.lost
        );
    }
    if let Some(m) = t.missed.filter(|&m| m > 0) {
        let _ = writeln!(
            s,
            "    the kernel skipped {m} probe runs (for any packet, traced or not): it does not run an eBPF program while another one runs on the same CPU, as when an interrupt's softirq arrives during a probe; what they would have seen is unknown, and journeys missing stages are marked incomplete"
        );
    }
    let _ = writeln!(
        s,
        "\n   {:<8} {:<26} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "leg", "stage (time since previous)", "count", "min", "p50", "p90", "p99", "max"
    );
    for row in &stats.order() {
        let h = &stats.rows[row];
        let _ = writeln!(
            s,
            "   {:<8} {:<26} {}",
            row.leg.name(),
            row.label(),
            hist_cols(h)
        );
    }
    let _ = writeln!(
        s,
        "   {:<35} {}",
        "kernel RTT: sendto→reply netif_rx",
        hist_cols(&stats.rtt)
    );
    let _ = writeln!(
        s,
        "   {:<35} {}",
        if stats.in_kernel.is_some() {
            "journey: first stage→reply received"
        } else {
            "journey: first→last stage"
        },
        hist_cols(&stats.total)
    );
    if let Some(o) = &stats.in_kernel {
        let _ = writeln!(
            s,
            "\n   aggregated in the kernel (--summary-only): {} answered, {} answered with a stage unseen, {} dropped, {} without a route, {} unanswered when the trace ended",
            o.answered, o.answered_incomplete, o.dropped, o.no_route, o.unfinished
        );
    }
    let _ = writeln!(
        s,
        "\n   NET_RX softirq per receive: {} inline (in the task that was running), {} in ksoftirqd",
        stats.softirq_inline, stats.softirq_ksoftirqd
    );
    let unseen: Vec<_> = meta.stages.iter().filter(|s| s.backend.is_none()).collect();
    if !unseen.is_empty() {
        let _ = writeln!(s, "\n   not observed on this kernel:");
        for st in unseen {
            let _ = writeln!(
                s,
                "     {:<18} {}",
                st.stage,
                st.missing.as_deref().unwrap_or_default()
            );
        }
    }
    if style.hist {
        s.push_str(&histograms(stats));
    }
    s.push_str(&where_time_goes(stats));
    s
}

/// Per row, the distribution of the time since the previous stage, by
/// powers of two.
pub fn histograms(stats: &Stats) -> String {
    let mut s = String::from("\n   latency histograms (time since the previous stage)\n");
    for row in stats.order() {
        let h = &stats.rows[&row];
        if h.count == 0 {
            continue;
        }
        let _ = writeln!(s, "   {} {}", row.leg.name(), row.label());
        let mut bins: Vec<(u64, u64)> = Vec::new();
        for (low, _, c) in h.nonzero_buckets() {
            let p = if low == 0 {
                0
            } else {
                1u64 << (63 - low.leading_zeros())
            };
            match bins.last_mut() {
                Some((b, n)) if *b == p => *n += c,
                _ => bins.push((p, c)),
            }
        }
        let max = bins.iter().map(|b| b.1).max().unwrap_or(1);
        for (low, n) in bins {
            let high = if low == 0 { 1 } else { low * 2 };
            let width = ((n * 30).div_ceil(max)) as usize;
            let _ = writeln!(
                s,
                "     {:>10} – {:<10} {:<30} {n}",
                fmt_ns(low),
                fmt_ns(high),
                "█".repeat(width)
            );
        }
    }
    s
}

/// The mean share of the journey each row accounts for, as bars.
pub fn where_time_goes(stats: &Stats) -> String {
    let mut s = String::new();
    if stats.journeys == 0 {
        return s;
    }
    let n = stats.journeys as u128;
    let order = stats.order();
    let per: Vec<_> = order
        .iter()
        .map(|r| (r, (stats.rows[r].sum / n) as u64))
        .collect();
    // u128: sums and products of hostile (replayed) values must not wrap.
    let total: u128 = per.iter().map(|(_, v)| *v as u128).sum();
    if total == 0 {
        return s;
    }
    let _ = writeln!(
        s,
        "\n   where the time goes (mean per journey, {} from first to last stage)",
        fmt_ns(total.min(u64::MAX as u128) as u64)
    );
    const WIDTH: u128 = 40;
    for (r, v) in per {
        let cells = (v as u128 * WIDTH * 8 / total) as usize;
        let mut bar = "█".repeat(cells / 8);
        if !cells.is_multiple_of(8) {
            bar.push(['▏', '▎', '▍', '▌', '▋', '▊', '▉'][cells % 8 - 1]);
        }
        let _ = writeln!(
            s,
            "   {:<8} {:<26} {:<40} {:>5.1}% {:>10}",
            r.leg.name(),
            r.label(),
            bar,
            v as f64 * 100.0 / total as f64,
            fmt_ns(v)
        );
    }
    s
}

/// One event of a journey as JSON: written through serde's derive, not
/// a `Value` tree, because floods render hundreds of thousands of them.
#[derive(serde::Serialize)]
struct HopOut<'a> {
    stage: &'static str,
    at_return: bool,
    t_ns: i64,
    delta_ns: u64,
    cpu: u32,
    pid: u32,
    tgid: u32,
    comm: &'a str,
    context: &'static str,
    probe: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    explain: Option<&'static str>,
}

fn hop_out<'a>(h: &'a Hop, meta: &'a Meta, style: Style) -> HopOut<'a> {
    HopOut {
        stage: h.stage.name(),
        at_return: h.probe.info().at_return,
        t_ns: h.t_ns,
        delta_ns: h.delta_ns,
        cpu: h.cpu,
        pid: h.pid,
        tgid: h.tgid,
        comm: &h.comm,
        context: h.context.name(),
        probe: meta.probe_label(h.probe),
        detail: detail(h, meta),
        explain: style.explain.map(|lang| explain(h.stage, lang)),
    }
}

#[derive(serde::Serialize)]
struct LegOut<'a> {
    leg: &'static str,
    softirq: Value,
    events: Vec<HopOut<'a>>,
}

#[derive(serde::Serialize)]
struct JourneyOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    icmp_seq: u16,
    icmp_id: u16,
    family: &'static str,
    target: &'a Option<String>,
    rtt_ns: Option<u64>,
    ping_rtt_ns: Option<u64>,
    total_ns: u64,
    complete: bool,
    socket: Option<&'static str>,
    outcome: Value,
    missing: Value,
    legs: Vec<LegOut<'a>>,
}

fn softirq_json(s: &Option<SoftirqWhere>) -> Value {
    match s {
        None => Value::Null,
        Some(s) => json!({
            "context": s.context.name(),
            "cpu": s.cpu,
            "comm": s.comm,
            "pid": s.pid,
            "wait_ns": s.wait_ns,
            "entered": s.entered,
        }),
    }
}

fn journey_out<'a>(d: &'a Done, meta: &'a Meta, style: Style) -> JourneyOut<'a> {
    let j = &d.journey;
    let legs = [Leg::Request, Leg::Reply]
        .iter()
        .enumerate()
        .map(|(i, &leg)| LegOut {
            leg: leg.name(),
            softirq: softirq_json(&j.softirq[i]),
            events: j.leg(leg).map(|h| hop_out(h, meta, style)).collect(),
        })
        .collect();
    JourneyOut {
        kind: "journey",
        icmp_seq: j.icmp_seq,
        icmp_id: j.icmp_id,
        family: j.family_name(),
        target: &meta.target,
        rtt_ns: j.rtt_ns,
        ping_rtt_ns: d.ping_rtt_ns,
        total_ns: j.total_ns,
        complete: j.complete(),
        socket: j.socket_name(),
        outcome: outcome_json(&j.outcome, meta),
        missing: j
            .missing
            .iter()
            .map(|(l, s)| json!({"leg": l.map(|l| l.name()), "stage": s.name()}))
            .collect(),
        legs,
    }
}

/// A journey as one line of JSON.
pub fn journey_json_line(d: &Done, meta: &Meta, style: Style) -> String {
    serde_json::to_string(&journey_out(d, meta, style)).expect("plain data serializes")
}

/// A journey as a JSON value (the same object as `journey_json_line`).
pub fn journey_json(d: &Done, meta: &Meta, style: Style) -> Value {
    serde_json::to_value(journey_out(d, meta, style)).expect("plain data serializes")
}

fn hist_json(h: &Histogram) -> Value {
    json!({
        "count": h.count,
        "min_ns": (h.count > 0).then_some(h.min),
        "p50_ns": h.quantile(0.5),
        "p90_ns": h.quantile(0.9),
        "p99_ns": h.quantile(0.99),
        "max_ns": (h.count > 0).then_some(h.max),
        "mean_ns": h.mean(),
    })
}

pub fn summary_json(stats: &Stats, meta: &Meta, t: &Totals) -> Value {
    let stages: Vec<Value> = stats
        .order()
        .iter()
        .map(|r| {
            let mut v = hist_json(&stats.rows[r]);
            v["leg"] = json!(r.leg.name());
            v["stage"] = json!(r.stage.name());
            v["at_return"] = json!(r.at_return);
            v
        })
        .collect();
    let probes: Vec<Value> = meta
        .stages
        .iter()
        .map(|s| json!({"stage": s.stage, "backend": s.backend, "probes": s.probes, "missing": s.missing}))
        .collect();
    json!({
        "type": "summary",
        "kernel": meta.kernel,
        "backend": meta.backend,
        "command": meta.command,
        "target": meta.target,
        "resolution": meta.resolution,
        "netns": meta.netns,
        "journeys": stats.journeys,
        "incomplete": stats.incomplete,
        "events": t.events,
        "lost_events": t.lost,
        "missed_runs": t.missed,
        "submitted_events": t.submitted,
        "lotrace": t.usage.map(|u| json!({
            "cpu_ns": u.cpu_ns,
            "max_rss_kb": u.max_rss_kb,
            "wall_ns": u.wall_ns,
        })),
        "discarded_events": t.discarded,
        "rtt": hist_json(&stats.rtt),
        "in_kernel": stats.in_kernel,
        "softirq": {"inline": stats.softirq_inline, "ksoftirqd": stats.softirq_ksoftirqd},
        "stages": stages,
        "probes": probes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::journey::{build_journey, tests::echo},
        model::plan::{BackendChoice, Caps, plan},
    };
    use lotrace_common::catalog::PROBES;

    fn meta() -> Meta {
        let caps = Caps {
            tracefs: Ok(()),
            tracepoints: PROBES
                .iter()
                .filter_map(|p| p.tracepoint())
                .map(|(c, n)| format!("{c}:{n}"))
                .collect(),
            kprobe: Err("this kernel is built without CONFIG_KPROBES".into()),
            ..Caps::default()
        };
        let p = plan(&caps, BackendChoice::Auto);
        let mut m = Meta {
            kernel: "6.18.0".into(),
            command: vec!["ping".into(), "127.0.0.1".into()],
            target: Some("127.0.0.1".into()),
            backend: "auto".into(),
            ..Default::default()
        };
        m.set_probes(&p, &p.labels());
        m
    }

    fn done() -> Done {
        Done {
            journey: build_journey(echo(1, 0), &[]),
            ping_rtt_ns: Some(45_000),
        }
    }

    #[test]
    fn explanations_in_both_languages() {
        let style = Style {
            explain: Some(Lang::Zh),
            hist: false,
        };
        let t = journey_text(&done(), &meta(), style);
        assert!(t.contains("↳ 回环驱动"), "{t}");
        let stages: std::collections::BTreeSet<_> =
            done().journey.hops.iter().map(|h| h.stage).collect();
        assert_eq!(t.matches("↳ ").count(), stages.len(), "each stage once");
        let v = journey_json(
            &done(),
            &meta(),
            Style {
                explain: Some(Lang::En),
                hist: false,
            },
        );
        assert!(
            v["legs"][0]["events"][0]["explain"]
                .as_str()
                .unwrap()
                .contains("sendto")
        );
    }

    #[test]
    fn formats_durations() {
        assert_eq!(fmt_ns(850), "850 ns");
        assert_eq!(fmt_ns(12_345), "12.35 µs");
        assert_eq!(fmt_ns(1_500_000), "1.50 ms");
        assert_eq!(fmt_ns(2_000_000_000), "2.00 s");
        assert_eq!(fmt_signed(-1500), "-1.50 µs");
    }

    #[test]
    fn timeline_shows_every_hop() {
        let t = journey_text(&done(), &meta(), Style::default());
        assert!(t.contains("icmp_seq=1"));
        assert!(t.contains("kernel RTT 6.40 µs · ping said 45.00 µs"));
        assert_eq!(t.matches("\n   request ").count(), 11);
        assert_eq!(t.matches("\n   reply ").count(), 10);
        assert!(t.contains("loopback_xmit ↩"));
        assert!(t.contains("inline in ping/100 on CPU 2"));
        assert!(!t.contains("incomplete"));
    }

    #[test]
    fn json_journey_has_the_documented_fields() {
        let v = journey_json(&done(), &meta(), Style::default());
        assert_eq!(v["type"], "journey");
        assert_eq!(v["icmp_seq"], 1);
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["target"], "127.0.0.1");
        assert_eq!(v["rtt_ns"], 6400);
        assert_eq!(v["legs"][0]["leg"], "request");
        let ev = &v["legs"][0]["events"][0];
        assert_eq!(ev["stage"], "sendto");
        assert_eq!(ev["t_ns"], 0);
        assert_eq!(ev["probe"], "tracepoint:syscalls:sys_enter_sendto");
        assert_eq!(ev["context"], "task");
        assert_eq!(v["legs"][1]["events"].as_array().unwrap().len(), 10);
        // One line of JSON per journey.
        assert!(!v.to_string().contains('\n'));
    }

    #[test]
    fn summary_lists_stages_and_probes() {
        let m = meta();
        let mut st = Stats::default();
        st.add(&done().journey);
        let t = Totals {
            events: 21,
            lost: 0,
            discarded: 0,
            ..Default::default()
        };
        let v = summary_json(&st, &m, &t);
        assert_eq!(v["journeys"], 1);
        assert_eq!(v["lost_events"], 0);
        let probes = v["probes"].as_array().unwrap();
        let dq = probes
            .iter()
            .find(|p| p["stage"] == "dev_queue_xmit")
            .unwrap();
        assert_eq!(dq["probes"][0], "tracepoint:net:net_dev_queue");
        let ip = probes.iter().find(|p| p["stage"] == "ip_rcv").unwrap();
        assert!(
            ip["missing"].as_str().unwrap().contains("CONFIG_KPROBES"),
            "{ip}"
        );
        assert_eq!(dq["backend"], "tracepoint");
        let text = summary_text(
            &st,
            &m,
            &t,
            Style {
                explain: None,
                hist: true,
            },
        );
        assert!(text.contains("where the time goes"));
        assert!(text.contains("latency histograms"));
        assert!(text.contains("not observed on this kernel"));
        assert!(text.contains("ip_rcv"));
    }
}

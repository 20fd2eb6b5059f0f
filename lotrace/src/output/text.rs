//! Terminal text: a timeline per journey and the summary tables.

use std::fmt::Write as _;

use lotrace_common::ProbeId;

use crate::{
    model::{
        exchange::{Exchange, ExchangeKind},
        flow::{Flow, Packet, Proto, Reach, tcp_flag_names},
        journey::family_name,
        journey::{Hop, Journey, Leg, Outcome},
        meta::Meta,
        session::{Done, Totals},
        stats::{Histogram, PacketStats, Stats, row_label},
    },
    output::{
        Style, explain, explain_flow, fmt_ns,
        hist::histograms,
        words::{detail, outcome_words, softirq_words},
        write_ns, write_signed_ns,
    },
};

/// The probe column: a tracepoint's name (classic or raw: `probes` and
/// the JSON say which), or a function probe's label.
fn short_probe(p: ProbeId, meta: &Meta) -> String {
    let label = meta.probe_label(p);
    match label
        .strip_prefix("tracepoint:")
        .or_else(|| label.strip_prefix("raw_tracepoint:"))
    {
        Some(tp) => tp.rsplit(':').next().unwrap_or(tp).to_string(),
        None => label.into_owned(),
    }
}

fn spaces(s: &mut String, n: usize) {
    for _ in 0..n {
        s.push(' ');
    }
}

/// `text` left-aligned in `width` characters, as `{:<width}` does.
fn pad(s: &mut String, text: &str, width: usize) {
    s.push_str(text);
    spaces(s, width.saturating_sub(text.chars().count()));
}

/// `text` right-aligned in `width` characters, as `{:>width}` does.
fn pad_right(s: &mut String, text: &str, width: usize) {
    spaces(s, width.saturating_sub(text.chars().count()));
    s.push_str(text);
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
    hops_text(&mut s, &j.hops, meta, style, true);
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

/// A TCP segment's or UDP datagram's journey: what it was, then its
/// hops.
pub fn packet_text(p: &Packet, flow: Option<&Flow>, meta: &Meta, style: Style) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "── {} {} ── {} after {} ──",
        packet_title(p, flow),
        packet_wire(p),
        p.reach.name(),
        fmt_ns(p.reach_ns())
    );
    let _ = writeln!(
        s,
        "   {:<26} {:>10} {:>11} {:>4}  {:<20} {:<9} probe",
        "stage", "+prev", "since xmit", "cpu", "task", "context"
    );
    hops_text(&mut s, &p.hops, meta, style, false);
    let _ = writeln!(
        s,
        "   total {} over {} stages",
        fmt_ns(p.total_ns),
        p.hops.len()
    );
    if p.segmented {
        let _ = writeln!(
            s,
            "   first met at the driver's transmit: a segment GSO cut from a larger one (validate_xmit_skb), a new skb"
        );
    }
    if let Some(n) = p.retransmits {
        let _ = writeln!(
            s,
            "   a retransmission of segment {n}{}: the same sequence number and bytes",
            if p.reverse { " back" } else { "" }
        );
    }
    let merged = p.merged_bytes();
    if merged > 0 {
        let _ = writeln!(
            s,
            "   its skb gave the reader {merged} bytes more: later segments merged into it in the receive queue"
        );
    }
    s
}

/// The TCP and UDP packets' part of the summary: how many, how far they
/// went, and the time from each stage to the next.
pub fn packets_summary_text(ps: &PacketStats, flows: usize) -> String {
    let mut s = String::new();
    if ps.is_empty() {
        return s;
    }
    let counts: Vec<String> = ps
        .packets
        .iter()
        .map(|(p, n)| format!("{n} {} {}", p.name().to_uppercase(), p.packet_words().1))
        .collect();
    let _ = writeln!(
        s,
        "\n   TCP and UDP: {} in {flows} flow{}",
        counts.join(", "),
        if flows == 1 { "" } else { "s" }
    );
    for (proto, n) in ps.packets.iter().filter(|_| !ps.reach.is_empty()) {
        let reach: Vec<String> = ps
            .reach
            .iter()
            .filter(|((p, _), _)| p == proto)
            .map(|((_, r), c)| format!("{c} {r}"))
            .collect();
        let _ = writeln!(
            s,
            "   {} ({n}): last seen {}",
            proto.name(),
            reach.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "\n   {:<5} {:<29} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "proto", "stage (time since previous)", "count", "min", "p50", "p90", "p99", "max"
    );
    for ((proto, _, at_return), (stage, h)) in &ps.rows {
        if h.count == 0 {
            continue;
        }
        let label = row_label(*stage, *at_return);
        let _ = writeln!(s, "   {:<5} {:<29} {}", proto.name(), label, hist_cols(h));
    }
    for (proto, h) in &ps.total {
        let _ = writeln!(
            s,
            "   {:<5} {:<29} {}",
            proto.name(),
            "packet: first→last stage",
            hist_cols(h)
        );
    }
    if !ps.exchanges.is_empty() {
        let _ = writeln!(
            s,
            "\n   {:<5} {:<29} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "proto", "exchange", "count", "min", "p50", "p90", "p99", "max"
        );
    }
    for ((proto, kind), x) in &ps.exchanges {
        for (label, h) in x.rows(kind) {
            let _ = writeln!(s, "   {:<5} {:<29} {}", proto.name(), label, hist_cols(h));
        }
        if x.unanswered > 0 {
            let _ = writeln!(
                s,
                "   {:<5} {} requests with no response seen",
                proto.name(),
                x.unanswered
            );
        }
    }
    s
}

/// An exchange: a request and its response (or a TCP handshake), each
/// direction's kernel time, and the server's own time between.
pub fn exchange_text(x: &Exchange, flow: Option<&Flow>) -> String {
    let mut s = String::new();
    let ends = match flow {
        Some(f) => {
            let (c, sv) = f.ends(x.request_reverse);
            format!("{c} ⇄ {sv}")
        }
        None => family_name(x.request.first().map_or(0, |p| p.family)).to_string(),
    };
    let numbers = |ps: &[Packet]| {
        ps.iter()
            .map(|p| p.number.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let total = x
        .total_ns()
        .map(|t| format!(" ══ {}", fmt_ns(t)))
        .unwrap_or_default();
    let (what, unit) = x.proto.packet_words();
    let plural = |n: usize| if n == 1 { what } else { unit };
    match x.kind {
        ExchangeKind::Handshake => {
            let _ = writeln!(
                s,
                "══ {} {ends} · flow {} handshake{total} ══",
                x.proto.name(),
                x.flow
            );
            let (syn, ack) = (&x.request[0], &x.request[x.request.len() - 1]);
            let synack = &x.response[0];
            let at = |p: &Packet| {
                p.reach_hop().map_or("?".into(), |h| {
                    fmt_ns(h.ts_ns.saturating_sub(syn.sent_ns()))
                })
            };
            let _ = writeln!(
                s,
                "   SYN {} at +{} · SYN-ACK {} at +{} · ACK {} at +{} (since the SYN's first stage)",
                syn.reach.name(),
                at(syn),
                synack.reach.name(),
                at(synack),
                ack.reach.name(),
                at(ack)
            );
        }
        ExchangeKind::Request => {
            let q = x.request_way();
            let r = x.response_way();
            let _ = writeln!(
                s,
                "══ {} {ends} · flow {} exchange {}: {} bytes → {}{total} ══",
                x.proto.name(),
                x.flow,
                x.number,
                q.map_or(0, |w| w.bytes),
                r.map_or("no response".into(), |w| format!("{} bytes", w.bytes)),
            );
            if let Some(q) = q {
                let _ = writeln!(
                    s,
                    "   request   {} {} ({}): sent → {} in {} (kernel{})",
                    q.packets,
                    plural(q.packets),
                    numbers(&x.request),
                    q.reach.name(),
                    fmt_ns(q.ns()),
                    reader_words(&x.request)
                );
            }
            if let Some(n) = x.server_ns() {
                let read = q.is_some_and(|q| q.reach == Reach::Read);
                let _ = writeln!(
                    s,
                    "   server    {} from {} the request to sending the response (application)",
                    fmt_ns(n),
                    if read { "reading" } else { "queueing" }
                );
            }
            if let Some(r) = r {
                let _ = writeln!(
                    s,
                    "   response  {} {} ({} back): sent → {} in {} (kernel{})",
                    r.packets,
                    plural(r.packets),
                    numbers(&x.response),
                    r.reach.name(),
                    fmt_ns(r.ns()),
                    reader_words(&x.response)
                );
            }
        }
    }
    s
}

/// `, read by curl/1234`: the last reader seen.
fn reader_words(ps: &[Packet]) -> String {
    match ps.iter().rev().find_map(Packet::reader) {
        Some(h) => format!(", read by {}/{}", h.comm, h.pid),
        None => String::new(),
    }
}

/// `tcp 127.0.0.1:41000 → 127.0.0.1:8000 · flow 1 segment 3`.
fn packet_title(p: &Packet, flow: Option<&Flow>) -> String {
    let what = p.proto.packet_words().0;
    match flow {
        Some(f) => {
            let (from, to) = f.ends(p.reverse);
            format!(
                "{} {from} → {to} · flow {} {what} {}{}",
                p.proto.name(),
                p.flow,
                p.number,
                if p.reverse { " back" } else { "" }
            )
        }
        None => format!(
            "{} {} · flow {} {what} {}{}",
            p.proto.name(),
            family_name(p.family),
            p.flow,
            p.number,
            if p.reverse { " back" } else { "" }
        ),
    }
}

/// `[SYN,ACK] seq 1234 · 0 bytes`, from what its transmit read.
fn packet_wire(p: &Packet) -> String {
    match p.wire {
        None => "· headers not seen".into(),
        Some(w) if p.proto == Proto::Tcp => format!(
            "[{}] seq {} · {} bytes",
            tcp_flag_names(w.tcp_flags),
            w.tcp_seq,
            w.payload
        ),
        Some(w) => format!("· {} bytes", w.payload),
    }
}

/// The hops of a journey, a line each, with `--explain`'s sentence under
/// each stage's first; `legs` puts the leg in the first column (an
/// echo's; without, a TCP or UDP packet's, explained as such).
fn hops_text(s: &mut String, hops: &[Hop], meta: &Meta, style: Style, legs: bool) {
    let explain = if legs { explain } else { explain_flow };
    let mut explained = Vec::new();
    // One scratch string for the right-aligned times: a flood prints
    // millions of lines.
    let mut tmp = String::new();
    for h in hops {
        let start = s.len();
        s.push_str("   ");
        if legs {
            pad(s, h.leg.name(), 8);
            s.push(' ');
        }
        let stage = h.stage.name();
        s.push_str(stage);
        if h.probe.info().at_return {
            s.push_str(" ↩");
            spaces(s, 26 - 2 - stage.len().min(24));
        } else {
            spaces(s, 26 - stage.len().min(26));
        }
        s.push(' ');
        tmp.clear();
        write_ns(&mut tmp, h.delta_ns);
        pad_right(s, &tmp, 10);
        s.push(' ');
        tmp.clear();
        write_signed_ns(&mut tmp, h.t_ns);
        pad_right(s, &tmp, 11);
        s.push(' ');
        pad_right(s, itoa::Buffer::new().format(h.cpu), 4);
        s.push_str("  ");
        let comm = h.comm.as_str();
        let mut pid = itoa::Buffer::new();
        let pid = pid.format(h.pid);
        s.push_str(comm);
        s.push('/');
        s.push_str(pid);
        spaces(
            s,
            20usize.saturating_sub(comm.chars().count() + 1 + pid.len()),
        );
        s.push(' ');
        pad(s, h.context.name(), 9);
        s.push(' ');
        s.push_str(&short_probe(h.probe, meta));
        if let Some(d) = detail(h, meta) {
            let _ = write!(s, "  ({d})");
        }
        let end = start + s[start..].trim_end().len();
        s.truncate(end);
        s.push('\n');
        if let Some(lang) = style.explain
            && !explained.contains(&h.stage)
        {
            explained.push(h.stage);
            let _ = writeln!(s, "{:>14}↳ {}", "", explain(h.stage, lang));
        }
    }
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
    let packets = if t.packets > 0 {
        format!("{} TCP/UDP packets, ", t.packets)
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "\n═══ lotrace summary: {} journeys ({} incomplete), {packets}{} events, {} lost{} ═══",
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
    // A trace of TCP and UDP only: the echoes' tables would be empty.
    if stats.journeys > 0 || t.packets == 0 {
        echo_tables(&mut s, stats);
    }
    // TCP's and UDP's own stages matter only to a trace that had packets.
    let unseen: Vec<_> = meta
        .stages
        .iter()
        .filter(|s| s.backend.is_none())
        .filter(|s| {
            t.packets > 0
                || !lotrace_common::Stage::from_name(&s.stage).is_some_and(|s| s.flows_only())
        })
        .collect();
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

/// The echoes' part of the summary: per-row times, the RTT, the
/// in-kernel outcomes and where NET_RX ran.
fn echo_tables(s: &mut String, stats: &Stats) {
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
        if o.unassigned_events > 0 {
            let _ = writeln!(
                s,
                "   {} stage observations went to no echo: their sequence's slot held another echo in flight, or their send was not seen",
                o.unassigned_events
            );
        }
    }
    let _ = writeln!(
        s,
        "\n   NET_RX softirq per receive: {} inline (in the task that was running), {} in ksoftirqd",
        stats.softirq.inline, stats.softirq.ksoftirqd
    );
    if stats.softirq.backlog_thread > 0 {
        let _ = writeln!(
            s,
            "   received by a backlog thread (backlog_napi/N, no softirq): {}",
            stats.softirq.backlog_thread
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::session::Totals,
        output::{
            Lang,
            testdata::{done, meta},
        },
    };

    #[test]
    fn explanations_once_per_stage() {
        let style = Style {
            explain: Some(Lang::Zh),
            hist: false,
        };
        let t = journey_text(&done(), &meta(), style);
        assert!(t.contains("↳ 回环驱动"), "{t}");
        let stages: std::collections::BTreeSet<_> =
            done().journey.hops.iter().map(|h| h.stage).collect();
        assert_eq!(t.matches("↳ ").count(), stages.len(), "each stage once");
    }

    #[test]
    fn timeline_shows_every_hop() {
        let t = journey_text(&done(), &meta(), Style::default());
        assert!(t.contains("icmp_seq=1"));
        assert!(t.contains("kernel RTT 6.40 µs · ping said 45.00 µs"));
        assert_eq!(t.matches("\n   request ").count(), 11);
        assert_eq!(t.matches("\n   reply ").count(), 11);
        assert!(t.contains("loopback_xmit ↩"));
        assert!(t.contains("inline in ping/100 on CPU 2"));
        assert!(!t.contains("incomplete"));
    }

    #[test]
    fn summary_lists_stages_and_what_was_not_observed() {
        let mut st = Stats::default();
        st.add(&done().journey);
        let t = Totals {
            packets: 0,
            events: 21,
            ..Default::default()
        };
        let text = summary_text(
            &st,
            &meta(),
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

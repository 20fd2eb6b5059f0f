//! JSON Lines: one object per journey, then one summary object.

use lotrace_common::catalog::NO_DROP_REASON;
use serde_json::{Value, json};

use crate::{
    model::{
        exchange::{Exchange, Way},
        flow::{Flow, Packet, Proto, tcp_flag_names},
        journey::{Hop, Leg, Outcome, SoftirqWhere, family_name},
        meta::Meta,
        session::{Done, Totals},
        stats::{Histogram, PacketStats, Stats},
    },
    output::{Style, explain, explain_flow, words::detail},
};

fn outcome_json(o: &Outcome, meta: &Meta) -> Value {
    match o {
        Outcome::Answered => json!({"kind": "answered"}),
        Outcome::Dropped { reason, after } => json!({
            "kind": "dropped",
            // null on kernels whose drops carry no reason
            "reason": (*reason != NO_DROP_REASON).then(|| meta.drop_reason(*reason)),
            "reason_code": (*reason != NO_DROP_REASON).then_some(reason),
            "after": after.map(|s| s.name()),
        }),
        Outcome::NoRoute { err } => json!({"kind": "no_route", "error": err}),
        Outcome::Unanswered => json!({"kind": "unanswered"}),
    }
}

/// A string as JSON, escaped exactly as serde_json escapes it. Most of
/// a journey's strings need no escape at all, and are copied as they are.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(&serde_json::to_string(s).expect("a string serializes"));
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// One of lotrace's own names (a stage, a context), which never need an
/// escape (a test holds every one to that).
fn push_name(out: &mut String, s: &str) {
    out.push('"');
    out.push_str(s);
    out.push('"');
}

/// Appends `",\"key\":n"`.
fn push_num(out: &mut String, key: &str, n: impl itoa::Integer) {
    out.push_str(key);
    out.push_str(itoa::Buffer::new().format(n));
}

/// A leg's events as a JSON array, written by hand rather than through
/// serde: a flood renders millions of events, and most of serde's time
/// went into escaping the same field names again and again. The fields,
/// in order: stage, at_return, t_ns, delta_ns, cpu, pid, tgid, comm,
/// context, probe, then detail, fragment and explain when they apply.
fn hops_json<'a>(hops: impl Iterator<Item = &'a Hop>, meta: &Meta, style: Style) -> String {
    hops_json_as(hops, meta, style, explain)
}

/// [`hops_json`], explained by `explain`.
fn hops_json_as<'a>(
    hops: impl Iterator<Item = &'a Hop>,
    meta: &Meta,
    style: Style,
    explain: fn(lotrace_common::Stage, crate::output::Lang) -> &'static str,
) -> String {
    let mut out = String::with_capacity(4096);
    out.push('[');
    for (i, h) in hops.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"stage\":");
        push_name(&mut out, h.stage.name());
        out.push_str(if h.probe.info().at_return {
            ",\"at_return\":true"
        } else {
            ",\"at_return\":false"
        });
        push_num(&mut out, ",\"t_ns\":", h.t_ns);
        push_num(&mut out, ",\"delta_ns\":", h.delta_ns);
        push_num(&mut out, ",\"cpu\":", h.cpu);
        push_num(&mut out, ",\"pid\":", h.pid);
        push_num(&mut out, ",\"tgid\":", h.tgid);
        out.push_str(",\"comm\":");
        push_json_str(&mut out, h.comm.as_str());
        out.push_str(",\"context\":");
        push_name(&mut out, h.context.name());
        out.push_str(",\"probe\":");
        push_json_str(&mut out, &meta.probe_label(h.probe));
        if let Some(d) = detail(h, meta) {
            out.push_str(",\"detail\":");
            push_json_str(&mut out, &d);
        }
        if h.fragment {
            out.push_str(",\"fragment\":true");
        }
        if let Some(lang) = style.explain {
            out.push_str(",\"explain\":");
            push_json_str(&mut out, explain(h.stage, lang));
        }
        out.push('}');
    }
    out.push(']');
    out
}

fn softirq_json(s: &Option<SoftirqWhere>) -> Value {
    match s {
        None => Value::Null,
        Some(s) => json!({
            "context": s.context.name(),
            "cpu": s.cpu,
            "comm": s.comm.as_str(),
            "pid": s.pid,
            "wait_ns": s.wait_ns,
            "entered": s.entered,
        }),
    }
}

/// Appends `v` as JSON.
fn push_json<T: serde::Serialize + ?Sized>(out: &mut String, v: &T) {
    out.push_str(&serde_json::to_string(v).expect("plain data serializes"));
}

/// A journey as one line of JSON, written by hand (see [`hops_json`]).
/// The keys, in order: type, icmp_seq, icmp_id, family, target, rtt_ns,
/// ping_rtt_ns, total_ns, complete, socket, outcome, missing, legs (each
/// leg: leg, softirq, events).
pub fn journey_json_line(d: &Done, meta: &Meta, style: Style) -> String {
    use std::fmt::Write as _;
    let j = &d.journey;
    let mut out = String::with_capacity(8192);
    let _ = write!(
        out,
        "{{\"type\":\"journey\",\"icmp_seq\":{},\"icmp_id\":{},\"family\":",
        j.icmp_seq, j.icmp_id
    );
    push_json_str(&mut out, j.family_name());
    out.push_str(",\"target\":");
    push_json(&mut out, &meta.target);
    out.push_str(",\"rtt_ns\":");
    push_json(&mut out, &j.rtt_ns);
    out.push_str(",\"ping_rtt_ns\":");
    push_json(&mut out, &d.ping_rtt_ns);
    let _ = write!(
        out,
        ",\"total_ns\":{},\"complete\":{},\"socket\":",
        j.total_ns,
        j.complete()
    );
    push_json(&mut out, &j.socket_name());
    out.push_str(",\"outcome\":");
    push_json(&mut out, &outcome_json(&j.outcome, meta));
    out.push_str(",\"missing\":");
    let missing: Value = j
        .missing
        .iter()
        .map(|(l, s)| json!({"leg": l.map(|l| l.name()), "stage": s.name()}))
        .collect();
    push_json(&mut out, &missing);
    out.push_str(",\"legs\":[");
    for (i, leg) in [Leg::Request, Leg::Reply].into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"leg\":");
        push_json_str(&mut out, leg.name());
        out.push_str(",\"softirq\":");
        push_json(&mut out, &softirq_json(&j.softirq[i]));
        out.push_str(",\"events\":");
        out.push_str(&hops_json(j.leg(leg), meta, style));
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// Appends `key` and `n`, or `null`.
fn push_opt_num(out: &mut String, key: &str, n: Option<impl itoa::Integer>) {
    match n {
        Some(n) => push_num(out, key, n),
        None => {
            out.push_str(key);
            out.push_str("null");
        }
    }
}

/// Appends `s` as a JSON string, or `null`.
fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.push_str("null"),
    }
}

/// A TCP segment's or UDP datagram's journey as one line of JSON, written
/// by hand like the events (a busy server's trace writes hundreds of
/// thousands). The keys, in order: type ("packet"), proto, family, flow,
/// number, direction, src, dst, tcp_flags, tcp_seq, payload, reach,
/// reach_ns, merged_bytes, retransmits, segmented, total_ns, events.
pub fn packet_json_line(p: &Packet, flow: Option<&Flow>, meta: &Meta, style: Style) -> String {
    let ends = flow.map(|f| f.ends(p.reverse));
    let tcp_wire = p.wire.filter(|_| p.proto == Proto::Tcp);
    let mut out = String::with_capacity(4096);
    out.push_str("{\"type\":\"packet\",\"proto\":");
    push_name(&mut out, p.proto.name());
    out.push_str(",\"family\":");
    push_name(&mut out, family_name(p.family));
    push_num(&mut out, ",\"flow\":", p.flow);
    push_num(&mut out, ",\"number\":", p.number);
    out.push_str(if p.reverse {
        ",\"direction\":\"back\""
    } else {
        ",\"direction\":\"forth\""
    });
    out.push_str(",\"src\":");
    push_opt_str(&mut out, ends.as_ref().map(|e| e.0.as_str()));
    out.push_str(",\"dst\":");
    push_opt_str(&mut out, ends.as_ref().map(|e| e.1.as_str()));
    out.push_str(",\"tcp_flags\":");
    push_opt_str(
        &mut out,
        tcp_wire.map(|w| tcp_flag_names(w.tcp_flags)).as_deref(),
    );
    push_opt_num(&mut out, ",\"tcp_seq\":", tcp_wire.map(|w| w.tcp_seq));
    push_opt_num(&mut out, ",\"payload\":", p.wire.map(|w| w.payload));
    out.push_str(",\"reach\":");
    push_name(&mut out, p.reach.name());
    push_num(&mut out, ",\"reach_ns\":", p.reach_ns());
    push_num(&mut out, ",\"merged_bytes\":", p.merged_bytes());
    push_opt_num(&mut out, ",\"retransmits\":", p.retransmits);
    out.push_str(if p.segmented {
        ",\"segmented\":true"
    } else {
        ",\"segmented\":false"
    });
    push_num(&mut out, ",\"total_ns\":", p.total_ns);
    out.push_str(",\"events\":");
    out.push_str(&hops_json_as(p.hops.iter(), meta, style, explain_flow));
    out.push('}');
    out
}

/// One direction of an exchange (see `exchange_json_line`), or `null`.
fn push_way(out: &mut String, w: Option<Way>, ps: &[Packet]) {
    let Some(w) = w else {
        out.push_str("null");
        return;
    };
    push_num(out, "{\"bytes\":", w.bytes);
    out.push_str(",\"packets\":[");
    for (i, p) in ps.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(itoa::Buffer::new().format(p.number));
    }
    out.push(']');
    push_num(out, ",\"sent_ns\":", w.sent_ns);
    push_num(out, ",\"arrived_ns\":", w.arrived_ns);
    out.push_str(",\"reach\":");
    push_name(out, w.reach.name());
    push_num(out, ",\"kernel_ns\":", w.ns());
    out.push_str(",\"reader\":");
    match ps.iter().rev().find_map(Packet::reader) {
        Some(h) => {
            out.push_str("{\"comm\":");
            push_json_str(out, h.comm.as_str());
            push_num(out, ",\"pid\":", h.pid);
            push_num(out, ",\"tgid\":", h.tgid);
            out.push('}');
        }
        None => out.push_str("null"),
    }
    out.push('}');
}

/// An exchange as one line of JSON, written by hand (one per request).
/// The keys, in order: type ("exchange"), proto, kind, flow, number,
/// client, server, request, server_ns, response, total_ns.
pub fn exchange_json_line(x: &Exchange, flow: Option<&Flow>) -> String {
    let ends = flow.map(|f| f.ends(x.request_reverse));
    let mut out = String::with_capacity(512);
    out.push_str("{\"type\":\"exchange\",\"proto\":");
    push_name(&mut out, x.proto.name());
    out.push_str(",\"kind\":");
    push_name(&mut out, x.kind.name());
    push_num(&mut out, ",\"flow\":", x.flow);
    push_num(&mut out, ",\"number\":", x.number);
    out.push_str(",\"client\":");
    push_opt_str(&mut out, ends.as_ref().map(|e| e.0.as_str()));
    out.push_str(",\"server\":");
    push_opt_str(&mut out, ends.as_ref().map(|e| e.1.as_str()));
    out.push_str(",\"request\":");
    push_way(&mut out, x.request_way(), &x.request);
    push_opt_num(&mut out, ",\"server_ns\":", x.server_ns());
    out.push_str(",\"response\":");
    push_way(&mut out, x.response_way(), &x.response);
    push_opt_num(&mut out, ",\"total_ns\":", x.total_ns());
    out.push('}');
    out
}

/// The TCP and UDP packets' part of the summary (its `packets` key).
pub fn packets_summary_json(ps: &PacketStats, flows: usize) -> Value {
    let stages: Vec<Value> = ps
        .rows
        .iter()
        .filter(|(_, (_, h))| h.count > 0)
        .map(|((proto, _, at_return), (stage, h))| {
            let mut v = hist_json(h);
            v["proto"] = json!(proto.name());
            v["stage"] = json!(stage.name());
            v["at_return"] = json!(at_return);
            v
        })
        .collect();
    let by_proto = |proto: Proto| {
        json!({
            "count": ps.packets.get(&proto).copied().unwrap_or(0),
            "reach": ps.reach.iter().filter(|((p, _), _)| *p == proto)
                .map(|((_, r), n)| (r.to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "total": ps.total.get(&proto).map(hist_json),
        })
    };
    let exchanges: Vec<Value> = ps
        .exchanges
        .iter()
        .map(|((proto, kind), x)| {
            json!({
                "proto": proto.name(),
                "kind": kind,
                "request": hist_json(&x.request),
                "server": hist_json(&x.server),
                "response": hist_json(&x.response),
                "total": hist_json(&x.total),
                "unanswered": x.unanswered,
            })
        })
        .collect();
    json!({
        "flows": flows,
        "exchanges": exchanges,
        "tcp": by_proto(Proto::Tcp),
        "udp": by_proto(Proto::Udp),
        "stages": stages,
    })
}

/// A journey as a JSON value (the same object as `journey_json_line`).
pub fn journey_json(d: &Done, meta: &Meta, style: Style) -> Value {
    serde_json::from_str(&journey_json_line(d, meta, style)).expect("the line is JSON")
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
        "assembled": t.assembled.map(|a| json!({
            "records": a.records,
            "events": a.events,
        })),
        "rtt": hist_json(&stats.rtt),
        "in_kernel": stats.in_kernel,
        "softirq": {
            "inline": stats.softirq.inline,
            "ksoftirqd": stats.softirq.ksoftirqd,
            "backlog_thread": stats.softirq.backlog_thread,
        },
        "stages": stages,
        "probes": probes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{
        Lang,
        testdata::{done, meta},
    };

    #[test]
    fn names_written_unescaped_need_no_escape() {
        use crate::model::journey::Context;
        use lotrace_common::catalog::STAGES;
        let contexts = [
            Context::Task,
            Context::SoftirqInline,
            Context::Ksoftirqd,
            Context::BacklogThread,
        ];
        let names = STAGES
            .iter()
            .map(|s| s.name)
            .chain(contexts.iter().map(|c| c.name()));
        for n in names {
            assert_eq!(serde_json::to_string(n).unwrap(), format!("\"{n}\""));
        }
    }

    /// The packet's and the exchange's lines, written by hand, say what
    /// serde says of the same fields, a TCP request over two segments
    /// and its response; and of a UDP datagram with no flow announced.
    #[test]
    fn packets_and_exchanges_as_serde_writes_them() {
        use crate::model::exchange::ExchangeBuilder;
        use crate::model::flow::{
            build_packet,
            tests::{announce, packet},
        };
        use lotrace_common::event::{FLOW_REVERSE, PKT_TCP, PKT_UDP};
        let m = meta();
        let flow = Flow::of(&announce(1, PKT_TCP)).unwrap();
        let mut x = ExchangeBuilder::default();
        let mut ps = [
            build_packet(packet(PKT_TCP, 1, 1, 0, 100, 0x18, 100)),
            build_packet(packet(PKT_TCP, 1, 2, 1_000, 50, 0x18, 0)),
            build_packet(packet(PKT_TCP, 1, FLOW_REVERSE | 1, 90_000, 300, 0x19, 300)),
            build_packet(packet(PKT_UDP, 2, 1, 200_000, 30, 0, 0)),
        ];
        ps[1].retransmits = Some(1);
        for (p, f) in ps.iter().zip([Some(&flow), Some(&flow), Some(&flow), None]) {
            let tcp = p.proto == Proto::Tcp;
            let (src, dst) = match f.map(|f| f.ends(p.reverse)) {
                Some((a, b)) => (Some(a), Some(b)),
                None => (None, None),
            };
            let mut want = json!({
                "type": "packet",
                "proto": p.proto.name(),
                "family": family_name(p.family),
                "flow": p.flow,
                "number": p.number,
                "direction": if p.reverse { "back" } else { "forth" },
                "src": src,
                "dst": dst,
                "tcp_flags": p.wire.filter(|_| tcp).map(|w| tcp_flag_names(w.tcp_flags)),
                "tcp_seq": p.wire.filter(|_| tcp).map(|w| w.tcp_seq),
                "payload": p.wire.map(|w| w.payload),
                "reach": p.reach.name(),
                "reach_ns": p.reach_ns(),
                "merged_bytes": p.merged_bytes(),
                "retransmits": p.retransmits,
                "segmented": p.segmented,
                "total_ns": p.total_ns,
            });
            let line = packet_json_line(p, f, &m, Style::default());
            let got: Value = serde_json::from_str(&line).expect("valid JSON");
            want["events"] = got["events"].clone();
            assert_eq!(got, want, "{line}");
        }
        let mut xs = Vec::new();
        for p in &ps[..3] {
            xs.extend(x.push(p));
        }
        xs.extend(x.finish());
        assert_eq!(xs.len(), 1);
        let e = &xs[0];
        let way = |w: Option<Way>, ps: &[Packet]| match w {
            None => Value::Null,
            Some(w) => json!({
                "bytes": w.bytes,
                "packets": ps.iter().map(|p| p.number).collect::<Vec<_>>(),
                "sent_ns": w.sent_ns,
                "arrived_ns": w.arrived_ns,
                "reach": w.reach.name(),
                "kernel_ns": w.ns(),
                "reader": ps.iter().rev().find_map(Packet::reader).map(|h| json!({
                    "comm": h.comm.as_str(), "pid": h.pid, "tgid": h.tgid,
                })),
            }),
        };
        for f in [Some(&flow), None] {
            let (client, server) = match f.map(|f| f.ends(e.request_reverse)) {
                Some((c, s)) => (Some(c), Some(s)),
                None => (None, None),
            };
            let want = json!({
                "type": "exchange",
                "proto": e.proto.name(),
                "kind": e.kind.name(),
                "flow": e.flow,
                "number": e.number,
                "client": client,
                "server": server,
                "request": way(e.request_way(), &e.request),
                "server_ns": e.server_ns(),
                "response": way(e.response_way(), &e.response),
                "total_ns": e.total_ns(),
            });
            let line = exchange_json_line(e, f);
            let got: Value = serde_json::from_str(&line).expect("valid JSON");
            assert_eq!(got, want, "{line}");
            assert!(got["response"]["reader"].is_object(), "{line}");
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_escapes_them() {
        for t in [
            "ping",
            "ksoftirqd/1",
            "a\"quote",
            "back\\slash",
            "tab\tnew\nline\u{1}",
            "网络 软中断",
            "del\u{7f}",
            "",
        ] {
            let mut out = String::new();
            push_json_str(&mut out, t);
            assert_eq!(out, serde_json::to_string(t).unwrap(), "{t:?}");
        }
    }

    #[test]
    fn explanations_in_json() {
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
    fn a_drop_without_a_reason_says_so() {
        let mut m = meta();
        m.drop_reasons.insert(2, "NOT_SPECIFIED".into());
        let known = outcome_json(
            &Outcome::Dropped {
                reason: 2,
                after: None,
            },
            &m,
        );
        assert_eq!(known["reason"], "NOT_SPECIFIED");
        assert_eq!(known["reason_code"], 2);
        // A kernel before 5.17: its kfree_skb tracepoint has no reason.
        let none = Outcome::Dropped {
            reason: NO_DROP_REASON,
            after: None,
        };
        let v = outcome_json(&none, &m);
        assert!(v["reason"].is_null() && v["reason_code"].is_null(), "{v}");
        assert_eq!(
            crate::output::words::outcome_words(&none, &m),
            "dropped: reason unknown to this kernel"
        );
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
        assert_eq!(v["legs"][1]["events"].as_array().unwrap().len(), 11);
        // One line of JSON per journey.
        assert!(!v.to_string().contains('\n'));
    }

    #[test]
    fn summary_lists_stages_and_probes() {
        let mut st = Stats::default();
        st.add(&done().journey);
        let t = Totals {
            packets: 0,
            events: 21,
            ..Default::default()
        };
        let v = summary_json(&st, &meta(), &t);
        assert_eq!(v["journeys"], 1);
        assert_eq!(v["lost_events"], 0);
        let probes = v["probes"].as_array().unwrap();
        let dq = probes
            .iter()
            .find(|p| p["stage"] == "dev_queue_xmit")
            .unwrap();
        assert_eq!(dq["probes"][0], "raw_tracepoint:net:net_dev_queue");
        assert_eq!(dq["backend"], "tracepoint");
        let ip = probes.iter().find(|p| p["stage"] == "ip_rcv").unwrap();
        assert!(
            ip["missing"].as_str().unwrap().contains("CONFIG_KPROBES"),
            "{ip}"
        );
    }
}

//! JSON Lines: one object per journey, then one summary object.

use lotrace_common::catalog::NO_DROP_REASON;
use serde_json::{Value, json};

use crate::{
    model::{
        journey::{Hop, Leg, Outcome, SoftirqWhere},
        meta::Meta,
        session::{Done, Totals},
        stats::{Histogram, Stats},
    },
    output::{Style, explain, words::detail},
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
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    fragment: bool,
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
        fragment: h.fragment,
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
        "softirq": {
            "inline": stats.softirq_inline,
            "ksoftirqd": stats.softirq_ksoftirqd,
            "backlog_thread": stats.backlog_thread,
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

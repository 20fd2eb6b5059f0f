//! What a guest's lotrace output must show: `lotrace probes` with every
//! backend, each traced ping's journeys complete and in kernel order from
//! the forced backend, the in-kernel aggregation's counts, the backlog
//! thread's receives; and the matrix table's row of a run.

use anyhow::{Context as _, Result, ensure};
use lotrace_common::order::CARD;
use serde_json::Value;

use super::{BACKENDS, PINGS};
use crate::vm::Run;

/// The sockets the traced pings send on, each ping's journeys apart.
pub const SOCKETS: &[&str] = &["raw", "datagram"];

pub fn json_lines(run: &Run) -> Result<Vec<Value>> {
    run.stdout
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// The summary object of a trace's JSON Lines.
pub(super) fn summary(lines: &[Value]) -> Result<&Value> {
    lines
        .iter()
        .find(|v| v["type"] == "summary")
        .context("no summary")
}

/// A journey's events in one line, for a failure's message:
/// `request sendto@0 tracepoint:... task, ...`.
pub fn events_line(j: &Value) -> String {
    let mut evs: Vec<(&str, &Value)> = j["legs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| {
            let leg = l["leg"].as_str().unwrap_or("?");
            l["events"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |e| (leg, e))
        })
        .collect();
    evs.sort_by_key(|(_, e)| e["t_ns"].as_i64().unwrap_or(0));
    evs.iter()
        .map(|(leg, e)| {
            format!(
                "{leg} {}{}@{} {} {} cpu{}",
                e["stage"].as_str().unwrap_or("?"),
                if e["at_return"] == true { "↩" } else { "" },
                e["t_ns"],
                e["probe"].as_str().unwrap_or("?"),
                e["context"].as_str().unwrap_or("?"),
                e["cpu"]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every backend available, and PREEMPT_RT told as it is.
pub fn check_probes(run: &Run, rt: bool) -> Result<()> {
    ensure!(run.exit == 0, "lotrace probes exited with {}", run.exit);
    let v = json_lines(run)?;
    let p = v.first().context("no output from lotrace probes")?;
    ensure!(
        p["preempt_rt"] == rt,
        "preempt_rt is {}, not {rt}",
        p["preempt_rt"]
    );
    for b in BACKENDS {
        ensure!(
            p["backends"][b]["available"] == true,
            "backend {b} unavailable: {}",
            p["backends"][b]["why"]
        );
    }
    Ok(())
}

/// Does a probe label belong to `backend`?
pub(super) fn of_backend(label: &str, backend: &str) -> bool {
    let kind = label.split(':').next().unwrap_or("");
    match backend {
        "kprobe" => kind == "kprobe" || kind == "kretprobe",
        "fentry" => kind == "fentry" || kind == "fexit",
        _ => kind == "tracepoint" || kind == "raw_tracepoint",
    }
}

/// Checks a traced ping's journeys; returns them.
pub fn check_trace(run: &Run, backend: &str) -> Result<Vec<Value>> {
    ensure!(run.exit == 0, "lotrace trace exited with {}", run.exit);
    let lines = json_lines(run)?;
    let summary = summary(&lines)?;
    // Function backends must see all of the card's stages; tracepoints only
    // those this kernel has a tracepoint for (6.1 has no sock_send_length),
    // and the others must be reported as not observed.
    let observed = |stage: &str| {
        summary["probes"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["stage"] == stage))
            .is_some_and(|p| !p["backend"].is_null())
    };
    let card: Vec<&str> = CARD
        .iter()
        .map(|s| s.name())
        .filter(|s| backend != "tracepoint" || observed(s))
        .collect();
    let journeys: Vec<&Value> = lines.iter().filter(|v| v["type"] == "journey").collect();
    let list = |js: &[&Value]| {
        js.iter()
            .map(|j| {
                format!(
                    "[{} seq {} {}: {}]",
                    j["socket"],
                    j["icmp_seq"],
                    if j["complete"] == true {
                        "complete".to_string()
                    } else {
                        format!("missing {}", j["missing"])
                    },
                    events_line(j)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    ensure!(
        journeys.len() == PINGS * SOCKETS.len(),
        "{} journeys, not {}: {}",
        journeys.len(),
        PINGS * SOCKETS.len(),
        list(&journeys)
    );
    for socket in SOCKETS {
        let js: Vec<&Value> = journeys
            .iter()
            .copied()
            .filter(|j| j["socket"] == *socket)
            .collect();
        ensure!(
            js.len() == PINGS,
            "{} journeys on a {socket} socket, not {PINGS}: {}",
            js.len(),
            list(&journeys)
        );
        check_journeys(&js, backend, &card, observed("sock_deliver"))
            .with_context(|| format!("{socket} socket"))?;
    }
    ensure!(
        summary["journeys"] == (PINGS * SOCKETS.len()) as u64,
        "summary: {}",
        summary["journeys"]
    );
    ensure!(
        summary["lost_events"] == 0,
        "lost events: {}",
        summary["lost_events"]
    );
    // Each echo's events came assembled in the kernel, as one record.
    let records = summary["assembled"]["records"].as_u64().unwrap_or(0);
    ensure!(
        records >= (PINGS * SOCKETS.len()) as u64,
        "{records} journey records for {} journeys: {}",
        PINGS * SOCKETS.len(),
        summary["assembled"]
    );
    Ok(journeys.into_iter().cloned().collect())
}

/// One ping's journeys: one id, each sequence once, complete, the card's
/// stages (and the delivery to ping's socket, where observed) from the
/// forced backend, in kernel order.
fn check_journeys(journeys: &[&Value], backend: &str, card: &[&str], deliver: bool) -> Result<()> {
    let id = &journeys[0]["icmp_id"];
    let mut seqs = Vec::new();
    for j in journeys {
        let seq = j["icmp_seq"].as_u64().context("icmp_seq")?;
        ensure!(&j["icmp_id"] == id, "seq {seq}: another icmp id");
        ensure!(!seqs.contains(&seq), "seq {seq} twice");
        seqs.push(seq);
        ensure!(
            j["complete"] == true,
            "seq {seq} incomplete: missing {}; its events: {}",
            j["missing"],
            events_line(j)
        );
        let legs = j["legs"].as_array().context("legs")?;
        let mut all = Vec::new();
        for leg in legs {
            let events = leg["events"].as_array().context("events")?;
            ensure!(!events.is_empty(), "seq {seq}: empty {} leg", leg["leg"]);
            all.extend(
                events
                    .iter()
                    .map(|e| (leg["leg"].as_str().unwrap_or(""), e)),
            );
        }
        all.sort_by_key(|(_, e)| e["t_ns"].as_i64().unwrap_or(i64::MAX));
        // The card's stages from the chosen backend, in kernel order on the
        // request leg (sock_sendmsg from a tracepoint is seen at its return:
        // it is checked for presence only).
        let mut last = -1i64;
        for stage in card {
            let first = all
                .iter()
                .find(|(leg, e)| {
                    *leg == "request" && e["stage"] == *stage && e["at_return"] == false
                })
                .or_else(|| all.iter().find(|(_, e)| e["stage"] == *stage))
                .with_context(|| format!("seq {seq}: no {stage}"))?;
            let probe = first.1["probe"].as_str().unwrap_or("");
            ensure!(
                of_backend(probe, backend),
                "seq {seq}: {stage} seen by {probe}, not by {backend}"
            );
            if first.1["at_return"] == false {
                let t = first.1["t_ns"].as_i64().unwrap_or(-1);
                ensure!(t >= last, "seq {seq}: {stage} out of order");
                last = t;
            }
        }
        if deliver {
            let (_, e) = all
                .iter()
                .find(|(_, e)| e["stage"] == "sock_deliver")
                .with_context(|| format!("seq {seq}: no sock_deliver"))?;
            let probe = e["probe"].as_str().unwrap_or("");
            ensure!(
                of_backend(probe, backend),
                "seq {seq}: sock_deliver seen by {probe}, not by {backend}"
            );
        }
    }
    Ok(())
}

/// busybox's pings received by CPU 1's backlog thread: every journey
/// complete, each leg received in `backlog_napi/1`, without a softirq.
pub fn check_backlog(run: &Run) -> Result<()> {
    ensure!(run.exit == 0, "lotrace trace exited with {}", run.exit);
    let lines = json_lines(run)?;
    let journeys: Vec<&Value> = lines.iter().filter(|v| v["type"] == "journey").collect();
    ensure!(
        journeys.len() == PINGS,
        "{} journeys, not {PINGS}",
        journeys.len()
    );
    for j in journeys {
        let seq = &j["icmp_seq"];
        ensure!(
            j["complete"] == true,
            "seq {seq} incomplete: missing {}; its events: {}",
            j["missing"],
            events_line(j)
        );
        for leg in j["legs"].as_array().context("legs")? {
            let s = &leg["softirq"];
            ensure!(
                s["context"] == "backlog_thread"
                    && s["comm"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("backlog_napi/")),
                "seq {seq}: the {} was received {s}; its events: {}",
                leg["leg"],
                events_line(j)
            );
        }
    }
    let s = summary(&lines)?;
    ensure!(
        s["softirq"]["backlog_thread"] == (2 * PINGS) as u64,
        "softirq: {}",
        s["softirq"]
    );
    Ok(())
}

/// The in-kernel aggregation: every echo answered with every stage, the
/// rows there, nothing streamed.
pub fn check_summary_only(run: &Run) -> Result<()> {
    ensure!(run.exit == 0, "lotrace trace exited with {}", run.exit);
    let lines = json_lines(run)?;
    ensure!(
        lines.iter().all(|v| v["type"] != "journey"),
        "journeys were streamed"
    );
    let s = summary(&lines)?;
    ensure!(s["journeys"] == PINGS as u64, "journeys: {}", s["journeys"]);
    ensure!(
        s["in_kernel"]["answered"] == PINGS as u64,
        "outcomes: {}",
        s["in_kernel"]
    );
    ensure!(s["rtt"]["count"] == PINGS as u64, "rtt: {}", s["rtt"]);
    let stages: Vec<&str> = s["stages"]
        .as_array()
        .context("stages")?
        .iter()
        .filter_map(|r| r["stage"].as_str())
        .collect();
    for stage in CARD.iter().map(|s| s.name()) {
        ensure!(stages.contains(&stage), "no {stage} row: {stages:?}");
    }
    Ok(())
}

/// One line of the matrix table: what one lotrace invocation in one guest
/// saw.
pub struct Row {
    pub mode: String,
    pub journeys: u64,
    pub complete: u64,
    pub stages: usize,
    /// Stages no probe of this mode could observe, each with lotrace's
    /// reason.
    pub missing: Vec<(String, String)>,
    /// Tracepoints attached: how many, and how many of those raw.
    pub tracepoints: usize,
    pub raw: usize,
}

/// The table row of a trace run (`mode` is a backend or `summary-only`).
pub fn row(run: &Run, mode: &str) -> Result<Row> {
    let lines = json_lines(run)?;
    let s = summary(&lines)?;
    let journeys = s["journeys"].as_u64().unwrap_or(0);
    let probes = s["probes"].as_array().context("probes")?;
    // A probe two stages share (the transmit tracepoints) counts once.
    let labels: std::collections::BTreeSet<&str> = probes
        .iter()
        .flat_map(|p| p["probes"].as_array().into_iter().flatten())
        .filter_map(|l| l.as_str())
        .collect();
    Ok(Row {
        tracepoints: labels
            .iter()
            .filter(|l| l.starts_with("tracepoint:") || l.starts_with("raw_tracepoint:"))
            .count(),
        raw: labels
            .iter()
            .filter(|l| l.starts_with("raw_tracepoint:"))
            .count(),
        mode: mode.to_string(),
        journeys,
        complete: journeys.saturating_sub(s["incomplete"].as_u64().unwrap_or(0)),
        stages: probes.len(),
        missing: probes
            .iter()
            .filter(|p| p["backend"].is_null())
            .map(|p| {
                (
                    p["stage"].as_str().unwrap_or("?").to_string(),
                    p["missing"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    })
}

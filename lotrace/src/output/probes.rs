//! `probes`: every stage, each candidate probe, whether this kernel allows
//! it and why not, and what `--backend auto` chooses.

use std::fmt::Write as _;

use lotrace_common::catalog::Backend;
use serde_json::{Value, json};

use crate::model::{
    plan::{self, Avail, Caps, Plan},
    unavailable::Unavailable,
};

fn backend_state(caps: &Caps, b: Backend) -> &Result<(), Unavailable> {
    match b {
        Backend::Fentry => &caps.fentry,
        Backend::Kprobe => &caps.kprobe,
        Backend::Tracepoint => &caps.tracefs,
    }
}

fn candidate_label(c: &plan::Candidate) -> String {
    let info = c.probe.info();
    match &c.avail {
        Avail::Yes(t) => plan::label(info, t),
        Avail::No(_) => plan::nominal_label(info),
    }
}

pub fn text(caps: &Caps, plan: &Plan, kernel: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "kernel {kernel}");
    for b in Backend::ALL {
        let state = match backend_state(caps, b) {
            Ok(()) => "available".to_string(),
            Err(why) => format!("unavailable: {why}"),
        };
        let _ = writeln!(s, "  {:<11} {state}", b.name());
    }
    let raw = match &caps.raw_tp {
        Ok(()) => {
            "available: tracepoints whose fields are in their arguments attach raw".to_string()
        }
        Err(why) => format!("unavailable: {why}"),
    };
    let _ = writeln!(s, "  {:<11} {raw}", "raw tracepoints");
    if caps.preempt_rt {
        let _ = writeln!(
            s,
            "  {:<11} softirqs run in preemptible threads: the programs keep their state per thread",
            "PREEMPT_RT"
        );
    }
    let _ = writeln!(
        s,
        "\n{:<18} {:<44} {:<4} why not / auto's choice",
        "stage", "probe", "ok"
    );
    for sp in &plan.stages {
        let mut first = true;
        for c in &sp.candidates {
            let stage = if first { sp.stage.name() } else { "" };
            first = false;
            let (ok, note) = match (&c.avail, c.chosen) {
                (Avail::Yes(t), true) if !t.starts_with(plan::RAW) => (
                    "yes",
                    match plan::classic_why(caps, c.probe.info()) {
                        Some(why) => format!("← auto (classic: {why})"),
                        None => "← auto".to_string(),
                    },
                ),
                (Avail::Yes(_), true) => ("yes", "← auto".to_string()),
                (Avail::Yes(_), false) => ("yes", String::new()),
                (Avail::No(why), _) => ("no", why.to_string()),
            };
            let _ = writeln!(s, "{stage:<18} {:<44} {ok:<4} {note}", candidate_label(c));
        }
        if sp.backend.is_none() {
            let _ = writeln!(s, "{:<18} {:<44} {:<4} not observable here", "", "", "");
        }
    }
    let _ = writeln!(
        s,
        "\nwhat auto's probes cost the rest of the machine (each runs its program on these events, traced or not):"
    );
    for (fires_on, labels) in machine_cost(plan) {
        let _ = writeln!(s, "  {fires_on:<36} {}", labels.join(", "));
    }
    if plan
        .labels()
        .iter()
        .any(|(p, _)| p.info().tracepoint().is_some_and(|(c, _)| c == "syscalls"))
    {
        let _ = writeln!(
            s,
            "  (while any syscall tracepoint is attached, every system call of every process takes the kernel's tracing slow path)"
        );
    }
    s
}

/// The probes a trace attaches (the filter's own and auto's choices),
/// grouped by the events that run them anywhere on the machine.
fn machine_cost(plan: &Plan) -> Vec<(&'static str, Vec<String>)> {
    let mut groups: Vec<(&'static str, Vec<String>)> = Vec::new();
    for (p, label) in plan.labels() {
        let f = p.info().fires_on();
        match groups.iter_mut().find(|(g, _)| *g == f) {
            Some((_, v)) => {
                if !v.contains(&label) {
                    v.push(label)
                }
            }
            None => groups.push((f, vec![label])),
        }
    }
    groups
}

pub fn json(caps: &Caps, plan: &Plan, kernel: &str) -> Value {
    let backends: serde_json::Map<String, Value> = Backend::ALL
        .iter()
        .map(|b| {
            let v = match backend_state(caps, *b) {
                Ok(()) => json!({"available": true, "why": null}),
                Err(why) => json!({"available": false, "why": why.to_string()}),
            };
            (b.name().to_string(), v)
        })
        .collect();
    let stages: Vec<Value> = plan
        .stages
        .iter()
        .map(|sp| {
            json!({
                "stage": sp.stage.name(),
                "auto": sp.backend.map(|b| b.name()),
                "missing": sp.missing,
                "candidates": sp.candidates.iter().map(|c| json!({
                    "probe": candidate_label(c),
                    "backend": c.probe.info().backend().name(),
                    "at_return": c.probe.info().at_return,
                    "available": c.avail.ok(),
                    "why": match &c.avail { Avail::No(w) => Some(w.to_string()), _ => None },
                    "chosen": c.chosen,
                    "fires_on": c.probe.info().fires_on(),
                    "classic_why": match &c.avail {
                        Avail::Yes(t) if !t.starts_with(plan::RAW) => plan::classic_why(caps, c.probe.info()),
                        _ => None,
                    },
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let cost: Vec<Value> = machine_cost(plan)
        .into_iter()
        .map(|(f, labels)| json!({"fires_on": f, "probes": labels}))
        .collect();
    let raw = match &caps.raw_tp {
        Ok(()) => json!({"available": true, "why": null}),
        Err(why) => json!({"available": false, "why": why.to_string()}),
    };
    json!({"type": "probes", "kernel": kernel, "backends": backends, "raw_tracepoints": raw, "preempt_rt": caps.preempt_rt, "stages": stages, "machine_cost": cost})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::{BackendChoice, tests::host};

    #[test]
    fn text_explains_each_candidate() {
        let caps = host();
        let p = plan::plan(&caps, BackendChoice::Auto);
        let t = text(&caps, &p, "6.18");
        assert!(t.contains("kprobe      unavailable: this kernel is built without CONFIG_KPROBES"));
        assert!(
            t.contains("fentry      unavailable: the kernel refused to load the program (EPERM)")
        );
        let line = t
            .lines()
            .find(|l| l.contains("fentry:__dev_queue_xmit"))
            .unwrap();
        assert!(
            line.contains("fentry:__dev_queue_xmit|dev_queue_xmit") && line.contains("EPERM"),
            "{line}"
        );
        assert!(t.contains("tracepoint:net:net_dev_queue"));
        assert!(t.contains("← auto"));
        let cost = t.split("cost the rest of the machine").nth(1).unwrap();
        let syscalls = cost
            .lines()
            .find(|l| l.contains("every system call of every process"))
            .unwrap();
        for tp in ["sys_enter_sendto", "sys_exit_sendto", "sys_exit_recvmsg"] {
            assert!(syscalls.contains(tp), "{syscalls}");
        }
        assert!(cost.contains("every task wake-up"), "{cost}");
        assert!(cost.contains("tracing slow path"), "{cost}");
    }

    #[test]
    fn json_names_backends_and_choices() {
        let caps = host();
        let p = plan::plan(&caps, BackendChoice::Auto);
        let v = json(&caps, &p, "6.18");
        assert_eq!(v["backends"]["kprobe"]["available"], false);
        assert_eq!(v["backends"]["tracepoint"]["available"], true);
        let dq = v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == "dev_queue_xmit")
            .unwrap();
        assert_eq!(dq["auto"], "tracepoint");
        let ip = v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == "ip_rcv")
            .unwrap();
        assert_eq!(ip["auto"], Value::Null);
    }
}

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
    s
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
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"type": "probes", "kernel": kernel, "backends": backends, "stages": stages})
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

//! Facts about a trace that are not events: what was traced, on which
//! kernel, with which probes. Saved in record files and printed in reports.

use std::collections::BTreeMap;

use lotrace_common::{
    ProbeId, Stage,
    catalog::{NO_DROP_REASON, PROBES},
};
use serde::{Deserialize, Serialize};

use crate::model::plan::{self, Plan};

/// One probe that was attached.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeRecord {
    /// The eBPF program (stable across kernels).
    pub program: String,
    /// What it was attached to, e.g. `kprobe:__dev_queue_xmit`.
    pub probe: String,
    pub stage: Option<String>,
}

/// How one stage was observed, or why it was not.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StageRecord {
    pub stage: String,
    /// `fentry`, `kprobe` or `tracepoint`; `None` when not observed.
    pub backend: Option<String>,
    pub probes: Vec<String>,
    pub missing: Option<String>,
}

/// Everything about a trace except its events.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Meta {
    /// `uname -r` of the traced kernel.
    pub kernel: String,
    pub command: Vec<String>,
    /// The address the command pinged, as ping reported it, else as given.
    pub target: Option<String>,
    /// For a name: what it resolved to and where that came from.
    pub resolution: Option<String>,
    /// The network namespace the command ran in (`ip netns` name).
    pub netns: Option<String>,
    /// The backend choice asked for (`auto`, `kprobe`, ...).
    pub backend: String,
    pub probes: Vec<ProbeRecord>,
    pub stages: Vec<StageRecord>,
    /// `enum skb_drop_reason` of the traced kernel, from its BTF.
    pub drop_reasons: BTreeMap<u64, String>,
}

impl Meta {
    /// Records the plan and what was attached (`attached`: probe → label).
    pub fn set_probes(&mut self, plan: &Plan, attached: &[(ProbeId, String)]) {
        self.probes = attached
            .iter()
            .map(|(p, label)| ProbeRecord {
                program: p.info().program.to_string(),
                probe: label.clone(),
                stage: p.info().stage.map(|s| s.name().to_string()),
            })
            .collect();
        self.stages = plan
            .stages
            .iter()
            .map(|s| StageRecord {
                stage: s.stage.name().to_string(),
                backend: s.backend.map(|b| b.name().to_string()),
                probes: s
                    .candidates
                    .iter()
                    .filter(|c| c.chosen)
                    .filter_map(|c| {
                        attached
                            .iter()
                            .find(|(p, _)| *p == c.probe)
                            .map(|(_, l)| l.clone())
                    })
                    .collect(),
                missing: s.missing.clone(),
            })
            .collect();
    }

    /// The probes that were attached, by id.
    pub fn attached(&self) -> Vec<ProbeId> {
        self.probes
            .iter()
            .filter_map(|r| PROBES.iter().find(|p| p.program == r.program))
            .map(|p| p.id)
            .collect()
    }

    /// Stages some attached probe observes.
    pub fn covered(&self) -> Vec<Stage> {
        let attached = self.attached();
        Stage::ALL
            .into_iter()
            .filter(|s| attached.iter().any(|p| p.info().stage == Some(*s)))
            .collect()
    }

    /// The label of a probe in this trace (`kprobe:__dev_queue_xmit`).
    /// Borrowed from the trace's probe list: journeys ask once per event.
    pub fn probe_label(&self, p: ProbeId) -> std::borrow::Cow<'_, str> {
        let info = p.info();
        match self.probes.iter().find(|r| r.program == info.program) {
            Some(r) => std::borrow::Cow::Borrowed(r.probe.as_str()),
            None => std::borrow::Cow::Owned(plan::nominal_label(info)),
        }
    }

    /// A drop reason in words.
    pub fn drop_reason(&self, v: u64) -> String {
        if v == NO_DROP_REASON {
            return "reason unknown to this kernel".into();
        }
        self.drop_reasons
            .get(&v)
            .cloned()
            .unwrap_or_else(|| format!("reason {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        plan::{BackendChoice, Caps, plan},
        unavailable::Unavailable,
    };

    #[test]
    fn records_what_was_attached_and_what_is_missing() {
        let mut caps = Caps {
            tracefs: Ok(()),
            tracepoints: ["net:net_dev_queue", "irq:softirq_entry"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..Caps::default()
        };
        caps.kprobe = Err(Unavailable::NoKprobePmu {
            pmu: "/nonexistent",
        });
        let p = plan(&caps, BackendChoice::Auto);
        let mut m = Meta::default();
        m.set_probes(&p, &p.labels());
        let dq = m
            .stages
            .iter()
            .find(|s| s.stage == "dev_queue_xmit")
            .unwrap();
        assert_eq!(dq.probes, vec!["tracepoint:net:net_dev_queue"]);
        assert_eq!(dq.backend.as_deref(), Some("tracepoint"));
        let rx = m.stages.iter().find(|s| s.stage == "netif_rx").unwrap();
        assert!(rx.backend.is_none());
        let why = rx.missing.as_deref().unwrap();
        assert!(
            why.contains("no tracepoint net:netif_rx_entry") && why.contains("CONFIG_KPROBES"),
            "{why}"
        );
        assert!(m.covered().contains(&Stage::DevQueueXmit));
        assert!(!m.covered().contains(&Stage::NetifRx));
        assert_eq!(
            m.probe_label(ProbeId::NetDevQueue),
            "tracepoint:net:net_dev_queue"
        );
        assert_eq!(
            m.probe_label(ProbeId::KpLoopbackXmit),
            "kprobe:loopback_xmit"
        );
    }
}

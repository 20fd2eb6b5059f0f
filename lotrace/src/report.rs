//! Facts about a trace that are not events: what was traced, on which
//! kernel, with which probes. Saved in record files and printed in reports.

use std::collections::BTreeMap;

use lotrace_common::{ProbeId, Stage, catalog::PROBES};
use serde::{Deserialize, Serialize};

/// Whether one probe could be attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeStatus {
    pub probe: ProbeId,
    /// Why it is not attached; `None` when it is.
    pub error: Option<String>,
}

/// A probe's name in reports and JSON: `tracepoint:category:name`.
pub fn probe_name(p: ProbeId) -> String {
    let (cat, name) = p.info().attach_point();
    format!("tracepoint:{cat}:{name}")
}

pub fn probe_by_name(name: &str) -> Option<ProbeId> {
    PROBES.iter().map(|p| p.id).find(|p| probe_name(*p) == name)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeRecord {
    pub probe: String,
    pub stage: Option<String>,
    pub error: Option<String>,
}

/// Everything about a trace except its events.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// `uname -r` of the traced kernel.
    pub kernel: String,
    pub command: Vec<String>,
    /// The address the command pinged, as ping reported it, else as given.
    pub target: Option<String>,
    pub probes: Vec<ProbeRecord>,
    /// `enum skb_drop_reason` of the traced kernel, from its BTF.
    pub drop_reasons: BTreeMap<u64, String>,
}

impl Meta {
    pub fn set_probes(&mut self, statuses: &[ProbeStatus]) {
        self.probes = statuses
            .iter()
            .map(|s| ProbeRecord {
                probe: probe_name(s.probe),
                stage: s.probe.info().stage.map(|st| st.name().to_string()),
                error: s.error.clone(),
            })
            .collect();
    }

    /// The probes that were attached, by id.
    pub fn attached(&self) -> Vec<ProbeId> {
        self.probes
            .iter()
            .filter(|p| p.error.is_none())
            .filter_map(|p| probe_by_name(&p.probe))
            .collect()
    }

    /// For each stage of the catalog, the probes that observed it, or why
    /// none could.
    pub fn stage_probes(&self) -> Vec<(Stage, Vec<String>, Option<String>)> {
        Stage::ALL
            .iter()
            .map(|&stage| {
                let mut used = Vec::new();
                let mut why = Vec::new();
                for p in &self.probes {
                    if p.stage.as_deref() != Some(stage.name()) {
                        continue;
                    }
                    match &p.error {
                        None => used.push(p.probe.clone()),
                        Some(e) => why.push(format!("{}: {e}", p.probe)),
                    }
                }
                let reason = if !used.is_empty() {
                    None
                } else if why.is_empty() {
                    Some("no tracepoint observes this stage; it needs a function probe (kprobe or fentry)".to_string())
                } else {
                    Some(why.join("; "))
                };
                (stage, used, reason)
            })
            .collect()
    }

    pub fn drop_reason(&self, v: u64) -> String {
        self.drop_reasons
            .get(&v)
            .cloned()
            .unwrap_or_else(|| format!("reason {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_names_round_trip() {
        for p in PROBES.iter() {
            assert_eq!(probe_by_name(&probe_name(p.id)), Some(p.id));
        }
        assert_eq!(
            probe_name(ProbeId::NetDevQueue),
            "tracepoint:net:net_dev_queue"
        );
    }

    #[test]
    fn stages_without_a_probe_say_why() {
        let mut m = Meta::default();
        m.set_probes(&[
            ProbeStatus {
                probe: ProbeId::NetDevQueue,
                error: None,
            },
            ProbeStatus {
                probe: ProbeId::NetifRxEntry,
                error: Some("this kernel has no tracepoint net:netif_rx_entry".into()),
            },
        ]);
        let sp = m.stage_probes();
        let get = |s: Stage| sp.iter().find(|x| x.0 == s).unwrap();
        assert_eq!(
            get(Stage::DevQueueXmit).1,
            vec!["tracepoint:net:net_dev_queue"]
        );
        assert!(
            get(Stage::NetifRx)
                .2
                .as_ref()
                .unwrap()
                .contains("no tracepoint net:netif_rx_entry")
        );
        assert!(
            get(Stage::IpRcv)
                .2
                .as_ref()
                .unwrap()
                .contains("function probe")
        );
        assert_eq!(m.attached(), vec![ProbeId::NetDevQueue]);
    }
}

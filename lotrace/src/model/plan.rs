//! Which probe observes each stage: what the kernel allows (capabilities,
//! gathered by the loader) in, a per-stage choice out. Pure.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::unavailable::Unavailable;
use lotrace_common::{
    ProbeId, Stage, TpField,
    catalog::{Backend, PROBES, ProbeInfo},
    config::RawField,
};

/// What the running kernel lets lotrace attach.
#[derive(Clone, Debug)]
pub struct Caps {
    /// `Err(why)` when tracefs cannot be read.
    pub tracefs: Result<(), Unavailable>,
    /// Tracepoints present, as `category:name`.
    pub tracepoints: BTreeSet<String>,
    /// `Err(why)` when kprobes cannot be used at all.
    pub kprobe: Result<(), Unavailable>,
    /// `Err(why)` when fentry programs cannot be used at all.
    pub fentry: Result<(), Unavailable>,
    /// Functions in /proc/kallsyms (kprobe targets).
    pub kallsyms: BTreeSet<String>,
    /// Functions described in the kernel's BTF (fentry needs their types).
    pub btf_funcs: BTreeSet<String>,
    /// Functions the function tracer can attach to
    /// (`available_filter_functions`); `None` when it could not be read.
    pub traceable: Option<BTreeSet<String>>,
    /// `Err(why)` when raw tracepoint programs cannot be used at all.
    pub raw_tp: Result<(), Unavailable>,
    /// Tracepoints (`category:name`) whose probe can be attached raw here,
    /// with where each field it reads is: every one is in the
    /// tracepoint's arguments as this kernel's BTF describes them.
    pub raw_tracepoints: BTreeMap<String, Vec<(TpField, RawField)>>,
    /// A PREEMPT_RT kernel: softirqs run in preemptible threads, so the
    /// programs keep their state per thread.
    pub preempt_rt: bool,
}

/// Whether one probe can be used here, and on what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Avail {
    /// Usable, attached to this tracepoint or function.
    Yes(String),
    No(Unavailable),
}

impl Avail {
    pub fn ok(&self) -> bool {
        matches!(self, Avail::Yes(_))
    }
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            tracefs: Ok(()),
            tracepoints: BTreeSet::new(),
            kprobe: Err(Unavailable::NotChecked),
            fentry: Err(Unavailable::NotChecked),
            kallsyms: BTreeSet::new(),
            btf_funcs: BTreeSet::new(),
            traceable: None,
            raw_tp: Err(Unavailable::NotChecked),
            raw_tracepoints: BTreeMap::new(),
            preempt_rt: false,
        }
    }
}

/// How the user asked probes to be chosen. The variants' documentation is
/// `--backend`'s help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// Per stage, the best probe this kernel allows: fentry, else kprobe,
    /// else the stage's tracepoint. Works wherever tracefs does; a stage
    /// nothing can observe is reported as missing.
    Auto,
    /// fentry/fexit (BPF trampolines): the cheapest per event, with typed
    /// arguments. Needs kernel BTF, the function tracer (the function in
    /// available_filter_functions) and a kernel that lets tracing programs
    /// load (lockdown and some VMs refuse them). Stages with no function
    /// probe keep their tracepoints.
    Fentry,
    /// kprobe/kretprobe: a breakpoint on the kernel function; needs
    /// CONFIG_KPROBES and the function in /proc/kallsyms (not inlined).
    /// Costs more per event than fentry. Stages with no function probe
    /// keep their tracepoints.
    Kprobe,
    /// Tracepoints only: stable, present on every kernel with tracefs, no
    /// BTF needed. Stages without a tracepoint (ip_output, ip_rcv,
    /// icmp_rcv, icmp_reply) are not observed, and each event pays for the
    /// tracepoint's record being built before the program runs.
    Tracepoint,
}

impl BackendChoice {
    /// As given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Fentry => "fentry",
            BackendChoice::Kprobe => "kprobe",
            BackendChoice::Tracepoint => "tracepoint",
        }
    }

    fn order(self) -> &'static [Backend] {
        match self {
            BackendChoice::Auto => &[Backend::Fentry, Backend::Kprobe, Backend::Tracepoint],
            BackendChoice::Fentry => &[Backend::Fentry],
            BackendChoice::Kprobe => &[Backend::Kprobe],
            BackendChoice::Tracepoint => &[Backend::Tracepoint],
        }
    }
}

/// `kprobe`, `kretprobe`, `fentry`, `fexit` or `tracepoint`.
pub fn kind_name(info: &ProbeInfo) -> &'static str {
    match (info.backend(), info.at_return) {
        (Backend::Tracepoint, _) => "tracepoint",
        (Backend::Kprobe, false) => "kprobe",
        (Backend::Kprobe, true) => "kretprobe",
        (Backend::Fentry, false) => "fentry",
        (Backend::Fentry, true) => "fexit",
    }
}

/// The label of a probe attached to `target`: `kprobe:loopback_xmit`,
/// `fexit:net_rx_action`, `tracepoint:net:net_dev_queue`, and for a
/// tracepoint attached raw (target `raw:net:net_dev_queue`)
/// `raw_tracepoint:net:net_dev_queue`.
pub fn label(info: &ProbeInfo, target: &str) -> String {
    match target.strip_prefix(RAW) {
        Some(tp) => format!("raw_tracepoint:{tp}"),
        None => format!("{}:{target}", kind_name(info)),
    }
}

/// How a tracepoint's target says it is attached raw.
pub const RAW: &str = "raw:";

/// Why a tracepoint probe is attached as a classic tracepoint rather than
/// raw, when it is.
pub fn classic_why(caps: &Caps, info: &ProbeInfo) -> Option<String> {
    let (cat, name) = info.tracepoint()?;
    if caps.raw_tracepoints.contains_key(&format!("{cat}:{name}")) {
        return caps.raw_tp.as_ref().err().map(|e| format!("raw: {e}"));
    }
    Some(if !has_raw_form(info) {
        if cat == "syscalls" {
            "a system call event has no raw tracepoint of its own".to_string()
        } else {
            "its record holds a value the kernel computes, which the arguments do not".to_string()
        }
    } else {
        "this kernel's BTF does not give every field it reads from the arguments".to_string()
    })
}

/// Does the probe table say where a raw tracepoint finds each field?
pub fn has_raw_form(info: &ProbeInfo) -> bool {
    info.tracepoint().is_some() && info.raw_specs().all(|(_, raw)| raw.is_some())
}

/// A probe's label before it is attached: its target, or its candidates.
pub fn nominal_label(info: &ProbeInfo) -> String {
    match info.tracepoint() {
        Some((c, n)) => label(info, &format!("{c}:{n}")),
        None => label(info, &info.functions().join("|")),
    }
}

impl Caps {
    pub fn avail(&self, info: &ProbeInfo) -> Avail {
        match info.backend() {
            Backend::Tracepoint => {
                let (cat, name) = info.tracepoint().expect("a tracepoint probe");
                let tp = format!("{cat}:{name}");
                if self.raw_tp.is_ok() && self.raw_tracepoints.contains_key(&tp) {
                    return Avail::Yes(format!("{RAW}{tp}"));
                }
                if let Err(e) = &self.tracefs {
                    return Avail::No(e.clone());
                }
                if self.tracepoints.contains(&tp) {
                    Avail::Yes(tp)
                } else {
                    Avail::No(Unavailable::NoTracepoint {
                        category: cat,
                        name,
                    })
                }
            }
            Backend::Kprobe => {
                if let Err(e) = &self.kprobe {
                    return Avail::No(e.clone());
                }
                match info
                    .functions()
                    .iter()
                    .find(|f| self.kallsyms.contains(**f))
                {
                    Some(f) => Avail::Yes(f.to_string()),
                    None => Avail::No(Unavailable::NotInKallsyms(info.functions())),
                }
            }
            Backend::Fentry => {
                if let Err(e) = &self.fentry {
                    return Avail::No(e.clone());
                }
                let fns = info.functions();
                let Some(f) = fns.iter().find(|f| self.btf_funcs.contains(**f)) else {
                    return Avail::No(Unavailable::NotInBtf(fns));
                };
                match &self.traceable {
                    Some(t) if !t.contains(*f) => Avail::No(Unavailable::NotTraceable(f)),
                    _ => Avail::Yes(f.to_string()),
                }
            }
        }
    }
}

/// One probe in the plan, with its availability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub probe: ProbeId,
    pub avail: Avail,
    /// Chosen to be attached.
    pub chosen: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagePlan {
    pub stage: Stage,
    /// The backend chosen, `None` when no probe can observe the stage.
    pub backend: Option<Backend>,
    pub candidates: Vec<Candidate>,
    /// Why the stage cannot be observed, when it cannot.
    pub missing: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub stages: Vec<StagePlan>,
    /// Probes attached whatever the choice: the filter's state keepers.
    pub always: Vec<(ProbeId, Avail)>,
    /// Stages a forced backend cannot observe, with why.
    pub errors: Vec<(Stage, String)>,
}

impl Plan {
    /// Every probe to attach, with what it attaches to, in the order to
    /// attach them: those that end a state (a softirq's exit, a system
    /// call's return) before those that begin it. Else a NET_RX run or a
    /// send under way while they are attached is seen to begin and never to
    /// end, and the next send on that CPU is taken for part of it (seen: a
    /// first echo without its route lookup, once in twenty guests).
    pub fn to_attach(&self) -> Vec<(ProbeId, String)> {
        let mut out: Vec<(ProbeId, String)> = self
            .always
            .iter()
            .filter_map(|(p, a)| match a {
                Avail::Yes(t) => Some((*p, t.clone())),
                Avail::No(_) => None,
            })
            .collect();
        for s in &self.stages {
            for c in s.candidates.iter().filter(|c| c.chosen) {
                if let Avail::Yes(t) = &c.avail
                    && !out.iter().any(|(p, _)| *p == c.probe)
                {
                    out.push((c.probe, t.clone()));
                }
            }
        }
        out.sort_by_key(|(p, _)| !p.info().at_return);
        out
    }

    /// [`Plan::to_attach`] with each target turned into the probe's label.
    pub fn labels(&self) -> Vec<(ProbeId, String)> {
        self.to_attach()
            .into_iter()
            .map(|(p, t)| (p, label(p.info(), &t)))
            .collect()
    }

    /// The forced backend's failures, stages grouped by reason, one line.
    pub fn errors_line(&self) -> String {
        let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
        for (stage, why) in &self.errors {
            match by_reason.iter_mut().find(|(w, _)| *w == why.as_str()) {
                Some((_, stages)) => stages.push(stage.name()),
                None => by_reason.push((why.as_str(), vec![stage.name()])),
            }
        }
        by_reason
            .iter()
            .map(|(why, stages)| format!("{} ({why})", stages.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The stages some chosen probe observes.
    pub fn covered(&self) -> Vec<Stage> {
        self.stages
            .iter()
            .filter(|s| s.backend.is_some())
            .map(|s| s.stage)
            .collect()
    }

    pub fn stage(&self, stage: Stage) -> &StagePlan {
        // Planned in the order packets meet the stages, not by id.
        self.stages
            .iter()
            .find(|s| s.stage == stage)
            .expect("every stage is planned")
    }

    /// The function probe that reports the start of `stage`, for the
    /// stages whose start the programs report lazily.
    pub fn start_probe(&self, stage: Stage) -> Option<ProbeId> {
        let s = self.stage(stage);
        match s.backend {
            Some(Backend::Tracepoint) | None => None,
            Some(_) => s
                .candidates
                .iter()
                .find(|c| c.chosen && !c.probe.info().at_return)
                .map(|c| c.probe),
        }
    }
}

/// Always-on probes: those that keep the filter's state.
fn always_on(info: &ProbeInfo) -> bool {
    info.backend() == Backend::Tracepoint && (info.stage.is_none() || info.required)
}

/// Chooses, per stage, the first backend in the user's order that can
/// observe the stage's start; a forced backend applies to the stages it has
/// probes for, the others keep their tracepoints.
pub fn plan(caps: &Caps, choice: BackendChoice) -> Plan {
    let always = PROBES
        .iter()
        .filter(|p| always_on(p))
        .map(|p| (p.id, caps.avail(p)))
        .collect();
    let mut stages = Vec::new();
    let mut errors = Vec::new();
    for stage in Stage::ORDER {
        let mut candidates: Vec<Candidate> = stage
            .probes()
            .map(|p| Candidate {
                probe: p.id,
                avail: caps.avail(p),
                chosen: false,
            })
            .collect();
        let has = |b: Backend| stage.probes().any(|p| p.backend() == b);
        let mut order: Vec<Backend> = choice.order().iter().copied().filter(|b| has(*b)).collect();
        let forced = choice != BackendChoice::Auto;
        if forced && order.is_empty() {
            order.push(Backend::Tracepoint);
        }
        let mut backend = None;
        for &b in &order {
            let mut groups = BTreeSet::new();
            let mut any_chosen = false;
            for c in candidates.iter_mut() {
                let info = c.probe.info();
                if info.backend() != b || !c.avail.ok() {
                    continue;
                }
                let key = (info.at_return, info.group);
                if groups.insert(key) {
                    c.chosen = true;
                    any_chosen = true;
                }
            }
            if any_chosen {
                backend = Some(b);
                break;
            }
            for c in candidates.iter_mut() {
                c.chosen = false;
            }
        }
        let missing = if backend.is_some() {
            None
        } else {
            let mut why: Vec<String> = Vec::new();
            for c in candidates
                .iter()
                .filter(|c| order.contains(&c.probe.info().backend()))
            {
                if let Avail::No(w) = &c.avail {
                    let line = format!("{}: {w}", c.probe.info().backend().name());
                    if !why.contains(&line) {
                        why.push(line);
                    }
                }
            }
            let why = if why.is_empty() {
                "no probe of the chosen backend observes this stage".to_string()
            } else {
                why.join("; ")
            };
            if forced && !order.contains(&Backend::Tracepoint) {
                errors.push((stage, why.clone()));
            }
            Some(why)
        };
        stages.push(StagePlan {
            stage,
            backend,
            candidates,
            missing,
        });
    }
    Plan {
        stages,
        always,
        errors,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::unavailable::Refusal;

    fn all_tracepoints() -> BTreeSet<String> {
        PROBES
            .iter()
            .filter_map(|p| p.tracepoint())
            .map(|(c, n)| format!("{c}:{n}"))
            .collect()
    }

    fn all_functions() -> BTreeSet<String> {
        PROBES
            .iter()
            .flat_map(|p| p.functions().iter().map(|f| f.to_string()))
            .collect()
    }

    /// This host: tracepoints only.
    pub(crate) fn host() -> Caps {
        Caps {
            tracefs: Ok(()),
            tracepoints: all_tracepoints(),
            kprobe: Err(Unavailable::NoKprobePmu {
                pmu: "/nonexistent",
            }),
            fentry: Err(Unavailable::Refused(Refusal {
                errno: Some(libc::EPERM),
                message: String::new(),
                verifier_log: String::new(),
            })),
            kallsyms: all_functions(),
            btf_funcs: all_functions(),
            traceable: None,
            raw_tp: Ok(()),
            raw_tracepoints: PROBES
                .iter()
                .filter(|p| has_raw_form(p))
                .filter_map(|p| {
                    let (c, n) = p.tracepoint()?;
                    let fields = p.raw_specs().map(|(f, _)| (f, RawField::default()));
                    Some((format!("{c}:{n}"), fields.collect()))
                })
                .collect(),
            preempt_rt: false,
        }
    }

    /// A distribution kernel: everything.
    fn distro() -> Caps {
        Caps {
            kprobe: Ok(()),
            fentry: Ok(()),
            traceable: Some(all_functions()),
            ..host()
        }
    }

    #[test]
    fn tracepoints_attach_raw_where_they_can() {
        let target = |caps: &Caps, p: ProbeId| {
            plan(caps, BackendChoice::Tracepoint)
                .to_attach()
                .into_iter()
                .find(|(q, _)| *q == p)
                .map(|(_, t)| t)
        };
        let caps = host();
        assert_eq!(
            target(&caps, ProbeId::NetDevQueue).as_deref(),
            Some("raw:net:net_dev_queue")
        );
        assert_eq!(
            label(ProbeId::NetDevQueue.info(), "raw:net:net_dev_queue"),
            "raw_tracepoint:net:net_dev_queue"
        );
        // A value the kernel computes into the record, and a system call
        // event: classic, and `probes` says why.
        for p in [ProbeId::Fib6TableLookup, ProbeId::SysEnterSendto] {
            let t = target(&caps, p).unwrap();
            assert!(!t.starts_with(RAW), "{t}");
            assert!(classic_why(&caps, p.info()).is_some());
        }
        assert_eq!(classic_why(&caps, ProbeId::NetDevQueue.info()), None);
        // Where raw programs do not load, everything is classic.
        let classic = Caps {
            raw_tp: Err(Unavailable::NotChecked),
            ..host()
        };
        assert_eq!(
            target(&classic, ProbeId::NetDevQueue).as_deref(),
            Some("net:net_dev_queue")
        );
        assert!(classic_why(&classic, ProbeId::NetDevQueue.info()).is_some());
    }

    #[test]
    fn the_ends_of_states_are_attached_before_their_beginnings() {
        for caps in [host(), distro()] {
            let order: Vec<ProbeId> = plan(&caps, BackendChoice::Auto)
                .to_attach()
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            let at = |p: ProbeId| order.iter().position(|&q| q == p);
            for (end, begin) in [
                (ProbeId::SoftirqExit, ProbeId::SoftirqEntry),
                (ProbeId::SysExitSendto, ProbeId::SysEnterSendto),
                (ProbeId::SysExitSendmsg, ProbeId::SysEnterSendmsg),
                (ProbeId::NetifRxExit, ProbeId::NetifRxEntry),
                (ProbeId::KrLoopbackXmit, ProbeId::KpLoopbackXmit),
            ] {
                if let (Some(e), Some(b)) = (at(end), at(begin)) {
                    assert!(e < b, "{end:?} at {e}, {begin:?} at {b}");
                }
            }
            assert!(at(ProbeId::SoftirqExit) < at(ProbeId::SoftirqEntry));
        }
    }

    #[test]
    fn auto_falls_back_to_tracepoints_stage_by_stage() {
        let p = plan(&host(), BackendChoice::Auto);
        assert!(p.errors.is_empty());
        for s in &p.stages {
            if s.stage.probes().any(|p| p.backend() == Backend::Tracepoint) {
                assert_eq!(s.backend, Some(Backend::Tracepoint), "{}", s.stage.name());
            } else {
                assert_eq!(s.backend, None);
                let why = s.missing.as_deref().unwrap();
                assert!(
                    why.contains("CONFIG_KPROBES") && why.contains("EPERM"),
                    "{why}"
                );
            }
        }
        assert!(p.start_probe(Stage::NetRxAction).is_none());
    }

    #[test]
    fn auto_prefers_fentry_where_it_can() {
        let p = plan(&distro(), BackendChoice::Auto);
        assert_eq!(p.stage(Stage::DevQueueXmit).backend, Some(Backend::Fentry));
        assert_eq!(p.stage(Stage::Sendto).backend, Some(Backend::Tracepoint));
        assert_eq!(
            p.start_probe(Stage::NetRxAction),
            Some(ProbeId::FeNetRxAction)
        );
        let attach = p.to_attach();
        assert!(attach.contains(&(ProbeId::FeDevQueueXmit, "__dev_queue_xmit".into())));
        assert!(attach.contains(&(ProbeId::FxLoopbackXmit, "loopback_xmit".into())));
        assert!(!attach.iter().any(|(p, _)| *p == ProbeId::NetDevQueue));
        // The softirq tracepoints keep the filter's state whatever is chosen.
        assert!(attach.iter().any(|(p, _)| *p == ProbeId::SoftirqEntry));
        // Alternatives: icmp_echo, not icmp_reply too.
        assert!(attach.iter().any(|(p, _)| *p == ProbeId::FeIcmpEcho));
        assert!(!attach.iter().any(|(p, _)| *p == ProbeId::FeIcmpReply));
        // Different paths: both netif_rx functions.
        assert!(attach.iter().any(|(p, _)| *p == ProbeId::FeNetifRx));
        assert!(attach.iter().any(|(p, _)| *p == ProbeId::FeNetifRxInner));
    }

    #[test]
    fn aliases_resolve_to_what_the_kernel_has() {
        let mut c = distro();
        c.kallsyms.remove("__dev_queue_xmit");
        c.btf_funcs.remove("__dev_queue_xmit");
        let p = plan(&c, BackendChoice::Kprobe);
        assert!(
            p.to_attach()
                .contains(&(ProbeId::KpDevQueueXmit, "dev_queue_xmit".into()))
        );
    }

    #[test]
    fn a_forced_backend_the_kernel_lacks_says_why() {
        let errs = plan(&host(), BackendChoice::Kprobe).errors;
        assert!(
            errs.iter().any(|(s, e)| *s == Stage::DevQueueXmit
                && e.starts_with("kprobe: ")
                && e.contains("CONFIG_KPROBES")),
            "{errs:?}"
        );
        let errs = plan(&host(), BackendChoice::Fentry).errors;
        assert!(errs.iter().any(|(_, e)| e.contains("EPERM")));
        // A forced backend leaves stages it has no probe for on tracepoints.
        let p = plan(&distro(), BackendChoice::Kprobe);
        assert!(p.errors.is_empty());
        assert_eq!(p.stage(Stage::Sendto).backend, Some(Backend::Tracepoint));
        assert_eq!(p.stage(Stage::LoopbackXmit).backend, Some(Backend::Kprobe));
    }

    #[test]
    fn untraceable_functions_are_not_fentry_targets() {
        let mut c = distro();
        c.traceable.as_mut().unwrap().remove("net_rx_action");
        let p = plan(&c, BackendChoice::Auto);
        assert_eq!(p.stage(Stage::NetRxAction).backend, Some(Backend::Kprobe));
        let fe = p
            .stage(Stage::NetRxAction)
            .candidates
            .iter()
            .find(|c| c.probe == ProbeId::FeNetRxAction)
            .unwrap();
        assert_eq!(
            fe.avail,
            Avail::No(Unavailable::NotTraceable("net_rx_action"))
        );
    }
}

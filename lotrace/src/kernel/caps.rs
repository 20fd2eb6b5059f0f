//! What the running kernel lets lotrace attach, as far as can be seen:
//! tracefs and its tracepoints, the kprobe PMU, kallsyms, BTF, the function
//! tracer's list, and whether an fentry and a raw tracepoint program load.

use std::{collections::BTreeSet, path::Path};

use aya::programs::{FEntry, RawTracePoint};
use lotrace_common::{
    Config,
    catalog::{Backend, PROBES},
};

use crate::{
    kernel::{
        btf::KernelBtf,
        is_root,
        object::{load_object, parse_btf, refusal},
        tracefs,
    },
    model::{
        plan::{self, Caps},
        unavailable::{RootOnly, Unavailable},
    },
};

const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// The kernel functions the catalog may probe.
fn catalog_functions() -> BTreeSet<&'static str> {
    PROBES
        .iter()
        .flat_map(|p| p.functions().iter().copied())
        .collect()
}

/// Names among `wanted` listed in a symbol file's lines: the first word that
/// matches, ignoring a trailing `[module]`.
fn names_in(text: &str, column: usize, wanted: &BTreeSet<&str>) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(column))
        .filter(|n| wanted.contains(n))
        .map(str::to_string)
        .collect()
}

/// What this kernel allows, as far as can be seen without loading anything;
/// fentry is checked by [`probe_fentry`].
pub fn capabilities(btf: &KernelBtf) -> Caps {
    let wanted = catalog_functions();
    let tracefs_state = if Path::new(tracefs::TRACEFS).join("events").is_dir() {
        Ok(())
    } else if is_root() {
        Err(Unavailable::TracefsNotMounted)
    } else {
        Err(Unavailable::NeedsRoot(RootOnly::Tracefs))
    };
    let tracepoints = PROBES
        .iter()
        .filter_map(|p| p.tracepoint())
        .filter(|(c, n)| tracefs::tracepoint_exists(c, n))
        .map(|(c, n)| format!("{c}:{n}"))
        .collect();
    let kprobe = if Path::new(KPROBE_PMU).exists() {
        Ok(())
    } else {
        Err(Unavailable::NoKprobePmu { pmu: KPROBE_PMU })
    };
    // Symbol lines: `address type name [module]`; only functions (t/T).
    let kallsyms = std::fs::read_to_string("/proc/kallsyms")
        .map(|t| {
            t.lines()
                .filter(|l| matches!(l.split_whitespace().nth(1), Some("t" | "T")))
                .filter_map(|l| l.split_whitespace().nth(2))
                .filter(|n| wanted.contains(n))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let btf_funcs = wanted
        .iter()
        .filter(|f| btf.has_func(f))
        .map(|f| f.to_string())
        .collect();
    let traceable =
        std::fs::read_to_string(Path::new(tracefs::TRACEFS).join("available_filter_functions"))
            .ok()
            .map(|t| names_in(&t, 0, &wanted));
    // The tracepoints whose probe can be attached raw, with where each
    // field is: every field the probe reads resolves in this kernel's BTF.
    let raw_tracepoints = PROBES
        .iter()
        .filter(|p| plan::has_raw_form(p))
        .filter_map(|p| {
            let (cat, name) = p.tracepoint()?;
            let fields = p
                .raw_specs()
                .map(|(f, raw)| Some((f, btf.raw_field(name, &raw?)?)))
                .collect::<Option<Vec<_>>>()?;
            Some((format!("{cat}:{name}"), fields))
        })
        .collect();
    Caps {
        tracefs: tracefs_state,
        tracepoints,
        kprobe,
        fentry: Err(Unavailable::NeedsRoot(RootOnly::FentryLoad)),
        kallsyms,
        btf_funcs,
        traceable,
        raw_tp: Err(Unavailable::NeedsRoot(RootOnly::FentryLoad)),
        raw_tracepoints,
        preempt_rt: is_preempt_rt(
            std::fs::read_to_string("/sys/kernel/realtime")
                .ok()
                .as_deref(),
            &std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default(),
        ),
    }
}

/// Whether the kernel is PREEMPT_RT: `/sys/kernel/realtime` says 1 (6.12
/// on, and the RT patches before), or the build's version string names
/// it (`#1 SMP PREEMPT_RT Debian ...`), as every RT build's does.
fn is_preempt_rt(realtime: Option<&str>, version: &str) -> bool {
    realtime.is_some_and(|r| r.trim() == "1")
        || version.split_whitespace().any(|w| w == "PREEMPT_RT")
}

/// Can raw tracepoint programs be loaded here? Loads one in a throwaway
/// copy of the object.
pub fn probe_raw_tp(caps: &mut Caps) {
    if !is_root() {
        return;
    }
    let Some(name) = caps
        .raw_tracepoints
        .keys()
        .find_map(|tp| tp.split_once(':').map(|(_, n)| n.to_string()))
    else {
        caps.raw_tp = Err(Unavailable::CheckFailed(
            "no tracepoint's arguments are described in the kernel's BTF".into(),
        ));
        return;
    };
    let failed = |e: &dyn std::fmt::Display| Unavailable::CheckFailed(e.to_string());
    let result = (|| -> Result<(), Unavailable> {
        let mut ebpf = load_object(&Config::zeroed(), 4096, false).map_err(|e| failed(&e))?;
        let prog: &mut RawTracePoint = ebpf
            .program_mut(&name)
            .ok_or_else(|| failed(&"program missing"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| failed(&e))?;
        prog.load().map_err(|e| Unavailable::Refused(refusal(&e)))?;
        Ok(())
    })();
    if let Err(why) = &result {
        log::info!("raw tracepoints are not usable: {why}");
    }
    caps.raw_tp = result;
}

/// Can fentry programs be loaded here? Loads one, on a function the kernel
/// has, in a throwaway copy of the object.
pub fn probe_fentry(caps: &mut Caps, btf_path: &Path) {
    if !is_root() {
        return;
    }
    let Some((program, function)) = PROBES
        .iter()
        .filter(|p| p.backend() == Backend::Fentry && !p.at_return)
        .find_map(|p| {
            p.functions()
                .iter()
                .find(|f| caps.btf_funcs.contains(**f))
                .map(|f| (p.program, *f))
        })
    else {
        caps.fentry = Err(Unavailable::NoFentryTarget);
        return;
    };
    let failed = |e: &dyn std::fmt::Display| Unavailable::CheckFailed(e.to_string());
    let result = (|| -> Result<(), Unavailable> {
        let btf = parse_btf(btf_path).map_err(|e| failed(&e))?;
        let mut ebpf = load_object(&Config::zeroed(), 4096, false).map_err(|e| failed(&e))?;
        let prog: &mut FEntry = ebpf
            .program_mut(program)
            .ok_or_else(|| failed(&"program missing"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| failed(&e))?;
        prog.load(function, &btf)
            .map_err(|e| Unavailable::Refused(refusal(&e)))?;
        Ok(())
    })();
    if let Err(why) = &result {
        log::info!("fentry is not usable: {why}");
        if let Some(log) = why.refusal().and_then(|r| r.log()) {
            log::info!("the verifier's log for {program} on {function}:\n{log}");
        }
    }
    caps.fentry = result;
}

#[cfg(test)]
mod tests {
    use super::is_preempt_rt;

    #[test]
    fn preempt_rt_is_told_by_either_sign() {
        assert!(is_preempt_rt(Some("1\n"), "#1 SMP PREEMPT_DYNAMIC"));
        assert!(is_preempt_rt(
            None,
            "#1 SMP PREEMPT_RT Debian 6.12.57-1 (2025-11-05)\n"
        ));
        assert!(!is_preempt_rt(
            None,
            "#1 SMP PREEMPT_DYNAMIC Debian 6.18.44-1"
        ));
        assert!(!is_preempt_rt(Some("0"), "#1 SMP PREEMPT_RT_FULL_NOT"));
    }
}

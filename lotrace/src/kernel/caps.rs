//! What the running kernel lets lotrace attach, as far as can be seen:
//! tracefs and its tracepoints, the kprobe PMU, kallsyms, BTF, the function
//! tracer's list, and whether an fentry program loads.

use std::{collections::BTreeSet, path::Path};

use aya::programs::FEntry;
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
    model::plan::Caps,
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
        Err("tracefs is not mounted".to_string())
    } else {
        Err("not checked: tracefs is not mounted or not readable without root".to_string())
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
        Err(format!(
            "this kernel is built without CONFIG_KPROBES (no kprobe PMU at {KPROBE_PMU})"
        ))
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
    Caps {
        tracefs: tracefs_state,
        tracepoints,
        kprobe,
        fentry: Err("not checked: loading a test program needs root".into()),
        kallsyms,
        btf_funcs,
        traceable,
    }
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
        caps.fentry = Err("no probed function is in the kernel's BTF".into());
        return;
    };
    let result = (|| -> Result<(), String> {
        let btf = parse_btf(btf_path).map_err(|e| e.to_string())?;
        let mut ebpf = load_object(&Config::zeroed(), 4096, false).map_err(|e| e.to_string())?;
        let prog: &mut FEntry = ebpf
            .program_mut(program)
            .ok_or("program missing")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        prog.load(function, &btf).map_err(|e| refusal(&e))?;
        Ok(())
    })();
    caps.fentry = result;
}

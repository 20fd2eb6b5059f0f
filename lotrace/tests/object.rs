//! The embedded eBPF object against the probe catalog, without root or a
//! kernel: every declared probe has a program of its kind, under its name,
//! every tracepoint probe a raw tracepoint program under its tracepoint's
//! name, and the object has no program the catalog does not declare.

use aya_obj::{Object, ProgramSection};
use lotrace_common::catalog::{Backend, PROBES};

/// The bytes the loader embeds (see `loader.rs`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lotrace"));

fn object() -> Object {
    Object::parse(OBJECT).expect("the embedded eBPF object parses")
}

#[test]
fn every_probe_has_a_program_of_its_kind() {
    let obj = object();
    for p in PROBES.iter() {
        let program = obj
            .programs
            .get(p.program)
            .unwrap_or_else(|| panic!("{:?}: no program {} in the object", p.id, p.program));
        let section = &program.section;
        let right = match (p.backend(), p.at_return) {
            (Backend::Tracepoint, _) => matches!(section, ProgramSection::TracePoint),
            (Backend::Kprobe, false) => matches!(section, ProgramSection::KProbe),
            (Backend::Kprobe, true) => matches!(section, ProgramSection::KRetProbe),
            (Backend::Fentry, false) => {
                matches!(section, ProgramSection::FEntry { sleepable: false })
            }
            (Backend::Fentry, true) => {
                matches!(section, ProgramSection::FExit { sleepable: false })
            }
        };
        assert!(
            right,
            "{:?}: program {} is a {section:?}, the catalog says {} (at return: {})",
            p.id,
            p.program,
            p.backend().name(),
            p.at_return
        );
    }
}

#[test]
fn every_tracepoint_has_a_raw_program() {
    let obj = object();
    for (_, name) in PROBES.iter().filter_map(|p| p.tracepoint()) {
        let program = obj
            .programs
            .get(name)
            .unwrap_or_else(|| panic!("no raw tracepoint program {name} in the object"));
        assert!(
            matches!(program.section, ProgramSection::RawTracePoint),
            "{name} is a {:?}",
            program.section
        );
    }
}

#[test]
fn every_program_is_declared() {
    let obj = object();
    let raw = |name: &str| {
        PROBES
            .iter()
            .any(|p| p.tracepoint().is_some_and(|(_, n)| n == name))
    };
    for name in obj.programs.keys() {
        assert!(
            PROBES.iter().any(|p| p.program == name) || raw(name),
            "program {name} is in the object but not in the catalog"
        );
    }
    let tracepoints = PROBES.iter().filter(|p| p.tracepoint().is_some()).count();
    assert_eq!(obj.programs.len(), PROBES.len() + tracepoints);
}

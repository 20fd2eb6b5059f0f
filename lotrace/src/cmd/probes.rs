//! `lotrace probes`: every stage, each candidate probe, whether this kernel
//! allows it (and why not), and what `--backend auto` would choose.

use std::path::Path;

use anyhow::Result;

use crate::{
    kernel::{btf::KernelBtf, loader, tracefs},
    model::plan::{self, BackendChoice},
    output::{
        Format,
        probes::{json, text},
        write_stdout,
    },
};

pub fn run(btf_path: &Path, format: Format) -> Result<i32> {
    let btf = KernelBtf::open(btf_path)?;
    if loader::is_root() && tracefs::ensure_mounted()? {
        eprintln!("lotrace: mounted tracefs at {}", tracefs::TRACEFS);
    }
    let mut caps = loader::capabilities(&btf);
    loader::probe_fentry(&mut caps, btf_path);
    let plan = plan::plan(&caps, BackendChoice::Auto);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let out = match format {
        Format::Text => text(&caps, &plan, &kernel),
        Format::Json => format!("{}\n", json(&caps, &plan, &kernel)),
    };
    write_stdout(&out)?;
    Ok(0)
}

//! `lotrace probes`: every stage, each candidate probe, whether this kernel
//! allows it (and why not), and what `--backend auto` would choose.

use std::path::Path;

use anyhow::Result;

use crate::{
    kernel::{self, btf::KernelBtf, caps, tracefs},
    model::plan::{self, BackendChoice},
    output::{
        Format,
        probes::{json, text},
        write_stdout,
    },
};

pub fn run(btf_path: &Path, format: Format) -> Result<i32> {
    let btf = KernelBtf::open(btf_path)?;
    if kernel::is_root() && tracefs::ensure_mounted()? {
        eprintln!("lotrace: mounted tracefs at {}", tracefs::TRACEFS);
    }
    let mut caps = caps::capabilities(&btf);
    caps::probe_fentry(&mut caps, btf_path);
    caps::probe_raw_tp(&mut caps);
    let plan = plan::plan(&caps, BackendChoice::Auto);
    let kernel = kernel::release();
    let out = match format {
        Format::Text => text(&caps, &plan, &kernel),
        Format::Json => format!("{}\n", json(&caps, &plan, &kernel)),
    };
    write_stdout(&out)?;
    Ok(0)
}

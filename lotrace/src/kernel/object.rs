//! The eBPF object built into lotrace, loaded with its settings, and the
//! kernel's answer when it refuses a program.

use std::path::Path;

use anyhow::{Result, anyhow};
use aya::{Btf, Ebpf, EbpfLoader, Endianness, programs::ProgramError};
use lotrace_common::{Config, catalog::maps};

use crate::model::unavailable::Refusal;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lotrace"));

pub fn load_object(config: &Config, ring_size: u32, verbose: bool) -> Result<Ebpf> {
    let level: u8 = if verbose { u8::MAX } else { 0 };
    let mut loader = EbpfLoader::new();
    loader
        .override_global(maps::CONFIG, config, true)
        .override_global(aya_log::LEVEL, &level, false)
        .map_max_entries(maps::EVENTS, ring_size);
    if config.summary_only == 0 {
        // The aggregation rows are per CPU and large: allocate them only
        // when they are used.
        loader.map_max_entries(maps::AGG_ROWS, 1);
    }
    loader
        .load(OBJECT)
        .map_err(|e| anyhow!("the kernel refused lotrace's eBPF object: {e}"))
}

pub fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u32 } else { 4096 }
}

pub fn parse_btf(path: &Path) -> Result<Btf> {
    Btf::parse_file(path, Endianness::default())
        .map_err(|e| anyhow!("cannot parse kernel BTF {}: {e}", path.display()))
}

/// The kernel's answer to a program it would not load: the errno (found
/// wherever it sits in the error's chain) and the verifier's log.
pub fn refusal(e: &ProgramError) -> Refusal {
    let verifier_log = match e {
        ProgramError::LoadError { verifier_log, .. } => verifier_log.to_string(),
        _ => String::new(),
    };
    let mut errno = None;
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = src {
        if let Some(code) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
        {
            errno = Some(code);
            break;
        }
        src = err.source();
    }
    Refusal {
        errno,
        message: e.to_string(),
        verifier_log,
    }
}

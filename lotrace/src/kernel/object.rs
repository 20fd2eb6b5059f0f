//! The eBPF object built into lotrace, loaded with its settings, and the
//! kernel's answer when it refuses a program.

use std::path::Path;

use anyhow::{Result, anyhow};
use aya::{Btf, Ebpf, EbpfLoader, Endianness};
use lotrace_common::{Config, catalog::maps};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lotrace"));

pub fn load_object(config: &Config, ring_size: u32, verbose: bool) -> Result<Ebpf> {
    let level: u8 = if verbose { u8::MAX } else { 0 };
    let mut loader = EbpfLoader::new();
    loader
        .override_global(maps::CONFIG, config, true)
        .override_global(aya_log::LEVEL, &level, false)
        .map_max_entries(maps::EVENTS, ring_size);
    if config.summary_only == 0 {
        // The aggregation maps are per CPU and large: allocate them only
        // when they are used.
        for m in [maps::ECHOES, maps::AGG_ROWS] {
            loader.map_max_entries(m, 1);
        }
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

/// Words for why the kernel refused a program.
pub fn refusal(e: &(dyn std::error::Error + 'static)) -> String {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = src {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            let name = match code {
                libc::EPERM => "EPERM",
                libc::EACCES => "EACCES",
                libc::EINVAL => "EINVAL",
                libc::ENOENT => "ENOENT",
                libc::EOPNOTSUPP | 524 => "EOPNOTSUPP",
                _ => "error",
            };
            return if name == "error" {
                format!("the kernel refused to load the program ({io})")
            } else {
                format!("the kernel refused to load the program ({name})")
            };
        }
        src = err.source();
    }
    format!("the kernel refused to load the program ({e})")
}

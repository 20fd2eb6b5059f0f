//! Everything that touches the running kernel: what it allows, its BTF and
//! tracefs, and loading and attaching the eBPF programs. Feeds the model;
//! never renders.

use anyhow::{Result, bail};

pub mod btf;
pub mod caps;
pub mod config;
pub mod loader;
pub mod mapped;
pub mod object;
pub mod slots;
pub mod tracefs;

/// Checks that nothing needed is missing before anything is loaded.
pub fn preflight() -> Result<()> {
    if !is_root() {
        bail!(
            "tracing needs root (to load eBPF programs): run it with sudo, or through `cargo xtask run`"
        );
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `uname -r`, or `unknown`.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

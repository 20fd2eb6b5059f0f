//! An array map's values mapped into lotrace's memory (the map made with
//! `BPF_F_MMAPABLE`): read without a system call, so that lotrace can look
//! at them while the traced command runs without making the kernel skip
//! the command's probes (see `lotrace_common::catalog::targets::SPAWNER`).

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, maps::Map};

/// Unmapped on drop.
pub struct Mapped {
    base: NonNull<u8>,
    len: usize,
}

impl Mapped {
    /// The first `len` bytes of the values of the array map `name`.
    pub fn array(ebpf: &Ebpf, name: &str, len: usize) -> Result<Mapped> {
        let map = ebpf
            .map(name)
            .with_context(|| format!("{name} map missing"))?;
        let Map::Array(data) = map else {
            bail!("{name} is not an array");
        };
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the map's values, which the kernel
        // keeps alive for as long as it is mapped.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!(
                "cannot map {name} into memory: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Mapped {
            base: NonNull::new(p as *mut u8).expect("mmap gave a null mapping"),
            len,
        })
    }

    /// The mapping's first byte. The programs write the map meanwhile:
    /// what is read through it is copied or read atomically, never
    /// referenced as plain data.
    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `array`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len) };
    }
}

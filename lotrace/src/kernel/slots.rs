//! The programs' `JOURNEYS` map (see `lotrace_common::assemble`), mapped
//! into lotrace's memory: reading a slot is a copy, not a system call, so
//! the slots can be looked at on every drain.

use std::{
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
};

use anyhow::{Result, bail};
use std::sync::atomic::{AtomicU64, Ordering};

use lotrace_common::assemble::{HEAD_SIZE, SLOT_SIZE, SLOTS, TAKEN_OFFSET, mark};

/// Every slot, mapped; unmapped on drop. lotrace only reads them, but for
/// `SlotHead::taken`, which it sets.
pub struct Slots {
    base: NonNull<u8>,
    len: usize,
}

/// An array map's values are laid out one after another, each rounded up
/// to 8 bytes.
const STRIDE: usize = SLOT_SIZE.next_multiple_of(8);

impl Slots {
    pub(crate) fn map(fd: BorrowedFd<'_>) -> Result<Slots> {
        let len = STRIDE * SLOTS as usize;
        // SAFETY: a shared mapping of the map's values, which the kernel
        // keeps alive for as long as it is mapped.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!(
                "cannot map the journeys' slots into memory: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Slots {
            base: NonNull::new(p as *mut u8).expect("mmap gave a null mapping"),
            len,
        })
    }

    /// Copies out every slot that holds events, into `buf` (one after
    /// another, `SLOT_SIZE` bytes each), and returns how many.
    pub fn copy_busy(&self, buf: &mut Vec<u8>) -> usize {
        buf.clear();
        let mut n = 0;
        for i in 0..SLOTS as usize {
            // SAFETY: inside the mapping. The programs write it meanwhile,
            // so it is only ever copied, byte by byte, never referenced.
            let slot = unsafe { self.base.as_ptr().add(i * STRIDE) };
            let mut present = [0u8; 8];
            unsafe { std::ptr::copy_nonoverlapping(slot, present.as_mut_ptr(), 8) };
            if u64::from_le_bytes(present) == 0 {
                continue;
            }
            let at = buf.len();
            buf.resize(at + SLOT_SIZE, 0);
            // SAFETY: as above; the head is copied first (`present` is
            // set after its event is written, so an event whose bit the
            // copy holds is whole).
            unsafe {
                std::ptr::copy_nonoverlapping(slot, buf[at..].as_mut_ptr(), HEAD_SIZE);
                std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
                std::ptr::copy_nonoverlapping(
                    slot.add(HEAD_SIZE),
                    buf[at + HEAD_SIZE..].as_mut_ptr(),
                    SLOT_SIZE - HEAD_SIZE,
                );
            }
            n += 1;
        }
        n
    }
}

impl Slots {
    /// Records in slot `index`, if it still holds echo `generation`, that
    /// lotrace took the events at `positions` from the map.
    pub fn mark_taken(&self, index: u32, generation: u32, positions: u64) {
        if index >= SLOTS || positions == 0 {
            return;
        }
        // SAFETY: inside the mapping and aligned; the programs update the
        // field with plain stores, and only when they hand the slot over.
        let taken = unsafe {
            let slot = self.base.as_ptr().add(index as usize * STRIDE);
            &*(slot.add(TAKEN_OFFSET) as *const AtomicU64)
        };
        let mut cur = taken.load(Ordering::Relaxed);
        // Bounded: the programs change the field once per echo.
        for _ in 0..16 {
            let Some(new) = mark(cur, generation, positions) else {
                return;
            };
            match taken.compare_exchange(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len) };
    }
}

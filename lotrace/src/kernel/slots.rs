//! The programs' `JOURNEYS` map (see `lotrace_common::assemble`), mapped
//! into lotrace's memory: reading a slot is a copy, not a system call, so
//! the slots can be looked at on every drain.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use aya::Ebpf;
use lotrace_common::{
    assemble::{HEAD_SIZE, SLOT_SIZE, SLOTS, TAKEN_OFFSET, mark},
    catalog::maps,
};

use super::mapped::Mapped;

/// Every slot, mapped. lotrace only reads them, but for
/// `SlotHead::taken`, which it sets.
pub struct Slots(Mapped);

/// An array map's values are laid out one after another, each rounded up
/// to 8 bytes.
const STRIDE: usize = SLOT_SIZE.next_multiple_of(8);

impl Slots {
    pub(crate) fn map(ebpf: &Ebpf) -> Result<Slots> {
        Mapped::array(ebpf, maps::JOURNEYS, STRIDE * SLOTS as usize).map(Slots)
    }

    /// Copies out every slot that holds events, into `buf` (one after
    /// another, `SLOT_SIZE` bytes each), and returns how many.
    pub fn copy_busy(&self, buf: &mut Vec<u8>) -> usize {
        buf.clear();
        let mut n = 0;
        for i in 0..SLOTS as usize {
            // SAFETY: inside the mapping. The programs write it meanwhile,
            // so it is only ever copied, byte by byte, never referenced.
            let slot = unsafe { self.0.base().add(i * STRIDE) };
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
            let slot = self.0.base().add(index as usize * STRIDE);
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

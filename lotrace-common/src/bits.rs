//! Bits that the programs on several CPUs set in one map value at once
//! (an echo's seen stages and flags: see `journey::Echo::observe`).

/// Adds `v` to `*p` atomically. On the eBPF target this is the atomic add
/// instruction every kernel has (`lock *(u64 *)(r + 0) += v`, its result
/// unused: the fetching forms came with 5.12).
#[inline(always)]
unsafe fn atomic_add<T: AtomicInt>(p: *mut T, v: T) {
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<T, T, { core::intrinsics::AtomicOrdering::Relaxed }>(p, v);
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        T::add(p, v)
    };
}

/// The integer widths [`atomic_add`] takes.
trait AtomicInt: Copy {
    #[cfg(not(target_arch = "bpf"))]
    unsafe fn add(p: *mut Self, v: Self);
}

impl AtomicInt for u64 {
    #[cfg(not(target_arch = "bpf"))]
    unsafe fn add(p: *mut u64, v: u64) {
        // SAFETY: the caller's pointer is valid and aligned.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(p) }
            .fetch_add(v, core::sync::atomic::Ordering::Relaxed);
    }
}

impl AtomicInt for u32 {
    #[cfg(not(target_arch = "bpf"))]
    unsafe fn add(p: *mut u32, v: u32) {
        // SAFETY: as above.
        unsafe { core::sync::atomic::AtomicU32::from_ptr(p) }
            .fetch_add(v, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Adds `n` to a counter that the programs on every CPU add to.
#[inline(always)]
pub fn add(field: &mut u64, n: u64) {
    // SAFETY: a valid, aligned field.
    unsafe { atomic_add(field as *mut u64, n) };
}

/// [`add`] for a `u32` counter.
#[inline(always)]
pub fn add_u32(field: &mut u32, n: u32) {
    // SAFETY: a valid, aligned field.
    unsafe { atomic_add(field as *mut u32, n) };
}

/// Sets `bits` in a field that the programs on other CPUs may update at
/// the same time (a reply received under RPS while the request's send
/// returns): a plain `|=` there loses the other CPU's bit. The kernels
/// lotrace runs on from 5.10 have an atomic add but not an atomic or, so
/// the bits not yet set are added: exact unless two CPUs set the same bit
/// at once, which the callers rule out (a leg meets each expected stage
/// once, on one CPU).
#[inline(always)]
pub fn set_bits(field: &mut u64, bits: u64) {
    let new = bits & !*field;
    if new != 0 {
        // SAFETY: a valid, aligned field.
        unsafe { atomic_add(field as *mut u64, new) };
    }
}

/// [`set_bits`] for the `u32` flags.
#[inline(always)]
pub fn set_flags(field: &mut u32, bits: u32) {
    let new = bits & !*field;
    if new != 0 {
        // SAFETY: a valid, aligned field.
        unsafe { atomic_add(field as *mut u32, new) };
    }
}

/// Clears `bits` of the flags, as [`set_flags`] sets them: the bits set
/// are subtracted (added in two's complement).
#[inline(always)]
pub fn clear_flags(field: &mut u32, bits: u32) {
    let set = bits & *field;
    if set != 0 {
        // SAFETY: a valid, aligned field.
        unsafe { atomic_add(field as *mut u32, set.wrapping_neg()) };
    }
}

/// Clears `bits`, all of them set, from a field that the programs on
/// other CPUs may set other bits of meanwhile (a slot's present events:
/// see `assemble`): subtracted, so their bits stay.
#[inline(always)]
pub fn clear_bits(field: &mut u64, bits: u64) {
    if bits != 0 {
        // SAFETY: a valid, aligned field.
        unsafe { atomic_add(field as *mut u64, bits.wrapping_neg()) };
    }
}

/// Enters a section that one program at a time may run, given the count
/// of programs entering it (`count`, 0 when none is): `false` if another
/// is in it or entering it, and the caller then does without. It must
/// [`leave`] either way. With neither a lock nor a compare-and-swap in
/// a tracing program on every kernel lotrace runs on, this is the atomic
/// add's try-lock: each one entering adds 1 and then reads the count, and
/// goes on only if it is 1. Of two at once, the one reading later sees 2;
/// both may, and then neither goes on, but never both. That needs the add
/// to be ordered before the read, which x86-64's locked add is (the eBPF
/// instruction itself promises no order).
#[inline(always)]
pub fn try_enter(count: &mut u64) -> bool {
    // SAFETY: a valid, aligned field.
    unsafe { atomic_add(count as *mut u64, 1) };
    // SAFETY: as above; a volatile read, so that it is not taken from the
    // add's operand but from memory, after the add.
    unsafe { core::ptr::read_volatile(count) == 1 }
}

/// Leaves what [`try_enter`] entered, whether or not it let the caller in.
#[inline(always)]
pub fn leave(count: &mut u64) {
    // SAFETY: a valid, aligned field.
    unsafe { atomic_add(count as *mut u64, u64::MAX) };
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn one_at_a_time_enters() {
        let mut count = 0u64;
        assert!(try_enter(&mut count));
        // A second one while the first is in: kept out.
        assert!(!try_enter(&mut count));
        leave(&mut count);
        leave(&mut count);
        assert_eq!(count, 0);
        assert!(try_enter(&mut count));
        leave(&mut count);
    }

    #[test]
    fn threads_never_overlap_in_the_section() {
        use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
        static COUNT: AtomicU64 = AtomicU64::new(0);
        static INSIDE: AtomicU32 = AtomicU32::new(0);
        static OVERLAPS: AtomicU32 = AtomicU32::new(0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    let mut entered = 0u32;
                    for _ in 0..20_000 {
                        // SAFETY: the static's own memory, only ever
                        // changed atomically.
                        let count = unsafe { &mut *COUNT.as_ptr() };
                        if try_enter(count) {
                            entered += 1;
                            if INSIDE.fetch_add(1, Ordering::SeqCst) != 0 {
                                OVERLAPS.fetch_add(1, Ordering::SeqCst);
                            }
                            std::hint::spin_loop();
                            INSIDE.fetch_sub(1, Ordering::SeqCst);
                        }
                        leave(count);
                    }
                    entered
                })
            })
            .collect();
        let entered: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(OVERLAPS.load(Ordering::SeqCst), 0);
        assert!(entered > 0);
        assert_eq!(COUNT.load(Ordering::SeqCst), 0);
    }
}

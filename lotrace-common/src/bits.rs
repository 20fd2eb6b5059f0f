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

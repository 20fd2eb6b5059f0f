//! Reads of kernel memory and of tracepoint records, at the offsets the
//! loader found in the running kernel's BTF and tracefs (no kernel layout
//! is compiled in).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel},
    programs::{FEntryContext, FExitContext, RawTracePointContext, TracePointContext},
};
use lotrace_common::{
    Config, ProbeId, TpField,
    config::{RAW_HOPS, TP_DATA_LOC},
    event::{SKB_WINDOW, in_window},
};

/// Offsets filled in by the loader (see `Config`).
#[unsafe(no_mangle)]
pub(crate) static CONFIG: Config = Config::zeroed();

/// A field of CONFIG. Volatile: the loader rewrites CONFIG, so the
/// compiler must not fold it.
#[inline(always)]
pub(crate) fn config<T: Copy>(f: &T) -> T {
    unsafe { core::ptr::read_volatile(f) }
}

/// Where a field is in the record, and whether it is a `__data_loc`.
#[inline(always)]
fn tp_offset(field: TpField) -> Option<(usize, bool)> {
    let off = config(&CONFIG.tp[field as usize]);
    if off == u16::MAX {
        None
    } else {
        Some(((off & !TP_DATA_LOC) as usize, off & TP_DATA_LOC != 0))
    }
}

/// `--floor`: every program returns before doing anything.
#[inline(always)]
pub(crate) fn floor() -> bool {
    config(&CONFIG.floor) != 0
}

/// What a tracepoint program reads its fields through: the classic
/// tracepoint's record, or a raw tracepoint's arguments.
pub(crate) trait Fields: EbpfContext {
    /// A field; `None` when this kernel's event has no such field.
    fn field<T>(&self, f: TpField) -> Option<T>;
    /// A device name field (16 bytes).
    fn field_name(&self, f: TpField) -> Option<[u8; 16]>;
}

impl Fields for TracePointContext {
    /// `None` too for a `__data_loc` field (see [`Fields::field_name`]).
    #[inline(always)]
    fn field<T>(&self, f: TpField) -> Option<T> {
        match tp_offset(f)? {
            (off, false) => unsafe { self.read_at::<T>(off) }.ok(),
            (_, true) => None,
        }
    }

    /// An array in the record, or on older kernels a `__data_loc` (offset
    /// in the low 16 bits, length in the high ones).
    #[inline(always)]
    fn field_name(&self, f: TpField) -> Option<[u8; 16]> {
        let off = match tp_offset(f)? {
            (off, false) => off,
            (off, true) => (unsafe { self.read_at::<u32>(off) }.ok()? & 0xffff) as usize,
        };
        unsafe { self.read_at::<[u8; 16]>(off) }.ok()
    }
}

/// A raw tracepoint's program: the arguments its fields start from, read
/// by the program at the positions the probe table gives (constants, so
/// that the program reads no argument the tracepoint does not have).
pub(crate) struct RawTp<'a, const N: usize> {
    pub(crate) ctx: &'a RawTracePointContext,
    pub(crate) args: [(TpField, u64); N],
}

impl<const N: usize> EbpfContext for RawTp<'_, N> {
    fn as_ptr(&self) -> *mut core::ffi::c_void {
        self.ctx.as_ptr()
    }
}

impl<const N: usize> RawTp<'_, N> {
    /// The field's value (no member to follow) or its address.
    #[inline(always)]
    fn raw(&self, f: TpField) -> Option<Result<u64, u64>> {
        let mut v = None;
        for (field, arg) in self.args.iter() {
            if *field as u8 == f as u8 {
                v = Some(*arg);
            }
        }
        let mut v = v?;
        let r = config(&CONFIG.raw[f as usize]);
        let hops = r.hops as usize;
        if hops == 0 {
            return Some(Ok(v));
        }
        for i in 0..RAW_HOPS {
            let at = v.checked_add(r.off[i] as u64)?;
            if i + 1 >= hops {
                return Some(Err(at));
            }
            v = read_kernel::<u64>(at)?;
            if v == 0 {
                return None;
            }
        }
        None
    }
}

impl<const N: usize> Fields for RawTp<'_, N> {
    #[inline(always)]
    fn field<T>(&self, f: TpField) -> Option<T> {
        match self.raw(f)? {
            // An argument is a u64 slot; a narrower field is its low bytes.
            Ok(v) if core::mem::size_of::<T>() <= 8 => {
                Some(unsafe { core::ptr::read_unaligned(&v as *const u64 as *const T) })
            }
            Ok(_) => None,
            Err(at) => read_kernel::<T>(at),
        }
    }

    #[inline(always)]
    fn field_name(&self, f: TpField) -> Option<[u8; 16]> {
        match self.raw(f)? {
            Err(at) => read_kernel(at),
            Ok(_) => None,
        }
    }
}

/// A field of the tracepoint (see [`Fields`]).
#[inline(always)]
pub(crate) fn field<T>(ctx: &impl Fields, f: TpField) -> Option<T> {
    ctx.field(f)
}

/// A device name field (see [`Fields`]).
#[inline(always)]
pub(crate) fn field_name(ctx: &impl Fields, f: TpField) -> Option<[u8; 16]> {
    ctx.field_name(f)
}

/// The value an fexit program's function returned: the context slot after
/// its arguments, whose number the loader read from BTF. The index is a
/// constant of the frozen CONFIG, so the verifier follows one arm and sees
/// a fixed context offset.
#[inline(always)]
pub(crate) fn fexit_ret(ctx: &FExitContext, probe: ProbeId) -> i64 {
    match config(&CONFIG.ret_arg[probe as usize]) {
        0 => ctx.arg::<i64>(0),
        1 => ctx.arg::<i64>(1),
        2 => ctx.arg::<i64>(2),
        3 => ctx.arg::<i64>(3),
        4 => ctx.arg::<i64>(4),
        5 => ctx.arg::<i64>(5),
        6 => ctx.arg::<i64>(6),
        _ => 0,
    }
}

/// fentry's argument `n` as a number, as kprobes and tracepoints hand
/// them. fentry's pointers are typed from BTF, and the verifier allows
/// them no arithmetic but adding (following an skb hashes its address);
/// read from the context through a helper, the argument is a plain
/// number. Nothing is shared on the way, so a program that preempts this
/// one (PREEMPT_RT) cannot change it, as it could through a map.
#[inline(always)]
pub(crate) fn fentry_arg(ctx: &FEntryContext, n: usize) -> u64 {
    let at = unsafe { (ctx.as_ptr() as *const u64).add(n) };
    unsafe { bpf_probe_read_kernel(at) }.unwrap_or(0)
}

#[inline(always)]
pub(crate) fn read_kernel<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// `skb->head`, `skb->network_header` and `skb->tail`. They are a few
/// bytes apart in every layout so far (the header offsets, then `tail`,
/// `end` and `head`): one read of all three when so, three otherwise.
#[inline(always)]
pub(crate) fn skb_head_nh_tail(
    skb: u64,
    off_head: u64,
    off_nh: u64,
    off_tail: u64,
) -> Option<(u64, u16, u32)> {
    if let (Some(h), Some(t)) = (
        in_window(off_nh, off_head, 8),
        in_window(off_nh, off_tail, 4),
    ) {
        let buf: [u8; SKB_WINDOW] = read_kernel(skb + off_nh)?;
        // Masked (and bounds-checked by the slices) so the verifier sees
        // the bytes inside the buffer.
        let (h, t) = (h & (SKB_WINDOW - 1), t & (SKB_WINDOW - 1));
        let mut head = [0u8; 8];
        head.copy_from_slice(&buf[h..h + 8]);
        let mut tail = [0u8; 4];
        tail.copy_from_slice(&buf[t..t + 4]);
        return Some((
            u64::from_le_bytes(head),
            u16::from_le_bytes([buf[0], buf[1]]),
            u32::from_le_bytes(tail),
        ));
    }
    Some((
        read_kernel(skb + off_head)?,
        read_kernel(skb + off_nh)?,
        read_kernel(skb + off_tail)?,
    ))
}

/// The first 8 bytes of the name of the device an skb is on.
#[inline(always)]
pub(crate) fn dev_name(skb: u64) -> u64 {
    let (off_dev, off_name) = (
        config(&CONFIG.skb_dev) as u64,
        config(&CONFIG.dev_name) as u64,
    );
    if off_dev == 0 {
        return 0;
    }
    match read_kernel::<u64>(skb + off_dev) {
        Some(dev) if dev != 0 => read_kernel::<[u8; 8]>(dev + off_name)
            .map(u64::from_le_bytes)
            .unwrap_or(0),
        _ => 0,
    }
}

/// The `struct sock *` behind one of the current task's file descriptors
/// (`None` when it is not open or not a socket: a `write()` to a file or a
/// pipe).
#[inline(always)]
pub(crate) fn sock_of_fd(fd: i32) -> Option<u64> {
    if fd < 0 || config(&CONFIG.task_files) == 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read_kernel(task + config(&CONFIG.task_files) as u64)?;
    let fdt: u64 = read_kernel(files + config(&CONFIG.files_fdt) as u64)?;
    let max: u32 = read_kernel(fdt + config(&CONFIG.fdt_max_fds) as u64)?;
    if fd as u32 >= max {
        return None;
    }
    let fds: u64 = read_kernel(fdt + config(&CONFIG.fdt_fd) as u64)?;
    let file: u64 = read_kernel(fds + 8 * fd as u64)?;
    if file == 0 {
        return None;
    }
    let socket: u64 = read_kernel(file + config(&CONFIG.file_private_data) as u64)?;
    if socket == 0 {
        return None;
    }
    // Another file's private data is no `struct socket`: a socket's points
    // back to its file.
    let back: u64 = read_kernel(socket + config(&CONFIG.socket_file) as u64)?;
    if back != file {
        return None;
    }
    let sk: u64 = read_kernel(socket + config(&CONFIG.socket_sk) as u64)?;
    (sk != 0).then_some(sk)
}

/// A socket's protocol (`IPPROTO_*`).
#[inline(always)]
pub(crate) fn sk_protocol(sk: u64) -> Option<u16> {
    read_kernel(sk + config(&CONFIG.sk_protocol) as u64)
}

/// A socket's type (`SOCK_RAW`, `SOCK_DGRAM`, ...).
#[inline(always)]
pub(crate) fn sk_type(sk: u64) -> Option<u16> {
    match config(&CONFIG.sk_type) as u64 {
        0 => None,
        off => read_kernel(sk + off),
    }
}

//! Reads of kernel memory and of tracepoint records, at the offsets the
//! loader found in the running kernel's BTF and tracefs (no kernel layout
//! is compiled in).

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel},
    programs::{FExitContext, TracePointContext},
};
use lotrace_common::{
    Config, ProbeId, TpField,
    event::{SKB_WINDOW, TP_DATA_LOC, head_in_window},
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

/// A field of the tracepoint's record; `None` when this kernel's event has
/// no such field (or has it as a `__data_loc`: see [`field_name`]).
#[inline(always)]
pub(crate) fn field<T>(ctx: &TracePointContext, f: TpField) -> Option<T> {
    match tp_offset(f)? {
        (off, false) => unsafe { ctx.read_at::<T>(off) }.ok(),
        (_, true) => None,
    }
}

/// A device name field: an array in the record, or on older kernels a
/// `__data_loc` (offset in the low 16 bits, length in the high ones).
#[inline(always)]
pub(crate) fn field_name(ctx: &TracePointContext, f: TpField) -> Option<[u8; 16]> {
    let off = match tp_offset(f)? {
        (off, false) => off,
        (off, true) => (unsafe { ctx.read_at::<u32>(off) }.ok()? & 0xffff) as usize,
    };
    unsafe { ctx.read_at::<[u8; 16]>(off) }.ok()
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

#[inline(always)]
pub(crate) fn read_kernel<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// `skb->head` and `skb->network_header`. They are a few bytes apart in
/// every layout so far (the header offsets sit just before `head`): one
/// read of both when so, two otherwise.
#[inline(always)]
pub(crate) fn skb_head_nh(skb: u64, off_head: u64, off_nh: u64) -> Option<(u64, u16)> {
    if let Some(i) = head_in_window(off_nh, off_head) {
        let buf: [u8; SKB_WINDOW] = read_kernel(skb + off_nh)?;
        // Masked (and bounds-checked by the slice) so the verifier sees
        // the 8 bytes inside the buffer.
        let i = i & (SKB_WINDOW - 1);
        let mut h = [0u8; 8];
        h.copy_from_slice(&buf[i..i + 8]);
        return Some((u64::from_le_bytes(h), u16::from_le_bytes([buf[0], buf[1]])));
    }
    Some((read_kernel(skb + off_head)?, read_kernel(skb + off_nh)?))
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
/// (`None` when it is not open; for a file that is not a socket, whatever
/// its private data holds, which the caller's checks then reject).
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
    let sk: u64 = read_kernel(socket + config(&CONFIG.socket_sk) as u64)?;
    (sk != 0).then_some(sk)
}

/// A socket's protocol (`IPPROTO_*`).
#[inline(always)]
pub(crate) fn sk_protocol(sk: u64) -> Option<u16> {
    read_kernel(sk + config(&CONFIG.sk_protocol) as u64)
}

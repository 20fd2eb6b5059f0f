//! Which processes and packets are traced: the traced command's processes
//! (`TARGETS`), the echo ids they sent (`TRACKED`) and in which network
//! namespace (`TRACKED_NET`, `CROSSED`), and their sockets (`SOCKS`). What
//! an skb is, is `packet`'s.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, maps::LruHashMap};
use lotrace_common::{
    PktKey, ProbeId, TpField, agg,
    catalog::targets,
    event::{AF_INET6, is_flow},
};

use crate::kernel::Fields;
use crate::{
    kernel::{CONFIG, config, field, read_kernel},
    maps::{CROSSED, OWNED, OWNED_SLOTS, SOCKS, TARGETS, TRACKED, TRACKED_NET, TRACKED_SK, state},
};

/// Sets a thread's context (a packet's key, or any per-thread note). A
/// thread keeps its slot between system calls (marked invalid, not
/// deleted): writing through the pointer costs the packet no allocation,
/// as a delete and re-insert per echo would. The map is LRU so that the
/// slots of threads gone are reused.
#[inline(always)]
pub(crate) fn set_ctx<V: Copy>(map: &LruHashMap<u32, V>, tid: u32, v: &V) {
    match map.get_ptr_mut(&tid) {
        Some(p) => unsafe { *p = *v },
        None => {
            let _ = map.insert(&tid, v, 0);
        }
    }
}

/// A thread's context, if set.
#[inline(always)]
pub(crate) fn get_ctx(map: &LruHashMap<u32, PktKey>, tid: u32) -> Option<PktKey> {
    let k = unsafe { *map.get_ptr(&tid)? };
    (k.valid != 0).then_some(k)
}

/// Clears a thread's context; returns what it was.
#[inline(always)]
pub(crate) fn take_ctx(map: &LruHashMap<u32, PktKey>, tid: u32) -> Option<PktKey> {
    let p = map.get_ptr_mut(&tid)?;
    let k = unsafe { *p };
    unsafe { (*p).valid = 0 };
    (k.valid != 0).then_some(k)
}

#[inline(always)]
pub(crate) fn tgid_tid() -> (u32, u32) {
    let v = bpf_get_current_pid_tgid();
    ((v >> 32) as u32, v as u32)
}

#[inline(always)]
pub(crate) fn is_target(tgid: u32) -> bool {
    unsafe { TARGETS.get(&tgid) }.is_some_and(|v| *v == targets::TRACED)
}

#[inline(always)]
pub(crate) fn track_key(key: &PktKey) -> u32 {
    // The same family-and-16-bit-number indexing as the echo slots.
    agg::echo_slot(key.family == AF_INET6, key.icmp_id)
}

/// The network namespace of the device an skb is on, if known.
#[inline(always)]
fn skb_net(skb: u64) -> Option<u64> {
    let (off_dev, off_net) = (
        config(&CONFIG.skb_dev) as u64,
        config(&CONFIG.dev_net) as u64,
    );
    if off_dev == 0 || off_net == 0 {
        return None;
    }
    let dev = read_kernel::<u64>(skb + off_dev)?;
    if dev == 0 {
        return None;
    }
    read_kernel::<u64>(dev + off_net).filter(|n| *n != 0)
}

/// The network namespace a socket is in (0: not known).
#[inline(always)]
pub(crate) fn sock_net(sk: u64) -> u64 {
    let off = config(&CONFIG.sk_net) as u64;
    if off == 0 || sk == 0 {
        return 0;
    }
    read_kernel::<u64>(sk + off).unwrap_or(0)
}

/// Is `skb`, whose headers say `key`, one of the traced echoes? Its id is
/// tracked, and the skb is in the namespace of the socket that sent the
/// id, or in one a packet of that process was handed to (see `CROSSED`).
/// Where the namespace cannot be read, the id decides.
#[inline(always)]
pub(crate) fn is_ours(key: &PktKey, skb: u64) -> bool {
    if key.valid == 0 {
        return false;
    }
    // A flow packet's key is only ever made for a flow the trace follows.
    if is_flow(key.icmp_type) {
        return true;
    }
    let k = track_key(key);
    let owner = match TRACKED.get(k) {
        Some(v) if *v != 0 => *v,
        _ => return false,
    };
    let home = match TRACKED_NET.get(k) {
        Some(n) if *n != 0 => *n,
        _ => return true,
    };
    let Some(net) = skb_net(skb) else {
        return true;
    };
    if net == home {
        return true;
    }
    let crossed = [net, k as u64];
    if unsafe { CROSSED.get(&crossed) } == Some(&owner) {
        return true;
    }
    // The transmit of one of ours, under way here, hands this very skb to
    // another namespace's receive: the echo goes on there.
    if state().is_some_and(|st| st.xmit_skb == skb) {
        let _ = CROSSED.insert(&crossed, &owner, 0);
        return true;
    }
    false
}

/// Starts tracking an id for the process `tgid`, sent on socket `sk` in
/// the namespace `net`; true if it was not tracked yet. A later send of
/// the id by the same process names the socket it now uses.
#[inline(always)]
pub(crate) fn track(k: u32, tgid: u32, sk: u64, net: u64) -> bool {
    let Some(v) = TRACKED.get_ptr_mut(k) else {
        return false;
    };
    let owner = unsafe { *v };
    if owner == 0 {
        unsafe { *v = tgid };
        if let Some(n) = TRACKED_NET.get_ptr_mut(k) {
            unsafe { *n = net };
        }
    } else if owner != tgid {
        return false;
    }
    if let Some(s) = TRACKED_SK.get_ptr_mut(k)
        && unsafe { *s } != sk
    {
        unsafe { *s = sk };
    }
    if owner != 0 {
        return false;
    }
    own(tgid, k);
    true
}

/// Whether socket `sk` is the one `key`'s echo was sent on: its reply is
/// delivered there, while every raw ICMP socket, another traced ping's
/// too, gets a copy. True when either is not known (0).
#[inline(always)]
pub(crate) fn echo_socket_is(key: &PktKey, sk: u64) -> bool {
    if is_flow(key.icmp_type) {
        return true;
    }
    match TRACKED_SK.get(track_key(key)) {
        Some(&s) => s == 0 || sk == 0 || s == sk,
        None => true,
    }
}

/// The socket an skb belongs to (0: none, or not known here).
#[inline(always)]
pub(crate) fn skb_sock(skb: u64) -> u64 {
    let off = config(&CONFIG.skb_sk) as u64;
    if off == 0 {
        return 0;
    }
    read_kernel::<u64>(skb + off).unwrap_or(0)
}

/// Remembers that `tgid` set slot `k` of `TRACKED`.
#[inline(always)]
fn own(tgid: u32, k: u32) {
    match OWNED.get_ptr_mut(&tgid) {
        Some(slots) => {
            let slots = unsafe { &mut *slots };
            for s in slots.iter_mut() {
                if *s == 0 {
                    *s = k + 1;
                    return;
                }
            }
        }
        None => {
            let mut slots = [0u32; OWNED_SLOTS];
            slots[0] = k + 1;
            let _ = OWNED.insert(&tgid, &slots, 0);
        }
    }
}

/// A traced process ends: the ids it sent are no longer tracked.
#[inline(always)]
fn disown(tgid: u32) {
    let Some(slots) = (unsafe { OWNED.get(&tgid) }).copied() else {
        return;
    };
    for s in slots {
        if s != 0
            && let Some(v) = TRACKED.get_ptr_mut(s - 1)
            && unsafe { *v } == tgid
        {
            unsafe { *v = 0 };
        }
    }
    let _ = OWNED.remove(&tgid);
}

/// Remembers a socket of the targets. Looked up first: updating an
/// existing hash element costs an allocation, and every send asks.
#[inline(always)]
pub(crate) fn learn_sock(sk: u64) {
    if unsafe { SOCKS.get(&sk) }.is_none() {
        let _ = SOCKS.insert(&sk, &1, 0);
    }
}

/// Inside the NET_RX softirq on this CPU.
#[inline(always)]
pub(crate) fn in_softirq() -> bool {
    state().map(|s| s.in_net_rx != 0).unwrap_or(false)
}

/// A traced process forks, or lotrace spawns the command: the child is
/// traced. The tracepoint runs in the parent, whose process is the
/// current one (its `parent_pid` is the forking thread's id, not its
/// process's; threads were found only because their own ids were added as
/// children).
#[inline(always)]
pub(crate) fn sched_process_fork(
    ctx: &impl Fields,
    _probe: ProbeId,
    _parent: TpField,
    child: TpField,
) {
    let Some(child) = field::<i32>(ctx, child) else {
        return;
    };
    // A traced process's child, or lotrace's (the command it runs).
    if unsafe { TARGETS.get(&tgid_tid().0) }.is_some() {
        let _ = TARGETS.insert(&(child as u32), &targets::TRACED, 0);
    }
}

/// A task ends: its id may be given to another process, which must not be
/// traced. A thread's own id is in the set when a traced process created
/// it (a fork's child may be either), so each task removes its own id, the
/// main thread the process's, and with it the echo ids the process sent.
#[inline(always)]
pub(crate) fn sched_process_exit(_ctx: &impl Fields, _probe: ProbeId, _pid: TpField) {
    let (tgid, tid) = tgid_tid();
    // Unconditional: the main thread may have gone first.
    let _ = TARGETS.remove(&tid);
    if tid == tgid {
        disown(tgid);
    }
}

//! Which processes and packets are traced: the traced command's processes
//! (`TARGETS`), the echo ids they sent (`TRACKED`) and in which network
//! namespace (`TRACKED_NET`, `CROSSED`), their sockets (`SOCKS`), and how
//! an skb is recognised as one of those echoes.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, maps::LruHashMap};
use lotrace_common::{
    PktKey, ProbeId, TpField, agg,
    event::{
        AF_INET, AF_INET6, ICMP_ECHO, ICMP_ECHOREPLY, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
        IPPROTO_FRAGMENT, IPPROTO_ICMP, IPPROTO_ICMPV6,
    },
    follow::{self, At, Followed, Header},
};

use crate::kernel::Fields;
use crate::{
    kernel::{CONFIG, config, field, read_kernel, skb_head_nh_tail},
    maps::{
        CROSSED, FRAGS, OWNED, OWNED_SLOTS, SEND_CTX, SKBS, SOCKS, TARGETS, TRACKED, TRACKED_NET,
        state,
    },
};

/// Sets a thread's context. A thread keeps its slot between system calls
/// (marked invalid, not deleted): writing through the pointer costs the
/// packet no allocation, as a delete and re-insert per echo would. The map
/// is LRU so that the slots of threads gone are reused.
#[inline(always)]
pub(crate) fn set_ctx(map: &LruHashMap<u32, PktKey>, tid: u32, key: &PktKey) {
    match map.get_ptr_mut(&tid) {
        Some(p) => unsafe { *p = *key },
        None => {
            let _ = map.insert(&tid, key, 0);
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
    unsafe { TARGETS.get(&tgid) }.is_some()
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

/// Starts tracking an id for the process `tgid`, whose socket is in the
/// namespace `net`; true if it was not tracked yet.
#[inline(always)]
pub(crate) fn track(k: u32, tgid: u32, net: u64) -> bool {
    match TRACKED.get_ptr_mut(k) {
        Some(v) if unsafe { *v } == 0 => {
            unsafe { *v = tgid };
            if let Some(n) = TRACKED_NET.get_ptr_mut(k) {
                unsafe { *n = net };
            }
            own(tgid, k);
            true
        }
        _ => false,
    }
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

/// Reads the IP and ICMP/ICMPv6 headers of an skb at the offsets the loader
/// found in BTF, inside its linear data only. `None` for anything that is
/// not ICMP. A fragment of a datagram is its echo's: the first fragment's
/// header says which, and is remembered by the datagram's id for the
/// others (see `FRAGS`); the skb is marked a fragment for `emit`.
#[inline(always)]
pub(crate) fn read_skb(skb: u64) -> Option<(Header, u32)> {
    if skb == 0 {
        return None;
    }
    let (off_head, off_nh, off_len, off_tail) = (
        config(&CONFIG.skb_head) as u64,
        config(&CONFIG.skb_network_header) as u64,
        config(&CONFIG.skb_len) as u64,
        config(&CONFIG.skb_tail) as u64,
    );
    if off_head == 0 || off_tail == 0 {
        return None;
    }
    let (head, nh, tail) = skb_head_nh_tail(skb, off_head, off_nh, off_tail)?;
    if nh == u16::MAX || head == 0 {
        return None;
    }
    let end = head + tail as u64;
    // The length only goes into streamed events: aggregation skips the read.
    let len: u32 = if config(&CONFIG.summary_only) != 0 {
        0
    } else {
        read_kernel(skb + off_len).unwrap_or(0)
    };
    let ip = head + nh as u64;
    // One read covers what both IP versions need: the version, IPv4's
    // identification (bytes 4-5), fragment offset and flags (6-7) and
    // protocol (9), IPv6's next header (6).
    if ip + 10 > end {
        return None;
    }
    let iph: [u8; 10] = read_kernel(ip)?;
    let (family, icmp_at, frag) = match iph[0] >> 4 {
        4 if iph[9] == IPPROTO_ICMP => {
            let flags_off = u16::from_be_bytes([iph[6], iph[7]]);
            let id = u16::from_be_bytes([iph[4], iph[5]]) as u32;
            if flags_off & 0x1fff != 0 {
                return later_fragment(skb, AF_INET, id, len);
            }
            let frag = (flags_off & 0x2000 != 0).then_some(id);
            (AF_INET, ip + ((iph[0] & 0x0f) as u64) * 4, frag)
        }
        6 if iph[6] == IPPROTO_ICMPV6 => (AF_INET6, ip + 40, None),
        6 if iph[6] == IPPROTO_FRAGMENT => {
            if ip + 48 > end {
                return None;
            }
            // Next header, reserved, offset and M flag, identification.
            let fh: [u8; 8] = read_kernel(ip + 40)?;
            let id = u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]);
            if u16::from_be_bytes([fh[2], fh[3]]) & 0xfff8 != 0 {
                return later_fragment(skb, AF_INET6, id, len);
            }
            if fh[0] != IPPROTO_ICMPV6 {
                return None;
            }
            (AF_INET6, ip + 48, Some(id))
        }
        _ => return None,
    };
    if icmp_at + 8 > end {
        mark_fragment(skb, frag.is_some());
        return Some((Header::Unread(family), len));
    }
    let hdr: [u8; 8] = read_kernel(icmp_at)?;
    let key = echo_key(family, &hdr)?;
    // Only for echoes: every other packet of the machine passes here too.
    mark_fragment(skb, frag.is_some());
    if let Some(id) = frag {
        let k = frag_key(family, id);
        if unsafe { FRAGS.get(&k) } != Some(&key) {
            let _ = FRAGS.insert(&k, &key, 0);
        }
    }
    Some((Header::Echo(key), len))
}

#[inline(always)]
fn frag_key(family: u8, id: u32) -> u64 {
    ((family as u64) << 32) | id as u64
}

/// A fragment other than the first: the echo its datagram's first fragment
/// carried, if seen.
#[inline(always)]
fn later_fragment(skb: u64, family: u8, id: u32, len: u32) -> Option<(Header, u32)> {
    let key = unsafe { FRAGS.get(&frag_key(family, id)) }.copied()?;
    mark_fragment(skb, true);
    Some((Header::Echo(key), len))
}

/// Whether the skb just read is a fragment (its events say so). The
/// reassembled datagram takes over one fragment's skb: the mark goes with
/// the next read of that address.
#[inline(always)]
fn mark_fragment(skb: u64, frag: bool) {
    if let Some(st) = state() {
        if frag {
            st.frag_skb = skb;
        } else if st.frag_skb == skb {
            st.frag_skb = 0;
        }
    }
}

/// The skbs followed by address, for `lotrace_common::follow`.
struct Skbs;

impl Followed for Skbs {
    #[inline(always)]
    fn get(&self, skb: u64) -> Option<PktKey> {
        unsafe { SKBS.get(&skb) }.copied()
    }
    #[inline(always)]
    fn set(&mut self, skb: u64, key: &PktKey) {
        let _ = SKBS.insert(&skb, key, 0);
    }
    #[inline(always)]
    fn remove(&mut self, skb: u64) {
        let _ = SKBS.remove(&skb);
    }
}

/// Which echo packet an skb is, and its length (see
/// `lotrace_common::follow`); the caller decides whether that echo is
/// traced. `free`: the skb's free, which ends its following.
#[inline(always)]
pub(crate) fn identify(skb: u64, free: bool) -> Option<(PktKey, u32)> {
    let (header, len) = read_skb(skb)?;
    let at = if free {
        At::Free
    } else {
        At::Way {
            sending: match header {
                Header::Unread(_) => sending(),
                Header::Echo(_) => None,
            },
        }
    };
    Some((follow::identify(&mut Skbs, skb, header, at)?, len))
}

/// The echo a traced thread's send is building, outside NET_RX.
#[inline(always)]
fn sending() -> Option<PktKey> {
    if in_softirq() {
        return None;
    }
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return None;
    }
    get_ctx(&SEND_CTX, tid)
}

/// Follows a copy of a traced packet (a raw socket's clone) by its own
/// address, when its header cannot be read.
#[inline(always)]
pub(crate) fn follow_copy(skb: u64, key: &PktKey) {
    follow::follow_copy(&mut Skbs, skb, read_skb(skb).map(|(h, _)| h), key);
}

#[inline(always)]
pub(crate) fn echo_key(family: u8, hdr: &[u8; 8]) -> Option<PktKey> {
    let t = hdr[0];
    let echo = match family {
        AF_INET => t == ICMP_ECHO || t == ICMP_ECHOREPLY,
        _ => t == ICMPV6_ECHO_REQUEST || t == ICMPV6_ECHO_REPLY,
    };
    if !echo {
        return None;
    }
    Some(PktKey {
        icmp_id: u16::from_be_bytes([hdr[4], hdr[5]]),
        icmp_seq: u16::from_be_bytes([hdr[6], hdr[7]]),
        family,
        icmp_type: t,
        valid: 1,
        delivered: 0,
    })
}

/// The reply that answers `req` (same id and sequence).
#[inline(always)]
pub(crate) fn reply_of(req: &PktKey) -> PktKey {
    let mut k = *req;
    k.icmp_type = if req.family == AF_INET6 {
        ICMPV6_ECHO_REPLY
    } else {
        ICMP_ECHOREPLY
    };
    k.delivered = 0;
    k
}

/// A traced process forks: its child is traced too. The tracepoint runs
/// in the parent, whose process is the current one (its `parent_pid` is
/// the forking thread's id, not its process's; threads were found only
/// because their own ids were added as children).
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
    if is_target(tgid_tid().0) {
        let _ = TARGETS.insert(&(child as u32), &1, 0);
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

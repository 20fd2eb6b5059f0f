//! TCP and UDP packets of the traced command's flows. A flow (one
//! protocol, two addresses, two ports) becomes the trace's when a traced
//! process transmits its first packet, outside NET_RX; from then on every
//! packet of it, either way, is numbered where it is first seen and
//! followed like an echo (see `packet`): so the peer's side (a server on
//! this machine answering) is the trace's too, and nothing else is.

use aya_ebpf::maps::{Array, LruHashMap, PerCpuArray};
use aya_ebpf::{helpers::bpf_probe_read_kernel_buf, macros::map};
use lotrace_common::{
    Event, PktKey, ProbeId, Stage,
    agg::{self, RowAgg},
    bits::add_u32,
    event::{
        AF_INET, AF_INET6, EVENT_SIZE, FLAG_FLOW_NEW, FLAG_PACKET, FLOW_REVERSE, FlowTuple,
        IPPROTO_TCP, PKT_TCP, PKT_UDP,
    },
};

use crate::{
    assemble::wake_flags,
    filter::{in_softirq, is_target, skb_sock, tgid_tid},
    kernel::{CONFIG, config, now, read_kernel},
    listen::to_listener,
    maps::{EVENTS, SUBMITTED, count_lost, state},
};

/// Each flow the trace follows, in both orientations: its number, with
/// bit 16 set for the orientation opposite to its first packet's. LRU:
/// a long trace's old flows make room.
#[map]
static FLOW_IDS: LruHashMap<FlowTuple, u32> = LruHashMap::with_max_entries(8192, 0);

/// Flows numbered so far (read by the loader at the end of a
/// `--summary-only` trace).
#[map]
static FLOW_COUNT: Array<u32> = Array::with_max_entries(1, 0);

/// `--summary-only`: per row (see `agg::FLOW_ROWS`), per CPU.
#[map]
static FLOW_ROWS: PerCpuArray<RowAgg> = PerCpuArray::with_max_entries(agg::FLOW_ROWS as u32, 0);

/// `--summary-only`: per packet, at a hash of its key, the key and when
/// its first and its latest stage were seen (0: numbered, no stage yet).
/// An array, not a hash map: every stage of every packet looks here. A
/// packet numbered later at the same index takes it over, and the rest of
/// the earlier one is left out.
#[map]
static FLOW_SEEN: Array<[u64; 3]> = Array::with_max_entries(FLOW_SEEN_SLOTS, 0);

const FLOW_SEEN_SLOTS: u32 = 65536;

#[inline(always)]
fn seen_slot(key: u64) -> u32 {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as u32 & (FLOW_SEEN_SLOTS - 1)
}

/// `--summary-only`: a flow packet's stage, seen at `ts` by `probe`,
/// added to its row as the time since the packet's previous stage. A
/// function of its own in the object, called with numbers only (see
/// `read`).
#[inline(never)]
pub(crate) fn aggregate(key: u64, ts: u64, stage: u8, probe: u8) {
    let tcp = (key >> 40) as u8 == PKT_TCP;
    // Numbered here (see `number`), or not counted: a packet whose slot a
    // later one took is left out rather than counted twice.
    let Some(p) = FLOW_SEEN.get_ptr_mut(seen_slot(key)) else {
        return;
    };
    let (since_prev, since_first) = unsafe {
        if (*p)[0] != key {
            return;
        }
        if (*p)[1] == 0 {
            (*p)[1] = ts;
            (*p)[2] = ts;
            (0, 0)
        } else {
            let prev = (*p)[2];
            (*p)[2] = prev.max(ts);
            (ts.saturating_sub(prev), ts.saturating_sub((*p)[1]))
        }
    };
    let p = probe as u32;
    // One word read, not the pair copied: this function's stack adds to
    // its callers' (see `read`).
    let word = config(&CONFIG.ret_probes[(p >> 6) as usize & 3]);
    let row = agg::row(tcp, stage, (word >> (p & 63)) & 1 != 0);
    if let Some(r) = FLOW_ROWS.get_ptr_mut(row as u32) {
        unsafe { (*r).record(since_prev, since_first as i64) };
    }
}

/// A flow packet's key as one number, for [`aggregate`].
#[inline(always)]
pub(crate) fn key_u64(k: &PktKey) -> u64 {
    k.icmp_id as u64
        | (k.icmp_seq as u64) << 16
        | (k.family as u64) << 32
        | (k.icmp_type as u64) << 40
}

const FLOW_SLOTS: u32 = 8192;

/// Per flow and direction (`(number << 1 | reverse) % FLOW_SLOTS`), the
/// packets numbered so far. One socket sends each direction, and the
/// kernel serialises a TCP socket's transmits under its lock.
#[map]
static FLOW_PKTS: Array<u32> = Array::with_max_entries(FLOW_SLOTS, 0);

/// The key of a TCP segment or UDP datagram whose IP header is at `ip`
/// (`iph` its first 10 bytes, `th` its transport header, `end` the end
/// of the linear data), if its flow is the trace's, or becomes it here.
/// Records what the transmit's event reports of it in the CPU's state.
/// A function of its own in the object (not inlined): every skb stage
/// reads headers, and the kernel limits the stack of a whole call chain
/// to 512 bytes (5.10 and 6.1 refused the programs with this inlined).
/// The key is returned through the state (`CpuState::flow_key`): a
/// function of the object takes and returns registers only.
#[inline(never)]
pub(crate) fn read(skb: u64, ip: u64, iph: &[u8; 10], th: u64, end: u64) -> bool {
    match read_inner(skb, ip, iph, th, end) {
        Some(key) => state().is_some_and(|st| {
            st.flow_key = key;
            true
        }),
        None => false,
    }
}

#[inline(always)]
fn read_inner(skb: u64, ip: u64, iph: &[u8; 10], th: u64, end: u64) -> Option<PktKey> {
    // A packet is numbered where it is transmitted: at a transmit's entry,
    // or at the driver's (a segment GSO cut from a larger one is a new
    // skb there). Met first anywhere else, its number would be a second
    // one for a packet already counted (its entry forgotten in a
    // collision): it is not reported.
    if state()?.tx_entry == 0 {
        return None;
    }
    let (family, proto) = if iph[0] >> 4 == 4 {
        (AF_INET, iph[9])
    } else {
        (AF_INET6, iph[6])
    };
    let tcp = proto == IPPROTO_TCP;
    // Ports, and TCP's sequence number, data offset and flags.
    let need = if tcp { 14 } else { 4 };
    if th + need > end {
        return None;
    }
    let hdr: [u8; 14] = if tcp {
        read_kernel(th)?
    } else {
        let p: [u8; 4] = read_kernel(th)?;
        [p[0], p[1], p[2], p[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    };
    let st = state()?;
    let t = &mut st.tuple;
    tuple(t, family, proto, ip, [hdr[0], hdr[1], hdr[2], hdr[3]])?;
    // The IP payload's length, past the IP header.
    let ip_payload = if family == AF_INET {
        (u16::from_be_bytes([iph[2], iph[3]]) as u32).saturating_sub((th - ip) as u32)
    } else {
        u16::from_be_bytes([iph[4], iph[5]]) as u32
    };
    let (flow, reverse) = match unsafe { FLOW_IDS.get(&*t) } {
        Some(v) => flow_id(*v),
        None => (register(skb, t)?, false),
    };
    let (payload, flags, seq) = if tcp {
        let hlen = ((hdr[12] >> 4) as u32) * 4;
        (
            ip_payload.saturating_sub(hlen),
            hdr[13],
            u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
        )
    } else {
        (ip_payload.saturating_sub(8), 0, 0)
    };
    let key = number(skb, family, tcp, flow, reverse)?;
    let st = state()?;
    st.flow_skb = skb;
    st.flow_hdr = flags as u64 | ((seq as u64) << 32);
    st.flow_aux2 = payload.min(0x7fff_ffff) | if reverse { 1 << 31 } else { 0 };
    Some(key)
}

/// A flow direction's counter in `FLOW_PKTS`.
#[inline(always)]
fn pkts_slot(flow: u16, reverse: bool) -> u32 {
    ((flow as u32) << 1 | reverse as u32) % FLOW_SLOTS
}

/// The key of packet `n` of a flow's direction.
#[inline(always)]
fn packet_key(family: u8, tcp: bool, flow: u16, reverse: bool, n: u32) -> PktKey {
    PktKey {
        icmp_id: flow,
        icmp_seq: (n as u16 & !FLOW_REVERSE) | if reverse { FLOW_REVERSE } else { 0 },
        family,
        icmp_type: if tcp { PKT_TCP } else { PKT_UDP },
        valid: 1,
        delivered: 0,
    }
}

/// The TCP packet numbered last in the direction the CPU's state's
/// tuple names, if the trace follows that flow: a socket's packets are
/// numbered under its lock, which a retransmission holds from its
/// transmit to its tracepoint.
#[inline(always)]
pub(crate) fn last_numbered() -> Option<PktKey> {
    let t = &state()?.tuple;
    let v = unsafe { FLOW_IDS.get(t) }?;
    let (flow, reverse) = flow_id(*v);
    let n = unsafe { core::ptr::read_volatile(FLOW_PKTS.get_ptr(pkts_slot(flow, reverse))?) };
    (n != 0).then(|| packet_key(t.family, true, flow, reverse, n))
}

/// The packet's number: a new one, unless an earlier entry of this very
/// transmit (`ip_output`, then `dev_queue_xmit`) numbered this skb.
#[inline(always)]
fn number(skb: u64, family: u8, tcp: bool, flow: u16, reverse: bool) -> Option<PktKey> {
    let st = state()?;
    if st.tx_entry == 2 && st.tx_flow_skb == skb {
        st.tx_flow_skb = 0;
        if st.tx_flow.icmp_id == flow {
            return Some(st.tx_flow);
        }
    }
    let p = FLOW_PKTS.get_ptr_mut(pkts_slot(flow, reverse))?;
    let n = unsafe {
        add_u32(&mut *p, 1);
        core::ptr::read_volatile(p)
    };
    let key = packet_key(family, tcp, flow, reverse, n);
    if st.tx_entry == 1 {
        st.tx_flow_skb = skb;
        st.tx_flow = key;
    } else {
        st.tx_flow_skb = 0;
    }
    // A new packet, counted; numbers wrap, and an older packet's
    // aggregation state under the same key is not this one's.
    if config(&CONFIG.summary_only) != 0 {
        let k = key_u64(&key);
        if let Some(p) = FLOW_SEEN.get_ptr_mut(seen_slot(k)) {
            unsafe { *p = [k, 0, 0] };
        }
        if let Some(r) = FLOW_ROWS.get_ptr_mut(agg::flow_packets_row(tcp) as u32) {
            unsafe { (*r).record(0, 0) };
        }
    }
    Some(key)
}

/// A flow's first packet, transmitted by a traced process outside NET_RX
/// from one of its sockets: the flow becomes the trace's, announced to
/// user space once.
#[inline(always)]
fn register(skb: u64, t: &mut FlowTuple) -> Option<u16> {
    let tx_entry = state()?.tx_entry;
    if tx_entry == 0 {
        return None;
    }
    let sent_by_target = !in_softirq() && is_target(tgid_tid().0) && skb_sock(skb) != 0;
    if !sent_by_target && !to_listener(t) {
        return None;
    }
    let c = FLOW_COUNT.get_ptr_mut(0)?;
    let n = unsafe {
        add_u32(&mut *c, 1);
        core::ptr::read_volatile(c)
    };
    // Flow numbers run from 1; 0 is no flow's.
    let flow = (n.wrapping_sub(1) % 0xffff) as u16 + 1;
    for reverse in [false, true] {
        if let Some(p) = FLOW_PKTS.get_ptr_mut(pkts_slot(flow, reverse)) {
            unsafe { core::ptr::write_volatile(p, 0) };
        }
    }
    announce(t, flow);
    let _ = FLOW_IDS.insert(&*t, &(flow as u32), 0);
    // The other way round, in place: the stack has no room for a copy.
    swap(t);
    let _ = FLOW_IDS.insert(&*t, &(flow as u32 | 1 << 16), 0);
    swap(t);
    Some(flow)
}

#[inline(always)]
fn swap(t: &mut FlowTuple) {
    core::mem::swap(&mut t.sport, &mut t.dport);
    core::mem::swap(&mut t.saddr, &mut t.daddr);
}

/// The flow's announcement: see `FLAG_FLOW_NEW`. Written in place in the
/// ring: an `Event` on the stack would not fit beside the caller's.
#[inline(always)]
fn announce(t: &FlowTuple, flow: u16) {
    // Nothing is streamed with `--summary-only`: the loader counts flows.
    if config(&CONFIG.summary_only) != 0 {
        return;
    }
    let (tgid, tid) = tgid_tid();
    let wake = wake_flags(EVENT_SIZE as u64);
    if let Some(n) = SUBMITTED.get_ptr_mut(0) {
        unsafe { *n += 1 };
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count_lost(1);
        return;
    };
    let e = entry.as_mut_ptr();
    unsafe {
        (*e).ts_ns = now();
        (*e).skb = u64::from_le_bytes([
            t.daddr[0], t.daddr[1], t.daddr[2], t.daddr[3], t.daddr[4], t.daddr[5], t.daddr[6],
            t.daddr[7],
        ]);
        (*e).aux = u64::from_le_bytes([
            t.daddr[8],
            t.daddr[9],
            t.daddr[10],
            t.daddr[11],
            t.daddr[12],
            t.daddr[13],
            t.daddr[14],
            t.daddr[15],
        ]);
        (*e).tid = tid;
        (*e).tgid = tgid;
        (*e).comm = t.saddr;
        (*e).cpu = 0;
        (*e).len = (u16::from_be_bytes(t.sport) as u32) << 16 | u16::from_be_bytes(t.dport) as u32;
        (*e).softirq_run = 0;
        (*e).aux2 = 0;
        (*e).stage = Stage::DevQueueXmit as u8;
        (*e).probe = ProbeId::NetDevQueue as u8;
        (*e).flags = FLAG_FLOW_NEW | FLAG_PACKET;
        (*e).family = t.family;
        (*e).icmp_type = if t.proto == IPPROTO_TCP {
            PKT_TCP
        } else {
            PKT_UDP
        };
        (*e).tcp_flags = 0;
        (*e).icmp_id = flow;
        (*e).icmp_seq = 0;
        (*e).tcp_seq = [0; 4];
        (*e)._pad1 = [0; 2];
    }
    entry.submit(wake);
}

/// Fills `t` with the flow a packet's headers name: its addresses, read
/// at `ip`, and the ports it carries. In place: see [`FlowTuple`].
#[inline(always)]
fn tuple(t: &mut FlowTuple, family: u8, proto: u8, ip: u64, ports: [u8; 4]) -> Option<()> {
    t.family = family;
    t.proto = proto;
    t.sport = [ports[0], ports[1]];
    t.dport = [ports[2], ports[3]];
    t._pad = [0; 2];
    t.saddr = [0; 16];
    t.daddr = [0; 16];
    if family == AF_INET {
        unsafe {
            bpf_probe_read_kernel_buf((ip + 12) as *const u8, &mut t.saddr[..4]).ok()?;
            bpf_probe_read_kernel_buf((ip + 16) as *const u8, &mut t.daddr[..4]).ok()?;
        }
    } else {
        unsafe {
            bpf_probe_read_kernel_buf((ip + 8) as *const u8, &mut t.saddr).ok()?;
            bpf_probe_read_kernel_buf((ip + 24) as *const u8, &mut t.daddr).ok()?;
        }
    }
    Some(())
}

/// A `FLOW_IDS` value: the flow's number, and whether the tuple is the
/// flow's reverse orientation.
#[inline(always)]
fn flow_id(v: u32) -> (u16, bool) {
    (v as u16, (v >> 16) & 1 != 0)
}

/// The flow a TCP or UDP header names, if the trace follows it, and
/// whether in its reverse orientation: nothing numbered, nothing
/// registered. TCP frees most skbs without a
/// tracepoint (and UDP from 6.18), so a followed address may since hold
/// anything (an AF_UNIX message at a copy, another packet at a free,
/// the same connection's packet the other way): a stage checks a
/// followed flow packet's skb with this.
#[inline(always)]
pub(crate) fn flow_of(family: u8, proto: u8, ip: u64, th: u64, end: u64) -> Option<(u16, bool)> {
    if th + 4 > end {
        return None;
    }
    let p: [u8; 4] = read_kernel(th)?;
    let t = &mut state()?.tuple;
    tuple(t, family, proto, ip, p)?;
    unsafe { FLOW_IDS.get(&*t) }.map(|v| flow_id(*v))
}

//! What a stage does once it has seen one of the traced packets: one
//! [`Event`], into its echo's slot (see `assemble`) or into the ring
//! buffer, or, with `--summary-only`, an update of the in-kernel
//! aggregates instead.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_comm, bpf_get_smp_processor_id},
};
use aya_log_ebpf::warn;
use lotrace_common::{
    Event, PktKey, ProbeId, Stage,
    event::{EVENT_SIZE, FLAG_FRAGMENT, FLAG_NET_RX, FLAG_PACKET, is_flow},
    follow::Sight,
};

use crate::{
    aggregate::aggregate_later,
    assemble::{deliver_later, wake_flags},
    filter::{is_ours, tgid_tid},
    flow,
    kernel::{CONFIG, config},
    maps::{EVENTS, SUBMITTED, count_lost, state},
    packet::ours,
    seen::{Seen, at},
};

/// Counts the event as submitted, then streams it, or aggregates it with
/// `--summary-only`.
#[inline(always)]
pub(crate) fn emit<C: EbpfContext>(ctx: &C, key: &PktKey, e: Seen) {
    if let Some(n) = SUBMITTED.get_ptr_mut(0) {
        unsafe { *n += 1 };
    }
    let flow = is_flow(key.icmp_type);
    if config(&CONFIG.summary_only) != 0 {
        if flow {
            flow::aggregate(flow::key_u64(key), e.ts, e.stage as u8, e.probe as u8);
        } else {
            aggregate_later(key, &e);
        }
        return;
    }
    let (tgid, tid) = tgid_tid();
    let (mut flags, run) = match state() {
        Some(s) => {
            let frag = if e.skb != 0 && s.frag_skb == e.skb {
                FLAG_FRAGMENT
            } else {
                0
            };
            if s.in_net_rx != 0 {
                (FLAG_NET_RX | frag, s.softirq_run)
            } else {
                (frag, 0)
            }
        }
        None => (0, 0),
    };
    if key.valid != 0 {
        flags |= FLAG_PACKET;
    }
    // A TCP or UDP packet's transmit that identified it says what it is.
    let (mut aux2, mut tcp_flags, mut tcp_seq) = (e.aux2, 0, [0; 4]);
    if flow
        && matches!(
            e.stage,
            Stage::DevQueueXmit | Stage::IpOutput | Stage::LoopbackXmit | Stage::DevXmit
        )
        && let Some(s) = state()
        && s.flow_skb == e.skb
    {
        aux2 = s.flow_aux2;
        tcp_flags = s.flow_hdr as u8;
        tcp_seq = ((s.flow_hdr >> 32) as u32).to_le_bytes();
    }
    let event = Event {
        ts_ns: e.ts,
        skb: e.skb,
        aux: e.aux,
        tid,
        tgid,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        cpu: unsafe { bpf_get_smp_processor_id() },
        len: e.len,
        softirq_run: run,
        aux2,
        stage: e.stage as u8,
        probe: e.probe as u8,
        flags,
        family: key.family,
        icmp_type: key.icmp_type,
        tcp_flags,
        icmp_id: key.icmp_id,
        icmp_seq: key.icmp_seq,
        tcp_seq,
        _pad1: [0; 2],
    };
    // Slots hold echoes: a flow packet's events go into the ring each.
    if config(&CONFIG.assemble) != 0 && !flow {
        deliver_later(event, e.probe as u8);
        return;
    }
    let wake = wake_flags(EVENT_SIZE as u64);
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        let n = count_lost(1);
        // Diagnostics only, and only at powers of two so a full ring
        // cannot flood the log ring too.
        if n != 0 && n & (n - 1) == 0 {
            warn!(ctx, "ring buffer full: {} events lost so far", n);
        }
        return;
    };
    entry.write(event);
    entry.submit(wake);
}

/// `emit` for a TCP or UDP packet's stage known only by its time, for a
/// program whose stack has no room for an `Event`: the packet's key as
/// one number (`flow::key_u64`), the event written in place in the ring.
/// A function of its own in the object, called with numbers only.
#[inline(never)]
pub(crate) fn emit_flow_at(key: u64, ts: u64, stage: u8, probe: u8) {
    if let Some(n) = SUBMITTED.get_ptr_mut(0) {
        unsafe { *n += 1 };
    }
    if config(&CONFIG.summary_only) != 0 {
        flow::aggregate(key, ts, stage, probe);
        return;
    }
    let (tgid, tid) = tgid_tid();
    let (flags, run) = match state() {
        Some(s) if s.in_net_rx != 0 => (FLAG_NET_RX, s.softirq_run),
        _ => (0, 0),
    };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let wake = wake_flags(EVENT_SIZE as u64);
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count_lost(1);
        return;
    };
    let e = entry.as_mut_ptr();
    unsafe {
        (*e).ts_ns = ts;
        (*e).skb = 0;
        (*e).aux = 0;
        (*e).tid = tid;
        (*e).tgid = tgid;
        (*e).comm = comm;
        (*e).cpu = bpf_get_smp_processor_id();
        (*e).len = 0;
        (*e).softirq_run = run;
        (*e).aux2 = 0;
        (*e).stage = stage;
        (*e).probe = probe;
        (*e).flags = flags | FLAG_PACKET;
        (*e).family = (key >> 32) as u8;
        (*e).icmp_type = (key >> 40) as u8;
        (*e).tcp_flags = 0;
        (*e).icmp_id = key as u16;
        (*e).icmp_seq = (key >> 16) as u16;
        (*e).tcp_seq = [0; 4];
        (*e)._pad1 = [0; 2];
    }
    entry.submit(wake);
}

/// An skb stage: emits if the skb is one of the traced echo packets and
/// returns its key.
#[inline(always)]
pub(crate) fn skb_event<C: EbpfContext>(
    ctx: &C,
    skb: u64,
    stage: Stage,
    probe: ProbeId,
) -> Option<PktKey> {
    skb_event_aux(ctx, skb, stage, probe, || 0)
}

/// `skb_event` with a stage-specific value, read only for tracked packets.
#[inline(always)]
pub(crate) fn skb_event_aux<C: EbpfContext>(
    ctx: &C,
    skb: u64,
    stage: Stage,
    probe: ProbeId,
    aux: impl FnOnce() -> u64,
) -> Option<PktKey> {
    let (key, len) = ours(skb, Sight::Way, || true, |k| is_ours(k, skb))?;
    emit(ctx, &key, at(stage, probe, skb, len, aux()));
    Some(key)
}

/// The start of a softirq run or a backlog poll, reported once it is known
/// to carry a tracked packet: at that packet's `netif_receive_skb`.
#[inline(always)]
pub(crate) fn emit_start<C: EbpfContext>(ctx: &C, key: &PktKey, ts: u64, stage: Stage, probe: u8) {
    let Some(probe) = ProbeId::from_u8(probe) else {
        return;
    };
    emit(
        ctx,
        key,
        Seen {
            ts,
            stage,
            probe,
            skb: 0,
            len: 0,
            aux: 0,
            aux2: 0,
        },
    );
}

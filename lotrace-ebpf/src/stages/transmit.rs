//! The transmit path: IP output, the device layer, where a traced
//! command's echo request starts being tracked, and the loopback driver.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::info;
use lotrace_common::{
    PktKey, ProbeId, Stage, TpField,
    event::{AF_INET, AF_INET6, IPPROTO_TCP, LO_NAME, PKT_TCP, is_echo_request, is_flow},
    follow::Sight,
};

use crate::kernel::Fields;
use crate::{
    emit::{emit, emit_flow_at},
    filter::{
        in_softirq, is_ours, is_target, learn_sock, skb_sock, sock_net, tgid_tid, track, track_key,
    },
    flow::{key_u64, last_numbered},
    kernel::{CONFIG, config, dev_name, field, now, sk_type},
    maps::{FLOW_SEND, state},
    packet::ours,
    seen::{at, at_time},
};

/// ip_output and ip6_output: with function probes, the first stage that
/// sees the packet (and reports a TCP segment's way to it: see
/// [`tcp_transmit_of`]).
#[inline(always)]
pub(crate) fn ip_output<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64) {
    if let Some((key, len)) = sent(ctx, skb, 1).0 {
        if key.icmp_type == PKT_TCP {
            tcp_transmit_of(&key, skb);
        }
        emit(ctx, &key, at(Stage::IpOutput, probe, skb, len, 0));
    }
}

/// `__tcp_transmit_skb` starts building a segment of `sk`: noted (see
/// `CpuState::tcp_tx_sk`). It runs for every TCP segment on the machine,
/// so it only notes.
#[inline(always)]
pub(crate) fn tcp_transmit_skb<C: EbpfContext>(_ctx: &C, probe: ProbeId, sk: u64) {
    let Some(st) = state() else { return };
    st.tcp_tx_sk = sk;
    st.tcp_tx_ts = now();
    st.tcp_tx_probe = probe as u8;
    st.ipq_ts = 0;
    st.ipq_skb = 0;
}

/// The socket's `queue_xmit` (`ip_queue_xmit`, `inet6_csk_xmit`) starts
/// on the segment `skb`: noted, with the segment's start if it is the
/// same socket's.
#[inline(always)]
pub(crate) fn ip_queue_xmit<C: EbpfContext>(_ctx: &C, probe: ProbeId, sk: u64, skb: u64) {
    let Some(st) = state() else { return };
    if st.tcp_tx_sk != sk {
        st.tcp_tx_sk = sk;
        st.tcp_tx_ts = 0;
    }
    st.ipq_ts = now();
    st.ipq_skb = skb;
    st.ipq_probe = probe as u8;
}

/// A TCP segment's stages before IP output, noted on its way here and
/// reported once IP output has numbered it: only if the skb IP output
/// was handed is the one `queue_xmit` noted, on this CPU (or thread), so
/// that a segment another transmit interrupted, or one whose thread
/// moved to another CPU on the way, has them missing, not another's.
/// Their events are written by `emit_flow_at`: an `Event` more on this
/// program's stack takes its call chain past the 512 bytes 5.10 allows.
#[inline(always)]
fn tcp_transmit_of(key: &PktKey, skb: u64) {
    let Some(st) = state() else { return };
    if st.ipq_skb != skb || skb == 0 {
        return;
    }
    let (tx_ts, tx_probe, ipq_ts, ipq_probe) =
        (st.tcp_tx_ts, st.tcp_tx_probe, st.ipq_ts, st.ipq_probe);
    st.ipq_skb = 0;
    st.tcp_tx_sk = 0;
    let k = key_u64(key);
    if tx_ts != 0 {
        emit_flow_at(k, tx_ts, Stage::TcpTransmitSkb as u8, tx_probe);
    }
    emit_flow_at(k, ipq_ts, Stage::IpQueueXmit as u8, ipq_probe);
}

/// The traced packet the transmit's entry sees (it is identified here,
/// see `lotrace_common::follow`), and what [`track_send`] found of its
/// socket. `entry` says which entry this is (`CpuState::tx_entry`): a
/// TCP or UDP packet keeps the number the earlier one gave it.
#[inline(always)]
fn sent<C: EbpfContext>(ctx: &C, skb: u64, entry: u8) -> (Option<(PktKey, u32)>, u32) {
    let mut sock_type = 0;
    if let Some(st) = state() {
        st.tx_entry = entry;
    }
    let found = ours(
        skb,
        Sight::Transmit,
        || true,
        |k| {
            sock_type = track_send(ctx, skb, k);
            is_ours(k, skb)
        },
    );
    if let Some(st) = state() {
        st.tx_entry = 0;
    }
    if let Some((key, _)) = &found
        && is_flow(key.icmp_type)
    {
        send_of(ctx, key);
    }
    (found, sock_type)
}

/// A TCP or UDP packet transmitted by a traced thread's send: the first
/// one carries the send's start (its system call's entry).
#[inline(always)]
fn send_of<C: EbpfContext>(ctx: &C, key: &PktKey) {
    if in_softirq() {
        return;
    }
    let Some(f) = FLOW_SEND.get_ptr_mut(&tgid_tid().1) else {
        return;
    };
    let f = unsafe { &mut *f };
    if f.key.valid != 0 {
        return;
    }
    f.key = *key;
    let Some(probe) = ProbeId::from_u8(f.probe) else {
        return;
    };
    emit(ctx, key, at_time(f.ts, Stage::Sendto, probe, f.len));
}

/// A packet built by a traced command's send (the first stage to see it,
/// in the sending thread): an echo request's id is tracked from here, and
/// its socket learnt. Returns the socket's type (0: not such a packet).
#[inline(always)]
fn track_send<C: EbpfContext>(ctx: &C, skb: u64, key: &PktKey) -> u32 {
    let mut sock_type = 0u32;
    if is_echo_request(key.family, key.icmp_type) {
        let (tgid, _) = tgid_tid();
        if !in_softirq() && is_target(tgid) {
            let sk = skb_sock(skb);
            if track(track_key(key), tgid, sk, sock_net(sk)) {
                info!(ctx, "tracking echo id {} of tgid {}", key.icmp_id, tgid);
            }
            // The reply is delivered to this socket, possibly before the
            // send returns: learn it now.
            if sk != 0 {
                learn_sock(sk);
                // Raw or datagram ICMP socket: the report says which.
                sock_type = sk_type(sk).unwrap_or(0) as u32;
            }
        }
    }
    sock_type
}

/// An skb entering the device layer: where, with tracepoints, a traced
/// command's echo request is first seen (see [`track_send`]).
#[inline(always)]
pub(crate) fn dev_queue_xmit<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64) {
    let (Some((key, len)), sock_type) = sent(ctx, skb, 2) else {
        return;
    };
    let mut e = at(Stage::DevQueueXmit, probe, skb, len, dev_name(skb));
    e.aux2 = sock_type;
    emit(ctx, &key, e);
}

#[inline(always)]
pub(crate) fn net_dev_queue(ctx: &impl Fields, probe: ProbeId, skbaddr: TpField) {
    if let Some(skb) = field::<u64>(ctx, skbaddr) {
        dev_queue_xmit(ctx, probe, skb);
    }
}

/// The driver's transmit starts, seen by a probe on `loopback_xmit`
/// itself (lo's driver).
#[inline(always)]
pub(crate) fn loopback_xmit<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64) {
    xmit_start(ctx, probe, skb, true);
}

/// The driver's transmit starts: remember the skb so that its end can be
/// matched by address (the driver may already have handed it on). Named
/// for the device: lo's is `loopback_xmit`, any other's `ndo_start_xmit`
/// (a device whose name cannot be read, too: that is always true).
#[inline(always)]
fn xmit_start<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64, lo_fn: bool) {
    // The driver's transmit may number a TCP or UDP packet (see
    // `flow::read`): a segment GSO cut from a larger one is first met here.
    if let Some(st) = state() {
        st.tx_entry = 3;
    }
    let mut found = ours(skb, Sight::Way, || true, |k| is_ours(k, skb));
    // A TCP or UDP skb found followed that the transmit's entry did not
    // just read is a new skb (a GSO segment) at an address an older packet
    // of the flow had, freed unseen: it is read as the new packet it is.
    if let Some((k, _)) = &found
        && is_flow(k.icmp_type)
        && state().is_some_and(|st| st.flow_skb != skb)
    {
        found = ours(skb, Sight::Transmit, || true, |k| is_ours(k, skb));
    }
    if let Some(st) = state() {
        st.tx_entry = 0;
    }
    let Some((key, len)) = found else {
        return;
    };
    let name = dev_name(skb);
    let stage = if lo_fn || name == LO_NAME {
        Stage::LoopbackXmit
    } else {
        Stage::DevXmit
    };
    // lo's transmit is reported by the function probe on loopback_xmit.
    if !lo_fn && stage == Stage::LoopbackXmit && config(&CONFIG.lo_xmit_fn) != 0 {
        return;
    }
    emit(ctx, &key, at(stage, probe, skb, len, name));
    if let Some(st) = state() {
        st.xmit_skb = skb;
        st.xmit = key;
        st.xmit_stage = stage as u8;
    }
}

/// The driver's transmit returns; `skb` is 0 when the probe cannot see it
/// (`loopback_xmit`'s return: only lo's transmit ends there).
#[inline(always)]
fn xmit_end<C: EbpfContext>(ctx: &C, skb: u64, probe: ProbeId, rc: i64) {
    let Some(st) = state() else { return };
    if st.xmit_skb == 0 || (skb != 0 && st.xmit_skb != skb) {
        return;
    }
    let lo = st.xmit_stage == Stage::LoopbackXmit as u8;
    if (skb == 0 && !lo) || (skb != 0 && lo && config(&CONFIG.lo_xmit_fn) != 0) {
        return;
    }
    let key = st.xmit;
    let skb = st.xmit_skb;
    st.xmit_skb = 0;
    let stage = if lo {
        Stage::LoopbackXmit
    } else {
        Stage::DevXmit
    };
    emit(ctx, &key, at(stage, probe, skb, 0, rc as u64));
}

#[inline(always)]
pub(crate) fn loopback_xmit_return<C: EbpfContext>(ctx: &C, probe: ProbeId, rc: i64) {
    xmit_end(ctx, 0, probe, rc);
}

#[inline(always)]
pub(crate) fn net_dev_start_xmit(ctx: &impl Fields, probe: ProbeId, skbaddr: TpField) {
    if let Some(skb) = field::<u64>(ctx, skbaddr) {
        xmit_start(ctx, probe, skb, false);
    }
}

#[inline(always)]
pub(crate) fn net_dev_xmit(ctx: &impl Fields, probe: ProbeId, skbaddr: TpField, rc: TpField) {
    let skb = field::<u64>(ctx, skbaddr).unwrap_or(0);
    if skb != 0 {
        let rc = field::<i32>(ctx, rc).unwrap_or(0);
        xmit_end(ctx, skb, probe, rc as i64);
    }
}

/// `tcp:tcp_retransmit_skb`: TCP sent a segment again (its timer, or
/// duplicate ACKs), once it has transmitted it (on kernels whose
/// tracepoint has `err`, also when that failed: then nothing was sent).
/// Reported under that transmit's packet: the one its flow's direction
/// numbered last. The tracepoint gives the connection's ports in host
/// order and its addresses; a dual-stack socket's IPv4 peer is an IPv6
/// address mapped from IPv4, its packets IPv4, as is an IPv4
/// connection's in the IPv6 fields.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn tcp_retransmit_skb(
    ctx: &impl Fields,
    probe: ProbeId,
    skb: TpField,
    sport: TpField,
    dport: TpField,
    family: TpField,
    saddr: TpField,
    daddr: TpField,
    saddr6: TpField,
    daddr6: TpField,
    err: TpField,
) {
    if field::<i32>(ctx, err).is_some_and(|e| e != 0) {
        return;
    }
    let (Some(sport), Some(dport)) = (field::<u16>(ctx, sport), field::<u16>(ctx, dport)) else {
        return;
    };
    // Without `family` (older kernels), the IPv6 fields: an IPv4
    // connection's addresses are there mapped from IPv4.
    let family = field::<u16>(ctx, family).unwrap_or(AF_INET6 as u16);
    let Some(st) = state() else { return };
    let t = &mut st.tuple;
    t.proto = IPPROTO_TCP;
    t.sport = sport.to_be_bytes();
    t.dport = dport.to_be_bytes();
    t._pad = [0; 2];
    t.saddr = [0; 16];
    t.daddr = [0; 16];
    let v4 = |s: Option<[u8; 4]>, to: &mut [u8; 16]| {
        if let Some(a) = s {
            to[..4].copy_from_slice(&a);
        }
    };
    let mapped = |a: &[u8; 16]| a[..10] == [0u8; 10] && a[10] == 0xff && a[11] == 0xff;
    if family == AF_INET6 as u16 {
        let (Some(s6), Some(d6)) = (
            field::<[u8; 16]>(ctx, saddr6),
            field::<[u8; 16]>(ctx, daddr6),
        ) else {
            return;
        };
        if mapped(&s6) && mapped(&d6) {
            t.family = AF_INET;
            t.saddr[..4].copy_from_slice(&s6[12..]);
            t.daddr[..4].copy_from_slice(&d6[12..]);
        } else {
            t.family = AF_INET6;
            t.saddr = s6;
            t.daddr = d6;
        }
    } else {
        t.family = AF_INET;
        v4(field::<[u8; 4]>(ctx, saddr), &mut t.saddr);
        v4(field::<[u8; 4]>(ctx, daddr), &mut t.daddr);
    }
    let Some(key) = last_numbered() else { return };
    let skb = field::<u64>(ctx, skb).unwrap_or(0);
    emit(ctx, &key, at(Stage::TcpRetransmit, probe, skb, 0, 0));
}

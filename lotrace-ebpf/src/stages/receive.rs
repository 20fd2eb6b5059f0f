//! The receive path: netif_rx puts the skb on the backlog, the softirq
//! hands it to netif_receive_skb, IP and ICMP take it, and the kernel
//! answers the echo request (the reply leg begins there).

use aya_ebpf::EbpfContext;
use lotrace_common::{
    ProbeId, Stage, TpField,
    event::{is_echo_request, is_flow},
    follow::Sight,
};

use crate::kernel::Fields;
use crate::{
    emit::{emit, emit_start, skb_event},
    filter::is_ours,
    kernel::{CONFIG, config, field},
    maps::state,
    packet::{ours, reply_of},
    seen::at,
};

/// The skb goes on the backlog queue; a NET_RX raise until netif_rx
/// returns is this packet's.
#[inline(always)]
pub(crate) fn netif_rx<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64) {
    if let Some(key) = skb_event(ctx, skb, Stage::NetifRx, probe)
        && let Some(st) = state()
    {
        st.in_tracked_netif_rx = 1;
        st.netif_rx = key;
    }
}

#[inline(always)]
pub(crate) fn netif_rx_entry(ctx: &impl Fields, probe: ProbeId, skbaddr: TpField) {
    if let Some(skb) = field::<u64>(ctx, skbaddr) {
        netif_rx(ctx, probe, skb);
    }
}

#[inline(always)]
pub(crate) fn netif_rx_exit(_ctx: &impl Fields, _probe: ProbeId, _ret: TpField) {
    if let Some(st) = state() {
        st.in_tracked_netif_rx = 0;
    }
}

#[inline(always)]
pub(crate) fn netif_receive_skb<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64) {
    let Some(st) = state() else { return };
    // Checked here, whatever this run received before (see `packet::alive`).
    st.rx_skb = 0;
    let Some((mut key, len)) = ours(skb, Sight::Way, || true, |k| is_ours(k, skb)) else {
        // Any other packet ends the attribution to the previous echo.
        st.rx.valid = 0;
        return;
    };
    if is_flow(key.icmp_type) {
        st.rx_skb = skb;
    }
    key.delivered = 0;
    st.rx = key;
    st.delivered_sk = 0;
    let mut run_began = 0;
    if st.in_net_rx != 0 {
        if st.entry_emitted == 0 {
            st.entry_emitted = 1;
            let fn_probe = config(&CONFIG.net_rx_probe);
            if fn_probe == 0 {
                emit_start(
                    ctx,
                    &key,
                    st.softirq_entry_ts,
                    Stage::NetRxAction,
                    ProbeId::SoftirqEntry as u8,
                );
            } else if st.fn_entry_ts != 0 {
                emit_start(ctx, &key, st.fn_entry_ts, Stage::NetRxAction, fn_probe);
            }
        }
        run_began = if config(&CONFIG.net_rx_probe) == 0 {
            st.softirq_entry_ts
        } else {
            st.fn_entry_ts
        };
        let backlog_probe = config(&CONFIG.backlog_probe);
        if backlog_probe != 0 && st.backlog_emitted == 0 && st.backlog_entry_ts != 0 {
            st.backlog_emitted = 1;
            emit_start(
                ctx,
                &key,
                st.backlog_entry_ts,
                Stage::ProcessBacklog,
                backlog_probe,
            );
        }
        st.last = key;
        st.poll_pending = 1;
    }
    emit(
        ctx,
        &key,
        at(Stage::NetifReceiveSkb, probe, skb, len, run_began),
    );
}

#[inline(always)]
pub(crate) fn netif_receive_skb_tp(ctx: &impl Fields, probe: ProbeId, skbaddr: TpField) {
    if let Some(skb) = field::<u64>(ctx, skbaddr) {
        netif_receive_skb(ctx, probe, skb);
    }
}

/// ip_rcv and ipv6_rcv.
#[inline(always)]
pub(crate) fn ip_rcv<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64) {
    let _ = skb_event(ctx, skb, Stage::IpRcv, probe);
}

/// tcp_v4_rcv and tcp_v6_rcv (TCP segments only).
#[inline(always)]
pub(crate) fn tcp_rcv<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64) {
    let _ = skb_event(ctx, skb, Stage::TcpRcv, probe);
}

/// tcp_rcv_established.
#[inline(always)]
pub(crate) fn tcp_rcv_established<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64) {
    let _ = skb_event(ctx, skb, Stage::TcpRcvEstablished, probe);
}

/// tcp:tcp_probe, which fires at the top of tcp_rcv_established.
#[inline(always)]
pub(crate) fn tcp_probe(ctx: &impl Fields, probe: ProbeId, skbaddr: TpField) {
    if let Some(skb) = field::<u64>(ctx, skbaddr) {
        tcp_rcv_established(ctx, probe, skb);
    }
}

/// tcp_data_queue (TCP's slow path).
#[inline(always)]
pub(crate) fn tcp_data_queue<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64) {
    let _ = skb_event(ctx, skb, Stage::TcpDataQueue, probe);
}

/// udp_rcv and udpv6_rcv (UDP datagrams only).
#[inline(always)]
pub(crate) fn udp_rcv<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64) {
    let _ = skb_event(ctx, skb, Stage::UdpRcv, probe);
}

/// __udp_enqueue_schedule_skb.
#[inline(always)]
pub(crate) fn udp_enqueue<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64) {
    let _ = skb_event(ctx, skb, Stage::UdpEnqueue, probe);
}

/// icmp_rcv and icmpv6_rcv.
#[inline(always)]
pub(crate) fn icmp_rcv<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64) {
    let _ = skb_event(ctx, skb, Stage::IcmpRcv, probe);
}

/// The kernel answers a tracked echo request (icmp_echo, icmp_reply,
/// icmpv6_echo_reply): the reply leg begins.
#[inline(always)]
pub(crate) fn icmp_echo<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64) {
    let Some((key, len)) = ours(skb, Sight::Way, || true, |k| is_ours(k, skb)) else {
        return;
    };
    if !is_echo_request(key.family, key.icmp_type) {
        return;
    }
    emit(
        ctx,
        &reply_of(&key),
        at(Stage::IcmpReply, probe, skb, len, 0),
    );
}

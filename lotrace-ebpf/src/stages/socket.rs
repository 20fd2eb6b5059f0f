//! Delivery to ping's socket and ping's wake-up. Neither sees an skb: both
//! are attributed to the echo the softirq is handling on this CPU.

use aya_ebpf::EbpfContext;
use lotrace_common::{
    PktKey, ProbeId, Stage, TpField,
    event::{PKT_UDP, is_flow},
};

use crate::kernel::Fields;
use crate::{
    emit::emit,
    filter::{echo_socket_is, is_target},
    kernel::{CONFIG, config, field, read_kernel},
    maps::{QUEUED, SOCKS, state},
    packet::follow_copy,
    seen::at,
};

/// Delivery to a socket (`raw_rcv`, `rawv6_rcv`, the `sk_data_ready`
/// tracepoint): only the traced command's sockets count (raw sockets all
/// get a copy of every ICMP packet). A function probe also sees the skb
/// queued, a raw socket's clone: it is followed to ping's receive.
#[inline(always)]
pub(crate) fn deliver<C: EbpfContext>(ctx: &C, probe: ProbeId, sk: u64, skb: u64) {
    let Some(st) = state() else { return };
    if sk == 0 {
        return;
    }
    if st.rx.valid == 0 || !is_flow(st.rx.icmp_type) {
        // Something else queued here: the socket's next read may not be
        // the traced datagram that headed its queue (this may be a new
        // socket at a freed one's address).
        forget_queued(sk);
    }
    if st.rx.valid == 0 {
        return;
    }
    // A TCP or UDP packet is queued on its socket, whoever's, inside the
    // NET_RX run that received it (outside it, a data-ready on this CPU
    // is some other socket's).
    if is_flow(st.rx.icmp_type) {
        if st.in_net_rx == 0 {
            return;
        }
        st.rx.delivered = 1;
        let key = st.rx;
        if key.icmp_type == PKT_UDP {
            queued(sk, &key);
        }
        emit(ctx, &key, at(Stage::SockDeliver, probe, 0, 0, sk));
        return;
    }
    if unsafe { SOCKS.get(&sk) }.is_none() {
        return;
    }
    // Another traced socket's copy (a second ping's raw socket): not this
    // echo's delivery, nor is the wake-up it causes.
    if !echo_socket_is(&st.rx, sk) {
        st.rx.delivered = 0;
        return;
    }
    st.rx.delivered = 1;
    st.delivered_sk = sk;
    let key = st.rx;
    if skb != 0 {
        follow_copy(skb, &key);
    }
    emit(ctx, &key, at(Stage::SockDeliver, probe, 0, 0, sk));
}

/// A traced UDP datagram queued on `sk`: the socket's next read takes it
/// if it is alone in the socket's queues (the queue its reader takes
/// from first, and the one the softirq fills).
#[inline(always)]
fn queued(sk: u64, key: &PktKey) {
    let (rq, readq) = (
        config(&CONFIG.sk_rcvq_len) as u64,
        config(&CONFIG.udp_readq_len) as u64,
    );
    if rq == 0 || readq == 0 {
        return;
    }
    let alone = read_kernel::<u32>(sk + rq) == Some(1) && read_kernel::<u32>(sk + readq) == Some(0);
    if alone {
        let _ = QUEUED.insert(&sk, key, 0);
    }
}

#[inline(always)]
fn forget_queued(sk: u64) {
    if unsafe { QUEUED.get(&sk) }.is_some() {
        let _ = QUEUED.remove(&sk);
    }
}

/// A socket's data-ready call (`sock_def_readable`), the end of every path
/// to its queue: `raw_rcv`'s and `ping_rcv`'s.
#[inline(always)]
pub(crate) fn data_ready<C: EbpfContext>(ctx: &C, probe: ProbeId, sk: u64) {
    let Some(st) = state() else { return };
    if st.rx.valid == 0 {
        return;
    }
    if st.delivered_sk == sk {
        st.delivered_sk = 0;
        return;
    }
    deliver(ctx, probe, sk, 0);
    st.delivered_sk = 0;
}

#[inline(always)]
pub(crate) fn sk_data_ready(ctx: &impl Fields, probe: ProbeId, skaddr: TpField) {
    if let Some(sk) = field::<u64>(ctx, skaddr) {
        deliver(ctx, probe, sk, 0);
    }
}

#[inline(always)]
pub(crate) fn sched_wakeup(ctx: &impl Fields, probe: ProbeId, pid: TpField) {
    let Some(st) = state() else { return };
    if st.rx.valid == 0 || st.rx.delivered == 0 {
        return;
    }
    let Some(pid) = field::<i32>(ctx, pid) else {
        return;
    };
    if !is_target(pid as u32) {
        return;
    }
    st.rx.delivered = 0;
    let key = st.rx;
    emit(ctx, &key, at(Stage::Wakeup, probe, 0, 0, pid as u64));
}

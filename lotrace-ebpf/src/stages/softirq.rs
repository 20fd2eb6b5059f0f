//! The NET_RX softirq: raised by netif_rx, run inline or by ksoftirqd, and
//! the backlog poll inside it. A run is reported only once it meets one of
//! the traced packets (see `receive::netif_receive_skb`).

use aya_ebpf::EbpfContext;
use lotrace_common::{ProbeId, Stage, TpField, event::NET_RX_SOFTIRQ};

use crate::kernel::Fields;
use crate::{
    emit::emit,
    kernel::{CONFIG, config, field, now},
    maps::{next_run, state},
    seen::{Seen, at},
};

#[inline(always)]
pub(crate) fn raise(ctx: &impl Fields, probe: ProbeId, vec: TpField) {
    if field::<u32>(ctx, vec) != Some(NET_RX_SOFTIRQ) {
        return;
    }
    let Some(st) = state() else { return };
    if st.in_tracked_netif_rx == 0 {
        return;
    }
    let key = st.netif_rx;
    emit(ctx, &key, at(Stage::SoftirqRaise, probe, 0, 0, 0));
}

#[inline(always)]
pub(crate) fn entry(ctx: &impl Fields, _probe: ProbeId, vec: TpField) {
    if field::<u32>(ctx, vec) != Some(NET_RX_SOFTIRQ) {
        return;
    }
    let run = next_run();
    if let Some(st) = state() {
        // Whether this run concerns us is known only once it meets one of
        // our packets: the start is remembered and reported then.
        st.in_net_rx = 1;
        st.softirq_entry_ts = now();
        st.softirq_run = run;
        st.entry_emitted = 0;
        st.rx.valid = 0;
        st.last.valid = 0;
        st.poll_pending = 0;
    }
}

/// The end of a NET_RX run that carried tracked packets, reported under
/// the last of them with how long the run took.
#[inline(always)]
fn net_rx_end<C: EbpfContext>(ctx: &C, probe: ProbeId, started: u64) {
    let Some(st) = state() else { return };
    if st.last.valid == 0 {
        return;
    }
    let key = st.last;
    let t = now();
    emit(
        ctx,
        &key,
        Seen {
            ts: t,
            stage: Stage::NetRxAction,
            probe,
            skb: 0,
            len: 0,
            aux: t.saturating_sub(started),
            aux2: 0,
        },
    );
}

#[inline(always)]
pub(crate) fn exit(ctx: &impl Fields, probe: ProbeId, vec: TpField) {
    if field::<u32>(ctx, vec) != Some(NET_RX_SOFTIRQ) {
        return;
    }
    let Some(st) = state() else { return };
    if config(&CONFIG.net_rx_probe) == 0 {
        net_rx_end(ctx, probe, st.softirq_entry_ts);
    }
    st.in_net_rx = 0;
    st.rx_skb = 0;
    st.softirq_entry_ts = 0;
    st.rx.valid = 0;
    st.last.valid = 0;
}

#[inline(always)]
pub(crate) fn net_rx_action<C: EbpfContext>(_ctx: &C, _probe: ProbeId) {
    if let Some(st) = state() {
        st.fn_entry_ts = now();
    }
}

#[inline(always)]
pub(crate) fn net_rx_action_return<C: EbpfContext>(ctx: &C, probe: ProbeId, _ret: i64) {
    if let Some(st) = state() {
        net_rx_end(ctx, probe, st.fn_entry_ts);
        st.fn_entry_ts = 0;
    }
}

#[inline(always)]
pub(crate) fn process_backlog<C: EbpfContext>(_ctx: &C, _probe: ProbeId) {
    if let Some(st) = state() {
        st.backlog_entry_ts = now();
        st.backlog_emitted = 0;
    }
}

/// A backlog poll ends: reported when it handled tracked packets.
#[inline(always)]
pub(crate) fn process_backlog_return<C: EbpfContext>(ctx: &C, probe: ProbeId, work: i64) {
    let Some(st) = state() else { return };
    if st.in_net_rx == 0 || st.poll_pending == 0 || st.last.valid == 0 {
        return;
    }
    st.poll_pending = 0;
    let key = st.last;
    emit(
        ctx,
        &key,
        at(Stage::ProcessBacklog, probe, 0, 0, work.max(0) as u64),
    );
}

#[inline(always)]
pub(crate) fn napi_poll(ctx: &impl Fields, probe: ProbeId, work: TpField) {
    let work = field::<i32>(ctx, work).unwrap_or(0);
    process_backlog_return(ctx, probe, work as i64);
}

//! The route lookup. It sees no skb: it is attributed to the send it is
//! made for, or inside NET_RX to the reply of the request being handled.

use aya_ebpf::EbpfContext;
use lotrace_common::{ProbeId, Stage, TpField, event::is_echo_request};

use crate::kernel::Fields;
use crate::{
    emit::emit,
    filter::{get_ctx, is_target, tgid_tid},
    kernel::{field, field_name},
    maps::{SEND_CTX, state},
    packet::reply_of,
    seen::at,
};

#[inline(always)]
fn route<C: EbpfContext>(ctx: &C, probe: ProbeId, tb: u32, err: i32, dev: [u8; 16]) {
    let Some(st) = state() else { return };
    let key = if st.in_net_rx != 0 {
        // Inside NET_RX: a lookup made while handling one of our requests
        // routes its reply (icmp_reply looks the way back up).
        if st.rx.valid == 0 || !is_echo_request(st.rx.family, st.rx.icmp_type) {
            return;
        }
        reply_of(&st.rx)
    } else {
        let (tgid, tid) = tgid_tid();
        if !is_target(tgid) {
            return;
        }
        match get_ctx(&SEND_CTX, tid) {
            Some(k) => k,
            None => return,
        }
    };
    let (lo, hi) = dev.split_at(8);
    let mut e = at(
        Stage::Route,
        probe,
        u64::from_le_bytes(lo.try_into().unwrap_or([0; 8])),
        err as u32,
        u64::from_le_bytes(hi.try_into().unwrap_or([0; 8])),
    );
    e.aux2 = tb;
    emit(ctx, &key, e);
}

/// fib:fib_table_lookup and fib6:fib6_table_lookup.
#[inline(always)]
pub(crate) fn fib_table_lookup(
    ctx: &impl Fields,
    probe: ProbeId,
    tb_id: TpField,
    err: TpField,
    name: TpField,
) {
    let tb = field::<u32>(ctx, tb_id).unwrap_or(0);
    let err = field::<i32>(ctx, err).unwrap_or(0);
    let dev = field_name(ctx, name).unwrap_or([0; 16]);
    route(ctx, probe, tb, err, dev);
}

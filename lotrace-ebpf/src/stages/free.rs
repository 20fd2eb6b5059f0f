//! The skb's end: freed after use (consume_skb) or dropped (kfree_skb,
//! with the kernel's reason).

use lotrace_common::{PktKey, ProbeId, Stage, TpField, catalog::NO_DROP_REASON, follow::Sight};

use crate::kernel::Fields;
use crate::{
    emit::emit,
    filter::{echo_socket_is, in_softirq, is_ours, is_target, skb_sock, tgid_tid},
    kernel::field,
    packet::ours,
    seen::at,
};

/// The traced packet an skb freed was, if any. A followed skb is, where
/// ever it is freed. Raw ICMP sockets each get a clone of every echo
/// packet, and a ping frees its clones in its own system calls: in task
/// context only the traced processes' frees are read, and only a clone
/// of the socket the echo was sent on is the echo's (another traced
/// ping's is not).
#[inline(always)]
fn freed(skb: u64) -> Option<(PktKey, u32)> {
    let softirq = in_softirq();
    ours(
        skb,
        Sight::Free,
        || softirq || is_target(tgid_tid().0),
        |k| is_ours(k, skb) && (softirq || echo_socket_is(k, skb_sock(skb))),
    )
}

#[inline(always)]
pub(crate) fn consume_skb(ctx: &impl Fields, probe: ProbeId, skbaddr: TpField) {
    if let Some(skb) = field::<u64>(ctx, skbaddr)
        && let Some((key, len)) = freed(skb)
    {
        emit(ctx, &key, at(Stage::Free, probe, skb, len, 0));
    }
}

#[inline(always)]
pub(crate) fn kfree_skb(ctx: &impl Fields, probe: ProbeId, skbaddr: TpField, reason: TpField) {
    let Some(skb) = field::<u64>(ctx, skbaddr) else {
        return;
    };
    let Some((key, len)) = freed(skb) else {
        return;
    };
    let reason = field::<u32>(ctx, reason).map_or(NO_DROP_REASON, u64::from);
    emit(ctx, &key, at(Stage::Drop, probe, skb, len, reason));
}

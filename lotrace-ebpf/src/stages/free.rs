//! The skb's end: freed after use (consume_skb) or dropped (kfree_skb,
//! with the kernel's reason).

use lotrace_common::{ProbeId, Stage, TpField, catalog::NO_DROP_REASON};

use crate::kernel::Fields;
use crate::{
    emit::emit,
    filter::{in_softirq, is_ours, is_target, tgid_tid},
    kernel::field,
    packet::identify,
    seen::at,
};

/// Raw ICMP sockets each get a clone of every echo packet, and another
/// ping frees its clones in its own system calls: in task context only the
/// traced processes' frees belong to a journey.
#[inline(always)]
fn free_is_ours() -> bool {
    in_softirq() || is_target(tgid_tid().0)
}

#[inline(always)]
pub(crate) fn consume_skb(ctx: &impl Fields, probe: ProbeId, skbaddr: TpField) {
    if free_is_ours()
        && let Some(skb) = field::<u64>(ctx, skbaddr)
        && let Some((key, len)) = identify(skb, true)
        && is_ours(&key, skb)
    {
        emit(ctx, &key, at(Stage::Free, probe, skb, len, 0));
    }
}

#[inline(always)]
pub(crate) fn kfree_skb(ctx: &impl Fields, probe: ProbeId, skbaddr: TpField, reason: TpField) {
    if !free_is_ours() {
        return;
    }
    let Some(skb) = field::<u64>(ctx, skbaddr) else {
        return;
    };
    let Some((key, len)) = identify(skb, true) else {
        return;
    };
    if !is_ours(&key, skb) {
        return;
    }
    let reason = field::<u32>(ctx, reason).map_or(NO_DROP_REASON, u64::from);
    emit(ctx, &key, at(Stage::Drop, probe, skb, len, reason));
}

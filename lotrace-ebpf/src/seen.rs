//! What a stage saw of one of the traced packets: the record `emit`
//! streams as an event or `aggregate` folds into the summary.

use lotrace_common::{ProbeId, Stage};

use crate::kernel::now;

/// One observation of a stage, before the task and CPU are added.
pub(crate) struct Seen {
    pub(crate) ts: u64,
    pub(crate) stage: Stage,
    pub(crate) probe: ProbeId,
    pub(crate) skb: u64,
    pub(crate) len: u32,
    pub(crate) aux: u64,
    pub(crate) aux2: u32,
}

/// An observation now.
#[inline(always)]
pub(crate) fn at(stage: Stage, probe: ProbeId, skb: u64, len: u32, aux: u64) -> Seen {
    Seen {
        ts: now(),
        stage,
        probe,
        skb,
        len,
        aux,
        aux2: 0,
    }
}

/// An observation made earlier, at `ts`, reported once its packet is
/// known (a send's start, at its first packet's transmit).
#[inline(always)]
pub(crate) fn at_time(ts: u64, stage: Stage, probe: ProbeId, len: u32) -> Seen {
    Seen {
        ts,
        stage,
        probe,
        skb: 0,
        len,
        aux: 0,
        aux2: 0,
    }
}

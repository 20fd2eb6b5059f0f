//! `--summary-only`: instead of streaming an event, a stage updates the
//! per-stage statistics user space would have built from the journeys. The
//! journey's meaning (`lotrace_common::journey`) says what the observation
//! changes; this applies it to the maps.

use aya_ebpf::helpers::bpf_get_current_comm;
use lotrace_common::{
    PktKey, Stage, agg,
    event::{AF_INET6, is_echo_reply, is_echo_request},
    journey::{Masks, Obs, Ran, Rules, Sink},
};

use crate::{
    filter::in_softirq,
    kernel::{CONFIG, config},
    maps::{AGG_COUNT, AGG_ROWS, ECHOES},
    seen::Seen,
};

/// The aggregation maps, as the journey's meaning updates them.
struct Maps;

impl Sink for Maps {
    #[inline(always)]
    fn record(&mut self, row: usize, v: u64, since_send: i64) {
        if let Some(r) = AGG_ROWS.get_ptr_mut(row as u32) {
            unsafe { (*r).record(v, since_send) };
        }
    }

    #[inline(always)]
    fn add(&mut self, counter: u32, n: u64) {
        // An outcome a later event overruled subtracts: this CPU's slot
        // may wrap, the sum over CPUs does not.
        if let Some(c) = AGG_COUNT.get_ptr_mut(counter) {
            unsafe { *c = (*c).wrapping_add(n) };
        }
    }
}

#[inline(never)]
pub(crate) fn aggregate(key: &PktKey, e: &Seen) {
    let reply = is_echo_reply(key.family, key.icmp_type);
    if key.valid == 0 || !(reply || is_echo_request(key.family, key.icmp_type)) {
        return;
    }
    let ipv6 = key.family == AF_INET6;
    let Some(echo) = ECHOES.get_ptr_mut(agg::echo_slot(ipv6, key.icmp_seq)) else {
        return;
    };
    let echo = unsafe { &mut *echo };
    let p = e.probe as u32;
    let rets = config(&CONFIG.ret_probes);
    let word = if p >= 64 { rets[1] } else { rets[0] };
    let stage = e.stage as u8;
    // Only a receive's context matters: the command name is read there.
    let ran = if stage == Stage::NetifReceiveSkb as u8 {
        Ran::of(in_softirq(), &bpf_get_current_comm().unwrap_or([0; 16]))
    } else {
        Ran::Task
    };
    let obs = Obs::of_fields(
        reply,
        stage,
        (word >> (p & 63)) & 1 != 0,
        e.ts,
        e.len,
        e.aux2,
        e.skb,
        ran,
    );
    let rules = Rules {
        close_stage: config(&CONFIG.close_stage),
        expect: Masks {
            leg: config(&CONFIG.expect_leg),
            any: config(&CONFIG.expect_any),
        },
    };
    echo.observe(&obs, ipv6, &rules).apply(&mut Maps);
}

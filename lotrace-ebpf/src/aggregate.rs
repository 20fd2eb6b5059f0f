//! `--summary-only`: instead of streaming an event, a stage updates the
//! per-stage statistics user space would have built from the journeys. The
//! journey's meaning (`lotrace_common::journey`) says what the observation
//! changes; this applies it to the maps.

use aya_ebpf::helpers::bpf_get_current_comm;
use lotrace_common::{
    PktKey, Stage,
    agg::counters,
    assemble::{Fits, slot_index},
    event::{AF_INET6, is_echo_reply, is_echo_request},
    journey::{Masks, Obs, Ran, Rules, Sink, starts_rtt},
};

use crate::{
    assemble::{claim, fits_now},
    filter::{in_softirq, tgid_tid},
    kernel::{CONFIG, config},
    maps::{AGG_COUNT, AGG_ROWS, JOURNEYS, PENDING, Pending, count_lost},
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

/// Hands an observation to [`aggregate`]: its stage and probe as
/// arguments, the packet's fields through the per-CPU `PENDING` slot. The
/// verifier checks `aggregate` once per distinct state it is called in.
/// Values read back from a map are just numbers to it, so the many paths
/// that lead here (each family, fragment or not, each way a header was
/// read) meet it in one state; passed on the stack, each kept its own
/// constants, and the largest program went past the verifier's million
/// instructions on 6.1. The stage and probe stay constants: with them
/// known, the verifier skips every other stage's branches.
#[inline(always)]
pub(crate) fn aggregate_later(key: &PktKey, e: &Seen) {
    let Some(p) = PENDING.get_ptr_mut(0) else {
        return;
    };
    unsafe {
        *p = Pending {
            key: *key,
            ts: e.ts,
            skb: e.skb,
            len: e.len,
            aux2: e.aux2,
            tid: tgid_tid().1,
            _pad: 0,
        }
    };
    aggregate(e.ts, e.stage as u8, e.probe as u8);
}

#[inline(never)]
fn aggregate(at: u64, stage: u8, probe: u8) {
    let Some(p) = PENDING.get_ptr(0) else {
        return;
    };
    // Another program may have run on this CPU in between and left its own
    // observation here (see `assemble::deliver`): this one is lost, and
    // counted so.
    if unsafe { (*p).ts } != at {
        count_lost(1);
        return;
    }
    let Pending {
        key,
        ts,
        skb,
        len,
        aux2,
        tid,
        ..
    } = unsafe { *p };
    let reply = is_echo_reply(key.family, key.icmp_type);
    if key.valid == 0 || !(reply || is_echo_request(key.family, key.icmp_type)) {
        return;
    }
    let ipv6 = key.family == AF_INET6;
    // The echo's slot, the one a streamed trace assembles it in (see
    // `lotrace_common::assemble`): the send opens it, and an event belongs
    // to the echo it holds by the streamed slots' rule; an event of
    // another echo is counted, not mixed in.
    let Some(slot) = JOURNEYS.get_ptr_mut(slot_index(key.family, key.icmp_seq)) else {
        return;
    };
    let slot = unsafe { &mut *slot };
    // The send takes the slot over even from another thread's echo still
    // under way (what is left of that one is then counted, below): unlike
    // a streamed slot (`assemble::may_claim`), no event of it is lost. Of
    // two sends claiming it at once, one does, or neither (`claim`).
    if starts_rtt(reply, stage) {
        claim(slot, &key, tid, ts, |_| true);
    }
    let net_rx = in_softirq();
    match fits_now(slot, &key, reply, tid, net_rx) {
        Fits::No => {
            Maps.add(counters::UNASSIGNED, 1);
            return;
        }
        Fits::PacketId => slot.head.packet_id = key.icmp_id,
        Fits::Yes => {}
    }
    let echo = &mut slot.echo;
    let p = probe as u32;
    // One word read, not the array copied onto the stack.
    let word = config(&CONFIG.ret_probes[(p >> 6) as usize & 3]);
    // Only a receive's context matters: the command name is read there.
    let ran = if stage == Stage::NetifReceiveSkb as u8 {
        Ran::of(net_rx, &bpf_get_current_comm().unwrap_or([0; 16]))
    } else {
        Ran::Task
    };
    let obs = Obs::of_fields(
        reply,
        stage,
        (word >> (p & 63)) & 1 != 0,
        ts,
        len,
        aux2,
        skb,
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

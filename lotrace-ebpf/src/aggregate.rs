//! `--summary-only`: instead of streaming an event, a stage updates the
//! per-stage statistics user space would have built from the journeys.

use aya_ebpf::helpers::bpf_get_current_comm;
use lotrace_common::{
    PktKey, Stage,
    agg::{self, Echo},
    event::{AF_INET6, SOCK_DGRAM, SOCK_RAW, is_echo_reply, is_echo_request},
};

use crate::{
    filter::in_softirq,
    kernel::{CONFIG, config},
    maps::{AGG_COUNT, AGG_ROWS, ECHOES},
    seen::Seen,
};

#[inline(always)]
fn bump(counter: u32) {
    if let Some(n) = AGG_COUNT.get_ptr_mut(counter) {
        unsafe { *n += 1 };
    }
}

/// Adds one value to an aggregation row.
#[inline(always)]
fn agg_record(row: usize, v: u64, t: i64) {
    if let Some(r) = AGG_ROWS.get_ptr_mut(row as u32) {
        unsafe { (*r).record(v, t) };
    }
}

/// `--summary-only`: what `emit` does instead of writing an event. Keeps
/// the same per-stage statistics user space builds from journeys: the time
/// since the echo's previous stage, per (leg, stage, return), and how the
/// echo ended.
#[inline(never)]
pub(crate) fn aggregate(key: &PktKey, e: &Seen) {
    let (stage, probe, ts, len, aux2) = (e.stage, e.probe, e.ts, e.len, e.aux2);
    let reply = is_echo_reply(key.family, key.icmp_type);
    if key.valid == 0 || !(reply || is_echo_request(key.family, key.icmp_type)) {
        return;
    }
    let ipv6 = key.family == AF_INET6;
    let Some(echo) = ECHOES.get_ptr_mut(agg::echo_slot(ipv6, key.icmp_seq)) else {
        return;
    };
    let echo = unsafe { &mut *echo };
    let stage_n = stage as u8;
    // A send starts the echo afresh: sequences wrap under a long flood.
    let fresh = !reply && stage_n == Stage::Sendto as u8;
    if fresh || echo.first_ts == 0 {
        *echo = Echo {
            first_ts: ts,
            send_ts: if fresh { ts } else { 0 },
            last_ts: ts,
            seen: 0,
            flags: 0,
            _pad: 0,
        };
        bump(agg::counters::OPENED);
        bump(if ipv6 {
            agg::counters::IPV6
        } else {
            agg::counters::IPV4
        });
    }
    let delta = ts.saturating_sub(echo.last_ts);
    if ts > echo.last_ts {
        echo.last_ts = ts;
    }
    let t0 = if echo.send_ts != 0 {
        echo.send_ts
    } else {
        echo.first_ts
    };
    let p = probe as u32;
    let rets = config(&CONFIG.ret_probes);
    let word = if p >= 64 { rets[1] } else { rets[0] };
    let at_return = (word >> (p & 63)) & 1 != 0;
    agg_record(
        agg::row(reply, stage_n, at_return),
        delta,
        ts.wrapping_sub(t0) as i64,
    );
    echo.seen |= agg::seen_bit(reply, stage_n);

    if reply
        && stage_n == Stage::NetifRx as u8
        && echo.send_ts != 0
        && echo.flags & agg::ECHO_RTT == 0
    {
        echo.flags |= agg::ECHO_RTT;
        agg_record(agg::RTT_ROW, ts.saturating_sub(echo.send_ts), 0);
    }
    if !reply
        && stage_n == Stage::DevQueueXmit as u8
        && aux2 != 0
        && echo.flags & agg::ECHO_SOCK == 0
    {
        echo.flags |= agg::ECHO_SOCK;
        match aux2 {
            SOCK_RAW => bump(agg::counters::SOCK_RAW),
            SOCK_DGRAM => bump(agg::counters::SOCK_DGRAM),
            _ => {}
        }
    }
    let si = agg::ECHO_SOFTIRQ << reply as u32;
    if stage_n == Stage::NetifReceiveSkb as u8 && echo.flags & si == 0 && in_softirq() {
        echo.flags |= si;
        let comm = bpf_get_current_comm().unwrap_or([0; 16]);
        bump(if comm.starts_with(b"ksoftirqd/") {
            agg::counters::SOFTIRQ_KSOFTIRQD
        } else {
            agg::counters::SOFTIRQ_INLINE
        });
    }
    if echo.flags & agg::ECHO_CLOSED != 0 {
        return;
    }
    let close_stage = config(&CONFIG.close_stage);
    let ended = if reply && stage_n == close_stage {
        let expect_leg = config(&CONFIG.expect_leg);
        let expect_any = config(&CONFIG.expect_any);
        // A stage expected on either leg: fold the legs' bits together.
        let legs = echo.seen | (echo.seen >> lotrace_common::catalog::STAGE_COUNT);
        let complete = expect_leg & !echo.seen == 0 && expect_any & !legs == 0;
        agg_record(agg::TOTAL_ROW, ts.saturating_sub(echo.first_ts), 0);
        Some(if complete {
            agg::counters::ANSWERED
        } else {
            agg::counters::ANSWERED_INCOMPLETE
        })
    } else if !reply && stage_n == Stage::Drop as u8 {
        Some(agg::counters::DROPPED)
    } else if !reply && stage_n == Stage::Route as u8 && len != 0 {
        Some(agg::counters::NO_ROUTE)
    } else {
        None
    };
    if let Some(c) = ended {
        echo.flags |= agg::ECHO_CLOSED;
        bump(c);
    }
}

//! `trace --summary-only`: the statistics the programs aggregated in the
//! kernel, turned into the same [`Stats`] a streamed trace builds. Pure:
//! the loader reads the maps, this takes their contents.

use lotrace_common::{
    Stage,
    agg::{self, RowAgg, counters},
};

use crate::model::{
    journey::{Expected, Leg, expected_for},
    stats::{Histogram, KernelOutcomes, Row, Stats},
};

/// One aggregation row's totals and histogram on each CPU, merged.
fn histogram(per_cpu: &[RowAgg]) -> (Histogram, i128) {
    let live = || per_cpu.iter().filter(|r| r.count > 0);
    let mut buckets = vec![0u64; agg::BUCKETS];
    for r in live() {
        for (b, n) in buckets.iter_mut().zip(r.buckets.iter()) {
            *b += n;
        }
    }
    let sum = live().map(|r| r.sum as u128).sum();
    let min = live().map(|r| r.min).min().unwrap_or(u64::MAX);
    let max = live().map(|r| r.max).max().unwrap_or(0);
    let t_sum = live().map(|r| r.t_sum as i128).sum();
    (Histogram::from_parts(buckets, sum, min, max), t_sum)
}

fn count(per_cpu: &[RowAgg]) -> u64 {
    per_cpu.iter().map(|r| r.count).sum()
}

/// Everything read out of the aggregation maps.
#[derive(Clone, Debug, Default)]
pub struct KernelAgg {
    /// Per aggregation row (see [`agg::row`]), its value on each CPU.
    pub rows: Vec<Vec<RowAgg>>,
    /// `agg::counters`, summed over CPUs.
    pub counters: Vec<u64>,
}

impl KernelAgg {
    fn counter(&self, i: u32) -> u64 {
        self.counters.get(i as usize).copied().unwrap_or(0)
    }
}

pub fn stats(k: &KernelAgg) -> Stats {
    let mut s = Stats::default();
    for (i, data) in k.rows.iter().enumerate().take(agg::STAGE_ROWS) {
        if count(data) == 0 {
            continue;
        }
        let (reply, stage, at_return) = agg::row_parts(i);
        let Some(stage) = Stage::from_u8(stage) else {
            continue;
        };
        let (h, t_sum) = histogram(data);
        let leg = if reply { Leg::Reply } else { Leg::Request };
        s.set_row(
            Row {
                leg,
                stage,
                at_return,
            },
            h,
            t_sum,
        );
    }
    if let Some(d) = k.rows.get(agg::RTT_ROW) {
        s.rtt = histogram(d).0;
    }
    if let Some(d) = k.rows.get(agg::TOTAL_ROW) {
        s.total = histogram(d).0;
    }
    let opened = k.counter(counters::OPENED);
    let o = KernelOutcomes {
        answered: k.counter(counters::ANSWERED),
        answered_incomplete: k.counter(counters::ANSWERED_INCOMPLETE),
        dropped: k.counter(counters::DROPPED),
        no_route: k.counter(counters::NO_ROUTE),
        unfinished: 0,
    };
    let ended = o.answered + o.answered_incomplete + o.dropped + o.no_route;
    let o = KernelOutcomes {
        unfinished: opened.saturating_sub(ended),
        ..o
    };
    s.journeys = opened.max(ended);
    s.incomplete = o.answered_incomplete + o.unfinished;
    for (name, c) in [("ipv4", counters::IPV4), ("ipv6", counters::IPV6)] {
        if k.counter(c) > 0 {
            s.families.insert(name, k.counter(c));
        }
    }
    for (name, c) in [
        ("raw", counters::SOCK_RAW),
        ("datagram", counters::SOCK_DGRAM),
    ] {
        if k.counter(c) > 0 {
            s.sockets.insert(name, k.counter(c));
        }
    }
    s.softirq_inline = k.counter(counters::SOFTIRQ_INLINE);
    s.softirq_ksoftirqd = k.counter(counters::SOFTIRQ_KSOFTIRQD);
    s.in_kernel = Some(o);
    s
}

/// What the programs must know to aggregate journeys as the model builds
/// them: the expected stages, and the stage that ends an answered echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggSettings {
    /// Per leg, the stages expected (see [`agg::seen_bit`]).
    pub expect_leg: u64,
    /// Stages expected on either leg.
    pub expect_any: u64,
    pub close_stage: Stage,
}

/// The settings for a trace that observes `covered`.
pub fn settings(covered: &[Stage]) -> AggSettings {
    let (expect_leg, expect_any) = expect_masks(&expected_for(covered));
    AggSettings {
        expect_leg,
        expect_any,
        close_stage: close_stage(covered),
    }
}

/// The expected stages as the programs check them: (leg bits, stage bits
/// expected on either leg).
fn expect_masks(expected: &[Expected]) -> (u64, u64) {
    expected.iter().fold((0, 0), |(leg, any), e| match e.leg {
        Some(l) => (leg | agg::seen_bit(l == Leg::Reply, e.stage as u8), any),
        None => (leg, any | 1u64 << e.stage as u8),
    })
}

/// The reply stage that ends an answered echo: ping's recvmsg returning,
/// else the copy to it.
fn close_stage(covered: &[Stage]) -> Stage {
    if covered.contains(&Stage::Recvmsg) || !covered.contains(&Stage::CopyToUser) {
        Stage::Recvmsg
    } else {
        Stage::CopyToUser
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::journey::ALWAYS;
    use lotrace_common::agg::row;

    fn row_data(cpus: &[&[u64]], t: i64) -> Vec<RowAgg> {
        cpus.iter()
            .map(|vals| {
                let mut r = RowAgg::zeroed();
                for &v in *vals {
                    r.record(v, t);
                }
                r
            })
            .collect()
    }

    #[test]
    fn kernel_rows_become_the_streamed_statistics() {
        let mut k = KernelAgg {
            rows: vec![Vec::new(); agg::ROWS],
            counters: vec![0; counters::COUNT as usize],
        };
        let send = row(false, Stage::Sendto as u8, false);
        let rx = row(true, Stage::NetifRx as u8, false);
        k.rows[send] = row_data(&[&[0, 0], &[0]], 0);
        k.rows[rx] = row_data(&[&[300, 500], &[], &[400]], 9000);
        k.rows[agg::RTT_ROW] = row_data(&[&[9000], &[10_000, 11_000]], 0);
        k.counters[counters::OPENED as usize] = 5;
        k.counters[counters::ANSWERED as usize] = 2;
        k.counters[counters::ANSWERED_INCOMPLETE as usize] = 1;
        k.counters[counters::DROPPED as usize] = 1;
        k.counters[counters::IPV4 as usize] = 5;
        k.counters[counters::SOCK_DGRAM as usize] = 4;
        k.counters[counters::SOFTIRQ_KSOFTIRQD as usize] = 3;
        let s = stats(&k);
        assert_eq!(s.journeys, 5);
        // One answered without every stage, one never finished.
        assert_eq!(s.incomplete, 2);
        let o = s.in_kernel.unwrap();
        assert_eq!((o.unfinished, o.dropped), (1, 1));
        let h = &s.rows[&Row {
            leg: Leg::Reply,
            stage: Stage::NetifRx,
            at_return: false,
        }];
        // The idle CPU's zeroed slot must not pull the minimum to 0.
        assert_eq!((h.count, h.min, h.max, h.sum), (3, 300, 500, 1200));
        assert_eq!(s.rtt.count, 3);
        assert_eq!(s.rtt.mean(), Some(10_000));
        let order = s.order();
        assert_eq!(order.first().unwrap().stage, Stage::Sendto);
        assert_eq!(order.last().unwrap().stage, Stage::NetifRx);
        assert_eq!(s.families.get("ipv4"), Some(&5));
        assert_eq!(s.sockets.get("datagram"), Some(&4));
        assert!(!s.sockets.contains_key("raw"));
        assert_eq!(s.softirq_ksoftirqd, 3);
    }

    #[test]
    fn masks_cover_each_expected_stage_once() {
        let (leg, any) = expect_masks(ALWAYS);
        let legged = ALWAYS.iter().filter(|e| e.leg.is_some()).count();
        assert_eq!(leg.count_ones() as usize, legged);
        assert_eq!(any, 1 << Stage::NetRxAction as u8);
        assert_ne!(
            leg & agg::seen_bit(true, Stage::Recvmsg as u8),
            0,
            "the reply's recvmsg is expected"
        );
        assert_eq!(leg & agg::seen_bit(false, Stage::Recvmsg as u8), 0);
    }

    #[test]
    fn answered_at_recvmsg_or_else_at_the_copy() {
        assert_eq!(close_stage(&Stage::ALL), Stage::Recvmsg);
        assert_eq!(
            close_stage(&[Stage::Sendto, Stage::CopyToUser]),
            Stage::CopyToUser
        );
        assert_eq!(close_stage(&[Stage::Sendto]), Stage::Recvmsg);
    }
}

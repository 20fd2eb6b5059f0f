//! In-kernel aggregation (`trace --summary-only`): instead of streaming one
//! event per stage, the programs keep per-stage histograms themselves, so a
//! flood costs the traced packets a few map updates and costs user space
//! nothing. Both sides use the layout and the bucket function defined here,
//! so a histogram read out of the kernel is the same one user space would
//! have built from the events.

use crate::catalog::STAGE_COUNT;

/// Sub-buckets per power of two: percentiles are within 1/16 (6%).
pub const SUB_BITS: u32 = 4;
pub const SUB: u32 = 1 << SUB_BITS;
/// Buckets of one histogram: every u64 has one.
pub const BUCKETS: usize = (64 * SUB) as usize;

/// The index of the most significant set bit of a non-zero value. Written
/// out because the eBPF target has no count-leading-zeros instruction.
#[inline(always)]
pub const fn msb(mut v: u64) -> u32 {
    let mut n = 0;
    if v >> 32 != 0 {
        v >>= 32;
        n += 32;
    }
    if v >> 16 != 0 {
        v >>= 16;
        n += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        n += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        n += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        n += 2;
    }
    if v >> 1 != 0 {
        n += 1;
    }
    n
}

/// The log-linear bucket of a value: exact below `SUB`, then `SUB`
/// buckets per power of two.
#[inline(always)]
pub const fn bucket(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let m = msb(v);
    let shift = m - SUB_BITS;
    let sub = ((v >> shift) as u32) & (SUB - 1);
    ((m - SUB_BITS + 1) * SUB + sub) as usize
}

/// The largest value that falls in bucket `b`.
pub const fn bucket_high(b: usize) -> u64 {
    let b = b as u32;
    if b < SUB {
        return b as u64;
    }
    let e = b / SUB - 1 + SUB_BITS;
    let sub = (b % SUB) as u64;
    let low = (1u64 << e) | (sub << (e - SUB_BITS));
    // Grouped so the top bucket's end (u64::MAX) does not overflow.
    low + ((1u64 << (e - SUB_BITS)) - 1)
}

/// Rows of per-stage statistics: (leg, stage, at the probe's return).
pub const STAGE_ROWS: usize = 2 * STAGE_COUNT * 2;
/// The kernel RTT: the request's sendto to the reply's netif_rx.
pub const RTT_ROW: usize = STAGE_ROWS;
/// The journey: its first stage to the reply's receive by ping.
pub const TOTAL_ROW: usize = STAGE_ROWS + 1;
pub const ROWS: usize = STAGE_ROWS + 2;

/// `--summary-only`, TCP and UDP (the `FLOW_ROWS` map): per (protocol,
/// stage, at the probe's return), at `row(tcp, stage, at_return)`, the
/// time since the packet's previous stage (0 at its first); then, per
/// protocol, a row whose count is its packets.
pub const FLOW_ROWS: usize = STAGE_ROWS + 2;

#[inline(always)]
pub const fn flow_packets_row(tcp: bool) -> usize {
    STAGE_ROWS + tcp as usize
}

#[inline(always)]
pub const fn row(reply: bool, stage: u8, at_return: bool) -> usize {
    (reply as usize * STAGE_COUNT + stage as usize) * 2 + at_return as usize
}

/// The inverse of [`row`] for stage rows: (reply, stage, at_return).
pub const fn row_parts(r: usize) -> (bool, u8, bool) {
    let at_return = r % 2 == 1;
    let ls = r / 2;
    (ls >= STAGE_COUNT, (ls % STAGE_COUNT) as u8, at_return)
}

/// Stages an echo can meet, per leg, in one u64 of [`seen_bit`]s: an
/// echo's stages have ids below it (the TCP and UDP ones may not).
pub const SEEN_STAGES: u32 = 32;
const _: () = assert!(crate::catalog::EXPECTED_STAGES >> SEEN_STAGES == 0);

/// The bit of a (leg, stage) in [`Echo::seen`] and `Config::expect_leg`:
/// only for a stage an echo meets (see [`SEEN_STAGES`]).
#[inline(always)]
pub const fn seen_bit(reply: bool, stage: u8) -> u64 {
    1u64 << ((reply as u32 * SEEN_STAGES + stage as u32) & 63)
}

/// One row on one CPU: its totals and its histogram, in one map value so
/// that a stage costs the packet one lookup and user space one read per row.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowAgg {
    pub count: u64,
    pub sum: u64,
    /// Meaningful only when `count > 0` (a fresh map holds zeros).
    pub min: u64,
    pub max: u64,
    /// Summed time since the echo's send, to order the rows the way
    /// packets met them.
    pub t_sum: i64,
    /// Counts per [`bucket`].
    pub buckets: [u64; BUCKETS],
}

impl RowAgg {
    pub const fn zeroed() -> RowAgg {
        RowAgg {
            count: 0,
            sum: 0,
            min: 0,
            max: 0,
            t_sum: 0,
            buckets: [0; BUCKETS],
        }
    }

    /// Adds one value (`t`: its time since the echo's send).
    #[inline(always)]
    pub fn record(&mut self, v: u64, t: i64) {
        if self.count == 0 || v < self.min {
            self.min = v;
        }
        if v > self.max {
            self.max = v;
        }
        self.count += 1;
        self.sum = self.sum.wrapping_add(v);
        self.t_sum = self.t_sum.wrapping_add(t);
        // Masked so the verifier sees the index in bounds.
        self.buckets[bucket(v) & (BUCKETS - 1)] += 1;
    }
}

pub use crate::journey::Echo;

/// Slots of the per-CPU `AGG_COUNT` map.
pub mod counters {
    /// Echoes the programs started following.
    pub const OPENED: u32 = 0;
    /// Answered: the reply reached ping (see `journey::answers`).
    pub const ANSWERED: u32 = 1;
    /// Answered, and every expected stage was seen by the close stage.
    pub const COMPLETE: u32 = 2;
    /// The request was dropped, and (so far) not answered. Outcome
    /// counters move: an echo leaves this one when it is answered after
    /// all, so a CPU's slot may wrap below zero; only the sum over CPUs,
    /// added with wrapping, is meaningful.
    pub const DROPPED: u32 = 3;
    /// A request route lookup failed, and (so far) nothing outweighed it.
    pub const NO_ROUTE: u32 = 4;
    pub const IPV4: u32 = 5;
    pub const IPV6: u32 = 6;
    pub const SOCK_RAW: u32 = 7;
    pub const SOCK_DGRAM: u32 = 8;
    /// Receives whose NET_RX softirq ran inline, or in ksoftirqd.
    pub const SOFTIRQ_INLINE: u32 = 9;
    pub const SOFTIRQ_KSOFTIRQD: u32 = 10;
    /// Receives done by a backlog thread, without the softirq.
    pub const BACKLOG_THREAD: u32 = 11;
    /// Events the aggregation gave no echo: the slot of their sequence
    /// held another echo (two traced pings with one sequence in flight at
    /// once, or an echo whose send went unseen).
    pub const UNASSIGNED: u32 = 12;
    pub const COUNT: u32 = 13;
}

/// Slots of the arrays indexed by family and a 16-bit number (the
/// tracked echo ids).
pub const ECHOES_MAX: u32 = 2 << 16;

/// The slot of a family and a 16-bit number in those arrays.
#[inline(always)]
pub const fn echo_slot(ipv6: bool, seq: u16) -> u32 {
    ((ipv6 as u32) << 16) | seq as u32
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` data without padding holes.
    unsafe impl aya::Pod for super::RowAgg {}
    unsafe impl aya::Pod for super::Echo {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msb_matches_leading_zeros() {
        for v in (0..64)
            .map(|s| 1u64 << s)
            .chain([3, 5, 1000, u64::MAX, 12345678901])
        {
            assert_eq!(msb(v), 63 - v.leading_zeros(), "{v}");
        }
    }

    #[test]
    fn buckets_are_ordered_tight_and_cover_their_values() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            15,
            16,
            17,
            31,
            32,
            100,
            1000,
            123_456,
            9_999_999,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let b = bucket(v);
            assert!(b < BUCKETS);
            assert!(b >= last, "bucket order at {v}");
            last = b;
            let high = bucket_high(b);
            assert!(high >= v, "{v} above its bucket's high {high}");
            assert!(high - v <= v / 16 + 1, "{v}: bucket too wide ({high})");
            if b > 0 {
                assert!(bucket_high(b - 1) < v, "{v}");
            }
        }
    }

    #[test]
    fn rows_round_trip() {
        for r in 0..STAGE_ROWS {
            let (reply, stage, ret) = row_parts(r);
            assert_eq!(row(reply, stage, ret), r);
        }
        assert_eq!(
            seen_bit(true, (SEEN_STAGES - 1) as u8),
            1 << (2 * SEEN_STAGES - 1)
        );
        assert!(echo_slot(true, u16::MAX) < ECHOES_MAX);
    }

    #[test]
    fn a_row_records_totals_and_buckets() {
        let mut r = RowAgg::zeroed();
        for v in [500, 100, u64::MAX] {
            r.record(v, 7);
        }
        assert_eq!((r.count, r.min, r.max, r.t_sum), (3, 100, u64::MAX, 21));
        assert_eq!(r.buckets.iter().sum::<u64>(), 3);
        assert_eq!(r.buckets[bucket(u64::MAX)], 1);
    }
}

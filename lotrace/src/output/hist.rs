//! `--hist`: per-stage latency histograms in the summary.

use std::fmt::Write as _;

use crate::{model::stats::Stats, output::fmt_ns};

/// Per row, the distribution of the time since the previous stage, by
/// powers of two.
pub fn histograms(stats: &Stats) -> String {
    let mut s = String::from("\n   latency histograms (time since the previous stage)\n");
    for row in stats.order() {
        let h = &stats.rows[&row];
        if h.count == 0 {
            continue;
        }
        let _ = writeln!(s, "   {} {}", row.leg.name(), row.label());
        let mut bins: Vec<(u64, u64)> = Vec::new();
        for (low, _, c) in h.nonzero_buckets() {
            let p = if low == 0 {
                0
            } else {
                1u64 << (63 - low.leading_zeros())
            };
            match bins.last_mut() {
                Some((b, n)) if *b == p => *n += c,
                _ => bins.push((p, c)),
            }
        }
        let max = bins.iter().map(|b| b.1).max().unwrap_or(1);
        for (low, n) in bins {
            let high = if low == 0 { 1 } else { low * 2 };
            let width = ((n * 30).div_ceil(max)) as usize;
            let _ = writeln!(
                s,
                "     {:>10} – {:<10} {:<30} {n}",
                fmt_ns(low),
                fmt_ns(high),
                "█".repeat(width)
            );
        }
    }
    s
}

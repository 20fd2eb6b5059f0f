//! Bounded latency statistics: a log-linear histogram per stage, so memory
//! stays flat however many pings are traced.

use std::collections::BTreeMap;

use lotrace_common::{
    Stage,
    agg::{BUCKETS, bucket, bucket_high},
};

use crate::model::{
    detail::DevName,
    exchange::{Exchange, ExchangeKind},
    flow::{Packet, Proto},
    journey::{Context, Hop, Journey, Leg},
};

#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Box<[u64]>,
    pub count: u64,
    pub sum: u128,
    pub min: u64,
    pub max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Histogram {
    /// A histogram kept elsewhere (the kernel's, for `--summary-only`):
    /// per-bucket counts in [`bucket`] order, and the totals.
    pub fn from_parts(mut counts: Vec<u64>, sum: u128, min: u64, max: u64) -> Histogram {
        counts.resize(BUCKETS, 0);
        let count = counts.iter().sum();
        Histogram {
            counts: counts.into_boxed_slice(),
            count,
            sum,
            min: if count == 0 { u64::MAX } else { min },
            max,
        }
    }

    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.count += 1;
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn mean(&self) -> Option<u64> {
        (self.count > 0).then(|| (self.sum / self.count as u128) as u64)
    }

    /// The value at quantile `q` (0..=1), within the bucket resolution and
    /// never outside the observed min and max.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        if q <= 0.0 {
            return Some(self.min);
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_high(b).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// Count per bucket range, for a terminal histogram: (low, high, count).
    pub fn nonzero_buckets(&self) -> Vec<(u64, u64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(b, c)| {
                let low = if b == 0 { 0 } else { bucket_high(b - 1) + 1 };
                (low, bucket_high(b), *c)
            })
            .collect()
    }
}

/// A row of the per-stage table: a stage of one leg, at its start or at its
/// return (a stage seen from both ends has two rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Row {
    pub leg: Leg,
    pub stage: Stage,
    pub at_return: bool,
}

impl Row {
    pub fn label(&self) -> String {
        row_label(self.stage, self.at_return)
    }
}

/// A stage's row in a table: at its start, or at its return.
pub fn row_label(stage: Stage, at_return: bool) -> String {
    if at_return {
        format!("{} (return)", stage.name())
    } else {
        stage.name().to_string()
    }
}

/// Receives counted by where they ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRx {
    /// In the NET_RX softirq run inline.
    pub inline: u64,
    /// In the NET_RX softirq handed off to ksoftirqd.
    pub ksoftirqd: u64,
    /// In a backlog thread, without the softirq.
    pub backlog_thread: u64,
}

impl NetRx {
    pub fn add(&mut self, c: &Context) {
        match c {
            Context::Ksoftirqd => self.ksoftirqd += 1,
            Context::BacklogThread => self.backlog_thread += 1,
            _ => self.inline += 1,
        }
    }
}

/// Counts a transmit's device, up to 64 of them.
pub fn count_dev(devs: &mut BTreeMap<String, u64>, dev: Option<DevName>) {
    let Some(dev) = dev else { return };
    // As `DevName` displays: no allocation for a device already counted.
    let name = String::from_utf8_lossy(dev.as_bytes());
    if let Some(n) = devs.get_mut(name.as_ref()) {
        *n += 1;
    } else if devs.len() < 64 {
        devs.insert(name.into_owned(), 1);
    }
}

/// Statistics over all journeys seen.
#[derive(Default)]
pub struct Stats {
    /// Per row: the time from the previous hop to this one.
    pub rows: BTreeMap<Row, Histogram>,
    /// The kernel RTT of each journey that has one.
    pub rtt: Histogram,
    pub total: Histogram,
    pub journeys: u64,
    pub incomplete: u64,
    /// The devices the requests were transmitted on, with counts.
    pub xmit_devs: BTreeMap<String, u64>,
    /// Journeys per address family and per socket kind.
    pub families: BTreeMap<&'static str, u64>,
    pub sockets: BTreeMap<&'static str, u64>,
    /// Where the receives (legs) ran.
    pub softirq: NetRx,
    /// Per row: summed time since the send and count, to order the rows
    /// the way packets met them on average.
    t_sum: BTreeMap<Row, (i128, u64)>,
    /// Set when the statistics were aggregated in the kernel
    /// (`--summary-only`) rather than built from journeys.
    pub in_kernel: Option<KernelOutcomes>,
}

/// How the echoes aggregated in the kernel ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelOutcomes {
    /// Answered with every expected stage seen.
    pub answered: u64,
    /// Answered, but an expected stage was not seen.
    pub answered_incomplete: u64,
    pub dropped: u64,
    pub no_route: u64,
    /// Not answered when the trace ended, or when a later send with the
    /// same sequence number took its slot.
    pub unfinished: u64,
    /// Stage observations given to no echo: the slot of their sequence
    /// held another echo (two traced pings with one sequence in flight at
    /// once), or their echo's send was not seen.
    pub unassigned_events: u64,
}

impl Stats {
    pub fn add(&mut self, j: &Journey) {
        self.journeys += 1;
        if !j.complete() {
            self.incomplete += 1;
        }
        if let Some(r) = j.rtt_ns {
            self.rtt.record(r);
        }
        self.total.record(j.total_ns);
        *self.families.entry(j.family_name()).or_default() += 1;
        if let Some(k) = j.socket_name() {
            *self.sockets.entry(k).or_default() += 1;
        }
        let dev = j
            .hops
            .iter()
            .filter(|h| h.leg == Leg::Request)
            .find_map(Hop::xmit_dev);
        count_dev(&mut self.xmit_devs, dev);
        for w in j.softirq.iter().flatten() {
            self.softirq.add(&w.context);
        }
        for h in &j.hops {
            let row = Row {
                leg: h.leg,
                stage: h.stage,
                at_return: h.probe.info().at_return,
            };
            self.rows.entry(row).or_default().record(h.delta_ns);
            let t = self.t_sum.entry(row).or_default();
            t.0 += h.t_ns as i128;
            t.1 += 1;
        }
    }

    /// Adds a row measured elsewhere, with its summed time since the send.
    pub fn set_row(&mut self, row: Row, h: Histogram, t_sum: i128) {
        let n = h.count;
        self.rows.insert(row, h);
        self.t_sum.insert(row, (t_sum, n));
    }

    /// The rows in the order packets met them, by mean time since the send.
    pub fn order(&self) -> Vec<Row> {
        let mut rows: Vec<(i128, Row)> = self
            .t_sum
            .iter()
            .map(|(r, (sum, n))| (sum / (*n).max(1) as i128, *r))
            .collect();
        rows.sort();
        rows.into_iter().map(|(_, r)| r).collect()
    }
}

/// What the summary says of the packets: how many, how far they went,
/// and per protocol and stage the time from the previous hop.
#[derive(Default)]
pub struct PacketStats {
    /// Flows, when counted in the kernel (`--summary-only`).
    pub flows: u64,
    pub packets: BTreeMap<Proto, u64>,
    pub reach: BTreeMap<(Proto, &'static str), u64>,
    /// Per protocol and (stage, at return), in the order the stages come.
    pub rows: BTreeMap<(Proto, u8, bool), (Stage, Histogram)>,
    pub total: BTreeMap<Proto, Histogram>,
    /// Per protocol and kind of exchange: its request's way, the
    /// server's time, its response's way, and the whole.
    pub exchanges: BTreeMap<(Proto, &'static str), ExchangeHists>,
    /// The devices packets were transmitted on, with counts.
    pub devices: BTreeMap<String, u64>,
    /// Where the packets' receives ran.
    pub net_rx: NetRx,
}

#[derive(Default)]
pub struct ExchangeHists {
    pub request: Histogram,
    pub server: Histogram,
    pub response: Histogram,
    pub total: Histogram,
    /// Exchanges with no response seen.
    pub unanswered: u64,
}

impl ExchangeHists {
    /// Its rows in a table, labelled: a handshake's whole, or a request's
    /// way, the server's time, the response's way and the whole.
    pub fn rows(&self, kind: &str) -> Vec<(&'static str, &Histogram)> {
        if kind == ExchangeKind::Handshake.name() {
            vec![("handshake: SYN→ACK arrived", &self.total)]
        } else {
            vec![
                ("request: sent→arrived", &self.request),
                ("server: arrived→response", &self.server),
                ("response: sent→arrived", &self.response),
                ("exchange: request→response", &self.total),
            ]
        }
    }
}

impl PacketStats {
    pub fn add(&mut self, p: &Packet) {
        *self.packets.entry(p.proto).or_default() += 1;
        *self.reach.entry((p.proto, p.reach.name())).or_default() += 1;
        // The first hop counts 0, as the programs aggregate it.
        for (i, h) in p.hops.iter().enumerate() {
            let at_return = h.probe.info().at_return;
            let row = self
                .rows
                .entry((p.proto, h.stage.rank(), at_return))
                .or_insert_with(|| (h.stage, Histogram::default()));
            row.1.record(if i > 0 { h.delta_ns } else { 0 });
        }
        self.total.entry(p.proto).or_default().record(p.total_ns);
        count_dev(&mut self.devices, p.hops.iter().find_map(Hop::xmit_dev));
        if let Some(h) = p.hops.iter().find(|h| h.stage == Stage::NetifReceiveSkb) {
            self.net_rx.add(&h.context);
        }
    }

    pub fn add_exchange(&mut self, x: &Exchange) {
        let h = self.exchanges.entry((x.proto, x.kind.name())).or_default();
        if let Some(w) = x.request_way() {
            h.request.record(w.ns());
        }
        match x.response_way() {
            Some(w) => h.response.record(w.ns()),
            None => h.unanswered += 1,
        }
        if let Some(n) = x.server_ns() {
            h.server.record(n);
        }
        if let Some(n) = x.total_ns() {
            h.total.record(n);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::flow::{build_packet, tests::packet};
    use crate::model::{builder::build_journey, journey::tests::echo};
    use lotrace_common::event::PKT_UDP;

    #[test]
    fn extreme_values_stay_in_range() {
        let mut h = Histogram::default();
        for v in [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
            h.record(v);
        }
        assert_eq!(h.quantile(1.0), Some(u64::MAX));
        assert!(h.quantile(0.5).unwrap() >= u64::MAX / 2);
        assert!(h.nonzero_buckets().iter().all(|(lo, hi, _)| lo <= hi));
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count, 1000);
        assert_eq!(h.min, 1000);
        assert_eq!(h.max, 1_000_000);
        assert_eq!(h.mean(), Some(500_500));
        let p50 = h.quantile(0.5).unwrap();
        assert!((500_000..=532_000).contains(&p50), "p50 {p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((990_000..=1_000_000).contains(&p99), "p99 {p99}");
        assert_eq!(h.quantile(1.0), Some(1_000_000));
        assert_eq!(h.quantile(0.0), Some(1000));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn stats_follow_the_journey_order() {
        let mut s = Stats::default();
        for seq in 0..3 {
            s.add(&build_journey(echo(seq, seq as u64 * 1_000_000), &[]));
        }
        assert_eq!(s.journeys, 3);
        assert_eq!((s.softirq.inline, s.softirq.ksoftirqd), (6, 0));
        assert_eq!(s.rtt.count, 3);
        let order = s.order();
        let first = order.first().unwrap();
        assert_eq!((first.leg, first.stage), (Leg::Request, Stage::Sendto));
        let netif = Row {
            leg: Leg::Reply,
            stage: Stage::NetifRx,
            at_return: false,
        };
        assert_eq!(s.rows[&netif].count, 3);
        assert_eq!(s.rows[&netif].min, 200);
        let pos = |r: &Row| order.iter().position(|x| x == r).unwrap();
        let send_ret = Row {
            leg: Leg::Request,
            stage: Stage::SockSendmsg,
            at_return: true,
        };
        assert!(pos(&netif) < pos(&send_ret));
    }

    #[test]
    fn stats_count_packets_and_exchanges() {
        let mut s = PacketStats::default();
        let p = build_packet(packet(PKT_UDP, 2, 1, 0, 30, 0, 0));
        s.add(&p);
        assert_eq!(s.packets[&Proto::Udp], 1);
        assert_eq!(s.reach[&(Proto::Udp, "read")], 1);
        let rows: u64 = s.rows.values().map(|(_, h)| h.count).sum();
        assert_eq!(rows, p.hops.len() as u64, "the first counts 0");
        s.add_exchange(&Exchange {
            flow: 2,
            proto: Proto::Udp,
            kind: ExchangeKind::Request,
            number: 1,
            request_reverse: false,
            request: vec![p],
            response: vec![],
        });
        assert_eq!(s.exchanges[&(Proto::Udp, "request")].unanswered, 1);
    }
}

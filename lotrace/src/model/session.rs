//! One trace's processing, live or replayed: events and the child's output
//! lines in, finished journeys (with ping's own RTT beside them) and
//! statistics out. Pure, so a replay renders exactly what the live run did.

use std::collections::{BTreeMap, VecDeque};

use lotrace_common::{
    Event,
    event::{AF_INET, AF_INET6},
};

use crate::model::{
    builder::JourneyBuilder,
    exchange::{Exchange, ExchangeBuilder},
    flow::{Flow, Packet, PacketBuilder, Retransmits},
    journey::{Journey, expected_for, expected_stages},
    meta::Meta,
    pingout::{Dialect, PingLine, PingReply, SeqStyle, parse_line},
    record::Record,
    stats::{PacketStats, Stats},
};

/// A journey is closed when none of its events has been seen for this long.
/// Long enough for ping's own line to be read, short enough to stream.
pub const QUIET_NS: u64 = 250_000_000;
/// An exchange whose response has had no new packet for this long is
/// ended: a response may come in several packets, each closed on its own.
pub const EXCHANGE_QUIET_NS: u64 = 1_000_000_000;
/// ping RTTs kept waiting for their journey (flood pings print none); the
/// oldest go first.
const MAX_PING_RTTS: usize = 4096;

#[derive(Debug)]
pub struct Done {
    pub journey: Journey,
    /// The RTT ping printed for this echo: only from a ping whose numbering
    /// lotrace knows, and only when it is not below the kernel RTT.
    pub ping_rtt_ns: Option<u64>,
}

pub struct Session {
    builder: JourneyBuilder,
    /// TCP and UDP packets: their flows, their journeys.
    packets: PacketBuilder,
    /// Packets closed and not yet taken by the printer.
    closed: Vec<Packet>,
    exchanges: ExchangeBuilder,
    retransmits: Retransmits,
    /// Exchanges ended and not yet taken by the printer.
    ended: Vec<Exchange>,
    pub packet_stats: PacketStats,
    pub stats: Stats,
    ping_rtt: PingRtts,
    /// The address the child said it pinged, from its `PING` line.
    pub resolved: Option<(String, String)>,
    pub events: u64,
    pub lost: u64,
    /// Probe runs the kernel skipped, when known.
    pub missed: Option<u64>,
    /// Events the probes tried to emit, when known.
    pub submitted: Option<u64>,
    /// lotrace's own cost, for a live trace.
    pub usage: Option<Usage>,
    /// Journeys assembled in the kernel: records received and the events
    /// they held (see `model::assembled`), for a live trace that did.
    pub assembled: Option<Assembled>,
}

impl Session {
    pub fn new(meta: &Meta) -> Session {
        Session {
            builder: JourneyBuilder::new(
                expected_for(&expected_stages(&meta.covered(), meta.target.as_deref())),
                QUIET_NS,
            ),
            packets: PacketBuilder::new(QUIET_NS),
            closed: Vec::new(),
            exchanges: ExchangeBuilder::default(),
            retransmits: Retransmits::default(),
            ended: Vec::new(),
            packet_stats: PacketStats::default(),
            stats: Stats::default(),
            ping_rtt: PingRtts::default(),
            resolved: None,
            events: 0,
            lost: 0,
            missed: None,
            submitted: None,
            usage: None,
            assembled: None,
        }
    }

    pub fn record(&mut self, r: &Record) -> Vec<Done> {
        match r {
            Record::Event(e) => self.event(*e),
            Record::Line { text, .. } => {
                self.line(text);
                Vec::new()
            }
            Record::Lost(n) => {
                self.lost = self.lost.max(*n);
                Vec::new()
            }
        }
    }

    pub fn event(&mut self, e: Event) -> Vec<Done> {
        self.events += 1;
        if self.packets.push(&e) {
            return Vec::new();
        }
        let closed = self.builder.push(e);
        self.done(closed)
    }

    pub fn line(&mut self, text: &str) {
        match parse_line(text) {
            PingLine::Header {
                host,
                addr,
                dialect,
            } => {
                self.resolved = Some((host, addr));
                self.ping_rtt.dialect = dialect;
            }
            PingLine::Reply(r) => self.ping_rtt.add(r),
            PingLine::Other => {}
        }
    }

    /// Journeys quiet since before `now_ns` (the events' clock).
    pub fn ready(&mut self, now_ns: u64) -> Vec<Done> {
        let packets = self.packets.take_ready(now_ns);
        self.close_packets(packets);
        let quiet = self
            .exchanges
            .take_quiet(now_ns.saturating_sub(EXCHANGE_QUIET_NS));
        self.end_exchanges(quiet);
        let closed = self.builder.take_ready(now_ns);
        self.done(closed)
    }

    pub fn finish(&mut self) -> Vec<Done> {
        let packets = self.packets.finish();
        self.close_packets(packets);
        let open = self.exchanges.finish();
        self.end_exchanges(open);
        let closed = self.builder.finish();
        self.done(closed)
    }

    fn close_packets(&mut self, mut ps: Vec<Packet>) {
        for p in ps.iter_mut() {
            self.retransmits.mark(p);
        }
        for p in &ps {
            self.packet_stats.add(p);
            let xs = self.exchanges.push(p);
            self.end_exchanges(xs);
        }
        self.closed.extend(ps);
    }

    fn end_exchanges(&mut self, xs: Vec<Exchange>) {
        for x in &xs {
            self.packet_stats.add_exchange(x);
        }
        self.ended.extend(xs);
    }

    /// The TCP and UDP packets closed since the last call, in the order
    /// they began, the exchanges ended since, and the flows they belong to.
    pub fn take_packets(&mut self) -> (Vec<Packet>, Vec<Exchange>, &BTreeMap<u16, Flow>) {
        (
            std::mem::take(&mut self.closed),
            std::mem::take(&mut self.ended),
            &self.packets.flows,
        )
    }

    /// How many flows were followed: announced, or counted in the kernel.
    pub fn flow_count(&self) -> usize {
        self.packets
            .flows
            .len()
            .max(self.packet_stats.flows as usize)
    }

    /// The target as the command reported resolving it, once it has.
    pub fn update_target(&self, meta: &mut Meta) {
        if let Some((_, addr)) = &self.resolved {
            meta.target = Some(addr.clone());
        }
    }

    pub fn discarded(&self) -> u64 {
        self.builder.discarded
    }

    /// What the summary shows besides the statistics.
    pub fn totals(&self) -> Totals {
        Totals {
            events: self.events,
            packets: self.packet_stats.packets.values().sum(),
            lost: self.lost,
            discarded: self.discarded(),
            missed: self.missed,
            submitted: self.submitted,
            usage: self.usage,
            assembled: self.assembled,
        }
    }

    fn done(&mut self, js: Vec<Journey>) -> Vec<Done> {
        js.into_iter()
            .map(|journey| {
                self.stats.add(&journey);
                let ping_rtt_ns = self.ping_rtt.take(&journey);
                Done {
                    journey,
                    ping_rtt_ns,
                }
            })
            .collect()
    }
}

/// The RTTs ping printed, waiting for their journeys.
#[derive(Default)]
struct PingRtts {
    /// Which ping printed the last header.
    dialect: Option<Dialect>,
    waiting: VecDeque<Waiting>,
    /// The first host fping printed, and whether it printed another (then
    /// its numbers are not the wire's).
    fping_host: Option<String>,
    fping_hosts: bool,
}

struct Waiting {
    /// `AF_INET` or `AF_INET6`, when the line says.
    family: Option<u8>,
    seq: u16,
    rtt_ns: u64,
    half_unit_ns: u64,
}

impl PingRtts {
    fn add(&mut self, r: PingReply) {
        let dialect = match r.style {
            SeqStyle::IcmpSeq => match self.dialect {
                Some(d @ (Dialect::Iputils | Dialect::Oping)) => d,
                _ => return,
            },
            SeqStyle::Seq if self.dialect == Some(Dialect::Busybox) => Dialect::Busybox,
            SeqStyle::Seq => return,
            SeqStyle::Fping => {
                match &self.fping_host {
                    None => self.fping_host = r.host.clone(),
                    Some(h) if Some(h) != r.host.as_ref() => self.fping_hosts = true,
                    Some(_) => {}
                }
                if self.fping_hosts {
                    self.waiting.clear();
                    return;
                }
                Dialect::Fping
            }
        };
        self.waiting.push_back(Waiting {
            family: r.from.map(|a| if a.is_ipv6() { AF_INET6 } else { AF_INET }),
            seq: dialect.wire_seq(r.seq),
            rtt_ns: r.rtt_ns,
            half_unit_ns: r.half_unit_ns,
        });
        while self.waiting.len() > MAX_PING_RTTS {
            self.waiting.pop_front();
        }
    }

    /// ping's RTT for `j`, the oldest line with its family and sequence;
    /// `None` when ping's RTT is below the kernel's by more than the
    /// printing's rounding: ping's clock reads enclose the kernel's span, so
    /// such a pairing would be wrong.
    fn take(&mut self, j: &Journey) -> Option<u64> {
        let i = self
            .waiting
            .iter()
            .position(|w| w.seq == j.icmp_seq && w.family.is_none_or(|f| f == j.family))?;
        let w = self.waiting.remove(i)?;
        match j.rtt_ns {
            Some(k) if w.rtt_ns + w.half_unit_ns < k => None,
            _ => Some(w.rtt_ns),
        }
    }
}

/// Everything the summary shows besides the statistics.
#[derive(Default)]
pub struct Totals {
    pub events: u64,
    /// TCP segments and UDP datagrams.
    pub packets: u64,
    pub lost: u64,
    pub discarded: u64,
    /// Probe runs the kernel skipped; `None` when not known (a replay of
    /// an older record).
    pub missed: Option<u64>,
    /// Events the probes tried to emit (received + lost).
    pub submitted: Option<u64>,
    /// lotrace's own CPU time and peak RSS, for a live trace.
    pub usage: Option<Usage>,
    pub assembled: Option<Assembled>,
}

/// What came assembled in the kernel: records from the ring buffer, and
/// the events in them or read from the programs' map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Assembled {
    pub records: u64,
    pub events: u64,
}

/// What lotrace itself cost while the command ran (after the programs
/// were loaded): CPU time and wall time, and its peak resident set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_ns: u64,
    pub max_rss_kb: u64,
    pub wall_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::journey::Outcome;

    fn journey(family: u8, seq: u16, rtt_ns: u64) -> Journey {
        Journey {
            family,
            icmp_id: 7,
            icmp_seq: seq,
            hops: Vec::new(),
            rtt_ns: Some(rtt_ns),
            total_ns: 0,
            missing: Vec::new(),
            softirq: [None, None],
            outcome: Outcome::Answered,
            sock_type: 0,
        }
    }

    fn rtts(lines: &[&str]) -> PingRtts {
        let mut s = Session::new(&Meta::default());
        for l in lines {
            s.line(l);
        }
        s.ping_rtt
    }

    #[test]
    fn oping_counts_from_one() {
        let mut p = rtts(&[
            "PING 127.0.0.1 (127.0.0.1) 56 bytes of data.",
            "56 bytes from 127.0.0.1 (127.0.0.1): icmp_seq=1 ttl=64 time=0.06 ms",
            "56 bytes from 127.0.0.1 (127.0.0.1): icmp_seq=2 ttl=64 time=0.07 ms",
        ]);
        assert_eq!(p.take(&journey(AF_INET, 0, 49_673)), Some(60_000));
        assert_eq!(p.take(&journey(AF_INET, 1, 65_097)), Some(70_000));
        assert_eq!(p.take(&journey(AF_INET, 2, 65_287)), None);
    }

    #[test]
    fn ipv4_and_ipv6_with_one_sequence_stay_apart() {
        let mut p = rtts(&[
            "PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.",
            "64 bytes from 127.0.0.1: icmp_seq=1 ttl=64 time=0.045 ms",
            "PING ::1(::1) 56 data bytes",
            "64 bytes from ::1: icmp_seq=1 ttl=64 time=0.051 ms",
        ]);
        assert_eq!(p.take(&journey(AF_INET6, 1, 40_000)), Some(51_000));
        assert_eq!(p.take(&journey(AF_INET, 1, 40_000)), Some(45_000));
    }

    #[test]
    fn only_known_pings_are_paired() {
        // No header lotrace knows: a line that looks like ping's is not
        // trusted.
        let mut p = rtts(&["64 bytes from 127.0.0.1: icmp_seq=1 ttl=64 time=0.045 ms"]);
        assert_eq!(p.take(&journey(AF_INET, 1, 40_000)), None);
        let mut p = rtts(&[
            "PING 127.0.0.1 (127.0.0.1): 56 data bytes",
            "64 bytes from 127.0.0.1: seq=0 ttl=64 time=0.094 ms",
        ]);
        assert_eq!(p.take(&journey(AF_INET, 0, 80_000)), Some(94_000));
    }

    #[test]
    fn a_ping_rtt_below_the_kernels_is_not_paired() {
        let lines = [
            "PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.",
            "64 bytes from 127.0.0.1: icmp_seq=1 ttl=64 time=1.23 ms",
        ];
        // 1.23 ms printed: the measurement was within 5 µs of it.
        assert_eq!(
            rtts(&lines).take(&journey(AF_INET, 1, 1_234_999)),
            Some(1_230_000)
        );
        assert_eq!(rtts(&lines).take(&journey(AF_INET, 1, 1_235_001)), None);
    }

    #[test]
    fn fping_is_paired_only_with_one_host() {
        let one = [
            "127.0.0.1 : [0], 64 bytes, 0.066 ms (0.066 avg, 0% loss)",
            "127.0.0.1 : [1], 64 bytes, 0.040 ms (0.053 avg, 0% loss)",
        ];
        let mut p = rtts(&one);
        assert_eq!(p.take(&journey(AF_INET, 1, 30_000)), Some(40_000));
        let two = [
            "127.0.0.1 : [0], 64 bytes, 0.066 ms (0.066 avg, 0% loss)",
            "::1       : [0], 64 bytes, 0.042 ms (0.042 avg, 0% loss)",
            "127.0.0.1 : [1], 64 bytes, 0.040 ms (0.053 avg, 0% loss)",
        ];
        let mut p = rtts(&two);
        for seq in 0..3 {
            assert_eq!(p.take(&journey(AF_INET, seq, 30_000)), None);
        }
    }

    #[test]
    fn the_oldest_lines_are_forgotten_first() {
        let mut lines = vec!["PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.".to_string()];
        // Sequence numbers past a wrap: 65000.., then 0..
        for i in 0..MAX_PING_RTTS as u32 + 10 {
            let seq = (65_000 + i) % 65_536;
            lines.push(format!(
                "64 bytes from 127.0.0.1: icmp_seq={seq} ttl=64 time=0.045 ms"
            ));
        }
        let refs: Vec<&str> = lines.iter().map(|s| s.as_str()).collect();
        let mut p = rtts(&refs);
        assert_eq!(p.take(&journey(AF_INET, 65_000, 1)), None);
        assert_eq!(p.take(&journey(AF_INET, 65_020, 1)), Some(45_000));
        let newest = ((65_000 + MAX_PING_RTTS as u32 + 9) % 65_536) as u16;
        assert_eq!(p.take(&journey(AF_INET, newest, 1)), Some(45_000));
    }
}

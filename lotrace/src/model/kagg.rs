//! `trace --summary-only`: the statistics the programs aggregated in the
//! kernel, turned into the same [`Stats`] a streamed trace builds. Pure:
//! the loader reads the maps, this takes their contents.

use lotrace_common::{
    Stage,
    agg::{self, RowAgg, counters},
};

use crate::model::{
    flow::Proto,
    journey::Leg,
    stats::{Histogram, KernelOutcomes, PacketStats, Row, Stats},
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
    /// TCP and UDP: per row (see [`agg::FLOW_ROWS`]), its value on each
    /// CPU; and the flows followed.
    pub flow_rows: Vec<Vec<RowAgg>>,
    pub flows: u64,
}

impl KernelAgg {
    fn counter(&self, i: u32) -> u64 {
        self.counters.get(i as usize).copied().unwrap_or(0)
    }
}

/// The TCP and UDP packets' statistics the programs aggregated: packets
/// per protocol and each stage's time since the packet's previous one
/// (how far each went, and exchanges, are not aggregated).
pub fn packet_stats(k: &KernelAgg) -> PacketStats {
    let mut ps = PacketStats {
        flows: k.flows,
        ..PacketStats::default()
    };
    for (i, data) in k.flow_rows.iter().enumerate() {
        let n = count(data);
        if n == 0 {
            continue;
        }
        if i >= agg::STAGE_ROWS {
            let proto = if i == agg::flow_packets_row(true) {
                Proto::Tcp
            } else {
                Proto::Udp
            };
            ps.packets.insert(proto, n);
            continue;
        }
        let (tcp, stage, at_return) = agg::row_parts(i);
        let Some(stage) = Stage::from_u8(stage) else {
            continue;
        };
        let proto = if tcp { Proto::Tcp } else { Proto::Udp };
        ps.rows
            .insert((proto, stage.rank(), at_return), (stage, histogram(data).0));
    }
    ps
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
    let answered = k.counter(counters::ANSWERED);
    let complete = k.counter(counters::COMPLETE);
    let o = KernelOutcomes {
        answered: complete,
        answered_incomplete: answered.saturating_sub(complete),
        dropped: k.counter(counters::DROPPED),
        no_route: k.counter(counters::NO_ROUTE),
        unfinished: 0,
        unassigned_events: k.counter(counters::UNASSIGNED),
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
    s.softirq.inline = k.counter(counters::SOFTIRQ_INLINE);
    s.softirq.ksoftirqd = k.counter(counters::SOFTIRQ_KSOFTIRQD);
    s.softirq.backlog_thread = k.counter(counters::BACKLOG_THREAD);
    s.in_kernel = Some(o);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
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

    /// The programs' TCP and UDP rows: packets per protocol, and each
    /// stage's time since the packet's previous one.
    #[test]
    fn kernel_flow_rows_become_packet_statistics() {
        let mut k = KernelAgg {
            flow_rows: vec![Vec::new(); agg::FLOW_ROWS],
            flows: 3,
            ..KernelAgg::default()
        };
        k.flow_rows[agg::flow_packets_row(true)] = row_data(&[&[0, 0], &[0]], 0);
        k.flow_rows[agg::flow_packets_row(false)] = row_data(&[&[0]], 0);
        k.flow_rows[row(true, Stage::NetifRx as u8, false)] = row_data(&[&[300], &[500, 400]], 0);
        k.flow_rows[row(false, Stage::SockRecvmsg as u8, true)] = row_data(&[&[2000]], 0);
        let ps = packet_stats(&k);
        assert_eq!(ps.flows, 3);
        assert_eq!(ps.packets[&Proto::Tcp], 3);
        assert_eq!(ps.packets[&Proto::Udp], 1);
        let (stage, h) = &ps.rows[&(Proto::Tcp, Stage::NetifRx.rank(), false)];
        assert_eq!(
            (*stage, h.count, h.min, h.max),
            (Stage::NetifRx, 3, 300, 500)
        );
        let (stage, h) = &ps.rows[&(Proto::Udp, Stage::SockRecvmsg.rank(), true)];
        assert_eq!((*stage, h.count), (Stage::SockRecvmsg, 1));
        assert_eq!(ps.rows.len(), 2);
    }

    #[test]
    fn kernel_rows_become_the_streamed_statistics() {
        let mut k = KernelAgg {
            rows: vec![Vec::new(); agg::ROWS],
            counters: vec![0; counters::COUNT as usize],
            ..KernelAgg::default()
        };
        let send = row(false, Stage::Sendto as u8, false);
        let rx = row(true, Stage::NetifRx as u8, false);
        k.rows[send] = row_data(&[&[0, 0], &[0]], 0);
        k.rows[rx] = row_data(&[&[300, 500], &[], &[400]], 9000);
        k.rows[agg::RTT_ROW] = row_data(&[&[9000], &[10_000, 11_000]], 0);
        k.counters[counters::OPENED as usize] = 5;
        k.counters[counters::ANSWERED as usize] = 3;
        k.counters[counters::COMPLETE as usize] = 2;
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
        assert_eq!(s.softirq.ksoftirqd, 3);
    }
}

/// The same event streams through both views of the journey's meaning: the
/// journey builder (streamed) and the programs' aggregation (`Effects`
/// applied to arrays as the programs apply them to their maps).
#[cfg(test)]
mod same_meaning {
    use std::collections::BTreeMap;

    use lotrace_common::{
        Event, PktKey, ProbeId, Stage,
        assemble::{Fits, SlotHead, fits, slot_index},
        event::{AF_INET6, FLAG_NET_RX, SOCK_DGRAM, SOCK_RAW, is_echo_reply},
        journey::{Echo, Obs, Ran, Rules, Sink, on_path, starts_rtt},
    };

    use super::*;
    use crate::model::{
        builder::JourneyBuilder,
        journey::{
            Outcome, expected_for,
            tests::{backlog_threaded, echo, ev},
        },
        stats::Stats,
    };

    /// One CPU's maps.
    struct Arrays {
        rows: Vec<RowAgg>,
        counters: Vec<u64>,
    }

    impl Sink for Arrays {
        fn record(&mut self, row: usize, v: u64, since_send: i64) {
            self.rows[row].record(v, since_send);
        }
        fn add(&mut self, counter: u32, n: u64) {
            let c = &mut self.counters[counter as usize];
            *c = c.wrapping_add(n);
        }
    }

    fn covered() -> Vec<Stage> {
        let mut c: Vec<Stage> = lotrace_common::catalog::PROBES
            .iter()
            .filter(|p| p.tracepoint().is_some())
            .filter_map(|p| p.stage)
            .collect();
        c.dedup();
        c
    }

    /// The programs' view: each event as it happens, on its CPU, given to
    /// the echo its slot holds by the slots' rules.
    fn in_kernel(events: &[Event]) -> KernelAgg {
        let rules = Rules::for_covered(&covered());
        let mut cpus: BTreeMap<u32, Arrays> = BTreeMap::new();
        let mut slots: BTreeMap<u32, (SlotHead, Echo)> = BTreeMap::new();
        let mut sorted = events.to_vec();
        sorted.sort_by_key(|e| e.ts_ns);
        for e in &sorted {
            let probe = ProbeId::from_u8(e.probe).unwrap();
            let ipv6 = e.family == AF_INET6;
            let reply = is_echo_reply(e.family, e.icmp_type);
            let key = PktKey {
                icmp_id: e.icmp_id,
                icmp_seq: e.icmp_seq,
                family: e.family,
                icmp_type: e.icmp_type,
                valid: 1,
                delivered: 0,
            };
            let obs = Obs::of_fields(
                is_echo_reply(e.family, e.icmp_type),
                e.stage,
                probe.info().at_return,
                e.ts_ns,
                e.len,
                e.aux2,
                e.skb,
                Ran::of(e.flags & FLAG_NET_RX != 0, &e.comm),
            );
            let sink = cpus.entry(e.cpu).or_insert_with(|| Arrays {
                rows: vec![RowAgg::zeroed(); agg::ROWS],
                counters: vec![0; counters::COUNT as usize],
            });
            let (head, echo) = slots.entry(slot_index(e.family, e.icmp_seq)).or_default();
            if starts_rtt(reply, e.stage) {
                head.claim(&key, e.tid, e.ts_ns);
            }
            match fits(head, &key, reply, e.tid, e.flags & FLAG_NET_RX != 0) {
                Fits::No => {
                    sink.add(counters::UNASSIGNED, 1);
                    continue;
                }
                Fits::PacketId => head.packet_id = e.icmp_id,
                Fits::Yes => {}
            }
            echo.observe(&obs, ipv6, &rules).apply(sink);
        }
        let mut k = KernelAgg {
            rows: vec![Vec::new(); agg::ROWS],
            counters: vec![0; counters::COUNT as usize],
            ..KernelAgg::default()
        };
        for a in cpus.values() {
            for (r, v) in a.rows.iter().enumerate() {
                k.rows[r].push(*v);
            }
            for (c, v) in a.counters.iter().enumerate() {
                k.counters[c] = k.counters[c].wrapping_add(*v);
            }
        }
        k
    }

    /// The streamed view: journeys built, then counted.
    fn streamed(events: &[Event]) -> (Stats, KernelOutcomes) {
        let mut b = JourneyBuilder::new(expected_for(&covered()), 1_000_000_000);
        let mut journeys = Vec::new();
        for e in events {
            journeys.extend(b.push(*e));
        }
        journeys.extend(b.finish());
        let mut s = Stats::default();
        let mut o = KernelOutcomes::default();
        for j in &journeys {
            s.add(j);
            match j.outcome {
                Outcome::Answered if j.complete() => o.answered += 1,
                Outcome::Answered => o.answered_incomplete += 1,
                Outcome::Dropped { .. } => o.dropped += 1,
                Outcome::NoRoute { .. } => o.no_route += 1,
                Outcome::Unanswered => o.unfinished += 1,
            }
        }
        (s, o)
    }

    fn assert_same(name: &str, events: &[Event]) -> KernelOutcomes {
        let (want, outcomes) = streamed(events);
        let got = stats(&in_kernel(events));
        assert_eq!(got.in_kernel, Some(outcomes), "{name}: outcomes");
        assert_eq!(got.journeys, want.journeys, "{name}: journeys");
        assert_eq!(got.order(), want.order(), "{name}: row order");
        for (row, h) in &want.rows {
            let k = &got.rows[row];
            assert_eq!(
                (k.count, k.sum, k.min, k.max),
                (h.count, h.sum, h.min, h.max),
                "{name}: {} {}",
                row.leg.name(),
                row.label()
            );
            assert_eq!(k.nonzero_buckets(), h.nonzero_buckets(), "{name}");
        }
        assert_eq!(got.rows.len(), want.rows.len(), "{name}: rows");
        let rtt = |s: &Stats| (s.rtt.count, s.rtt.sum, s.rtt.min, s.rtt.max);
        assert_eq!(rtt(&got), rtt(&want), "{name}: RTT");
        assert_eq!(
            (
                got.softirq.inline,
                got.softirq.ksoftirqd,
                got.softirq.backlog_thread
            ),
            (
                want.softirq.inline,
                want.softirq.ksoftirqd,
                want.softirq.backlog_thread
            ),
            "{name}: softirq"
        );
        assert_eq!(got.sockets, want.sockets, "{name}: sockets");
        assert_eq!(got.families, want.families, "{name}: families");
        outcomes
    }

    fn without(mut evs: Vec<Event>, stage: Stage, reply: bool) -> Vec<Event> {
        evs.retain(|e| !(e.stage == stage as u8 && is_echo_reply(e.family, e.icmp_type) == reply));
        evs
    }

    /// Only the request leg, up to (and not including) `stop`.
    fn request_until(seq: u16, base: u64, stop: Stage) -> Vec<Event> {
        echo(seq, base)
            .into_iter()
            .filter(|e| !is_echo_reply(e.family, e.icmp_type))
            .take_while(|e| e.stage != stop as u8)
            .collect()
    }

    /// Two pings' echoes with one sequence in flight at once (another
    /// id): the second's send takes the slot, and what is left of the
    /// first is counted, not mixed into the second's rows.
    #[test]
    fn an_echo_whose_slot_another_took_is_counted_not_mixed() {
        let first = echo(9, 1_000_000);
        let mut second = echo(9, 1_000_000 + 2_100);
        for e in &mut second {
            e.icmp_id = 8;
            e.tid = 200;
            e.tgid = 200;
        }
        // The second's send comes after the first's dev_queue_xmit.
        let after = first.iter().filter(|e| e.ts_ns > 1_000_000 + 2_100).count() as u64;
        let mut both = first.clone();
        both.extend(second.iter().copied());
        let got = stats(&in_kernel(&both));
        let o = got.in_kernel.unwrap();
        assert_eq!((o.answered, o.unfinished), (1, 1), "{o:?}");
        assert_eq!(o.unassigned_events, after);
        // The answered echo's rows are the second's alone.
        let alone = stats(&in_kernel(&second));
        assert_eq!(got.rtt.count, 1);
        assert_eq!(got.rtt.sum, alone.rtt.sum);
        // Streamed, both are whole journeys.
        assert_eq!(streamed(&both).1.answered, 2);
    }

    #[test]
    fn both_views_agree_on_every_kind_of_echo() {
        let at = |seq: u16| 1_000_000 + seq as u64 * 100_000;
        let mut all = Vec::new();
        let mut expect = KernelOutcomes::default();
        let mut case = |name: &str, evs: Vec<Event>, o: KernelOutcomes| {
            assert_eq!(assert_same(name, &evs), o, "{name}");
            all.extend(evs);
            expect.answered += o.answered;
            expect.answered_incomplete += o.answered_incomplete;
            expect.dropped += o.dropped;
            expect.no_route += o.no_route;
            expect.unfinished += o.unfinished;
        };
        let one = |f: fn(&mut KernelOutcomes)| {
            let mut o = KernelOutcomes::default();
            f(&mut o);
            o
        };
        case("answered", echo(1, at(1)), one(|o| o.answered = 1));
        case(
            "answered, a lost event",
            without(echo(2, at(2)), Stage::SockDeliver, true),
            one(|o| o.answered_incomplete = 1),
        );
        case(
            "answered, its recvmsg unseen",
            without(echo(3, at(3)), Stage::Recvmsg, true),
            one(|o| o.answered_incomplete = 1),
        );
        // ping took the reply from its socket, and returned, before the
        // receiving CPU called the socket's data-ready: whole all the same.
        let mut late = echo(21, at(21));
        let close = late
            .iter()
            .filter(|e| e.stage == Stage::Recvmsg as u8)
            .map(|e| e.ts_ns)
            .max()
            .unwrap();
        for e in late
            .iter_mut()
            .filter(|e| e.stage == Stage::SockDeliver as u8)
        {
            e.ts_ns = close + 500;
        }
        case(
            "answered, its delivery seen after ping's return",
            late,
            one(|o| o.answered = 1),
        );
        let mut dropped = request_until(4, at(4), Stage::NetifReceiveSkb);
        dropped.push(ev(at(4) + 4100, Stage::Drop, ProbeId::KfreeSkb, false, 4));
        case("dropped", dropped, one(|o| o.dropped = 1));
        // A clone of the request dropped on the way (a tap), the echo
        // answered all the same.
        let mut clone = echo(5, at(5));
        clone.push(ev(at(5) + 4100, Stage::Drop, ProbeId::KfreeSkb, false, 5));
        case("clone dropped, answered", clone, one(|o| o.answered = 1));
        // A lookup that missed one table before another matched.
        let mut missed = echo(6, at(6));
        let mut miss = ev(at(6) + 800, Stage::Route, ProbeId::FibTableLookup, false, 6);
        miss.len = (-11i32) as u32;
        missed.push(miss);
        case("a table missed, answered", missed, one(|o| o.answered = 1));
        // IPv6's local table misses every other address (-EHOSTUNREACH)
        // before the main table routes it: sent, never answered, and not
        // "no route".
        let mut sent = request_until(14, at(14), Stage::LoopbackXmit);
        let mut miss = ev(
            at(14) + 800,
            Stage::Route,
            ProbeId::FibTableLookup,
            false,
            14,
        );
        miss.len = (-113i32) as u32;
        sent.push(miss);
        case(
            "a table missed, sent, unanswered",
            sent,
            one(|o| o.unfinished = 1),
        );
        let mut unroutable = request_until(7, at(7), Stage::Route);
        let mut fail = ev(at(7) + 900, Stage::Route, ProbeId::FibTableLookup, false, 7);
        fail.len = (-101i32) as u32;
        unroutable.push(fail);
        case("no route", unroutable, one(|o| o.no_route = 1));
        let mut both = unroutable_then_dropped(8, at(8));
        case(
            "no route, then dropped",
            std::mem::take(&mut both),
            one(|o| o.dropped = 1),
        );
        // A table missed and a clone dropped: the answer overrules both.
        let mut overruled = echo(13, at(13));
        let mut miss = ev(
            at(13) + 800,
            Stage::Route,
            ProbeId::FibTableLookup,
            false,
            13,
        );
        miss.len = (-11i32) as u32;
        overruled.push(miss);
        overruled.push(ev(at(13) + 4100, Stage::Drop, ProbeId::KfreeSkb, false, 13));
        case(
            "missed, dropped, answered",
            overruled,
            one(|o| o.answered = 1),
        );
        case(
            "unanswered",
            request_until(9, at(9), Stage::SockSendmsg),
            one(|o| o.unfinished = 1),
        );
        let mut handed = echo(10, at(10));
        for e in handed.iter_mut().filter(|e| e.flags & FLAG_NET_RX != 0) {
            e.comm = *b"ksoftirqd/2\0\0\0\0\0";
        }
        case("ksoftirqd", handed, one(|o| o.answered = 1));
        case(
            "a backlog thread",
            backlog_threaded(18, at(18)),
            one(|o| o.answered = 1),
        );
        let mut raw = echo(11, at(11));
        let mut dgram = echo(12, at(12));
        for (evs, kind) in [(&mut raw, SOCK_RAW), (&mut dgram, SOCK_DGRAM)] {
            for e in evs
                .iter_mut()
                .filter(|e| e.stage == Stage::DevQueueXmit as u8)
            {
                e.aux2 = kind;
            }
        }
        case("raw socket", raw, one(|o| o.answered = 1));
        case("datagram socket", dgram, one(|o| o.answered = 1));
        // A copy of the request (another raw socket's, a tap's) dropped,
        // the request itself never answered: not "dropped".
        let mut copy = request_until(15, at(15), Stage::SockDeliver);
        for e in copy.iter_mut().filter(|e| on_path(e.stage)) {
            e.skb = 0xa000;
        }
        let mut lost = ev(at(15) + 4600, Stage::Drop, ProbeId::KfreeSkb, false, 15);
        lost.skb = 0xb000;
        copy.push(lost);
        case(
            "a copy dropped, unanswered",
            copy,
            one(|o| o.unfinished = 1),
        );
        // The same drop of the request's own skb.
        let mut own = request_until(16, at(16), Stage::SockDeliver);
        for e in own.iter_mut().filter(|e| on_path(e.stage)) {
            e.skb = 0xa000;
        }
        let mut lost = ev(at(16) + 4600, Stage::Drop, ProbeId::KfreeSkb, false, 16);
        lost.skb = 0xa000;
        own.push(lost);
        case("its own skb dropped", own, one(|o| o.dropped = 1));
        // Received in the middle of a NET_RX run that began, and ended,
        // under other echoes' packets: nothing was lost.
        let middle = echo(17, at(17))
            .into_iter()
            .filter(|e| e.stage != Stage::NetRxAction as u8)
            .collect();
        case("in the middle of a run", middle, one(|o| o.answered = 1));
        // All of them at once, interleaved as on a busy machine.
        assert_eq!(assert_same("all", &all), expect);
    }

    fn unroutable_then_dropped(seq: u16, base: u64) -> Vec<Event> {
        let mut evs = request_until(seq, base, Stage::Route);
        let mut fail = ev(
            base + 900,
            Stage::Route,
            ProbeId::FibTableLookup,
            false,
            seq,
        );
        fail.len = (-11i32) as u32;
        evs.push(fail);
        evs.push(ev(base + 1500, Stage::Drop, ProbeId::KfreeSkb, false, seq));
        evs
    }
}

//! The journey builder: raw events in, one journey per echo (request leg and
//! reply leg, paired by family, id and sequence) out. Pure: no kernel, no
//! clock, no I/O.

use std::collections::BTreeMap;

use crate::model::detail::StageDetail;
use lotrace_common::{
    Event, ProbeId, Stage,
    agg::counters,
    event::{AF_INET6, FLAG_FRAGMENT, FLAG_NET_RX, FLAG_PACKET, is_echo_reply, is_echo_request},
    journey::{
        ECHO_SOCK, Echo, End, Masks, Rules, also_meets, builds, close_stage, closes,
        still_expected, unroutable,
    },
};

use crate::model::journey::*;

type Key = (u8, u16, u16);

/// A hasher for the builder's small integer keys: every event looks its
/// journey up, and std's default (SipHash, made to resist chosen keys)
/// costs more than the rest of the lookup. The keys are echo ids and
/// sequences.
#[derive(Clone, Copy, Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(n as u64);
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(n as u64);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<KeyHasher>>;

struct Open {
    events: Vec<Event>,
    first_ts: u64,
    last_ts: u64,
    /// Its close stage (ping's receive returning the reply) was seen.
    ended: bool,
}

/// How long a journey whose close stage was seen waits for stragglers
/// (other CPUs' events, ping's own line) before it is shown: with the
/// 10 ms drain, a journey is on screen about 60 ms after it ended, not a
/// whole quiet period later.
pub const ENDED_GRACE_NS: u64 = 50_000_000;

/// Shown journeys remembered, so that a straggler is not taken for a new
/// journey; past this many, those older than a quiet period go.
const SHOWN_MAX: usize = 65536;

/// Groups a stream of events into journeys. Events may arrive out of order
/// (per-CPU producers share one ring); a journey is closed once no event
/// has touched it for `quiet_ns`, or at the end.
pub struct JourneyBuilder {
    open: FastMap<Key, Open>,
    /// Ids rewritten by a datagram socket: (family, ping's id, seq, thread)
    /// → the packet's id, for the send's events that come after.
    aliases: BTreeMap<(u8, u16, u16, u32), u16>,
    /// Journeys opened by a send: (family, seq, thread) → their key, so a
    /// datagram socket's packet finds its send without a scan.
    sends: FastMap<(u8, u16, u32), Key>,
    expected: Vec<Expected>,
    /// The reply stage that ends a journey (see `Rules::close_stage`),
    /// when this trace observes it.
    close_stage: Option<Stage>,
    /// Journeys already built: key → their last event's time. An event of
    /// one that comes within a quiet period after it is a straggler.
    shown: FastMap<Key, u64>,
    quiet_ns: u64,
    max_open: usize,
    /// Events that carried no packet identity or an unknown stage, or came
    /// after their journey had been built.
    pub discarded: u64,
}

impl JourneyBuilder {
    pub fn new(expected: Vec<Expected>, quiet_ns: u64) -> JourneyBuilder {
        let has = |st: Stage| expected.iter().any(|e| e.stage == st);
        let close = close_stage(has(Stage::Recvmsg), has(Stage::CopyToUser));
        JourneyBuilder {
            open: FastMap::default(),
            aliases: BTreeMap::new(),
            sends: FastMap::default(),
            close_stage: Some(close).filter(|st| has(*st)),
            shown: FastMap::default(),
            expected,
            quiet_ns,
            max_open: 4096,
            discarded: 0,
        }
    }

    /// Bounds memory under floods: past this many open journeys the oldest
    /// is closed early.
    pub fn with_max_open(mut self, n: usize) -> JourneyBuilder {
        self.max_open = n.max(1);
        self
    }

    /// Adds an event; returns journeys closed early to stay within bounds.
    pub fn push(&mut self, mut ev: Event) -> Vec<Journey> {
        if let Some(id) = self
            .aliases
            .get(&(ev.family, ev.icmp_id, ev.icmp_seq, ev.tid))
            .filter(|_| is_echo_request(ev.family, ev.icmp_type))
        {
            ev.icmp_id = *id;
        }
        if ev.flags & FLAG_PACKET == 0
            || Stage::from_u8(ev.stage).is_none()
            || ProbeId::from_u8(ev.probe).is_none()
            || !(is_echo_request(ev.family, ev.icmp_type) || is_echo_reply(ev.family, ev.icmp_type))
        {
            self.discarded += 1;
            return Vec::new();
        }
        let key = (ev.family, ev.icmp_id, ev.icmp_seq);
        if let Some(&last) = self.shown.get(&key) {
            if ev.ts_ns <= last.saturating_add(self.quiet_ns) {
                self.discarded += 1;
                return Vec::new();
            }
            self.shown.remove(&key);
        }
        self.adopt_send(&ev, key);
        let o = self.open.entry(key).or_insert(Open {
            events: Vec::new(),
            first_ts: ev.ts_ns,
            last_ts: ev.ts_ns,
            ended: false,
        });
        if let Some(close) = self.close_stage
            && closes(
                is_echo_reply(ev.family, ev.icmp_type),
                ev.stage,
                close as u8,
            )
        {
            o.ended = true;
        }
        o.first_ts = o.first_ts.min(ev.ts_ns);
        o.last_ts = o.last_ts.max(ev.ts_ns);
        // A single journey has a few dozen events; a runaway one (an id and
        // sequence reused while still open) is cut rather than grown.
        if o.events.len() < 512 {
            o.events.push(ev);
        }
        if ev.stage == Stage::Sendto as u8 && is_echo_request(ev.family, ev.icmp_type) {
            if self.sends.len() >= 4096 {
                self.sends.clear();
            }
            self.sends.insert((key.0, key.2, ev.tid), key);
        }
        if self.open.len() <= self.max_open {
            return Vec::new();
        }
        // Over the bound: close the oldest eighth at once, so that a flood
        // costs one pass per many events rather than one per event.
        let mut by_age: Vec<(u64, Key)> = self.open.iter().map(|(k, o)| (o.first_ts, *k)).collect();
        let n = (self.open.len() - self.max_open + self.max_open / 8).min(by_age.len());
        if n < by_age.len() {
            by_age.select_nth_unstable(n);
        }
        by_age.truncate(n);
        self.close(by_age.into_iter().map(|(_, k)| k).collect())
    }

    /// An ICMP datagram socket replaces the id ping wrote with its own: the
    /// send's first events (read from ping's buffer) carry ping's id, the
    /// packet the socket's. When the packet first reaches the device layer
    /// in the sending thread, the send's events open under another id with
    /// the same sequence are moved to the packet's journey.
    fn adopt_send(&mut self, ev: &Event, key: Key) {
        if !builds(ev.stage)
            || !is_echo_request(ev.family, ev.icmp_type)
            || ev.flags & FLAG_NET_RX != 0
        {
            return;
        }
        let orphan = self
            .sends
            .get(&(key.0, key.2, ev.tid))
            .copied()
            .filter(|k| k.1 != key.1)
            .filter(|k| {
                self.open
                    .get(k)
                    .is_some_and(|o| !o.events.iter().any(|e| builds(e.stage)))
            });
        if orphan.is_some() {
            self.sends.remove(&(key.0, key.2, ev.tid));
        }
        if let Some(k) = orphan
            && let Some(mut o) = self.open.remove(&k)
        {
            // Bounded: one alias per send in flight is plenty.
            if self.aliases.len() >= 1024 {
                self.aliases.pop_first();
            }
            self.aliases.insert((k.0, k.1, k.2, ev.tid), key.1);
            for e in o.events.iter_mut() {
                e.icmp_id = key.1;
            }
            match self.open.get_mut(&key) {
                // The packet's first stage is in already (ip_output, then
                // dev_queue_xmit here).
                Some(p) => {
                    p.events.append(&mut o.events);
                    p.first_ts = p.first_ts.min(o.first_ts);
                    p.last_ts = p.last_ts.max(o.last_ts);
                }
                None => {
                    self.open.insert(key, o);
                }
            }
        }
    }

    /// Closes, as of `now_ns` (same clock as the events), oldest first, the
    /// journeys that have been quiet for `quiet_ns`, and those that ended
    /// (their close stage seen) and have been quiet for
    /// [`ENDED_GRACE_NS`].
    pub fn take_ready(&mut self, now_ns: u64) -> Vec<Journey> {
        let grace = ENDED_GRACE_NS.min(self.quiet_ns);
        let ready: Vec<Key> = self
            .open
            .iter()
            .filter(|(_, o)| {
                let wait = if o.ended { grace } else { self.quiet_ns };
                o.last_ts.saturating_add(wait) <= now_ns
            })
            .map(|(k, _)| *k)
            .collect();
        let quiet = self.quiet_ns;
        self.shown
            .retain(|_, last| last.saturating_add(quiet) > now_ns);
        self.close(ready)
    }

    /// Closes every open journey, oldest first.
    pub fn finish(&mut self) -> Vec<Journey> {
        let all: Vec<Key> = self.open.keys().copied().collect();
        self.close(all)
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Builds the journeys of `keys`, oldest first (by key among those
    /// that began at once, so the order never depends on the map's).
    fn close(&mut self, keys: Vec<Key>) -> Vec<Journey> {
        let mut opens: Vec<(Key, Open)> = keys
            .into_iter()
            .filter_map(|k| Some((k, self.open.remove(&k)?)))
            .collect();
        opens.sort_by_key(|(k, o)| (o.first_ts, *k));
        if self.shown.len() + opens.len() > SHOWN_MAX {
            let newest = opens.iter().map(|(_, o)| o.last_ts).max().unwrap_or(0);
            let quiet = self.quiet_ns;
            self.shown
                .retain(|_, last| last.saturating_add(quiet) > newest);
        }
        for (k, o) in &opens {
            self.shown.insert(*k, o.last_ts);
        }
        opens.into_iter().map(|(_, o)| self.build(o)).collect()
    }

    fn build(&self, o: Open) -> Journey {
        build_journey(o.events, &self.expected)
    }
}

fn leg_of(ev: &Event) -> Leg {
    if is_echo_request(ev.family, ev.icmp_type) {
        Leg::Request
    } else {
        Leg::Reply
    }
}

/// One event as a hop of its journey: `t0` is when the journey began,
/// `prev` the previous hop's time. `None` for an unknown stage or probe.
pub(crate) fn hop(ev: &Event, leg: Leg, t0: u64, prev: u64) -> Option<Hop> {
    let (Some(stage), Some(probe)) = (Stage::from_u8(ev.stage), ProbeId::from_u8(ev.probe)) else {
        return None;
    };
    let at_return = probe.info().at_return;
    Some(Hop {
        leg,
        stage,
        probe,
        ts_ns: ev.ts_ns,
        // In i128: a replayed file's timestamps may be anything.
        t_ns: (ev.ts_ns as i128 - t0 as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        delta_ns: ev.ts_ns.saturating_sub(prev),
        cpu: ev.cpu,
        pid: ev.tid,
        tgid: ev.tgid,
        comm: Comm(ev.comm),
        context: Context::of(ev),
        softirq_run: ev.softirq_run,
        skb: ev.skb,
        fragment: ev.flags & FLAG_FRAGMENT != 0,
        detail: StageDetail::decode(ev, stage, at_return),
    })
}

/// Builds one journey from its events, in any order.
pub fn build_journey(mut events: Vec<Event>, expected: &[Expected]) -> Journey {
    events.sort_by_key(|e| (e.ts_ns, leg_of(e), e.stage, e.probe));
    let first = events.first().copied().unwrap_or_default();
    let send_ts = events
        .iter()
        .find(|e| leg_of(e) == Leg::Request && e.stage == Stage::Sendto as u8)
        .map(|e| e.ts_ns);
    let t0 = send_ts.unwrap_or(first.ts_ns);
    let mut hops = Vec::with_capacity(events.len());
    let mut prev = first.ts_ns;
    for ev in &events {
        let Some(h) = hop(ev, leg_of(ev), t0, prev) else {
            continue;
        };
        hops.push(h);
        prev = ev.ts_ns;
    }
    let total_ns = hops.last().map(|h| h.ts_ns - first.ts_ns).unwrap_or(0);
    // The journey's meaning, decided as the programs decide it.
    let rules = Rules {
        close_stage: u8::MAX,
        expect: Masks::default(),
    };
    let mut echo = Echo::default();
    let (mut rtt_ns, mut sock_type, mut drop_reason) = (None, 0, 0);
    for h in &hops {
        let had_sock = echo.flags & ECHO_SOCK != 0;
        let fx = echo.observe(&h.obs(), first.family == AF_INET6, &rules);
        rtt_ns = rtt_ns.or(fx.rtt);
        if !had_sock && echo.flags & ECHO_SOCK != 0 {
            sock_type = h.obs().sock_type;
        }
        if fx.count == counters::DROPPED
            && let Some(StageDetail::Drop { reason }) = h.detail
        {
            drop_reason = reason;
        }
    }
    let has = |leg: Option<Leg>, stage: Stage| {
        hops.iter().any(|h| {
            leg.is_none_or(|l| l == h.leg)
                && (h.stage == stage || also_meets(h.stage as u8, h.context.ran()) == Some(stage))
        })
    };
    let softirq_of = |leg: Leg| {
        let rx = hops
            .iter()
            .find(|h| h.leg == leg && h.stage == Stage::NetifReceiveSkb)
            .filter(|h| h.context != Context::Task)?;
        // The run that received it: its start carries the same run number,
        // counted per CPU. It is missing when the run began under another
        // journey's packet.
        let start = hops.iter().rev().find(|h| {
            h.stage == Stage::NetRxAction
                && !h.probe.info().at_return
                && h.cpu == rx.cpu
                && h.softirq_run == rx.softirq_run
                && h.ts_ns <= rx.ts_ns
        });
        let enqueue = hops
            .iter()
            .rev()
            .find(|h| h.leg == leg && h.stage == Stage::NetifRx && h.ts_ns <= rx.ts_ns);
        // A run that began under another echo's packet: the receive
        // itself says when.
        let start_ts = start.map(|s| s.ts_ns).or(match rx.detail {
            Some(StageDetail::InRun { began_ns }) if began_ns <= rx.ts_ns => Some(began_ns),
            _ => None,
        });
        let wait_ns = match (enqueue, start_ts) {
            (Some(r), Some(s)) if s >= r.ts_ns => Some(s - r.ts_ns),
            _ => None,
        };
        let sender = hops
            .iter()
            .find(|h| h.leg == Leg::Request && h.stage == Stage::Sendto);
        let send_returned = hops.iter().find(|h| {
            h.leg == Leg::Request && h.stage == Stage::SockSendmsg && h.probe.info().at_return
        });
        // The run began at its start, or at the latest when it received.
        let began = start_ts.unwrap_or(rx.ts_ns);
        let entered = match (&rx.context, sender) {
            (Context::Ksoftirqd, _) => Some("ksoftirqd"),
            (Context::BacklogThread, _) => Some("backlog_thread"),
            // In the sender before its send returned: loopback raises NET_RX
            // with bottom halves off, so the run is the bottom-half re-enable
            // at the end of dev_queue_xmit.
            (_, Some(snd))
                if rx.pid == snd.pid && send_returned.is_none_or(|r| began <= r.ts_ns) =>
            {
                Some("local_bh_enable")
            }
            // On the back of another task: its own local_bh_enable or an
            // interrupt's exit; the events do not tell which.
            (_, Some(snd)) if rx.pid != snd.pid => Some("another_task"),
            _ => None,
        };
        Some(SoftirqWhere {
            context: rx.context.clone(),
            cpu: rx.cpu,
            comm: rx.comm,
            pid: rx.pid,
            wait_ns,
            entered,
        })
    };
    let softirq = [softirq_of(Leg::Request), softirq_of(Leg::Reply)];
    let end = echo.end();
    let outcome = match end {
        End::Answered => Outcome::Answered,
        End::Dropped { after } => Outcome::Dropped {
            reason: drop_reason,
            after,
        },
        End::NoRoute => Outcome::NoRoute {
            err: hops
                .iter()
                .filter(|h| h.leg == Leg::Request)
                .map(|h| h.obs().route_err)
                .find(|&err| unroutable(err))
                .unwrap_or(0),
        },
        End::Unanswered => Outcome::Unanswered,
    };
    let missing = expected
        .iter()
        .filter(|e| still_expected(e, &end) && !has(e.leg, e.stage))
        .map(|e| (e.leg, e.stage))
        .collect();
    Journey {
        family: first.family,
        icmp_id: first.icmp_id,
        icmp_seq: first.icmp_seq,
        hops,
        rtt_ns,
        total_ns,
        missing,
        softirq,
        outcome,
        sock_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::journey::tests::{backlog_threaded, echo, ev};
    use lotrace_common::event::{ICMP_ECHO, ICMP_ECHOREPLY};

    /// What the tracepoints observe.
    fn all_probes() -> Vec<Stage> {
        lotrace_common::catalog::PROBES
            .iter()
            .filter(|p| p.tracepoint().is_some())
            .filter_map(|p| p.stage)
            .collect()
    }

    #[test]
    fn builds_a_loopback_echo() {
        let j = build_journey(echo(1, 1_000_000), &expected_for(&all_probes()));
        assert_eq!(j.icmp_seq, 1);
        assert_eq!(j.hops.len(), 22);
        assert!(j.complete(), "missing {:?}", j.missing);
        assert_eq!(j.rtt_ns, Some(6400));
        assert_eq!(j.total_ns, 12500);
        assert_eq!(j.hops.iter().map(|h| h.delta_ns).sum::<u64>(), j.total_ns);
        assert_eq!(j.leg(Leg::Request).count(), 11);
        assert_eq!(j.leg(Leg::Reply).count(), 11);
        let s = j.softirq[0].as_ref().unwrap();
        assert_eq!(s.context, Context::SoftirqInline);
        assert_eq!(j.hops[0].t_ns, 0);
        assert_eq!(j.hops.last().unwrap().t_ns, 12500);
    }

    /// The reply received in a later run, on the back of another task,
    /// whose start was reported under another journey: an earlier run's
    /// start on the same CPU says nothing of it.
    #[test]
    fn a_receive_belongs_to_its_own_run() {
        let mut evs = echo(1, 1_000_000);
        for e in evs
            .iter_mut()
            .filter(|e| e.ts_ns >= 1_007_500 && e.ts_ns <= 1_008_500)
        {
            e.softirq_run = 2;
            e.tid = 200;
            e.tgid = 200;
            e.comm = *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        }
        let j = build_journey(evs, &expected_for(&all_probes()));
        let request = j.softirq[0].as_ref().unwrap();
        assert_eq!(
            (request.entered, request.wait_ns),
            (Some("local_bh_enable"), Some(1000))
        );
        let reply = j.softirq[1].as_ref().unwrap();
        assert_eq!(
            (reply.pid, reply.entered, reply.wait_ns),
            (200, Some("another_task"), None)
        );
    }

    /// An echo received in the middle of a NET_RX run that began, and
    /// ended, under other echoes' packets: complete, and its receive says
    /// when the run began.
    #[test]
    fn an_echo_in_the_middle_of_a_run_is_complete() {
        let mut evs: Vec<Event> = echo(1, 1_000_000)
            .into_iter()
            .filter(|e| e.stage != Stage::NetRxAction as u8)
            .collect();
        for e in evs
            .iter_mut()
            .filter(|e| e.stage == Stage::NetifReceiveSkb as u8)
        {
            e.aux = 1_002_900;
        }
        let j = build_journey(evs, &expected_for(&all_probes()));
        assert!(j.complete(), "missing {:?}", j.missing);
        assert!(j.hops.iter().all(|h| h.stage != Stage::NetRxAction));
        // Enqueued at 2500, the run began at 2900.
        assert_eq!(j.softirq[0].as_ref().unwrap().wait_ns, Some(400));
    }

    #[test]
    fn timestamps_far_apart_do_not_overflow() {
        // A replayed file is untrusted: its stages may be 2^64 ns apart.
        let mut evs = echo(1, 0);
        evs.last_mut().unwrap().ts_ns = u64::MAX;
        let j = build_journey(evs, &expected_for(&all_probes()));
        assert_eq!(j.hops.last().unwrap().t_ns, i64::MAX);
        assert_eq!(j.total_ns, u64::MAX);
    }

    #[test]
    fn out_of_order_stream_gives_the_same_journeys() {
        let mut stream = Vec::new();
        for seq in 1..=3u16 {
            stream.extend(echo(seq, seq as u64 * 1_000_000));
        }
        let mut shuffled = stream.clone();
        // A deterministic shuffle: reverse chunks as if CPUs interleaved.
        for chunk in shuffled.chunks_mut(5) {
            chunk.reverse();
        }
        shuffled.swap(0, 40);
        let run = |evs: Vec<Event>| {
            let mut b = JourneyBuilder::new(expected_for(&all_probes()), 100_000);
            let mut out = Vec::new();
            for e in evs {
                out.extend(b.push(e));
            }
            out.extend(b.finish());
            out
        };
        let a = run(stream);
        let b = run(shuffled);
        assert_eq!(a.len(), 3);
        assert_eq!(a, b);
        assert_eq!(
            a.iter().map(|j| j.icmp_seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn a_lost_event_marks_the_journey_incomplete() {
        let mut evs = echo(4, 0);
        evs.retain(|e| !(e.stage == Stage::NetifRx as u8 && e.icmp_type == ICMP_ECHOREPLY));
        let j = build_journey(evs, &expected_for(&all_probes()));
        assert!(!j.complete());
        assert_eq!(j.missing, vec![(Some(Leg::Reply), Stage::NetifRx)]);
        assert_eq!(j.rtt_ns, None, "no RTT is invented without its end");
    }

    #[test]
    fn quiet_journeys_close_and_busy_ones_stay_open() {
        let mut b = JourneyBuilder::new(Vec::new(), 1000);
        for e in echo(1, 0) {
            b.push(e);
        }
        for e in echo(2, 100_000).into_iter().take(3) {
            b.push(e);
        }
        let ready = b.take_ready(100_950);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].icmp_seq, 1);
        assert_eq!(b.open_count(), 1);
    }

    #[test]
    fn an_ended_journey_is_shown_after_a_grace_not_a_quiet_period() {
        let quiet = 1_000_000_000;
        let mut b = JourneyBuilder::new(expected_for(&all_probes()), quiet);
        let full = echo(1, 0);
        let last = full.iter().map(|e| e.ts_ns).max().unwrap();
        for e in full {
            b.push(e);
        }
        // Another echo's request, not answered yet.
        for e in echo(2, 10_000)
            .into_iter()
            .filter(|e| is_echo_request(e.family, e.icmp_type))
        {
            b.push(e);
        }
        assert!(b.take_ready(last + ENDED_GRACE_NS - 1).is_empty());
        let ready = b.take_ready(last + ENDED_GRACE_NS);
        assert_eq!(
            ready.iter().map(|j| j.icmp_seq).collect::<Vec<_>>(),
            vec![1]
        );
        assert!(ready[0].complete());
        assert_eq!(b.open_count(), 1, "the unanswered one waits for quiet");
    }

    #[test]
    fn a_straggler_of_a_shown_journey_is_not_a_new_one() {
        let quiet = 1_000_000_000;
        let mut b = JourneyBuilder::new(expected_for(&all_probes()), quiet);
        let full = echo(1, 0);
        let last = full.iter().map(|e| e.ts_ns).max().unwrap();
        let late = full[0];
        for e in full {
            b.push(e);
        }
        assert_eq!(b.take_ready(last + ENDED_GRACE_NS).len(), 1);
        let mut e = late;
        e.ts_ns = last + ENDED_GRACE_NS + 1;
        assert!(b.push(e).is_empty());
        assert_eq!(b.discarded, 1);
        assert_eq!(b.open_count(), 0);
        // A quiet period later the key is a new echo's (a wrapped sequence).
        e.ts_ns = last + quiet + 1;
        b.push(e);
        assert_eq!(b.open_count(), 1);
        assert_eq!(b.discarded, 1);
    }

    #[test]
    fn open_journeys_are_bounded() {
        let mut b = JourneyBuilder::new(Vec::new(), u64::MAX / 2).with_max_open(2);
        let mut closed = Vec::new();
        for seq in 0..5u16 {
            closed.extend(b.push(ev(
                seq as u64,
                Stage::Sendto,
                ProbeId::SysEnterSendto,
                false,
                seq,
            )));
        }
        assert_eq!(b.open_count(), 2);
        assert_eq!(
            closed.iter().map(|j| j.icmp_seq).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn events_without_identity_are_discarded() {
        let mut b = JourneyBuilder::new(Vec::new(), 10);
        let mut e = ev(1, Stage::Sendto, ProbeId::SysEnterSendto, false, 1);
        e.flags = 0;
        b.push(e);
        let mut e = ev(1, Stage::Sendto, ProbeId::SysEnterSendto, false, 1);
        e.stage = 200;
        b.push(e);
        assert_eq!(b.discarded, 2);
        assert!(b.finish().is_empty());
    }

    #[test]
    fn a_datagram_sockets_rewritten_id_joins_the_send() {
        // The socket turned ping's id 7 into 40000: sendto and the route
        // lookup carry 7, the packet 40000.
        let mut evs = echo(1, 0);
        for e in evs.iter_mut() {
            if !(e.stage == Stage::Sendto as u8
                || (e.stage == Stage::Route as u8 && e.icmp_type == ICMP_ECHO))
            {
                e.icmp_id = 40000;
            }
        }
        let mut b = JourneyBuilder::new(expected_for(&all_probes()), 1000);
        for e in evs {
            b.push(e);
        }
        // The send's return comes last, still under ping's id.
        let mut ret = ev(
            20_000,
            Stage::SockSendmsg,
            ProbeId::SockSendLength,
            false,
            1,
        );
        ret.icmp_id = 7;
        b.push(ret);
        let js = b.finish();
        assert_eq!(js.len(), 1, "{js:?}");
        assert_eq!(js[0].icmp_id, 40000);
        assert!(js[0].complete(), "{:?}", js[0].missing);
    }

    /// With function probes the packet's first stage is ip_output, before
    /// dev_queue_xmit: the send joins it there.
    #[test]
    fn a_datagram_send_joins_its_packet_at_ip_output() {
        let mut b = JourneyBuilder::new(expected_for(&all_probes()), 1000);
        for seq in 1..=2 {
            let base = seq as u64 * 100_000;
            let mut evs = echo(seq, base);
            evs.insert(
                2,
                ev(
                    base + 1500,
                    Stage::IpOutput,
                    ProbeId::KpIpOutput,
                    false,
                    seq,
                ),
            );
            for e in evs.iter_mut() {
                if !(e.stage == Stage::Sendto as u8
                    || (e.stage == Stage::Route as u8 && e.icmp_type == ICMP_ECHO))
                {
                    e.icmp_id = 40000;
                }
            }
            for e in evs {
                b.push(e);
            }
        }
        let js = b.finish();
        assert_eq!(js.len(), 2, "{js:?}");
        for j in &js {
            assert_eq!(j.icmp_id, 40000);
            assert!(j.hops.iter().any(|h| h.stage == Stage::Sendto));
            assert!(j.hops.iter().any(|h| h.stage == Stage::IpOutput));
        }
    }

    #[test]
    fn outcomes_and_socket_kind() {
        let mut evs = echo(1, 0);
        for e in evs
            .iter_mut()
            .filter(|e| e.stage == Stage::DevQueueXmit as u8)
        {
            e.aux2 = SOCK_RAW;
        }
        let j = build_journey(evs, &[]);
        assert_eq!(j.outcome, Outcome::Answered);
        assert_eq!(j.socket_name(), Some("raw"));
        let s = j.softirq[0].as_ref().unwrap();
        assert_eq!(s.wait_ns, Some(1000));
        assert_eq!(s.entered, Some("local_bh_enable"));
        // A request dropped after netif_receive_skb (by netfilter, say).
        let mut evs: Vec<Event> = echo(2, 0)
            .into_iter()
            .filter(|e| e.icmp_type == ICMP_ECHO && e.ts_ns <= 4000)
            .collect();
        let mut d = ev(4500, Stage::Drop, ProbeId::KfreeSkb, false, 2);
        d.aux = 6;
        evs.push(d);
        let j = build_journey(evs, &[]);
        assert_eq!(
            j.outcome,
            Outcome::Dropped {
                reason: 6,
                after: Some(Stage::NetifReceiveSkb)
            }
        );
        // No route: only the send and a failed lookup.
        let mut r = ev(900, Stage::Route, ProbeId::FibTableLookup, false, 3);
        r.len = (-101i32) as u32;
        let j = build_journey(
            vec![ev(0, Stage::Sendto, ProbeId::SysEnterSendto, false, 3), r],
            &[],
        );
        assert_eq!(j.outcome, Outcome::NoRoute { err: -101 });
    }

    /// IPv6 looks in the local table first, which fails for every other
    /// address; IPv4 under policy rules misses tables with -EAGAIN. Neither
    /// is "no route" once the packet is sent, answered or not; a failed
    /// lookup with nothing sent after it is.
    #[test]
    fn a_missed_table_is_not_no_route() {
        let lookup = |ts, err: i32| {
            let mut r = ev(ts, Stage::Route, ProbeId::FibTableLookup, false, 3);
            r.len = err as u32;
            r
        };
        let send = ev(0, Stage::Sendto, ProbeId::SysEnterSendto, false, 3);
        let xmit = ev(3000, Stage::DevQueueXmit, ProbeId::NetDevQueue, false, 3);
        let j = build_journey(vec![send, lookup(900, -113), lookup(1000, 0), xmit], &[]);
        assert_eq!(j.outcome, Outcome::Unanswered);
        let j = build_journey(vec![send, lookup(900, -11), lookup(1000, 0), xmit], &[]);
        assert_eq!(j.outcome, Outcome::Unanswered);
        // A lookup that fails with nothing sent after it: IPv4 without
        // policy rules traces -EAGAIN for its one table.
        let j = build_journey(vec![send, lookup(900, -11)], &[]);
        assert_eq!(j.outcome, Outcome::NoRoute { err: -11 });
    }

    #[test]
    fn a_backlog_thread_receives_without_the_softirq() {
        let j = build_journey(backlog_threaded(1, 0), &expected_for(&all_probes()));
        assert!(j.complete(), "missing {:?}", j.missing);
        for leg in &j.softirq {
            let s = leg.as_ref().unwrap();
            assert_eq!(s.context, Context::BacklogThread);
            assert_eq!(s.entered, Some("backlog_thread"));
        }
    }

    #[test]
    fn ksoftirqd_context_is_recognised() {
        let mut evs = echo(1, 0);
        for e in evs.iter_mut().filter(|e| e.icmp_type == ICMP_ECHOREPLY) {
            if e.flags & FLAG_NET_RX != 0 {
                e.comm = *b"ksoftirqd/2\0\0\0\0\0";
            }
        }
        let j = build_journey(evs, &[]);
        assert_eq!(j.softirq[1].as_ref().unwrap().context, Context::Ksoftirqd);
        assert_eq!(
            j.softirq[0].as_ref().unwrap().context,
            Context::SoftirqInline
        );
    }
}

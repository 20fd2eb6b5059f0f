//! What a journey means: which stages an echo always passes, what its RTT
//! spans, when it counts as answered, dropped or unroutable, and where its
//! NET_RX softirq ran.
//!
//! Both views run this code. The journey builder (user space) folds a whole
//! journey's events through [`Echo::observe`] once they are in; the
//! programs (`--summary-only`) call it on each event as it happens and apply
//! the returned [`Effects`] to their maps. The outcome is therefore decided
//! by one rule in one place, and a host test feeds the same streams to both.

use crate::{
    agg::{self, counters},
    bits::{clear_flags, set_bits, set_flags, try_enter},
    catalog::{EXPECTED_STAGES, Expect, Stage},
};

/// The direction of a packet within an echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Leg {
    Request,
    Reply,
}

impl Leg {
    pub fn name(self) -> &'static str {
        match self {
            Leg::Request => "request",
            Leg::Reply => "reply",
        }
    }

    pub const fn of(reply: bool) -> Leg {
        if reply { Leg::Reply } else { Leg::Request }
    }
}

/// A stage every echo journey passes through, when something observes it.
/// `None` as leg: at least one of the two legs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub leg: Option<Leg>,
    pub stage: Stage,
}

/// The stages every loopback echo passes, as the stage table declares
/// them, in the order a journey meets them: the request leg's (with those
/// expected on either leg, which a request meets first), then the reply
/// leg's, from where the reply begins.
pub fn always() -> impl Iterator<Item = Expected> {
    let on = |pick: fn(Expect) -> Option<Option<Leg>>| {
        Stage::ORDER.iter().map(|s| s.info()).filter_map(move |s| {
            pick(s.expect).map(|leg| Expected {
                leg,
                stage: s.stage,
            })
        })
    };
    on(|e| match e {
        Expect::Request | Expect::Both => Some(Some(Leg::Request)),
        Expect::Either => Some(None),
        _ => None,
    })
    .chain(on(|e| {
        (e == Expect::ReplyOrigin).then_some(Some(Leg::Reply))
    }))
    .chain(on(|e| {
        matches!(e, Expect::Reply | Expect::Both).then_some(Some(Leg::Reply))
    }))
}

/// The expected stages among those this trace observes.
pub fn expected_for(covered: &[Stage]) -> impl Iterator<Item = Expected> + '_ {
    always().filter(|e| covered.contains(&e.stage))
}

/// The RTT starts when ping hands the request to the kernel; a send also
/// starts the echo afresh (sequences wrap under a long flood).
pub const fn starts_rtt(reply: bool, stage: u8) -> bool {
    !reply && stage == Stage::Sendto as u8
}

/// The RTT ends when the reply is queued for receive (the kernel's own
/// view; ping's RTT adds its wake-up and copy).
pub const fn ends_rtt(reply: bool, stage: u8) -> bool {
    reply && stage == Stage::NetifRx as u8
}

/// The kernel RTT, when the reply came after the send.
pub const fn rtt(send_ts: u64, reply_rx_ts: u64) -> Option<u64> {
    if reply_rx_ts >= send_ts {
        Some(reply_rx_ts - send_ts)
    } else {
        None
    }
}

/// A reply that reached ping's copy or its receive call answered the echo.
pub const fn answers(reply: bool, stage: u8) -> bool {
    reply && (stage == Stage::CopyToUser as u8 || stage == Stage::Recvmsg as u8)
}

/// A request-leg drop stops the echo, unless it is answered after all, and
/// only when the skb dropped is the one on the echo's own path (see
/// [`on_path`]): raw sockets and packet taps get copies of the request,
/// and a copy dropped says nothing of the echo.
pub const fn drops(reply: bool, stage: u8) -> bool {
    !reply && stage == Stage::Drop as u8
}

/// The stages whose events carry the skb that travels the leg's path (not
/// a copy delivered to a socket, nor the route lookup, whose `skb` field
/// holds a device name). The request's path skb is the last one these
/// stages saw: `ip_rcv` may take a private copy of a shared skb, and the
/// path goes on with it.
pub const fn on_path(stage: u8) -> bool {
    stage == Stage::IpOutput as u8
        || stage == Stage::DevQueueXmit as u8
        || stage == Stage::LoopbackXmit as u8
        || stage == Stage::DevXmit as u8
        || stage == Stage::NetifRx as u8
        || stage == Stage::NetifReceiveSkb as u8
        || stage == Stage::IpRcv as u8
        || stage == Stage::IcmpRcv as u8
}

/// The expected stage an event meets besides its own. A receive inside the
/// NET_RX softirq shows that a run of it received the packet, even when
/// the run began under another echo's packet and its start and end were
/// reported with that echo; a receive in a backlog thread is the receive
/// processing that thread does instead of the softirq. Another device's transmit (`ndo_start_xmit`)
/// is, for an echo that leaves through that device, the transmit a
/// loopback echo makes in `loopback_xmit`.
pub const fn also_meets(stage: u8, ran: Ran) -> Option<Stage> {
    if stage == Stage::NetifReceiveSkb as u8 && !matches!(ran, Ran::Task) {
        Some(Stage::NetRxAction)
    } else if stage == Stage::DevXmit as u8 {
        Some(Stage::LoopbackXmit)
    } else {
        None
    }
}

/// Whether an event closes its echo: the reply at the trace's close stage
/// (see [`close_stage`]). The journey builder, the in-kernel aggregation
/// and the programs' journey slots all end an echo here.
pub const fn closes(reply: bool, stage: u8, close_stage: u8) -> bool {
    reply && stage == close_stage
}

/// The reply stage that ends an answered echo: ping's receive call
/// returning, else (when that is not observed) the copy to it.
pub const fn close_stage(has_recvmsg: bool, has_copy: bool) -> Stage {
    if has_recvmsg || !has_copy {
        Stage::Recvmsg
    } else {
        Stage::CopyToUser
    }
}

/// Where a receive's NET_RX softirq ran: the softirq thread has a name of
/// its own; anything else ran inline on the back of the current task.
pub fn is_ksoftirqd(comm: &[u8]) -> bool {
    comm.starts_with(b"ksoftirqd/")
}

/// A backlog thread (`backlog_napi/N`): with `thread_backlog_napi`, and
/// always on PREEMPT_RT, a packet steered (RPS) to another CPU's backlog
/// wakes that CPU's thread, which polls the backlog in task context, with
/// bottom halves off but no NET_RX softirq.
pub fn is_backlog_thread(comm: &[u8]) -> bool {
    comm.starts_with(b"backlog_napi/")
}

/// The context an event ran in, as far as the journey's meaning goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// In a task, outside the NET_RX softirq.
    Task,
    SoftirqInline,
    Ksoftirqd,
    /// In a backlog thread (see [`is_backlog_thread`]).
    BacklogThread,
}

impl Ran {
    pub fn of(in_net_rx: bool, comm: &[u8]) -> Ran {
        if !in_net_rx {
            if is_backlog_thread(comm) {
                Ran::BacklogThread
            } else {
                Ran::Task
            }
        } else if is_ksoftirqd(comm) {
            Ran::Ksoftirqd
        } else {
            Ran::SoftirqInline
        }
    }
}

/// Whether `e` is still expected of a journey that ended as `end`: a
/// dropped echo only up to the request stage after which it was dropped, in
/// kernel order; an unroutable one only up to its route lookup.
pub fn still_expected(e: &Expected, end: &End) -> bool {
    match end {
        End::Answered | End::Unanswered => true,
        End::Dropped { after } => {
            e.leg == Some(Leg::Request) && after.is_some_and(|a| e.stage <= a)
        }
        End::NoRoute => {
            e.leg == Some(Leg::Request) && matches!(e.stage, Stage::Sendto | Stage::Route)
        }
    }
}

/// A failed route lookup: no route, unless the packet is sent after all.
/// The lookup's own error does not tell: IPv4's fib_table_lookup says
/// `-EAGAIN` for a table without a match whether or not another table
/// matches next (fib_lookup turns the last one into `-ENETUNREACH` only
/// after the tracepoint), and IPv6's local table, tried first, says
/// `-EHOSTUNREACH` for every other address. An output stage after it
/// clears the echo's "no route".
pub const fn unroutable(err: i32) -> bool {
    err != 0
}

/// A request stage that exists only once the route was found and the
/// packet built.
pub const fn builds(stage: u8) -> bool {
    stage == Stage::IpOutput as u8 || stage == Stage::DevQueueXmit as u8
}

/// How an echo ended, by precedence: an answer outweighs a drop seen on
/// the way (a clone's), a drop outweighs a failed lookup (another table may
/// have matched).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Answered,
    /// A request-leg skb was dropped after this request stage.
    Dropped {
        after: Option<Stage>,
    },
    /// A request route lookup failed (see [`unroutable`]), and no output
    /// stage followed.
    NoRoute,
    Unanswered,
}

/// The expected stages as bit masks (see [`agg::seen_bit`]): those of one
/// leg, and those expected on either leg.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Masks {
    pub leg: u64,
    pub any: u64,
}

impl Masks {
    pub fn of(expected: impl IntoIterator<Item = Expected>) -> Masks {
        expected
            .into_iter()
            .fold(Masks::default(), |m, e| match e.leg {
                Some(l) => Masks {
                    leg: m.leg | agg::seen_bit(l == Leg::Reply, e.stage as u8),
                    ..m
                },
                None => Masks {
                    any: m.any | 1u64 << e.stage as u8,
                    ..m
                },
            })
    }

    /// Every expected stage is among `seen` ([`agg::seen_bit`]s).
    #[inline(always)]
    pub const fn met_by(&self, seen: u64) -> bool {
        // A stage expected on either leg: fold the legs' bits together.
        let legs = seen | (seen >> agg::SEEN_STAGES);
        self.leg & !seen == 0 && self.any & !legs == 0
    }
}

/// What the meaning needs of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Obs {
    pub reply: bool,
    pub stage: u8,
    pub at_return: bool,
    pub ts: u64,
    /// A route lookup's error (0: it found a route).
    pub route_err: i32,
    /// The sending socket's kind, as the transmit stages read it (0: not
    /// read here).
    pub sock_type: u32,
    pub ran: Ran,
    /// The skb the event saw (0: none, or not one of [`on_path`]'s).
    pub skb: u64,
}

impl Obs {
    /// An event as the stage's fields carry it (see `catalog::DetailKind`):
    /// the route lookup's error in `len`, the socket type in a transmit's
    /// `aux2`, the skb only where it is the packet's own.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub const fn of_fields(
        reply: bool,
        stage: u8,
        at_return: bool,
        ts: u64,
        len: u32,
        aux2: u32,
        skb: u64,
        ran: Ran,
    ) -> Obs {
        Obs {
            reply,
            stage,
            at_return,
            ts,
            route_err: if stage == Stage::Route as u8 {
                len as i32
            } else {
                0
            },
            sock_type: if stage == Stage::DevQueueXmit as u8 {
                aux2
            } else {
                0
            },
            ran,
            skb: if on_path(stage) || stage == Stage::Drop as u8 {
                skb
            } else {
                0
            },
        }
    }
}

/// The stages whose [`agg::seen_bit`] an echo keeps: those some journey
/// expects (the others are never looked up, and frees and drops of copies
/// may come from two CPUs at once).
pub const fn counts_as_seen(stage: u8) -> bool {
    stage < 64 && EXPECTED_STAGES & (1 << stage) != 0
}

/// What a followed echo remembers between its events: the programs keep
/// one per family and sequence in a map, the journey builder one per
/// journey while it folds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Echo {
    pub first_ts: u64,
    /// The request's sendto, if `ECHO_SENT`.
    pub send_ts: u64,
    pub last_ts: u64,
    /// [`agg::seen_bit`]s of the stages met so far.
    pub seen: u64,
    /// `ECHO_*` flags.
    pub flags: u32,
    /// The last request stage seen before the first request drop, plus one
    /// (0: none).
    pub drop_after: u8,
    pub _pad: [u8; 3],
    /// The request's skb on its path so far (see [`on_path`]; 0: none yet).
    pub path_skb: u64,
    /// Non-zero once the echo was judged complete, or was being judged on
    /// two CPUs at once (see [`Echo::observe`]): it is counted once.
    pub judged: u64,
}

/// The echo's close stage was met; later stages still add to the rows.
pub const ECHO_CLOSED: u32 = 1 << 0;
pub const ECHO_RTT: u32 = 1 << 1;
pub const ECHO_SOCK: u32 = 1 << 2;
/// The request's (`<< 0`) or reply's (`<< 1`) first receive was seen.
pub const ECHO_SOFTIRQ: u32 = 1 << 3;
pub const ECHO_ANSWERED: u32 = 1 << 5;
pub const ECHO_DROPPED: u32 = 1 << 6;
pub const ECHO_NO_ROUTE: u32 = 1 << 7;
/// The slot holds an echo (a zeroed map slot does not).
pub const ECHO_OPEN: u32 = 1 << 8;
/// `send_ts` is the request's sendto.
pub const ECHO_SENT: u32 = 1 << 9;

/// No counter.
pub const NONE: u32 = u32::MAX;

/// What one event changes in the aggregated statistics: the programs apply
/// it to their maps, the host test to arrays. Counters are `agg::counters`
/// slots; a decrement moves an echo out of an outcome a later event
/// overruled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effects {
    /// The echo starts here: count it under this family counter.
    pub opened: u32,
    /// The stage row and its value (time since the echo's previous stage),
    /// with the time since the send.
    pub row: usize,
    pub delta: u64,
    pub since_send: i64,
    pub rtt: Option<u64>,
    /// First stage to the close stage, once.
    pub total: Option<u64>,
    pub socket: u32,
    pub softirq: u32,
    /// The outcome counter this event moves the echo into, and the ones
    /// it moves it out of.
    pub count: u32,
    pub uncount: u32,
    pub uncount2: u32,
    /// The echo met its close stage with every expected stage seen
    /// (`counters::COMPLETE`).
    pub complete: bool,
}

/// Where aggregated statistics are kept: the programs' per-CPU maps, or a
/// test's arrays.
pub trait Sink {
    /// Adds a value to a row (see `agg::row`), with its time since the send.
    fn record(&mut self, row: usize, v: u64, since_send: i64);
    /// Adds `n` (wrapping: -1 moves an echo out of an outcome) to a counter.
    fn add(&mut self, counter: u32, n: u64);
}

impl Effects {
    /// Applies the effects to the statistics, the same way everywhere.
    #[inline(always)]
    pub fn apply<S: Sink>(&self, sink: &mut S) {
        if self.opened != NONE {
            sink.add(counters::OPENED, 1);
            sink.add(self.opened, 1);
        }
        sink.record(self.row, self.delta, self.since_send);
        if let Some(rtt) = self.rtt {
            sink.record(agg::RTT_ROW, rtt, 0);
        }
        if let Some(total) = self.total {
            sink.record(agg::TOTAL_ROW, total, 0);
        }
        for c in [self.socket, self.softirq, self.count] {
            if c != NONE {
                sink.add(c, 1);
            }
        }
        for c in [self.uncount, self.uncount2] {
            if c != NONE {
                sink.add(c, u64::MAX);
            }
        }
        if self.complete {
            sink.add(counters::COMPLETE, 1);
        }
    }
}

/// The configuration of [`Echo::observe`]: what this trace can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    pub close_stage: u8,
    pub expect: Masks,
}

impl Rules {
    /// The rules of a trace that observes the `covered` stages.
    pub fn for_covered(covered: &[Stage]) -> Rules {
        Rules {
            close_stage: close_stage(
                covered.contains(&Stage::Recvmsg),
                covered.contains(&Stage::CopyToUser),
            ) as u8,
            expect: Masks::of(expected_for(covered)),
        }
    }
}

impl Echo {
    /// Takes one event of the echo, in time order, and says what it
    /// changes. `ipv6` picks the family counter of a new echo.
    #[inline(always)]
    pub fn observe(&mut self, o: &Obs, ipv6: bool, rules: &Rules) -> Effects {
        let mut fx = Effects {
            opened: NONE,
            row: agg::row(o.reply, o.stage, o.at_return),
            delta: 0,
            since_send: 0,
            rtt: None,
            total: None,
            socket: NONE,
            softirq: NONE,
            count: NONE,
            uncount: NONE,
            uncount2: NONE,
            complete: false,
        };
        let fresh = starts_rtt(o.reply, o.stage);
        if fresh || self.flags & ECHO_OPEN == 0 {
            *self = Echo {
                first_ts: o.ts,
                send_ts: o.ts,
                last_ts: o.ts,
                flags: if fresh {
                    ECHO_OPEN | ECHO_SENT
                } else {
                    ECHO_OPEN
                },
                ..Echo::default()
            };
            fx.opened = if ipv6 { counters::IPV6 } else { counters::IPV4 };
        }
        fx.delta = o.ts.saturating_sub(self.last_ts);
        if o.ts > self.last_ts {
            self.last_ts = o.ts;
        }
        // Before its send is seen, times count from the first stage.
        let t0 = self.send_ts;
        fx.since_send = o.ts.wrapping_sub(t0) as i64;
        // Only the expected stages' bits: each is met once per leg, on one
        // CPU at a time (see `set_bits`), while frees and drops of copies
        // may happen on two at once.
        if counts_as_seen(o.stage) {
            set_bits(&mut self.seen, agg::seen_bit(o.reply, o.stage));
        }
        if let Some(s) = also_meets(o.stage, o.ran) {
            set_bits(&mut self.seen, agg::seen_bit(o.reply, s as u8));
        }

        let reply = o.reply;
        let stage = o.stage;
        // A drop before the packet was built, or one whose skb is unknown,
        // cannot be told from a copy's: it counts.
        let own = self.path_skb == 0 || o.skb == 0 || o.skb == self.path_skb;
        if !reply && on_path(stage) && o.skb != 0 {
            self.path_skb = o.skb;
        }
        if ends_rtt(reply, stage) && self.flags & ECHO_SENT != 0 && self.flags & ECHO_RTT == 0 {
            set_flags(&mut self.flags, ECHO_RTT);
            fx.rtt = rtt(self.send_ts, o.ts);
        }
        if !reply
            && stage == Stage::DevQueueXmit as u8
            && o.sock_type != 0
            && self.flags & ECHO_SOCK == 0
        {
            set_flags(&mut self.flags, ECHO_SOCK);
            fx.socket = match o.sock_type {
                crate::event::SOCK_RAW => counters::SOCK_RAW,
                crate::event::SOCK_DGRAM => counters::SOCK_DGRAM,
                _ => NONE,
            };
        }
        // Where the leg's first receive ran.
        let si = ECHO_SOFTIRQ << reply as u32;
        if stage == Stage::NetifReceiveSkb as u8 && self.flags & si == 0 {
            set_flags(&mut self.flags, si);
            fx.softirq = match o.ran {
                Ran::Task => NONE,
                Ran::SoftirqInline => counters::SOFTIRQ_INLINE,
                Ran::Ksoftirqd => counters::SOFTIRQ_KSOFTIRQD,
                Ran::BacklogThread => counters::BACKLOG_THREAD,
            };
        }

        let answered = self.flags & ECHO_ANSWERED != 0;
        let dropped = self.flags & ECHO_DROPPED != 0;
        let no_route = self.flags & ECHO_NO_ROUTE != 0;
        if answers(reply, stage) {
            if !answered {
                set_flags(&mut self.flags, ECHO_ANSWERED);
                clear_flags(&mut self.flags, ECHO_DROPPED | ECHO_NO_ROUTE);
                fx.count = counters::ANSWERED;
                if dropped {
                    fx.uncount = counters::DROPPED;
                }
                if no_route {
                    fx.uncount2 = counters::NO_ROUTE;
                }
            }
        } else if drops(reply, stage) {
            if own && !answered && !dropped {
                set_flags(&mut self.flags, ECHO_DROPPED);
                clear_flags(&mut self.flags, ECHO_NO_ROUTE);
                fx.count = counters::DROPPED;
                if no_route {
                    fx.uncount = counters::NO_ROUTE;
                }
            }
        } else if !reply
            && stage == Stage::Route as u8
            && unroutable(o.route_err)
            && !answered
            && !dropped
            && !no_route
        {
            set_flags(&mut self.flags, ECHO_NO_ROUTE);
            fx.count = counters::NO_ROUTE;
        } else if !reply && builds(stage) && no_route {
            // The packet was built and sent after all: the failed lookup
            // was one table of several (IPv6 tries the local table first).
            clear_flags(&mut self.flags, ECHO_NO_ROUTE);
            fx.uncount = counters::NO_ROUTE;
        }
        // The stage after which a drop happened: the last request stage
        // before it, frees and drops aside.
        if !reply && !dropped && stage != Stage::Free as u8 && !drops(reply, stage) {
            self.drop_after = stage + 1;
        }
        if closes(reply, stage, rules.close_stage) && self.flags & ECHO_CLOSED == 0 {
            set_flags(&mut self.flags, ECHO_CLOSED);
            fx.total = Some(o.ts.saturating_sub(self.first_ts));
        }
        // Complete once closed with every expected stage seen: at the close,
        // or at an expected stage that comes after it. ping can take the
        // reply from its socket's queue, and return (the close), before
        // the CPU that queued it has called the socket's data-ready
        // (`sock_deliver`): judged at the close alone, about one echo in
        // 13,000 under RPS was counted "answered with a stage unseen". The
        // close and such a stage may run on two CPUs at once; each sets its
        // bit before it looks at the other's (atomic adds, ordered on
        // x86-64), so at least one sees both, and `judged` lets one count.
        if self.flags & ECHO_CLOSED != 0
            && self.judged == 0
            && rules.expect.met_by(self.seen)
            && try_enter(&mut self.judged)
        {
            fx.complete = true;
        }
        fx
    }

    /// How the echo has ended so far.
    pub fn end(&self) -> End {
        if self.flags & ECHO_ANSWERED != 0 {
            End::Answered
        } else if self.flags & ECHO_DROPPED != 0 {
            End::Dropped {
                after: self.drop_after.checked_sub(1).and_then(Stage::from_u8),
            }
        } else if self.flags & ECHO_NO_ROUTE != 0 {
            End::NoRoute
        } else {
            End::Unanswered
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn masks_cover_each_expected_stage_once() {
        let m = Masks::of(always());
        let legged = always().filter(|e| e.leg.is_some()).count();
        assert_eq!(m.leg.count_ones() as usize, legged);
        assert_eq!(m.any, 1 << Stage::NetRxAction as u8);
        assert_ne!(
            m.leg & agg::seen_bit(true, Stage::Recvmsg as u8),
            0,
            "the reply's recvmsg is expected"
        );
        assert_eq!(m.leg & agg::seen_bit(false, Stage::Recvmsg as u8), 0);
    }

    #[test]
    fn the_expected_stages_in_the_order_journeys_list_them() {
        use Leg::{Reply as P, Request as Q};
        use Stage as S;
        let want = [
            (Some(Q), S::Sendto),
            (Some(Q), S::SockSendmsg),
            (Some(Q), S::Route),
            (Some(Q), S::IpOutput),
            (Some(Q), S::DevQueueXmit),
            (Some(Q), S::LoopbackXmit),
            (Some(Q), S::NetifRx),
            (None, S::NetRxAction),
            (Some(Q), S::NetifReceiveSkb),
            (Some(Q), S::IpRcv),
            (Some(Q), S::IcmpRcv),
            (Some(P), S::IcmpReply),
            (Some(P), S::DevQueueXmit),
            (Some(P), S::LoopbackXmit),
            (Some(P), S::NetifRx),
            (Some(P), S::NetifReceiveSkb),
            (Some(P), S::SockDeliver),
            (Some(P), S::CopyToUser),
            (Some(P), S::SockRecvmsg),
            (Some(P), S::Recvmsg),
        ];
        let got: std::vec::Vec<_> = always().map(|e| (e.leg, e.stage)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn answered_at_recvmsg_or_else_at_the_copy() {
        let close = |c: &[Stage]| Rules::for_covered(c).close_stage;
        assert_eq!(close(&Stage::ALL), Stage::Recvmsg as u8);
        assert_eq!(
            close(&[Stage::Sendto, Stage::CopyToUser]),
            Stage::CopyToUser as u8
        );
        assert_eq!(close(&[Stage::Sendto]), Stage::Recvmsg as u8);
    }

    #[test]
    fn bits_are_set_and_cleared_once_without_carries() {
        let mut seen = 0u64;
        for _ in 0..3 {
            set_bits(&mut seen, 1 << 63 | 1);
        }
        assert_eq!(seen, 1 << 63 | 1);
        let mut flags = ECHO_DROPPED;
        set_flags(&mut flags, ECHO_DROPPED | ECHO_ANSWERED);
        assert_eq!(flags, ECHO_DROPPED | ECHO_ANSWERED);
        clear_flags(&mut flags, ECHO_DROPPED | ECHO_NO_ROUTE);
        clear_flags(&mut flags, ECHO_DROPPED);
        assert_eq!(flags, ECHO_ANSWERED);
        // Only the stages some journey expects keep a bit.
        assert!(counts_as_seen(Stage::NetifRx as u8));
        assert!(!counts_as_seen(Stage::Free as u8));
        assert!(!counts_as_seen(Stage::Drop as u8));
        assert!(!counts_as_seen(200));
    }

    #[test]
    fn either_leg_satisfies_a_stage_expected_on_either() {
        let m = Masks::of([Expected {
            leg: None,
            stage: Stage::NetRxAction,
        }]);
        assert!(!m.met_by(0));
        assert!(m.met_by(agg::seen_bit(true, Stage::NetRxAction as u8)));
        assert!(m.met_by(agg::seen_bit(false, Stage::NetRxAction as u8)));
    }
}

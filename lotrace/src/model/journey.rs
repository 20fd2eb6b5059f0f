//! A journey: what lotrace shows of one echo, its request leg and its reply
//! leg, hop by hop, with its outcome. `builder` makes them from events.

use crate::model::detail::{DevName, StageDetail};
use lotrace_common::{
    Event, ProbeId, Stage,
    event::{AF_INET, AF_INET6, FLAG_NET_RX},
    journey::{Obs, Ran},
};

pub use lotrace_common::journey::{Expected, Leg};

/// Where an event ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Context {
    /// In a task, outside the NET_RX softirq (a system call, usually).
    Task,
    /// In the NET_RX softirq run inline, on the back of whatever task was
    /// on the CPU (often ping itself, at the end of its own sendto).
    SoftirqInline,
    /// In the NET_RX softirq handed off to the CPU's ksoftirqd thread.
    Ksoftirqd,
    /// In the CPU's backlog thread (`backlog_napi/N`), which polls the
    /// backlog without the softirq.
    BacklogThread,
}

impl Context {
    pub fn name(&self) -> &'static str {
        match self {
            Context::Task => "task",
            Context::SoftirqInline => "softirq",
            Context::Ksoftirqd => "ksoftirqd",
            Context::BacklogThread => "backlog_thread",
        }
    }

    pub(crate) fn of(ev: &Event) -> Context {
        match Ran::of(ev.flags & FLAG_NET_RX != 0, &ev.comm) {
            Ran::Task => Context::Task,
            Ran::SoftirqInline => Context::SoftirqInline,
            Ran::Ksoftirqd => Context::Ksoftirqd,
            Ran::BacklogThread => Context::BacklogThread,
        }
    }

    pub(crate) fn ran(&self) -> Ran {
        match self {
            Context::Task => Ran::Task,
            Context::SoftirqInline => Ran::SoftirqInline,
            Context::Ksoftirqd => Ran::Ksoftirqd,
            Context::BacklogThread => Ran::BacklogThread,
        }
    }
}

/// One stage as one packet met it.
#[derive(Clone, Debug, PartialEq)]
pub struct Hop {
    pub leg: Leg,
    pub stage: Stage,
    pub probe: ProbeId,
    pub ts_ns: u64,
    /// Since the journey's send (the request's sendto); negative only if a
    /// stage was seen before it.
    pub t_ns: i64,
    /// Since the previous hop of the journey, in time order across both legs.
    pub delta_ns: u64,
    pub cpu: u32,
    pub pid: u32,
    pub tgid: u32,
    pub comm: Comm,
    pub context: Context,
    pub softirq_run: u32,
    /// The skb the probe saw (0: none; the route lookup's is a device name).
    pub skb: u64,
    /// The skb was one fragment of the echo's IP datagram.
    pub fragment: bool,
    /// What the event said besides time and place, decoded once.
    pub detail: Option<StageDetail>,
}

impl Hop {
    /// The device a transmit went out on, when this hop is
    /// `dev_queue_xmit` and read it.
    pub fn xmit_dev(&self) -> Option<DevName> {
        match (self.stage, self.detail) {
            (Stage::DevQueueXmit, Some(StageDetail::Transmit { dev, .. })) => dev,
            _ => None,
        }
    }

    /// What the journey's meaning needs of this hop.
    pub fn obs(&self) -> Obs {
        let route_err = match self.detail {
            Some(StageDetail::Route {
                next_hop: Err(err), ..
            }) => err,
            _ => 0,
        };
        let sock_type = match self.detail {
            Some(StageDetail::Transmit { sock_type, .. }) => sock_type,
            _ => 0,
        };
        Obs::of_fields(
            self.leg == Leg::Reply,
            self.stage as u8,
            self.probe.info().at_return,
            self.ts_ns,
            route_err as u32,
            sock_type,
            self.skb,
            self.context.ran(),
        )
    }
}

/// A task's name as the kernel keeps it (NUL-padded, 16 bytes): every hop
/// has one, and a flood has millions of hops, so it is not a `String`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    /// Up to the first NUL; `?` when that is not UTF-8.
    pub fn as_str(&self) -> &str {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(16);
        std::str::from_utf8(&self.0[..end]).unwrap_or("?")
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the NET_RX softirq that received a leg ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoftirqWhere {
    pub context: Context,
    pub cpu: u32,
    pub comm: Comm,
    pub pid: u32,
    /// From the leg's enqueue on the backlog (netif_rx) to the start of
    /// the NET_RX run that received it, when both were seen.
    pub wait_ns: Option<u64>,
    /// How the run was entered, as far as the events tell: `local_bh_enable`
    /// (the sending task re-enabled bottom halves inside its own send),
    /// `another_task` (inline on the back of another task: its
    /// `local_bh_enable` or an interrupt's exit, not told apart),
    /// `ksoftirqd` (handed off to the softirq thread); `None` if unknown.
    pub entered: Option<&'static str>,
}

/// What became of the echo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The reply reached ping's recvmsg.
    Answered,
    /// A request-leg skb was dropped, with the kernel's reason code, after
    /// this stage.
    Dropped { reason: u64, after: Option<Stage> },
    /// The route lookup failed (the error is the kernel's, e.g. -101).
    NoRoute { err: i32 },
    /// Nothing said what happened: the reply never arrived while traced.
    Unanswered,
}

pub use lotrace_common::event::{SOCK_DGRAM, SOCK_RAW};

#[derive(Clone, Debug, PartialEq)]
pub struct Journey {
    pub family: u8,
    pub icmp_id: u16,
    pub icmp_seq: u16,
    /// All hops of both legs in time order.
    pub hops: Vec<Hop>,
    /// The request's sendto entry to the reply's netif_rx, when both were seen.
    pub rtt_ns: Option<u64>,
    /// First hop to last hop; equals the sum of the hops' deltas.
    pub total_ns: u64,
    /// Expected stages this journey lacks (a lost event, or a packet that
    /// did not take the usual path).
    pub missing: Vec<(Option<Leg>, Stage)>,
    pub softirq: [Option<SoftirqWhere>; 2],
    pub outcome: Outcome,
    /// The sending socket's kind (`SOCK_RAW`, `SOCK_DGRAM`), 0 if unseen.
    pub sock_type: u32,
}

impl Journey {
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }

    pub fn leg(&self, leg: Leg) -> impl Iterator<Item = &Hop> {
        self.hops.iter().filter(move |h| h.leg == leg)
    }

    pub fn family_name(&self) -> &'static str {
        family_name(self.family)
    }

    /// `raw` (raw_sendmsg / raw_rcv) or `datagram` (ping_v4_sendmsg /
    /// ping_rcv, an ICMP datagram socket), if known.
    pub fn socket_name(&self) -> Option<&'static str> {
        match self.sock_type {
            SOCK_RAW => Some("raw"),
            SOCK_DGRAM => Some("datagram"),
            _ => None,
        }
    }
}

pub fn family_name(family: u8) -> &'static str {
    match family {
        AF_INET => "ipv4",
        AF_INET6 => "ipv6",
        _ => "unknown",
    }
}

/// The expected stages among those observed.
pub fn expected_for(covered: &[Stage]) -> Vec<Expected> {
    lotrace_common::journey::expected_for(covered).collect()
}

/// Of the `covered` stages, those an echo to `target` passes. A ping that
/// really sends to 0.0.0.0 (busybox; iputils sends to its own source
/// address instead) has no route lookup: the kernel gives the unspecified
/// destination the loopback device and a local address at once
/// (`ip_route_output_key_hash_rcu`). Both the journeys and the in-kernel
/// aggregation take their expectations from here.
pub fn expected_stages(covered: &[Stage], target: Option<&str>) -> Vec<Stage> {
    let unspecified = target
        .and_then(|t| t.parse::<std::net::Ipv4Addr>().ok())
        .is_some_and(|a| a.is_unspecified());
    covered
        .iter()
        .copied()
        .filter(|s| !(unspecified && *s == Stage::Route))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use lotrace_common::event::{FLAG_PACKET, ICMP_ECHO, ICMP_ECHOREPLY};

    use super::*;

    /// A made-up but kernel-shaped event.
    pub(crate) fn ev(ts: u64, stage: Stage, probe: ProbeId, reply: bool, seq: u16) -> Event {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"ping");
        let softirq = matches!(
            stage,
            Stage::NetRxAction
                | Stage::ProcessBacklog
                | Stage::NetifReceiveSkb
                | Stage::SockDeliver
                | Stage::Wakeup
        ) || (reply && stage < Stage::SockDeliver);
        Event {
            ts_ns: ts,
            tid: 100,
            tgid: 100,
            comm,
            cpu: 2,
            stage: stage as u8,
            probe: probe as u8,
            flags: FLAG_PACKET | if softirq { FLAG_NET_RX } else { 0 },
            family: AF_INET,
            icmp_type: if reply { ICMP_ECHOREPLY } else { ICMP_ECHO },
            icmp_id: 7,
            icmp_seq: seq,
            softirq_run: if softirq { 1 } else { 0 },
            ..Default::default()
        }
    }

    /// One loopback echo as the tracepoints see it, in kernel order.
    pub(crate) fn echo(seq: u16, base: u64) -> Vec<Event> {
        use ProbeId as P;
        use Stage as S;
        vec![
            ev(base, S::Sendto, P::SysEnterSendto, false, seq),
            ev(base + 900, S::Route, P::FibTableLookup, false, seq),
            ev(base + 2000, S::DevQueueXmit, P::NetDevQueue, false, seq),
            ev(base + 2300, S::LoopbackXmit, P::NetDevStartXmit, false, seq),
            ev(base + 2500, S::NetifRx, P::NetifRxEntry, false, seq),
            ev(base + 2700, S::SoftirqRaise, P::SoftirqRaise, false, seq),
            ev(base + 3000, S::LoopbackXmit, P::NetDevXmit, false, seq),
            ev(base + 3500, S::NetRxAction, P::SoftirqEntry, false, seq),
            ev(
                base + 4000,
                S::NetifReceiveSkb,
                P::NetifReceiveSkb,
                false,
                seq,
            ),
            ev(base + 5000, S::Route, P::FibTableLookup, true, seq),
            ev(base + 6000, S::DevQueueXmit, P::NetDevQueue, true, seq),
            ev(base + 6200, S::LoopbackXmit, P::NetDevStartXmit, true, seq),
            ev(base + 6400, S::NetifRx, P::NetifRxEntry, true, seq),
            ev(base + 6600, S::LoopbackXmit, P::NetDevXmit, true, seq),
            ev(base + 7000, S::Free, P::ConsumeSkb, false, seq),
            ev(
                base + 7500,
                S::NetifReceiveSkb,
                P::NetifReceiveSkb,
                true,
                seq,
            ),
            ev(base + 8000, S::SockDeliver, P::SkDataReady, true, seq),
            ev(base + 8500, S::NetRxAction, P::SoftirqExit, true, seq),
            ev(base + 9000, S::SockSendmsg, P::SockSendLength, false, seq),
            ev(
                base + 12000,
                S::CopyToUser,
                P::SkbCopyDatagramIovec,
                true,
                seq,
            ),
            ev(base + 12300, S::SockRecvmsg, P::SockRecvLength, true, seq),
            ev(base + 12500, S::Recvmsg, P::SysExitRecvmsg, true, seq),
        ]
    }

    /// RPS to another CPU with backlog threads: that CPU's backlog_napi
    /// thread receives both legs in task context, with no softirq run.
    pub(crate) fn backlog_threaded(seq: u16, base: u64) -> Vec<Event> {
        echo(seq, base)
            .into_iter()
            .filter(|e| !matches!(Stage::from_u8(e.stage), Some(Stage::NetRxAction)))
            .map(|mut e| {
                if e.flags & FLAG_NET_RX != 0 {
                    e.flags &= !FLAG_NET_RX;
                    e.softirq_run = 0;
                    e.comm = *b"backlog_napi/1\0\0";
                    e.cpu = 1;
                }
                e
            })
            .collect()
    }
}

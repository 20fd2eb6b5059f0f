//! TCP and UDP: the traced command's flows, and one journey per packet
//! (a TCP segment or a UDP datagram, in one direction, hop by hop), then
//! the exchanges the packets make (a request and its response). Pure: no
//! kernel, no clock, no I/O.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lotrace_common::{
    Event, Stage,
    event::{AF_INET, FLAG_FLOW_NEW, FLOW_REVERSE, PKT_TCP, is_flow},
};

use crate::model::{
    builder::hop,
    detail::StageDetail,
    journey::{Hop, Leg, family_name},
    stats::Histogram,
};

/// The transport protocol of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn of(icmp_type: u8) -> Proto {
        if icmp_type == PKT_TCP {
            Proto::Tcp
        } else {
            Proto::Udp
        }
    }
}

/// A flow the programs follow: announced once, when a traced process sent
/// its first packet (`FLAG_FLOW_NEW`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub number: u16,
    pub proto: Proto,
    pub family: u8,
    /// The sender of its first packet.
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// The traced process that sent it.
    pub pid: u32,
    pub ts_ns: u64,
}

impl Flow {
    /// The flow an announcement names; `None` for any other event.
    pub fn of(e: &Event) -> Option<Flow> {
        if e.flags & FLAG_FLOW_NEW == 0 || !is_flow(e.icmp_type) {
            return None;
        }
        let mut dst = [0u8; 16];
        dst[..8].copy_from_slice(&e.skb.to_le_bytes());
        dst[8..].copy_from_slice(&e.aux.to_le_bytes());
        let addr = |b: [u8; 16]| -> IpAddr {
            if e.family == AF_INET {
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(b))
            }
        };
        Some(Flow {
            number: e.icmp_id,
            proto: Proto::of(e.icmp_type),
            family: e.family,
            src: addr(e.comm),
            sport: (e.len >> 16) as u16,
            dst: addr(dst),
            dport: e.len as u16,
            pid: e.tgid,
            ts_ns: e.ts_ns,
        })
    }

    /// `addr:port` of the sender and the receiver of a packet going
    /// `reverse` (from the flow's destination) or not.
    pub fn ends(&self, reverse: bool) -> (String, String) {
        let ep = |a: &IpAddr, p: u16| match a {
            IpAddr::V4(a) => format!("{a}:{p}"),
            IpAddr::V6(a) => format!("[{a}]:{p}"),
        };
        let (a, b) = (ep(&self.src, self.sport), ep(&self.dst, self.dport));
        if reverse { (b, a) } else { (a, b) }
    }

    pub fn family_name(&self) -> &'static str {
        family_name(self.family)
    }
}

/// What the transmit that identified a packet read of its headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wire {
    /// Bytes of payload past the TCP or UDP header.
    pub payload: u32,
    /// TCP only: flags and sequence number.
    pub tcp_flags: u8,
    pub tcp_seq: u32,
}

/// TCP's flags, as `tcpdump` names them.
pub fn tcp_flag_names(f: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x08, "PSH"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    NAMES
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// How far a packet was seen to go: the last of these stages it met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Seen on its way out only.
    Sent,
    /// Received by the IP layer's caller (`netif_receive_skb`).
    Received,
    /// Queued on its socket (the socket's data-ready call).
    Queued,
    /// Copied to the reader's buffer.
    Read,
    /// Dropped, with the kernel's reason.
    Dropped,
}

impl Reach {
    pub fn name(self) -> &'static str {
        match self {
            Reach::Sent => "sent",
            Reach::Received => "received",
            Reach::Queued => "queued",
            Reach::Read => "read",
            Reach::Dropped => "dropped",
        }
    }
}

/// One packet's journey.
#[derive(Clone, Debug, PartialEq)]
pub struct Packet {
    pub flow: u16,
    pub proto: Proto,
    pub family: u8,
    /// Sent from the flow's destination to its source.
    pub reverse: bool,
    /// Its number among the packets of its flow in its direction, from 1
    /// (wrapping at 32768).
    pub number: u16,
    /// `None` when the transmit that identified it was not seen.
    pub wire: Option<Wire>,
    pub hops: Vec<Hop>,
    pub total_ns: u64,
    pub reach: Reach,
}

impl Packet {
    pub fn first_ns(&self) -> u64 {
        self.hops.first().map_or(0, |h| h.ts_ns)
    }

    pub fn has(&self, stage: Stage) -> bool {
        self.hops.iter().any(|h| h.stage == stage)
    }

    /// When it was first seen: its send's start, or its transmit.
    pub fn sent_ns(&self) -> u64 {
        self.first_ns()
    }

    /// The hop that says how far it went (its `reach`): its reader's
    /// first stage (the copy, else the socket layer's return), else the
    /// last of the others.
    pub fn reach_hop(&self) -> Option<&Hop> {
        let first = |f: &dyn Fn(Stage) -> bool| self.hops.iter().find(|h| f(h.stage));
        match self.reach {
            Reach::Read => first(&|s| s == Stage::CopyToUser)
                .or_else(|| first(&|s| s == Stage::SockRecvmsg))
                .or_else(|| first(&|s| s == Stage::Recvmsg)),
            Reach::Queued => first(&|s| s == Stage::SockDeliver),
            Reach::Dropped => first(&|s| s == Stage::Drop),
            Reach::Received => first(&|s| s == Stage::NetifReceiveSkb),
            Reach::Sent => self.hops.last(),
        }
    }

    /// Time from its first stage to [`Packet::reach_hop`].
    pub fn reach_ns(&self) -> u64 {
        self.reach_hop()
            .map_or(0, |h| h.ts_ns.saturating_sub(self.first_ns()))
    }

    /// Bytes its skb gave the reader beyond its own payload: TCP merged
    /// later segments' bytes into it in the receive queue
    /// (`tcp_try_coalesce`), whose own skbs were freed unread.
    pub fn merged_bytes(&self) -> u32 {
        let (Some(w), Proto::Tcp) = (self.wire, self.proto) else {
            return 0;
        };
        let copied: u32 = self
            .hops
            .iter()
            .filter(|h| h.stage == Stage::CopyToUser)
            .map(|h| match h.detail {
                Some(StageDetail::Bytes(len)) => len,
                _ => 0,
            })
            .sum();
        copied.saturating_sub(w.payload)
    }

    /// The reader's task, when its read was seen.
    pub fn reader(&self) -> Option<&Hop> {
        self.hops.iter().find(|h| is_read(h.stage))
    }

    /// A packet that carries data (not a bare TCP ACK, SYN or FIN).
    pub fn carries_data(&self) -> bool {
        self.wire.is_some_and(|w| w.payload > 0)
    }
}

type Key = (u8, u8, u16, u16);

struct Open {
    events: Vec<Event>,
    last_ts: u64,
}

/// Packets' events in, packets out, each once none of its events has come
/// for `quiet_ns`.
pub struct PacketBuilder {
    open: BTreeMap<Key, Open>,
    quiet_ns: u64,
    pub flows: BTreeMap<u16, Flow>,
}

impl PacketBuilder {
    pub fn new(quiet_ns: u64) -> PacketBuilder {
        PacketBuilder {
            open: BTreeMap::new(),
            quiet_ns,
            flows: BTreeMap::new(),
        }
    }

    /// Takes a flow's announcement or a packet's event; false for any
    /// other event (an echo's).
    pub fn push(&mut self, e: &Event) -> bool {
        if let Some(f) = Flow::of(e) {
            self.flows.insert(f.number, f);
            return true;
        }
        if !is_flow(e.icmp_type) {
            return false;
        }
        let key = (e.family, e.icmp_type, e.icmp_id, e.icmp_seq);
        let o = self.open.entry(key).or_insert_with(|| Open {
            events: Vec::new(),
            last_ts: 0,
        });
        o.last_ts = o.last_ts.max(e.ts_ns);
        o.events.push(*e);
        true
    }

    /// Packets quiet since before `now_ns`, in the order they began.
    pub fn take_ready(&mut self, now_ns: u64) -> Vec<Packet> {
        let quiet: Vec<Key> = self
            .open
            .iter()
            .filter(|(_, o)| o.last_ts + self.quiet_ns <= now_ns)
            .map(|(k, _)| *k)
            .collect();
        let mut out: Vec<Packet> = quiet
            .into_iter()
            .filter_map(|k| self.open.remove(&k))
            .map(|o| build_packet(o.events))
            .collect();
        out.sort_by_key(Packet::first_ns);
        out
    }

    pub fn finish(&mut self) -> Vec<Packet> {
        self.take_ready(u64::MAX - self.quiet_ns)
    }
}

/// A stage of a read that took the packet's data.
fn is_read(s: Stage) -> bool {
    matches!(s, Stage::CopyToUser | Stage::SockRecvmsg | Stage::Recvmsg)
}

/// One packet from its events, in any order.
pub fn build_packet(mut events: Vec<Event>) -> Packet {
    events.sort_by_key(|e| (e.ts_ns, Stage::from_u8(e.stage), e.probe));
    let first = events.first().copied().unwrap_or_default();
    let reverse = first.icmp_seq & FLOW_REVERSE != 0;
    let mut hops = Vec::with_capacity(events.len());
    let mut prev = first.ts_ns;
    let mut wire = None;
    for ev in &events {
        let Some(mut h) = hop(ev, Leg::Request, first.ts_ns, prev) else {
            continue;
        };
        if matches!(h.stage, Stage::DevQueueXmit | Stage::IpOutput) && wire.is_none() {
            wire = Some(Wire {
                payload: ev.aux2 & 0x7fff_ffff,
                tcp_flags: ev.tcp_flags,
                tcp_seq: u32::from_le_bytes(ev.tcp_seq),
            });
        }
        // The transmit's `aux2` holds the payload here, not a socket type.
        if let Some(StageDetail::Transmit { sock_type, .. }) = &mut h.detail {
            *sock_type = 0;
        }
        prev = ev.ts_ns;
        hops.push(h);
    }
    let total_ns = hops.last().map_or(0, |h| h.ts_ns - first.ts_ns);
    let reach = if hops.iter().any(|h| h.stage == Stage::Drop) {
        Reach::Dropped
    } else if hops.iter().any(|h| is_read(h.stage)) {
        Reach::Read
    } else if hops.iter().any(|h| h.stage == Stage::SockDeliver) {
        Reach::Queued
    } else if hops.iter().any(|h| h.stage == Stage::NetifReceiveSkb) {
        Reach::Received
    } else {
        Reach::Sent
    };
    Packet {
        flow: first.icmp_id,
        proto: Proto::of(first.icmp_type),
        family: first.family,
        reverse,
        number: first.icmp_seq & !FLOW_REVERSE,
        wire: if first.icmp_type == PKT_TCP {
            wire
        } else {
            wire.map(|w| Wire {
                tcp_flags: 0,
                tcp_seq: 0,
                ..w
            })
        },
        hops,
        total_ns,
        reach,
    }
}

/// What the summary says of the packets: how many, how far they went,
/// and per protocol and stage the time from the previous hop.
#[derive(Default)]
pub struct PacketStats {
    pub packets: BTreeMap<Proto, u64>,
    pub reach: BTreeMap<(Proto, &'static str), u64>,
    /// Per protocol and (stage, at return), in the order the stages come.
    pub rows: BTreeMap<(Proto, u8, bool), (Stage, Histogram)>,
    pub total: BTreeMap<Proto, Histogram>,
    /// Per protocol and kind of exchange: its request's way, the
    /// server's time, its response's way, and the whole.
    pub exchanges: BTreeMap<(Proto, &'static str), ExchangeHists>,
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

impl PacketStats {
    pub fn add(&mut self, p: &Packet) {
        *self.packets.entry(p.proto).or_default() += 1;
        *self.reach.entry((p.proto, p.reach.name())).or_default() += 1;
        for (i, h) in p.hops.iter().enumerate() {
            let at_return = h.probe.info().at_return;
            let row = self
                .rows
                .entry((p.proto, h.stage.rank(), at_return))
                .or_insert_with(|| (h.stage, Histogram::default()));
            if i > 0 {
                row.1.record(h.delta_ns);
            }
        }
        self.total.entry(p.proto).or_default().record(p.total_ns);
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

/// What an exchange is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    /// TCP's handshake: SYN, SYN-ACK, ACK.
    Handshake,
    /// A request (the bytes one side sends before the other sends back)
    /// and its response.
    Request,
}

impl ExchangeKind {
    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Handshake => "handshake",
            ExchangeKind::Request => "request",
        }
    }
}

/// A request and its response on one flow, or a TCP handshake.
#[derive(Clone, Debug, PartialEq)]
pub struct Exchange {
    pub flow: u16,
    pub proto: Proto,
    pub kind: ExchangeKind,
    /// Its number among its flow's exchanges of its kind, from 1.
    pub number: u32,
    /// The direction the request went (`Packet::reverse`).
    pub request_reverse: bool,
    pub request: Vec<Packet>,
    /// Empty when no response was seen.
    pub response: Vec<Packet>,
}

/// One direction of an exchange, in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Way {
    pub bytes: u64,
    pub packets: usize,
    /// Its first packet's first stage.
    pub sent_ns: u64,
    /// Its last packet's furthest stage, and what that was.
    pub arrived_ns: u64,
    pub reach: Reach,
}

impl Way {
    fn of(ps: &[Packet]) -> Option<Way> {
        let first = ps.iter().map(Packet::sent_ns).min()?;
        let last = ps.iter().max_by_key(|p| p.sent_ns())?;
        let hop = last.reach_hop()?;
        Some(Way {
            bytes: ps
                .iter()
                .map(|p| p.wire.map_or(0, |w| w.payload as u64))
                .sum(),
            packets: ps.len(),
            sent_ns: first,
            arrived_ns: hop.ts_ns,
            reach: last.reach,
        })
    }

    /// From the first packet's first stage to the last one's furthest:
    /// the kernel's time (and the reader's, until it read).
    pub fn ns(&self) -> u64 {
        self.arrived_ns.saturating_sub(self.sent_ns)
    }
}

impl Exchange {
    pub fn request_way(&self) -> Option<Way> {
        Way::of(&self.request)
    }

    pub fn response_way(&self) -> Option<Way> {
        Way::of(&self.response)
    }

    /// The server's own time: from the request's arrival (its read, or
    /// its queueing when the read was not seen) to the response's first
    /// stage.
    pub fn server_ns(&self) -> Option<u64> {
        let (q, r) = (self.request_way()?, self.response_way()?);
        r.sent_ns.checked_sub(q.arrived_ns)
    }

    /// From the request's first stage to the response's arrival; for a
    /// handshake, from the SYN's first stage to the ACK's arrival.
    pub fn total_ns(&self) -> Option<u64> {
        if self.kind == ExchangeKind::Handshake {
            let (syn, ack) = (self.request.first()?, self.request.last()?);
            return ack.reach_hop()?.ts_ns.checked_sub(syn.sent_ns());
        }
        let (q, r) = (self.request_way()?, self.response_way()?);
        r.arrived_ns.checked_sub(q.sent_ns)
    }
}

#[derive(Default)]
struct FlowState {
    /// The handshake's packets so far (SYN, then SYN-ACK).
    syn: Vec<Packet>,
    handshakes: u32,
    exchanges: u32,
    /// The request's direction, once data was seen.
    request_reverse: Option<bool>,
    request: Vec<Packet>,
    response: Vec<Packet>,
    /// The last packet's first stage.
    last_ns: u64,
}

/// Packets in (as they close), exchanges out.
#[derive(Default)]
pub struct ExchangeBuilder {
    flows: BTreeMap<u16, FlowState>,
}

impl ExchangeBuilder {
    /// Takes a closed packet; returns the exchanges it ends (the one
    /// before a new request, a handshake at its ACK).
    pub fn push(&mut self, p: &Packet) -> Vec<Exchange> {
        let f = self.flows.entry(p.flow).or_default();
        f.last_ns = f.last_ns.max(p.sent_ns());
        let mut out = Vec::new();
        if p.proto == Proto::Tcp
            && let Some(w) = p.wire
        {
            let (syn, ack) = (w.tcp_flags & 0x02 != 0, w.tcp_flags & 0x10 != 0);
            match (syn, ack, f.syn.len()) {
                (true, false, _) => {
                    f.syn = vec![p.clone()];
                    return out;
                }
                (true, true, 1) if f.syn[0].reverse != p.reverse => {
                    f.syn.push(p.clone());
                    return out;
                }
                (false, true, 2) if p.reverse == f.syn[0].reverse && w.payload == 0 => {
                    let syns = std::mem::take(&mut f.syn);
                    f.handshakes += 1;
                    out.push(Exchange {
                        flow: p.flow,
                        proto: p.proto,
                        kind: ExchangeKind::Handshake,
                        number: f.handshakes,
                        request_reverse: p.reverse,
                        request: vec![syns[0].clone(), p.clone()],
                        response: vec![syns[1].clone()],
                    });
                    return out;
                }
                _ => {}
            }
        }
        if !p.carries_data() {
            return out;
        }
        match f.request_reverse {
            None => {
                f.request_reverse = Some(p.reverse);
                f.request.push(p.clone());
            }
            Some(r) if r == p.reverse => {
                if !f.response.is_empty() {
                    out.extend(Self::end(p.flow, p.proto, f));
                }
                f.request.push(p.clone());
            }
            Some(_) => f.response.push(p.clone()),
        }
        out
    }

    fn end(flow: u16, proto: Proto, f: &mut FlowState) -> Option<Exchange> {
        if f.request.is_empty() {
            return None;
        }
        f.exchanges += 1;
        Some(Exchange {
            flow,
            proto,
            kind: ExchangeKind::Request,
            number: f.exchanges,
            request_reverse: f.request_reverse.unwrap_or(false),
            request: std::mem::take(&mut f.request),
            response: std::mem::take(&mut f.response),
        })
    }

    /// Exchanges whose response has had no packet since before
    /// `before_ns`: the flow went quiet after it.
    pub fn take_quiet(&mut self, before_ns: u64) -> Vec<Exchange> {
        let mut out = Vec::new();
        for (&flow, f) in self.flows.iter_mut() {
            if !f.response.is_empty() && f.last_ns < before_ns {
                let proto = f.response[0].proto;
                out.extend(Self::end(flow, proto, f));
            }
        }
        out
    }

    /// Every exchange still open, answered or not.
    pub fn finish(&mut self) -> Vec<Exchange> {
        let mut out = Vec::new();
        for (&flow, f) in self.flows.iter_mut() {
            if let Some(proto) = f.request.first().map(|p| p.proto) {
                out.extend(Self::end(flow, proto, f));
            }
        }
        out
    }
}

//! TCP and UDP: the traced command's flows, and one journey per packet
//! (a TCP segment or a UDP datagram, in one direction, hop by hop), then
//! the exchanges the packets make (a request and its response). Pure: no
//! kernel, no clock, no I/O.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lotrace_common::{
    Event, Stage,
    event::{AF_INET, FLAG_FLOW_NEW, FLOW_REVERSE, PKT_TCP, is_flow},
};

use crate::model::{
    builder::hop,
    detail::StageDetail,
    journey::{Hop, Leg, family_name},
    stats::{Histogram, NetRx, count_dev},
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

    /// What one packet of it is called, and several.
    pub fn packet_words(self) -> (&'static str, &'static str) {
        match self {
            Proto::Tcp => ("segment", "segments"),
            Proto::Udp => ("datagram", "datagrams"),
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
    /// TCP: the number of the earlier segment (same direction) this one
    /// sends again: the same sequence number, flags and payload.
    pub retransmits: Option<u16>,
    /// First met at the driver's transmit, not at the transmit's entry: a
    /// segment GSO cut from a larger one (a new skb; the larger one ends
    /// there, freed).
    pub segmented: bool,
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
    open: HashMap<Key, Open>,
    quiet_ns: u64,
    pub flows: BTreeMap<u16, Flow>,
}

impl PacketBuilder {
    pub fn new(quiet_ns: u64) -> PacketBuilder {
        PacketBuilder {
            open: HashMap::new(),
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
        // A packet has a dozen or two events.
        let o = self.open.entry(key).or_insert_with(|| Open {
            events: Vec::with_capacity(16),
            last_ts: 0,
        });
        o.last_ts = o.last_ts.max(e.ts_ns);
        o.events.push(*e);
        true
    }

    /// Packets quiet since before `now_ns`, in the order they began.
    pub fn take_ready(&mut self, now_ns: u64) -> Vec<Packet> {
        let quiet_ns = self.quiet_ns;
        let mut out: Vec<Packet> = Vec::new();
        self.open.retain(|_, o| {
            if o.last_ts + quiet_ns > now_ns {
                return true;
            }
            out.push(build_packet(std::mem::take(&mut o.events)));
            false
        });
        // The same order however the map held them.
        out.sort_by_key(|p| (p.first_ns(), p.flow, p.reverse, p.number, p.proto));
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
        let Some(h) = hop(ev, Leg::Request, first.ts_ns, prev) else {
            continue;
        };
        // What the transmit that numbered it read: its entry's, or the
        // driver's for a segment GSO cut there.
        if matches!(
            h.stage,
            Stage::DevQueueXmit | Stage::IpOutput | Stage::LoopbackXmit | Stage::DevXmit
        ) && !h.probe.info().at_return
            && wire.is_none()
        {
            wire = Some(Wire {
                payload: ev.aux2 & 0x7fff_ffff,
                tcp_flags: ev.tcp_flags,
                tcp_seq: u32::from_le_bytes(ev.tcp_seq),
            });
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
    let segmented = hops
        .first()
        .is_some_and(|h| matches!(h.stage, Stage::LoopbackXmit | Stage::DevXmit));
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
        retransmits: None,
        segmented,
    }
}

/// Segments seen per flow and direction, to link a retransmission to the
/// segment it repeats. Only what a retransmission repeats is kept: SYNs,
/// FINs and segments with data.
#[derive(Default)]
pub struct Retransmits {
    seen: BTreeMap<(u16, bool), Window>,
}

/// One flow direction's segments: by what a retransmission repeats, the
/// number of the first that sent it; oldest first, to forget.
#[derive(Default)]
struct Window {
    by: HashMap<Sent, u16>,
    order: VecDeque<Sent>,
}

/// A segment as a retransmission repeats it: sequence number, SYN and FIN
/// flags, payload.
type Sent = (u32, u8, u32);

/// Segments remembered per flow and direction.
const RETRANSMIT_WINDOW: usize = 4096;

impl Retransmits {
    /// Marks `p` as a retransmission if an earlier segment had its
    /// sequence number, SYN and FIN flags and payload.
    pub fn mark(&mut self, p: &mut Packet) {
        let (Proto::Tcp, Some(w)) = (p.proto, p.wire) else {
            return;
        };
        let flags = w.tcp_flags & 0x03;
        if w.payload == 0 && flags == 0 {
            return;
        }
        let q = self.seen.entry((p.flow, p.reverse)).or_default();
        let sent = (w.tcp_seq, flags, w.payload);
        match q.by.get(&sent) {
            Some(&n) if n != p.number => {
                p.retransmits = Some(n);
                return;
            }
            Some(_) => return,
            None => {}
        }
        if q.order.len() == RETRANSMIT_WINDOW
            && let Some(old) = q.order.pop_front()
        {
            q.by.remove(&old);
        }
        q.by.insert(sent, p.number);
        q.order.push_back(sent);
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
        // A retransmission's bytes were counted with the segment it repeats.
        let bytes: u64 = ps
            .iter()
            .filter(|p| p.retransmits.is_none())
            .map(|p| p.wire.map_or(0, |w| w.payload as u64))
            .sum();
        // Every byte was read, some through an earlier segment's skb that
        // TCP merged later ones into: the way ends at the last read.
        let merged: u64 = ps.iter().map(|p| p.merged_bytes() as u64).sum();
        // A segment sent again: its bytes arrive with the retransmission.
        let resent: Vec<u16> = ps.iter().filter_map(|p| p.retransmits).collect();
        let unread: u64 = ps
            .iter()
            .filter(|p| p.reach != Reach::Read && p.retransmits.is_none())
            .filter(|p| !resent.contains(&p.number))
            .map(|p| p.wire.map_or(0, |w| w.payload as u64))
            .sum();
        let all_read = ps.iter().any(|p| p.reach == Reach::Read) && unread <= merged;
        let (arrived_ns, reach) = if all_read {
            let t = ps
                .iter()
                .filter(|p| p.reach == Reach::Read)
                .filter_map(|p| p.reach_hop())
                .map(|h| h.ts_ns)
                .max()?;
            (t, Reach::Read)
        } else {
            (last.reach_hop()?.ts_ns, last.reach)
        };
        Some(Way {
            bytes,
            packets: ps.len(),
            sent_ns: first,
            arrived_ns,
            reach,
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lotrace_common::{
        ProbeId,
        event::{AF_INET6, FLAG_NET_RX, FLAG_PACKET, PKT_UDP},
    };

    const TP_STAGES: [(Stage, ProbeId); 8] = [
        (Stage::Sendto, ProbeId::SysEnterSendto),
        (Stage::DevQueueXmit, ProbeId::NetDevQueue),
        (Stage::LoopbackXmit, ProbeId::NetDevStartXmit),
        (Stage::NetifRx, ProbeId::NetifRxEntry),
        (Stage::NetifReceiveSkb, ProbeId::NetifReceiveSkb),
        (Stage::SockDeliver, ProbeId::SkDataReady),
        (Stage::CopyToUser, ProbeId::SkbCopyDatagramIovec),
        (Stage::SockRecvmsg, ProbeId::SockRecvLength),
    ];

    /// One event of a flow packet.
    fn pev(proto: u8, flow: u16, seq: u16, stage: Stage, ts: u64) -> Event {
        let probe = TP_STAGES.iter().find(|(s, _)| *s == stage).unwrap().1;
        Event {
            ts_ns: ts,
            stage: stage as u8,
            probe: probe as u8,
            flags: FLAG_PACKET
                | if stage == Stage::NetifReceiveSkb || stage == Stage::SockDeliver {
                    FLAG_NET_RX
                } else {
                    0
                },
            family: AF_INET,
            icmp_type: proto,
            icmp_id: flow,
            icmp_seq: seq,
            tid: if stage >= Stage::CopyToUser { 20 } else { 10 },
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            ..Event::default()
        }
    }

    /// A whole packet's events, read at the end: `payload` bytes, TCP
    /// flags `flags`, copied `copied` bytes (0: no copy seen).
    pub(crate) fn packet(
        proto: u8,
        flow: u16,
        seq: u16,
        t0: u64,
        payload: u32,
        flags: u8,
        copied: u32,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        for (i, (stage, _)) in TP_STAGES.iter().enumerate() {
            if *stage == Stage::CopyToUser && copied == 0 {
                continue;
            }
            let mut e = pev(proto, flow, seq, *stage, t0 + 1000 * i as u64);
            if *stage == Stage::DevQueueXmit {
                e.aux2 = payload | if seq & FLOW_REVERSE != 0 { 1 << 31 } else { 0 };
                e.tcp_flags = flags;
                e.tcp_seq = 7u32.to_le_bytes();
                e.aux = u64::from_le_bytes(*b"lo\0\0\0\0\0\0");
            }
            if *stage == Stage::CopyToUser {
                e.len = copied;
            }
            if *stage == Stage::SockRecvmsg {
                e.len = copied.max(payload);
                e.aux = e.len as u64;
            }
            out.push(e);
        }
        out
    }

    pub(crate) fn announce(flow: u16, proto: u8) -> Event {
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[127, 0, 0, 2]);
        Event {
            ts_ns: 1,
            flags: FLAG_FLOW_NEW | FLAG_PACKET,
            family: AF_INET,
            icmp_type: proto,
            icmp_id: flow,
            comm: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            skb: u64::from_le_bytes(dst[..8].try_into().unwrap()),
            aux: u64::from_le_bytes(dst[8..].try_into().unwrap()),
            len: (41000 << 16) | 8000,
            tgid: 10,
            stage: Stage::DevQueueXmit as u8,
            probe: ProbeId::NetDevQueue as u8,
            ..Event::default()
        }
    }

    #[test]
    fn a_flow_is_announced_with_its_ends() {
        let f = Flow::of(&announce(3, PKT_TCP)).unwrap();
        assert_eq!(f.number, 3);
        assert_eq!(f.proto, Proto::Tcp);
        assert_eq!(
            f.ends(false),
            ("127.0.0.1:41000".into(), "127.0.0.2:8000".into())
        );
        assert_eq!(
            f.ends(true),
            ("127.0.0.2:8000".into(), "127.0.0.1:41000".into())
        );
        let mut v6 = announce(4, PKT_UDP);
        v6.family = AF_INET6;
        v6.comm = Ipv6Addr::LOCALHOST.octets();
        let f = Flow::of(&v6).unwrap();
        assert_eq!(f.ends(false).0, "[::1]:41000");
        // A stage's event is no announcement.
        assert!(Flow::of(&pev(PKT_TCP, 1, 1, Stage::NetifRx, 5)).is_none());
    }

    #[test]
    fn a_packet_is_built_from_its_events_in_any_order() {
        let mut evs = packet(PKT_TCP, 1, 2, 1_000, 78, 0x18, 78);
        evs.reverse();
        let p = build_packet(evs);
        assert_eq!((p.flow, p.number, p.reverse), (1, 2, false));
        assert_eq!(p.proto, Proto::Tcp);
        assert_eq!(p.hops.len(), 8);
        assert_eq!(p.hops[0].stage, Stage::Sendto);
        assert_eq!(
            p.wire,
            Some(Wire {
                payload: 78,
                tcp_flags: 0x18,
                tcp_seq: 7
            })
        );
        assert_eq!(tcp_flag_names(0x18), "ACK,PSH");
        assert_eq!(p.reach, Reach::Read);
        assert_eq!(p.reach_ns(), 6000, "the copy, not the later return");
        assert_eq!(p.total_ns, 7000);
        assert_eq!(p.merged_bytes(), 0);
        // The transmit's aux2 is the payload here, never a socket type.
        assert!(p.hops.iter().all(|h| !matches!(
            h.detail,
            Some(StageDetail::Transmit { sock_type, .. }) if sock_type != 0
        )));
    }

    #[test]
    fn how_far_a_packet_went_is_its_furthest_stage_seen() {
        let evs = packet(PKT_UDP, 1, 1, 0, 7, 0, 0);
        let queued: Vec<Event> = evs
            .iter()
            .filter(|e| e.stage != Stage::SockRecvmsg as u8)
            .copied()
            .collect();
        assert_eq!(build_packet(queued.clone()).reach, Reach::Queued);
        let received: Vec<Event> = queued
            .iter()
            .filter(|e| e.stage != Stage::SockDeliver as u8)
            .copied()
            .collect();
        assert_eq!(build_packet(received).reach, Reach::Received);
        // A UDP datagram read without a copy: its socket layer's return.
        let p = build_packet(evs);
        assert_eq!(p.reach, Reach::Read);
        assert_eq!(p.wire.unwrap().tcp_flags, 0, "UDP has no flags");
    }

    #[test]
    fn bytes_a_copy_gave_beyond_the_segment_were_merged_into_it() {
        let p = build_packet(packet(PKT_TCP, 1, FLOW_REVERSE | 3, 0, 184, 0x18, 190));
        assert!(p.reverse);
        assert_eq!(p.merged_bytes(), 6);
    }

    #[test]
    fn packets_close_when_quiet_and_are_told_apart_by_flow_and_number() {
        let mut b = PacketBuilder::new(250);
        assert!(b.push(&announce(1, PKT_TCP)));
        for e in packet(PKT_TCP, 1, 1, 0, 0, 0x02, 0)
            .into_iter()
            .chain(packet(PKT_TCP, 1, FLOW_REVERSE | 1, 100, 0, 0x12, 0))
            .chain(packet(PKT_TCP, 2, 1, 200, 0, 0x02, 0))
        {
            assert!(b.push(&e));
        }
        // An echo's event is not a flow packet's.
        let mut echo = pev(PKT_TCP, 1, 1, Stage::NetifRx, 5);
        echo.icmp_type = lotrace_common::event::ICMP_ECHO;
        assert!(!b.push(&echo));
        assert!(b.take_ready(7_100).is_empty());
        let ready = b.take_ready(7_250);
        assert_eq!(ready.len(), 1);
        assert_eq!((ready[0].flow, ready[0].number), (1, 1));
        let rest = b.finish();
        assert_eq!(rest.len(), 2);
        assert!(rest[0].reverse && rest[0].first_ns() < rest[1].first_ns());
        assert_eq!(b.flows.len(), 1);
    }

    #[test]
    fn a_handshake_then_requests_pair_with_their_responses() {
        let mut x = ExchangeBuilder::default();
        let p = |seq, t0, payload, flags, copied| {
            build_packet(packet(PKT_TCP, 1, seq, t0, payload, flags, copied))
        };
        let back = FLOW_REVERSE;
        assert!(x.push(&p(1, 0, 0, 0x02, 0)).is_empty());
        assert!(x.push(&p(back | 1, 10_000, 0, 0x12, 0)).is_empty());
        let hs = x.push(&p(2, 20_000, 0, 0x10, 0));
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0].kind, ExchangeKind::Handshake);
        // The ACK's furthest stage (its socket layer's return, here) less
        // the SYN's first.
        assert_eq!(hs[0].total_ns(), Some(27_000));
        // Request 1 in two segments, its response in one.
        assert!(x.push(&p(3, 100_000, 100, 0x18, 100)).is_empty());
        assert!(x.push(&p(4, 101_000, 50, 0x18, 50)).is_empty());
        assert!(x.push(&p(back | 2, 200_000, 300, 0x18, 300)).is_empty());
        // A bare ACK carries no request.
        assert!(x.push(&p(5, 250_000, 0, 0x10, 0)).is_empty());
        // The next request ends the first exchange.
        let done = x.push(&p(6, 300_000, 10, 0x18, 10));
        assert_eq!(done.len(), 1);
        let e = &done[0];
        assert_eq!((e.kind, e.number), (ExchangeKind::Request, 1));
        let q = e.request_way().unwrap();
        assert_eq!((q.bytes, q.packets, q.sent_ns), (150, 2, 100_000));
        // The last request segment's copy.
        assert_eq!(q.arrived_ns, 107_000);
        let r = e.response_way().unwrap();
        assert_eq!((r.bytes, r.sent_ns, r.arrived_ns), (300, 200_000, 206_000));
        assert_eq!(e.server_ns(), Some(93_000));
        assert_eq!(e.total_ns(), Some(106_000));
        // The second, unanswered, ends with the trace.
        assert!(x.take_quiet(u64::MAX).is_empty(), "no response yet");
        let last = x.finish();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].number, 2);
        assert!(last[0].response.is_empty() && last[0].server_ns().is_none());
    }

    /// A response of two segments whose second TCP merged into the
    /// first's skb: the first's copy read both, the second's skb was never
    /// read. The response was read, when the first's copy was.
    #[test]
    fn a_response_read_through_a_merged_skb_was_read() {
        let q = build_packet(packet(PKT_TCP, 1, 1, 0, 10, 0x18, 10));
        let r1 = build_packet(packet(PKT_TCP, 1, FLOW_REVERSE | 1, 10_000, 100, 0x18, 150));
        let mut evs = packet(PKT_TCP, 1, FLOW_REVERSE | 2, 11_000, 50, 0x18, 0);
        evs.retain(|e| e.stage != Stage::SockRecvmsg as u8);
        let r2 = build_packet(evs);
        assert_eq!(r2.reach, Reach::Queued);
        let x = Exchange {
            flow: 1,
            proto: Proto::Tcp,
            kind: ExchangeKind::Request,
            number: 1,
            request_reverse: false,
            request: vec![q],
            response: vec![r1, r2.clone()],
        };
        let w = x.response_way().unwrap();
        assert_eq!((w.reach, w.bytes, w.arrived_ns), (Reach::Read, 150, 16_000));
        // Without the merge, the second segment's bytes were not read.
        let mut y = x.clone();
        y.response[0] = build_packet(packet(PKT_TCP, 1, FLOW_REVERSE | 1, 10_000, 100, 0x18, 100));
        let w = y.response_way().unwrap();
        assert_eq!(w.reach, Reach::Queued);
    }

    /// A data segment dropped, then sent again: the second is linked to
    /// the first, and the request's bytes are counted once, read.
    #[test]
    fn a_retransmission_is_linked_to_the_segment_it_repeats() {
        let mut r = Retransmits::default();
        let mut evs = packet(PKT_TCP, 1, 3, 0, 78, 0x18, 0);
        evs.retain(|e| e.stage <= Stage::NetifReceiveSkb as u8);
        let mut first = build_packet(evs);
        first.reach = Reach::Dropped;
        let mut again = build_packet(packet(PKT_TCP, 1, 4, 200_000, 78, 0x18, 78));
        // The same bytes the other way are not a retransmission.
        let mut back = build_packet(packet(PKT_TCP, 1, FLOW_REVERSE | 3, 0, 78, 0x18, 78));
        // A bare ACK repeats nothing.
        let mut ack = build_packet(packet(PKT_TCP, 1, 5, 300_000, 0, 0x10, 0));
        let mut ack2 = build_packet(packet(PKT_TCP, 1, 6, 300_000, 0, 0x10, 0));
        for p in [&mut first, &mut again, &mut back, &mut ack, &mut ack2] {
            r.mark(p);
        }
        assert_eq!(first.retransmits, None);
        assert_eq!(again.retransmits, Some(3));
        assert_eq!((back.retransmits, ack2.retransmits), (None, None));
        let w = Way::of(&[first, again]).unwrap();
        assert_eq!((w.bytes, w.reach, w.sent_ns), (78, Reach::Read, 0));
    }

    #[test]
    fn a_response_ends_its_exchange_once_its_flow_is_quiet() {
        let mut x = ExchangeBuilder::default();
        let p = |seq, t0| build_packet(packet(PKT_UDP, 2, seq, t0, 30, 0, 0));
        assert!(x.push(&p(1, 0)).is_empty());
        assert!(x.push(&p(FLOW_REVERSE | 1, 50_000)).is_empty());
        assert!(x.take_quiet(50_000).is_empty());
        let done = x.take_quiet(50_001);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].proto, Proto::Udp);
        assert!(x.finish().is_empty());
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

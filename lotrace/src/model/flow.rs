//! TCP and UDP: the traced command's flows, and one journey per packet
//! (a TCP segment or a UDP datagram, in one direction, hop by hop), with
//! what the packets' headers said and how far each went; `exchange` pairs
//! them. Pure: no kernel, no clock, no I/O.

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
    first_ts: u64,
    last_ts: u64,
}

/// Packets' events in, packets out, each once none of its events has come
/// for `quiet_ns`, and in each flow in the order they began.
pub struct PacketBuilder {
    open: HashMap<Key, Open>,
    /// Closed, behind a packet of their flow that began earlier and is
    /// still open: a packet's last event can come long after its read (an
    /// skb whose free was deferred to the CPU that made it), and the
    /// exchanges are the flow's packets in the order they were sent.
    held: Vec<Packet>,
    quiet_ns: u64,
    pub flows: BTreeMap<u16, Flow>,
}

impl PacketBuilder {
    pub fn new(quiet_ns: u64) -> PacketBuilder {
        PacketBuilder {
            open: HashMap::new(),
            held: Vec::new(),
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
            first_ts: u64::MAX,
            last_ts: 0,
        });
        o.first_ts = o.first_ts.min(e.ts_ns);
        o.last_ts = o.last_ts.max(e.ts_ns);
        o.events.push(*e);
        true
    }

    /// Packets quiet since before `now_ns` and begun before every packet
    /// of their flow still open, in the order they began.
    pub fn take_ready(&mut self, now_ns: u64) -> Vec<Packet> {
        let quiet_ns = self.quiet_ns;
        let held = &mut self.held;
        let mut open_since: HashMap<u16, u64> = HashMap::new();
        self.open.retain(|&(_, _, flow, _), o| {
            if o.last_ts + quiet_ns > now_ns {
                let t = open_since.entry(flow).or_insert(u64::MAX);
                *t = (*t).min(o.first_ts);
                return true;
            }
            held.push(build_packet(std::mem::take(&mut o.events)));
            false
        });
        let (mut out, held): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|p| open_since.get(&p.flow).is_none_or(|&t| p.first_ns() < t));
        self.held = held;
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::exchange::Way;
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

    /// A request whose skb was freed long after it was read closes after
    /// the response and the next request: those wait for it, so that its
    /// flow's packets come out in the order they were sent. Another flow's
    /// do not wait.
    #[test]
    fn a_packet_closing_late_holds_back_its_flows_later_ones() {
        let mut b = PacketBuilder::new(250);
        let mut request = packet(PKT_TCP, 1, 1, 0, 10, 0x18, 10);
        let mut freed = *request.last().unwrap();
        freed.ts_ns = 50_000;
        request.push(freed);
        for e in request
            .into_iter()
            .chain(packet(PKT_TCP, 1, FLOW_REVERSE | 1, 10_000, 10, 0x18, 10))
            .chain(packet(PKT_TCP, 1, 2, 20_000, 10, 0x18, 10))
            .chain(packet(PKT_TCP, 2, 1, 20_000, 10, 0x18, 10))
        {
            b.push(&e);
        }
        let ready = b.take_ready(40_000);
        assert_eq!(ready.len(), 1, "only the other flow's");
        assert_eq!(ready[0].flow, 2);
        assert!(b.take_ready(50_000).is_empty());
        let ready = b.take_ready(50_250);
        let order: Vec<_> = ready.iter().map(|p| (p.reverse, p.number)).collect();
        assert_eq!(order, [(false, 1), (true, 1), (false, 2)]);
        assert!(b.finish().is_empty());
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
}

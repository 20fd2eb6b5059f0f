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
    } else if hops.iter().any(|h| h.stage == Stage::CopyToUser) {
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

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }
}

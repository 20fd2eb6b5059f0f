//! Exchanges: the packets of a flow paired into a request and its
//! response (each direction's kernel time, and the server's own time
//! between), or into TCP's handshake. Pure: packets in, exchanges out.

use std::collections::BTreeMap;

use crate::model::flow::{Packet, Proto, Reach};

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
    pub(crate) fn of(ps: &[Packet]) -> Option<Way> {
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
mod tests {
    use super::*;
    use crate::model::flow::{build_packet, tests::packet};
    use lotrace_common::{
        Stage,
        event::{FLOW_REVERSE, PKT_TCP, PKT_UDP},
    };

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
}

//! Journeys the programs assembled in the kernel (see
//! `lotrace_common::assemble`), taken apart into their events: from the
//! records the ring buffer carries, and from the slots user space reads
//! out of the map, each event once.

use lotrace_common::{
    Event,
    assemble::{HEAD_SIZE, POSITIONS, SLOTS, SlotHead},
    event::EVENT_SIZE,
};

/// Where a slot's bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    /// A record in the ring buffer: the programs sent the slot, up to its
    /// last event, when its echo closed or a later echo took the slot
    /// over.
    Record,
    /// The map, read by user space while the programs run: only the
    /// slot's own echo's events are taken, since the programs may be
    /// handing the slot to the next echo during the read.
    Map,
    /// The map, read once the programs are done with it: everything.
    Last,
}

/// What user space has taken of each slot's current echo, so that every
/// event reaches it once: a record that comes after the map was read
/// holds the events read then.
pub struct Taken {
    /// Per slot: the generation (see `SlotHead::generation`) and the
    /// positions taken of it.
    slots: Vec<(u32, u64)>,
    /// Records taken, and the events they held.
    pub records: u64,
    pub events: u64,
}

impl Default for Taken {
    fn default() -> Self {
        Taken {
            slots: vec![(u32::MAX, 0); SLOTS as usize],
            records: 0,
            events: 0,
        }
    }
}

impl Taken {
    /// The events of a record or of a slot read from the map not taken
    /// before, in time order; `None` if the bytes are not a slot.
    pub fn take(&mut self, b: &[u8], from: From) -> Option<Vec<Event>> {
        self.take_quiet(b, from, u64::MAX)
    }

    /// Of slot `index`, the generation and the positions taken of it.
    pub fn of(&self, index: u32) -> Option<(u32, u64)> {
        self.slots.get(index as usize).copied()
    }

    /// `take`, for a slot whose newest event is older than `before_ns`;
    /// else nothing (the echo is still under way).
    pub fn take_quiet(&mut self, b: &[u8], from: From, before_ns: u64) -> Option<Vec<Event>> {
        let head = SlotHead::from_bytes(b)?;
        let t = self.slots.get_mut(head.index as usize)?;
        if t.0 != head.generation {
            *t = (head.generation, 0);
        }
        let mask = if POSITIONS == 64 {
            u64::MAX
        } else {
            (1u64 << POSITIONS) - 1
        };
        let mut out = Vec::new();
        let mut taken = 0u64;
        let mut bits = head.present & !t.1 & mask;
        while bits != 0 {
            let p = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let o = HEAD_SIZE + p * EVENT_SIZE;
            let Some(e) = b.get(o..o + EVENT_SIZE).and_then(Event::from_bytes) else {
                continue;
            };
            let own = e.icmp_seq == head.seq
                && e.family == head.family
                && (e.icmp_id == head.id || e.icmp_id == head.packet_id);
            if from == From::Map && !own {
                continue;
            }
            if e.ts_ns >= before_ns {
                return Some(Vec::new());
            }
            taken |= 1 << p;
            out.push(e);
        }
        t.1 |= taken;
        if from == From::Record {
            self.records += 1;
        }
        self.events += out.len() as u64;
        // Positions follow the stages' order, not time: a send's return
        // comes after its packet is under way.
        out.sort_by_key(|e| e.ts_ns);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lotrace_common::{
        Stage,
        agg::row,
        assemble::{SLOT_SIZE, positions, record_size},
        catalog::PROBES,
        event::AF_INET,
    };

    fn head() -> SlotHead {
        SlotHead {
            open: 1,
            family: AF_INET,
            seq: 7,
            id: 0xffff,
            tid: 42,
            index: 7,
            ..SlotHead::default()
        }
    }

    fn event(stage: Stage, ts: u64, id: u16, seq: u16) -> Event {
        Event {
            ts_ns: ts,
            stage: stage as u8,
            family: AF_INET,
            icmp_type: 8,
            icmp_id: id,
            icmp_seq: seq,
            ..Event::default()
        }
    }

    fn at(stage: Stage, ret: bool, ts: u64, id: u16, seq: u16) -> (u32, Event) {
        let reply = matches!(stage, Stage::Recvmsg | Stage::CopyToUser);
        let mut e = event(stage, ts, id, seq);
        if reply {
            e.icmp_type = 0;
        }
        // Every row some probe reports, as the loader would find them.
        let table = positions(|_, s, ret| {
            PROBES
                .iter()
                .any(|p| p.stage == Some(s) && p.at_return == ret)
        });
        (table[row(reply, stage as u8, ret)] as u32, e)
    }

    /// A slot's bytes as the map holds them: each event at its position.
    fn slot(h: &SlotHead, events: &[(u32, Event)]) -> Vec<u8> {
        let mut h = *h;
        h.present = events.iter().fold(0, |m, (p, _)| m | 1 << p);
        let mut b = vec![0u8; SLOT_SIZE];
        b[..HEAD_SIZE].copy_from_slice(&h.to_bytes());
        for (p, e) in events {
            let o = HEAD_SIZE + *p as usize * EVENT_SIZE;
            b[o..o + EVENT_SIZE].copy_from_slice(&e.to_bytes());
        }
        b
    }

    /// A slot's record as the programs send it: up to its last event.
    fn record(h: &SlotHead, events: &[(u32, Event)]) -> Vec<u8> {
        let mut b = slot(h, events);
        let present = SlotHead::from_bytes(&b).unwrap().present;
        b.truncate(record_size(present));
        b
    }

    #[test]
    fn a_record_gives_its_events_in_time_order() {
        let send = at(Stage::Sendto, false, 10, 0xffff, 7);
        let sent = at(Stage::SockSendmsg, true, 50, 0xffff, 7);
        let xmit = at(Stage::DevQueueXmit, false, 30, 0xffff, 7);
        let mut t = Taken::default();
        let got = t
            .take(&record(&head(), &[send, sent, xmit]), From::Record)
            .unwrap();
        let ts: Vec<u64> = got.iter().map(|e| e.ts_ns).collect();
        assert_eq!(ts, vec![10, 30, 50]);
        assert_eq!((t.records, t.events), (1, 3));
        assert!(t.take(&[0; HEAD_SIZE - 1], From::Record).is_none());
    }

    #[test]
    fn an_event_read_from_the_map_is_not_taken_again_from_the_record() {
        let h = head();
        let send = at(Stage::Sendto, false, 10, 0xffff, 7);
        let route = at(Stage::Route, false, 20, 0xffff, 7);
        let mut t = Taken::default();
        let read = t.take(&slot(&h, &[send, route]), From::Map).unwrap();
        assert_eq!(read.len(), 2);
        let reply = at(Stage::Recvmsg, true, 90, 0xffff, 7);
        let rec = t
            .take(&record(&h, &[send, route, reply]), From::Record)
            .unwrap();
        assert_eq!(rec, vec![reply.1]);
        // The next echo in the slot starts afresh.
        let next = SlotHead {
            generation: 1,
            seq: 7 + 128,
            ..h
        };
        let send2 = at(Stage::Sendto, false, 100, 0xffff, 7 + 128);
        let got = t.take(&record(&next, &[send2]), From::Record).unwrap();
        assert_eq!(got, vec![send2.1]);
    }

    #[test]
    fn a_map_read_skips_another_echos_events() {
        // Read while the programs were handing the slot to the next echo:
        // that echo's event is left for its record.
        let h = head();
        let ours = at(Stage::Sendto, false, 10, 0xffff, 7);
        let next = at(Stage::Route, false, 20, 0xffff, 7 + 128);
        let mut t = Taken::default();
        let read = t.take(&slot(&h, &[ours, next]), From::Map).unwrap();
        assert_eq!(read, vec![ours.1]);
        // A record takes all it holds: each event keeps its own key.
        let rec = t.take(&record(&h, &[ours, next]), From::Record).unwrap();
        assert_eq!(rec, vec![next.1]);
    }

    #[test]
    fn a_datagram_sockets_packet_id_is_the_echos() {
        let h = SlotHead {
            packet_id: 9,
            ..head()
        };
        let send = at(Stage::Sendto, false, 10, 0xffff, 7);
        let xmit = at(Stage::DevQueueXmit, false, 30, 9, 7);
        let mut t = Taken::default();
        assert_eq!(
            t.take(&slot(&h, &[send, xmit]), From::Map).unwrap().len(),
            2
        );
    }

    #[test]
    fn an_echo_under_way_is_left_in_its_slot() {
        let send = at(Stage::Sendto, false, 10, 0xffff, 7);
        let route = at(Stage::Route, false, 20, 0xffff, 7);
        let b = slot(&head(), &[send, route]);
        let mut t = Taken::default();
        assert_eq!(t.take_quiet(&b, From::Map, 15), Some(Vec::new()));
        assert_eq!(t.take_quiet(&b, From::Map, 21).unwrap().len(), 2);
        assert_eq!(t.take_quiet(&b, From::Map, 21), Some(Vec::new()));
    }
}

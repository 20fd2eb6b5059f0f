//! Journeys assembled in the kernel. A streamed trace does not send each
//! stage's event to user space on its own: the programs keep each echo's
//! events in a slot of a map, one position per (leg, stage, at return),
//! and send the slot to the ring buffer as one record when the echo's
//! close stage is met, or when a later echo takes the slot over (see
//! [`record_size`]). What
//! does not fit (a stage met twice on a leg, a copy's free or drop, an
//! event of an echo that holds no slot) is streamed on its own, as
//! before: never dropped. User space takes an echo still in its slot after
//! a quiet period, and what is left at the end, by reading the map, so a
//! journey that never closes is shown as it was.
//!
//! The layout, the positions and the rules are here, once: the programs
//! apply them, user space decodes with them, and the host tests run them.

use crate::{
    Event, PktKey, Stage,
    agg::{STAGE_ROWS, row},
    event::{AF_INET6, EVENT_SIZE, le_u16, le_u32, le_u64},
    journey::Echo,
};

/// Positions of a slot: at most one bit each of [`SlotHead::present`].
pub const POSITIONS: usize = 52;

/// No position: the row's events are streamed on their own.
pub const NO_POSITION: u8 = u8::MAX;

/// Frees and drops have no position: copies of a packet are freed and
/// dropped on several CPUs at once, and a position has one writer. Nor
/// have TCP's and UDP's own stages: an echo never meets them.
pub const fn has_position(stage: Stage) -> bool {
    !matches!(stage, Stage::Free | Stage::Drop) && !stage.flows_only()
}

/// Whether a loopback echo may meet the stage on this leg (every one that
/// is expected there, and those some echoes meet: a softirq's raise, the
/// reply's route lookup, ping's wake-up). Only a record's size depends on
/// it: the rows that may be met come first.
pub const fn usual_on(stage: Stage, reply: bool) -> bool {
    match stage {
        // Another device's transmit.
        Stage::DevXmit => false,
        // The sender's system call.
        Stage::Sendto | Stage::SockSendmsg => !reply,
        // The reply's delivery to ping and ping's receive.
        Stage::IcmpReply
        | Stage::SockDeliver
        | Stage::Wakeup
        | Stage::CopyToUser
        | Stage::SockRecvmsg
        | Stage::Recvmsg => reply,
        _ => true,
    }
}

/// Each (leg, stage, at return) row's position in a slot (see
/// `agg::row`; [`NO_POSITION`]: none), for the rows this trace's probes
/// can report. The rows an echo may meet on each leg come first, in the
/// order a journey meets them ([`usual_on`]), and the others after: a
/// record ends at its last event (see [`record_size`]), so a plain echo's
/// holds few empty positions. The loader writes the table into
/// `Config::slot_pos`.
pub fn positions(observable: impl Fn(bool, Stage, bool) -> bool) -> [u8; STAGE_ROWS] {
    let mut table = [NO_POSITION; STAGE_ROWS];
    let mut next = 0usize;
    for usual in [true, false] {
        for reply in [false, true] {
            for s in Stage::ORDER {
                for ret in [false, true] {
                    if has_position(s)
                        && usual_on(s, reply) == usual
                        && observable(reply, s, ret)
                        && next < POSITIONS
                    {
                        table[row(reply, s as u8, ret)] = next as u8;
                        next += 1;
                    }
                }
            }
        }
    }
    table
}

/// Slots per family: the echoes in flight at once that each keep a slot.
/// A later echo with the same slot sends the earlier one's to the ring.
pub const SLOTS_PER_FAMILY: u32 = 128;
pub const SLOTS: u32 = 2 * SLOTS_PER_FAMILY;

/// The slot of an echo: by family and sequence, as `agg::echo_slot` (an
/// ICMP datagram socket rewrites the id between the send and the packet).
#[inline(always)]
pub const fn slot_index(family: u8, seq: u16) -> u32 {
    (if family == AF_INET6 {
        SLOTS_PER_FAMILY
    } else {
        0
    }) + (seq as u32 & (SLOTS_PER_FAMILY - 1))
}

/// Which echo a slot holds, and which of its positions hold an event.
/// First in the slot, and in a record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotHead {
    /// Bit `p`: `events[p]` holds an event. Set after the event is
    /// written, with an atomic add (several CPUs write one slot).
    pub present: u64,
    /// Counts the echoes the slot has held: what user space took of one
    /// echo by reading the map is not taken again from its record.
    pub generation: u32,
    /// The slot's own index, so that a record says where it came from.
    pub index: u32,
    /// The thread whose send opened the slot.
    pub tid: u32,
    pub seq: u16,
    /// The id of the send, and the id its packet went out with (0 until
    /// seen; an ICMP datagram socket's packets carry an id of their own).
    pub id: u16,
    pub packet_id: u16,
    pub family: u8,
    /// Non-zero while the echo takes events: cleared when it closes.
    pub open: u8,
    /// When the send claimed the slot, in units of 2^20 ns (about 1 ms),
    /// wrapping (see [`may_claim`]).
    pub claimed: u32,
    /// The positions user space has taken of this echo by reading the map
    /// (it writes them here): if the echo's record cannot be sent when a
    /// later echo takes the slot over, only the others are lost. Tagged
    /// with the echo's generation (see [`taken_tag`]), so that a mark for
    /// an echo the slot no longer holds is never applied to the next.
    pub taken: u64,
}

/// The bits of [`SlotHead::taken`] that are positions.
pub const TAKEN_POSITIONS: u64 = (1 << POSITIONS) - 1;

/// [`SlotHead::taken`] of a fresh echo of `generation`: no position, the
/// generation's low bits above the positions.
#[inline(always)]
pub const fn taken_tag(generation: u32) -> u64 {
    (generation as u64) << POSITIONS
}

/// `taken` with `positions` marked, if it is still `generation`'s.
pub const fn mark(taken: u64, generation: u32, positions: u64) -> Option<u64> {
    if taken & !TAKEN_POSITIONS != taken_tag(generation) {
        return None;
    }
    Some(taken | (positions & TAKEN_POSITIONS))
}

pub const HEAD_SIZE: usize = core::mem::size_of::<SlotHead>();
const _: () = assert!(HEAD_SIZE == 40);
/// Where [`SlotHead::taken`] is in a slot.
pub const TAKEN_OFFSET: usize = core::mem::offset_of!(SlotHead, taken);
const _: () = assert!(TAKEN_OFFSET == 32);

/// One echo under way, in its slot of the `JOURNEYS` map: which echo
/// (`head`), and either its events (a streamed trace) or what the
/// journey's meaning made of them so far (`--summary-only`). Both views
/// give an event to the echo the slot holds by the same rules (a claim
/// by one send at a time, opened last; [`fits`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub head: SlotHead,
    pub events: [Event; POSITIONS],
    /// After the events, so that a record (the head and a prefix of the
    /// events) does not carry it.
    pub echo: Echo,
    /// The sends claiming the slot at this moment: one at a time may (see
    /// `bits::try_enter`). Two pings sending one sequence at once on two
    /// CPUs otherwise both claimed it, and the head they wrote over each
    /// other put one echo's events in the other's record.
    pub claiming: u64,
}

pub const SLOT_SIZE: usize = core::mem::size_of::<Slot>();
const _: () = assert!(
    SLOT_SIZE == HEAD_SIZE + POSITIONS * EVENT_SIZE + core::mem::size_of::<Echo>() + 8
        && SLOT_SIZE.is_multiple_of(8)
);

/// The size of the record a slot is sent as: its head, then its events
/// up to the last one present, each at its position (`present` says which
/// hold one). Copied from the slot in one go: packing the events one
/// after another cost the traced packets more than the empty positions
/// cost the ring.
#[inline(always)]
pub const fn record_size(present: u64) -> usize {
    if present == 0 {
        return HEAD_SIZE;
    }
    let n = crate::agg::msb(present) as usize + 1;
    HEAD_SIZE + if n > POSITIONS { POSITIONS } else { n } * EVENT_SIZE
}

/// How an event relates to the echo a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fits {
    /// It is that echo's.
    Yes,
    /// It is that echo's packet, under the id the socket gave it: the
    /// first request packet the sending thread handles outside NET_RX.
    /// The slot learns the id.
    PacketId,
    No,
}

/// The clock of [`SlotHead::claimed`].
#[inline(always)]
pub const fn claim_clock(now: u64) -> u32 {
    (now >> 20) as u32
}

/// How long another thread's echo keeps its slot while it is open: about
/// a second, in [`claim_clock`] units (an echo never answered must not
/// keep it for ever).
pub const CLAIM_HELD: u32 = 1000;

/// Whether thread `tid`'s send at `now` ns may claim the streamed slot
/// `head` describes. Not while another thread's echo is open there and
/// recent: two pings sending one sequence at once run on two CPUs, and
/// taking the slot from under the other CPU's writes lost its events, or
/// put them in the wrong record. The later echo then goes without a
/// slot, its events sent on their own. A thread's own earlier echo
/// (unanswered, 128 sequences back) is taken over as before. Two sends
/// at the same instant are kept apart by [`Slot::claiming`]: one claims
/// the slot, or neither.
#[inline(always)]
pub const fn may_claim(head: &SlotHead, tid: u32, now: u64) -> bool {
    head.open == 0 || head.tid == tid || claim_clock(now).wrapping_sub(head.claimed) > CLAIM_HELD
}

/// Whether an event of `key`, seen by thread `tid`, has a place in the
/// echo `head` holds: it [`belongs`] to it, and the echo is still open
/// (a streamed echo's slot takes nothing once its record is sent).
#[inline(always)]
pub const fn fits(head: &SlotHead, key: &PktKey, reply: bool, tid: u32, net_rx: bool) -> Fits {
    if head.open == 0 {
        return Fits::No;
    }
    belongs(head, key, reply, tid, net_rx)
}

/// Whether an event of `key`, seen by thread `tid`, is the echo's that
/// `head` holds: the same family and sequence, and its id (the send's,
/// or the one the socket gave its packet).
#[inline(always)]
pub const fn belongs(head: &SlotHead, key: &PktKey, reply: bool, tid: u32, net_rx: bool) -> Fits {
    if key.family != head.family || key.icmp_seq != head.seq {
        return Fits::No;
    }
    if key.icmp_id == head.id || (head.packet_id != 0 && key.icmp_id == head.packet_id) {
        return Fits::Yes;
    }
    if head.packet_id == 0 && !reply && tid == head.tid && !net_rx {
        return Fits::PacketId;
    }
    Fits::No
}

/// Bits set in `v`, without a loop or a count instruction (the eBPF
/// target has neither to spare).
#[inline(always)]
pub const fn popcount(v: u64) -> u32 {
    let v = v - ((v >> 1) & 0x5555_5555_5555_5555);
    let v = (v & 0x3333_3333_3333_3333) + ((v >> 2) & 0x3333_3333_3333_3333);
    let v = (v + (v >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    (v.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
}

impl SlotHead {
    /// A send opens the slot for its echo (`key`, sent by thread `tid`
    /// at `now` ns): the next generation, open, no event present.
    #[inline(always)]
    pub fn claim(&mut self, key: &PktKey, tid: u32, now: u64) {
        self.take(key, tid, now);
        self.open = 1;
    }

    /// [`claim`](Self::claim) but for `open`, which the programs write on
    /// its own, last, after closing the slot first: an event on another
    /// CPU that finds the slot open then finds the echo it holds whole,
    /// never half of one and half of the next (see [`fits`]).
    #[inline(always)]
    pub fn take(&mut self, key: &PktKey, tid: u32, now: u64) {
        self.present = 0;
        self.generation = self.generation.wrapping_add(1);
        self.taken = taken_tag(self.generation);
        self.index = slot_index(key.family, key.icmp_seq);
        self.tid = tid;
        self.seq = key.icmp_seq;
        self.id = key.icmp_id;
        self.packet_id = 0;
        self.family = key.family;
        self.claimed = claim_clock(now);
    }

    /// The head of a record or of a slot read from the map.
    pub fn from_bytes(b: &[u8]) -> Option<SlotHead> {
        let b = b.get(..HEAD_SIZE)?;
        let (u64_at, u32_at, u16_at) = (|o| le_u64(b, o), |o| le_u32(b, o), |o| le_u16(b, o));
        Some(SlotHead {
            present: u64_at(0),
            generation: u32_at(8),
            index: u32_at(12),
            tid: u32_at(16),
            seq: u16_at(20),
            id: u16_at(22),
            packet_id: u16_at(24),
            family: b[26],
            open: b[27],
            claimed: u32_at(28),
            taken: u64_at(TAKEN_OFFSET),
        })
    }

    /// The head's bytes, as the programs lay it out.
    pub fn to_bytes(&self) -> [u8; HEAD_SIZE] {
        let mut b = [0u8; HEAD_SIZE];
        b[0..8].copy_from_slice(&self.present.to_le_bytes());
        b[8..12].copy_from_slice(&self.generation.to_le_bytes());
        b[12..16].copy_from_slice(&self.index.to_le_bytes());
        b[16..20].copy_from_slice(&self.tid.to_le_bytes());
        b[20..22].copy_from_slice(&self.seq.to_le_bytes());
        b[22..24].copy_from_slice(&self.id.to_le_bytes());
        b[24..26].copy_from_slice(&self.packet_id.to_le_bytes());
        b[26] = self.family;
        b[27] = self.open;
        b[28..32].copy_from_slice(&self.claimed.to_le_bytes());
        b[TAKEN_OFFSET..TAKEN_OFFSET + 8].copy_from_slice(&self.taken.to_le_bytes());
        b
    }
}

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` data without padding holes.
unsafe impl aya::Pod for Slot {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        catalog::{Expect, PROBES},
        event::AF_INET,
    };

    /// Every row a probe can report, as the loader finds them.
    fn probed(reply: bool, s: Stage, ret: bool) -> bool {
        let _ = reply;
        PROBES
            .iter()
            .any(|p| p.stage == Some(s) && p.at_return == ret)
    }

    #[test]
    fn positions_are_distinct_and_within_a_slot() {
        let t = positions(probed);
        let mut seen = 0u64;
        for p in t.iter().filter(|p| **p != NO_POSITION) {
            assert!((*p as usize) < POSITIONS);
            assert!(seen & (1 << p) == 0, "{p} twice");
            seen |= 1 << p;
        }
        // Every observable row but frees and drops has one.
        for (r, pos) in t.iter().enumerate() {
            let (reply, s, ret) = crate::agg::row_parts(r);
            let s = Stage::from_u8(s).unwrap();
            assert_eq!(
                *pos != NO_POSITION,
                probed(reply, s, ret) && has_position(s),
                "{s:?} reply {reply} return {ret}"
            );
        }
    }

    #[test]
    fn an_echos_usual_stages_come_first_in_journey_order() {
        let t = positions(probed);
        let at = |reply, s: Stage, ret| t[row(reply, s as u8, ret)];
        assert_eq!(at(false, Stage::Sendto, false), 0);
        assert!(at(false, Stage::Route, false) < at(false, Stage::DevQueueXmit, false));
        assert!(at(false, Stage::NetifReceiveSkb, false) < at(true, Stage::IcmpReply, false));
        assert!(at(true, Stage::Route, false) < at(true, Stage::Recvmsg, true));
        // The reply's last stage comes before any unusual row.
        assert!(at(true, Stage::Recvmsg, true) < at(false, Stage::Wakeup, false));
        assert!(at(true, Stage::Recvmsg, true) < at(true, Stage::Sendto, false));
        assert!(at(true, Stage::Recvmsg, true) < at(false, Stage::DevXmit, false));
        // A row no probe reports takes no room.
        let no_ip_output = positions(|reply, s, ret| s != Stage::IpOutput && probed(reply, s, ret));
        assert_eq!(
            no_ip_output[row(false, Stage::IpOutput as u8, false)],
            NO_POSITION
        );
        assert_eq!(
            no_ip_output[row(false, Stage::DevQueueXmit as u8, false)] + 1,
            t[row(false, Stage::DevQueueXmit as u8, false)]
        );
    }

    #[test]
    fn every_expected_stage_is_usual_on_its_leg() {
        for s in Stage::ORDER {
            let (req, rep) = match s.info().expect {
                Expect::Never => (false, false),
                Expect::Request => (true, false),
                Expect::Reply | Expect::ReplyOrigin => (false, true),
                Expect::Both | Expect::Either => (true, true),
            };
            assert!(!req || usual_on(s, false), "{s:?} on the request");
            assert!(!rep || usual_on(s, true), "{s:?} on the reply");
        }
    }

    #[test]
    fn popcount_counts() {
        for v in [0u64, 1, 3, 0x8000_0000_0000_0001, u64::MAX, 0xdead_beef] {
            assert_eq!(popcount(v), v.count_ones());
        }
    }

    #[test]
    fn a_mark_holds_for_its_own_echo_only() {
        let t = taken_tag(7);
        assert_eq!(mark(t, 7, 0b101), Some(t | 0b101));
        assert_eq!(mark(t | 1, 7, 0b100), Some(t | 0b101));
        // The slot moved on to the next echo: the mark is dropped.
        assert_eq!(mark(taken_tag(8), 7, 1), None);
        // Generations wrap within the tag's bits, never into positions.
        assert_eq!(taken_tag(u32::MAX) & TAKEN_POSITIONS, 0);
        assert_eq!(
            mark(taken_tag(u32::MAX), u32::MAX, 1),
            Some(taken_tag(u32::MAX) | 1)
        );
    }

    #[test]
    fn a_record_ends_at_its_last_event() {
        assert_eq!(record_size(0), HEAD_SIZE);
        assert_eq!(record_size(1), HEAD_SIZE + EVENT_SIZE);
        assert_eq!(record_size(1 << 5 | 1), HEAD_SIZE + 6 * EVENT_SIZE);
        // The whole slot but its aggregation state.
        let events_end = HEAD_SIZE + POSITIONS * EVENT_SIZE;
        assert_eq!(record_size(u64::MAX), events_end);
        assert_eq!(record_size(1 << (POSITIONS - 1)), events_end);
    }

    fn head() -> SlotHead {
        SlotHead {
            open: 1,
            family: AF_INET,
            seq: 7,
            id: 0xffff,
            tid: 42,
            ..SlotHead::default()
        }
    }

    fn key(id: u16, seq: u16) -> PktKey {
        PktKey {
            icmp_id: id,
            icmp_seq: seq,
            family: AF_INET,
            icmp_type: 8,
            valid: 1,
            delivered: 0,
        }
    }

    #[test]
    fn a_datagram_sockets_packet_joins_its_send() {
        let h = head();
        assert_eq!(fits(&h, &key(0xffff, 7), false, 42, false), Fits::Yes);
        // The socket's id, first seen in the sending thread.
        assert_eq!(fits(&h, &key(9, 7), false, 42, false), Fits::PacketId);
        // Not in another thread, not in NET_RX, not for a reply.
        assert_eq!(fits(&h, &key(9, 7), false, 43, false), Fits::No);
        assert_eq!(fits(&h, &key(9, 7), false, 42, true), Fits::No);
        assert_eq!(fits(&h, &key(9, 7), true, 42, false), Fits::No);
        let h = SlotHead {
            packet_id: 9,
            ..head()
        };
        assert_eq!(fits(&h, &key(9, 7), true, 1, true), Fits::Yes);
        // Another echo with the same sequence keeps out.
        assert_eq!(fits(&h, &key(10, 7), false, 42, false), Fits::No);
        assert_eq!(fits(&h, &key(9, 7 + 128), true, 1, true), Fits::No);
        let closed = SlotHead { open: 0, ..h };
        assert_eq!(fits(&closed, &key(9, 7), true, 1, true), Fits::No);
        // A closed echo's later events are still its own (the aggregation
        // takes them; a streamed trace sends them on their own).
        assert_eq!(belongs(&closed, &key(9, 7), true, 1, true), Fits::Yes);
        assert_eq!(belongs(&closed, &key(10, 7), true, 1, true), Fits::No);
    }

    #[test]
    fn a_send_claims_the_slot_for_its_echo() {
        let mut h = SlotHead {
            present: 0b101,
            generation: 4,
            packet_id: 3,
            ..SlotHead::default()
        };
        h.claim(&key(0xffff, 7), 42, 5 << 20);
        assert_eq!((h.generation, h.present, h.packet_id, h.open), (5, 0, 0, 1));
        assert_eq!((h.id, h.seq, h.tid, h.family), (0xffff, 7, 42, AF_INET));
        assert_eq!(h.index, slot_index(AF_INET, 7));
        assert_eq!(h.taken, taken_tag(5));
        assert_eq!(h.claimed, 5);
        assert_eq!(belongs(&h, &key(0xffff, 7), true, 1, true), Fits::Yes);
    }

    #[test]
    fn another_threads_open_echo_keeps_its_slot_for_a_while() {
        let mut h = SlotHead::default();
        assert!(may_claim(&h, 42, 0), "a slot never claimed");
        h.claim(&key(9, 7), 42, 100 << 20);
        // Another ping, the same sequence, while the first is in flight.
        assert!(!may_claim(&h, 43, 101 << 20));
        // The first's own next echo with that slot takes it.
        assert!(may_claim(&h, 42, 101 << 20));
        // Closed, anyone's.
        let closed = SlotHead { open: 0, ..h };
        assert!(may_claim(&closed, 43, 101 << 20));
        // Never closed, and old: taken.
        assert!(may_claim(&h, 43, (100 + CLAIM_HELD as u64 + 1) << 20));
        // The clock wraps.
        let mut w = SlotHead::default();
        w.claim(&key(9, 7), 42, (u32::MAX as u64) << 20);
        assert!(!may_claim(&w, 43, (u32::MAX as u64 + 3) << 20));
    }

    #[test]
    fn a_head_round_trips() {
        let h = SlotHead {
            present: 0x8000_0000_0000_0101,
            taken: taken_tag(3) | 0x101,
            generation: 3,
            index: 200,
            packet_id: 9,
            ..head()
        };
        assert_eq!(SlotHead::from_bytes(&h.to_bytes()), Some(h));
        assert_eq!(SlotHead::from_bytes(&[0; HEAD_SIZE - 1]), None);
    }
}

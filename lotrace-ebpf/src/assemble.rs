//! A streamed trace's events, assembled per echo in the kernel (see
//! `lotrace_common::assemble`): an event goes into its echo's slot, and
//! the slot goes to the ring buffer as one record when the echo closes or
//! a later echo takes the slot over. An event without a place there is
//! streamed on its own.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::bindings::{
    BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
};
use lotrace_common::{
    Event, PktKey, agg,
    assemble::{
        Fits, POSITIONS, Slot, TAKEN_POSITIONS, fits, may_claim, popcount, record_size, slot_index,
    },
    bits::{clear_bits, leave, set_bits, try_enter},
    event::{EVENT_SIZE, FLAG_NET_RX, FLAG_PACKET, is_echo_reply, is_echo_request},
    journey::{closes, starts_rtt},
};

use crate::{
    kernel::{CONFIG, config},
    maps::{EVENTS, JOURNEYS, SCRATCH, count_lost},
};

/// lotrace drains the ring every 10 ms on a timer of its own, and is woken
/// from here when a record of `len` bytes about to go in takes the ring
/// past half full, and at every record once three quarters are waiting:
/// lotrace has fallen behind, and each wake-up costs the traced packet's
/// CPU an interrupt it raises on itself (in a virtual machine, a write
/// to the interrupt controller that the hypervisor traps), slowing the
/// traced command until lotrace catches up rather than losing events.
/// Below that, nothing: woken at every record past half full, with
/// lotrace behind in a flood, a tenth of a profile's samples were those
/// interrupts, raised in ping's sends. A wake-up from here also tends to
/// make the scheduler run lotrace on the traced packet's CPU, in the
/// traced command's way (docs/internals.md has the numbers).
#[inline(always)]
pub(crate) fn wake_flags(len: u64) -> u64 {
    let (waiting, size) = ring_fill();
    let half = size / 2;
    if (waiting < half && waiting + len >= half) || behind_at(waiting, size) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// The bytes waiting in the ring, and its size.
#[inline(always)]
fn ring_fill() -> (u64, u64) {
    (
        EVENTS.query(BPF_RB_AVAIL_DATA as u64),
        EVENTS.query(BPF_RB_RING_SIZE as u64),
    )
}

/// Three quarters of the ring are waiting: lotrace has fallen behind.
#[inline(always)]
fn behind_at(waiting: u64, size: u64) -> bool {
    waiting >= size - size / 4
}

#[inline(always)]
fn behind() -> bool {
    let (waiting, size) = ring_fill();
    behind_at(waiting, size)
}

/// Hands the event to [`deliver`] through the per-CPU `SCRATCH` slot, for
/// the reason `aggregate_later` gives: one verifier state for every path.
#[inline(always)]
pub(crate) fn deliver_later(ev: Event, probe: u8) {
    let Some(p) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    unsafe { *p = ev };
    deliver(ev.ts_ns, ev.stage, probe);
}

#[inline(never)]
fn deliver(ts: u64, stage: u8, probe: u8) {
    let Some(ev) = SCRATCH.get_ptr(0) else {
        return;
    };
    let ev = unsafe { &*ev };
    // Another program may have run on this CPU in between (an interrupt's
    // softirq, or on PREEMPT_RT a task preempting this one) and written
    // its own event here: this one is then counted lost, rather than the
    // other's sent twice.
    if ev.ts_ns != ts || ev.stage != stage || ev.probe != probe {
        count_lost(1);
        return;
    }
    if into_slot(ev, stage, probe) {
        return;
    }
    if EVENTS
        .output::<Event>(ev, wake_flags(EVENT_SIZE as u64))
        .is_err()
    {
        count_lost(1);
    }
}

/// Puts the event in its echo's slot, if it has a place there.
#[inline(always)]
fn into_slot(ev: &Event, stage: u8, probe: u8) -> bool {
    let reply = is_echo_reply(ev.family, ev.icmp_type);
    if ev.flags & FLAG_PACKET == 0 || !(reply || is_echo_request(ev.family, ev.icmp_type)) {
        return false;
    }
    let Some(slot) = JOURNEYS.get_ptr_mut(slot_index(ev.family, ev.icmp_seq)) else {
        return false;
    };
    let slot = unsafe { &mut *slot };
    // Behind (see `wake_flags`), an echo gets no slot: each of its events
    // goes on its own, waking lotrace, as `--per-event` would. Checked
    // once per echo, not per event.
    let key = PktKey {
        icmp_id: ev.icmp_id,
        icmp_seq: ev.icmp_seq,
        family: ev.family,
        icmp_type: ev.icmp_type,
        valid: 1,
        delivered: 0,
    };
    if starts_rtt(reply, stage) {
        claim(slot, &key, ev.tid, ev.ts_ns, |slot| {
            if !may_claim(&slot.head, ev.tid, ev.ts_ns) || behind() {
                return false;
            }
            let present = slot.head.present;
            if present != 0 && !send(slot, present) {
                // Those user space has read from the map are not lost.
                count_lost(popcount(present & !(slot.head.taken & TAKEN_POSITIONS)) as u64);
            }
            true
        });
    }
    match fits_now(slot, &key, reply, ev.tid, ev.flags & FLAG_NET_RX != 0) {
        Fits::No => return false,
        Fits::PacketId => slot.head.packet_id = ev.icmp_id,
        Fits::Yes => {}
    }
    let p = probe as u32;
    let rets = config(&CONFIG.ret_probes);
    let word = if p >= 64 { rets[1] } else { rets[0] };
    let row = agg::row(reply, stage, (word >> (p & 63)) & 1 != 0);
    let Some(pos) = CONFIG.slot_pos.get(row).map(config) else {
        return false;
    };
    if pos as usize >= POSITIONS {
        return false;
    }
    let bit = 1u64 << pos;
    if slot.head.present & bit != 0 {
        return false;
    }
    let Some(at) = slot.events.get_mut(pos as usize) else {
        return false;
    };
    *at = *ev;
    // Set after the event is written: a reader that sees the bit sees it.
    set_bits(&mut slot.head.present, bit);
    if closes(reply, stage, config(&CONFIG.close_stage)) {
        close(slot);
    }
    true
}

/// A send opens its echo's slot, if no other send is claiming it at the
/// same moment (see `Slot::claiming`) and `first` agrees (it may send the
/// echo still there on first). The slot is closed while the head is
/// written and opened last, and an event reads the head only once it has
/// seen it open ([`fits_now`]): on another CPU it never finds half of one
/// echo and half of the next. The streamed slots and the aggregation
/// claim by this one rule.
#[inline(always)]
pub(crate) fn claim(
    slot: &mut Slot,
    key: &PktKey,
    tid: u32,
    now: u64,
    first: impl FnOnce(&mut Slot) -> bool,
) {
    if try_enter(&mut slot.claiming) && first(slot) {
        // Volatile, so that the compiler keeps the order (the eBPF target
        // has no compiler fence).
        // SAFETY: fields of a map value this program holds.
        unsafe { write_volatile(&mut slot.head.open, 0) };
        let mut head = slot.head;
        head.take(key, tid, now);
        head.open = 0;
        unsafe {
            write_volatile(&mut slot.head, head);
            write_volatile(&mut slot.head.open, 1);
        }
    }
    leave(&mut slot.claiming);
}

/// How the event of `key` relates to the echo `slot` holds
/// (`assemble::fits`), the head read only after it was seen open (see
/// [`claim`]). That order holds on x86-64, whose stores and loads are
/// each seen in program order.
#[inline(always)]
pub(crate) fn fits_now(slot: &Slot, key: &PktKey, reply: bool, tid: u32, net_rx: bool) -> Fits {
    // SAFETY: fields of a map value this program holds; volatile, so
    // that the compiler keeps the order.
    if unsafe { read_volatile(&slot.head.open) } == 0 {
        return Fits::No;
    }
    let head = unsafe { read_volatile(&slot.head) };
    fits(&head, key, reply, tid, net_rx)
}

/// The echo met its close stage: its slot goes to the ring, and then it
/// takes no more events (those still to come are streamed on their own).
/// It is closed last: until then no other thread's send may claim the
/// slot (see `may_claim`), so the bits cleared here are this echo's, and
/// any of its events that land during the send stay for user space.
#[inline(always)]
fn close(slot: &mut Slot) {
    let present = slot.head.present;
    if send(slot, present) {
        // Subtracted, not zeroed: a bit another CPU set meanwhile stays.
        clear_bits(&mut slot.head.present, present);
    }
    // If the ring was full, the slot waits for the next send into it or
    // for user space's read.
    slot.head.open = 0;
}

/// The slot's head and its events up to the last present, as one record
/// (see `assemble::record_size`). `false`: not sent (the ring was full),
/// and the slot keeps its events. Copied straight from the slot: an event
/// another CPU adds meanwhile is in the record only if its bit, set after
/// it was written, is in the head copied first.
#[inline(always)]
fn send(slot: &Slot, present: u64) -> bool {
    let mut size = record_size(present);
    if size > core::mem::size_of::<Slot>() {
        size = core::mem::size_of::<Slot>();
    }
    let bytes = unsafe { core::slice::from_raw_parts(slot as *const Slot as *const u8, size) };
    EVENTS
        .output::<[u8]>(bytes, wake_flags(size as u64))
        .is_ok()
}

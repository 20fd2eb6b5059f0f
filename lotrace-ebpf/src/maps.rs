//! The maps the programs share with each other and with the loader (which
//! knows them by the names in `lotrace_common::catalog::maps`).

use crate::kernel::{CONFIG, config};
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use lotrace_common::{
    CpuState, Event, PktKey,
    agg::{self, RowAgg},
    assemble::{self, Slot},
    bits::add,
};

/// The loader resizes it (`--ring-size`).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Each echo's events while it is under way (see
/// `lotrace_common::assemble`), by [`assemble::slot_index`]. User space
/// maps it into its memory and takes the slots of echoes that went quiet,
/// and those left at the end, without a system call.
#[map]
pub(crate) static JOURNEYS: Array<Slot> =
    Array::with_max_entries(assemble::SLOTS, BPF_F_MMAPABLE as u32);

/// The event `assemble::deliver` takes next.
#[map]
pub(crate) static SCRATCH: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

/// Events that did not fit in the ring buffer, on every CPU: one counter,
/// added to atomically (losses are rare), that lotrace reads from its
/// memory while the traced command runs (a read by system call then
/// could make the kernel skip the command's probes: see
/// `lotrace_common::catalog::targets::SPAWNER`).
#[map]
pub(crate) static LOST: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE as u32);

/// Per CPU: events the probes tried to emit, so that received + lost =
/// submitted can be checked (read once the command is gone).
#[map]
pub(crate) static SUBMITTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The CPU's state (see [`state`]); on PREEMPT_RT only its run counter.
#[map]
pub(crate) static STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

/// On PREEMPT_RT, each thread's state (see [`state`]). LRU: a thread that
/// ended gives its slot up.
#[map]
pub(crate) static THREAD_STATE: LruHashMap<u32, CpuState> = LruHashMap::with_max_entries(4096, 0);

/// A zeroed state, never written: what a thread's slot starts from,
/// without a copy on the program's stack.
#[map]
pub(crate) static ZERO_STATE: Array<CpuState> = Array::with_max_entries(1, 0);

/// Thread-group ids of the traced command and its descendants.
#[map]
pub(crate) static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// At `track_key`, for the ids of echo requests the targets sent, the
/// process that sent them (0: not tracked). An array, not a hash: every
/// skb stage asks, and an index costs less.
#[map]
pub(crate) static TRACKED: Array<u32> = Array::with_max_entries(agg::ECHOES_MAX, 0);

/// Of each `TRACKED` slot, the network namespace (`struct net *`) of the
/// socket whose send set it (0: not known). An echo with a tracked id is
/// the tracked process's only in that namespace, or in one its packets
/// were handed to (`CROSSED`): another namespace's process may use the
/// same id (a raw socket's id is often the pid, alike across pid
/// namespaces).
#[map]
pub(crate) static TRACKED_NET: Array<u64> = Array::with_max_entries(agg::ECHOES_MAX, 0);

/// Of each `TRACKED` slot, the socket (`struct sock *`) its owner last
/// sent the id on (0: not known): the reply's delivery to that socket,
/// and its copy out of it, are the echo's; another socket's copy is not.
#[map]
pub(crate) static TRACKED_SK: Array<u64> = Array::with_max_entries(agg::ECHOES_MAX, 0);

/// `[namespace, TRACKED slot]` → the owner that slot had when a packet of
/// its was handed to that namespace (a veth pair's transmit is the
/// peer's receive): the reply, built there, is the echo's too.
#[map]
pub(crate) static CROSSED: LruHashMap<[u64; 2], u32> = LruHashMap::with_max_entries(1024, 0);

/// Per traced process, the `TRACKED` slots it set, plus one (0: none), so
/// that they are cleared when it ends: an id outlives its process only
/// until then, and is not another process's later (a pid reused, a
/// datagram socket's id given to a new socket). A process with more ids
/// than slots keeps the others until the trace ends.
#[map]
pub(crate) static OWNED: LruHashMap<u32, [u32; OWNED_SLOTS]> =
    LruHashMap::with_max_entries(1024, 0);

pub(crate) const OWNED_SLOTS: usize = 4;

/// Sockets (`struct sock *`) the targets sent echo requests on; the least
/// recently used make room, so a long run never fills it.
#[map]
pub(crate) static SOCKS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(1024, 0);

/// Per thread: the echo request inside its current sendto() (see
/// `filter::set_ctx`).
#[map]
pub(crate) static SEND_CTX: LruHashMap<u32, PktKey> = LruHashMap::with_max_entries(1024, 0);

/// The packets followed by skb address (see `packet::ours`): a slot per
/// address hash, lock-free. Two addresses in one slot keep the later one;
/// the other's stages then read its header again.
#[map]
pub(crate) static FOLLOWED: Array<Follow> = Array::with_max_entries(FOLLOWED_SLOTS, 0);

pub(crate) const FOLLOWED_SLOTS: u32 = 4096;

/// One followed skb. Two CPUs may write a slot at once: `tag` binds the
/// address to the packet, so a slot read half-written is no one's.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Follow {
    pub(crate) skb: u64,
    pub(crate) key: PktKey,
    pub(crate) tag: u64,
}

/// The echo each fragmented IP datagram carries, by family and IP
/// identification (`(family << 32) | id`): only its first fragment has the
/// ICMP header, the others are known by the datagram's id.
#[map]
pub(crate) static FRAGS: LruHashMap<u64, PktKey> = LruHashMap::with_max_entries(1024, 0);

/// `--summary-only`: the observation `aggregate` takes next (see
/// `aggregate::aggregate_later`).
#[map]
pub(crate) static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// `--summary-only`: per-row totals and histograms, per CPU.
#[map]
pub(crate) static AGG_ROWS: PerCpuArray<RowAgg> =
    PerCpuArray::with_max_entries(agg::ROWS as u32, 0);

/// `--summary-only`: `agg::counters`.
#[map]
pub(crate) static AGG_COUNT: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(agg::counters::COUNT, 0);

/// Per thread: the echo reply its current recvmsg() copied out (see
/// `filter::set_ctx`).
#[map]
pub(crate) static RECV_CTX: LruHashMap<u32, PktKey> = LruHashMap::with_max_entries(1024, 0);

/// Per traced thread: the packet its socket layer's last return gave it,
/// for its receive system call's return. Taken there, and set (or
/// cleared) at every socket-layer return, so that a read whose system
/// call is not probed (`read()`) leaves nothing for a later one.
#[map]
pub(crate) static RECV_DONE: LruHashMap<u32, PktKey> = LruHashMap::with_max_entries(1024, 0);

/// Per thread in `recvmmsg()`: its `struct mmsghdr` array (0: none).
#[map]
pub(crate) static RECVMMSG: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

/// Per traced thread: the TCP or UDP send under way (see `FlowSend`).
#[map]
pub(crate) static FLOW_SEND: LruHashMap<u32, FlowSend> = LruHashMap::with_max_entries(1024, 0);

/// A traced thread's send on a TCP or UDP socket: when its system call
/// began, by which probe, when the protocol's send began (0: not seen)
/// and by which probe, and the first packet it transmitted (its key
/// `valid` once known), which the send's stages are reported under.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FlowSend {
    pub(crate) ts: u64,
    pub(crate) proto_ts: u64,
    pub(crate) len: u32,
    pub(crate) probe: u8,
    pub(crate) proto_probe: u8,
    pub(crate) proto_tcp: u8,
    pub(crate) _pad: u8,
    pub(crate) key: PktKey,
}

/// The thread's send in progress, if any (an entry whose `ts` is 0 is
/// one that ended, kept for the next).
#[inline(always)]
pub(crate) fn flow_send(tid: u32) -> Option<*mut FlowSend> {
    FLOW_SEND
        .get_ptr_mut(&tid)
        .filter(|f| unsafe { (**f).ts } != 0)
}

/// Ends the thread's send in progress. Its key is marked valid too, so
/// that the transmit, which only looks for a send whose first packet is
/// not known yet, finds none.
#[inline(always)]
pub(crate) fn end_flow_send(tid: u32) {
    if let Some(f) = FLOW_SEND.get_ptr_mut(&tid) {
        unsafe {
            (*f).ts = 0;
            (*f).key.valid = 1;
        }
    }
}

/// Per UDP socket (`struct sock *`): the traced datagram at the head of
/// its queue, which its next read takes. Set only when the datagram was
/// alone in the socket's queues when queued.
#[map]
pub(crate) static QUEUED: LruHashMap<u64, PktKey> = LruHashMap::with_max_entries(1024, 0);

/// Counts `n` events lost; returns the count so far, on every CPU.
#[inline(always)]
pub(crate) fn count_lost(n: u64) -> u64 {
    match LOST.get_ptr_mut(0) {
        Some(lost) => unsafe {
            add(&mut *lost, n);
            core::ptr::read_volatile(lost)
        },
        None => 0,
    }
}

/// An observation on its way to `aggregate::aggregate`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Pending {
    pub(crate) key: PktKey,
    pub(crate) ts: u64,
    pub(crate) skb: u64,
    pub(crate) len: u32,
    pub(crate) aux2: u32,
    /// The thread that saw it (whose send may have opened the slot).
    pub(crate) tid: u32,
    pub(crate) _pad: u32,
}

/// The state kept between probes: this CPU's, or on PREEMPT_RT this
/// thread's (`Config::per_thread`).
#[inline(always)]
pub(crate) fn state() -> Option<&'static mut CpuState> {
    if config(&CONFIG.per_thread) == 0 {
        return STATE.get_ptr_mut(0).map(|p| unsafe { &mut *p });
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(p) = THREAD_STATE.get_ptr_mut(&tid) {
        return Some(unsafe { &mut *p });
    }
    let zero = ZERO_STATE.get(0)?;
    THREAD_STATE.insert(&tid, zero, 0).ok()?;
    THREAD_STATE.get_ptr_mut(&tid).map(|p| unsafe { &mut *p })
}

/// The next NET_RX run's number on this CPU: numbered by the CPU even
/// when the state is the thread's, so that (CPU, number) names one run.
#[inline(always)]
pub(crate) fn next_run() -> u32 {
    match STATE.get_ptr_mut(0) {
        Some(p) => unsafe {
            (*p).softirq_run = (*p).softirq_run.wrapping_add(1);
            (*p).softirq_run
        },
        None => 0,
    }
}

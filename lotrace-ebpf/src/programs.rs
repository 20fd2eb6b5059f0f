use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use aya_log_ebpf::{info, warn};
use lotrace_common::{
    Config, CpuState, Event, PktKey, ProbeId, Stage, TpField,
    agg::{self, Echo, RowAgg},
    catalog::counters,
    event::{
        AF_INET, AF_INET6, FLAG_NET_RX, FLAG_PACKET, ICMP_ECHO, ICMP_ECHOREPLY, ICMPV6_ECHO_REPLY,
        ICMPV6_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_ICMPV6, NET_RX_SOFTIRQ, SKB_WINDOW,
        head_in_window, is_echo_reply, is_echo_request,
    },
    journey::{Masks, Obs, Ran, Rules, Sink},
};

/// Offsets filled in by the loader (see `Config`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config::zeroed();

/// The loader resizes it (`--ring-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per CPU: [LOST_IDX] failed ring-buffer reservations, [SUBMITTED_IDX]
/// events the probes tried to emit, so that received + lost = submitted
/// can be checked.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

#[map]
static STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

/// Thread-group ids of the traced command and its descendants.
#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Non-zero at `track_key` for the ids of echo requests the targets sent.
/// An array, not a hash: every skb stage asks, and an index costs less.
#[map]
static TRACKED: Array<u8> = Array::with_max_entries(agg::ECHOES_MAX, 0);

/// Sockets (`struct sock *`) the targets sent echo requests on.
#[map]
static SOCKS: HashMap<u64, u8> = HashMap::with_max_entries(256, 0);

/// Per thread: the echo request inside its current sendto() (see
/// `set_ctx`).
#[map]
static SEND_CTX: LruHashMap<u32, PktKey> = LruHashMap::with_max_entries(1024, 0);

/// `--summary-only`: each echo in flight, by family and sequence (not id:
/// an ICMP datagram socket rewrites the id between the send and the
/// packet, the sequence it keeps). An array: a lookup is an index, with no
/// hashing, locking or allocation on the packet's path.
#[map]
static ECHOES: Array<Echo> = Array::with_max_entries(agg::ECHOES_MAX, 0);

/// `--summary-only`: per-row totals and histograms, per CPU.
#[map]
static AGG_ROWS: PerCpuArray<RowAgg> = PerCpuArray::with_max_entries(agg::ROWS as u32, 0);

/// `--summary-only`: `agg::counters`.
#[map]
static AGG_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(agg::counters::COUNT, 0);

/// Per thread: the echo reply its current recvmsg() copied out (see
/// `set_ctx`).
#[map]
static RECV_CTX: LruHashMap<u32, PktKey> = LruHashMap::with_max_entries(1024, 0);

/// Sets a thread's context. A thread keeps its slot between system calls
/// (marked invalid, not deleted): writing through the pointer costs the
/// packet no allocation, as a delete and re-insert per echo would. The map
/// is LRU so that the slots of threads gone are reused.
#[inline(always)]
fn set_ctx(map: &LruHashMap<u32, PktKey>, tid: u32, key: &PktKey) {
    match map.get_ptr_mut(&tid) {
        Some(p) => unsafe { *p = *key },
        None => {
            let _ = map.insert(&tid, key, 0);
        }
    }
}

/// A thread's context, if set.
#[inline(always)]
fn get_ctx(map: &LruHashMap<u32, PktKey>, tid: u32) -> Option<PktKey> {
    let k = unsafe { *map.get_ptr(&tid)? };
    (k.valid != 0).then_some(k)
}

/// Clears a thread's context; returns what it was.
#[inline(always)]
fn take_ctx(map: &LruHashMap<u32, PktKey>, tid: u32) -> Option<PktKey> {
    let p = map.get_ptr_mut(&tid)?;
    let k = unsafe { *p };
    unsafe { (*p).valid = 0 };
    (k.valid != 0).then_some(k)
}

/// A field of CONFIG. Volatile: the loader rewrites CONFIG, so the
/// compiler must not fold it.
#[inline(always)]
fn config<T: Copy>(f: &T) -> T {
    unsafe { core::ptr::read_volatile(f) }
}

#[inline(always)]
fn tp_offset(field: TpField) -> Option<usize> {
    let off = config(&CONFIG.tp[field as usize]);
    if off == u16::MAX {
        None
    } else {
        Some(off as usize)
    }
}

#[inline(always)]
fn field<T>(ctx: &TracePointContext, f: TpField) -> Option<T> {
    let off = tp_offset(f)?;
    unsafe { ctx.read_at::<T>(off) }.ok()
}

#[inline(always)]
fn state() -> Option<&'static mut CpuState> {
    STATE.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn tgid_tid() -> (u32, u32) {
    let v = bpf_get_current_pid_tgid();
    ((v >> 32) as u32, v as u32)
}

#[inline(always)]
fn is_target(tgid: u32) -> bool {
    unsafe { TARGETS.get(&tgid) }.is_some()
}

#[inline(always)]
fn track_key(key: &PktKey) -> u32 {
    // The same family-and-16-bit-number indexing as the echo slots.
    agg::echo_slot(key.family == AF_INET6, key.icmp_id)
}

#[inline(always)]
fn is_tracked(key: &PktKey) -> bool {
    key.valid != 0 && TRACKED.get(track_key(key)).is_some_and(|v| *v != 0)
}

/// Starts tracking an id; true if it was not tracked yet.
#[inline(always)]
fn track(k: u32) -> bool {
    match TRACKED.get_ptr_mut(k) {
        Some(v) if unsafe { *v } == 0 => {
            unsafe { *v = 1 };
            true
        }
        _ => false,
    }
}

/// Remembers a socket of the targets. Looked up first: updating an
/// existing hash element costs an allocation, and every send asks.
#[inline(always)]
fn learn_sock(sk: u64) {
    if unsafe { SOCKS.get(&sk) }.is_none() {
        let _ = SOCKS.insert(&sk, &1, 0);
    }
}

#[inline(always)]
fn read_kernel<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// Reads the ICMP/ICMPv6 echo header of an skb at the offsets the loader
/// found in BTF. `None` for anything that is not an echo request or reply.
/// `skb->head` and `skb->network_header`. They are a few bytes apart in
/// every layout so far (the header offsets sit just before `head`): one
/// read of both when so, two otherwise.
#[inline(always)]
fn skb_head_nh(skb: u64, off_head: u64, off_nh: u64) -> Option<(u64, u16)> {
    if let Some(i) = head_in_window(off_nh, off_head) {
        let buf: [u8; SKB_WINDOW] = read_kernel(skb + off_nh)?;
        // Masked (and bounds-checked by the slice) so the verifier sees
        // the 8 bytes inside the buffer.
        let i = i & (SKB_WINDOW - 1);
        let mut h = [0u8; 8];
        h.copy_from_slice(&buf[i..i + 8]);
        return Some((u64::from_le_bytes(h), u16::from_le_bytes([buf[0], buf[1]])));
    }
    Some((read_kernel(skb + off_head)?, read_kernel(skb + off_nh)?))
}

#[inline(always)]
fn parse_skb(skb: u64) -> Option<(PktKey, u32)> {
    if skb == 0 {
        return None;
    }
    let (off_head, off_nh, off_len) = (
        config(&CONFIG.skb_head) as u64,
        config(&CONFIG.skb_network_header) as u64,
        config(&CONFIG.skb_len) as u64,
    );
    if off_head == 0 {
        return None;
    }
    let (head, nh) = skb_head_nh(skb, off_head, off_nh)?;
    if nh == u16::MAX || head == 0 {
        return None;
    }
    // The length only goes into streamed events: aggregation skips the read.
    let len: u32 = if config(&CONFIG.summary_only) != 0 {
        0
    } else {
        read_kernel(skb + off_len).unwrap_or(0)
    };
    let ip = head + nh as u64;
    // One read covers what both IP versions need: the version, IPv4's
    // protocol (byte 9) and IPv6's next header (byte 6).
    let iph: [u8; 10] = read_kernel(ip)?;
    let (family, icmp_at) = match iph[0] >> 4 {
        4 if iph[9] == IPPROTO_ICMP => (AF_INET, ip + ((iph[0] & 0x0f) as u64) * 4),
        6 if iph[6] == IPPROTO_ICMPV6 => (AF_INET6, ip + 40),
        _ => return None,
    };
    let hdr: [u8; 8] = read_kernel(icmp_at)?;
    let key = echo_key(family, &hdr)?;
    Some((key, len))
}

#[inline(always)]
fn echo_key(family: u8, hdr: &[u8; 8]) -> Option<PktKey> {
    let t = hdr[0];
    let echo = match family {
        AF_INET => t == ICMP_ECHO || t == ICMP_ECHOREPLY,
        _ => t == ICMPV6_ECHO_REQUEST || t == ICMPV6_ECHO_REPLY,
    };
    if !echo {
        return None;
    }
    Some(PktKey {
        icmp_id: u16::from_be_bytes([hdr[4], hdr[5]]),
        icmp_seq: u16::from_be_bytes([hdr[6], hdr[7]]),
        family,
        icmp_type: t,
        valid: 1,
        delivered: 0,
    })
}

/// The reply that answers `req` (same id and sequence).
#[inline(always)]
fn reply_of(req: &PktKey) -> PktKey {
    let mut k = *req;
    k.icmp_type = if req.family == AF_INET6 {
        ICMPV6_ECHO_REPLY
    } else {
        ICMP_ECHOREPLY
    };
    k.delivered = 0;
    k
}

struct Emit {
    ts: u64,
    stage: Stage,
    probe: ProbeId,
    skb: u64,
    len: u32,
    aux: u64,
    aux2: u32,
}

/// `--summary-only`: what `emit` does instead of writing an event. The
/// journey's meaning (`lotrace_common::journey`) says what the event changes;
/// this applies it to the maps.
#[inline(never)]
fn aggregate(key: &PktKey, e: &Emit) {
    let reply = is_echo_reply(key.family, key.icmp_type);
    if key.valid == 0 || !(reply || is_echo_request(key.family, key.icmp_type)) {
        return;
    }
    let ipv6 = key.family == AF_INET6;
    let Some(echo) = ECHOES.get_ptr_mut(agg::echo_slot(ipv6, key.icmp_seq)) else {
        return;
    };
    let echo = unsafe { &mut *echo };
    let p = e.probe as u32;
    let rets = config(&CONFIG.ret_probes);
    let word = if p >= 64 { rets[1] } else { rets[0] };
    let stage = e.stage as u8;
    let obs = Obs {
        reply,
        stage,
        at_return: (word >> (p & 63)) & 1 != 0,
        ts: e.ts,
        route_err: stage == Stage::Route as u8 && e.len != 0,
        sock_type: if stage == Stage::DevQueueXmit as u8 {
            e.aux2
        } else {
            0
        },
        ran: if stage == Stage::NetifReceiveSkb as u8 {
            Ran::of(in_softirq(), &bpf_get_current_comm().unwrap_or([0; 16]))
        } else {
            Ran::Task
        },
    };
    let rules = Rules {
        close_stage: config(&CONFIG.close_stage),
        expect: Masks {
            leg: config(&CONFIG.expect_leg),
            any: config(&CONFIG.expect_any),
        },
    };
    echo.observe(&obs, ipv6, &rules).apply(&mut Maps);
}

/// The aggregation maps, as the journey's meaning updates them.
struct Maps;

impl Sink for Maps {
    #[inline(always)]
    fn record(&mut self, row: usize, v: u64, since_send: i64) {
        if let Some(r) = AGG_ROWS.get_ptr_mut(row as u32) {
            unsafe { (*r).record(v, since_send) };
        }
    }

    #[inline(always)]
    fn add(&mut self, counter: u32, n: u64) {
        // An outcome a later event overruled subtracts: this CPU's slot
        // may wrap, the sum over CPUs does not.
        if let Some(c) = AGG_COUNT.get_ptr_mut(counter) {
            unsafe { *c = (*c).wrapping_add(n) };
        }
    }
}

#[inline(always)]
fn emit<C: EbpfContext>(ctx: &C, key: &PktKey, e: Emit) {
    if let Some(n) = LOST.get_ptr_mut(counters::SUBMITTED_IDX) {
        unsafe { *n += 1 };
    }
    if config(&CONFIG.summary_only) != 0 {
        aggregate(key, &e);
        return;
    }
    let (tgid, tid) = tgid_tid();
    let (mut flags, run) = match state() {
        Some(s) if s.in_net_rx != 0 => (FLAG_NET_RX, s.softirq_run),
        _ => (0, 0),
    };
    if key.valid != 0 {
        flags |= FLAG_PACKET;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        if let Some(lost) = LOST.get_ptr_mut(counters::LOST_IDX) {
            let n = unsafe {
                *lost += 1;
                *lost
            };
            // Diagnostics only, and only at powers of two so a full ring
            // cannot flood the log ring too.
            if n & (n - 1) == 0 {
                warn!(ctx, "ring buffer full: {} events lost on this CPU", n);
            }
        }
        return;
    };
    entry.write(Event {
        ts_ns: e.ts,
        skb: e.skb,
        aux: e.aux,
        tid,
        tgid,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        cpu: unsafe { bpf_get_smp_processor_id() },
        len: e.len,
        softirq_run: run,
        aux2: e.aux2,
        stage: e.stage as u8,
        probe: e.probe as u8,
        flags,
        family: key.family,
        icmp_type: key.icmp_type,
        _pad0: 0,
        icmp_id: key.icmp_id,
        icmp_seq: key.icmp_seq,
        _pad1: [0; 6],
    });
    // Batching: lotrace is woken once a sixteenth of the ring is waiting
    // (it also drains every 50 ms), not for every event. Each wake-up is
    // an interrupt on the CPU the traced packet runs on.
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    let flags = if waiting >= size / 16 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

#[inline(always)]
fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn at(stage: Stage, probe: ProbeId, skb: u64, len: u32, aux: u64) -> Emit {
    Emit {
        ts: now(),
        stage,
        probe,
        skb,
        len,
        aux,
        aux2: 0,
    }
}

/// An skb stage: emits if the skb is one of the traced echo packets and
/// returns its key.
#[inline(always)]
fn skb_event<C: EbpfContext>(ctx: &C, skb: u64, stage: Stage, probe: ProbeId) -> Option<PktKey> {
    skb_event_aux(ctx, skb, stage, probe, || 0)
}

/// `skb_event` with a stage-specific value, read only for tracked packets.
#[inline(always)]
fn skb_event_aux<C: EbpfContext>(
    ctx: &C,
    skb: u64,
    stage: Stage,
    probe: ProbeId,
    aux: impl FnOnce() -> u64,
) -> Option<PktKey> {
    let (key, len) = parse_skb(skb)?;
    if !is_tracked(&key) {
        return None;
    }
    emit(ctx, &key, at(stage, probe, skb, len, aux()));
    Some(key)
}

#[inline(always)]
fn in_softirq() -> bool {
    state().map(|s| s.in_net_rx != 0).unwrap_or(false)
}

#[tracepoint]
pub fn tp_sys_enter_sendto(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return 0;
    }
    let Some(buf) = field::<u64>(&ctx, TpField::SendtoBuff) else {
        return 0;
    };
    let len = field::<u64>(&ctx, TpField::SendtoLen).unwrap_or(0);
    let Ok(hdr) = (unsafe { bpf_probe_read_user(buf as *const [u8; 8]) }) else {
        return 0;
    };
    // The message is the ICMP header and payload; its type tells the family.
    let family = match hdr[0] {
        ICMP_ECHO => AF_INET,
        ICMPV6_ECHO_REQUEST => AF_INET6,
        _ => return 0,
    };
    let Some(key) = echo_key(family, &hdr) else {
        return 0;
    };
    set_ctx(&SEND_CTX, tid, &key);
    // Track the id now: the IP output path runs before dev_queue_xmit.
    track(track_key(&key));
    emit(
        &ctx,
        &key,
        at(Stage::Sendto, ProbeId::SysEnterSendto, 0, len as u32, 0),
    );
    0
}

#[tracepoint]
pub fn tp_sys_exit_sendto(_ctx: TracePointContext) -> u32 {
    let (tgid, tid) = tgid_tid();
    if is_target(tgid) {
        let _ = take_ctx(&SEND_CTX, tid);
    }
    0
}

/// The socket layer's send, seen inside the traced command's sendto.
#[inline(always)]
fn on_sock_sendmsg<C: EbpfContext>(ctx: &C, probe: ProbeId, sk: u64, ret: Option<i64>) {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return;
    }
    let Some(key) = get_ctx(&SEND_CTX, tid) else {
        return;
    };
    if sk != 0 {
        learn_sock(sk);
    }
    let r = ret.unwrap_or(0);
    emit(
        ctx,
        &key,
        at(Stage::SockSendmsg, probe, 0, r.max(0) as u32, r as u64),
    );
}

#[tracepoint]
pub fn tp_sock_send_length(ctx: TracePointContext) -> u32 {
    let sk = field::<u64>(&ctx, TpField::SockSendSk).unwrap_or(0);
    let ret = field::<i32>(&ctx, TpField::SockSendRet).unwrap_or(0);
    on_sock_sendmsg(&ctx, ProbeId::SockSendLength, sk, Some(ret as i64));
    0
}

/// A route lookup, attributed to the send it is made for (task context)
/// or, inside NET_RX, to the reply of the request being handled.
#[inline(always)]
fn on_route<C: EbpfContext>(ctx: &C, probe: ProbeId, tb: u32, err: i32, dev: [u8; 16]) {
    let Some(st) = state() else { return };
    let key = if st.in_net_rx != 0 {
        // Inside NET_RX: a lookup made while handling one of our requests
        // routes its reply (icmp_reply looks the way back up).
        if st.rx.valid == 0 || !is_echo_request(st.rx.family, st.rx.icmp_type) {
            return;
        }
        reply_of(&st.rx)
    } else {
        let (tgid, tid) = tgid_tid();
        if !is_target(tgid) {
            return;
        }
        match get_ctx(&SEND_CTX, tid) {
            Some(k) => k,
            None => return,
        }
    };
    let (lo, hi) = dev.split_at(8);
    let mut e = at(
        Stage::Route,
        probe,
        u64::from_le_bytes(lo.try_into().unwrap_or([0; 8])),
        err as u32,
        u64::from_le_bytes(hi.try_into().unwrap_or([0; 8])),
    );
    e.aux2 = tb;
    emit(ctx, &key, e);
}

#[tracepoint]
pub fn tp_fib_table_lookup(ctx: TracePointContext) -> u32 {
    let tb = field::<u32>(&ctx, TpField::FibTbId).unwrap_or(0);
    let err = field::<i32>(&ctx, TpField::FibErr).unwrap_or(0);
    let dev = field::<[u8; 16]>(&ctx, TpField::FibDev).unwrap_or([0; 16]);
    on_route(&ctx, ProbeId::FibTableLookup, tb, err, dev);
    0
}

#[tracepoint]
pub fn tp_fib6_table_lookup(ctx: TracePointContext) -> u32 {
    let tb = field::<u32>(&ctx, TpField::Fib6TbId).unwrap_or(0);
    let err = field::<i32>(&ctx, TpField::Fib6Err).unwrap_or(0);
    let dev = field::<[u8; 16]>(&ctx, TpField::Fib6Dev).unwrap_or([0; 16]);
    on_route(&ctx, ProbeId::Fib6TableLookup, tb, err, dev);
    0
}

/// The first 8 bytes of the name of the device an skb is on.
#[inline(always)]
fn dev_name(skb: u64) -> u64 {
    let (off_dev, off_name) = (
        config(&CONFIG.skb_dev) as u64,
        config(&CONFIG.dev_name) as u64,
    );
    if off_dev == 0 {
        return 0;
    }
    match read_kernel::<u64>(skb + off_dev) {
        Some(dev) if dev != 0 => read_kernel::<[u8; 8]>(dev + off_name)
            .map(u64::from_le_bytes)
            .unwrap_or(0),
        _ => 0,
    }
}

/// An skb entering the device layer: where a traced command's echo
/// request starts being tracked, and where its socket is learnt.
#[inline(always)]
fn on_dev_queue<C: EbpfContext>(ctx: &C, skb: u64, probe: ProbeId) {
    let Some((key, len)) = parse_skb(skb) else {
        return;
    };
    let mut sock_type = 0u32;
    if is_echo_request(key.family, key.icmp_type) {
        let (tgid, _) = tgid_tid();
        let k = track_key(&key);
        if !in_softirq() && is_target(tgid) {
            if track(k) {
                info!(ctx, "tracking echo id {} of tgid {}", key.icmp_id, tgid);
            }
            // The reply is delivered to this socket, possibly before the
            // send returns: learn it now.
            let off = config(&CONFIG.skb_sk) as u64;
            if off != 0
                && let Some(sk) = read_kernel::<u64>(skb + off)
                && sk != 0
            {
                learn_sock(sk);
                // Raw or datagram ICMP socket: the report says which.
                let t_off = config(&CONFIG.sk_type) as u64;
                if t_off != 0 {
                    sock_type = read_kernel::<u16>(sk + t_off).unwrap_or(0) as u32;
                }
            }
        }
    }
    if !is_tracked(&key) {
        return;
    }
    let mut e = at(Stage::DevQueueXmit, probe, skb, len, dev_name(skb));
    e.aux2 = sock_type;
    emit(ctx, &key, e);
}

#[tracepoint]
pub fn tp_net_dev_queue(ctx: TracePointContext) -> u32 {
    if let Some(skb) = field::<u64>(&ctx, TpField::NetDevQueueSkb) {
        on_dev_queue(&ctx, skb, ProbeId::NetDevQueue);
    }
    0
}

/// The driver's transmit starts: remember the skb so that its end can be
/// matched by address (the driver may already have handed it on).
#[inline(always)]
fn on_xmit_start<C: EbpfContext>(ctx: &C, skb: u64, probe: ProbeId) {
    if let Some(key) = skb_event_aux(ctx, skb, Stage::LoopbackXmit, probe, || dev_name(skb))
        && let Some(st) = state()
    {
        st.xmit_skb = skb;
        st.xmit = key;
    }
}

/// The driver's transmit returns; `skb` is 0 when the probe cannot see it.
#[inline(always)]
fn on_xmit_end<C: EbpfContext>(ctx: &C, skb: u64, probe: ProbeId, rc: i64) {
    let Some(st) = state() else { return };
    if st.xmit_skb == 0 || (skb != 0 && st.xmit_skb != skb) {
        return;
    }
    let key = st.xmit;
    let skb = st.xmit_skb;
    st.xmit_skb = 0;
    emit(ctx, &key, at(Stage::LoopbackXmit, probe, skb, 0, rc as u64));
}

#[tracepoint]
pub fn tp_net_dev_start_xmit(ctx: TracePointContext) -> u32 {
    if let Some(skb) = field::<u64>(&ctx, TpField::StartXmitSkb) {
        on_xmit_start(&ctx, skb, ProbeId::NetDevStartXmit);
    }
    0
}

#[tracepoint]
pub fn tp_net_dev_xmit(ctx: TracePointContext) -> u32 {
    let skb = field::<u64>(&ctx, TpField::XmitSkb).unwrap_or(0);
    if skb != 0 {
        let rc = field::<i32>(&ctx, TpField::XmitRc).unwrap_or(0);
        on_xmit_end(&ctx, skb, ProbeId::NetDevXmit, rc as i64);
    }
    0
}

/// The skb goes on the backlog queue; a NET_RX raise until netif_rx
/// returns is this packet's.
#[inline(always)]
fn on_netif_rx<C: EbpfContext>(ctx: &C, skb: u64, probe: ProbeId) {
    if let Some(key) = skb_event(ctx, skb, Stage::NetifRx, probe)
        && let Some(st) = state()
    {
        st.in_tracked_netif_rx = 1;
        st.netif_rx = key;
    }
}

#[tracepoint]
pub fn tp_netif_rx_entry(ctx: TracePointContext) -> u32 {
    if let Some(skb) = field::<u64>(&ctx, TpField::NetifRxEntrySkb) {
        on_netif_rx(&ctx, skb, ProbeId::NetifRxEntry);
    }
    0
}

#[tracepoint]
pub fn tp_netif_rx_exit(_ctx: TracePointContext) -> u32 {
    if let Some(st) = state() {
        st.in_tracked_netif_rx = 0;
    }
    0
}

#[tracepoint]
pub fn tp_softirq_raise(ctx: TracePointContext) -> u32 {
    if field::<u32>(&ctx, TpField::SoftirqRaiseVec) != Some(NET_RX_SOFTIRQ) {
        return 0;
    }
    let Some(st) = state() else { return 0 };
    if st.in_tracked_netif_rx == 0 {
        return 0;
    }
    let key = st.netif_rx;
    emit(
        &ctx,
        &key,
        at(Stage::SoftirqRaise, ProbeId::SoftirqRaise, 0, 0, 0),
    );
    0
}

#[tracepoint]
pub fn tp_softirq_entry(ctx: TracePointContext) -> u32 {
    if field::<u32>(&ctx, TpField::SoftirqEntryVec) != Some(NET_RX_SOFTIRQ) {
        return 0;
    }
    if let Some(st) = state() {
        // Whether this run concerns us is known only once it meets one of
        // our packets: the start is remembered and reported then.
        st.in_net_rx = 1;
        st.softirq_entry_ts = now();
        st.softirq_run = st.softirq_run.wrapping_add(1);
        st.entry_emitted = 0;
        st.rx.valid = 0;
        st.last.valid = 0;
        st.poll_pending = 0;
    }
    0
}

/// The end of a NET_RX run that carried tracked packets, reported under
/// the last of them with how long the run took.
#[inline(always)]
fn net_rx_end<C: EbpfContext>(ctx: &C, probe: ProbeId, started: u64) {
    let Some(st) = state() else { return };
    if st.last.valid == 0 {
        return;
    }
    let key = st.last;
    let t = now();
    emit(
        ctx,
        &key,
        Emit {
            ts: t,
            stage: Stage::NetRxAction,
            probe,
            skb: 0,
            len: 0,
            aux: t.saturating_sub(started),
            aux2: 0,
        },
    );
}

#[tracepoint]
pub fn tp_softirq_exit(ctx: TracePointContext) -> u32 {
    if field::<u32>(&ctx, TpField::SoftirqExitVec) != Some(NET_RX_SOFTIRQ) {
        return 0;
    }
    let Some(st) = state() else { return 0 };
    if config(&CONFIG.net_rx_probe) == 0 {
        net_rx_end(&ctx, ProbeId::SoftirqExit, st.softirq_entry_ts);
    }
    st.in_net_rx = 0;
    st.softirq_entry_ts = 0;
    st.rx.valid = 0;
    st.last.valid = 0;
    0
}

#[inline(always)]
fn on_net_rx_action_entry() {
    if let Some(st) = state() {
        st.fn_entry_ts = now();
    }
}

#[inline(always)]
fn on_net_rx_action_exit<C: EbpfContext>(ctx: &C, probe: ProbeId) {
    if let Some(st) = state() {
        net_rx_end(ctx, probe, st.fn_entry_ts);
        st.fn_entry_ts = 0;
    }
}

/// A backlog poll ends: reported when it handled tracked packets.
#[inline(always)]
fn on_backlog_end<C: EbpfContext>(ctx: &C, probe: ProbeId, work: i64) {
    let Some(st) = state() else { return };
    if st.in_net_rx == 0 || st.poll_pending == 0 || st.last.valid == 0 {
        return;
    }
    st.poll_pending = 0;
    let key = st.last;
    emit(
        ctx,
        &key,
        at(Stage::ProcessBacklog, probe, 0, 0, work.max(0) as u64),
    );
}

#[tracepoint]
pub fn tp_napi_poll(ctx: TracePointContext) -> u32 {
    let work = field::<i32>(&ctx, TpField::NapiWork).unwrap_or(0);
    on_backlog_end(&ctx, ProbeId::NapiPoll, work as i64);
    0
}

#[inline(always)]
fn on_backlog_entry() {
    if let Some(st) = state() {
        st.backlog_entry_ts = now();
        st.backlog_emitted = 0;
    }
}

/// The start of a softirq run or a backlog poll, reported once it is known
/// to carry a tracked packet: at that packet's `netif_receive_skb`.
#[inline(always)]
fn emit_start<C: EbpfContext>(ctx: &C, key: &PktKey, ts: u64, stage: Stage, probe: u8) {
    let Some(probe) = ProbeId::from_u8(probe) else {
        return;
    };
    emit(
        ctx,
        key,
        Emit {
            ts,
            stage,
            probe,
            skb: 0,
            len: 0,
            aux: 0,
            aux2: 0,
        },
    );
}

#[inline(always)]
fn on_receive_skb<C: EbpfContext>(ctx: &C, skb: u64, probe: ProbeId) {
    let Some(st) = state() else { return };
    let Some((mut key, len)) = parse_skb(skb) else {
        // Any other packet ends the attribution to the previous echo.
        st.rx.valid = 0;
        return;
    };
    if !is_tracked(&key) {
        st.rx.valid = 0;
        return;
    }
    key.delivered = 0;
    st.rx = key;
    if st.in_net_rx != 0 {
        if st.entry_emitted == 0 {
            st.entry_emitted = 1;
            let fn_probe = config(&CONFIG.net_rx_probe);
            if fn_probe == 0 {
                emit_start(
                    ctx,
                    &key,
                    st.softirq_entry_ts,
                    Stage::NetRxAction,
                    ProbeId::SoftirqEntry as u8,
                );
            } else if st.fn_entry_ts != 0 {
                emit_start(ctx, &key, st.fn_entry_ts, Stage::NetRxAction, fn_probe);
            }
        }
        let backlog_probe = config(&CONFIG.backlog_probe);
        if backlog_probe != 0 && st.backlog_emitted == 0 && st.backlog_entry_ts != 0 {
            st.backlog_emitted = 1;
            emit_start(
                ctx,
                &key,
                st.backlog_entry_ts,
                Stage::ProcessBacklog,
                backlog_probe,
            );
        }
        st.last = key;
        st.poll_pending = 1;
    }
    emit(ctx, &key, at(Stage::NetifReceiveSkb, probe, skb, len, 0));
}

#[tracepoint]
pub fn tp_netif_receive_skb(ctx: TracePointContext) -> u32 {
    if let Some(skb) = field::<u64>(&ctx, TpField::NetifReceiveSkbSkb) {
        on_receive_skb(&ctx, skb, ProbeId::NetifReceiveSkb);
    }
    0
}

/// Delivery to a socket: only the traced command's sockets count (raw
/// sockets all get a copy of every ICMP packet).
#[inline(always)]
fn on_sock_deliver<C: EbpfContext>(ctx: &C, sk: u64, probe: ProbeId) {
    let Some(st) = state() else { return };
    if st.rx.valid == 0 || sk == 0 || unsafe { SOCKS.get(&sk) }.is_none() {
        return;
    }
    st.rx.delivered = 1;
    let key = st.rx;
    emit(ctx, &key, at(Stage::SockDeliver, probe, 0, 0, sk));
}

#[tracepoint]
pub fn tp_sk_data_ready(ctx: TracePointContext) -> u32 {
    if let Some(sk) = field::<u64>(&ctx, TpField::SkDataReadySk) {
        on_sock_deliver(&ctx, sk, ProbeId::SkDataReady);
    }
    0
}

#[tracepoint]
pub fn tp_sched_wakeup(ctx: TracePointContext) -> u32 {
    let Some(st) = state() else { return 0 };
    if st.rx.valid == 0 || st.rx.delivered == 0 {
        return 0;
    }
    let Some(pid) = field::<i32>(&ctx, TpField::WakeupPid) else {
        return 0;
    };
    if !is_target(pid as u32) {
        return 0;
    }
    st.rx.delivered = 0;
    let key = st.rx;
    emit(
        &ctx,
        &key,
        at(Stage::Wakeup, ProbeId::SchedWakeup, 0, 0, pid as u64),
    );
    0
}

/// recvmsg copies a reply out: the traced command's recvmsg then returns it.
#[inline(always)]
fn on_copy<C: EbpfContext>(ctx: &C, skb: u64, probe: ProbeId, len: i64) {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return;
    }
    let Some((key, _)) = parse_skb(skb) else {
        return;
    };
    if !is_tracked(&key) || !is_echo_reply(key.family, key.icmp_type) {
        return;
    }
    set_ctx(&RECV_CTX, tid, &key);
    emit(
        ctx,
        &key,
        at(Stage::CopyToUser, probe, skb, len.max(0) as u32, 0),
    );
}

#[tracepoint]
pub fn tp_skb_copy_datagram_iovec(ctx: TracePointContext) -> u32 {
    if let Some(skb) = field::<u64>(&ctx, TpField::CopySkb) {
        let len = field::<i32>(&ctx, TpField::CopyLen).unwrap_or(0);
        on_copy(&ctx, skb, ProbeId::SkbCopyDatagramIovec, len as i64);
    }
    0
}

/// The receive system call returns the reply its copy took out.
#[inline(always)]
fn on_recv_exit<C: EbpfContext>(ctx: &C, probe: ProbeId, ret: i64) {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return;
    }
    let Some(key) = take_ctx(&RECV_CTX, tid) else {
        return;
    };
    emit(
        ctx,
        &key,
        at(Stage::Recvmsg, probe, 0, ret.max(0) as u32, ret as u64),
    );
}

#[tracepoint]
pub fn tp_sys_exit_recvmsg(ctx: TracePointContext) -> u32 {
    let ret = field::<i64>(&ctx, TpField::RecvmsgRet).unwrap_or(0);
    on_recv_exit(&ctx, ProbeId::SysExitRecvmsg, ret);
    0
}

#[tracepoint]
pub fn tp_sys_exit_recvfrom(ctx: TracePointContext) -> u32 {
    let ret = field::<i64>(&ctx, TpField::RecvfromRet).unwrap_or(0);
    on_recv_exit(&ctx, ProbeId::SysExitRecvfrom, ret);
    0
}

/// Raw ICMP sockets each get a clone of every echo packet, and another
/// ping frees its clones in its own system calls: in task context only the
/// traced processes' frees belong to a journey.
#[inline(always)]
fn free_is_ours() -> bool {
    in_softirq() || is_target(tgid_tid().0)
}

#[tracepoint]
pub fn tp_consume_skb(ctx: TracePointContext) -> u32 {
    if free_is_ours()
        && let Some(skb) = field::<u64>(&ctx, TpField::ConsumeSkbSkb)
    {
        let _ = skb_event(&ctx, skb, Stage::Free, ProbeId::ConsumeSkb);
    }
    0
}

#[tracepoint]
pub fn tp_kfree_skb(ctx: TracePointContext) -> u32 {
    if !free_is_ours() {
        return 0;
    }
    let Some(skb) = field::<u64>(&ctx, TpField::KfreeSkbSkb) else {
        return 0;
    };
    let Some((key, len)) = parse_skb(skb) else {
        return 0;
    };
    if !is_tracked(&key) {
        return 0;
    }
    let reason = field::<u32>(&ctx, TpField::KfreeReason).unwrap_or(0);
    emit(
        &ctx,
        &key,
        at(Stage::Drop, ProbeId::KfreeSkb, skb, len, reason as u64),
    );
    0
}

#[tracepoint]
pub fn tp_sched_process_fork(ctx: TracePointContext) -> u32 {
    let (Some(parent), Some(child)) = (
        field::<i32>(&ctx, TpField::ForkParentPid),
        field::<i32>(&ctx, TpField::ForkChildPid),
    ) else {
        return 0;
    };
    if is_target(parent as u32) {
        let _ = TARGETS.insert(&(child as u32), &1, 0);
    }
    0
}

/// The kernel answers a tracked echo request: the reply leg begins.
#[inline(always)]
fn on_icmp_echo<C: EbpfContext>(ctx: &C, skb: u64, probe: ProbeId) {
    let Some((key, len)) = parse_skb(skb) else {
        return;
    };
    if !is_tracked(&key) || !is_echo_request(key.family, key.icmp_type) {
        return;
    }
    emit(
        ctx,
        &reply_of(&key),
        at(Stage::IcmpReply, probe, skb, len, 0),
    );
}

/// A kprobe and an fentry program on a function's entry, calling `$handler`
/// with the context, the probe id and the listed arguments (as u64).
macro_rules! entry_probes {
    ($kp:ident, $fe:ident, $kpid:ident, $feid:ident, $handler:expr, [$($n:literal),*]) => {
        #[kprobe]
        pub fn $kp(ctx: ProbeContext) -> u32 {
            ($handler)(&ctx, ProbeId::$kpid, $(ctx.arg::<u64>($n).unwrap_or(0)),*);
            0
        }

        #[fentry]
        pub fn $fe(ctx: FEntryContext) -> u32 {
            ($handler)(&ctx, ProbeId::$feid, $(ctx.arg::<u64>($n)),*);
            0
        }
    };
}

/// A kretprobe and an fexit program on a function's return, calling
/// `$handler` with the context, the probe id and the return value.
macro_rules! return_probes {
    ($kr:ident, $fx:ident, $krid:ident, $fxid:ident, $handler:expr) => {
        #[kretprobe]
        pub fn $kr(ctx: RetProbeContext) -> u32 {
            ($handler)(&ctx, ProbeId::$krid, ctx.ret::<i64>());
            0
        }

        #[fexit]
        pub fn $fx(ctx: FExitContext) -> u32 {
            ($handler)(&ctx, ProbeId::$fxid, ctx.ret::<i64>().unwrap_or(0));
            0
        }
    };
}

fn skb_at<C: EbpfContext>(stage: Stage) -> impl Fn(&C, ProbeId, u64) {
    move |ctx, probe, skb| {
        let _ = skb_event(ctx, skb, stage, probe);
    }
}

// sock_sendmsg(struct socket *sock, struct msghdr *msg)
entry_probes!(
    kp_sock_sendmsg,
    fe_sock_sendmsg,
    KpSockSendmsg,
    FeSockSendmsg,
    |ctx, probe, _sock: u64| on_sock_sendmsg(ctx, probe, 0, None),
    [0]
);
return_probes!(
    kr_sock_sendmsg,
    fx_sock_sendmsg,
    KrSockSendmsg,
    FxSockSendmsg,
    |ctx, probe, ret: i64| on_sock_sendmsg(ctx, probe, 0, Some(ret))
);
// ip_output(struct net *net, struct sock *sk, struct sk_buff *skb)
entry_probes!(
    kp_ip_output,
    fe_ip_output,
    KpIpOutput,
    FeIpOutput,
    skb_at(Stage::IpOutput),
    [2]
);
// __dev_queue_xmit(struct sk_buff *skb, struct net_device *sb_dev)
entry_probes!(
    kp_dev_queue_xmit,
    fe_dev_queue_xmit,
    KpDevQueueXmit,
    FeDevQueueXmit,
    |ctx, probe, skb| on_dev_queue(ctx, skb, probe),
    [0]
);
// loopback_xmit(struct sk_buff *skb, struct net_device *dev)
entry_probes!(
    kp_loopback_xmit,
    fe_loopback_xmit,
    KpLoopbackXmit,
    FeLoopbackXmit,
    |ctx, probe, skb| on_xmit_start(ctx, skb, probe),
    [0]
);
return_probes!(
    kr_loopback_xmit,
    fx_loopback_xmit,
    KrLoopbackXmit,
    FxLoopbackXmit,
    |ctx, probe, rc| on_xmit_end(ctx, 0, probe, rc)
);
// __netif_rx(struct sk_buff *skb), netif_rx(struct sk_buff *skb)
entry_probes!(
    kp_netif_rx_inner,
    fe_netif_rx_inner,
    KpNetifRxInner,
    FeNetifRxInner,
    |ctx, probe, skb| on_netif_rx(ctx, skb, probe),
    [0]
);
entry_probes!(
    kp_netif_rx,
    fe_netif_rx,
    KpNetifRx,
    FeNetifRx,
    |ctx, probe, skb| on_netif_rx(ctx, skb, probe),
    [0]
);
// net_rx_action(...): its arguments changed across kernels; none is read.
entry_probes!(
    kp_net_rx_action,
    fe_net_rx_action,
    KpNetRxAction,
    FeNetRxAction,
    |_ctx, _probe| on_net_rx_action_entry(),
    []
);
return_probes!(
    kr_net_rx_action,
    fx_net_rx_action,
    KrNetRxAction,
    FxNetRxAction,
    |ctx, probe, _ret| on_net_rx_action_exit(ctx, probe)
);
// process_backlog(struct napi_struct *napi, int quota) -> work done
entry_probes!(
    kp_process_backlog,
    fe_process_backlog,
    KpProcessBacklog,
    FeProcessBacklog,
    |_ctx, _probe| on_backlog_entry(),
    []
);
return_probes!(
    kr_process_backlog,
    fx_process_backlog,
    KrProcessBacklog,
    FxProcessBacklog,
    |ctx, probe, work| on_backlog_end(ctx, probe, work)
);
// __netif_receive_skb(struct sk_buff *skb)
entry_probes!(
    kp_netif_receive_skb,
    fe_netif_receive_skb,
    KpNetifReceiveSkb,
    FeNetifReceiveSkb,
    |ctx, probe, skb| on_receive_skb(ctx, skb, probe),
    [0]
);
// ip_rcv(struct sk_buff *skb, ...), icmp_rcv(struct sk_buff *skb)
entry_probes!(
    kp_ip_rcv,
    fe_ip_rcv,
    KpIpRcv,
    FeIpRcv,
    skb_at(Stage::IpRcv),
    [0]
);
entry_probes!(
    kp_icmp_rcv,
    fe_icmp_rcv,
    KpIcmpRcv,
    FeIcmpRcv,
    skb_at(Stage::IcmpRcv),
    [0]
);
// icmp_echo(struct sk_buff *skb); icmp_reply(struct icmp_bxm *param, struct sk_buff *skb)
entry_probes!(
    kp_icmp_echo,
    fe_icmp_echo,
    KpIcmpEcho,
    FeIcmpEcho,
    |ctx, probe, skb| on_icmp_echo(ctx, skb, probe),
    [0]
);
entry_probes!(
    kp_icmp_reply,
    fe_icmp_reply,
    KpIcmpReply,
    FeIcmpReply,
    |ctx, probe, skb| on_icmp_echo(ctx, skb, probe),
    [1]
);
// raw_rcv(struct sock *sk, struct sk_buff *skb)
entry_probes!(
    kp_raw_rcv,
    fe_raw_rcv,
    KpRawRcv,
    FeRawRcv,
    |ctx, probe, sk| on_sock_deliver(ctx, sk, probe),
    [0]
);
// skb_copy_datagram_iter(const struct sk_buff *skb, int offset, struct iov_iter *to, int len)
entry_probes!(
    kp_copy_datagram,
    fe_copy_datagram,
    KpCopyDatagram,
    FeCopyDatagram,
    |ctx, probe, skb, len| on_copy(ctx, skb, probe, len as i32 as i64),
    [0, 3]
);
entry_probes!(
    kp_inet6_sendmsg,
    fe_inet6_sendmsg,
    KpInet6Sendmsg,
    FeInet6Sendmsg,
    |ctx, probe, _sock: u64| on_sock_sendmsg(ctx, probe, 0, None),
    [0]
);
return_probes!(
    kr_inet6_sendmsg,
    fx_inet6_sendmsg,
    KrInet6Sendmsg,
    FxInet6Sendmsg,
    |ctx, probe, ret: i64| on_sock_sendmsg(ctx, probe, 0, Some(ret))
);
// ip6_output(struct net *net, struct sock *sk, struct sk_buff *skb)
entry_probes!(
    kp_ip6_output,
    fe_ip6_output,
    KpIp6Output,
    FeIp6Output,
    skb_at(Stage::IpOutput),
    [2]
);
// ipv6_rcv(struct sk_buff *skb, ...), icmpv6_rcv(struct sk_buff *skb)
entry_probes!(
    kp_ipv6_rcv,
    fe_ipv6_rcv,
    KpIpv6Rcv,
    FeIpv6Rcv,
    skb_at(Stage::IpRcv),
    [0]
);
entry_probes!(
    kp_icmpv6_rcv,
    fe_icmpv6_rcv,
    KpIcmpv6Rcv,
    FeIcmpv6Rcv,
    skb_at(Stage::IcmpRcv),
    [0]
);
// icmpv6_echo_reply(struct sk_buff *skb)
entry_probes!(
    kp_icmpv6_echo_reply,
    fe_icmpv6_echo_reply,
    KpIcmpv6EchoReply,
    FeIcmpv6EchoReply,
    |ctx, probe, skb| on_icmp_echo(ctx, skb, probe),
    [0]
);
// rawv6_rcv(struct sock *sk, struct sk_buff *skb)
entry_probes!(
    kp_rawv6_rcv,
    fe_rawv6_rcv,
    KpRawv6Rcv,
    FeRawv6Rcv,
    |ctx, probe, sk| on_sock_deliver(ctx, sk, probe),
    [0]
);

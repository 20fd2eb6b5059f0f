use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::{info, warn};
use lotrace_common::{
    Config, CpuState, Event, PktKey, ProbeId, Stage, TpField,
    event::{
        AF_INET, AF_INET6, FLAG_NET_RX, FLAG_PACKET, ICMP_ECHO, ICMP_ECHOREPLY, ICMPV6_ECHO_REPLY,
        ICMPV6_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_ICMPV6, NET_RX_SOFTIRQ, is_echo_reply,
        is_echo_request,
    },
};

/// Offsets filled in by the loader (see `Config`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config::zeroed();

/// The loader resizes it (`--ring-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Failed ring-buffer reservations, per CPU.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

/// Thread-group ids of the traced command and its descendants.
#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// `family << 16 | icmp_id` of echo requests the targets sent.
#[map]
static TRACKED: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Sockets (`struct sock *`) the targets sent echo requests on.
#[map]
static SOCKS: HashMap<u64, u8> = HashMap::with_max_entries(256, 0);

/// Per thread: the echo request inside its current sendto().
#[map]
static SEND_CTX: HashMap<u32, PktKey> = HashMap::with_max_entries(1024, 0);

/// Per thread: the echo reply its current recvmsg() copied out.
#[map]
static RECV_CTX: HashMap<u32, PktKey> = HashMap::with_max_entries(1024, 0);

#[inline(always)]
fn tp_offset(field: TpField) -> Option<usize> {
    // Volatile: the loader rewrites CONFIG, so the compiler must not fold it.
    let off = unsafe { core::ptr::read_volatile(&CONFIG.tp[field as usize]) };
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
    ((key.family as u32) << 16) | key.icmp_id as u32
}

#[inline(always)]
fn is_tracked(key: &PktKey) -> bool {
    key.valid != 0 && unsafe { TRACKED.get(&track_key(key)) }.is_some()
}

#[inline(always)]
fn read_kernel<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// Reads the ICMP/ICMPv6 echo header of an skb at the offsets the loader
/// found in BTF. `None` for anything that is not an echo request or reply.
#[inline(always)]
fn parse_skb(skb: u64) -> Option<(PktKey, u32)> {
    if skb == 0 {
        return None;
    }
    let (off_head, off_nh, off_len) = unsafe {
        (
            core::ptr::read_volatile(&CONFIG.skb_head) as u64,
            core::ptr::read_volatile(&CONFIG.skb_network_header) as u64,
            core::ptr::read_volatile(&CONFIG.skb_len) as u64,
        )
    };
    if off_head == 0 {
        return None;
    }
    let head: u64 = read_kernel(skb + off_head)?;
    let nh: u16 = read_kernel(skb + off_nh)?;
    if nh == u16::MAX || head == 0 {
        return None;
    }
    let len: u32 = read_kernel(skb + off_len).unwrap_or(0);
    let ip = head + nh as u64;
    let first: u8 = read_kernel(ip)?;
    let (family, icmp_at) = match first >> 4 {
        4 => {
            let proto: u8 = read_kernel(ip + 9)?;
            if proto != IPPROTO_ICMP {
                return None;
            }
            (AF_INET, ip + ((first & 0x0f) as u64) * 4)
        }
        6 => {
            let next: u8 = read_kernel(ip + 6)?;
            if next != IPPROTO_ICMPV6 {
                return None;
            }
            (AF_INET6, ip + 40)
        }
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

#[inline(always)]
fn emit<C: EbpfContext>(ctx: &C, key: &PktKey, e: Emit) {
    let (tgid, tid) = tgid_tid();
    let (mut flags, run) = match state() {
        Some(s) if s.in_net_rx != 0 => (FLAG_NET_RX, s.softirq_run),
        _ => (0, 0),
    };
    if key.valid != 0 {
        flags |= FLAG_PACKET;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        if let Some(lost) = LOST.get_ptr_mut(0) {
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
    entry.submit(0);
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
fn skb_stage(
    ctx: &TracePointContext,
    skb_field: TpField,
    stage: Stage,
    probe: ProbeId,
) -> Option<(PktKey, u64)> {
    let skb: u64 = field(ctx, skb_field)?;
    let (key, len) = parse_skb(skb)?;
    if !is_tracked(&key) {
        return None;
    }
    emit(ctx, &key, at(stage, probe, skb, len, 0));
    Some((key, skb))
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
    let _ = SEND_CTX.insert(&tid, &key, 0);
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
        let _ = SEND_CTX.remove(&tid);
    }
    0
}

#[tracepoint]
pub fn tp_sock_send_length(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return 0;
    }
    let Some(key) = (unsafe { SEND_CTX.get(&tid) }).copied() else {
        return 0;
    };
    let sk = field::<u64>(&ctx, TpField::SockSendSk).unwrap_or(0);
    if sk != 0 {
        let _ = SOCKS.insert(&sk, &1, 0);
    }
    let ret = field::<i32>(&ctx, TpField::SockSendRet).unwrap_or(0);
    emit(
        &ctx,
        &key,
        at(
            Stage::SockSendmsg,
            ProbeId::SockSendLength,
            0,
            ret.max(0) as u32,
            ret as i64 as u64,
        ),
    );
    0
}

#[tracepoint]
pub fn tp_fib_table_lookup(ctx: TracePointContext) -> u32 {
    let Some(st) = state() else { return 0 };
    let key = if st.in_net_rx != 0 {
        // Inside NET_RX: a lookup made while handling one of our requests
        // routes its reply (icmp_reply looks the way back up).
        if st.rx.valid == 0 || !is_echo_request(st.rx.family, st.rx.icmp_type) {
            return 0;
        }
        reply_of(&st.rx)
    } else {
        let (tgid, tid) = tgid_tid();
        if !is_target(tgid) {
            return 0;
        }
        match unsafe { SEND_CTX.get(&tid) } {
            Some(k) => *k,
            None => return 0,
        }
    };
    let tb = field::<u32>(&ctx, TpField::FibTbId).unwrap_or(0);
    let err = field::<i32>(&ctx, TpField::FibErr).unwrap_or(0);
    let dev = field::<[u8; 16]>(&ctx, TpField::FibDev).unwrap_or([0; 16]);
    let (lo, hi) = dev.split_at(8);
    let mut e = at(
        Stage::Route,
        ProbeId::FibTableLookup,
        u64::from_le_bytes(lo.try_into().unwrap_or([0; 8])),
        err as u32,
        u64::from_le_bytes(hi.try_into().unwrap_or([0; 8])),
    );
    e.aux2 = tb;
    emit(&ctx, &key, e);
    0
}

#[tracepoint]
pub fn tp_net_dev_queue(ctx: TracePointContext) -> u32 {
    let Some(skb) = field::<u64>(&ctx, TpField::NetDevQueueSkb) else {
        return 0;
    };
    let Some((key, len)) = parse_skb(skb) else {
        return 0;
    };
    if is_echo_request(key.family, key.icmp_type) {
        let (tgid, _) = tgid_tid();
        let in_softirq = state().map(|s| s.in_net_rx != 0).unwrap_or(false);
        let k = track_key(&key);
        if !in_softirq && is_target(tgid) {
            if unsafe { TRACKED.get(&k) }.is_none() {
                let _ = TRACKED.insert(&k, &1, 0);
                info!(&ctx, "tracking echo id {} of tgid {}", key.icmp_id, tgid);
            }
            // The reply is delivered to this socket, possibly before the
            // send returns: learn it now.
            let off = unsafe { core::ptr::read_volatile(&CONFIG.skb_sk) } as u64;
            if off != 0
                && let Some(sk) = read_kernel::<u64>(skb + off)
                && sk != 0
            {
                let _ = SOCKS.insert(&sk, &1, 0);
            }
        }
    }
    if !is_tracked(&key) {
        return 0;
    }
    emit(
        &ctx,
        &key,
        at(Stage::DevQueueXmit, ProbeId::NetDevQueue, skb, len, 0),
    );
    0
}

#[tracepoint]
pub fn tp_net_dev_start_xmit(ctx: TracePointContext) -> u32 {
    if let Some((key, skb)) = skb_stage(
        &ctx,
        TpField::StartXmitSkb,
        Stage::LoopbackXmit,
        ProbeId::NetDevStartXmit,
    ) && let Some(st) = state()
    {
        st.xmit_skb = skb;
        st.xmit = key;
    }
    0
}

#[tracepoint]
pub fn tp_net_dev_xmit(ctx: TracePointContext) -> u32 {
    let Some(st) = state() else { return 0 };
    let skb = field::<u64>(&ctx, TpField::XmitSkb).unwrap_or(0);
    // The driver may already have handed the skb on: match it by address
    // against the start of this CPU's xmit instead of reading it again.
    if skb == 0 || st.xmit_skb != skb {
        return 0;
    }
    let key = st.xmit;
    st.xmit_skb = 0;
    let rc = field::<i32>(&ctx, TpField::XmitRc).unwrap_or(0);
    emit(
        &ctx,
        &key,
        at(
            Stage::LoopbackXmit,
            ProbeId::NetDevXmit,
            skb,
            0,
            rc as i64 as u64,
        ),
    );
    0
}

#[tracepoint]
pub fn tp_netif_rx_entry(ctx: TracePointContext) -> u32 {
    if let Some((key, _)) = skb_stage(
        &ctx,
        TpField::NetifRxEntrySkb,
        Stage::NetifRx,
        ProbeId::NetifRxEntry,
    ) && let Some(st) = state()
    {
        st.in_tracked_netif_rx = 1;
        st.netif_rx = key;
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

#[tracepoint]
pub fn tp_softirq_exit(ctx: TracePointContext) -> u32 {
    if field::<u32>(&ctx, TpField::SoftirqExitVec) != Some(NET_RX_SOFTIRQ) {
        return 0;
    }
    let Some(st) = state() else { return 0 };
    if st.last.valid != 0 {
        let key = st.last;
        let t = now();
        let ran = t.saturating_sub(st.softirq_entry_ts);
        emit(
            &ctx,
            &key,
            Emit {
                ts: t,
                stage: Stage::NetRxAction,
                probe: ProbeId::SoftirqExit,
                skb: 0,
                len: 0,
                aux: ran,
                aux2: 0,
            },
        );
    }
    st.in_net_rx = 0;
    st.softirq_entry_ts = 0;
    st.rx.valid = 0;
    st.last.valid = 0;
    0
}

#[tracepoint]
pub fn tp_napi_poll(ctx: TracePointContext) -> u32 {
    let Some(st) = state() else { return 0 };
    if st.in_net_rx == 0 || st.poll_pending == 0 || st.last.valid == 0 {
        return 0;
    }
    st.poll_pending = 0;
    let key = st.last;
    let work = field::<i32>(&ctx, TpField::NapiWork).unwrap_or(0);
    emit(
        &ctx,
        &key,
        at(
            Stage::ProcessBacklog,
            ProbeId::NapiPoll,
            0,
            0,
            work.max(0) as u64,
        ),
    );
    0
}

#[tracepoint]
pub fn tp_netif_receive_skb(ctx: TracePointContext) -> u32 {
    let Some(st) = state() else { return 0 };
    let Some(skb) = field::<u64>(&ctx, TpField::NetifReceiveSkbSkb) else {
        return 0;
    };
    let Some((mut key, len)) = parse_skb(skb) else {
        // Any other packet ends the attribution to the previous echo.
        st.rx.valid = 0;
        return 0;
    };
    if !is_tracked(&key) {
        st.rx.valid = 0;
        return 0;
    }
    key.delivered = 0;
    st.rx = key;
    if st.in_net_rx != 0 {
        if st.entry_emitted == 0 {
            st.entry_emitted = 1;
            let ts = st.softirq_entry_ts;
            emit(
                &ctx,
                &key,
                Emit {
                    ts,
                    stage: Stage::NetRxAction,
                    probe: ProbeId::SoftirqEntry,
                    skb: 0,
                    len: 0,
                    aux: 0,
                    aux2: 0,
                },
            );
        }
        st.last = key;
        st.poll_pending = 1;
    }
    emit(
        &ctx,
        &key,
        at(
            Stage::NetifReceiveSkb,
            ProbeId::NetifReceiveSkb,
            skb,
            len,
            0,
        ),
    );
    0
}

#[tracepoint]
pub fn tp_sk_data_ready(ctx: TracePointContext) -> u32 {
    let Some(st) = state() else { return 0 };
    if st.rx.valid == 0 {
        return 0;
    }
    let Some(sk) = field::<u64>(&ctx, TpField::SkDataReadySk) else {
        return 0;
    };
    // Raw sockets all get a copy of every ICMP packet: only the traced
    // command's sockets count as delivery.
    if unsafe { SOCKS.get(&sk) }.is_none() {
        return 0;
    }
    st.rx.delivered = 1;
    let key = st.rx;
    emit(
        &ctx,
        &key,
        at(Stage::SockDeliver, ProbeId::SkDataReady, 0, 0, sk),
    );
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

#[tracepoint]
pub fn tp_skb_copy_datagram_iovec(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return 0;
    }
    let Some(skb) = field::<u64>(&ctx, TpField::CopySkb) else {
        return 0;
    };
    let Some((key, _)) = parse_skb(skb) else {
        return 0;
    };
    if !is_tracked(&key) || !is_echo_reply(key.family, key.icmp_type) {
        return 0;
    }
    let len = field::<i32>(&ctx, TpField::CopyLen).unwrap_or(0);
    let _ = RECV_CTX.insert(&tid, &key, 0);
    emit(
        &ctx,
        &key,
        at(
            Stage::CopyToUser,
            ProbeId::SkbCopyDatagramIovec,
            skb,
            len.max(0) as u32,
            0,
        ),
    );
    0
}

#[tracepoint]
pub fn tp_sys_exit_recvmsg(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return 0;
    }
    let Some(key) = (unsafe { RECV_CTX.get(&tid) }).copied() else {
        return 0;
    };
    let _ = RECV_CTX.remove(&tid);
    let ret = field::<i64>(&ctx, TpField::RecvmsgRet).unwrap_or(0);
    emit(
        &ctx,
        &key,
        at(
            Stage::Recvmsg,
            ProbeId::SysExitRecvmsg,
            0,
            ret.max(0) as u32,
            ret as u64,
        ),
    );
    0
}

/// Raw ICMP sockets each get a clone of every echo packet, and another
/// ping frees its clones in its own system calls: in task context only the
/// traced processes' frees belong to a journey.
#[inline(always)]
fn free_is_ours() -> bool {
    let in_softirq = state().map(|s| s.in_net_rx != 0).unwrap_or(false);
    in_softirq || is_target(tgid_tid().0)
}

#[tracepoint]
pub fn tp_consume_skb(ctx: TracePointContext) -> u32 {
    if free_is_ours() {
        let _ = skb_stage(
            &ctx,
            TpField::ConsumeSkbSkb,
            Stage::Free,
            ProbeId::ConsumeSkb,
        );
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

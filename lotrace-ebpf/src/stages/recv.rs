//! ping's receive: recvmsg (or recvfrom) copies the reply out of the
//! socket's queue and returns it.

use aya_ebpf::{EbpfContext, helpers::bpf_probe_read_user};
use lotrace_common::{
    PktKey, ProbeId, Stage, TpField,
    event::{PKT_TCP, is_echo_reply, is_flow},
    follow::Sight,
};

use crate::kernel::Fields;
use crate::{
    emit::{emit, emit_flow_at},
    filter::{echo_socket_is, get_ctx, is_ours, is_target, set_ctx, skb_sock, take_ctx, tgid_tid},
    flow::key_u64,
    kernel::{CONFIG, config, field, now, read_kernel},
    maps::{QUEUED, RECV_CTX, RECV_DONE, RECVMMSG, state},
    packet::ours,
    seen::at,
};

/// The protocol's recvmsg starts (`tcp_recvmsg`, `udp_recvmsg`,
/// `udpv6_recvmsg`): noted for the thread, on this CPU, when its socket
/// already has data queued (see `CpuState::rcv_ts`), and forgotten
/// otherwise. It runs for every TCP or UDP read on the machine, so it
/// only notes.
#[inline(always)]
pub(crate) fn proto_recvmsg<C: EbpfContext>(_ctx: &C, probe: ProbeId, sk: u64) {
    let Some(st) = state() else { return };
    st.rcv_ts = 0;
    let tcp = matches!(probe, ProbeId::KpTcpRecvmsg | ProbeId::FeTcpRecvmsg);
    if sk == 0 || !queued(sk, tcp) {
        return;
    }
    st.rcv_ts = now();
    st.rcv_tid = tgid_tid().1;
    st.rcv_probe = probe as u8;
}

/// Whether `sk` has data queued for its reader: on its receive queue, or
/// for UDP on the queue its reader takes from first.
#[inline(always)]
fn queued(sk: u64, tcp: bool) -> bool {
    let qlen = |off: u32| off != 0 && read_kernel::<u32>(sk + off as u64).unwrap_or(0) != 0;
    qlen(config(&CONFIG.sk_rcvq_len)) || (!tcp && qlen(config(&CONFIG.udp_readq_len)))
}

/// The note of this thread's read (see [`proto_recvmsg`]), taken: its
/// start (0: none) and probe. Only the first packet the read takes was
/// surely queued before it began.
#[inline(always)]
fn take_read_began(tid: u32) -> (u64, u8) {
    let Some(st) = state() else { return (0, 0) };
    if st.rcv_ts == 0 || st.rcv_tid != tid {
        return (0, 0);
    }
    let began = (st.rcv_ts, st.rcv_probe);
    st.rcv_ts = 0;
    began
}

/// The read that took the traced packet `key` first began (`began`, from
/// [`take_read_began`]) with it already queued: reported under it,
/// before the read's own event.
#[inline(always)]
fn read_began(key: &PktKey, (ts, probe): (u64, u8)) {
    if ts == 0 || !is_flow(key.icmp_type) {
        return;
    }
    let stage = if key.icmp_type == PKT_TCP {
        Stage::TcpRecvmsg
    } else {
        Stage::UdpRecvmsg
    };
    emit_flow_at(key_u64(key), ts, stage as u8, probe);
}

/// recvmsg copies a reply out: the traced command's recvmsg then returns
/// it. A TCP or UDP packet's copy is shown whoever reads it (the peer's
/// read too), but only the traced command's reads are looked at unless
/// the skb is followed.
#[inline(always)]
fn copy<C: EbpfContext>(ctx: &C, skb: u64, probe: ProbeId, len: i64) {
    let (tgid, tid) = tgid_tid();
    let target = is_target(tgid);
    // Every raw ICMP socket gets a copy of the reply: only the copy out
    // of the socket the echo was sent on is its read (nor is another
    // socket's copy followed to its free).
    let judge = |k: &PktKey| is_ours(k, skb) && echo_socket_is(k, skb_sock(skb));
    let began = take_read_began(tid);
    let Some((key, _)) = ours(skb, Sight::Way, || target, judge) else {
        return;
    };
    let flow = is_flow(key.icmp_type);
    if !flow && (!target || !is_echo_reply(key.family, key.icmp_type)) {
        return;
    }
    // The read returns it next (a peer's read too: taken at its socket
    // layer's return, see `returned`).
    set_ctx(&RECV_CTX, tid, &key);
    read_began(&key, began);
    emit(
        ctx,
        &key,
        at(Stage::CopyToUser, probe, skb, len.max(0) as u32, 0),
    );
}

#[inline(always)]
pub(crate) fn skb_copy_datagram_iovec(
    ctx: &impl Fields,
    probe: ProbeId,
    skbaddr: TpField,
    len: TpField,
) {
    if let Some(skb) = field::<u64>(ctx, skbaddr) {
        let len = field::<i32>(ctx, len).unwrap_or(0);
        copy(ctx, skb, probe, len as i64);
    }
}

#[inline(always)]
pub(crate) fn skb_copy_datagram_iter<C: EbpfContext>(ctx: &C, probe: ProbeId, skb: u64, len: u64) {
    copy(ctx, skb, probe, len as i32 as i64);
}

/// A receive returns the reply its copy took out: the socket layer's
/// recvmsg (the system call returns it next, so the context stays), then
/// the system call itself (which ends it). A TCP or UDP packet's read by
/// a process not traced (the peer's) ends at the socket layer.
#[inline(always)]
fn returned<C: EbpfContext>(ctx: &C, stage: Stage, probe: ProbeId, ret: i64) {
    let (tgid, tid) = tgid_tid();
    let target = is_target(tgid);
    let key = if stage == Stage::Recvmsg {
        // Without a socket-layer return (not observed here), the copy's.
        // Only a traced thread's is ever set (every read() on the machine
        // comes here).
        let done = if target {
            take_ctx(&RECV_DONE, tid)
        } else {
            None
        };
        done.or_else(|| take_ctx(&RECV_CTX, tid))
    } else {
        let key = take_ctx(&RECV_CTX, tid);
        if target {
            match &key {
                Some(k) => set_ctx(&RECV_DONE, tid, k),
                None => {
                    let _ = take_ctx(&RECV_DONE, tid);
                }
            }
        }
        key
    };
    // A small UDP datagram is copied without `skb_copy_datagram_iter`:
    // its read's start goes with the read's return. A read that took no
    // traced packet leaves no note behind.
    let began = if stage == Stage::SockRecvmsg {
        take_read_began(tid)
    } else {
        (0, 0)
    };
    let Some(key) = key else {
        return;
    };
    if !target && !is_flow(key.icmp_type) {
        return;
    }
    read_began(&key, began);
    emit(
        ctx,
        &key,
        at(stage, probe, 0, ret.max(0) as u32, ret as u64),
    );
}

/// `MSG_PEEK`: a read that leaves the data queued.
const MSG_PEEK: i32 = 2;

#[inline(always)]
pub(crate) fn sock_recv_length(
    ctx: &impl Fields,
    probe: ProbeId,
    sk: TpField,
    ret: TpField,
    flags: TpField,
) {
    let ret = field::<i32>(ctx, ret).unwrap_or(0);
    // A read that took a traced UDP datagram without copying it through
    // skb_copy_datagram_iter (a small one): the one heading its queue.
    if let Some(sk) = field::<u64>(ctx, sk)
        && sk != 0
        && ret >= 0
        && field::<i32>(ctx, flags).unwrap_or(0) & MSG_PEEK == 0
        && let Some(key) = unsafe { QUEUED.get(&sk) }.copied()
    {
        let _ = QUEUED.remove(&sk);
        let tid = tgid_tid().1;
        if get_ctx(&RECV_CTX, tid).is_none() {
            set_ctx(&RECV_CTX, tid, &key);
        }
    }
    returned(ctx, Stage::SockRecvmsg, probe, ret as i64);
}

#[inline(always)]
pub(crate) fn recvmsg_return<C: EbpfContext>(ctx: &C, probe: ProbeId, ret: i64) {
    returned(ctx, Stage::SockRecvmsg, probe, ret);
}

#[inline(always)]
pub(crate) fn sys_exit_recv(ctx: &impl Fields, probe: ProbeId, ret: TpField) {
    let ret = field::<i64>(ctx, ret).unwrap_or(0);
    returned(ctx, Stage::Recvmsg, probe, ret);
}

/// `struct mmsghdr` (UAPI, fixed): a `user_msghdr`, then the length of
/// the message received into it.
const MMSG_SIZE: u64 = 64;
const MMSG_LEN: u64 = 56;

/// A `recvmmsg()` starts: where its messages go. Any thread's, not only
/// a traced one's: where the socket layer's return is not seen, a peer's
/// read of a traced packet ends at its system call's return too, and
/// must show a length in bytes there, not a count of messages.
#[inline(always)]
pub(crate) fn sys_enter_recvmmsg(ctx: &impl Fields, _probe: ProbeId, mmsg: TpField) {
    let m = field::<u64>(ctx, mmsg).unwrap_or(0);
    set_ctx(&RECVMMSG, tgid_tid().1, &m);
}

/// `recvmmsg()` returns how many messages it took. The packet it ends is
/// the last one's (see `returned`): so is the length shown, read from
/// that message's `msg_len`.
#[inline(always)]
pub(crate) fn sys_exit_recvmmsg(ctx: &impl Fields, probe: ProbeId, ret: TpField) {
    let ret = field::<i64>(ctx, ret).unwrap_or(0);
    let mmsg = match RECVMMSG.get_ptr_mut(&tgid_tid().1) {
        Some(p) => unsafe { core::mem::replace(&mut *p, 0) },
        None => 0,
    };
    let len = if ret > 0 && mmsg != 0 {
        // At most UIO_MAXIOV (1024) messages.
        let last = mmsg + ((ret as u64 - 1) & 1023) * MMSG_SIZE + MMSG_LEN;
        unsafe { bpf_probe_read_user(last as *const u32) }.map_or(0, |l| l as i64)
    } else {
        ret
    };
    returned(ctx, Stage::Recvmsg, probe, len);
}

//! The send: ping's sendto() and the socket layer's sendmsg. The request is
//! recognised here from the user's buffer and its id tracked.

use aya_ebpf::{EbpfContext, helpers::bpf_probe_read_user};
use lotrace_common::{
    PktKey, ProbeId, Stage, TpField,
    event::{
        AF_INET, AF_INET6, ICMP_ECHO, ICMPV6_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPPROTO_TCP, IPPROTO_UDP, SOCK_RAW,
    },
};

use crate::kernel::Fields;
use crate::{
    emit::emit,
    filter::{
        get_ctx, is_target, learn_sock, set_ctx, sock_net, take_ctx, tgid_tid, track, track_key,
    },
    kernel::{field, now, sk_protocol, sk_type, sock_of_fd},
    maps::{FLOW_SEND, FlowSend, SEND_CTX, end_flow_send, flow_send},
    packet::echo_key,
    seen::{at, at_time},
};

/// A traced thread's send starts. It is an echo request only on an ICMP
/// socket (raw or datagram): any other message may start with the same
/// bytes.
#[inline(always)]
fn send_starts<C: EbpfContext>(
    ctx: &C,
    probe: ProbeId,
    tid: u32,
    fd: Option<u64>,
    buf: u64,
    len: u64,
) {
    let Some(sk) = fd.and_then(|fd| sock_of_fd(fd as i32)) else {
        return;
    };
    // A TCP or UDP send: its packets are known when transmitted (see
    // `transmit::sent`), the first under this send's stages.
    if matches!(sk_protocol(sk), Some(p) if p == IPPROTO_TCP as u16 || p == IPPROTO_UDP as u16) {
        let start = FlowSend {
            ts: now(),
            proto_ts: 0,
            len: len as u32,
            probe: probe as u8,
            proto_probe: 0,
            proto_tcp: 0,
            _pad: 0,
            key: PktKey::default(),
        };
        // In place: an insert would cost the map's allocator and its
        // locks on every send.
        set_ctx(&FLOW_SEND, tid, &start);
        return;
    }
    // No buffer (sendfile, splice): no echo to read from it.
    if buf == 0
        || !matches!(sk_protocol(sk), Some(p) if p == IPPROTO_ICMP as u16 || p == IPPROTO_ICMPV6 as u16)
    {
        return;
    }
    // The reply may be delivered before the send returns.
    learn_sock(sk);
    let Ok(hdr) = (unsafe { bpf_probe_read_user(buf as *const [u8; 8]) }) else {
        return;
    };
    // The message is the ICMP header and payload; its type tells the family.
    let family = match hdr[0] {
        ICMP_ECHO => AF_INET,
        ICMPV6_ECHO_REQUEST => AF_INET6,
        _ => return,
    };
    let Some(key) = echo_key(family, &hdr) else {
        return;
    };
    set_ctx(&SEND_CTX, tid, &key);
    // Track the id now: the IP output path runs before dev_queue_xmit. Only
    // on a raw socket: a datagram socket sends under an id of its own (the
    // buffer's, often 0xffff, is no packet's), tracked where its packet
    // is first seen.
    if sk_type(sk) == Some(SOCK_RAW as u16) {
        track(track_key(&key), tgid_tid().0, sk, sock_net(sk));
    }
    emit(ctx, &key, at(Stage::Sendto, probe, 0, len as u32, 0));
}

#[inline(always)]
pub(crate) fn sys_enter_sendto(
    ctx: &impl Fields,
    probe: ProbeId,
    fd: TpField,
    buff: TpField,
    len: TpField,
) {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return;
    }
    let Some(buf) = field::<u64>(ctx, buff) else {
        return;
    };
    let len = field::<u64>(ctx, len).unwrap_or(0);
    send_starts(ctx, probe, tid, field::<u64>(ctx, fd), buf, len);
}

/// `struct user_msghdr` and `struct iovec` (UAPI, fixed): the message's
/// first buffer. `sendmmsg()`'s `struct mmsghdr` starts with its first
/// message's `user_msghdr`.
const MSG_IOV: u64 = 16;

#[inline(always)]
pub(crate) fn sys_enter_sendmsg(ctx: &impl Fields, probe: ProbeId, fd: TpField, msg: TpField) {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return;
    }
    let Some(msg) = field::<u64>(ctx, msg) else {
        return;
    };
    let Ok(iov) = (unsafe { bpf_probe_read_user((msg + MSG_IOV) as *const u64) }) else {
        return;
    };
    let Ok([buf, len]) = (unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }) else {
        return;
    };
    send_starts(ctx, probe, tid, field::<u64>(ctx, fd), buf, len);
}

/// `writev()`: its first buffer.
#[inline(always)]
pub(crate) fn sys_enter_writev(ctx: &impl Fields, probe: ProbeId, fd: TpField, vec: TpField) {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return;
    }
    let Some(iov) = field::<u64>(ctx, vec) else {
        return;
    };
    let Ok([buf, len]) = (unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }) else {
        return;
    };
    send_starts(ctx, probe, tid, field::<u64>(ctx, fd), buf, len);
}

/// `sendfile()` or `splice()` into a socket (`fd`): `count` bytes from
/// another file, so no user buffer. Splicing out of a socket (a read)
/// takes its data neither through `skb_copy_datagram_iter` nor through
/// the socket layer's recvmsg, and is not shown.
#[inline(always)]
pub(crate) fn sys_enter_sendfile(ctx: &impl Fields, probe: ProbeId, fd: TpField, count: TpField) {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return;
    }
    let len = field::<u64>(ctx, count).unwrap_or(0);
    send_starts(ctx, probe, tid, field::<u64>(ctx, fd), 0, len);
}

#[inline(always)]
pub(crate) fn sys_exit_sendto(_ctx: &impl Fields, _probe: ProbeId, _ret: TpField) {
    let (tgid, tid) = tgid_tid();
    if is_target(tgid) {
        let _ = take_ctx(&SEND_CTX, tid);
        end_flow_send(tid);
    }
}

/// The socket layer's send, seen inside the traced command's sendto.
#[inline(always)]
fn sock_sendmsg<C: EbpfContext>(ctx: &C, probe: ProbeId, sk: u64, ret: Option<i64>) {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return;
    }
    let Some(key) = get_ctx(&SEND_CTX, tid) else {
        // A TCP or UDP send's return, under its first packet's key, with
        // the protocol's send before it. Its start (a function probe's
        // entry) comes before any packet: nothing to report it under.
        let Some(r) = ret else { return };
        if let Some(f) = flow_send(tid) {
            let f = unsafe { *f };
            end_flow_send(tid);
            if f.key.valid != 0 {
                // The stage by comparison, not by a table the verifier
                // cannot bound.
                if f.proto_ts != 0
                    && let Some(p) = ProbeId::from_u8(f.proto_probe)
                {
                    let stage = if f.proto_tcp != 0 {
                        Stage::TcpSendmsg
                    } else {
                        Stage::UdpSendmsg
                    };
                    emit(ctx, &f.key, at_time(f.proto_ts, stage, p, 0));
                }
                emit(
                    ctx,
                    &f.key,
                    at(Stage::SockSendmsg, probe, 0, r.max(0) as u32, r as u64),
                );
            }
        }
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

#[inline(always)]
pub(crate) fn sock_send_length(ctx: &impl Fields, probe: ProbeId, sk: TpField, ret: TpField) {
    let sk = field::<u64>(ctx, sk).unwrap_or(0);
    let ret = field::<i32>(ctx, ret).unwrap_or(0);
    sock_sendmsg(ctx, probe, sk, Some(ret as i64));
}

/// The protocol's send starts inside a traced thread's TCP or UDP send:
/// noted, the first time.
#[inline(always)]
fn proto_send_starts(probe: ProbeId, tcp: bool) {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return;
    }
    if let Some(f) = flow_send(tid) {
        let f = unsafe { &mut *f };
        if f.proto_ts == 0 {
            f.proto_ts = now();
            f.proto_probe = probe as u8;
            f.proto_tcp = tcp as u8;
        }
    }
}

/// `tcp_sendmsg` starts.
#[inline(always)]
pub(crate) fn tcp_sendmsg<C: EbpfContext>(_ctx: &C, probe: ProbeId, _sk: u64) {
    proto_send_starts(probe, true);
}

/// `tcp:tcp_sendmsg_locked`: TCP's send puts data into an skb.
#[inline(always)]
pub(crate) fn tcp_sendmsg_locked(_ctx: &impl Fields, probe: ProbeId, _skb: TpField) {
    proto_send_starts(probe, true);
}

/// `udp_sendmsg` or `udpv6_sendmsg` starts.
#[inline(always)]
pub(crate) fn udp_sendmsg<C: EbpfContext>(_ctx: &C, probe: ProbeId, _sk: u64) {
    proto_send_starts(probe, false);
}

/// The family's sendmsg starts (its socket is learnt at dev_queue_xmit).
#[inline(always)]
pub(crate) fn sendmsg<C: EbpfContext>(ctx: &C, probe: ProbeId, _sock: u64) {
    sock_sendmsg(ctx, probe, 0, None);
}

#[inline(always)]
pub(crate) fn sendmsg_return<C: EbpfContext>(ctx: &C, probe: ProbeId, ret: i64) {
    sock_sendmsg(ctx, probe, 0, Some(ret));
}

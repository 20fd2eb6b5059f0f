//! The traced command's servers: its listening TCP sockets and its bound
//! UDP sockets. A flow to one of them becomes the trace's at its first
//! packet (a SYN, a query), though the client that sends it is not traced.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::map, maps::LruHashMap};
use lotrace_common::{
    ProbeId, TpField,
    event::{AF_INET, AF_INET6, FlowTuple, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::kernel::Fields;
use crate::{
    filter::{is_target, tgid_tid},
    kernel::{CONFIG, config, field, read_kernel, sk_protocol, sock_of_fd},
};

/// A server's socket: the address it takes packets on (zeros: any), the
/// process it belongs to, which must still be traced, and the socket,
/// which must still be the same (see [`sock_ino`]).
#[repr(C)]
#[derive(Clone, Copy)]
struct Listener {
    addr: [u8; 16],
    tgid: u32,
    /// Put under IPv4 for an IPv6 socket on any address that takes IPv4
    /// too.
    alias: u32,
    sk: u64,
    ino: u64,
}

/// The servers, by family, protocol and port (see [`key`]).
#[map]
static LISTENERS: LruHashMap<u32, Listener> = LruHashMap::with_max_entries(256, 0);

/// A family, a protocol and a port in network order.
#[inline(always)]
fn key(family: u8, proto: u8, port_be: u16) -> u32 {
    (family as u32) << 24 | (proto as u32) << 16 | port_be as u32
}

/// An IPv6 socket on any address takes IPv4 too, unless IPV6_V6ONLY
/// (`sock_common.skc_ipv6only`, a bit; its offset from BTF, plus one).
#[inline(always)]
fn takes_ipv4(sk: u64, family: u8, addr: &[u8; 16]) -> bool {
    if family != AF_INET6 || *addr != [0u8; 16] {
        return false;
    }
    match config(&CONFIG.sk_ipv6only_bit) {
        0 => false,
        b => {
            let bit = b - 1;
            read_kernel::<u8>(sk + (bit / 8) as u64).is_some_and(|v| v & (1 << (bit % 8)) == 0)
        }
    }
}

/// A traced process's socket `sk` starts (`on`) or stops being a server
/// on `port` (host order).
#[inline(always)]
fn serving(sk: u64, family: u8, proto: u8, port: u16, addr: &[u8; 16], on: bool) {
    let both = takes_ipv4(sk, family, addr);
    let keys = [
        key(family, proto, port.to_be()),
        if both {
            key(AF_INET, proto, port.to_be())
        } else {
            0
        },
    ];
    for (i, k) in keys.into_iter().enumerate() {
        if k == 0 {
            continue;
        }
        let alias = i as u32;
        if on {
            let l = Listener {
                addr: *addr,
                tgid: tgid_tid().0,
                alias,
                sk,
                ino: sock_ino(sk),
            };
            let _ = LISTENERS.insert(&k, &l, 0);
        } else if unsafe { LISTENERS.get(&k) }.is_some_and(|l| l.addr == *addr && l.alias == alias)
        {
            let _ = LISTENERS.remove(&k);
        }
    }
}

/// Whether `t` is a packet to a traced server's port and address.
#[inline(always)]
pub(crate) fn to_listener(t: &FlowTuple) -> bool {
    if t.proto != IPPROTO_TCP && t.proto != IPPROTO_UDP {
        return false;
    }
    let k = key(t.family, t.proto, u16::from_le_bytes(t.dport));
    match unsafe { LISTENERS.get(&k) } {
        Some(l) => {
            (l.alias != 0 || l.addr == [0u8; 16] || l.addr == t.daddr)
                && is_target(l.tgid)
                && sock_ino(l.sk) == l.ino
        }
        None => false,
    }
}

/// The inode number of `sk`'s socket (0: none, or not known). No
/// tracepoint tells of a UDP socket's close (a TCP listener's is a state
/// change), but the close orphans it (`sk_socket` NULL), and a socket
/// opened later in the same memory, by any process, has an inode number
/// of its own: a server's entry holds only while its socket's number is
/// the one it was bound with.
#[inline(always)]
fn sock_ino(sk: u64) -> u64 {
    let (off_socket, off_ino) = (
        config(&CONFIG.sk_socket) as u64,
        config(&CONFIG.socket_ino) as u64,
    );
    if sk == 0 || off_socket == 0 || off_ino == 0 {
        return 0;
    }
    match read_kernel::<u64>(sk + off_socket) {
        Some(socket) if socket != 0 => read_kernel::<u64>(socket + off_ino).unwrap_or(0),
        _ => 0,
    }
}

/// `sock:inet_sock_set_state`: a traced process's TCP socket starts to
/// listen (in its `listen()`), or stops.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn inet_sock_set_state(
    ctx: &impl Fields,
    _probe: ProbeId,
    sk: TpField,
    old: TpField,
    new: TpField,
    sport: TpField,
    family: TpField,
    proto: TpField,
    saddr: TpField,
    saddr6: TpField,
) {
    let (Some(old), Some(new)) = (field::<i32>(ctx, old), field::<i32>(ctx, new)) else {
        return;
    };
    if new != TCP_LISTEN && old != TCP_LISTEN {
        return;
    }
    if field::<u16>(ctx, proto) != Some(IPPROTO_TCP as u16) {
        return;
    }
    let (Some(family), Some(port)) = (field::<u16>(ctx, family), field::<u16>(ctx, sport)) else {
        return;
    };
    let addr = if family == AF_INET6 as u16 {
        field::<[u8; 16]>(ctx, saddr6)
    } else {
        field::<[u8; 4]>(ctx, saddr).map(|a| {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a);
            b
        })
    };
    let Some(addr) = addr else { return };
    let sk = field::<u64>(ctx, sk).unwrap_or(0);
    if new == TCP_LISTEN {
        if is_target(tgid_tid().0) {
            serving(sk, family as u8, IPPROTO_TCP, port, &addr, true);
        }
    } else {
        serving(sk, family as u8, IPPROTO_TCP, port, &addr, false);
    }
}

/// `TCP_LISTEN`, as `include/net/tcp_states.h` has it.
const TCP_LISTEN: i32 = 10;

/// A traced thread's `bind()` of a UDP socket under way: the socket and
/// where, kept until the call returns (it may fail).
#[repr(C)]
#[derive(Clone, Copy)]
struct Binding {
    sk: u64,
    addr: [u8; 16],
    family: u16,
    port: u16,
    _pad: u32,
}

#[map]
static BINDING: LruHashMap<u32, Binding> = LruHashMap::with_max_entries(256, 0);

/// `sys_enter_bind`: a traced thread binds a UDP socket to a port. No
/// tracepoint says that a UDP socket is bound, so the call is read: the
/// `sockaddr`'s family, port (network order) and address (an IPv4 one at
/// 4, an IPv6 one at 8).
#[inline(always)]
pub(crate) fn sys_enter_bind(ctx: &impl Fields, _probe: ProbeId, fd: TpField, umyaddr: TpField) {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return;
    }
    let Some(sk) = field::<u64>(ctx, fd).and_then(|fd| sock_of_fd(fd as i32)) else {
        return;
    };
    if sk_protocol(sk) != Some(IPPROTO_UDP as u16) {
        return;
    }
    let Some(ua) = field::<u64>(ctx, umyaddr) else {
        return;
    };
    let Ok(sa) = (unsafe { bpf_probe_read_user(ua as *const [u8; 8]) }) else {
        return;
    };
    let family = u16::from_ne_bytes([sa[0], sa[1]]);
    let port = u16::from_be_bytes([sa[2], sa[3]]);
    let mut addr = [0u8; 16];
    if family == AF_INET as u16 {
        addr[..4].copy_from_slice(&sa[4..8]);
    } else if family == AF_INET6 as u16 {
        let Ok(a) = (unsafe { bpf_probe_read_user((ua + 8) as *const [u8; 16]) }) else {
            return;
        };
        addr = a;
    } else {
        return;
    }
    // Port 0: the kernel picks one, as for a client; its packets are then
    // followed from its own first send.
    if port == 0 {
        return;
    }
    let b = Binding {
        sk,
        addr,
        family,
        port,
        _pad: 0,
    };
    let _ = BINDING.insert(&tid, &b, 0);
}

/// `sys_exit_bind`: the bind done, the socket is a server.
#[inline(always)]
pub(crate) fn sys_exit_bind(ctx: &impl Fields, _probe: ProbeId, ret: TpField) {
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return;
    }
    let Some(b) = (unsafe { BINDING.get(&tid) }).copied() else {
        return;
    };
    let _ = BINDING.remove(&tid);
    if field::<i64>(ctx, ret) == Some(0) {
        serving(b.sk, b.family as u8, IPPROTO_UDP, b.port, &b.addr, true);
    }
}

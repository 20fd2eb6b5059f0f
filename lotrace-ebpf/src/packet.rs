//! What an skb is: a traced packet is identified once, from its IP and
//! ICMP headers read inside its linear data (a fragment by its datagram's
//! first) or from the traced send building it, then followed by address
//! (see `lotrace_common::follow`). Whether the echo a header names belongs
//! to the trace is `filter`'s.

use lotrace_common::{
    PktKey,
    event::{
        AF_INET, AF_INET6, FLOW_REVERSE, ICMP_ECHO, ICMP_ECHOREPLY, ICMPV6_ECHO_REPLY,
        ICMPV6_ECHO_REQUEST, IPPROTO_FRAGMENT, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, is_flow,
    },
    follow::{self, Followed, Header, Sight},
};

use crate::{
    filter::{get_ctx, in_softirq, is_ours, is_target, tgid_tid},
    flow,
    kernel::{CONFIG, config, read_kernel, skb_head_nh_tail},
    maps::{FOLLOWED, FOLLOWED_SLOTS, FRAGS, Follow, SEND_CTX, state},
};

/// Reads the IP and ICMP/ICMPv6 headers of an skb at the offsets the loader
/// found in BTF, inside its linear data only. `None` for anything that is
/// not ICMP. A fragment of a datagram is its echo's: the first fragment's
/// header says which, and is remembered by the datagram's id for the
/// others (see `FRAGS`). Also the skb's length, and whether it is a
/// fragment (a first fragment may have its header out of reach too).
#[inline(always)]
fn read_skb(skb: u64) -> Option<(Header<PktKey>, u32, bool)> {
    if skb == 0 {
        return None;
    }
    let (off_head, off_nh, off_len, off_tail) = (
        config(&CONFIG.skb_head) as u64,
        config(&CONFIG.skb_network_header) as u64,
        config(&CONFIG.skb_len) as u64,
        config(&CONFIG.skb_tail) as u64,
    );
    if off_head == 0 || off_tail == 0 {
        return None;
    }
    let (head, nh, tail) = skb_head_nh_tail(skb, off_head, off_nh, off_tail)?;
    if nh == u16::MAX || head == 0 {
        return None;
    }
    let end = head + tail as u64;
    // The length only goes into streamed events: aggregation skips the read.
    let len = skb_len(skb, off_len);
    let ip = head + nh as u64;
    // One read covers what both IP versions need: the version, IPv4's
    // identification (bytes 4-5), fragment offset and flags (6-7) and
    // protocol (9), IPv6's next header (6).
    if ip + 10 > end {
        return None;
    }
    let iph: [u8; 10] = read_kernel(ip)?;
    let (family, icmp_at, frag) = match iph[0] >> 4 {
        // A TCP segment or UDP datagram, of a flow the trace follows. A
        // fragment of one is not followed.
        4 if iph[9] == IPPROTO_TCP || iph[9] == IPPROTO_UDP => {
            if u16::from_be_bytes([iph[6], iph[7]]) & 0x3fff != 0 {
                return None;
            }
            let th = ip + ((iph[0] & 0x0f) as u64) * 4;
            let key = flow::read(skb, ip, &iph, th, end).then(flow_key)??;
            return Some((Header::packet(key), len, false));
        }
        6 if iph[6] == IPPROTO_TCP || iph[6] == IPPROTO_UDP => {
            let key = flow::read(skb, ip, &iph, ip + 40, end).then(flow_key)??;
            return Some((Header::packet(key), len, false));
        }
        4 if iph[9] == IPPROTO_ICMP => {
            let flags_off = u16::from_be_bytes([iph[6], iph[7]]);
            let id = u16::from_be_bytes([iph[4], iph[5]]) as u32;
            if flags_off & 0x1fff != 0 {
                return later_fragment(AF_INET, id, len);
            }
            let frag = (flags_off & 0x2000 != 0).then_some(id);
            (AF_INET, ip + ((iph[0] & 0x0f) as u64) * 4, frag)
        }
        6 if iph[6] == IPPROTO_ICMPV6 => (AF_INET6, ip + 40, None),
        6 if iph[6] == IPPROTO_FRAGMENT => {
            if ip + 48 > end {
                return None;
            }
            // Next header, reserved, offset and M flag, identification.
            let fh: [u8; 8] = read_kernel(ip + 40)?;
            let id = u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]);
            if u16::from_be_bytes([fh[2], fh[3]]) & 0xfff8 != 0 {
                return later_fragment(AF_INET6, id, len);
            }
            if fh[0] != IPPROTO_ICMPV6 {
                return None;
            }
            (AF_INET6, ip + 48, Some(id))
        }
        _ => return None,
    };
    if icmp_at + 8 > end {
        return Some((Header::unread(family), len, frag.is_some()));
    }
    let hdr: [u8; 8] = read_kernel(icmp_at)?;
    let key = echo_key(family, &hdr)?;
    let Some(id) = frag else {
        return Some((Header::packet(key), len, false));
    };
    let k = frag_key(family, id);
    if unsafe { FRAGS.get(&k) } != Some(&key) {
        let _ = FRAGS.insert(&k, &key, 0);
    }
    Some((Header::fragment(key), len, true))
}

/// Whether `skb` is known to be the packet it was when last checked (see
/// `ours`).
#[inline(always)]
fn alive(skb: u64, sight: Sight) -> bool {
    let Some(st) = state() else {
        return false;
    };
    sight == Sight::Way
        && (st.xmit_skb == skb
            || (st.tx_entry == 3 && st.flow_skb == skb)
            || (st.in_net_rx != 0 && st.rx_skb == skb))
}

/// The key `flow::read` found.
#[inline(always)]
fn flow_key() -> Option<PktKey> {
    state().map(|st| st.flow_key)
}

/// Whether `skb`'s headers still name the flow of the followed packet
/// `key`, in its direction. Not inlined, for the stack's sake (see
/// `flow::read`).
#[inline(never)]
fn flow_still(skb: u64, key: &PktKey) -> bool {
    let (off_head, off_nh, off_tail) = (
        config(&CONFIG.skb_head) as u64,
        config(&CONFIG.skb_network_header) as u64,
        config(&CONFIG.skb_tail) as u64,
    );
    let Some((head, nh, tail)) = skb_head_nh_tail(skb, off_head, off_nh, off_tail) else {
        return false;
    };
    if nh == u16::MAX || head == 0 {
        return false;
    }
    let (ip, end) = (head + nh as u64, head + tail as u64);
    if ip + 10 > end {
        return false;
    }
    let Some(iph) = read_kernel::<[u8; 10]>(ip) else {
        return false;
    };
    let flow = match iph[0] >> 4 {
        4 if iph[9] == IPPROTO_TCP || iph[9] == IPPROTO_UDP => {
            let th = ip + ((iph[0] & 0x0f) as u64) * 4;
            flow::flow_of(AF_INET, iph[9], ip, th, end)
        }
        6 if iph[6] == IPPROTO_TCP || iph[6] == IPPROTO_UDP => {
            flow::flow_of(AF_INET6, iph[6], ip, ip + 40, end)
        }
        _ => None,
    };
    flow == Some((key.icmp_id, key.icmp_seq & FLOW_REVERSE != 0))
}

/// The skb's length, for streamed events only: aggregation skips the read.
#[inline(always)]
fn skb_len(skb: u64, off_len: u64) -> u32 {
    if config(&CONFIG.summary_only) != 0 {
        0
    } else {
        read_kernel(skb + off_len).unwrap_or(0)
    }
}

#[inline(always)]
fn frag_key(family: u8, id: u32) -> u64 {
    ((family as u64) << 32) | id as u64
}

/// A fragment other than the first: the echo its datagram's first fragment
/// carried, if seen.
#[inline(always)]
fn later_fragment(family: u8, id: u32, len: u32) -> Option<(Header<PktKey>, u32, bool)> {
    let key = unsafe { FRAGS.get(&frag_key(family, id)) }.copied()?;
    Some((Header::fragment(key), len, true))
}

/// The packets followed by address, for `lotrace_common::follow`.
struct Skbs;

#[inline(always)]
fn follow_slot(skb: u64) -> u32 {
    // skbs are slab objects a few hundred bytes apart: a multiplicative
    // hash spreads them over the slots.
    ((skb >> 6).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as u32 & (FOLLOWED_SLOTS - 1)
}

#[inline(always)]
fn follow_tag(skb: u64, key: &PktKey) -> u64 {
    let k = u64::from_le_bytes([
        key.icmp_id as u8,
        (key.icmp_id >> 8) as u8,
        key.icmp_seq as u8,
        (key.icmp_seq >> 8) as u8,
        key.family,
        key.icmp_type,
        key.valid,
        0,
    ]);
    !(skb ^ k.rotate_left(17))
}

impl Followed<PktKey> for Skbs {
    #[inline(always)]
    fn get(&self, skb: u64) -> Option<PktKey> {
        let f = FOLLOWED.get(follow_slot(skb))?;
        let f = unsafe { core::ptr::read_volatile(f) };
        (f.skb == skb && f.tag == follow_tag(skb, &f.key)).then_some(f.key)
    }
    #[inline(always)]
    fn set(&mut self, skb: u64, key: &PktKey) {
        let Some(f) = FOLLOWED.get_ptr_mut(follow_slot(skb)) else {
            return;
        };
        let mut key = *key;
        key.delivered = 0;
        unsafe {
            *f = Follow {
                skb,
                key,
                tag: follow_tag(skb, &key),
            }
        };
    }
    #[inline(always)]
    fn remove(&mut self, skb: u64) {
        if let Some(f) = FOLLOWED.get_ptr_mut(follow_slot(skb))
            && unsafe { (*f).skb } == skb
        {
            unsafe { (*f).skb = 0 };
        }
    }
}

/// Which traced packet `skb` is, and its length (see
/// `lotrace_common::follow`). An skb not followed yet has its headers
/// read if `may_read` says so, and is the trace's if `judge` says so of
/// the packet they name; a followed one is the trace's.
#[inline(always)]
pub(crate) fn ours(
    skb: u64,
    sight: Sight,
    may_read: impl FnOnce() -> bool,
    judge: impl FnOnce(&PktKey) -> bool,
) -> Option<(PktKey, u32)> {
    if skb == 0 {
        return None;
    }
    // What the headers said, when read: the length, and whether a fragment.
    let mut read = None;
    let key = follow::identify(
        &mut Skbs,
        skb,
        sight,
        || {
            if !may_read() {
                return Header::absent();
            }
            let Some((header, len, frag)) = read_skb(skb) else {
                return Header::absent();
            };
            read = Some((len, frag));
            header
        },
        sending,
        judge,
    )?;
    // A followed TCP or UDP packet's skb may have been freed unseen and
    // reused since (see `flow::flow_of`): its headers must still name its
    // flow. Not where the skb is known alive: inside its own driver's
    // transmit (`netif_rx`), at the driver's start right after its
    // transmit's entry read it, and in the NET_RX run that checked it at
    // `netif_receive_skb`.
    if read.is_none()
        && is_flow(key.icmp_type)
        && sight != Sight::Transmit
        && !alive(skb, sight)
        && !flow_still(skb, &key)
    {
        Skbs.remove(skb);
        return None;
    }
    let (len, frag) = match read {
        Some(r) => r,
        None => (skb_len(skb, config(&CONFIG.skb_len) as u64), false),
    };
    let Some(st) = state() else {
        return Some((key, len));
    };
    // Whether the skb is a fragment, for `emit`. The reassembled datagram
    // takes over one fragment's skb: the mark goes with the next read, or
    // the next stage that finds the address followed.
    if frag {
        st.frag_skb = skb;
    } else if st.frag_skb == skb {
        st.frag_skb = 0;
    }
    // Our own transmit hands this followed skb to a receive: that
    // receive's namespace is the echo's too (`is_ours` records it).
    if read.is_none() && st.xmit_skb == skb {
        let _ = is_ours(&key, skb);
    }
    Some((key, len))
}

/// The echo a traced thread's send is building, outside NET_RX, if of
/// this family.
#[inline(always)]
fn sending(family: u8) -> Option<PktKey> {
    if in_softirq() {
        return None;
    }
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return None;
    }
    get_ctx(&SEND_CTX, tid).filter(|k| k.family == family)
}

/// Follows a copy of a traced packet (a raw socket's clone) by its own
/// address.
#[inline(always)]
pub(crate) fn follow_copy(skb: u64, key: &PktKey) {
    follow::follow_copy(&mut Skbs, skb, key);
}

#[inline(always)]
pub(crate) fn echo_key(family: u8, hdr: &[u8; 8]) -> Option<PktKey> {
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
pub(crate) fn reply_of(req: &PktKey) -> PktKey {
    let mut k = *req;
    k.icmp_type = if req.family == AF_INET6 {
        ICMPV6_ECHO_REPLY
    } else {
        ICMP_ECHOREPLY
    };
    k.delivered = 0;
    k
}

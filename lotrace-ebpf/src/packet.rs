//! What an skb is: its IP and ICMP headers read inside its linear data,
//! the fragments of a datagram known by its first, and the skbs whose
//! header is out of reach followed by address (see
//! `lotrace_common::follow`). Whether the echo it is belongs to the trace
//! is `filter`'s.

use lotrace_common::{
    PktKey,
    event::{
        AF_INET, AF_INET6, ICMP_ECHO, ICMP_ECHOREPLY, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
        IPPROTO_FRAGMENT, IPPROTO_ICMP, IPPROTO_ICMPV6,
    },
    follow::{self, At, Followed, Header},
};

use crate::{
    filter::{get_ctx, in_softirq, is_target, tgid_tid},
    kernel::{CONFIG, config, read_kernel, skb_head_nh_tail},
    maps::{FRAGS, SEND_CTX, SKBS, state},
};

/// Reads the IP and ICMP/ICMPv6 headers of an skb at the offsets the loader
/// found in BTF, inside its linear data only. `None` for anything that is
/// not ICMP. A fragment of a datagram is its echo's: the first fragment's
/// header says which, and is remembered by the datagram's id for the
/// others (see `FRAGS`); the skb is marked a fragment for `emit`.
#[inline(always)]
pub(crate) fn read_skb(skb: u64) -> Option<(Header, u32)> {
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
    let len: u32 = if config(&CONFIG.summary_only) != 0 {
        0
    } else {
        read_kernel(skb + off_len).unwrap_or(0)
    };
    let ip = head + nh as u64;
    // One read covers what both IP versions need: the version, IPv4's
    // identification (bytes 4-5), fragment offset and flags (6-7) and
    // protocol (9), IPv6's next header (6).
    if ip + 10 > end {
        return None;
    }
    let iph: [u8; 10] = read_kernel(ip)?;
    let (family, icmp_at, frag) = match iph[0] >> 4 {
        4 if iph[9] == IPPROTO_ICMP => {
            let flags_off = u16::from_be_bytes([iph[6], iph[7]]);
            let id = u16::from_be_bytes([iph[4], iph[5]]) as u32;
            if flags_off & 0x1fff != 0 {
                return later_fragment(skb, AF_INET, id, len);
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
                return later_fragment(skb, AF_INET6, id, len);
            }
            if fh[0] != IPPROTO_ICMPV6 {
                return None;
            }
            (AF_INET6, ip + 48, Some(id))
        }
        _ => return None,
    };
    if icmp_at + 8 > end {
        mark_fragment(skb, frag.is_some());
        return Some((Header::Unread(family), len));
    }
    let hdr: [u8; 8] = read_kernel(icmp_at)?;
    let key = echo_key(family, &hdr)?;
    // Only for echoes: every other packet of the machine passes here too.
    mark_fragment(skb, frag.is_some());
    if let Some(id) = frag {
        let k = frag_key(family, id);
        if unsafe { FRAGS.get(&k) } != Some(&key) {
            let _ = FRAGS.insert(&k, &key, 0);
        }
    }
    Some((Header::Echo(key), len))
}

#[inline(always)]
fn frag_key(family: u8, id: u32) -> u64 {
    ((family as u64) << 32) | id as u64
}

/// A fragment other than the first: the echo its datagram's first fragment
/// carried, if seen.
#[inline(always)]
fn later_fragment(skb: u64, family: u8, id: u32, len: u32) -> Option<(Header, u32)> {
    let key = unsafe { FRAGS.get(&frag_key(family, id)) }.copied()?;
    mark_fragment(skb, true);
    Some((Header::Echo(key), len))
}

/// Whether the skb just read is a fragment (its events say so). The
/// reassembled datagram takes over one fragment's skb: the mark goes with
/// the next read of that address.
#[inline(always)]
fn mark_fragment(skb: u64, frag: bool) {
    if let Some(st) = state() {
        if frag {
            st.frag_skb = skb;
        } else if st.frag_skb == skb {
            st.frag_skb = 0;
        }
    }
}

/// The skbs followed by address, for `lotrace_common::follow`.
struct Skbs;

impl Followed for Skbs {
    #[inline(always)]
    fn get(&self, skb: u64) -> Option<PktKey> {
        unsafe { SKBS.get(&skb) }.copied()
    }
    #[inline(always)]
    fn set(&mut self, skb: u64, key: &PktKey) {
        let _ = SKBS.insert(&skb, key, 0);
    }
    #[inline(always)]
    fn remove(&mut self, skb: u64) {
        let _ = SKBS.remove(&skb);
    }
}

/// Which echo packet an skb is, and its length (see
/// `lotrace_common::follow`); the caller decides whether that echo is
/// traced. `free`: the skb's free, which ends its following.
#[inline(always)]
pub(crate) fn identify(skb: u64, free: bool) -> Option<(PktKey, u32)> {
    let (header, len) = read_skb(skb)?;
    let at = if free {
        At::Free
    } else {
        At::Way {
            sending: match header {
                Header::Unread(_) => sending(),
                Header::Echo(_) => None,
            },
        }
    };
    Some((follow::identify(&mut Skbs, skb, header, at)?, len))
}

/// The echo a traced thread's send is building, outside NET_RX.
#[inline(always)]
fn sending() -> Option<PktKey> {
    if in_softirq() {
        return None;
    }
    let (tgid, tid) = tgid_tid();
    if !is_target(tgid) {
        return None;
    }
    get_ctx(&SEND_CTX, tid)
}

/// Follows a copy of a traced packet (a raw socket's clone) by its own
/// address, when its header cannot be read.
#[inline(always)]
pub(crate) fn follow_copy(skb: u64, key: &PktKey) {
    follow::follow_copy(&mut Skbs, skb, read_skb(skb).map(|(h, _)| h), key);
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

//! Which traced packet an skb is. A packet is identified once, where it is
//! first seen: its header read where the kernel builds it or first hands
//! it on (the transmit), or, when the header is out of the skb's linear
//! data (a large raw-socket send puts the ICMP header in the paged
//! fragments), by the traced send under way. From then on it is followed
//! by the skb's address through every stage, with no header read and no
//! other check: loopback and veth hand the receive path the very skb the
//! transmit had. Its free ends the following, after which the address
//! belongs to the next skb.
//!
//! Nothing here knows ICMP: a packet's key is whatever the header says it
//! is (an echo's id and sequence today, a segment of a flow tomorrow).
//! The eBPF programs run this over a small array indexed by address; the
//! tests below over a plain map, on synthetic sequences of stages.

/// What an skb's headers say of it. A struct, not an enum with data: the
/// programs build it, and every byte of it must be written on every path
/// (the verifier refuses a program that copies an unset byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<K> {
    pub kind: Kind,
    /// `Unread`: the packet's address family.
    pub family: u8,
    /// `Packet` and `Fragment`: the packet.
    pub key: K,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A whole packet, its header read from the linear data.
    Packet,
    /// One fragment of an IP datagram, known by the datagram's first.
    /// Reassembly moves the datagram into one fragment's skb, so a
    /// fragment is read at every stage, never followed by address.
    Fragment,
    /// A packet of this family whose transport header is outside the
    /// linear data (reading there would read what the buffer held before).
    Unread,
    /// Nothing read: not a packet lotrace reads, or not to be read here.
    /// A kind rather than an `Option`: 5.10's verifier refused a program
    /// whose compiled code loaded the key of a `None` before testing it.
    Absent,
}

impl<K: Default> Header<K> {
    #[inline(always)]
    pub fn packet(key: K) -> Self {
        Header {
            kind: Kind::Packet,
            family: 0,
            key,
        }
    }

    #[inline(always)]
    pub fn fragment(key: K) -> Self {
        Header {
            kind: Kind::Fragment,
            family: 0,
            key,
        }
    }

    #[inline(always)]
    pub fn absent() -> Self {
        Header {
            kind: Kind::Absent,
            family: 0,
            key: K::default(),
        }
    }

    #[inline(always)]
    pub fn unread(family: u8) -> Self {
        Header {
            kind: Kind::Unread,
            family,
            key: K::default(),
        }
    }
}

/// The skbs followed: address → packet. A map may forget an entry (a
/// fuller map, two addresses in one slot): the packet's next stage then
/// reads its header again. It must never return another skb's.
pub trait Followed<K> {
    fn get(&self, skb: u64) -> Option<K>;
    fn set(&mut self, skb: u64, key: &K);
    /// Forgets `skb`, if that is the address followed there.
    fn remove(&mut self, skb: u64);
}

/// Where a stage sees the skb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sight {
    /// The transmit's entry (`ip_output`, `dev_queue_xmit`), which every
    /// packet the trace follows passes first, its request in the sending
    /// thread, its reply where the kernel builds it. The packet is
    /// identified here from its header, whatever the address held before
    /// (a free that went unseen must not name a new packet).
    Transmit,
    /// Any later stage on the packet's way.
    Way,
    /// The skb's free: following ends.
    Free,
}

/// The packet `skb` is, at a stage that sees it as `sight` says. Only on
/// an skb not followed yet are the others called: `read` for its headers,
/// `sending` for the packet a traced send is building here (when the
/// header cannot be read), `ours` to judge what they say.
#[inline(always)]
pub fn identify<K: Copy, F: Followed<K>>(
    map: &mut F,
    skb: u64,
    sight: Sight,
    read: impl FnOnce() -> Header<K>,
    sending: impl FnOnce(u8) -> Option<K>,
    ours: impl FnOnce(&K) -> bool,
) -> Option<K> {
    if sight != Sight::Transmit
        && let Some(key) = map.get(skb)
    {
        if sight == Sight::Free {
            map.remove(skb);
        }
        return Some(key);
    }
    let header = read();
    let (key, follow) = match header.kind {
        Kind::Packet => (Some(header.key), true),
        Kind::Fragment => (Some(header.key), false),
        Kind::Unread => (sending(header.family), true),
        Kind::Absent => (None, false),
    };
    let Some(key) = key.filter(ours) else {
        if sight == Sight::Transmit {
            map.remove(skb);
        }
        return None;
    };
    match sight {
        // Not followed, so nothing to end.
        Sight::Free => {}
        _ if follow => map.set(skb, &key),
        Sight::Transmit => map.remove(skb),
        Sight::Way => {}
    }
    Some(key)
}

/// A copy of a followed packet (a raw socket's clone, queued to the
/// socket) is followed by its own address.
#[inline(always)]
pub fn follow_copy<K, F: Followed<K>>(map: &mut F, copy: u64, key: &K) {
    map.set(copy, key);
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{cell::Cell, collections::HashMap};

    use super::*;

    /// An echo: (family, sequence, is the reply).
    type Key = (u8, u16, bool);

    #[derive(Default)]
    struct Map(HashMap<u64, Key>);

    impl Followed<Key> for Map {
        fn get(&self, skb: u64) -> Option<Key> {
            self.0.get(&skb).copied()
        }
        fn set(&mut self, skb: u64, key: &Key) {
            self.0.insert(skb, *key);
        }
        fn remove(&mut self, skb: u64) {
            self.0.remove(&skb);
        }
    }

    const V4: u8 = 2;
    const V6: u8 = 10;
    const SKB: u64 = 0xffff_8880_0100_0000;

    fn req(seq: u16) -> Key {
        (V4, seq, false)
    }

    /// A stream's stages, counting the header reads.
    struct Stages {
        map: Map,
        reads: Cell<u32>,
        /// The traced send under way, if this runs in it.
        sending: Option<Key>,
    }

    impl Stages {
        fn new() -> Self {
            Stages {
                map: Map::default(),
                reads: Cell::new(0),
                sending: None,
            }
        }

        /// A stage that would read `header`; only sequence numbers below
        /// 100 are the trace's.
        fn see(&mut self, skb: u64, sight: Sight, header: Option<Header<Key>>) -> Option<Key> {
            let reads = &self.reads;
            let sending = self.sending;
            identify(
                &mut self.map,
                skb,
                sight,
                || {
                    reads.set(reads.get() + 1);
                    header.unwrap_or(Header::absent())
                },
                |family| sending.filter(|k| k.0 == family),
                |k| k.1 < 100,
            )
        }
    }

    #[test]
    fn a_packet_is_read_once_then_followed_to_its_free() {
        let mut s = Stages::new();
        let h = Some(Header::packet(req(1)));
        assert_eq!(s.see(SKB, Sight::Transmit, h), Some(req(1)));
        // loopback_xmit, netif_rx, netif_receive_skb: the same skb.
        for _ in 0..3 {
            assert_eq!(s.see(SKB, Sight::Way, h), Some(req(1)));
        }
        assert_eq!(s.see(SKB, Sight::Free, h), Some(req(1)));
        assert_eq!(s.reads.get(), 1, "only the transmit reads the header");
        assert!(s.map.0.is_empty(), "the free ends the following");
    }

    #[test]
    fn a_recycled_address_does_not_continue_an_old_journey() {
        let mut s = Stages::new();
        s.see(SKB, Sight::Transmit, Some(Header::packet(req(1))));
        assert_eq!(s.see(SKB, Sight::Free, None), Some(req(1)));
        // Another packet, not the trace's, at the same address: read, and
        // not taken for the old one.
        let other = Some(Header::packet(req(500)));
        assert_eq!(s.see(SKB, Sight::Way, other), None);
        assert_eq!(s.see(SKB, Sight::Free, other), None);
        assert!(s.map.0.is_empty());
    }

    #[test]
    fn a_transmit_does_not_trust_an_address_whose_free_went_unseen() {
        let mut s = Stages::new();
        s.see(SKB, Sight::Transmit, Some(Header::packet(req(1))));
        // Freed where no probe saw it; the next echo gets the address.
        assert_eq!(
            s.see(SKB, Sight::Transmit, Some(Header::packet(req(2)))),
            Some(req(2))
        );
        assert_eq!(s.see(SKB, Sight::Way, None), Some(req(2)));
        // And a packet not the trace's, transmitted there, clears it.
        assert_eq!(
            s.see(SKB, Sight::Transmit, Some(Header::packet(req(500)))),
            None
        );
        assert_eq!(s.see(SKB, Sight::Way, None), None);
    }

    #[test]
    fn a_header_out_of_reach_is_the_send_under_way() {
        let mut s = Stages::new();
        s.sending = Some(req(3));
        assert_eq!(
            s.see(SKB, Sight::Transmit, Some(Header::unread(V4))),
            Some(req(3))
        );
        // In NET_RX, no send: followed by address.
        s.sending = None;
        assert_eq!(
            s.see(SKB, Sight::Way, Some(Header::unread(V4))),
            Some(req(3))
        );
        assert_eq!(
            s.see(SKB, Sight::Free, Some(Header::unread(V4))),
            Some(req(3))
        );
        // Unread, and no send under way: not known.
        assert_eq!(s.see(SKB, Sight::Way, Some(Header::unread(V4))), None);
    }

    #[test]
    fn a_send_of_the_other_family_is_not_this_packet() {
        let mut s = Stages::new();
        s.sending = Some(req(1));
        assert_eq!(s.see(SKB, Sight::Transmit, Some(Header::unread(V6))), None);
        assert!(s.map.0.is_empty());
    }

    #[test]
    fn a_packet_not_ours_is_never_followed() {
        let mut s = Stages::new();
        let h = Some(Header::packet(req(500)));
        assert_eq!(s.see(SKB, Sight::Transmit, h), None);
        assert_eq!(s.see(SKB, Sight::Way, h), None);
        assert_eq!(s.reads.get(), 2, "read at every stage, as before");
        assert!(s.map.0.is_empty());
    }

    #[test]
    fn fragments_are_read_at_every_stage() {
        let mut s = Stages::new();
        let frag = Some(Header::fragment(req(4)));
        assert_eq!(s.see(SKB, Sight::Transmit, frag), Some(req(4)));
        assert_eq!(s.see(SKB, Sight::Way, frag), Some(req(4)));
        assert!(s.map.0.is_empty());
        // Reassembly made this fragment's skb the whole datagram: read.
        let whole = Some(Header::packet(req(4)));
        assert_eq!(s.see(SKB, Sight::Way, whole), Some(req(4)));
        assert_eq!(s.reads.get(), 3);
        assert_eq!(s.see(SKB, Sight::Free, None), Some(req(4)));
        assert!(s.map.0.is_empty());
    }

    #[test]
    fn a_packet_first_seen_on_its_way_is_followed_from_there() {
        // A raw socket's clone of a reply, first seen at ping's copy.
        let mut s = Stages::new();
        let reply = (V4, 5, true);
        assert_eq!(
            s.see(SKB, Sight::Way, Some(Header::packet(reply))),
            Some(reply)
        );
        assert_eq!(s.see(SKB, Sight::Free, None), Some(reply));
        assert_eq!(s.reads.get(), 1);
    }

    #[test]
    fn a_clone_is_followed_as_its_own_skb() {
        let mut s = Stages::new();
        s.sending = Some(req(1));
        let clone = SKB + 0x100;
        s.see(SKB, Sight::Transmit, Some(Header::unread(V4)));
        s.sending = None;
        follow_copy(&mut s.map, clone, &req(1));
        // The original is consumed by ICMP; the clone lives on in the
        // socket until ping reads it.
        assert_eq!(s.see(SKB, Sight::Free, None), Some(req(1)));
        assert_eq!(s.see(clone, Sight::Way, None), Some(req(1)));
        assert_eq!(s.see(clone, Sight::Free, None), Some(req(1)));
        assert!(s.map.0.is_empty());
        assert_eq!(s.reads.get(), 1);
    }
}

//! Which traced packet an skb is. Its header says so when the header is in
//! the skb's linear data; when it is not (a large raw-socket send puts the
//! ICMP header in the paged fragments: it is the message's first bytes),
//! the skb is followed by its address from where a traced send built it
//! until its free, after which the address belongs to the next skb.
//!
//! The eBPF programs run this over an LRU hash map; the tests below over a
//! plain one, on synthetic sequences of stages.

use crate::PktKey;

/// What an skb's headers say of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// An echo request or reply, read from the linear data.
    Echo(PktKey),
    /// An ICMP/ICMPv6 packet of this family whose ICMP header is outside
    /// the linear data (reading there would read what the buffer held
    /// before).
    Unread(u8),
}

/// The skbs being followed: skb address → packet.
pub trait Followed {
    fn get(&self, skb: u64) -> Option<PktKey>;
    fn set(&mut self, skb: u64, key: &PktKey);
    fn remove(&mut self, skb: u64);
}

/// What a stage knows of where it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// A stage on the packet's way: `sending` is the echo a traced
    /// thread's send is building here, if that is where this runs (not
    /// inside NET_RX, in the sending thread, during its send).
    Way { sending: Option<PktKey> },
    /// The skb's free: following ends.
    Free,
}

/// The packet an skb is, at a stage that saw `header` of it.
#[inline(always)]
pub fn identify<F: Followed>(map: &mut F, skb: u64, header: Header, at: At) -> Option<PktKey> {
    let family = match header {
        Header::Echo(key) => {
            // Receive pulls the header into the linear data: a packet
            // followed until then ends its following at its free all the
            // same.
            if at == At::Free {
                map.remove(skb);
            }
            return Some(key);
        }
        Header::Unread(family) => family,
    };
    match at {
        At::Way { sending } => {
            // A send under way builds its packet: whatever the address held
            // before is stale (its free may have gone unseen).
            if let Some(key) = sending.filter(|k| k.family == family) {
                if map.get(skb) != Some(key) {
                    map.set(skb, &key);
                }
                return Some(key);
            }
            map.get(skb)
        }
        At::Free => {
            let key = map.get(skb)?;
            map.remove(skb);
            Some(key)
        }
    }
}

/// A copy of `key`'s packet (a raw socket's clone, queued to the socket)
/// is followed by its own address when its header cannot be read.
#[inline(always)]
pub fn follow_copy<F: Followed>(map: &mut F, copy: u64, header: Option<Header>, key: &PktKey) {
    if let Some(Header::Unread(_)) = header {
        map.set(copy, key);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::HashMap;

    use super::*;
    use crate::event::{AF_INET, AF_INET6, ICMP_ECHO, ICMP_ECHOREPLY};

    #[derive(Default)]
    struct Map(HashMap<u64, PktKey>);

    impl Followed for Map {
        fn get(&self, skb: u64) -> Option<PktKey> {
            self.0.get(&skb).copied()
        }
        fn set(&mut self, skb: u64, key: &PktKey) {
            self.0.insert(skb, *key);
        }
        fn remove(&mut self, skb: u64) {
            self.0.remove(&skb);
        }
    }

    fn echo(seq: u16, icmp_type: u8) -> PktKey {
        PktKey {
            icmp_id: 7,
            icmp_seq: seq,
            family: AF_INET,
            icmp_type,
            valid: 1,
            delivered: 0,
        }
    }

    const SKB: u64 = 0xffff_8880_0100_0000;
    const HIDDEN: Header = Header::Unread(AF_INET);

    fn way(sending: Option<PktKey>) -> At {
        At::Way { sending }
    }

    #[test]
    fn a_large_send_is_followed_until_its_free() {
        let mut m = Map::default();
        let req = echo(1, ICMP_ECHO);
        // dev_queue_xmit in the sending thread, then loopback and the
        // receive (NET_RX: no send there).
        assert_eq!(identify(&mut m, SKB, HIDDEN, way(Some(req))), Some(req));
        assert_eq!(identify(&mut m, SKB, HIDDEN, way(None)), Some(req));
        // icmp_rcv pulled the header into the linear data.
        assert_eq!(
            identify(&mut m, SKB, Header::Echo(req), way(None)),
            Some(req)
        );
        assert_eq!(
            identify(&mut m, SKB, Header::Echo(req), At::Free),
            Some(req)
        );
        assert!(m.0.is_empty(), "the free ends the following");
    }

    #[test]
    fn a_recycled_address_does_not_continue_an_old_journey() {
        let mut m = Map::default();
        let req = echo(1, ICMP_ECHO);
        identify(&mut m, SKB, HIDDEN, way(Some(req)));
        assert_eq!(identify(&mut m, SKB, HIDDEN, At::Free), Some(req));
        // Another ICMP packet, not ours, at the same address.
        assert_eq!(identify(&mut m, SKB, HIDDEN, way(None)), None);
        assert_eq!(identify(&mut m, SKB, HIDDEN, At::Free), None);
    }

    #[test]
    fn a_new_send_replaces_what_an_unseen_free_left() {
        let mut m = Map::default();
        let (one, two) = (echo(1, ICMP_ECHO), echo(2, ICMP_ECHO));
        identify(&mut m, SKB, HIDDEN, way(Some(one)));
        // seq 1's skb was freed where no probe saw it; seq 2 gets its address.
        assert_eq!(identify(&mut m, SKB, HIDDEN, way(Some(two))), Some(two));
        assert_eq!(identify(&mut m, SKB, HIDDEN, way(None)), Some(two));
    }

    #[test]
    fn a_readable_header_is_believed_over_the_address() {
        let mut m = Map::default();
        let (one, reply) = (echo(1, ICMP_ECHO), echo(9, ICMP_ECHOREPLY));
        identify(&mut m, SKB, HIDDEN, way(Some(one)));
        assert_eq!(
            identify(&mut m, SKB, Header::Echo(reply), way(None)),
            Some(reply)
        );
    }

    #[test]
    fn a_send_of_the_other_family_is_not_this_packet() {
        let mut m = Map::default();
        let req = echo(1, ICMP_ECHO);
        assert_eq!(
            identify(&mut m, SKB, Header::Unread(AF_INET6), way(Some(req))),
            None
        );
        assert!(m.0.is_empty());
    }

    #[test]
    fn a_clone_is_followed_as_its_own_skb() {
        let mut m = Map::default();
        let req = echo(1, ICMP_ECHO);
        let clone = SKB + 0x100;
        identify(&mut m, SKB, HIDDEN, way(Some(req)));
        follow_copy(&mut m, clone, Some(HIDDEN), &req);
        // The original is consumed by ICMP; the clone lives on in the
        // socket until ping reads it.
        assert_eq!(identify(&mut m, SKB, HIDDEN, At::Free), Some(req));
        assert_eq!(identify(&mut m, clone, HIDDEN, way(None)), Some(req));
        assert_eq!(identify(&mut m, clone, HIDDEN, At::Free), Some(req));
        assert!(m.0.is_empty());
        // A clone whose header can be read needs no following.
        follow_copy(&mut m, clone, Some(Header::Echo(req)), &req);
        assert!(m.0.is_empty());
    }
}

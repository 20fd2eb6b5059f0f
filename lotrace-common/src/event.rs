//! The records that cross the kernel/user boundary: the [`Event`], the
//! packet's key, and the state the programs keep between probes (the
//! programs' configuration is in [`crate::config`]).

/// Event flag: the event was emitted inside the NET_RX softirq on its CPU
/// (between `irq:softirq_entry` and `irq:softirq_exit` for vector 3).
pub const FLAG_NET_RX: u8 = 1 << 0;
/// Event flag: the packet fields (`family`..`icmp_seq`) are valid.
pub const FLAG_PACKET: u8 = 1 << 1;
/// Event flag: the skb is one fragment of the echo's IP datagram (any,
/// the first included), not the whole datagram.
pub const FLAG_FRAGMENT: u8 = 1 << 2;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6's fragment extension header.
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const ICMP_ECHOREPLY: u8 = 0;
pub const ICMP_ECHO: u8 = 8;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
/// Bytes read at once from `skb->network_header` to get `skb->head` too.
pub const SKB_WINDOW: usize = 32;

/// Where a `size`-byte field at offset `off` starts in a
/// `SKB_WINDOW`-byte read at `skb->network_header`, if it is inside it
/// (`tail` and `head` sit just after the header offsets in every layout
/// so far: 4 and 12 to 16 bytes on).
pub const fn in_window(off_nh: u64, off: u64, size: u64) -> Option<usize> {
    if off > off_nh && off - off_nh + size <= SKB_WINDOW as u64 {
        Some((off - off_nh) as usize)
    } else {
        None
    }
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// A TCP segment's or UDP datagram's key holds its protocol in
/// `PktKey::icmp_type` (an echo's key holds an echo type there, never
/// these), its flow's number in `icmp_id` and its number within the
/// flow in `icmp_seq`: [`FLOW_REVERSE`] set for the direction opposite
/// to the flow's first packet, and a count of that direction's packets
/// (from 1, wrapping at 32768) below it.
pub const PKT_TCP: u8 = IPPROTO_TCP;
pub const PKT_UDP: u8 = IPPROTO_UDP;
/// In a flow packet's `icmp_seq`: sent from the flow's destination.
pub const FLOW_REVERSE: u16 = 1 << 15;

/// Is this key's `icmp_type` a TCP or UDP packet's?
pub const fn is_flow(icmp_type: u8) -> bool {
    icmp_type == PKT_TCP || icmp_type == PKT_UDP
}

/// Event flag: not a stage but a flow's announcement, sent once when the
/// programs start following a TCP or UDP flow of the traced command: its
/// source address in `comm` (16 bytes, IPv4 in the first 4), its
/// destination address in `skb` and `aux` (16 bytes, little-endian u64s
/// of the address bytes), its source port in the high 16 bits of `len`
/// and its destination port in the low 16, and its flow number in
/// `icmp_id`.
pub const FLAG_FLOW_NEW: u8 = 1 << 3;

/// Socket kinds, from `sk_type`.
pub const SOCK_DGRAM: u32 = 2;
pub const SOCK_RAW: u32 = 3;

/// The loopback device's name as the transmit stages carry it (its first
/// 8 bytes, NUL-padded, little-endian).
pub const LO_NAME: u64 = u64::from_le_bytes(*b"lo\0\0\0\0\0\0");
/// `NET_RX_SOFTIRQ` in `include/linux/interrupt.h`.
pub const NET_RX_SOFTIRQ: u32 = 3;

/// Is this ICMP/ICMPv6 type an echo request?
pub const fn is_echo_request(family: u8, icmp_type: u8) -> bool {
    (family == AF_INET && icmp_type == ICMP_ECHO)
        || (family == AF_INET6 && icmp_type == ICMPV6_ECHO_REQUEST)
}

/// Is this ICMP/ICMPv6 type an echo reply?
pub const fn is_echo_reply(family: u8, icmp_type: u8) -> bool {
    (family == AF_INET && icmp_type == ICMP_ECHOREPLY)
        || (family == AF_INET6 && icmp_type == ICMPV6_ECHO_REPLY)
}

/// Which echo packet an event belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PktKey {
    pub icmp_id: u16,
    pub icmp_seq: u16,
    pub family: u8,
    pub icmp_type: u8,
    /// Non-zero when the key is set.
    pub valid: u8,
    /// Per-CPU receive context only: the reply was handed to one of the
    /// traced process's sockets and a wake-up may follow.
    pub delivered: u8,
}

/// One observation of one stage. Fixed size, little endian, written with
/// `bpf_ringbuf_reserve`; `EVENT_SIZE` bytes on the wire and in record files.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The `struct sk_buff *` the stage saw, or 0.
    pub skb: u64,
    /// Stage-specific value: a syscall's return, the drop reason, the work
    /// done by a poll, the socket address; for `dev_queue_xmit` and the
    /// start of `loopback_xmit`, the device's name (its first 8 bytes). For
    /// `route`, `skb` and `aux` together hold the device of the route's
    /// next hop (16 bytes, NUL-padded).
    pub aux: u64,
    pub tid: u32,
    pub tgid: u32,
    pub comm: [u8; 16],
    pub cpu: u32,
    /// Bytes the stage saw (skb->len or the syscall length).
    pub len: u32,
    /// Per-CPU NET_RX run number, so that events of one softirq run can be
    /// grouped (0 outside the softirq).
    pub softirq_run: u32,
    /// A second stage-specific value: the routing table for `route`.
    pub aux2: u32,
    pub stage: u8,
    pub probe: u8,
    pub flags: u8,
    pub family: u8,
    pub icmp_type: u8,
    /// A TCP segment's flags, at the transmit that identified it.
    pub tcp_flags: u8,
    pub icmp_id: u16,
    pub icmp_seq: u16,
    /// A TCP segment's sequence number (little-endian), at the transmit
    /// that identified it.
    pub tcp_seq: [u8; 4],
    pub _pad1: [u8; 2],
}

pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();

/// Little-endian fields of a record's bytes, at an offset the caller has
/// checked.
pub(crate) fn le_u64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn le_u32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
const _: () = assert!(EVENT_SIZE == 80);

impl Event {
    /// The event's bytes as written in a record file.
    pub fn to_bytes(&self) -> [u8; EVENT_SIZE] {
        let mut out = [0u8; EVENT_SIZE];
        let mut w = 0;
        let mut put = |b: &[u8]| {
            out[w..w + b.len()].copy_from_slice(b);
            w += b.len();
        };
        put(&self.ts_ns.to_le_bytes());
        put(&self.skb.to_le_bytes());
        put(&self.aux.to_le_bytes());
        put(&self.tid.to_le_bytes());
        put(&self.tgid.to_le_bytes());
        put(&self.comm);
        put(&self.cpu.to_le_bytes());
        put(&self.len.to_le_bytes());
        put(&self.softirq_run.to_le_bytes());
        put(&self.aux2.to_le_bytes());
        put(&[
            self.stage,
            self.probe,
            self.flags,
            self.family,
            self.icmp_type,
            self.tcp_flags,
        ]);
        put(&self.icmp_id.to_le_bytes());
        put(&self.icmp_seq.to_le_bytes());
        put(&self.tcp_seq);
        put(&self._pad1);
        out
    }

    /// Decodes an event from exactly `EVENT_SIZE` bytes; `None` for any
    /// other length. Field values are not validated here: see
    /// `Stage::from_u8` and `ProbeId::from_u8`.
    pub fn from_bytes(b: &[u8]) -> Option<Event> {
        if b.len() != EVENT_SIZE {
            return None;
        }
        let (u64_at, u32_at, u16_at) = (|o| le_u64(b, o), |o| le_u32(b, o), |o| le_u16(b, o));
        let mut comm = [0u8; 16];
        comm.copy_from_slice(&b[32..48]);
        let mut tcp_seq = [0u8; 4];
        tcp_seq.copy_from_slice(&b[74..78]);
        Some(Event {
            ts_ns: u64_at(0),
            skb: u64_at(8),
            aux: u64_at(16),
            tid: u32_at(24),
            tgid: u32_at(28),
            comm,
            cpu: u32_at(48),
            len: u32_at(52),
            softirq_run: u32_at(56),
            aux2: u32_at(60),
            stage: b[64],
            probe: b[65],
            flags: b[66],
            family: b[67],
            icmp_type: b[68],
            tcp_flags: b[69],
            icmp_id: u16_at(70),
            icmp_seq: u16_at(72),
            tcp_seq,
            _pad1: [b[78], b[79]],
        })
    }

    pub fn key(&self) -> PktKey {
        PktKey {
            icmp_id: self.icmp_id,
            icmp_seq: self.icmp_seq,
            family: self.family,
            icmp_type: self.icmp_type,
            valid: (self.flags & FLAG_PACKET != 0) as u8,
            delivered: 0,
        }
    }
}

/// A TCP or UDP flow as a packet's headers name it, from its sender's
/// side: the key the programs look flows up by. Built in the state kept
/// between probes (`CpuState::tuple`), not on the programs' stack, which
/// the kernel limits to 512 bytes over a whole call chain.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTuple {
    pub family: u8,
    pub proto: u8,
    /// Ports as they sit in the header (network order).
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub _pad: [u8; 2],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// The state the programs keep between tracepoints: the CPU's, or on
/// PREEMPT_RT the thread's. There a softirq runs in a thread that can be
/// preempted, and the task that preempts it must not find itself inside
/// NET_RX, or inside another thread's transmit. A run is numbered by its
/// CPU in both cases (`softirq_run`): the run a receive belongs to is
/// matched by CPU and number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuState {
    /// When the current NET_RX softirq run began, 0 outside it.
    pub softirq_entry_ts: u64,
    /// The skb of the tracked packet whose xmit is in progress here.
    pub xmit_skb: u64,
    /// When the current `net_rx_action` call began (function probes).
    pub fn_entry_ts: u64,
    /// When the current `process_backlog` call began (function probes).
    pub backlog_entry_ts: u64,
    /// The skb last identified here, if it was a fragment of its echo's
    /// datagram (see `Event::flags`' `FLAG_FRAGMENT`).
    pub frag_skb: u64,
    /// The socket `raw_rcv` last reported a delivery to, for the current
    /// packet: its data-ready call that follows is the same delivery.
    pub delivered_sk: u64,
    pub softirq_run: u32,
    /// Inside NET_RX on this CPU.
    pub in_net_rx: u8,
    /// The current run has already reported its start.
    pub entry_emitted: u8,
    /// Inside `netif_rx` of a tracked packet: a NET_RX raise now is ours.
    pub in_tracked_netif_rx: u8,
    /// A tracked packet was received since the last backlog poll report.
    pub poll_pending: u8,
    /// The current backlog poll has reported its start.
    pub backlog_emitted: u8,
    /// The stage of the transmit in progress (see `xmit_skb`).
    pub xmit_stage: u8,
    /// A transmit is identifying a packet (see `sent` in the programs): 1
    /// at an entry another follows on the same packet (`ip_output`), 2 at
    /// the last (`dev_queue_xmit`), 3 at the driver's transmit (where GSO's
    /// segments are first met).
    pub tx_entry: u8,
    /// The probes that noted `tcp_tx_ts` and `ipq_ts`.
    pub tcp_tx_probe: u8,
    pub ipq_probe: u8,
    /// The probe that noted `rcv_ts`.
    pub rcv_probe: u8,
    pub _pad: [u8; 2],
    /// The TCP or UDP packet a transmit's entry last numbered here, so
    /// that the next entry on the same skb and call keeps its number.
    pub tx_flow_skb: u64,
    /// What the transmit's entry read of the packet it identified (when
    /// `flow_skb` is its skb): TCP flags in bits 0-7, the sequence
    /// number in 32-63; and for `aux2`, the payload's bytes, with bit 31
    /// set for the flow's reverse direction.
    pub flow_skb: u64,
    pub flow_hdr: u64,
    /// The TCP or UDP packet's skb `netif_receive_skb` checked in the
    /// current NET_RX run: the protocol's stages that follow in the run
    /// see it alive, and need not check it again.
    pub rx_skb: u64,
    /// A TCP segment under way to IP output here: its socket, when
    /// `__tcp_transmit_skb` began building it (0: not seen), and when its
    /// socket's `queue_xmit` began (0: not seen) on `ipq_skb`, the skb
    /// IP output is handed. Reported under the packet IP output numbers,
    /// if that skb is `ipq_skb`.
    pub tcp_tx_sk: u64,
    pub tcp_tx_ts: u64,
    pub ipq_ts: u64,
    pub ipq_skb: u64,
    /// When thread `rcv_tid`'s protocol recvmsg began here with data
    /// already queued on its socket (0: not so): the first traced packet
    /// the call takes was there before it.
    pub rcv_ts: u64,
    pub flow_aux2: u32,
    pub rcv_tid: u32,
    /// The last echo packet `netif_receive_skb` saw in this run (valid only
    /// if it is one of ours); the reply's route lookup and its socket
    /// delivery happen under it.
    pub rx: PktKey,
    /// The last tracked packet of this run: the run's end is reported
    /// under it.
    pub last: PktKey,
    /// The tracked packet being transmitted (see `xmit_skb`).
    pub xmit: PktKey,
    /// The tracked packet inside `netif_rx` (see `in_tracked_netif_rx`).
    pub netif_rx: PktKey,
    /// The packet `tx_flow_skb` was numbered as.
    pub tx_flow: PktKey,
    /// The flow a header being read names (see [`FlowTuple`]), and the
    /// key of the packet it was found to be.
    pub tuple: FlowTuple,
    pub flow_key: PktKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_inside_the_window_or_read_apart() {
        for size in [4u64, 8] {
            for nh in [0u64, 180, 200] {
                for gap in 0..64u64 {
                    match in_window(nh, nh + gap, size) {
                        Some(i) => {
                            assert_eq!(i as u64, gap);
                            assert!(gap > 0 && i + size as usize <= SKB_WINDOW);
                            assert_eq!(i & (SKB_WINDOW - 1), i, "the mask must not move it");
                        }
                        None => assert!(gap == 0 || gap + size > SKB_WINDOW as u64),
                    }
                }
                assert_eq!(in_window(nh + 8, nh, size), None);
            }
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` data with no padding holes the kernel could
    // leave uninitialised that we depend on.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::PktKey {}
    unsafe impl aya::Pod for super::CpuState {}
}

//! The [`Config`] the loader writes into the programs before loading
//! them: the running kernel's struct and tracepoint field offsets, the
//! plan's choices, and what the journey's meaning needs in the kernel.

use crate::catalog::TP_FIELD_COUNT;

/// Marks a tracepoint field whose data is elsewhere in the record (see
/// [`Config::tp`]): the device name of `fib:fib_table_lookup` before 5.17.
pub const TP_DATA_LOC: u16 = 0x8000;

/// Values the loader writes into the programs before loading them: struct
/// offsets from the running kernel's BTF and tracepoint field offsets from
/// tracefs, so that no kernel layout is compiled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Byte offsets inside `struct sk_buff`.
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_len: u32,
    /// `skb->tail`: the end of the linear data, as an offset from `head`
    /// (x86-64 kernels keep it as an offset, not a pointer).
    pub skb_tail: u32,
    pub skb_sk: u32,
    /// Byte offset of `sk_type` in `struct sock` (SOCK_RAW or SOCK_DGRAM).
    pub sk_type: u32,
    /// From a file descriptor to its socket's protocol: `task_struct.files`,
    /// `files_struct.fdt`, `fdtable.fd` and `.max_fds`, `file.private_data`,
    /// `socket.sk`, `sock.sk_protocol`; `socket.file`, which points back to
    /// the file only when the file is a socket.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub socket_file: u32,
    pub sk_protocol: u32,
    /// The bit of `sock_common.skc_ipv6only` (IPV6_V6ONLY), counted from
    /// the start of `struct sock`, plus one (0: not known).
    pub sk_ipv6only_bit: u32,
    /// From a `struct sock` to its socket's inode number, which no other
    /// socket has had: `sock.sk_socket` (NULL once the socket is closed),
    /// then `socket_alloc.vfs_inode` plus `inode.i_ino` from the `struct
    /// socket` (0: not known).
    pub sk_socket: u32,
    pub socket_ino: u32,
    /// Byte offsets of `sk_buff.dev` and `net_device.name`.
    pub skb_dev: u32,
    pub dev_name: u32,
    /// The network namespace (`struct net *`) of a device and of a socket:
    /// `net_device.nd_net.net` and `sock.__sk_common.skc_net.net`; 0 for
    /// both on a kernel without network namespaces.
    pub dev_net: u32,
    pub sk_net: u32,
    /// The length of a socket's receive queue (`sock.sk_receive_queue`'s
    /// `qlen`), and of a UDP socket's queue its reader takes from first
    /// (`udp_sock.reader_queue`'s): a datagram alone in them is what the
    /// socket's next read takes (0: not known).
    pub sk_rcvq_len: u32,
    pub udp_readq_len: u32,
    /// Byte offset of each tracepoint field, indexed by [`crate::TpField`];
    /// `u16::MAX` when the field does not exist on this kernel. With
    /// [`TP_DATA_LOC`] set, the field is a `__data_loc` (a `u32` holding the
    /// data's offset in the record in its low half, its length in the high).
    pub tp: [u16; TP_FIELD_COUNT],
    /// The function probe (a `ProbeId`) that observes the start of
    /// `net_rx_action`, or 0 when the softirq tracepoints do.
    pub net_rx_probe: u8,
    /// Likewise for `process_backlog` (0: the napi_poll tracepoint).
    pub backlog_probe: u8,
    /// Non-zero: aggregate in the kernel (see [`crate::agg`]) instead of
    /// streaming events.
    pub summary_only: u8,
    /// The reply stage that ends an answered echo, for aggregation.
    pub close_stage: u8,
    /// Non-zero: every program returns at once (`--floor`).
    pub floor: u8,
    /// Non-zero: a function probe (`loopback_xmit`'s) reports lo's
    /// transmit, and the transmit tracepoints only other devices'.
    pub lo_xmit_fn: u8,
    /// Non-zero on PREEMPT_RT: the state kept between probes is the
    /// thread's, not the CPU's (see `CpuState`).
    pub per_thread: u8,
    /// Non-zero: a streamed trace assembles each echo's events in the
    /// kernel (see [`crate::assemble`]) rather than sending each alone.
    pub assemble: u8,
    pub _pad: [u8; CONFIG_PAD],
    /// Bit `p` of `ret_probes[p / 64]`: probe `p` observes a return.
    pub ret_probes: [u64; 4],
    /// [`crate::agg::seen_bit`]s every answered echo should have.
    pub expect_leg: u64,
    /// Stage bits (`1 << stage`) expected on either leg.
    pub expect_any: u64,
    /// Of each fexit probe (by `ProbeId`), how many arguments its function
    /// takes: the return value is the context's next slot. (The helper that
    /// reads it, `bpf_get_func_ret`, came only with 5.17.)
    pub ret_arg: [u8; RET_ARG_SLOTS],
    /// Each (leg, stage, at return) row's position in an echo's journey
    /// slot (see [`crate::assemble::positions`]).
    pub slot_pos: [u8; crate::agg::STAGE_ROWS],
    /// Of each tracepoint field (by [`crate::TpField`]), how a raw
    /// tracepoint's program reaches it from its argument.
    pub raw: [RawField; TP_FIELD_COUNT],
}

/// The members a raw tracepoint's program follows from a field's argument
/// (see [`crate::catalog::RawSpec`]): `hops` byte offsets; with none the
/// argument is the field, else each but the last is a pointer to follow
/// and the last is the field's offset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawField {
    pub hops: u16,
    pub off: [u16; RAW_HOPS],
}

/// Members a raw field may go through.
pub const RAW_HOPS: usize = 3;

/// Probe ids [`Config::ret_arg`] has room for: every `u8` (so that any
/// probe byte indexes it), and as many more as leave `slot_pos` ending on
/// 8 bytes, so that `Config` has no hole at its end whatever the number
/// of stages.
pub const RET_ARG_SLOTS: usize = 256 + (8 - (256 + crate::agg::STAGE_ROWS) % 8) % 8;
const _: () = assert!(crate::catalog::PROBE_COUNT <= RET_ARG_SLOTS);
// `raw` follows `slot_pos` without a hole.
const _: () = assert!((RET_ARG_SLOTS + crate::agg::STAGE_ROWS).is_multiple_of(2));

/// Explicit padding before `ret_probes`, whatever the number of tracepoint
/// fields: the loader writes `Config` as bytes, so it must have no hole.
const CONFIG_HEAD: usize = 23 * 4 + 2 * TP_FIELD_COUNT + 8;
pub const CONFIG_PAD: usize = (8 - CONFIG_HEAD % 8) % 8;
const _: () = assert!(
    core::mem::size_of::<Config>()
        == CONFIG_HEAD
            + CONFIG_PAD
            + 6 * 8
            + RET_ARG_SLOTS
            + crate::agg::STAGE_ROWS
            + 8 * TP_FIELD_COUNT
);

impl Config {
    pub const fn zeroed() -> Config {
        Config {
            skb_head: 0,
            skb_network_header: 0,
            skb_len: 0,
            skb_tail: 0,
            skb_sk: 0,
            sk_type: 0,
            task_files: 0,
            files_fdt: 0,
            fdt_fd: 0,
            fdt_max_fds: 0,
            file_private_data: 0,
            socket_sk: 0,
            socket_file: 0,
            sk_ipv6only_bit: 0,
            sk_socket: 0,
            socket_ino: 0,
            sk_protocol: 0,
            skb_dev: 0,
            dev_name: 0,
            dev_net: 0,
            sk_net: 0,
            sk_rcvq_len: 0,
            udp_readq_len: 0,
            tp: [u16::MAX; TP_FIELD_COUNT],
            net_rx_probe: 0,
            backlog_probe: 0,
            summary_only: 0,
            close_stage: 0,
            floor: 0,
            lo_xmit_fn: 0,
            per_thread: 0,
            assemble: 0,
            _pad: [0; CONFIG_PAD],
            ret_probes: [0; 4],
            expect_leg: 0,
            expect_any: 0,
            ret_arg: [0; RET_ARG_SLOTS],
            slot_pos: [crate::assemble::NO_POSITION; crate::agg::STAGE_ROWS],
            raw: [RawField {
                hops: 0,
                off: [0; RAW_HOPS],
            }; TP_FIELD_COUNT],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` data without padding holes (see CONFIG_PAD).
    unsafe impl aya::Pod for super::Config {}
}

//! The stage catalog: every stage of a ping's journey, what the kernel does
//! there, and the probes that can observe it, preferred first.
//!
//! This is the one place for those facts. The eBPF programs only use the ids
//! ([`Stage`], [`ProbeId`], [`TpField`]); names, explanations and candidate
//! functions are read by the command-line side.

/// Declares the stages: one entry each, in the order a packet meets them
/// inside one leg. An entry is `Variant = id: "name", expect E, detail D,
/// en "...", zh "...";`. The id is the number events and record files
/// carry: keep existing ones and give a new stage the next free one,
/// wherever its entry sits. `expect` says on which legs every loopback echo
/// passes the stage ([`Expect`]), `detail` how its events carry their
/// detail ([`DetailKind`]).
macro_rules! stage_table {
    ($(
        $variant:ident = $id:literal: $name:literal, expect $expect:ident, detail $detail:ident,
        en $en:literal,
        zh $zh:literal;
    )*) => {
        /// A named point of the journey, the same whichever probe observed
        /// it. Stages compare in the order a packet meets them (the
        /// table's), not by id.
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Stage {
            $($variant = $id,)*
        }

        pub const STAGE_COUNT: usize = [$($id),*].len();

        impl Stage {
            /// Every stage, in id order.
            pub const ALL: [Stage; STAGE_COUNT] = stages_by_id([$(Stage::$variant),*]);
            /// Every stage, in the order a packet meets them.
            pub const ORDER: [Stage; STAGE_COUNT] = [$(Stage::$variant),*];
        }

        /// Bit `id` set for each stage some journey expects (its `expect`
        /// is not `Never`): a constant the programs can use.
        pub const EXPECTED_STAGES: u64 = expected_mask(&[$((Stage::$variant, Expect::$expect)),*]);

        /// Indexed by id.
        pub static STAGES: [StageInfo; STAGE_COUNT] = infos_by_id([$(
            StageInfo {
                stage: Stage::$variant,
                name: $name,
                explain: $en,
                explain_zh: $zh,
                expect: Expect::$expect,
                detail: DetailKind::$detail,
            },
        )*]);
    };
}

/// The stages in id order. Fails the build if two share an id or the ids
/// leave a gap.
const fn stages_by_id<const N: usize>(order: [Stage; N]) -> [Stage; N] {
    let mut out = order;
    let mut filled = [false; N];
    let mut i = 0;
    while i < N {
        let id = order[i] as usize;
        assert!(id < N, "stage ids must run from 0 to the number of stages");
        assert!(!filled[id], "two stages share an id");
        filled[id] = true;
        out[id] = order[i];
        i += 1;
    }
    out
}

const fn expected_mask(rows: &[(Stage, Expect)]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < rows.len() {
        if !matches!(rows[i].1, Expect::Never) {
            m |= 1 << rows[i].0 as u8;
        }
        i += 1;
    }
    m
}

const fn infos_by_id<const N: usize>(rows: [StageInfo; N]) -> [StageInfo; N] {
    let mut out = rows;
    let mut i = 0;
    while i < N {
        out[rows[i].stage as usize] = rows[i];
        i += 1;
    }
    out
}

/// Each stage's place in [`Stage::ORDER`], by id.
const RANK: [u8; STAGE_COUNT] = {
    let mut rank = [0u8; STAGE_COUNT];
    let mut i = 0;
    while i < STAGE_COUNT {
        rank[Stage::ORDER[i] as usize] = i as u8;
        i += 1;
    }
    rank
};

impl Stage {
    /// Where a packet meets this stage within a leg, counted from 0.
    pub const fn rank(self) -> u8 {
        RANK[self as usize]
    }
}

impl PartialOrd for Stage {
    fn partial_cmp(&self, other: &Stage) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Stage {
    fn cmp(&self, other: &Stage) -> core::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// On which legs every loopback echo passes a stage, when something
/// observes it; a journey that lacks an expected stage is incomplete.
/// Stages that depend on timing (the softirq raise, the wake-up of a
/// sleeping ping) or on the socket kind are `Never` expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Never,
    Request,
    Reply,
    /// On the reply leg, where the reply begins: the kernel builds it there,
    /// so a reply meets this stage before the others.
    ReplyOrigin,
    /// On each leg.
    Both,
    /// On at least one of the two legs.
    Either,
}

impl Stage {
    pub fn from_u8(v: u8) -> Option<Stage> {
        Stage::ALL.get(v as usize).copied()
    }

    pub fn info(self) -> &'static StageInfo {
        &STAGES[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn from_name(name: &str) -> Option<Stage> {
        STAGES.iter().find(|s| s.name == name).map(|s| s.stage)
    }
}

impl Stage {
    /// A stage only TCP segments or UDP datagrams meet, never an echo.
    pub const fn flows_only(self) -> bool {
        matches!(
            self,
            Stage::TcpSendmsg
                | Stage::UdpSendmsg
                | Stage::TcpTransmitSkb
                | Stage::IpQueueXmit
                | Stage::TcpRecvmsg
                | Stage::UdpRecvmsg
                | Stage::TcpRetransmit
                | Stage::TcpRcv
                | Stage::TcpRcvEstablished
                | Stage::TcpDataQueue
                | Stage::UdpRcv
                | Stage::UdpEnqueue
        )
    }

    /// A stage with no probe of its own, seen by another stage's
    /// tracepoints, which fire more widely than its function probes:
    /// `net:net_dev_start_xmit` and `net:net_dev_xmit` fire for every
    /// device's driver, and their handler reports lo's transmit as
    /// `loopback_xmit`, any other device's as `ndo_start_xmit`.
    pub const fn shares_tracepoints_of(self) -> Option<Stage> {
        match self {
            Stage::DevXmit => Some(Stage::LoopbackXmit),
            _ => None,
        }
    }
}

/// A drop's `aux` on kernels whose `skb:kfree_skb` carries no reason
/// (reasons came with 5.17): not a reason code the kernel could give.
pub const NO_DROP_REASON: u64 = u64::MAX;

/// How an event of a stage carries its detail in the event's stage-specific
/// fields (`len`, `aux`, `aux2`, `skb`; see [`crate::Event`]). The user side
/// decodes it once, into a typed detail every output renders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetailKind {
    /// Nothing beyond time and place.
    None,
    /// The table in `aux2`; the lookup's error in `len` (0: found); the next
    /// hop's device in `skb` and `aux` (16 bytes, NUL-padded).
    Route,
    /// The kernel's drop reason (`enum skb_drop_reason`) in `aux`, or
    /// [`NO_DROP_REASON`] when this kernel's `kfree_skb` has none.
    DropReason,
    /// At return: how long the run took, in ns, in `aux`.
    RunTime,
    /// At return: the packets the poll took, in `aux`.
    Polled,
    /// The woken task's pid in `aux`.
    Woken,
    /// At return: a negative errno in `aux`, else the bytes in `len`.
    SyscallReturn,
    /// The bytes in `len`.
    Bytes,
    /// At the start: the device's name (its first 8 bytes) in `aux`, the
    /// sending socket's type in `aux2`.
    Device,
    /// Inside a NET_RX run: when the run began, in `aux` (0: not in one).
    /// A run that receives several echoes' packets reports its start with
    /// the first; the others know it from here.
    RunStart,
}

/// What the catalog knows of one stage.
#[derive(Clone, Copy, Debug)]
pub struct StageInfo {
    pub stage: Stage,
    /// The stage's name in reports and JSON.
    pub name: &'static str,
    /// One or two sentences on what the kernel does here, in English.
    pub explain: &'static str,
    /// The same in Chinese, the language of the article lotrace grew from.
    pub explain_zh: &'static str,
    pub expect: Expect,
    /// What its events carry besides time and place.
    pub detail: DetailKind,
}

stage_table! {
    Sendto = 0: "sendto", expect Request, detail None,
        en "ping hands its ICMP echo request to the kernel with the sendto() system call (sendmsg() when it passes control data, as iputils does over IPv6 with -I; the probe says which).",
        zh "ping 用 sendto() 系统调用把 ICMP 回显请求交给内核（需要附带控制信息时用 sendmsg()，例如 iputils 在 IPv6 下用 -I 时；探针名会说明是哪一个）。";
    TcpSendmsg = 27: "tcp_sendmsg", expect Never, detail None,
        en "TCP takes the data (tcp_sendmsg): it copies it into the socket's send queue, in segments of the connection's size, and sends what the window and Nagle allow; the rest goes out later, when ACKs come back. TCP sends only.",
        zh "TCP 接收要发送的数据（tcp_sendmsg）：把数据复制进套接字的发送队列，按连接的段大小切分，发出窗口和 Nagle 算法允许的部分；其余的等 ACK 回来以后再发。只有 TCP 的发送经过这里。";
    UdpSendmsg = 28: "udp_sendmsg", expect Never, detail None,
        en "UDP builds the datagram (udp_sendmsg, udpv6_sendmsg): it finds the route, or takes the connected socket's, and hands the datagram to IP output. UDP sends only.",
        zh "UDP 构造数据报（udp_sendmsg、udpv6_sendmsg）：查路由（已连接的套接字用已有的路由），把数据报交给 IP 输出。只有 UDP 的发送经过这里。";
    SockSendmsg = 1: "sock_sendmsg", expect Request, detail SyscallReturn,
        en "The socket layer passes the message to the protocol (raw_sendmsg or ping_v4_sendmsg); on loopback the whole transmit, and often the receive too, happens before it returns.",
        zh "套接字层把消息交给协议（raw_sendmsg 或 ping_v4_sendmsg）；在回环上，整个发送、往往连接收，都在它返回之前完成。";
    TcpTransmitSkb = 30: "tcp_transmit_skb", expect Never, detail None,
        en "TCP builds the segment (__tcp_transmit_skb): it clones a data segment, whose original stays queued until it is acknowledged, pushes the TCP header (sequence and acknowledgment numbers, window, options) and hands it to the IP layer through the socket's queue_xmit. Every segment a connection sends passes here (data, SYN, ACK, FIN, a retransmission); a listener's SYN-ACK and a reset for no socket are built elsewhere.",
        zh "TCP 构造这个段（__tcp_transmit_skb）：数据段先克隆一份，原件留在队列里直到被确认；压入 TCP 头（序号、确认号、窗口、选项），再通过套接字的 queue_xmit 交给 IP 层。连接发出的每个段都经过这里（数据、SYN、ACK、FIN、重传）；监听套接字的 SYN-ACK 和没有套接字时回的 RST 在别处构造。";
    IpQueueXmit = 31: "ip_queue_xmit", expect Never, detail None,
        en "IP takes a connection's segment (ip_queue_xmit, inet6_csk_xmit): it uses the socket's cached route, looking one up only when there is none, builds the IP header and sends the packet through netfilter's OUTPUT hook to ip_output. TCP's segments only; UDP and the SYN-ACK reach IP output by other calls.",
        zh "IP 层接过连接的段（ip_queue_xmit、inet6_csk_xmit）：使用套接字缓存的路由，没有时才查路由；构造 IP 头，经过 netfilter 的 OUTPUT 钩子交给 ip_output。只有 TCP 的段经过这里；UDP 和 SYN-ACK 走别的调用进入 IP 输出。";
    Route = 2: "route", expect Request, detail Route,
        en "The routing table is consulted. For an address of this host (127.0.0.0/8, ::1 or any other of its own) the route is a local one, through the loopback device lo. IPv4 without policy rules keeps local routes in the main table (254); with rules, and for IPv6, the local table (255) is searched first.",
        zh "查路由表。本机地址（127.0.0.0/8、::1 或本机其他地址）查到的是本地路由，出口是回环设备 lo。IPv4 没有策略路由规则时把本地路由并入 main 表（254）；有规则时以及 IPv6 会先查 local 表（255）。";
    IpOutput = 3: "ip_output", expect Request, detail None,
        en "IP output (ip_output, ip6_output): netfilter's POSTROUTING hook runs here (OUTPUT already ran before it, in __ip_local_out), then the neighbour layer adds the link header and hands the packet to dev_queue_xmit.",
        zh "IP 输出（ip_output、ip6_output）：这里经过 netfilter 的 POSTROUTING 钩子（OUTPUT 钩子在此之前的 __ip_local_out 里已经执行），然后邻居层加上链路层头，交给 dev_queue_xmit。";
    DevQueueXmit = 4: "dev_queue_xmit", expect Both, detail Device,
        en "The packet is queued for transmission on the chosen device; lo has no qdisc, so it goes straight to the driver.",
        zh "数据包进入所选设备的发送队列；lo 没有排队规则（qdisc），直接交给驱动。";
    LoopbackXmit = 5: "loopback_xmit", expect Both, detail Device,
        en "The loopback driver, a 'fake NIC': instead of putting bytes on a wire it hands the same skb back to the receive path.",
        zh "回环驱动，一块“假网卡”：它不把字节发到线路上，而是把同一个 skb 交回接收路径。";
    DevXmit = 21: "ndo_start_xmit", expect Never, detail Device,
        en "The device's driver transmits (its ndo_start_xmit: veth_xmit for a veth pair, a NIC's driver for real hardware). On lo this is loopback_xmit; any other device's transmit is shown under this name.",
        zh "设备驱动发送数据包（它的 ndo_start_xmit：veth 对是 veth_xmit，真实硬件是网卡驱动）。在 lo 上就是 loopback_xmit；其他设备的发送都以这个名字显示。";
    NetifRx = 6: "netif_rx", expect Both, detail None,
        en "netif_rx puts the skb on a CPU's backlog queue (enqueue_to_backlog), as a NIC's interrupt handler would: this CPU's, or with RPS the one get_rps_cpu picks.",
        zh "netif_rx 把 skb 放进某个 CPU 的 backlog 队列（enqueue_to_backlog），就像真网卡的中断处理程序那样：通常是本 CPU 的，开启 RPS 时是 get_rps_cpu 选中的那个 CPU 的。";
    SoftirqRaise = 7: "softirq_raise", expect Never, detail None,
        en "The NET_RX softirq is raised: the backlog queue was empty and its NAPI not yet scheduled (a queue already due to be polled raises nothing). Under RPS to another CPU it is this CPU's raise that later sends that CPU an IPI; with backlog threads (PREEMPT_RT) a thread is woken instead, and nothing is raised.",
        zh "触发 NET_RX 软中断：backlog 队列原本为空、它的 NAPI 尚未被调度（已经等着被轮询的队列不会再触发）。RPS 把包交给另一个 CPU 时，是本 CPU 的这次触发在稍后给那个 CPU 发 IPI；使用 backlog 线程时（PREEMPT_RT）唤醒的是线程，不触发软中断。";
    TcpRetransmit = 29: "tcp_retransmit", expect Never, detail None,
        en "TCP has sent this segment again (tcp_retransmit_skb): its retransmission timer fired, or duplicate ACKs said it was lost. This transmit is the retransmission; the segment it repeats is named with it when that one was seen.",
        zh "TCP 把这个段又发了一遍（tcp_retransmit_skb）：重传定时器到期，或者重复的 ACK 表明它丢了。这一次发送就是重传；如果它重复的那个段也被看到了，会一并标出。";
    NetRxAction = 8: "net_rx_action", expect Either, detail RunTime,
        en "The NET_RX softirq runs net_rx_action: inline where bottom halves are re-enabled (local_bh_enable, often in ping's own send) or on the way out of an interrupt (irq_exit), or in ksoftirqd/N when softirqs keep coming back. With threaded interrupts (threadirqs, PREEMPT_RT) it runs in threads, and backlog threads poll the backlog without it.",
        zh "NET_RX 软中断运行 net_rx_action：在重新打开下半部处（local_bh_enable，常常就在 ping 自己的发送里）或中断返回时（irq_exit）就地运行，软中断反复到来时交给 ksoftirqd/N。中断线程化（threadirqs、PREEMPT_RT）时在线程里运行；使用 backlog 线程时 backlog 由线程轮询，不经过它。";
    ProcessBacklog = 9: "process_backlog", expect Never, detail Polled,
        en "The backlog's NAPI poll function takes packets off the per-CPU queue, up to its budget.",
        zh "backlog 的 NAPI 轮询函数从本 CPU 队列里取出数据包，最多取到预算为止。";
    NetifReceiveSkb = 10: "netif_receive_skb", expect Both, detail RunStart,
        en "The core receive path hands the packet to the protocol registered for its type: IPv4 or IPv6.",
        zh "核心接收路径把数据包交给它的协议处理函数：IPv4 或 IPv6。";
    IpRcv = 11: "ip_rcv", expect Request, detail None,
        en "IP input: the header is checked, netfilter's PREROUTING and INPUT hooks run, and the packet is found to be for this host.",
        zh "IP 输入：检查 IP 头，经过 netfilter 的 PREROUTING 和 INPUT 钩子，确认数据包是发给本机的。";
    TcpRcv = 22: "tcp_rcv", expect Never, detail None,
        en "TCP receives the segment (tcp_v4_rcv, tcp_v6_rcv): it checks it, finds its socket by its addresses and ports, and hands it to the connection, or to the socket's backlog while the socket's owner holds it. TCP segments only.",
        zh "TCP 收下这个段（tcp_v4_rcv、tcp_v6_rcv）：检查它，按地址和端口找到它的套接字，交给这条连接；套接字正被它的主人持有时先放进套接字的 backlog。只有 TCP 段经过这里。";
    TcpRcvEstablished = 23: "tcp_rcv_established", expect Never, detail None,
        en "An established connection takes the segment (tcp_rcv_established): the ACK it carries frees the data it acknowledges, and its data is queued for the reader (tcp_data_queue), or merged into the last segment queued. The tcp:tcp_probe tracepoint fires here, also later in the reader's own task when the segment waited on the socket's backlog.",
        zh "已建立的连接接收这个段（tcp_rcv_established）：段里的 ACK 释放被确认的数据，段里的数据放进读者的队列（tcp_data_queue），或并进队列里最后一个段。tcp:tcp_probe 跟踪点在这里触发；段在套接字的 backlog 里等过时，则稍后在读者自己的进程里触发。";
    TcpDataQueue = 26: "tcp_data_queue", expect Never, detail None,
        en "TCP's slow path queues the segment's data (tcp_data_queue): in order on the receive queue, merged into its last segment when it can be, or out of order aside; an established connection's fast path queues it without this call.",
        zh "TCP 的慢速路径把段里的数据入队（tcp_data_queue）：按序的进接收队列，能合并时并进最后一个段，乱序的另放；已建立连接的快速路径不经过这里。";
    UdpRcv = 24: "udp_rcv", expect Never, detail None,
        en "UDP receives the datagram (udp_rcv, udpv6_rcv): it checks it and finds its socket by its addresses and ports. UDP datagrams only.",
        zh "UDP 收下这个数据报（udp_rcv、udpv6_rcv）：检查它，按地址和端口找到它的套接字。只有 UDP 数据报经过这里。";
    UdpEnqueue = 25: "udp_enqueue", expect Never, detail None,
        en "UDP queues the datagram on its socket (__udp_enqueue_schedule_skb), charging its memory to the socket, or drops it when the socket's buffer is full; the data-ready call follows.",
        zh "UDP 把数据报放进套接字的接收队列（__udp_enqueue_schedule_skb），内存记在套接字名下；套接字缓冲区满时丢弃。随后调用 data-ready。";
    IcmpRcv = 12: "icmp_rcv", expect Request, detail None,
        en "The ICMP layer receives the message and dispatches on its type.",
        zh "ICMP 层收下消息，按类型分发。";
    IcmpReply = 13: "icmp_reply", expect ReplyOrigin, detail None,
        en "The kernel itself answers the echo request: it builds the echo reply and sends it back down the same stack.",
        zh "内核自己回应回显请求：构造回显应答，沿同一个协议栈发回去。";
    SockDeliver = 14: "sock_deliver", expect Reply, detail None,
        en "The packet is queued on one of ping's sockets (raw_rcv or ping_rcv) and the socket is told data is ready: the reply, or a raw socket's copy of an echo request.",
        zh "包被放进 ping 的套接字接收队列（raw_rcv 或 ping_rcv），并通知套接字有数据可读：通常是应答，也可能是原始套接字收到的回显请求副本。";
    Wakeup = 15: "wakeup", expect Never, detail Woken,
        en "ping was asleep waiting for the reply and is woken; absent when ping was still running, as when the softirq ran inline in its own sendto.",
        zh "ping 正在睡眠等待应答，被唤醒；如果 ping 当时还在运行（比如软中断就在它自己的 sendto 里运行），就没有这一步。";
    TcpRecvmsg = 32: "tcp_recvmsg", expect Never, detail None,
        en "The reader's receive call enters TCP (tcp_recvmsg) with this segment's data already queued: from the socket's data-ready to here the data waited for the application, not for the kernel. Shown only when the data was there before the call began; a reader already waiting in the call is woken instead (wakeup). TCP only.",
        zh "读者的接收调用进入 TCP（tcp_recvmsg）时，这个段的数据已经在队列里：从套接字的 data-ready 到这里，数据等的是应用程序，不是内核。只在调用开始前数据已经到达时显示；读者若已经在调用里等待，则是被唤醒（wakeup）。只有 TCP 经过这里。";
    UdpRecvmsg = 33: "udp_recvmsg", expect Never, detail None,
        en "The reader's receive call enters UDP (udp_recvmsg, udpv6_recvmsg) with this datagram already queued: from the socket's data-ready to here the datagram waited for the application, not for the kernel. Shown only when it was there before the call began; a reader already waiting in the call is woken instead (wakeup). UDP only.",
        zh "读者的接收调用进入 UDP（udp_recvmsg、udpv6_recvmsg）时，这个数据报已经在队列里：从套接字的 data-ready 到这里，数据报等的是应用程序，不是内核。只在调用开始前数据报已经到达时显示；读者若已经在调用里等待，则是被唤醒（wakeup）。只有 UDP 经过这里。";
    CopyToUser = 16: "copy_to_user", expect Reply, detail Bytes,
        en "recvmsg copies the reply from the socket's queue into ping's buffer.",
        zh "recvmsg 把应答从套接字队列复制到 ping 的缓冲区。";
    SockRecvmsg = 20: "sock_recvmsg", expect Reply, detail SyscallReturn,
        en "The socket layer's recvmsg returns: the protocol (raw_recvmsg or ping_recvmsg) has taken the reply off the socket's queue and copied it.",
        zh "套接字层的 recvmsg 返回：协议（raw_recvmsg 或 ping_recvmsg）已经把应答从套接字队列取出并复制完毕。";
    Recvmsg = 17: "recvmsg", expect Reply, detail SyscallReturn,
        en "The receive system call (recvmsg, or recvfrom for busybox's ping) returns the reply to ping, which prints its line.",
        zh "接收系统调用（recvmsg，busybox 的 ping 用 recvfrom）把应答返回给 ping，ping 打印出一行结果。";
    Free = 18: "free", expect Never, detail None,
        en "The skb has done its job and is freed normally (consume_skb).",
        zh "skb 完成了使命，被正常释放（consume_skb）。";
    Drop = 19: "drop", expect Never, detail DropReason,
        en "The skb is dropped (kfree_skb); the kernel records why. A copy's drop (a packet socket's or another raw socket's, with its buffer full) is shown, but only a drop of the skb on the echo's own path ends it.",
        zh "skb 被丢弃（kfree_skb）；内核记录了原因。副本被丢弃（例如接收缓冲区已满的 packet 套接字或另一个原始套接字的副本）也会显示，但只有回显自身路径上的 skb 被丢弃才算这次回显被丢弃。";
}

/// What the kernel does at a stage for a TCP segment or UDP datagram,
/// where the echo's words in the stage table (ping, its sockets, the
/// reply) do not fit; the other stages' words hold for every packet.
/// English, then Chinese.
const FLOW_EXPLAIN: [(Stage, &str, &str); 9] = [
    (
        Stage::Sendto,
        "The traced process hands data to the kernel with sendto(), sendmsg(), sendmmsg(), write(), writev(), sendfile() or splice() (the probe says which); a send's stages are shown under the first packet it transmitted.",
        "被跟踪的进程用 sendto()、sendmsg()、sendmmsg()、write()、writev()、sendfile() 或 splice() 把数据交给内核（探针名会说明是哪一个）；一次发送的各阶段显示在它发出的第一个包下面。",
    ),
    (
        Stage::SockSendmsg,
        "The socket layer's sendmsg returns: the protocol (tcp_sendmsg, udp_sendmsg) has taken the data; on loopback the transmit, and often the receive too, happened before it returns.",
        "套接字层的 sendmsg 返回：协议（tcp_sendmsg、udp_sendmsg）已经收下数据；在回环上，发送、往往连接收，都在它返回之前完成。",
    ),
    (
        Stage::Recvmsg,
        "The receive system call (recvmsg(), recvfrom(), read(), readv() or recvmmsg(); the probe says which) returns the data to the traced process. A recvmmsg() shows it under the last message it took.",
        "接收系统调用（recvmsg()、recvfrom()、read()、readv() 或 recvmmsg()；探针名会说明是哪一个）把数据返回给被跟踪的进程。recvmmsg() 的返回显示在它取走的最后一条消息下面。",
    ),
    (
        Stage::SockDeliver,
        "TCP (tcp_v4_rcv or tcp_v6_rcv, then tcp_rcv_established and tcp_data_queue) or UDP (udp_rcv, then __udp_enqueue_schedule_skb) queues the packet on the receiving socket and calls its data-ready (sock_def_readable), which wakes a reader waiting on it. A bare TCP ACK queues nothing, and has no such call; nor has a segment handled while its reader held the socket (it waits on the socket's backlog).",
        "TCP（tcp_v4_rcv 或 tcp_v6_rcv，再到 tcp_rcv_established、tcp_data_queue）或 UDP（udp_rcv，再到 __udp_enqueue_schedule_skb）把包放进接收套接字的队列，并调用它的 data-ready（sock_def_readable），唤醒等在上面的读者。纯 TCP ACK 不入队，也就没有这一步；读者正持有套接字时到达的段先进套接字的 backlog，也没有这一步。",
    ),
    (
        Stage::Wakeup,
        "The traced process was asleep waiting for this data and is woken; absent when it was not waiting.",
        "被跟踪的进程正睡眠等待这些数据，被唤醒；它当时没有在等就没有这一步。",
    ),
    (
        Stage::CopyToUser,
        "The reader's receive copies the packet's data from the socket's queue into its buffer (skb_copy_datagram_iter). TCP may have merged this segment's bytes into the one before it in the queue, and a small UDP datagram is copied without this call: then no copy is seen.",
        "读者的接收调用把包里的数据从套接字队列复制到它的缓冲区（skb_copy_datagram_iter）。TCP 可能已经把这个段的字节并进队列里前一个段，小的 UDP 数据报的复制也不经过这个函数：这时看不到复制。",
    ),
    (
        Stage::SockRecvmsg,
        "The socket layer's recvmsg returns the bytes the protocol (tcp_recvmsg or udp_recvmsg) took off the socket's queue.",
        "套接字层的 recvmsg 返回协议（tcp_recvmsg 或 udp_recvmsg）从套接字队列取出的字节。",
    ),
    (
        Stage::Free,
        "The skb is freed (consume_skb). TCP frees a segment it has read without this tracepoint (__kfree_skb; from 6.1 skb_attempt_defer_free, which traces only a free handed to the CPU that allocated the skb, later, in its NET_RX), and so does UDP from 6.18: most packets show no free.",
        "skb 被释放（consume_skb）。TCP 释放读完的段时不经过这个跟踪点（__kfree_skb；从 6.1 起是 skb_attempt_defer_free，只有交给分配它的 CPU、稍后在那里的 NET_RX 里释放时才经过），UDP 从 6.18 起也一样：多数包看不到释放。",
    ),
    (
        Stage::Drop,
        "The skb is dropped (kfree_skb); the kernel records why. TCP will send the segment's data again if it is not acknowledged.",
        "skb 被丢弃（kfree_skb）；内核记录了原因。没有被确认的 TCP 数据会重传。",
    ),
];

impl Stage {
    /// What the kernel does here for a TCP segment or UDP datagram, in
    /// English and Chinese.
    pub fn flow_explain(self) -> (&'static str, &'static str) {
        let mut i = 0;
        while i < FLOW_EXPLAIN.len() {
            if FLOW_EXPLAIN[i].0 as u8 == self as u8 {
                return (FLOW_EXPLAIN[i].1, FLOW_EXPLAIN[i].2);
            }
            i += 1;
        }
        (self.info().explain, self.info().explain_zh)
    }
}

pub use crate::probes::{
    Backend, PROBE_COUNT, PROBES, ProbeId, ProbeInfo, ProbeKind, RawSpec, TP_FIELD_COUNT,
    TP_FIELDS, TP_RAW, TpField,
};

/// Every probe, one line each. `crate::probes` expands this table into
/// [`ProbeId`], [`PROBES`], [`TpField`] and [`TP_FIELDS`]; the eBPF crate
/// expands it into one program per line. A line reads
///
/// ```text
/// Id = n: program kind target {Field: name, ..} (arg: index, ..) -> Stage group flags => handler;
/// ```
///
/// - `Id = n`: the [`ProbeId`]. Record files store `n`: it never changes,
///   and a new probe takes the next number, wherever its line goes.
/// - `program`: the eBPF program's name, and its function's in the object.
///   It starts with the kind (`tp_`, `kp_`, `kr_`, `fe_`, `fx_`).
/// - `kind target`: `tracepoint(category:name)`, or `kprobe`, `kretprobe`,
///   `fentry` or `fexit` on `[functions]`: alternatives, preferred first,
///   since names move between kernels.
/// - `{Field: name = arg -> member ..}`, tracepoints only: the
///   [`TpField`]s the handler reads, their names in the event's `format`
///   file (for a classic tracepoint) and where a raw tracepoint finds them:
///   the tracepoint's argument by position in its `TP_PROTO`, then through
///   the named members of the structs it points to (`2 -> nhc_dev -> name`:
///   the third argument's `nhc_dev`'s `name`), offsets from BTF. A line
///   whose every field says so can be attached raw (the program is named
///   after the tracepoint); the others only as classic tracepoints.
/// - `(arg: index)`, kprobe and fentry only: the function's arguments the
///   handler gets, as `u64`, by position (`skb: 0` says the first argument
///   is the `struct sk_buff *`). kretprobe and fexit handlers get the
///   return value as `i64`.
/// - `-> Stage`: the stage the probe reports (`_`: none; such probes keep
///   the filter's state and are always attached).
/// - `group` and flags: see [`ProbeInfo::group`]; `at_return` and
///   `required` set the [`ProbeInfo`] fields of those names.
/// - `handler`: the function the program calls with its context, its
///   [`ProbeId`] and the fields or arguments above, in order; a path in
///   the eBPF crate (`lotrace-ebpf/src/stages/`, or `filter` and `listen`
///   for the filter's own state).
///
/// Lines are grouped by stage in the order a packet meets them; within a
/// stage, tracepoints first, then kprobes, then fentry.
///
/// `probe_table!(m)` invokes `m!` with one record a line, in table order:
///
/// ```text
/// [Id n program kind target [Field name [raw ..] ..] [index ..] Stage group [flag ..] handler]
/// ```
#[macro_export]
macro_rules! probe_table {
    ($expand:ident) => {
        $crate::probe_table! { @lines $expand
            // The filter's own state: the traced command's children, and
            // the end of its sendto or sendmsg (which clears its send
            // context).
            SchedProcessFork     = 21: tp_sched_process_fork      tracepoint(sched:sched_process_fork)            {ForkParentPid: parent_pid = 0 -> pid, ForkChildPid: child_pid = 1 -> pid} -> _ 0 required => filter::sched_process_fork;
            // A traced process's TCP socket starting or ending to listen:
            // connections to it are followed from their SYN, whoever sends it.
            InetSockSetState     = 99: tp_inet_sock_set_state     tracepoint(sock:inet_sock_set_state)            {SetStateSk: skaddr, SetStateOld: oldstate, SetStateNew: newstate, SetStateSport: sport, SetStateFamily: family, SetStateProto: protocol, SetStateSaddr: saddr, SetStateSaddr6: saddr_v6} -> _ 0 => listen::inet_sock_set_state;
            // A traced process's UDP socket bound to a port: datagrams to it
            // are followed from the first, whoever sends it.
            SysEnterBind         = 105: tp_sys_enter_bind         tracepoint(syscalls:sys_enter_bind)             {BindFd: fd, BindAddr: umyaddr}               -> _ 0                       => listen::sys_enter_bind;
            SysExitBind          = 106: tp_sys_exit_bind          tracepoint(syscalls:sys_exit_bind)              {BindRet: ret}                                -> _ 0 at_return             => listen::sys_exit_bind;
            SchedProcessExit     = 81: tp_sched_process_exit      tracepoint(sched:sched_process_exit)            {ExitPid: pid = 0 -> pid}                     -> _ 0                       => filter::sched_process_exit;
            SysExitSendto        =  2: tp_sys_exit_sendto         tracepoint(syscalls:sys_exit_sendto)            {SendtoExitRet: ret}                          -> _ 0 at_return             => send::sys_exit_sendto;
            NetifRxExit          =  9: tp_netif_rx_exit           tracepoint(net:netif_rx_exit)                   {NetifRxExitRet: ret = 0}                     -> _ 0 at_return             => receive::netif_rx_exit;

            SysExitSendmsg       = 82: tp_sys_exit_sendmsg        tracepoint(syscalls:sys_exit_sendmsg)           {SendmsgExitRet: ret}                         -> _ 0 at_return             => send::sys_exit_sendto;
            SysExitWrite         = 103: tp_sys_exit_write         tracepoint(syscalls:sys_exit_write)             {WriteExitRet: ret}                           -> _ 0 at_return             => send::sys_exit_sendto;
            SysExitWritev        = 108: tp_sys_exit_writev        tracepoint(syscalls:sys_exit_writev)            {WritevExitRet: ret}                          -> _ 0 at_return             => send::sys_exit_sendto;
            SysExitSendmmsg      = 110: tp_sys_exit_sendmmsg      tracepoint(syscalls:sys_exit_sendmmsg)          {SendmmsgExitRet: ret}                        -> _ 0 at_return             => send::sys_exit_sendto;
            SysExitSendfile      = 133: tp_sys_exit_sendfile64    tracepoint(syscalls:sys_exit_sendfile64)        {SendfileExitRet: ret}                        -> _ 0 at_return             => send::sys_exit_sendto;
            SysExitSplice        = 135: tp_sys_exit_splice        tracepoint(syscalls:sys_exit_splice)            {SpliceExitRet: ret}                          -> _ 0 at_return             => send::sys_exit_sendto;
            // recvmmsg() returns a count of messages: where its array is
            // tells its return the last message's length.
            SysEnterRecvmmsg     = 136: tp_sys_enter_recvmmsg     tracepoint(syscalls:sys_enter_recvmmsg)         {RecvmmsgMsg: mmsg}                           -> _ 0                       => recv::sys_enter_recvmmsg;

            // ping's send: sendto, or sendmsg when it passes control data
            // (iputils over IPv6 with -I).
            SysEnterSendto       =  1: tp_sys_enter_sendto        tracepoint(syscalls:sys_enter_sendto)           {SendtoFd: fd, SendtoBuff: buff, SendtoLen: len} -> Sendto 0                  => send::sys_enter_sendto;
            SysEnterSendmsg      = 83: tp_sys_enter_sendmsg       tracepoint(syscalls:sys_enter_sendmsg)          {SendmsgFd: fd, SendmsgMsg: msg}              -> Sendto 1                  => send::sys_enter_sendmsg;
            // A TCP or UDP socket's write() (redis, wget) and writev()
            // (nginx): the same start; sendmmsg() (glibc's resolver, an A
            // and an AAAA query at once) starts with its first message.
            SysEnterWrite        = 102: tp_sys_enter_write        tracepoint(syscalls:sys_enter_write)            {WriteFd: fd, WriteBuf: buf, WriteCount: count} -> Sendto 2                  => send::sys_enter_sendto;
            SysEnterWritev       = 107: tp_sys_enter_writev       tracepoint(syscalls:sys_enter_writev)           {WritevFd: fd, WritevVec: vec}                -> Sendto 3                  => send::sys_enter_writev;
            SysEnterSendmmsg     = 109: tp_sys_enter_sendmmsg     tracepoint(syscalls:sys_enter_sendmmsg)         {SendmmsgFd: fd, SendmmsgMsg: mmsg}           -> Sendto 4                  => send::sys_enter_sendmsg;
            // sendfile() (nginx, Python's socket.sendfile) and splice()
            // into a socket: no user buffer, the same start.
            SysEnterSendfile     = 132: tp_sys_enter_sendfile64   tracepoint(syscalls:sys_enter_sendfile64)       {SendfileFd: out_fd, SendfileCount: count}    -> Sendto 5                  => send::sys_enter_sendfile;
            SysEnterSplice       = 134: tp_sys_enter_splice       tracepoint(syscalls:sys_enter_splice)           {SpliceFdOut: fd_out, SpliceLen: len}         -> Sendto 6                  => send::sys_enter_sendfile;

            // The protocol's send, in a traced thread's TCP or UDP send:
            // its start is noted, and reported with the send's return, under
            // the first packet the send transmitted. tcp:tcp_sendmsg_locked
            // came with 6.8 (it fires for each skb the data goes into: the
            // first is the start).
            TcpSendmsgLocked     = 112: tp_tcp_sendmsg_locked     tracepoint(tcp:tcp_sendmsg_locked)              {TcpSendmsgSkb: skb_addr}                     -> TcpSendmsg 0              => send::tcp_sendmsg_locked;
            KpTcpSendmsg         = 113: kp_tcp_sendmsg            kprobe[tcp_sendmsg]                             (sk: 0)                                       -> TcpSendmsg 0              => send::tcp_sendmsg;
            FeTcpSendmsg         = 114: fe_tcp_sendmsg            fentry[tcp_sendmsg]                             (sk: 0)                                       -> TcpSendmsg 0              => send::tcp_sendmsg;
            KpUdpSendmsg         = 115: kp_udp_sendmsg            kprobe[udp_sendmsg]                             (sk: 0)                                       -> UdpSendmsg 0              => send::udp_sendmsg;
            KpUdpv6Sendmsg       = 116: kp_udpv6_sendmsg          kprobe[udpv6_sendmsg]                           (sk: 0)                                       -> UdpSendmsg 1              => send::udp_sendmsg;
            FeUdpSendmsg         = 117: fe_udp_sendmsg            fentry[udp_sendmsg]                             (sk: 0)                                       -> UdpSendmsg 0              => send::udp_sendmsg;
            FeUdpv6Sendmsg       = 118: fe_udpv6_sendmsg          fentry[udpv6_sendmsg]                           (sk: 0)                                       -> UdpSendmsg 1              => send::udp_sendmsg;

            // sock_sendmsg hands the message to the address family's
            // sendmsg through the socket's ops; sock_sendmsg itself is
            // inlined into the sendto path on some kernels (6.1), the
            // family's function never is (it is called through a pointer),
            // so that is where a function probe sees the stage.
            SockSendLength       =  3: tp_sock_send_length        tracepoint(sock:sock_send_length)               {SockSendSk: sk = 0, SockSendRet: ret = 1}    -> SockSendmsg 0 at_return   => send::sock_send_length;
            KpSockSendmsg        = 22: kp_sock_sendmsg            kprobe[inet_sendmsg]                            (sock: 0)                                     -> SockSendmsg 0             => send::sendmsg;
            KrSockSendmsg        = 23: kr_sock_sendmsg            kretprobe[inet_sendmsg]                                                                       -> SockSendmsg 0             => send::sendmsg_return;
            KpInet6Sendmsg       = 61: kp_inet6_sendmsg           kprobe[inet6_sendmsg]                           (sock: 0)                                     -> SockSendmsg 1             => send::sendmsg;
            KrInet6Sendmsg       = 62: kr_inet6_sendmsg           kretprobe[inet6_sendmsg]                                                                      -> SockSendmsg 1             => send::sendmsg_return;
            FeSockSendmsg        = 41: fe_sock_sendmsg            fentry[inet_sendmsg]                            (sock: 0)                                     -> SockSendmsg 0             => send::sendmsg;
            FxSockSendmsg        = 42: fx_sock_sendmsg            fexit[inet_sendmsg]                                                                           -> SockSendmsg 0             => send::sendmsg_return;
            FeInet6Sendmsg       = 63: fe_inet6_sendmsg           fentry[inet6_sendmsg]                           (sock: 0)                                     -> SockSendmsg 1             => send::sendmsg;
            FxInet6Sendmsg       = 64: fx_inet6_sendmsg           fexit[inet6_sendmsg]                                                                          -> SockSendmsg 1             => send::sendmsg_return;

            FibTableLookup       =  4: tp_fib_table_lookup        tracepoint(fib:fib_table_lookup)                {FibTbId: tb_id = 0, FibErr: err = 3, FibDev: name = 2 -> nhc_dev -> name} -> Route 0                   => route::fib_table_lookup;
            Fib6TableLookup      = 65: tp_fib6_table_lookup       tracepoint(fib6:fib6_table_lookup)              {Fib6TbId: tb_id, Fib6Err: err, Fib6Dev: name} -> Route 1                  => route::fib_table_lookup;

            // __tcp_transmit_skb(sk, skb, clone_it, gfp, rcv_nxt) and the
            // socket's queue_xmit(sk, skb, fl): their start is noted, and
            // reported by ip_output once the segment has its number.
            KpTcpTransmitSkb     = 120: kp_tcp_transmit_skb       kprobe[__tcp_transmit_skb]                      (sk: 0)                                       -> TcpTransmitSkb 0          => transmit::tcp_transmit_skb;
            FeTcpTransmitSkb     = 121: fe_tcp_transmit_skb       fentry[__tcp_transmit_skb]                      (sk: 0)                                       -> TcpTransmitSkb 0          => transmit::tcp_transmit_skb;
            KpIpQueueXmit        = 122: kp_ip_queue_xmit          kprobe[ip_queue_xmit]                           (sk: 0, skb: 1)                               -> IpQueueXmit 0             => transmit::ip_queue_xmit;
            KpInet6CskXmit       = 123: kp_inet6_csk_xmit         kprobe[inet6_csk_xmit]                          (sk: 0, skb: 1)                               -> IpQueueXmit 1             => transmit::ip_queue_xmit;
            FeIpQueueXmit        = 124: fe_ip_queue_xmit          fentry[ip_queue_xmit]                           (sk: 0, skb: 1)                               -> IpQueueXmit 0             => transmit::ip_queue_xmit;
            FeInet6CskXmit       = 125: fe_inet6_csk_xmit         fentry[inet6_csk_xmit]                          (sk: 0, skb: 1)                               -> IpQueueXmit 1             => transmit::ip_queue_xmit;

            // ip_output(struct net *net, struct sock *sk, struct sk_buff *skb)
            KpIpOutput           = 24: kp_ip_output               kprobe[ip_output]                               (skb: 2)                                      -> IpOutput 0                => transmit::ip_output;
            KpIp6Output          = 66: kp_ip6_output              kprobe[ip6_output]                              (skb: 2)                                      -> IpOutput 1                => transmit::ip_output;
            FeIpOutput           = 43: fe_ip_output               fentry[ip_output]                               (skb: 2)                                      -> IpOutput 0                => transmit::ip_output;
            FeIp6Output          = 67: fe_ip6_output              fentry[ip6_output]                              (skb: 2)                                      -> IpOutput 1                => transmit::ip_output;

            NetDevQueue          =  5: tp_net_dev_queue           tracepoint(net:net_dev_queue)                   {NetDevQueueSkb: skbaddr = 0}                 -> DevQueueXmit 0            => transmit::net_dev_queue;
            KpDevQueueXmit       = 25: kp_dev_queue_xmit          kprobe[__dev_queue_xmit, dev_queue_xmit]        (skb: 0)                                      -> DevQueueXmit 0            => transmit::dev_queue_xmit;
            FeDevQueueXmit       = 44: fe_dev_queue_xmit          fentry[__dev_queue_xmit, dev_queue_xmit]        (skb: 0)                                      -> DevQueueXmit 0            => transmit::dev_queue_xmit;

            NetDevStartXmit      =  6: tp_net_dev_start_xmit      tracepoint(net:net_dev_start_xmit)              {StartXmitSkb: skbaddr = 0}                   -> LoopbackXmit 0            => transmit::net_dev_start_xmit;
            NetDevXmit           =  7: tp_net_dev_xmit            tracepoint(net:net_dev_xmit)                    {XmitSkb: skbaddr = 0, XmitRc: rc = 1}        -> LoopbackXmit 0 at_return  => transmit::net_dev_xmit;
            KpLoopbackXmit       = 26: kp_loopback_xmit           kprobe[loopback_xmit]                           (skb: 0)                                      -> LoopbackXmit 0            => transmit::loopback_xmit;
            KrLoopbackXmit       = 27: kr_loopback_xmit           kretprobe[loopback_xmit]                                                                      -> LoopbackXmit 0            => transmit::loopback_xmit_return;
            FeLoopbackXmit       = 45: fe_loopback_xmit           fentry[loopback_xmit]                           (skb: 0)                                      -> LoopbackXmit 0            => transmit::loopback_xmit;
            FxLoopbackXmit       = 46: fx_loopback_xmit           fexit[loopback_xmit]                                                                          -> LoopbackXmit 0            => transmit::loopback_xmit_return;

            // loopback_xmit calls __netif_rx (bottom halves are already
            // off there); other drivers call netif_rx. Both are watched.
            NetifRxEntry         =  8: tp_netif_rx_entry          tracepoint(net:netif_rx_entry)                  {NetifRxEntrySkb: skbaddr = 0}                -> NetifRx 0                 => receive::netif_rx_entry;
            KpNetifRxInner       = 28: kp_netif_rx_inner          kprobe[__netif_rx]                              (skb: 0)                                      -> NetifRx 0                 => receive::netif_rx;
            KpNetifRx            = 29: kp_netif_rx                kprobe[netif_rx]                                (skb: 0)                                      -> NetifRx 1                 => receive::netif_rx;
            FeNetifRxInner       = 47: fe_netif_rx_inner          fentry[__netif_rx]                              (skb: 0)                                      -> NetifRx 0                 => receive::netif_rx;
            FeNetifRx            = 48: fe_netif_rx                fentry[netif_rx]                                (skb: 0)                                      -> NetifRx 1                 => receive::netif_rx;

            SoftirqRaise         = 10: tp_softirq_raise           tracepoint(irq:softirq_raise)                   {SoftirqRaiseVec: vec = 0}                    -> SoftirqRaise 0            => softirq::raise;

            // TCP sends a segment again, after its transmit (`err`, and
            // with it a call on failure too, came with 6.x).
            TcpRetransmitSkb     = 119: tp_tcp_retransmit_skb     tracepoint(tcp:tcp_retransmit_skb)              {RetransSkb: skbaddr, RetransSport: sport, RetransDport: dport, RetransFamily: family, RetransSaddr: saddr, RetransDaddr: daddr, RetransSaddr6: saddr_v6, RetransDaddr6: daddr_v6, RetransErr: err} -> TcpRetransmit 0 => transmit::tcp_retransmit_skb;

            // net_rx_action's arguments changed across kernels; none is read.
            SoftirqEntry         = 11: tp_softirq_entry           tracepoint(irq:softirq_entry)                   {SoftirqEntryVec: vec = 0}                    -> NetRxAction 0 required    => softirq::entry;
            SoftirqExit          = 12: tp_softirq_exit            tracepoint(irq:softirq_exit)                    {SoftirqExitVec: vec = 0}                     -> NetRxAction 0 at_return required => softirq::exit;
            KpNetRxAction        = 30: kp_net_rx_action           kprobe[net_rx_action]                           ()                                            -> NetRxAction 0             => softirq::net_rx_action;
            KrNetRxAction        = 31: kr_net_rx_action           kretprobe[net_rx_action]                                                                      -> NetRxAction 0             => softirq::net_rx_action_return;
            FeNetRxAction        = 49: fe_net_rx_action           fentry[net_rx_action]                           ()                                            -> NetRxAction 0             => softirq::net_rx_action;
            FxNetRxAction        = 50: fx_net_rx_action           fexit[net_rx_action]                                                                          -> NetRxAction 0             => softirq::net_rx_action_return;

            // process_backlog(struct napi_struct *napi, int quota) returns the work done.
            NapiPoll             = 13: tp_napi_poll               tracepoint(napi:napi_poll)                      {NapiWork: work = 1}                          -> ProcessBacklog 0 at_return => softirq::napi_poll;
            KpProcessBacklog     = 32: kp_process_backlog         kprobe[process_backlog]                         ()                                            -> ProcessBacklog 0          => softirq::process_backlog;
            KrProcessBacklog     = 33: kr_process_backlog         kretprobe[process_backlog]                                                                    -> ProcessBacklog 0          => softirq::process_backlog_return;
            FeProcessBacklog     = 51: fe_process_backlog         fentry[process_backlog]                         ()                                            -> ProcessBacklog 0          => softirq::process_backlog;
            FxProcessBacklog     = 52: fx_process_backlog         fexit[process_backlog]                                                                        -> ProcessBacklog 0          => softirq::process_backlog_return;

            NetifReceiveSkb      = 14: tp_netif_receive_skb       tracepoint(net:netif_receive_skb)               {NetifReceiveSkbSkb: skbaddr = 0}             -> NetifReceiveSkb 0         => receive::netif_receive_skb_tp;
            KpNetifReceiveSkb    = 34: kp_netif_receive_skb       kprobe[__netif_receive_skb]                     (skb: 0)                                      -> NetifReceiveSkb 0         => receive::netif_receive_skb;
            FeNetifReceiveSkb    = 53: fe_netif_receive_skb       fentry[__netif_receive_skb]                     (skb: 0)                                      -> NetifReceiveSkb 0         => receive::netif_receive_skb;

            KpIpRcv              = 35: kp_ip_rcv                  kprobe[ip_rcv]                                  (skb: 0)                                      -> IpRcv 0                   => receive::ip_rcv;
            KpIpv6Rcv            = 68: kp_ipv6_rcv                kprobe[ipv6_rcv]                                (skb: 0)                                      -> IpRcv 1                   => receive::ip_rcv;
            FeIpRcv              = 54: fe_ip_rcv                  fentry[ip_rcv]                                  (skb: 0)                                      -> IpRcv 0                   => receive::ip_rcv;
            FeIpv6Rcv            = 69: fe_ipv6_rcv                fentry[ipv6_rcv]                                (skb: 0)                                      -> IpRcv 1                   => receive::ip_rcv;

            // TCP and UDP only: an echo never meets these.
            KpTcpV4Rcv           = 86: kp_tcp_v4_rcv              kprobe[tcp_v4_rcv]                              (skb: 0)                                      -> TcpRcv 0                  => receive::tcp_rcv;
            KpTcpV6Rcv           = 87: kp_tcp_v6_rcv              kprobe[tcp_v6_rcv]                              (skb: 0)                                      -> TcpRcv 1                  => receive::tcp_rcv;
            FeTcpV4Rcv           = 88: fe_tcp_v4_rcv              fentry[tcp_v4_rcv]                              (skb: 0)                                      -> TcpRcv 0                  => receive::tcp_rcv;
            FeTcpV6Rcv           = 89: fe_tcp_v6_rcv              fentry[tcp_v6_rcv]                              (skb: 0)                                      -> TcpRcv 1                  => receive::tcp_rcv;
            // tcp_probe(sk, skb), at the top of tcp_rcv_established(sk, skb).
            TcpProbe             = 90: tp_tcp_probe               tracepoint(tcp:tcp_probe)                       {TcpProbeSkb: skbaddr = 1}                    -> TcpRcvEstablished 0       => receive::tcp_probe;
            KpTcpRcvEstablished  = 91: kp_tcp_rcv_established    kprobe[tcp_rcv_established]                     (skb: 1)                                      -> TcpRcvEstablished 0       => receive::tcp_rcv_established;
            FeTcpRcvEstablished  = 92: fe_tcp_rcv_established    fentry[tcp_rcv_established]                     (skb: 1)                                      -> TcpRcvEstablished 0       => receive::tcp_rcv_established;
            // tcp_data_queue(struct sock *sk, struct sk_buff *skb), static but not inlined.
            KpTcpDataQueue       =100: kp_tcp_data_queue          kprobe[tcp_data_queue]                          (skb: 1)                                      -> TcpDataQueue 0            => receive::tcp_data_queue;
            FeTcpDataQueue       =101: fe_tcp_data_queue          fentry[tcp_data_queue]                          (skb: 1)                                      -> TcpDataQueue 0            => receive::tcp_data_queue;
            KpUdpRcv             = 93: kp_udp_rcv                 kprobe[udp_rcv]                                 (skb: 0)                                      -> UdpRcv 0                  => receive::udp_rcv;
            KpUdpv6Rcv           = 94: kp_udpv6_rcv               kprobe[udpv6_rcv]                               (skb: 0)                                      -> UdpRcv 1                  => receive::udp_rcv;
            FeUdpRcv             = 95: fe_udp_rcv                 fentry[udp_rcv]                                 (skb: 0)                                      -> UdpRcv 0                  => receive::udp_rcv;
            FeUdpv6Rcv           = 96: fe_udpv6_rcv               fentry[udpv6_rcv]                               (skb: 0)                                      -> UdpRcv 1                  => receive::udp_rcv;
            // __udp_enqueue_schedule_skb(struct sock *sk, struct sk_buff *skb), for IPv4 and IPv6.
            KpUdpEnqueue         = 97: kp_udp_enqueue             kprobe[__udp_enqueue_schedule_skb]              (skb: 1)                                      -> UdpEnqueue 0              => receive::udp_enqueue;
            FeUdpEnqueue         = 98: fe_udp_enqueue             fentry[__udp_enqueue_schedule_skb]              (skb: 1)                                      -> UdpEnqueue 0              => receive::udp_enqueue;

            KpIcmpRcv            = 36: kp_icmp_rcv                kprobe[icmp_rcv]                                (skb: 0)                                      -> IcmpRcv 0                 => receive::icmp_rcv;
            KpIcmpv6Rcv          = 70: kp_icmpv6_rcv              kprobe[icmpv6_rcv]                              (skb: 0)                                      -> IcmpRcv 1                 => receive::icmp_rcv;
            FeIcmpRcv            = 55: fe_icmp_rcv                fentry[icmp_rcv]                                (skb: 0)                                      -> IcmpRcv 0                 => receive::icmp_rcv;
            FeIcmpv6Rcv          = 71: fe_icmpv6_rcv              fentry[icmpv6_rcv]                              (skb: 0)                                      -> IcmpRcv 1                 => receive::icmp_rcv;

            // icmp_reply(struct icmp_bxm *param, struct sk_buff *skb)
            KpIcmpEcho           = 37: kp_icmp_echo               kprobe[icmp_echo]                               (skb: 0)                                      -> IcmpReply 0               => receive::icmp_echo;
            KpIcmpReply          = 38: kp_icmp_reply              kprobe[icmp_reply]                              (skb: 1)                                      -> IcmpReply 0               => receive::icmp_echo;
            KpIcmpv6EchoReply    = 72: kp_icmpv6_echo_reply       kprobe[icmpv6_echo_reply]                       (skb: 0)                                      -> IcmpReply 1               => receive::icmp_echo;
            FeIcmpEcho           = 56: fe_icmp_echo               fentry[icmp_echo]                               (skb: 0)                                      -> IcmpReply 0               => receive::icmp_echo;
            FeIcmpReply          = 57: fe_icmp_reply              fentry[icmp_reply]                              (skb: 1)                                      -> IcmpReply 0               => receive::icmp_echo;
            FeIcmpv6EchoReply    = 73: fe_icmpv6_echo_reply       fentry[icmpv6_echo_reply]                       (skb: 0)                                      -> IcmpReply 1               => receive::icmp_echo;

            // raw_rcv(struct sock *sk, struct sk_buff *skb)
            SkDataReady          = 15: tp_sk_data_ready           tracepoint(sock:sk_data_ready)                  {SkDataReadySk: skaddr = 0}                   -> SockDeliver 0             => socket::sk_data_ready;
            KpRawRcv             = 39: kp_raw_rcv                 kprobe[raw_rcv]                                 (sk: 0, skb: 1)                               -> SockDeliver 0             => socket::deliver;
            KpRawv6Rcv           = 74: kp_rawv6_rcv               kprobe[rawv6_rcv]                               (sk: 0, skb: 1)                               -> SockDeliver 1             => socket::deliver;
            FeRawRcv             = 58: fe_raw_rcv                 fentry[raw_rcv]                                 (sk: 0, skb: 1)                               -> SockDeliver 0             => socket::deliver;
            FeRawv6Rcv           = 75: fe_rawv6_rcv               fentry[rawv6_rcv]                               (sk: 0, skb: 1)                               -> SockDeliver 1             => socket::deliver;
            // Every path to a socket's queue ends in its data-ready call,
            // sock_def_readable for raw and ICMP datagram sockets alike
            // (ping_rcv never calls raw_rcv); called through a pointer,
            // never inlined. A delivery raw_rcv already reported is not
            // reported twice.
            KpSockDefReadable    = 84: kp_sock_def_readable       kprobe[sock_def_readable]                       (sk: 0)                                       -> SockDeliver 2             => socket::data_ready;
            FeSockDefReadable    = 85: fe_sock_def_readable       fentry[sock_def_readable]                       (sk: 0)                                       -> SockDeliver 2             => socket::data_ready;

            SchedWakeup          = 16: tp_sched_wakeup            tracepoint(sched:sched_wakeup)                  {WakeupPid: pid = 0 -> pid}                   -> Wakeup 0                  => socket::sched_wakeup;

            // The protocol's recvmsg(sk, ...) starts: noted when its socket
            // already has data queued, and reported with the first traced
            // packet the call copies (or, for a small UDP datagram, with
            // its read's return).
            KpTcpRecvmsg         = 126: kp_tcp_recvmsg            kprobe[tcp_recvmsg]                             (sk: 0)                                       -> TcpRecvmsg 0              => recv::proto_recvmsg;
            FeTcpRecvmsg         = 127: fe_tcp_recvmsg            fentry[tcp_recvmsg]                             (sk: 0)                                       -> TcpRecvmsg 0              => recv::proto_recvmsg;
            KpUdpRecvmsg         = 128: kp_udp_recvmsg            kprobe[udp_recvmsg]                             (sk: 0)                                       -> UdpRecvmsg 0              => recv::proto_recvmsg;
            KpUdpv6Recvmsg       = 129: kp_udpv6_recvmsg          kprobe[udpv6_recvmsg]                           (sk: 0)                                       -> UdpRecvmsg 1              => recv::proto_recvmsg;
            FeUdpRecvmsg         = 130: fe_udp_recvmsg            fentry[udp_recvmsg]                             (sk: 0)                                       -> UdpRecvmsg 0              => recv::proto_recvmsg;
            FeUdpv6Recvmsg       = 131: fe_udpv6_recvmsg          fentry[udpv6_recvmsg]                           (sk: 0)                                       -> UdpRecvmsg 1              => recv::proto_recvmsg;

            // skb_copy_datagram_iter(const struct sk_buff *skb, int offset, struct iov_iter *to, int len)
            SkbCopyDatagramIovec = 17: tp_skb_copy_datagram_iovec tracepoint(skb:skb_copy_datagram_iovec)         {CopySkb: skbaddr = 0, CopyLen: len = 1}      -> CopyToUser 0              => recv::skb_copy_datagram_iovec;
            KpCopyDatagram       = 40: kp_copy_datagram           kprobe[skb_copy_datagram_iter]                  (skb: 0, len: 3)                              -> CopyToUser 0              => recv::skb_copy_datagram_iter;
            FeCopyDatagram       = 59: fe_copy_datagram           fentry[skb_copy_datagram_iter]                  (skb: 0, len: 3)                              -> CopyToUser 0              => recv::skb_copy_datagram_iter;

            // busybox's ping receives with recvfrom.
            // The socket layer's recvmsg returning; the family's recvmsg (an
            // ops pointer, never inlined) for function probes.
            SockRecvLength       = 76: tp_sock_recv_length        tracepoint(sock:sock_recv_length)               {SockRecvSk: sk = 0, SockRecvRet: ret = 1, SockRecvFlags: flags = 2} -> SockRecvmsg 0 at_return => recv::sock_recv_length;
            KrSockRecvmsg        = 77: kr_sock_recvmsg            kretprobe[inet_recvmsg]                                                                       -> SockRecvmsg 0             => recv::recvmsg_return;
            KrInet6Recvmsg       = 78: kr_inet6_recvmsg           kretprobe[inet6_recvmsg]                                                                      -> SockRecvmsg 1             => recv::recvmsg_return;
            FxSockRecvmsg        = 79: fx_sock_recvmsg            fexit[inet_recvmsg]                                                                           -> SockRecvmsg 0             => recv::recvmsg_return;
            FxInet6Recvmsg       = 80: fx_inet6_recvmsg           fexit[inet6_recvmsg]                                                                          -> SockRecvmsg 1             => recv::recvmsg_return;

            SysExitRecvmsg       = 18: tp_sys_exit_recvmsg        tracepoint(syscalls:sys_exit_recvmsg)           {RecvmsgRet: ret}                             -> Recvmsg 0 at_return       => recv::sys_exit_recv;
            SysExitRecvfrom      = 60: tp_sys_exit_recvfrom       tracepoint(syscalls:sys_exit_recvfrom)          {RecvfromRet: ret}                            -> Recvmsg 1 at_return       => recv::sys_exit_recv;
            SysExitRead          = 104: tp_sys_exit_read          tracepoint(syscalls:sys_exit_read)              {ReadRet: ret}                                -> Recvmsg 2 at_return       => recv::sys_exit_recv;
            SysExitReadv         = 111: tp_sys_exit_readv         tracepoint(syscalls:sys_exit_readv)             {ReadvRet: ret}                               -> Recvmsg 3 at_return       => recv::sys_exit_recv;
            SysExitRecvmmsg      = 137: tp_sys_exit_recvmmsg      tracepoint(syscalls:sys_exit_recvmmsg)          {RecvmmsgRet: ret}                            -> Recvmsg 4 at_return       => recv::sys_exit_recvmmsg;

            ConsumeSkb           = 19: tp_consume_skb             tracepoint(skb:consume_skb)                     {ConsumeSkbSkb: skbaddr = 0}                  -> Free 0                    => free::consume_skb;
            KfreeSkb             = 20: tp_kfree_skb               tracepoint(skb:kfree_skb)                       {KfreeSkbSkb: skbaddr = 0, KfreeReason: reason = 2} -> Drop 0                    => free::kfree_skb;
        }
    };
    (@lines $expand:ident $(
        $id:ident = $n:literal : $program:ident $kind:ident $target:tt
        $( { $($field:ident : $fname:ident $(= $rarg:literal $(-> $rm:ident)*)?),* } )?
        $( ( $($arg:ident : $argn:literal),* ) )?
        -> $stage:tt $group:literal $($flag:ident)* => $handler:path ;
    )*) => {
        $expand! {$(
            [$id $n $program $kind $target [$($($field $fname [$($rarg $($rm)*)?])*)?] [$($($argn)*)?] $stage $group [$($flag)*] $handler]
        )*}
    };
}

/// Names of the maps shared by the programs and the loader.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const SUBMITTED: &str = "SUBMITTED";
    pub const TARGETS: &str = "TARGETS";
    pub const CONFIG: &str = "CONFIG";
    pub const AGG_ROWS: &str = "AGG_ROWS";
    pub const AGG_COUNT: &str = "AGG_COUNT";
    pub const FLOW_ROWS: &str = "FLOW_ROWS";
    pub const FLOW_COUNT: &str = "FLOW_COUNT";
    pub const JOURNEYS: &str = "JOURNEYS";
}

/// What a process is to the `TARGETS` map, keyed by its id.
pub mod targets {
    /// Traced: its sends, its packets, and its children.
    pub const TRACED: u8 = 1;
    /// lotrace itself, while it runs the traced command: not traced, but
    /// its children are, from the fork on. Set once, before the command
    /// is spawned: a map update or lookup from user space while the
    /// command runs made a PREEMPT_RT kernel skip the command's probes
    /// (the update holds the CPU's count of running eBPF programs up
    /// while it can be preempted; a kprobe or classic tracepoint then
    /// finds it non-zero and does not run).
    pub const SPAWNER: u8 = 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_index_their_table() {
        for (i, s) in STAGES.iter().enumerate() {
            assert_eq!(s.stage as usize, i, "{}", s.name);
            assert_eq!(Stage::from_name(s.name), Some(s.stage));
        }
    }
}

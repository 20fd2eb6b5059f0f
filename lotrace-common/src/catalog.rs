//! The stage catalog: every stage of a ping's journey, what the kernel does
//! there, and the probes that can observe it, preferred first.
//!
//! This is the one place for those facts. The eBPF programs only use the ids
//! ([`Stage`], [`ProbeId`], [`TpField`]); names, explanations and candidate
//! functions are read by the command-line side.

/// A named point of the journey, the same whichever probe observed it.
/// The discriminant order is the order in which a packet meets the stages
/// inside one leg.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Sendto = 0,
    SockSendmsg,
    Route,
    IpOutput,
    DevQueueXmit,
    LoopbackXmit,
    NetifRx,
    SoftirqRaise,
    NetRxAction,
    ProcessBacklog,
    NetifReceiveSkb,
    IpRcv,
    IcmpRcv,
    IcmpReply,
    SockDeliver,
    Wakeup,
    CopyToUser,
    Recvmsg,
    Free,
    Drop,
}

pub const STAGE_COUNT: usize = 20;

impl Stage {
    pub const ALL: [Stage; STAGE_COUNT] = [
        Stage::Sendto,
        Stage::SockSendmsg,
        Stage::Route,
        Stage::IpOutput,
        Stage::DevQueueXmit,
        Stage::LoopbackXmit,
        Stage::NetifRx,
        Stage::SoftirqRaise,
        Stage::NetRxAction,
        Stage::ProcessBacklog,
        Stage::NetifReceiveSkb,
        Stage::IpRcv,
        Stage::IcmpRcv,
        Stage::IcmpReply,
        Stage::SockDeliver,
        Stage::Wakeup,
        Stage::CopyToUser,
        Stage::Recvmsg,
        Stage::Free,
        Stage::Drop,
    ];

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
    /// The kernel's drop reason (`enum skb_drop_reason`) in `aux`.
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
}

/// What the catalog knows of one stage.
#[derive(Debug)]
pub struct StageInfo {
    pub stage: Stage,
    /// The stage's name in reports and JSON.
    pub name: &'static str,
    /// One or two sentences on what the kernel does here, in English.
    pub explain: &'static str,
    /// The same in Chinese, the language of the article lotrace grew from.
    pub explain_zh: &'static str,
    /// What its events carry besides time and place.
    pub detail: DetailKind,
}

pub static STAGES: [StageInfo; STAGE_COUNT] = [
    StageInfo {
        stage: Stage::Sendto,
        name: "sendto",
        explain: "ping hands its ICMP echo request to the kernel with the sendto() system call.",
        explain_zh: "ping 用 sendto() 系统调用把 ICMP 回显请求交给内核。",
        detail: DetailKind::None,
    },
    StageInfo {
        stage: Stage::SockSendmsg,
        name: "sock_sendmsg",
        explain: "The socket layer passes the message to the protocol (raw_sendmsg or ping_v4_sendmsg); on loopback the whole transmit, and often the receive too, happens before it returns.",
        explain_zh: "套接字层把消息交给协议（raw_sendmsg 或 ping_v4_sendmsg）；在回环上，整个发送、往往连接收，都在它返回之前完成。",
        detail: DetailKind::SyscallReturn,
    },
    StageInfo {
        stage: Stage::Route,
        name: "route",
        explain: "The routing table is consulted: the local table matches 127.0.0.0/8 (or any address of this host) and picks the loopback device lo.",
        explain_zh: "查路由表：local 表匹配 127.0.0.0/8（或本机的任何地址），选中回环设备 lo。",
        detail: DetailKind::Route,
    },
    StageInfo {
        stage: Stage::IpOutput,
        name: "ip_output",
        explain: "IP output: the header is finished, netfilter's OUTPUT and POSTROUTING hooks run and the neighbour layer adds the link header.",
        explain_zh: "IP 输出：补全 IP 头，经过 netfilter 的 OUTPUT 和 POSTROUTING 钩子，邻居层加上链路层头。",
        detail: DetailKind::None,
    },
    StageInfo {
        stage: Stage::DevQueueXmit,
        name: "dev_queue_xmit",
        explain: "The packet is queued for transmission on the chosen device; lo has no qdisc, so it goes straight to the driver.",
        explain_zh: "数据包进入所选设备的发送队列；lo 没有排队规则（qdisc），直接交给驱动。",
        detail: DetailKind::Device,
    },
    StageInfo {
        stage: Stage::LoopbackXmit,
        name: "loopback_xmit",
        explain: "The loopback driver, a 'fake NIC': instead of putting bytes on a wire it hands the same skb back to the receive path.",
        explain_zh: "回环驱动，一块“假网卡”：它不把字节发到线路上，而是把同一个 skb 交回接收路径。",
        detail: DetailKind::Device,
    },
    StageInfo {
        stage: Stage::NetifRx,
        name: "netif_rx",
        explain: "netif_rx puts the skb on this CPU's backlog queue (enqueue_to_backlog), as a NIC's interrupt handler would.",
        explain_zh: "netif_rx 把 skb 放进本 CPU 的 backlog 队列（enqueue_to_backlog），就像真网卡的中断处理程序那样。",
        detail: DetailKind::None,
    },
    StageInfo {
        stage: Stage::SoftirqRaise,
        name: "softirq_raise",
        explain: "The backlog was idle, so the NET_RX softirq is raised to process it later, at the next bottom-half opportunity.",
        explain_zh: "backlog 原本空闲，于是触发 NET_RX 软中断，等下一个下半部时机再处理。",
        detail: DetailKind::None,
    },
    StageInfo {
        stage: Stage::NetRxAction,
        name: "net_rx_action",
        explain: "The NET_RX softirq runs: inline when bottom halves are re-enabled (often in ping's own task), or in ksoftirqd/N under load.",
        explain_zh: "NET_RX 软中断运行：通常在重新打开下半部时就地运行（常常就在 ping 自己的任务里），负载高时交给 ksoftirqd/N。",
        detail: DetailKind::RunTime,
    },
    StageInfo {
        stage: Stage::ProcessBacklog,
        name: "process_backlog",
        explain: "The backlog's NAPI poll function takes packets off the per-CPU queue, up to its budget.",
        explain_zh: "backlog 的 NAPI 轮询函数从本 CPU 队列里取出数据包，最多取到预算为止。",
        detail: DetailKind::Polled,
    },
    StageInfo {
        stage: Stage::NetifReceiveSkb,
        name: "netif_receive_skb",
        explain: "The core receive path hands the packet to the protocol registered for its type: IPv4 or IPv6.",
        explain_zh: "核心接收路径把数据包交给它的协议处理函数：IPv4 或 IPv6。",
        detail: DetailKind::None,
    },
    StageInfo {
        stage: Stage::IpRcv,
        name: "ip_rcv",
        explain: "IP input: the header is checked, netfilter's PREROUTING and INPUT hooks run, and the packet is found to be for this host.",
        explain_zh: "IP 输入：检查 IP 头，经过 netfilter 的 PREROUTING 和 INPUT 钩子，确认数据包是发给本机的。",
        detail: DetailKind::None,
    },
    StageInfo {
        stage: Stage::IcmpRcv,
        name: "icmp_rcv",
        explain: "The ICMP layer receives the message and dispatches on its type.",
        explain_zh: "ICMP 层收下消息，按类型分发。",
        detail: DetailKind::None,
    },
    StageInfo {
        stage: Stage::IcmpReply,
        name: "icmp_reply",
        explain: "The kernel itself answers the echo request: it builds the echo reply and sends it back down the same stack.",
        explain_zh: "内核自己回应回显请求：构造回显应答，沿同一个协议栈发回去。",
        detail: DetailKind::None,
    },
    StageInfo {
        stage: Stage::SockDeliver,
        name: "sock_deliver",
        explain: "The reply is queued on ping's socket (raw_rcv or ping_rcv) and the socket is told data is ready.",
        explain_zh: "应答被放进 ping 的套接字接收队列（raw_rcv 或 ping_rcv），并通知套接字有数据可读。",
        detail: DetailKind::None,
    },
    StageInfo {
        stage: Stage::Wakeup,
        name: "wakeup",
        explain: "ping was asleep waiting for the reply and is woken; absent when ping was still running, as when the softirq ran inline in its own sendto.",
        explain_zh: "ping 正在睡眠等待应答，被唤醒；如果 ping 当时还在运行（比如软中断就在它自己的 sendto 里运行），就没有这一步。",
        detail: DetailKind::Woken,
    },
    StageInfo {
        stage: Stage::CopyToUser,
        name: "copy_to_user",
        explain: "recvmsg copies the reply from the socket's queue into ping's buffer.",
        explain_zh: "recvmsg 把应答从套接字队列复制到 ping 的缓冲区。",
        detail: DetailKind::Bytes,
    },
    StageInfo {
        stage: Stage::Recvmsg,
        name: "recvmsg",
        explain: "The receive system call (recvmsg, or recvfrom for busybox's ping) returns the reply to ping, which prints its line.",
        explain_zh: "接收系统调用（recvmsg，busybox 的 ping 用 recvfrom）把应答返回给 ping，ping 打印出一行结果。",
        detail: DetailKind::SyscallReturn,
    },
    StageInfo {
        stage: Stage::Free,
        name: "free",
        explain: "The skb has done its job and is freed normally (consume_skb).",
        explain_zh: "skb 完成了使命，被正常释放（consume_skb）。",
        detail: DetailKind::None,
    },
    StageInfo {
        stage: Stage::Drop,
        name: "drop",
        explain: "The skb is dropped (kfree_skb); the kernel records why.",
        explain_zh: "skb 被丢弃（kfree_skb）；内核记录了原因。",
        detail: DetailKind::DropReason,
    },
];

/// One eBPF program: an attach point and what it observes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeId {
    SysEnterSendto = 1,
    SysExitSendto,
    SockSendLength,
    FibTableLookup,
    NetDevQueue,
    NetDevStartXmit,
    NetDevXmit,
    NetifRxEntry,
    NetifRxExit,
    SoftirqRaise,
    SoftirqEntry,
    SoftirqExit,
    NapiPoll,
    NetifReceiveSkb,
    SkDataReady,
    SchedWakeup,
    SkbCopyDatagramIovec,
    SysExitRecvmsg,
    ConsumeSkb,
    KfreeSkb,
    SchedProcessFork,
    KpSockSendmsg,
    KrSockSendmsg,
    KpIpOutput,
    KpDevQueueXmit,
    KpLoopbackXmit,
    KrLoopbackXmit,
    KpNetifRxInner,
    KpNetifRx,
    KpNetRxAction,
    KrNetRxAction,
    KpProcessBacklog,
    KrProcessBacklog,
    KpNetifReceiveSkb,
    KpIpRcv,
    KpIcmpRcv,
    KpIcmpEcho,
    KpIcmpReply,
    KpRawRcv,
    KpCopyDatagram,
    FeSockSendmsg,
    FxSockSendmsg,
    FeIpOutput,
    FeDevQueueXmit,
    FeLoopbackXmit,
    FxLoopbackXmit,
    FeNetifRxInner,
    FeNetifRx,
    FeNetRxAction,
    FxNetRxAction,
    FeProcessBacklog,
    FxProcessBacklog,
    FeNetifReceiveSkb,
    FeIpRcv,
    FeIcmpRcv,
    FeIcmpEcho,
    FeIcmpReply,
    FeRawRcv,
    FeCopyDatagram,
    SysExitRecvfrom,
    KpInet6Sendmsg,
    KrInet6Sendmsg,
    FeInet6Sendmsg,
    FxInet6Sendmsg,
    Fib6TableLookup,
    KpIp6Output,
    FeIp6Output,
    KpIpv6Rcv,
    FeIpv6Rcv,
    KpIcmpv6Rcv,
    FeIcmpv6Rcv,
    KpIcmpv6EchoReply,
    FeIcmpv6EchoReply,
    KpRawv6Rcv,
    FeRawv6Rcv,
}

pub const PROBE_COUNT: usize = 75;

impl ProbeId {
    pub fn from_u8(v: u8) -> Option<ProbeId> {
        PROBES.get((v as usize).wrapping_sub(1)).map(|p| p.id)
    }

    pub fn info(self) -> &'static ProbeInfo {
        &PROBES[self as usize - 1]
    }
}

/// The mechanism a probe uses, in order of preference for a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// BPF trampoline on a kernel function: cheapest, needs BTF and the
    /// function tracer.
    Fentry,
    /// A breakpoint on a kernel function: needs `CONFIG_KPROBES`.
    Kprobe,
    /// A static tracepoint: a stable interface present everywhere.
    Tracepoint,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Fentry, Backend::Kprobe, Backend::Tracepoint];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Fentry => "fentry",
            Backend::Kprobe => "kprobe",
            Backend::Tracepoint => "tracepoint",
        }
    }
}

/// How a probe attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// A classic tracepoint, `category:name` under tracefs `events/`.
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// A kprobe (kretprobe when the probe is `at_return`) on the first of
    /// these functions the kernel has: names move between kernels.
    Kprobe { functions: &'static [&'static str] },
    /// An fentry (fexit when `at_return`) program, likewise.
    Fentry { functions: &'static [&'static str] },
}

#[derive(Debug)]
pub struct ProbeInfo {
    pub id: ProbeId,
    pub kind: ProbeKind,
    /// The eBPF program's symbol in the object.
    pub program: &'static str,
    /// The stage this probe reports, or `None` for a probe that only keeps
    /// the in-kernel filter's state (those are always attached).
    pub stage: Option<Stage>,
    /// The probe fires when its stage's function returns, not when it
    /// starts (its events close the stage rather than open it).
    pub at_return: bool,
    /// The probe is needed for the filter to work: without it no journey
    /// can be told apart, so the trace stops with an error.
    pub required: bool,
    /// Function probes of one stage and backend with the same group are
    /// alternatives (only the first the kernel has is attached); different
    /// groups observe different paths and are all attached.
    pub group: u8,
}

impl ProbeInfo {
    pub fn backend(&self) -> Backend {
        match self.kind {
            ProbeKind::Tracepoint { .. } => Backend::Tracepoint,
            ProbeKind::Kprobe { .. } => Backend::Kprobe,
            ProbeKind::Fentry { .. } => Backend::Fentry,
        }
    }

    /// `category:name` of a tracepoint; `None` for a function probe.
    pub fn tracepoint(&self) -> Option<(&'static str, &'static str)> {
        match self.kind {
            ProbeKind::Tracepoint { category, name } => Some((category, name)),
            _ => None,
        }
    }

    /// The kernel functions a function probe may attach to, preferred first.
    pub fn functions(&self) -> &'static [&'static str] {
        match self.kind {
            ProbeKind::Tracepoint { .. } => &[],
            ProbeKind::Kprobe { functions } | ProbeKind::Fentry { functions } => functions,
        }
    }
}

const fn tp(
    id: ProbeId,
    category: &'static str,
    name: &'static str,
    program: &'static str,
    stage: Option<Stage>,
    at_return: bool,
    required: bool,
) -> ProbeInfo {
    ProbeInfo {
        id,
        kind: ProbeKind::Tracepoint { category, name },
        program,
        stage,
        at_return,
        required,
        group: 0,
    }
}

const fn kp(
    id: ProbeId,
    functions: &'static [&'static str],
    program: &'static str,
    stage: Stage,
    at_return: bool,
    group: u8,
) -> ProbeInfo {
    ProbeInfo {
        id,
        kind: ProbeKind::Kprobe { functions },
        program,
        stage: Some(stage),
        at_return,
        required: false,
        group,
    }
}

const fn fe(
    id: ProbeId,
    functions: &'static [&'static str],
    program: &'static str,
    stage: Stage,
    at_return: bool,
    group: u8,
) -> ProbeInfo {
    ProbeInfo {
        id,
        kind: ProbeKind::Fentry { functions },
        program,
        stage: Some(stage),
        at_return,
        required: false,
        group,
    }
}

// sock_sendmsg hands the message to the address family's sendmsg through
// the socket's ops; sock_sendmsg itself is inlined into the sendto path on
// some kernels (6.1), the family's function never is (it is called through
// a pointer), so that is where a function probe sees the stage.
const SOCK_SENDMSG: &[&str] = &["inet_sendmsg"];
const SOCK_SENDMSG6: &[&str] = &["inet6_sendmsg"];
const IP_OUTPUT: &[&str] = &["ip_output"];
const DEV_QUEUE_XMIT: &[&str] = &["__dev_queue_xmit", "dev_queue_xmit"];
const LOOPBACK_XMIT: &[&str] = &["loopback_xmit"];
// loopback_xmit calls __netif_rx (bottom halves are already off there);
// other drivers call netif_rx. Both are watched.
const NETIF_RX_INNER: &[&str] = &["__netif_rx"];
const NETIF_RX: &[&str] = &["netif_rx"];
const NET_RX_ACTION: &[&str] = &["net_rx_action"];
const PROCESS_BACKLOG: &[&str] = &["process_backlog"];
const NETIF_RECEIVE_SKB: &[&str] = &["__netif_receive_skb"];
const IP_RCV: &[&str] = &["ip_rcv"];
const ICMP_RCV: &[&str] = &["icmp_rcv"];
const ICMP_ECHO: &[&str] = &["icmp_echo"];
const ICMP_REPLY: &[&str] = &["icmp_reply"];
const RAW_RCV: &[&str] = &["raw_rcv"];
const COPY_DATAGRAM: &[&str] = &["skb_copy_datagram_iter"];
const IP6_OUTPUT: &[&str] = &["ip6_output"];
const IPV6_RCV: &[&str] = &["ipv6_rcv"];
const ICMPV6_RCV: &[&str] = &["icmpv6_rcv"];
const ICMPV6_ECHO_REPLY: &[&str] = &["icmpv6_echo_reply"];
const RAWV6_RCV: &[&str] = &["rawv6_rcv"];

#[rustfmt::skip]
pub static PROBES: [ProbeInfo; PROBE_COUNT] = [
    tp(ProbeId::SysEnterSendto, "syscalls", "sys_enter_sendto", "tp_sys_enter_sendto", Some(Stage::Sendto), false, false),
    tp(ProbeId::SysExitSendto, "syscalls", "sys_exit_sendto", "tp_sys_exit_sendto", None, false, false),
    tp(ProbeId::SockSendLength, "sock", "sock_send_length", "tp_sock_send_length", Some(Stage::SockSendmsg), true, false),
    tp(ProbeId::FibTableLookup, "fib", "fib_table_lookup", "tp_fib_table_lookup", Some(Stage::Route), false, false),
    tp(ProbeId::NetDevQueue, "net", "net_dev_queue", "tp_net_dev_queue", Some(Stage::DevQueueXmit), false, false),
    tp(ProbeId::NetDevStartXmit, "net", "net_dev_start_xmit", "tp_net_dev_start_xmit", Some(Stage::LoopbackXmit), false, false),
    tp(ProbeId::NetDevXmit, "net", "net_dev_xmit", "tp_net_dev_xmit", Some(Stage::LoopbackXmit), true, false),
    tp(ProbeId::NetifRxEntry, "net", "netif_rx_entry", "tp_netif_rx_entry", Some(Stage::NetifRx), false, false),
    tp(ProbeId::NetifRxExit, "net", "netif_rx_exit", "tp_netif_rx_exit", None, false, false),
    tp(ProbeId::SoftirqRaise, "irq", "softirq_raise", "tp_softirq_raise", Some(Stage::SoftirqRaise), false, false),
    tp(ProbeId::SoftirqEntry, "irq", "softirq_entry", "tp_softirq_entry", Some(Stage::NetRxAction), false, true),
    tp(ProbeId::SoftirqExit, "irq", "softirq_exit", "tp_softirq_exit", Some(Stage::NetRxAction), true, true),
    tp(ProbeId::NapiPoll, "napi", "napi_poll", "tp_napi_poll", Some(Stage::ProcessBacklog), true, false),
    tp(ProbeId::NetifReceiveSkb, "net", "netif_receive_skb", "tp_netif_receive_skb", Some(Stage::NetifReceiveSkb), false, false),
    tp(ProbeId::SkDataReady, "sock", "sk_data_ready", "tp_sk_data_ready", Some(Stage::SockDeliver), false, false),
    tp(ProbeId::SchedWakeup, "sched", "sched_wakeup", "tp_sched_wakeup", Some(Stage::Wakeup), false, false),
    tp(ProbeId::SkbCopyDatagramIovec, "skb", "skb_copy_datagram_iovec", "tp_skb_copy_datagram_iovec", Some(Stage::CopyToUser), false, false),
    tp(ProbeId::SysExitRecvmsg, "syscalls", "sys_exit_recvmsg", "tp_sys_exit_recvmsg", Some(Stage::Recvmsg), true, false),
    tp(ProbeId::ConsumeSkb, "skb", "consume_skb", "tp_consume_skb", Some(Stage::Free), false, false),
    tp(ProbeId::KfreeSkb, "skb", "kfree_skb", "tp_kfree_skb", Some(Stage::Drop), false, false),
    tp(ProbeId::SchedProcessFork, "sched", "sched_process_fork", "tp_sched_process_fork", None, false, true),
    kp(ProbeId::KpSockSendmsg, SOCK_SENDMSG, "kp_sock_sendmsg", Stage::SockSendmsg, false, 0),
    kp(ProbeId::KrSockSendmsg, SOCK_SENDMSG, "kr_sock_sendmsg", Stage::SockSendmsg, true, 0),
    kp(ProbeId::KpIpOutput, IP_OUTPUT, "kp_ip_output", Stage::IpOutput, false, 0),
    kp(ProbeId::KpDevQueueXmit, DEV_QUEUE_XMIT, "kp_dev_queue_xmit", Stage::DevQueueXmit, false, 0),
    kp(ProbeId::KpLoopbackXmit, LOOPBACK_XMIT, "kp_loopback_xmit", Stage::LoopbackXmit, false, 0),
    kp(ProbeId::KrLoopbackXmit, LOOPBACK_XMIT, "kr_loopback_xmit", Stage::LoopbackXmit, true, 0),
    kp(ProbeId::KpNetifRxInner, NETIF_RX_INNER, "kp_netif_rx_inner", Stage::NetifRx, false, 0),
    kp(ProbeId::KpNetifRx, NETIF_RX, "kp_netif_rx", Stage::NetifRx, false, 1),
    kp(ProbeId::KpNetRxAction, NET_RX_ACTION, "kp_net_rx_action", Stage::NetRxAction, false, 0),
    kp(ProbeId::KrNetRxAction, NET_RX_ACTION, "kr_net_rx_action", Stage::NetRxAction, true, 0),
    kp(ProbeId::KpProcessBacklog, PROCESS_BACKLOG, "kp_process_backlog", Stage::ProcessBacklog, false, 0),
    kp(ProbeId::KrProcessBacklog, PROCESS_BACKLOG, "kr_process_backlog", Stage::ProcessBacklog, true, 0),
    kp(ProbeId::KpNetifReceiveSkb, NETIF_RECEIVE_SKB, "kp_netif_receive_skb", Stage::NetifReceiveSkb, false, 0),
    kp(ProbeId::KpIpRcv, IP_RCV, "kp_ip_rcv", Stage::IpRcv, false, 0),
    kp(ProbeId::KpIcmpRcv, ICMP_RCV, "kp_icmp_rcv", Stage::IcmpRcv, false, 0),
    kp(ProbeId::KpIcmpEcho, ICMP_ECHO, "kp_icmp_echo", Stage::IcmpReply, false, 0),
    kp(ProbeId::KpIcmpReply, ICMP_REPLY, "kp_icmp_reply", Stage::IcmpReply, false, 0),
    kp(ProbeId::KpRawRcv, RAW_RCV, "kp_raw_rcv", Stage::SockDeliver, false, 0),
    kp(ProbeId::KpCopyDatagram, COPY_DATAGRAM, "kp_copy_datagram", Stage::CopyToUser, false, 0),
    fe(ProbeId::FeSockSendmsg, SOCK_SENDMSG, "fe_sock_sendmsg", Stage::SockSendmsg, false, 0),
    fe(ProbeId::FxSockSendmsg, SOCK_SENDMSG, "fx_sock_sendmsg", Stage::SockSendmsg, true, 0),
    fe(ProbeId::FeIpOutput, IP_OUTPUT, "fe_ip_output", Stage::IpOutput, false, 0),
    fe(ProbeId::FeDevQueueXmit, DEV_QUEUE_XMIT, "fe_dev_queue_xmit", Stage::DevQueueXmit, false, 0),
    fe(ProbeId::FeLoopbackXmit, LOOPBACK_XMIT, "fe_loopback_xmit", Stage::LoopbackXmit, false, 0),
    fe(ProbeId::FxLoopbackXmit, LOOPBACK_XMIT, "fx_loopback_xmit", Stage::LoopbackXmit, true, 0),
    fe(ProbeId::FeNetifRxInner, NETIF_RX_INNER, "fe_netif_rx_inner", Stage::NetifRx, false, 0),
    fe(ProbeId::FeNetifRx, NETIF_RX, "fe_netif_rx", Stage::NetifRx, false, 1),
    fe(ProbeId::FeNetRxAction, NET_RX_ACTION, "fe_net_rx_action", Stage::NetRxAction, false, 0),
    fe(ProbeId::FxNetRxAction, NET_RX_ACTION, "fx_net_rx_action", Stage::NetRxAction, true, 0),
    fe(ProbeId::FeProcessBacklog, PROCESS_BACKLOG, "fe_process_backlog", Stage::ProcessBacklog, false, 0),
    fe(ProbeId::FxProcessBacklog, PROCESS_BACKLOG, "fx_process_backlog", Stage::ProcessBacklog, true, 0),
    fe(ProbeId::FeNetifReceiveSkb, NETIF_RECEIVE_SKB, "fe_netif_receive_skb", Stage::NetifReceiveSkb, false, 0),
    fe(ProbeId::FeIpRcv, IP_RCV, "fe_ip_rcv", Stage::IpRcv, false, 0),
    fe(ProbeId::FeIcmpRcv, ICMP_RCV, "fe_icmp_rcv", Stage::IcmpRcv, false, 0),
    fe(ProbeId::FeIcmpEcho, ICMP_ECHO, "fe_icmp_echo", Stage::IcmpReply, false, 0),
    fe(ProbeId::FeIcmpReply, ICMP_REPLY, "fe_icmp_reply", Stage::IcmpReply, false, 0),
    fe(ProbeId::FeRawRcv, RAW_RCV, "fe_raw_rcv", Stage::SockDeliver, false, 0),
    fe(ProbeId::FeCopyDatagram, COPY_DATAGRAM, "fe_copy_datagram", Stage::CopyToUser, false, 0),
    ProbeInfo { group: 1, ..tp(ProbeId::SysExitRecvfrom, "syscalls", "sys_exit_recvfrom", "tp_sys_exit_recvfrom", Some(Stage::Recvmsg), true, false) },
    kp(ProbeId::KpInet6Sendmsg, SOCK_SENDMSG6, "kp_inet6_sendmsg", Stage::SockSendmsg, false, 1),
    kp(ProbeId::KrInet6Sendmsg, SOCK_SENDMSG6, "kr_inet6_sendmsg", Stage::SockSendmsg, true, 1),
    fe(ProbeId::FeInet6Sendmsg, SOCK_SENDMSG6, "fe_inet6_sendmsg", Stage::SockSendmsg, false, 1),
    fe(ProbeId::FxInet6Sendmsg, SOCK_SENDMSG6, "fx_inet6_sendmsg", Stage::SockSendmsg, true, 1),
    ProbeInfo { group: 1, ..tp(ProbeId::Fib6TableLookup, "fib6", "fib6_table_lookup", "tp_fib6_table_lookup", Some(Stage::Route), false, false) },
    kp(ProbeId::KpIp6Output, IP6_OUTPUT, "kp_ip6_output", Stage::IpOutput, false, 1),
    fe(ProbeId::FeIp6Output, IP6_OUTPUT, "fe_ip6_output", Stage::IpOutput, false, 1),
    kp(ProbeId::KpIpv6Rcv, IPV6_RCV, "kp_ipv6_rcv", Stage::IpRcv, false, 1),
    fe(ProbeId::FeIpv6Rcv, IPV6_RCV, "fe_ipv6_rcv", Stage::IpRcv, false, 1),
    kp(ProbeId::KpIcmpv6Rcv, ICMPV6_RCV, "kp_icmpv6_rcv", Stage::IcmpRcv, false, 1),
    fe(ProbeId::FeIcmpv6Rcv, ICMPV6_RCV, "fe_icmpv6_rcv", Stage::IcmpRcv, false, 1),
    kp(ProbeId::KpIcmpv6EchoReply, ICMPV6_ECHO_REPLY, "kp_icmpv6_echo_reply", Stage::IcmpReply, false, 1),
    fe(ProbeId::FeIcmpv6EchoReply, ICMPV6_ECHO_REPLY, "fe_icmpv6_echo_reply", Stage::IcmpReply, false, 1),
    kp(ProbeId::KpRawv6Rcv, RAWV6_RCV, "kp_rawv6_rcv", Stage::SockDeliver, false, 1),
    fe(ProbeId::FeRawv6Rcv, RAWV6_RCV, "fe_rawv6_rcv", Stage::SockDeliver, false, 1),
];

impl Stage {
    /// The probes that can observe this stage, in catalog order.
    pub fn probes(self) -> impl Iterator<Item = &'static ProbeInfo> {
        PROBES.iter().filter(move |p| p.stage == Some(self))
    }
}

/// A tracepoint field the programs read; its byte offset comes from the
/// event's `format` file in tracefs at load time.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TpField {
    SendtoBuff = 0,
    SendtoLen,
    SendtoExitRet,
    SockSendSk,
    SockSendRet,
    FibTbId,
    FibErr,
    FibDev,
    NetDevQueueSkb,
    StartXmitSkb,
    XmitSkb,
    XmitRc,
    NetifRxEntrySkb,
    NetifRxExitRet,
    SoftirqRaiseVec,
    SoftirqEntryVec,
    SoftirqExitVec,
    NapiWork,
    NetifReceiveSkbSkb,
    SkDataReadySk,
    WakeupPid,
    CopySkb,
    CopyLen,
    RecvmsgRet,
    RecvfromRet,
    ConsumeSkbSkb,
    KfreeSkbSkb,
    KfreeReason,
    ForkParentPid,
    ForkChildPid,
    Fib6TbId,
    Fib6Err,
    Fib6Dev,
}

pub const TP_FIELD_COUNT: usize = 33;

/// For each [`TpField`], in order: the probe whose tracepoint holds it and
/// the field's name in the `format` file.
pub static TP_FIELDS: [(TpField, ProbeId, &str); TP_FIELD_COUNT] = [
    (TpField::SendtoBuff, ProbeId::SysEnterSendto, "buff"),
    (TpField::SendtoLen, ProbeId::SysEnterSendto, "len"),
    (TpField::SendtoExitRet, ProbeId::SysExitSendto, "ret"),
    (TpField::SockSendSk, ProbeId::SockSendLength, "sk"),
    (TpField::SockSendRet, ProbeId::SockSendLength, "ret"),
    (TpField::FibTbId, ProbeId::FibTableLookup, "tb_id"),
    (TpField::FibErr, ProbeId::FibTableLookup, "err"),
    (TpField::FibDev, ProbeId::FibTableLookup, "name"),
    (TpField::NetDevQueueSkb, ProbeId::NetDevQueue, "skbaddr"),
    (TpField::StartXmitSkb, ProbeId::NetDevStartXmit, "skbaddr"),
    (TpField::XmitSkb, ProbeId::NetDevXmit, "skbaddr"),
    (TpField::XmitRc, ProbeId::NetDevXmit, "rc"),
    (TpField::NetifRxEntrySkb, ProbeId::NetifRxEntry, "skbaddr"),
    (TpField::NetifRxExitRet, ProbeId::NetifRxExit, "ret"),
    (TpField::SoftirqRaiseVec, ProbeId::SoftirqRaise, "vec"),
    (TpField::SoftirqEntryVec, ProbeId::SoftirqEntry, "vec"),
    (TpField::SoftirqExitVec, ProbeId::SoftirqExit, "vec"),
    (TpField::NapiWork, ProbeId::NapiPoll, "work"),
    (
        TpField::NetifReceiveSkbSkb,
        ProbeId::NetifReceiveSkb,
        "skbaddr",
    ),
    (TpField::SkDataReadySk, ProbeId::SkDataReady, "skaddr"),
    (TpField::WakeupPid, ProbeId::SchedWakeup, "pid"),
    (TpField::CopySkb, ProbeId::SkbCopyDatagramIovec, "skbaddr"),
    (TpField::CopyLen, ProbeId::SkbCopyDatagramIovec, "len"),
    (TpField::RecvmsgRet, ProbeId::SysExitRecvmsg, "ret"),
    (TpField::RecvfromRet, ProbeId::SysExitRecvfrom, "ret"),
    (TpField::ConsumeSkbSkb, ProbeId::ConsumeSkb, "skbaddr"),
    (TpField::KfreeSkbSkb, ProbeId::KfreeSkb, "skbaddr"),
    (TpField::KfreeReason, ProbeId::KfreeSkb, "reason"),
    (
        TpField::ForkParentPid,
        ProbeId::SchedProcessFork,
        "parent_pid",
    ),
    (
        TpField::ForkChildPid,
        ProbeId::SchedProcessFork,
        "child_pid",
    ),
    (TpField::Fib6TbId, ProbeId::Fib6TableLookup, "tb_id"),
    (TpField::Fib6Err, ProbeId::Fib6TableLookup, "err"),
    (TpField::Fib6Dev, ProbeId::Fib6TableLookup, "name"),
];

/// Names of the maps shared by the programs and the loader.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const TARGETS: &str = "TARGETS";
    pub const CONFIG: &str = "CONFIG";
    pub const ECHOES: &str = "ECHOES";
    pub const AGG_ROWS: &str = "AGG_ROWS";
    pub const AGG_COUNT: &str = "AGG_COUNT";
}

/// Slots of the per-CPU `LOST` map.
pub mod counters {
    /// Events that did not fit in the ring buffer.
    pub const LOST_IDX: u32 = 0;
    /// Events the probes tried to emit (received + lost).
    pub const SUBMITTED_IDX: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_index_their_tables() {
        for (i, s) in STAGES.iter().enumerate() {
            assert_eq!(s.stage as usize, i, "{}", s.name);
            assert_eq!(Stage::from_name(s.name), Some(s.stage));
        }
        for (i, p) in PROBES.iter().enumerate() {
            assert_eq!(p.id as usize, i + 1, "{}", p.program);
            assert_eq!(ProbeId::from_u8(p.id as u8), Some(p.id));
        }
        assert_eq!(ProbeId::from_u8(0), None);
        assert_eq!(ProbeId::from_u8(PROBE_COUNT as u8 + 1), None);
        for (i, (f, _, _)) in TP_FIELDS.iter().enumerate() {
            assert_eq!(*f as usize, i);
        }
    }

    #[test]
    fn every_stage_is_observable_somehow() {
        for s in Stage::ALL {
            assert!(s.probes().next().is_some(), "{} has no probe", s.name());
        }
    }

    #[test]
    fn the_cards_stages_have_kprobes_and_fentry() {
        for s in [
            Stage::SockSendmsg,
            Stage::DevQueueXmit,
            Stage::LoopbackXmit,
            Stage::NetifRx,
            Stage::NetRxAction,
        ] {
            for b in [Backend::Kprobe, Backend::Fentry] {
                assert!(
                    s.probes().any(|p| p.backend() == b && !p.at_return),
                    "{} {}",
                    s.name(),
                    b.name()
                );
            }
        }
        assert!(
            PROBES
                .iter()
                .any(|p| p.functions().contains(&"__dev_queue_xmit"))
        );
    }

    #[test]
    fn program_names_are_unique() {
        for (i, a) in PROBES.iter().enumerate() {
            for b in &PROBES[i + 1..] {
                assert_ne!(a.program, b.program);
            }
        }
    }
}

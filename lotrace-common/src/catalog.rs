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

/// What the catalog knows of one stage.
#[derive(Debug)]
pub struct StageInfo {
    pub stage: Stage,
    /// The stage's name in reports and JSON.
    pub name: &'static str,
    /// One line on what the kernel does here.
    pub explain: &'static str,
    /// Kernel functions a function probe (fentry, kprobe) would attach to,
    /// preferred first; several because names move between kernels.
    pub functions: &'static [&'static str],
    /// Tracepoints that observe this stage, preferred first.
    pub tracepoints: &'static [ProbeId],
}

pub static STAGES: [StageInfo; STAGE_COUNT] = [
    StageInfo {
        stage: Stage::Sendto,
        name: "sendto",
        explain: "ping hands its ICMP echo request to the kernel with the sendto() system call.",
        functions: &["__sys_sendto"],
        tracepoints: &[ProbeId::SysEnterSendto],
    },
    StageInfo {
        stage: Stage::SockSendmsg,
        name: "sock_sendmsg",
        explain: "The socket layer passes the message to the protocol (raw_sendmsg or ping_v4_sendmsg); on loopback the whole transmit, and often the receive too, happens before it returns.",
        functions: &["sock_sendmsg", "__sock_sendmsg"],
        tracepoints: &[ProbeId::SockSendLength],
    },
    StageInfo {
        stage: Stage::Route,
        name: "route",
        explain: "The routing table is consulted: the local table matches 127.0.0.0/8 and picks the loopback device lo.",
        functions: &["ip_route_output_key_hash", "fib_table_lookup"],
        tracepoints: &[ProbeId::FibTableLookup],
    },
    StageInfo {
        stage: Stage::IpOutput,
        name: "ip_output",
        explain: "IP output: the header is finished, netfilter's OUTPUT and POSTROUTING hooks run and the neighbour layer adds the link header.",
        functions: &["ip_output", "ip_finish_output2"],
        tracepoints: &[],
    },
    StageInfo {
        stage: Stage::DevQueueXmit,
        name: "dev_queue_xmit",
        explain: "The packet is queued for transmission on the chosen device; lo has no qdisc, so it goes straight to the driver.",
        functions: &["__dev_queue_xmit", "dev_queue_xmit"],
        tracepoints: &[ProbeId::NetDevQueue],
    },
    StageInfo {
        stage: Stage::LoopbackXmit,
        name: "loopback_xmit",
        explain: "The loopback driver, a 'fake NIC': instead of putting bytes on a wire it hands the same skb back to the receive path.",
        functions: &["loopback_xmit"],
        tracepoints: &[ProbeId::NetDevStartXmit, ProbeId::NetDevXmit],
    },
    StageInfo {
        stage: Stage::NetifRx,
        name: "netif_rx",
        explain: "netif_rx puts the skb on this CPU's backlog queue (enqueue_to_backlog), as a NIC's interrupt handler would.",
        functions: &["netif_rx", "__netif_rx", "enqueue_to_backlog"],
        tracepoints: &[ProbeId::NetifRxEntry],
    },
    StageInfo {
        stage: Stage::SoftirqRaise,
        name: "softirq_raise",
        explain: "The backlog was idle, so the NET_RX softirq is raised to process it later, at the next bottom-half opportunity.",
        functions: &["raise_softirq_irqoff", "__raise_softirq_irqoff"],
        tracepoints: &[ProbeId::SoftirqRaise],
    },
    StageInfo {
        stage: Stage::NetRxAction,
        name: "net_rx_action",
        explain: "The NET_RX softirq runs: inline when bottom halves are re-enabled (often in ping's own task), or in ksoftirqd/N under load.",
        functions: &["net_rx_action"],
        tracepoints: &[ProbeId::SoftirqEntry, ProbeId::SoftirqExit],
    },
    StageInfo {
        stage: Stage::ProcessBacklog,
        name: "process_backlog",
        explain: "The backlog's NAPI poll function takes packets off the per-CPU queue, up to its budget.",
        functions: &["process_backlog"],
        tracepoints: &[ProbeId::NapiPoll],
    },
    StageInfo {
        stage: Stage::NetifReceiveSkb,
        name: "netif_receive_skb",
        explain: "The core receive path hands the packet to the protocol registered for its type: IPv4 or IPv6.",
        functions: &["__netif_receive_skb", "__netif_receive_skb_core"],
        tracepoints: &[ProbeId::NetifReceiveSkb],
    },
    StageInfo {
        stage: Stage::IpRcv,
        name: "ip_rcv",
        explain: "IP input: the header is checked, netfilter's PREROUTING and INPUT hooks run, and the packet is found to be for this host.",
        functions: &["ip_rcv", "ipv6_rcv"],
        tracepoints: &[],
    },
    StageInfo {
        stage: Stage::IcmpRcv,
        name: "icmp_rcv",
        explain: "The ICMP layer receives the message and dispatches on its type.",
        functions: &["icmp_rcv", "icmpv6_rcv"],
        tracepoints: &[],
    },
    StageInfo {
        stage: Stage::IcmpReply,
        name: "icmp_reply",
        explain: "The kernel itself answers the echo request: it builds the echo reply and sends it back down the same stack.",
        functions: &["icmp_echo", "icmp_reply", "icmpv6_echo_reply"],
        tracepoints: &[],
    },
    StageInfo {
        stage: Stage::SockDeliver,
        name: "sock_deliver",
        explain: "The reply is queued on ping's socket (raw_rcv or ping_rcv) and the socket is told data is ready.",
        functions: &["raw_rcv", "ping_rcv"],
        tracepoints: &[ProbeId::SkDataReady],
    },
    StageInfo {
        stage: Stage::Wakeup,
        name: "wakeup",
        explain: "ping was asleep waiting for the reply and is woken; absent when ping was still running, as when the softirq ran inline in its own sendto.",
        functions: &["try_to_wake_up"],
        tracepoints: &[ProbeId::SchedWakeup],
    },
    StageInfo {
        stage: Stage::CopyToUser,
        name: "copy_to_user",
        explain: "recvmsg copies the reply from the socket's queue into ping's buffer.",
        functions: &["skb_copy_datagram_iter"],
        tracepoints: &[ProbeId::SkbCopyDatagramIovec],
    },
    StageInfo {
        stage: Stage::Recvmsg,
        name: "recvmsg",
        explain: "The recvmsg() system call returns the reply to ping, which prints its line.",
        functions: &["__sys_recvmsg"],
        tracepoints: &[ProbeId::SysExitRecvmsg],
    },
    StageInfo {
        stage: Stage::Free,
        name: "free",
        explain: "The skb has done its job and is freed normally (consume_skb).",
        functions: &["consume_skb", "__consume_stateless_skb"],
        tracepoints: &[ProbeId::ConsumeSkb],
    },
    StageInfo {
        stage: Stage::Drop,
        name: "drop",
        explain: "The skb is dropped (kfree_skb); the kernel records why.",
        functions: &["kfree_skb_reason", "sk_skb_reason_drop"],
        tracepoints: &[ProbeId::KfreeSkb],
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
}

pub const PROBE_COUNT: usize = 21;

impl ProbeId {
    pub fn from_u8(v: u8) -> Option<ProbeId> {
        PROBES.iter().find(|p| p.id as u8 == v).map(|p| p.id)
    }

    pub fn info(self) -> &'static ProbeInfo {
        &PROBES[self as usize - 1]
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
}

#[derive(Debug)]
pub struct ProbeInfo {
    pub id: ProbeId,
    pub kind: ProbeKind,
    /// The eBPF program's symbol in the object.
    pub program: &'static str,
    /// The stage this probe reports, or `None` for a probe that only keeps
    /// the in-kernel filter's state.
    pub stage: Option<Stage>,
    /// The probe fires when its stage's function returns, not when it
    /// starts (its events close the stage rather than open it).
    pub at_return: bool,
    /// The probe is needed for the filter to work: without it no journey
    /// can be told apart, so the trace stops with an error.
    pub required: bool,
}

impl ProbeInfo {
    /// `category:name` for a tracepoint.
    pub fn attach_point(&self) -> (&'static str, &'static str) {
        match self.kind {
            ProbeKind::Tracepoint { category, name } => (category, name),
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
    }
}

pub static PROBES: [ProbeInfo; PROBE_COUNT] = [
    tp(
        ProbeId::SysEnterSendto,
        "syscalls",
        "sys_enter_sendto",
        "tp_sys_enter_sendto",
        Some(Stage::Sendto),
        false,
        false,
    ),
    tp(
        ProbeId::SysExitSendto,
        "syscalls",
        "sys_exit_sendto",
        "tp_sys_exit_sendto",
        None,
        false,
        false,
    ),
    tp(
        ProbeId::SockSendLength,
        "sock",
        "sock_send_length",
        "tp_sock_send_length",
        Some(Stage::SockSendmsg),
        true,
        false,
    ),
    tp(
        ProbeId::FibTableLookup,
        "fib",
        "fib_table_lookup",
        "tp_fib_table_lookup",
        Some(Stage::Route),
        false,
        false,
    ),
    tp(
        ProbeId::NetDevQueue,
        "net",
        "net_dev_queue",
        "tp_net_dev_queue",
        Some(Stage::DevQueueXmit),
        false,
        true,
    ),
    tp(
        ProbeId::NetDevStartXmit,
        "net",
        "net_dev_start_xmit",
        "tp_net_dev_start_xmit",
        Some(Stage::LoopbackXmit),
        false,
        false,
    ),
    tp(
        ProbeId::NetDevXmit,
        "net",
        "net_dev_xmit",
        "tp_net_dev_xmit",
        Some(Stage::LoopbackXmit),
        true,
        false,
    ),
    tp(
        ProbeId::NetifRxEntry,
        "net",
        "netif_rx_entry",
        "tp_netif_rx_entry",
        Some(Stage::NetifRx),
        false,
        false,
    ),
    tp(
        ProbeId::NetifRxExit,
        "net",
        "netif_rx_exit",
        "tp_netif_rx_exit",
        None,
        false,
        false,
    ),
    tp(
        ProbeId::SoftirqRaise,
        "irq",
        "softirq_raise",
        "tp_softirq_raise",
        Some(Stage::SoftirqRaise),
        false,
        false,
    ),
    tp(
        ProbeId::SoftirqEntry,
        "irq",
        "softirq_entry",
        "tp_softirq_entry",
        Some(Stage::NetRxAction),
        false,
        false,
    ),
    tp(
        ProbeId::SoftirqExit,
        "irq",
        "softirq_exit",
        "tp_softirq_exit",
        Some(Stage::NetRxAction),
        true,
        false,
    ),
    tp(
        ProbeId::NapiPoll,
        "napi",
        "napi_poll",
        "tp_napi_poll",
        Some(Stage::ProcessBacklog),
        true,
        false,
    ),
    tp(
        ProbeId::NetifReceiveSkb,
        "net",
        "netif_receive_skb",
        "tp_netif_receive_skb",
        Some(Stage::NetifReceiveSkb),
        false,
        false,
    ),
    tp(
        ProbeId::SkDataReady,
        "sock",
        "sk_data_ready",
        "tp_sk_data_ready",
        Some(Stage::SockDeliver),
        false,
        false,
    ),
    tp(
        ProbeId::SchedWakeup,
        "sched",
        "sched_wakeup",
        "tp_sched_wakeup",
        Some(Stage::Wakeup),
        false,
        false,
    ),
    tp(
        ProbeId::SkbCopyDatagramIovec,
        "skb",
        "skb_copy_datagram_iovec",
        "tp_skb_copy_datagram_iovec",
        Some(Stage::CopyToUser),
        false,
        false,
    ),
    tp(
        ProbeId::SysExitRecvmsg,
        "syscalls",
        "sys_exit_recvmsg",
        "tp_sys_exit_recvmsg",
        Some(Stage::Recvmsg),
        true,
        false,
    ),
    tp(
        ProbeId::ConsumeSkb,
        "skb",
        "consume_skb",
        "tp_consume_skb",
        Some(Stage::Free),
        false,
        false,
    ),
    tp(
        ProbeId::KfreeSkb,
        "skb",
        "kfree_skb",
        "tp_kfree_skb",
        Some(Stage::Drop),
        false,
        false,
    ),
    tp(
        ProbeId::SchedProcessFork,
        "sched",
        "sched_process_fork",
        "tp_sched_process_fork",
        None,
        false,
        true,
    ),
];

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
    ConsumeSkbSkb,
    KfreeSkbSkb,
    KfreeReason,
    ForkParentPid,
    ForkChildPid,
}

pub const TP_FIELD_COUNT: usize = 29;

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
];

/// Names of the maps shared by the programs and the loader.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const TARGETS: &str = "TARGETS";
    pub const CONFIG: &str = "CONFIG";
}

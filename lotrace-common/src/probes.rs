//! What the probe table in [`crate::catalog`] expands to on the command
//! line's side: [`ProbeId`], [`PROBES`], [`TpField`] and [`TP_FIELDS`].
//! The eBPF crate expands the same table into its programs, so an id, its
//! catalog row and its program cannot drift apart.

use crate::catalog::Stage;

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

#[derive(Clone, Copy, Debug)]
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

    /// What runs this probe's program anywhere on the machine, traced or
    /// not: the events whose cost it adds to. A syscall tracepoint costs
    /// more than its own calls: while any is attached, every system call
    /// of every process takes the kernel's tracing slow path.
    pub fn fires_on(&self) -> &'static str {
        match self.kind {
            ProbeKind::Tracepoint { category, name } => match (category, name) {
                ("syscalls", _) => "every system call of every process",
                ("sched", "sched_wakeup") => "every task wake-up",
                ("sched", _) => "every fork and exit",
                ("irq", _) => "every softirq (any kind)",
                ("skb", "skb_copy_datagram_iovec") => "every datagram copied to a process",
                ("skb", _) => "every packet buffer freed",
                ("fib", _) | ("fib6", _) => "every route lookup",
                ("sock", "sk_data_ready") => "every socket's data-ready call",
                ("sock", "inet_sock_set_state") => "every TCP state change",
                ("sock", _) => "every socket send or receive",
                ("tcp", "tcp_probe") => "every TCP receive (established)",
                ("tcp", "tcp_sendmsg_locked") => "every buffer a TCP send fills",
                ("tcp", "tcp_retransmit_skb") => "every TCP retransmission",
                ("napi", _) => "every NAPI poll",
                _ => "every packet of every device",
            },
            ProbeKind::Kprobe { .. } | ProbeKind::Fentry { .. } => "every call of its function",
        }
    }

    /// The tracepoint fields this probe reads, each with where a raw
    /// tracepoint finds it (`None`: the table does not say).
    pub fn raw_specs(&self) -> impl Iterator<Item = (TpField, Option<RawSpec>)> + '_ {
        TP_FIELDS
            .iter()
            .zip(TP_RAW.iter())
            .filter(move |((_, p, _), _)| *p == self.id)
            .map(|((f, _, _), raw)| (*f, *raw))
    }

    /// The kernel functions a function probe may attach to, preferred first.
    pub fn functions(&self) -> &'static [&'static str] {
        match self.kind {
            ProbeKind::Tracepoint { .. } => &[],
            ProbeKind::Kprobe { functions } | ProbeKind::Fentry { functions } => functions,
        }
    }
}

impl ProbeId {
    pub fn from_u8(v: u8) -> Option<ProbeId> {
        PROBES.get((v as usize).wrapping_sub(1)).map(|p| p.id)
    }

    pub fn info(self) -> &'static ProbeInfo {
        &PROBES[self as usize - 1]
    }
}

impl Stage {
    /// The probes that can observe this stage, in catalog order.
    pub fn probes(self) -> impl Iterator<Item = &'static ProbeInfo> {
        let shared = self.shares_tracepoints_of();
        PROBES.iter().filter(move |p| {
            p.stage == Some(self)
                || (shared.is_some() && p.stage == shared && p.tracepoint().is_some())
        })
    }
}

/// Where a raw tracepoint's program finds a field: the tracepoint's
/// argument `arg` (by position in `TP_PROTO`), then, for each name of
/// `path`, that member of the struct the value points to; the last member
/// is the field (read at its address, never followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSpec {
    pub arg: u8,
    pub path: &'static [&'static str],
}

/// The words a table line may end with, before its handler.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy)]
enum Flag {
    /// A tracepoint that fires as its stage's function returns (function
    /// probes say so by their kind: kretprobe, fexit).
    at_return,
    /// See [`ProbeInfo::required`].
    required,
}

const fn has(flags: &[Flag], f: Flag) -> bool {
    let mut i = 0;
    while i < flags.len() {
        if flags[i] as u8 == f as u8 {
            return true;
        }
        i += 1;
    }
    false
}

/// The table's rows in id order, wherever their lines sit in the table
/// (lines are grouped by stage, ids are numbered in the order probes were
/// added). Fails the build if two probes share an id or the ids leave a gap.
const fn by_id<const N: usize>(rows: [ProbeInfo; N]) -> [ProbeInfo; N] {
    let mut out = rows;
    let mut filled = [false; N];
    let mut i = 0;
    while i < N {
        let id = rows[i].id as usize;
        assert!(
            id >= 1 && id <= N,
            "probe ids must run from 1 to the number of probes"
        );
        assert!(!filled[id - 1], "two probes share an id");
        filled[id - 1] = true;
        out[id - 1] = rows[i];
        i += 1;
    }
    out
}

macro_rules! probe_kind {
    (tracepoint ($category:ident : $name:ident)) => {
        (
            ProbeKind::Tracepoint {
                category: stringify!($category),
                name: stringify!($name),
            },
            false,
        )
    };
    (kprobe [$($f:ident),+]) => {
        (ProbeKind::Kprobe { functions: &[$(stringify!($f)),+] }, false)
    };
    (kretprobe [$($f:ident),+]) => {
        (ProbeKind::Kprobe { functions: &[$(stringify!($f)),+] }, true)
    };
    (fentry [$($f:ident),+]) => {
        (ProbeKind::Fentry { functions: &[$(stringify!($f)),+] }, false)
    };
    (fexit [$($f:ident),+]) => {
        (ProbeKind::Fentry { functions: &[$(stringify!($f)),+] }, true)
    };
}

macro_rules! probe_stage {
    (_) => {
        None
    };
    ($stage:ident) => {
        Some(Stage::$stage)
    };
}

/// Expands the probe table's records into the catalog's types and rows;
/// see [`crate::probe_table`] for a line's parts.
macro_rules! raw_spec {
    ([]) => {
        None
    };
    ([$arg:literal $($m:ident)*]) => {
        Some(RawSpec {
            arg: $arg,
            path: &[$(stringify!($m)),*],
        })
    };
}

macro_rules! probe_catalog {
    ($(
        [$id:ident $n:literal $program:ident $kind:ident $target:tt [$($field:ident $fname:ident [$($raw:tt)*])*]
         [$($argn:literal)*] $stage:tt $group:literal [$($flag:ident)*] $handler:path]
    )*) => {
        /// One eBPF program: an attach point and what it observes. The
        /// values are stored in record files: they never change.
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum ProbeId {
            $($id = $n,)*
        }

        pub const PROBE_COUNT: usize = [$(ProbeId::$id),*].len();

        pub static PROBES: [ProbeInfo; PROBE_COUNT] = by_id([$(
            ProbeInfo {
                id: ProbeId::$id,
                kind: probe_kind!($kind $target).0,
                program: stringify!($program),
                stage: probe_stage!($stage),
                at_return: probe_kind!($kind $target).1
                    || has(&[$(Flag::$flag),*], Flag::at_return),
                required: has(&[$(Flag::$flag),*], Flag::required),
                group: $group,
            },
        )*]);

        /// A tracepoint field the programs read; its byte offset comes
        /// from the event's `format` file in tracefs at load time.
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum TpField {
            $($($field,)*)*
        }

        pub const TP_FIELD_COUNT: usize = [$($(TpField::$field,)*)*].len();

        /// For each [`TpField`], in order: the probe whose tracepoint
        /// holds it and the field's name in the `format` file.
        pub static TP_FIELDS: [(TpField, ProbeId, &str); TP_FIELD_COUNT] = [
            $($((TpField::$field, ProbeId::$id, stringify!($fname)),)*)*
        ];

        /// For each [`TpField`], in order: where a raw tracepoint finds it,
        /// if the table says.
        pub static TP_RAW: [Option<RawSpec>; TP_FIELD_COUNT] = [
            $($(raw_spec!([$($raw)*]),)*)*
        ];
    };
}

crate::probe_table!(probe_catalog);

// `Config::ret_probes` holds one bit per probe id.
const _: () = assert!(PROBE_COUNT <= 256);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_index_their_tables() {
        for (i, p) in PROBES.iter().enumerate() {
            assert_eq!(p.id as usize, i + 1, "{}", p.program);
            assert_eq!(ProbeId::from_u8(p.id as u8), Some(p.id));
        }
        assert_eq!(ProbeId::from_u8(0), None);
        assert_eq!(ProbeId::from_u8(PROBE_COUNT as u8 + 1), None);
        for (i, (f, p, _)) in TP_FIELDS.iter().enumerate() {
            assert_eq!(*f as usize, i);
            assert!(
                p.info().tracepoint().is_some(),
                "{f:?} is not on a tracepoint"
            );
        }
    }

    /// Record files store probe ids: a renumbered probe would replay as
    /// another one.
    #[test]
    fn record_file_ids_keep_their_values() {
        for (id, program) in [
            (1, "tp_sys_enter_sendto"),
            (5, "tp_net_dev_queue"),
            (11, "tp_softirq_entry"),
            (21, "tp_sched_process_fork"),
            (22, "kp_sock_sendmsg"),
            (26, "kp_loopback_xmit"),
            (41, "fe_sock_sendmsg"),
            (59, "fe_copy_datagram"),
            (60, "tp_sys_exit_recvfrom"),
            (65, "tp_fib6_table_lookup"),
            (75, "fe_rawv6_rcv"),
            (76, "tp_sock_recv_length"),
        ] {
            assert_eq!(PROBES[id - 1].program, program);
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
    fn program_names_are_unique_and_say_their_kind() {
        for (i, a) in PROBES.iter().enumerate() {
            for b in &PROBES[i + 1..] {
                assert_ne!(a.program, b.program);
            }
            let prefix = match (a.backend(), a.at_return) {
                (Backend::Tracepoint, _) => "tp_",
                (Backend::Kprobe, false) => "kp_",
                (Backend::Kprobe, true) => "kr_",
                (Backend::Fentry, false) => "fe_",
                (Backend::Fentry, true) => "fx_",
            };
            assert!(a.program.starts_with(prefix), "{}", a.program);
            if let Some((_, name)) = a.tracepoint() {
                assert_eq!(&a.program[3..], name);
            }
        }
    }
}

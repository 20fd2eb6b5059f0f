//! The programs: one per line of the probe table
//! (`lotrace_common::probe_table!`), named and attached as the line says,
//! each calling its line's handler with the context, its `ProbeId` and the
//! fields or arguments the line lists.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, raw_tracepoint, tracepoint},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
};
use lotrace_common::{ProbeId, TpField};

use crate::{
    filter,
    kernel::{RawTp, fentry_arg, fexit_ret, floor},
    listen,
    stages::{free, receive, recv, route, send, socket, softirq, transmit},
};

/// A raw tracepoint's argument where a field starts (0 when the table
/// gives none: such a probe is never attached raw).
macro_rules! raw_arg {
    ($ctx:ident []) => {
        0u64
    };
    ($ctx:ident [$arg:literal $($m:ident)*]) => {
        $ctx.arg::<u64>($arg)
    };
}

/// One program: `kind id program target [tracepoint fields] [argument
/// indices] handler`. A tracepoint line makes two: the classic one, and
/// the raw one, named after the tracepoint.
macro_rules! program {
    (tracepoint $id:ident $program:ident ($cat:ident : $name:ident) [$($field:ident [$($raw:tt)*])*] [] $handler:path) => {
        #[tracepoint]
        pub fn $program(ctx: TracePointContext) -> u32 {
            if floor() {
                return 0;
            }
            $handler(&ctx, ProbeId::$id $(, TpField::$field)*);
            0
        }

        #[raw_tracepoint]
        pub fn $name(ctx: RawTracePointContext) -> u32 {
            if floor() {
                return 0;
            }
            let raw = RawTp {
                ctx: &ctx,
                args: [$((TpField::$field, raw_arg!(ctx [$($raw)*]))),*],
            };
            $handler(&raw, ProbeId::$id $(, TpField::$field)*);
            0
        }
    };
    (kprobe $id:ident $program:ident $target:tt [] [$($n:literal)*] $handler:path) => {
        #[kprobe]
        pub fn $program(ctx: ProbeContext) -> u32 {
            if floor() {
                return 0;
            }
            $handler(&ctx, ProbeId::$id $(, ctx.arg::<u64>($n).unwrap_or(0))*);
            0
        }
    };
    (kretprobe $id:ident $program:ident $target:tt [] [] $handler:path) => {
        #[kretprobe]
        pub fn $program(ctx: RetProbeContext) -> u32 {
            if floor() {
                return 0;
            }
            $handler(&ctx, ProbeId::$id, ctx.ret::<i64>());
            0
        }
    };
    (fentry $id:ident $program:ident $target:tt [] [$($n:literal)*] $handler:path) => {
        #[fentry]
        pub fn $program(ctx: FEntryContext) -> u32 {
            if floor() {
                return 0;
            }
            $handler(&ctx, ProbeId::$id $(, fentry_arg(&ctx, $n))*);
            0
        }
    };
    (fexit $id:ident $program:ident $target:tt [] [] $handler:path) => {
        #[fexit]
        pub fn $program(ctx: FExitContext) -> u32 {
            if floor() {
                return 0;
            }
            $handler(&ctx, ProbeId::$id, fexit_ret(&ctx, ProbeId::$id));
            0
        }
    };
}

/// The whole table, one record a line (see `probe_table!`).
macro_rules! programs {
    ($(
        [$id:ident $n:literal $program:ident $kind:ident $target:tt [$($field:ident $fname:ident [$($raw:tt)*])*]
         [$($argn:literal)*] $stage:tt $group:literal [$($flag:ident)*] $handler:path]
    )*) => {
        $(program!($kind $id $program $target [$($field [$($raw)*])*] [$($argn)*] $handler);)*
    };
}

lotrace_common::probe_table!(programs);

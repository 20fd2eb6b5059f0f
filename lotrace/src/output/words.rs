//! Words shared by every output form: a stage's detail, an outcome, where
//! the softirq ran, an errno.

use crate::{
    model::{
        detail::StageDetail,
        journey::{Context, Hop, Outcome, SoftirqWhere},
        meta::Meta,
    },
    output::fmt_ns,
};

/// A few words on what a hop's detail means.
pub fn detail(h: &Hop, meta: &Meta) -> Option<String> {
    let words = h.detail.as_ref().and_then(|d| detail_words(d, meta));
    match (words, h.fragment) {
        (Some(w), true) => Some(format!("{w}, a fragment")),
        (None, true) => Some("a fragment".to_string()),
        (w, false) => w,
    }
}

/// A stage's detail in words; `None` when there is nothing to say.
pub fn detail_words(d: &StageDetail, meta: &Meta) -> Option<String> {
    Some(match d {
        // fib_table_lookup's "nothing in this table".
        StageDetail::Route {
            table,
            next_hop: Err(err),
        } if *err == -libc::EAGAIN => format!("table {table}: no matching route"),
        StageDetail::Route {
            table,
            next_hop: Err(err),
        } => format!("table {table}: {}", errno_words(*err as i64)),
        StageDetail::Route {
            table,
            next_hop: Ok(dev),
        } => format!("table {table}, next hop dev {dev}"),
        StageDetail::Drop { reason } => format!("dropped: {}", meta.drop_reason(*reason)),
        StageDetail::Ran { ns } => format!("ran {}", fmt_ns(*ns)),
        StageDetail::Polled { packets } => format!("{packets} packet(s) polled"),
        StageDetail::Woke { pid } => format!("woke pid {pid}"),
        StageDetail::Failed { errno } => format!("failed: {}", errno_words(*errno)),
        StageDetail::Bytes(n) => format!("{n} bytes"),
        StageDetail::Transmit { dev: Some(dev), .. } => format!("dev {dev}"),
        StageDetail::Transmit { dev: None, .. } => return None,
        // Said by the leg's softirq line (its wait).
        StageDetail::InRun { .. } => return None,
    })
}

/// `-101` → `ENETUNREACH (error -101)`.
pub fn errno_words(e: i64) -> String {
    let name = match (-e) as i32 {
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::EAGAIN => "EAGAIN",
        libc::ENOBUFS => "ENOBUFS",
        _ => "error",
    };
    format!("{name} (error {e})")
}

/// Where a leg's NET_RX softirq ran, and how it was entered.
pub fn softirq_words(s: &SoftirqWhere) -> String {
    let mut w = match s.context {
        Context::Ksoftirqd => format!("in {} (handed off to the softirq thread)", s.comm),
        Context::BacklogThread => format!(
            "in {} on CPU {} (the backlog thread, no softirq)",
            s.comm, s.cpu
        ),
        _ => format!("inline in {}/{} on CPU {}", s.comm, s.pid, s.cpu),
    };
    match s.entered {
        Some("local_bh_enable") => w.push_str(", entered on local_bh_enable in its own send"),
        Some("another_task") => w.push_str(
            ", entered on the back of that task (its local_bh_enable or an interrupt's exit)",
        ),
        _ => {}
    }
    if let Some(ns) = s.wait_ns {
        w.push_str(&format!(", {} after the enqueue", fmt_ns(ns)));
    }
    w
}

/// The outcome in words.
pub fn outcome_words(o: &Outcome, meta: &Meta) -> String {
    match o {
        Outcome::Answered => "answered".into(),
        Outcome::Dropped { reason, after } => format!(
            "dropped{}: {}",
            after
                .map(|s| format!(" after {}", s.name()))
                .unwrap_or_default(),
            meta.drop_reason(*reason)
        ),
        Outcome::NoRoute { .. } => "no route: the packet was never built".into(),
        Outcome::Unanswered => "no read of a reply seen".into(),
    }
}

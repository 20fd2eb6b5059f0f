//! Words shared by every output form: a stage's detail, an outcome, where
//! the softirq ran, an errno.

use lotrace_common::Stage;

use crate::{
    model::{
        journey::{Context, Hop, Outcome, SoftirqWhere},
        meta::Meta,
    },
    output::fmt_ns,
};

/// A few words on what a hop's stage-specific value means.
pub fn detail(h: &Hop, meta: &Meta) -> Option<String> {
    let at_return = h.probe.info().at_return;
    match h.stage {
        Stage::Route => {
            let err = h.len as i32;
            Some(if err == -libc::EAGAIN {
                // fib_table_lookup's "nothing in this table".
                format!("table {}: no matching route", h.aux2)
            } else if err != 0 {
                format!("table {}: {}", h.aux2, errno_words(err as i64))
            } else {
                format!("table {}, next hop dev {}", h.aux2, route_dev(h))
            })
        }
        Stage::Drop => Some(format!("dropped: {}", meta.drop_reason(h.aux))),
        Stage::NetRxAction if at_return => Some(format!("ran {}", fmt_ns(h.aux))),
        Stage::ProcessBacklog if at_return => Some(format!("{} packet(s) polled", h.aux)),
        Stage::Wakeup => Some(format!("woke pid {}", h.aux)),
        Stage::Recvmsg | Stage::SockSendmsg if at_return && (h.aux as i64) < 0 => {
            Some(format!("failed: {}", errno_words(h.aux as i64)))
        }
        Stage::Recvmsg | Stage::SockSendmsg if at_return => Some(format!("{} bytes", h.len)),
        Stage::CopyToUser => Some(format!("{} bytes", h.len)),
        Stage::DevQueueXmit | Stage::LoopbackXmit if !at_return && h.aux != 0 => {
            Some(format!("dev {}", xmit_dev(h)))
        }
        _ => None,
    }
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

/// A NUL-padded device name.
fn dev_name(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The device a packet is transmitted on, carried in the event's aux.
pub fn xmit_dev(h: &Hop) -> String {
    dev_name(&h.aux.to_le_bytes())
}

/// The device a route lookup chose, carried in the event's skb and aux.
pub fn route_dev(h: &Hop) -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&h.skb.to_le_bytes());
    b[8..].copy_from_slice(&h.aux.to_le_bytes());
    dev_name(&b)
}

pub fn softirq_words(s: &SoftirqWhere) -> String {
    let mut w = match s.context {
        Context::Ksoftirqd => format!("in {} (handed off to the softirq thread)", s.comm),
        _ => format!("inline in {}/{} on CPU {}", s.comm, s.pid, s.cpu),
    };
    match s.entered {
        Some("local_bh_enable") => w.push_str(", entered on local_bh_enable in its own send"),
        Some("irq_exit") => w.push_str(", entered on irq_exit"),
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
        Outcome::Unanswered => "no reply seen".into(),
    }
}

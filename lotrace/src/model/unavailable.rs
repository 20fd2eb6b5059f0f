//! Why a probe, or a whole backend, cannot be used on this kernel: typed
//! where it is found out, put into words here and nowhere else.

use std::fmt;

/// Why something cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// Not looked at yet.
    NotChecked,
    /// Only root can tell.
    NeedsRoot(RootOnly),
    /// tracefs is not mounted.
    TracefsNotMounted,
    /// The kernel has no such tracepoint.
    NoTracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// No kprobe PMU at `pmu`: the kernel is built without `CONFIG_KPROBES`.
    NoKprobePmu { pmu: &'static str },
    /// None of these functions is in /proc/kallsyms.
    NotInKallsyms(&'static [&'static str]),
    /// None of these functions is described in the kernel's BTF.
    NotInBtf(&'static [&'static str]),
    /// Not one of the functions fentry could probe is in the kernel's BTF,
    /// so there is nothing to try a test program on.
    NoFentryTarget,
    /// The function is in BTF, but the function tracer cannot attach to it
    /// (not in `available_filter_functions`).
    NotTraceable(&'static str),
    /// Not tried: another backend was asked for.
    NotTried { backend: &'static str },
    /// The kernel refused to load the program.
    Refused(Refusal),
    /// Finding out failed, in the words of what failed.
    CheckFailed(String),
}

/// What only root can find out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootOnly {
    /// Whether tracefs is there (it is not mounted, or not readable).
    Tracefs,
    /// Whether an fentry program loads.
    FentryLoad,
}

/// The kernel's answer to loading a program, with the verifier's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The errno of the refusal, when the kernel gave one.
    pub errno: Option<i32>,
    /// Otherwise, what failed, in the loader's words.
    pub message: String,
    /// What the verifier said, possibly nothing.
    pub verifier_log: String,
}

impl Refusal {
    /// The verifier's log, when it said anything.
    pub fn log(&self) -> Option<&str> {
        let log = self.verifier_log.trim_end();
        (!log.is_empty()).then_some(log)
    }

    /// The verifier checked the program and found it unsafe or malformed
    /// (EACCES or EINVAL with its reasons in the log), as opposed to the
    /// kernel not letting lotrace load such programs at all.
    pub fn by_verifier(&self) -> bool {
        matches!(self.errno, Some(libc::EACCES | libc::EINVAL)) && self.log().is_some()
    }

    /// The last `n` lines of the log (all of them when `n` is `None`), and
    /// how many lines it has.
    pub fn log_lines(&self, n: Option<usize>) -> (Vec<&str>, usize) {
        let lines: Vec<&str> = self.log().map(|l| l.lines().collect()).unwrap_or_default();
        let total = lines.len();
        let skip = n.map_or(0, |n| total.saturating_sub(n));
        (lines[skip..].to_vec(), total)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = if self.by_verifier() {
            "the verifier rejected the program"
        } else {
            "the kernel refused to load the program"
        };
        match self.errno {
            Some(code) => match errno_name(code) {
                Some(name) => write!(f, "{who} ({name})"),
                None => write!(f, "{who} ({})", std::io::Error::from_raw_os_error(code)),
            },
            None => write!(f, "{who} ({})", self.message),
        }
    }
}

fn errno_name(code: i32) -> Option<&'static str> {
    Some(match code {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ENOENT => "ENOENT",
        // ENOTSUPP, the kernel's own, as the bpf syscall returns it.
        libc::EOPNOTSUPP | 524 => "EOPNOTSUPP",
        _ => return None,
    })
}

impl Unavailable {
    /// The refusal, when the kernel refused a program.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Unavailable::Refused(r) => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NotChecked => f.write_str("not checked"),
            Unavailable::NeedsRoot(RootOnly::Tracefs) => {
                f.write_str("not checked: tracefs is not mounted or not readable without root")
            }
            Unavailable::NeedsRoot(RootOnly::FentryLoad) => {
                f.write_str("not checked: loading a test program needs root")
            }
            Unavailable::TracefsNotMounted => f.write_str("tracefs is not mounted"),
            Unavailable::NoTracepoint { category, name } => {
                write!(f, "this kernel has no tracepoint {category}:{name}")
            }
            Unavailable::NoKprobePmu { pmu } => write!(
                f,
                "this kernel is built without CONFIG_KPROBES (no kprobe PMU at {pmu})"
            ),
            Unavailable::NotInKallsyms(fns) => write!(
                f,
                "no function {} in /proc/kallsyms (inlined or renamed on this kernel)",
                fns.join(" or ")
            ),
            Unavailable::NotInBtf(fns) => {
                write!(f, "no function {} in the kernel's BTF", fns.join(" or "))
            }
            Unavailable::NoFentryTarget => f.write_str("no probed function is in the kernel's BTF"),
            Unavailable::NotTraceable(func) => write!(
                f,
                "{func} cannot be traced (not in available_filter_functions)"
            ),
            Unavailable::NotTried { backend } => write!(f, "not tried: --backend {backend}"),
            Unavailable::Refused(r) => r.fmt(f),
            Unavailable::CheckFailed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Unavailable {}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(errno: Option<i32>, log: &str) -> Refusal {
        Refusal {
            errno,
            message: "program not found".into(),
            verifier_log: log.into(),
        }
    }

    #[test]
    fn words_for_each_reason() {
        let pmu = "/sys/bus/event_source/devices/kprobe";
        assert_eq!(
            Unavailable::NoKprobePmu { pmu }.to_string(),
            "this kernel is built without CONFIG_KPROBES (no kprobe PMU at /sys/bus/event_source/devices/kprobe)"
        );
        assert_eq!(
            Unavailable::Refused(refusal(Some(libc::EPERM), "")).to_string(),
            "the kernel refused to load the program (EPERM)"
        );
        assert_eq!(
            Unavailable::Refused(refusal(None, "")).to_string(),
            "the kernel refused to load the program (program not found)"
        );
        assert_eq!(
            Unavailable::Refused(refusal(Some(libc::E2BIG), "")).to_string(),
            format!(
                "the kernel refused to load the program ({})",
                std::io::Error::from_raw_os_error(libc::E2BIG)
            )
        );
        assert_eq!(
            Unavailable::NotInKallsyms(&["__dev_queue_xmit", "dev_queue_xmit"]).to_string(),
            "no function __dev_queue_xmit or dev_queue_xmit in /proc/kallsyms (inlined or renamed on this kernel)"
        );
        assert_eq!(
            Unavailable::NoTracepoint {
                category: "net",
                name: "netif_rx_entry"
            }
            .to_string(),
            "this kernel has no tracepoint net:netif_rx_entry"
        );
    }

    #[test]
    fn a_verifier_rejection_keeps_its_log() {
        let log = (1..=30)
            .map(|i| format!("{i}: R1 invalid mem access"))
            .collect::<Vec<_>>()
            .join("\n");
        let r = refusal(Some(libc::EACCES), &format!("{log}\n"));
        assert!(r.by_verifier());
        assert_eq!(
            Unavailable::Refused(r.clone()).to_string(),
            "the verifier rejected the program (EACCES)"
        );
        let (tail, total) = r.log_lines(Some(20));
        assert_eq!((tail.len(), total), (20, 30));
        assert_eq!(tail[0], "11: R1 invalid mem access");
        assert_eq!(r.log_lines(None).0.len(), 30);
        // Permission, not the verifier: the log is kept but the words stay.
        let r = refusal(Some(libc::EPERM), "attach_btf_id 123 is not a function\n");
        assert!(!r.by_verifier());
        assert_eq!(r.log(), Some("attach_btf_id 123 is not a function"));
    }
}

//! The watchdog: a guest is hung when it prints nothing for the silence
//! limit, overdue past its deadline; and the end of its console for the
//! error that says so.

use std::{path::Path, time::Duration};

use super::{DEADLINE, SILENCE, TAIL_LINES};

/// The watchdog's judgement of a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Running,
    /// Nothing new for the whole silence limit.
    Silent,
    /// Alive, but past the deadline.
    Overdue,
}

impl Verdict {
    pub(super) fn describe(self) -> String {
        match self {
            Verdict::Running => "ran".into(),
            Verdict::Silent => format!("printed nothing for {}s", SILENCE.as_secs()),
            Verdict::Overdue => format!("did not finish within {}s", DEADLINE.as_secs()),
        }
    }
}

/// Follows how much a guest has printed, and when that last changed.
pub(super) struct Watch {
    silence: Duration,
    deadline: Duration,
    seen: u64,
    changed: Duration,
}

impl Watch {
    pub(super) fn new(silence: Duration, deadline: Duration) -> Watch {
        Watch {
            silence,
            deadline,
            seen: 0,
            changed: Duration::ZERO,
        }
    }

    /// `seen` is the guest's output so far, in bytes over all its signs of
    /// life; `now` is the time since it was started.
    pub(super) fn observe(&mut self, now: Duration, seen: u64) -> Verdict {
        if seen != self.seen {
            self.seen = seen;
            self.changed = now;
        }
        if now.saturating_sub(self.changed) >= self.silence {
            Verdict::Silent
        } else if now >= self.deadline {
            Verdict::Overdue
        } else {
            Verdict::Running
        }
    }
}

/// The end of a guest's console, for an error message.
pub(super) fn console_tail(console: &Path) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into_owned();
    match tail(&text, TAIL_LINES) {
        t if t.is_empty() => format!("its console ({}) is empty", console.display()),
        t => format!(
            "the last lines of its console ({}):\n{t}",
            console.display()
        ),
    }
}

/// The last `n` lines of a console log, without carriage returns.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_that_keeps_printing_runs_until_its_deadline() {
        let s = Duration::from_secs;
        let mut w = Watch::new(s(60), s(600));
        let mut seen = 0;
        for t in (0..600).step_by(30) {
            seen += 10;
            assert_eq!(w.observe(s(t), seen), Verdict::Running, "at {t}s");
        }
        assert_eq!(w.observe(s(600), seen + 1), Verdict::Overdue);
    }

    #[test]
    fn a_guest_silent_for_a_minute_is_hung() {
        let s = Duration::from_secs;
        let mut w = Watch::new(s(60), s(600));
        assert_eq!(w.observe(s(1), 100), Verdict::Running);
        assert_eq!(w.observe(s(30), 200), Verdict::Running);
        // Quiet from 30 s on: still running at 89 s, hung at 90 s.
        assert_eq!(w.observe(s(89), 200), Verdict::Running);
        assert_eq!(w.observe(s(90), 200), Verdict::Silent);
        // A guest that never prints anything is hung a minute after start.
        let mut w = Watch::new(s(60), s(600));
        assert_eq!(w.observe(s(59), 0), Verdict::Running);
        assert_eq!(w.observe(s(60), 0), Verdict::Silent);
    }

    #[test]
    fn the_tail_of_a_console_is_its_last_lines() {
        let console = "[    0.1] a\r\n[    0.2] b\r\n\r\n[   31.0] rcu: stall\r\n[   52.0] watchdog: soft lockup\r\n";
        assert_eq!(
            tail(console, 2),
            "[   31.0] rcu: stall\n[   52.0] watchdog: soft lockup"
        );
        assert_eq!(tail(console, 20).lines().count(), 4);
        assert_eq!(tail("no newline at the end", 20), "no newline at the end");
        assert_eq!(tail("", 20), "");
    }
}

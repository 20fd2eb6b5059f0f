//! Helpers for the integration tests: run the real binary, parse its JSON.

#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Command, Output},
    sync::{Mutex, MutexGuard},
};

use lotrace_common::{
    Stage,
    order::{CARD, REPLY, REQUEST},
};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_lotrace");

/// Traces load programs into one kernel: one test at a time, so that
/// "nothing left loaded" checks see only their own run.
static KERNEL: Mutex<()> = Mutex::new(());

pub fn kernel_lock() -> MutexGuard<'static, ()> {
    KERNEL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For a test that loads eBPF programs: true, after saying so in one line,
/// when it cannot run here and must return at once.
pub fn skip_without_root() -> bool {
    if is_root() {
        return false;
    }
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("a test")
        .to_string();
    // Written to stderr itself: the test harness hides what a passing test
    // prints through eprintln!.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped: needs root to load eBPF programs (run `cargo xtask test` as root)"
    );
    true
}

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(st.success(), "{args:?} failed");
}

/// A network namespace of the test's, with lo up, removed on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("lotrace-{tag}-{}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec NAME ARGS...`, to be run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }

    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.0];
        all.extend_from_slice(args);
        sh(&all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.0));
    }
}

pub fn lotrace(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run lotrace")
}

pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

pub fn journeys(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|v| v["type"] == "journey").collect()
}

pub fn summary(lines: &[Value]) -> &Value {
    let s: Vec<_> = lines.iter().filter(|v| v["type"] == "summary").collect();
    assert_eq!(s.len(), 1, "exactly one summary");
    s[0]
}

/// Ids of loaded eBPF programs whose name is one of lotrace's
/// (`tp_`, `kp_`, `kr_`, `fe_`, `fx_` prefixes).
pub fn lotrace_programs() -> BTreeSet<u64> {
    let out = Command::new("bpftool")
        .args(["--json", "prog", "show"])
        .output()
        .expect("bpftool is installed by `cargo xtask setup`");
    assert!(out.status.success(), "bpftool prog show failed");
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array()
        .expect("array")
        .iter()
        .filter(|p| {
            p["name"].as_str().is_some_and(|n| {
                ["tp_", "kp_", "kr_", "fe_", "fx_"]
                    .iter()
                    .any(|pre| n.starts_with(pre))
            })
        })
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// The stages of one leg of a journey, in the order they were met.
pub fn leg_stages<'a>(j: &'a Value, leg: &str) -> Vec<&'a str> {
    let legs = j["legs"].as_array().expect("legs");
    let l = legs.iter().find(|l| l["leg"] == leg).expect("leg present");
    l["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["stage"].as_str().expect("stage"))
        .collect()
}

/// `want` appear in `got` in this order (first occurrences).
pub fn in_order(got: &[&str], want: &[Stage]) -> bool {
    let pos: Vec<Option<usize>> = want
        .iter()
        .map(|w| got.iter().position(|g| *g == w.name()))
        .collect();
    pos.iter().all(|p| p.is_some()) && pos.windows(2).all(|w| w[0] < w[1])
}

/// A loopback echo's journey crosses the request's and the reply's stages
/// in their order, and every stage of the design card.
pub fn check_stage_orders(j: &Value) {
    let seq = &j["icmp_seq"];
    let req = leg_stages(j, "request");
    let rep = leg_stages(j, "reply");
    assert!(in_order(&req, REQUEST), "seq {seq} request order: {req:?}");
    assert!(in_order(&rep, REPLY), "seq {seq} reply order: {rep:?}");
    for s in CARD.iter().map(|s| s.name()) {
        assert!(
            req.contains(&s) || rep.contains(&s),
            "seq {seq} lacks {s}: {req:?} {rep:?}"
        );
    }
}

/// The JSON lines of a run that must have succeeded.
pub fn ok_json(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(out)
}

/// Whether a leg of the journey was received in ksoftirqd.
pub fn handed_off(j: &Value) -> bool {
    j["legs"]
        .as_array()
        .expect("legs")
        .iter()
        .any(|l| l["softirq"]["context"] == "ksoftirqd")
}

/// lotrace's RTT spans the request's sendto entry to the reply's netif_rx;
/// ping's spans its own clock read just before sendto to the reply's
/// receive timestamp, taken inside that netif_rx. So ping's, paired with
/// the journey, contains lotrace's, up to the rounding of its printed time
/// (`slack_ns`), and not by much more than ping's own work.
pub fn check_ping_rtt(j: &Value, slack_ns: u64) {
    let seq = &j["icmp_seq"];
    let ours = j["rtt_ns"].as_u64().expect("kernel RTT");
    let ping = j["ping_rtt_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("seq {seq}: no ping RTT paired"));
    assert!(
        ours <= ping + slack_ns,
        "seq {seq}: kernel RTT {ours} ns exceeds ping's {ping} ns"
    );
    assert!(
        ping - ours.min(ping) < 2_000_000,
        "seq {seq}: ping's RTT {ping} ns is far beyond the kernel's {ours} ns"
    );
}

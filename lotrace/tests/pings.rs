//! Each ping lotrace knows how to read, traced for real on this host (as
//! root): iputils, busybox, oping and fping. Every echo is followed
//! whichever ping sent it; "ping said" is paired only where lotrace knows
//! how that ping numbers its lines, and then with the right echo.

mod common;

use common::*;
use serde_json::Value;

/// `lotrace trace --format json ARGS`, which must succeed.
fn trace(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["trace", "--format", "json"];
    all.extend_from_slice(args);
    let out = lotrace(&all);
    assert!(
        out.status.success(),
        "{all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out)
}

fn installed(program: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()));
    assert!(
        found,
        "{program} is not installed (`cargo xtask setup` installs it)"
    );
}

/// `n` answered journeys, the sequences `0..n` of one id and family.
fn answered<'a>(lines: &'a [Value], n: u64, family: &str) -> Vec<&'a Value> {
    let js: Vec<&Value> = journeys(lines)
        .into_iter()
        .filter(|j| j["family"] == family)
        .collect();
    let seqs: Vec<u64> = js.iter().map(|j| j["icmp_seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.len() as u64, n, "{family}: sequences {seqs:?}");
    for j in &js {
        assert_eq!(j["outcome"]["kind"], "answered", "{j}");
        assert_eq!(j["complete"], true, "missing {}", j["missing"]);
    }
    js
}

#[test]
fn iputils_and_busybox_number_echoes_as_the_wire_does() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    installed("busybox");
    for cmd in [
        &["ping", "-c", "3", "-i", "0.2", "127.0.0.1"][..],
        &["busybox", "ping", "-c", "3", "127.0.0.1"][..],
    ] {
        let lines = trace(cmd);
        for j in answered(&lines, 3, "ipv4") {
            check_ping_rtt(j, 5_000);
        }
    }
}

#[test]
fn oping_counts_its_lines_from_one() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    installed("oping");
    // oping prints icmp_seq=1, 2, 3 for the echoes with sequence 0, 1, 2:
    // each journey gets the line of its own echo.
    let lines = trace(&["oping", "-c", "3", "-i", "0.2", "127.0.0.1"]);
    for j in answered(&lines, 3, "ipv4") {
        check_ping_rtt(j, 5_000);
    }
}

#[test]
fn fping_is_paired_with_one_host_and_not_with_two() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    installed("fping");
    let lines = trace(&["fping", "-c", "3", "-p", "200", "127.0.0.1"]);
    for j in answered(&lines, 3, "ipv4") {
        check_ping_rtt(j, 5_000);
    }
    // With two hosts fping's [N] counts per host, the wire's sequence over
    // both: no line is paired rather than a wrong one.
    let lines = trace(&["fping", "-c", "2", "-p", "200", "127.0.0.1", "::1"]);
    let v4 = answered(&lines, 2, "ipv4");
    let v6 = answered(&lines, 2, "ipv6");
    for j in v4.iter().chain(&v6) {
        assert!(j["ping_rtt_ns"].is_null(), "{}", j["ping_rtt_ns"]);
    }
}

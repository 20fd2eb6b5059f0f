//! Replaying a recorded trace needs no root and no kernel support: these
//! run anywhere, on a trace recorded on a 6.18 kernel.

mod common;

use std::path::Path;

use common::*;

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ping5.lotrace")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn replays_a_recorded_trace_as_json() {
    let out = lotrace(&["replay", "--format", "json", &fixture()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    let js = journeys(&lines);
    assert_eq!(js.len(), 5);
    for (i, j) in js.iter().enumerate() {
        assert_eq!(j["icmp_seq"], i as u64 + 1);
        assert_eq!(j["complete"], true, "{}", j["missing"]);
        check_stage_orders(j);
        let rtt = j["rtt_ns"].as_u64().unwrap();
        let ping = j["ping_rtt_ns"].as_u64().unwrap();
        assert!(rtt <= ping + 1_000, "kernel RTT {rtt} vs ping {ping}");
    }
    let s = summary(&lines);
    assert_eq!(s["journeys"], 5);
    assert_eq!(s["lost_events"], 0);
    assert!(s["kernel"].as_str().unwrap().starts_with("6."));
}

#[test]
fn replays_a_recorded_trace_as_text() {
    let out = lotrace(&["replay", &fixture()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("── icmp_seq=").count(), 5);
    assert!(text.contains("64 bytes from 127.0.0.1: icmp_seq=5"));
    assert!(text.contains("lotrace summary: 5 journeys (0 incomplete)"));
}

#[test]
fn a_damaged_record_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(fixture()).unwrap();
    let cut = dir.path().join("cut.lotrace");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    let out = lotrace(&["replay", cut.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("truncated"), "{err}");
    let missing = lotrace(&["replay", "/nonexistent.lotrace"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot open the record file"));
}

#[test]
fn a_recorded_ksoftirqd_handoff_replays() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ksoftirqd.lotrace");
    let out = lotrace(&["replay", "--format", "json", path.to_str().unwrap()]);
    assert!(out.status.success());
    let lines = json_lines(&out);
    let handed: Vec<_> = journeys(&lines)
        .into_iter()
        .filter(|j| handed_off(j))
        .collect();
    assert_eq!(handed.len(), 2);
    assert_eq!(handed[0]["icmp_seq"], 108);
    let leg = &handed[0]["legs"][0];
    assert_eq!(leg["softirq"]["comm"], "ksoftirqd/1");
    assert!(leg["softirq"]["wait_ns"].as_u64().unwrap() > 0);
    // The others ran inline on the back of the busy task of CPU 1 (RPS):
    // its interrupt's exit or its own local_bh_enable, not told apart.
    let first = journeys(&lines)[0];
    assert_eq!(first["legs"][0]["softirq"]["entered"], "another_task");
    assert_eq!(summary(&lines)["softirq"]["ksoftirqd"], 3);
}

//! Integration tests: trace real pings to 127.0.0.1 on this kernel, as root.

mod common;

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

fn all_events(j: &Value) -> Vec<&Value> {
    j["legs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["events"].as_array().unwrap())
        .collect()
}

/// The checks every journey of a plain loopback ping must pass.
fn check_journey(j: &Value) {
    let seq = &j["icmp_seq"];
    assert_eq!(
        j["complete"], true,
        "seq {seq} incomplete: {}",
        j["missing"]
    );
    assert_eq!(j["family"], "ipv4");
    check_stage_orders(j);
    // Deltas: non-negative, and in time order they add up to the total.
    let mut evs = all_events(j);
    evs.sort_by_key(|e| e["t_ns"].as_i64().unwrap());
    let sum: u64 = evs
        .iter()
        .map(|e| e["delta_ns"].as_u64().expect("delta ≥ 0"))
        .sum();
    assert_eq!(
        sum,
        j["total_ns"].as_u64().unwrap(),
        "seq {seq}: deltas vs total"
    );
    let first = evs.first().unwrap();
    assert_eq!(first["stage"], "sendto");
    assert_eq!(first["t_ns"], 0);
    for e in &evs {
        let probe = e["probe"].as_str().unwrap();
        assert!(
            probe.starts_with("tracepoint:") || probe.starts_with("raw_tracepoint:"),
            "{probe}"
        );
    }
}

#[test]
fn five_pings_give_five_journeys_and_record_replays_them() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let before = lotrace_programs();
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("five.lotrace");
    let out = lotrace(&[
        "trace",
        "--format",
        "json",
        "--record",
        rec.to_str().unwrap(),
        "ping",
        "-c",
        "5",
        "-i",
        "0.2",
        "127.0.0.1",
    ]);
    let lines = ok_json(&out);
    let js = journeys(&lines);
    assert_eq!(js.len(), 5);
    let seqs: Vec<u64> = js.iter().map(|j| j["icmp_seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    for j in &js {
        check_journey(j);
        // Half of 10 µs, the unit iputils prints a time of 1 to 10 ms in.
        check_ping_rtt(j, 5_000);
        assert_eq!(j["target"], "127.0.0.1");
    }
    let s = summary(&lines);
    assert_eq!(s["journeys"], 5);
    assert_eq!(s["incomplete"], 0);
    assert_eq!(s["lost_events"], 0);
    assert_eq!(s["rtt"]["count"], 5);
    let probes = s["probes"].as_array().unwrap();
    let dq = probes
        .iter()
        .find(|p| p["stage"] == "dev_queue_xmit")
        .unwrap();
    assert!(
        [
            "tracepoint:net:net_dev_queue",
            "raw_tracepoint:net:net_dev_queue"
        ]
        .contains(&dq["probes"][0].as_str().unwrap_or("")),
        "{dq}"
    );

    // Nothing of ours stays in the kernel.
    let after = lotrace_programs();
    assert!(
        after.is_subset(&before),
        "left loaded: {:?}",
        after.difference(&before)
    );

    // The recording renders the same journeys without the kernel.
    let replay = lotrace(&["replay", "--format", "json", rec.to_str().unwrap()]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let rlines = json_lines(&replay);
    assert_eq!(journeys(&rlines), js);
    assert_eq!(summary(&rlines)["journeys"], 5);
}

#[test]
fn a_concurrent_flood_adds_nothing() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    // Bounded by count and by deadline.
    let mut flood = Command::new("ping")
        .args(["-q", "-f", "-c", "500000", "-w", "30", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ping -f");
    std::thread::sleep(Duration::from_millis(200));
    let out = lotrace(&[
        "trace",
        "--format",
        "json",
        "ping",
        "-c",
        "5",
        "-i",
        "0.2",
        "127.0.0.1",
    ]);
    let _ = flood.kill();
    let _ = flood.wait();
    let lines = ok_json(&out);
    let js = journeys(&lines);
    let seqs: Vec<u64> = js.iter().map(|j| j["icmp_seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "only the traced ping's journeys");
    let id = &js[0]["icmp_id"];
    let task_events: Vec<&Value> = js
        .iter()
        .flat_map(|j| all_events(j))
        .filter(|e| e["context"] == "task")
        .collect();
    let tgid = &task_events[0]["tgid"];
    let mut incomplete = 0;
    for j in &js {
        assert_eq!(&j["icmp_id"], id);
        // Under a flood the kernel may not let us see the end of a reply
        // (seen once: its delivery to ping's socket). Such a journey must
        // say so and must not be padded; one in five is tolerated.
        if j["complete"] == false {
            incomplete += 1;
            for m in j["missing"].as_array().unwrap() {
                assert_eq!(m["leg"], "reply", "{j}");
            }
            continue;
        }
        check_journey(j);
        for leg in ["request", "reply"] {
            let stages = leg_stages(j, leg);
            for s in &stages {
                let n = stages.iter().filter(|x| x == &s).count();
                assert!(n <= 3, "seq {} {leg}: {s} seen {n} times", j["icmp_seq"]);
            }
        }
    }
    for e in &task_events {
        assert_eq!(&e["tgid"], tgid, "an event of another process: {e}");
    }
    assert!(incomplete <= 1, "{incomplete} incomplete journeys");
    assert_eq!(summary(&lines)["journeys"], 5);
}

/// (leg, stage, at_return) → count, from a JSON summary.
fn summary_rows(s: &Value) -> std::collections::BTreeMap<(String, String, bool), u64> {
    s["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (
                    r["leg"].as_str().unwrap().to_string(),
                    r["stage"].as_str().unwrap().to_string(),
                    r["at_return"].as_bool().unwrap(),
                ),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn summary_only_aggregates_in_the_kernel_what_the_stream_shows() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let before = lotrace_programs();
    let ping = ["ping", "-c", "5", "-i", "0.2", "127.0.0.1"];
    let streamed = ok_json(&lotrace(
        &[&["trace", "--format", "json"][..], &ping[..]].concat(),
    ));
    let lines = ok_json(&lotrace(
        &[
            &["trace", "--summary-only", "--format", "json"][..],
            &ping[..],
        ]
        .concat(),
    ));
    assert!(journeys(&lines).is_empty(), "no journey is streamed");
    let s = summary(&lines);
    assert_eq!(s["journeys"], 5, "{s}");
    assert_eq!(s["incomplete"], 0, "{s}");
    assert_eq!(s["in_kernel"]["answered"], 5, "{s}");
    assert_eq!(s["in_kernel"]["unassigned_events"], 0, "{s}");
    assert_eq!(s["rtt"]["count"], 5);
    assert_eq!(s["lost_events"], 0);
    assert_eq!(s["events"], s["submitted_events"]);
    assert_eq!(s["softirq"], summary(&streamed)["softirq"]);
    // The same rows, each met as often, as the journeys give.
    assert_eq!(summary_rows(s), summary_rows(summary(&streamed)));

    // A flood: every echo is counted, none is streamed, sequences do not
    // get mixed up.
    let out = lotrace(&[
        "trace",
        "--summary-only",
        "--format",
        "json",
        "ping",
        "-q",
        "-f",
        "-c",
        "20000",
        "-w",
        "60",
        "127.0.0.1",
    ]);
    let lines = ok_json(&out);
    let s = summary(&lines);
    let k = &s["in_kernel"];
    assert_eq!(s["journeys"], 20000, "{s}");
    assert_eq!(
        k["answered"].as_u64().unwrap() + k["answered_incomplete"].as_u64().unwrap(),
        20000,
        "{s}"
    );
    let rows = summary_rows(s);
    assert_eq!(rows[&("request".into(), "sendto".into(), false)], 20000);
    assert_eq!(s["rtt"]["count"], 20000);
    assert_eq!(k["unassigned_events"], 0, "{s}");

    let after = lotrace_programs();
    assert!(
        after.is_subset(&before),
        "left loaded: {:?}",
        after.difference(&before)
    );
}

#[test]
fn journeys_assembled_in_the_kernel_are_those_streamed_event_by_event() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let ping = ["ping", "-c", "5", "-i", "0.1", "127.0.0.1"];
    let run = |opts: &[&str]| {
        ok_json(&lotrace(
            &[&["trace", "--format", "json"][..], opts, &ping[..]].concat(),
        ))
    };
    let assembled = run(&[]);
    let per_event = run(&["--per-event"]);
    for lines in [&assembled, &per_event] {
        let js = journeys(lines);
        assert_eq!(js.len(), 5, "{lines:?}");
        js.iter().for_each(|j| check_journey(j));
        let s = summary(lines);
        assert_eq!(s["lost_events"], 0, "{s}");
        assert_eq!(s["events"], s["submitted_events"], "{s}");
        assert_eq!(s["discarded_events"], 0, "{s}");
    }
    // The same stages, each met as often.
    assert_eq!(
        summary_rows(summary(&assembled)),
        summary_rows(summary(&per_event))
    );
    // One record per echo, holding most of its events; none without.
    let s = summary(&assembled);
    assert_eq!(s["assembled"]["records"], 5, "{s}");
    let inside = s["assembled"]["events"].as_u64().unwrap();
    assert!(inside * 10 >= s["events"].as_u64().unwrap() * 8, "{s}");
    assert_eq!(summary(&per_event)["assembled"], Value::Null);

    // A flood: echoes overlap, and each is still whole.
    let lines = ok_json(&lotrace(&[
        "trace",
        "--format",
        "json",
        "ping",
        "-q",
        "-f",
        "-c",
        "2000",
        "-w",
        "30",
        "127.0.0.1",
    ]));
    let s = summary(&lines);
    assert_eq!(s["journeys"], 2000, "{s}");
    assert_eq!(s["incomplete"], 0, "{s}");
    assert_eq!(s["lost_events"], 0, "{s}");
    assert_eq!(s["discarded_events"], 0, "{s}");
    assert!(s["assembled"]["records"].as_u64().unwrap() >= 2000, "{s}");
}

#[test]
fn text_output_shows_timelines_and_the_summary() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let out = lotrace(&["trace", "ping", "-c", "2", "-i", "0.2", "127.0.0.1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // ping's own output still reaches the user.
    assert!(text.contains("64 bytes from 127.0.0.1: icmp_seq=1"));
    assert_eq!(text.matches("── icmp_seq=").count(), 2);
    assert!(text.contains("kernel RTT"));
    assert!(text.contains("lotrace summary: 2 journeys (0 incomplete)"));
    assert!(text.contains("where the time goes"));
    assert!(text.contains("next hop dev lo"));
    assert!(text.contains("(dev lo)"));
}

fn one_line_error(out: &std::process::Output, want: &str) {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line, got: {err}");
    assert!(err.contains(want), "expected {want:?} in: {err}");
    assert!(err.starts_with("lotrace: error: "), "{err}");
}

// Bad input of every kind: tests/robust.rs.

#[test]
fn not_root_is_refused_in_one_line() {
    let args = ["trace", "ping", "-c", "1", "127.0.0.1"];
    let start = Instant::now();
    let out = if is_root() {
        // Run as nobody, from a copy that user can reach wherever the
        // checkout is.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("lotrace");
        std::fs::copy(BIN, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Command::new(&bin)
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    } else {
        lotrace(&args)
    };
    assert!(start.elapsed() < Duration::from_secs(30));
    one_line_error(&out, "needs root");
}

/// `--floor` attaches what a trace attaches and reports nothing: the
/// programs return before reading anything.
#[test]
fn the_floor_attaches_everything_and_traces_nothing() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let before = lotrace_programs();
    let out = lotrace(&[
        "trace",
        "--floor",
        "--format",
        "json",
        "ping",
        "-c",
        "2",
        "-i",
        "0.2",
        "127.0.0.1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    let s = summary(&lines);
    assert_eq!(s["journeys"], 0, "{s}");
    assert_eq!(s["events"], 0, "{s}");
    assert_eq!(s["submitted_events"], 0, "{s}");
    let dq = s["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["stage"] == "dev_queue_xmit")
        .unwrap();
    assert!(!dq["probes"].as_array().unwrap().is_empty(), "{dq}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--floor"));
    assert!(lotrace_programs().is_subset(&before));
}

#[test]
fn probes_explains_what_this_kernel_allows() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let before = lotrace_programs();
    let out = lotrace(&["probes", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = &json_lines(&out)[0];
    assert_eq!(v["type"], "probes");
    assert_eq!(v["backends"]["tracepoint"]["available"], true);
    // Whatever this kernel lacks is said in words, not just "no".
    for b in ["kprobe", "fentry"] {
        if v["backends"][b]["available"] == false {
            assert!(v["backends"][b]["why"].as_str().unwrap().len() > 10);
        }
    }
    let stages = v["stages"].as_array().unwrap();
    let dq = stages
        .iter()
        .find(|s| s["stage"] == "dev_queue_xmit")
        .unwrap();
    assert!(!dq["auto"].is_null());
    for c in dq["candidates"].as_array().unwrap() {
        assert!(c["available"] == true || c["why"].is_string(), "{c}");
    }
    // Where raw tracepoints load, a tracepoint whose fields are all in its
    // arguments is attached raw; one that cannot be is classic, and says
    // why.
    if v["raw_tracepoints"]["available"] == true {
        let chosen = |stage: &str| -> Vec<Value> {
            stages.iter().find(|s| s["stage"] == stage).unwrap()["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["chosen"] == true && c["backend"] == "tracepoint")
                .cloned()
                .collect()
        };
        for c in chosen("dev_queue_xmit") {
            assert!(
                c["probe"].as_str().unwrap().starts_with("raw_tracepoint:"),
                "{c}"
            );
        }
        for c in chosen("sendto") {
            assert!(
                c["probe"]
                    .as_str()
                    .unwrap()
                    .starts_with("tracepoint:syscalls:"),
                "{c}"
            );
            assert!(c["classic_why"].is_string(), "{c}");
        }
    } else {
        assert!(v["raw_tracepoints"]["why"].is_string(), "{v}");
    }
    let text = lotrace(&["probes"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("← auto"));
    let after = lotrace_programs();
    assert!(
        after.is_subset(&before),
        "left loaded: {:?}",
        after.difference(&before)
    );
}

//! Robustness, as root on this kernel: signals at any moment leave nothing
//! attached and no orphaned child; a tiny ring buffer loses events that are
//! counted exactly; every bad input gives one line and a non-zero exit.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// Direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purpose: it runs nothing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts an unbounded ping under lotrace and waits for its first journey;
/// returns lotrace, ping's pid and the first journey's line.
/// `lotrace trace OPTIONS --format json` of a ping every 50 ms (at most
/// 60 s), its JSON on a pipe.
fn spawn_ping_trace(options: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(BIN)
        .envs(env.iter().copied())
        .arg("trace")
        .args(options)
        .args([
            "--format",
            "json",
            "ping",
            "-i",
            "0.05",
            "-w",
            "60",
            "127.0.0.1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn start_tracing(env: &[(&str, &str)]) -> (Child, u32, BufReader<std::process::ChildStdout>) {
    let mut child = spawn_ping_trace(&[], env);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // The first journey proves the probes are attached and events flow.
    let start = Instant::now();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "lotrace ended early");
        if line.contains("\"type\":\"journey\"") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30));
    }
    let ping = children(child.id());
    assert_eq!(ping.len(), 1, "one child: {ping:?}");
    (child, ping[0], out)
}

#[test]
fn signals_leave_nothing_attached_and_no_orphan() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let before = lotrace_programs();
    for (sig, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGKILL, "SIGKILL"),
    ] {
        let (mut child, ping, mut out) = start_tracing(&[]);
        assert!(lotrace_programs().len() > before.len(), "{name}: attached");
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, sig) };
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "{name}: lotrace did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        eventually(
            &format!("{name}: ping {ping} to stop"),
            Duration::from_secs(5),
            || !alive(ping),
        );
        if sig != libc::SIGKILL {
            // Forwarded to ping, which ends normally; the summary follows.
            assert!(status.success(), "{name}: {status:?}");
            assert!(rest.contains("\"type\":\"summary\""), "{name}: no summary");
        }
        eventually(
            &format!("{name}: programs to go"),
            Duration::from_secs(5),
            || lotrace_programs().is_subset(&before),
        );
    }
}

#[test]
fn sigint_ends_an_aggregated_trace_with_what_the_kernel_counted() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let before = lotrace_programs();
    let child = spawn_ping_trace(&["--summary-only"], &[]);
    // Nothing is streamed: wait for ping to run under the probes instead.
    eventually("ping to start", Duration::from_secs(30), || {
        children(child.id()).len() == 1 && lotrace_programs().len() > before.len()
    });
    std::thread::sleep(Duration::from_millis(600));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let lines = json_lines(&out);
    let s = summary(&lines);
    let n = s["journeys"].as_u64().unwrap();
    assert!(n >= 3, "{s}");
    let k = &s["in_kernel"];
    // The echo in flight when ping was stopped may be unanswered; no
    // other may be.
    assert!(k["unfinished"].as_u64().unwrap() <= 1, "{s}");
    assert_eq!(
        k["answered"].as_u64().unwrap() + k["unfinished"].as_u64().unwrap(),
        n,
        "{s}"
    );
    eventually("programs to go", Duration::from_secs(5), || {
        lotrace_programs().is_subset(&before)
    });
}

#[test]
fn the_child_ending_ends_the_trace_with_a_summary() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    // A command that crashes: its signal becomes lotrace's exit status.
    let out = lotrace(&["trace", "--format", "json", "sh", "-c", "kill -SEGV $$"]);
    assert_eq!(out.status.code(), Some(128 + libc::SIGSEGV));
    let lines = json_lines(&out);
    assert_eq!(summary(&lines)["journeys"], 0);
}

/// A process started by a thread other than its parent's main one is
/// traced too: the fork's `parent_pid` is that thread's id, the traced
/// set holds process ids.
#[test]
fn a_child_started_by_a_thread_is_followed() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let script = "import subprocess, threading\n\
                  t = threading.Thread(target=lambda: subprocess.run(\n\
                      ['ping', '-c', '2', '-i', '0.2', '127.0.0.1'], check=True))\n\
                  t.start()\n\
                  t.join()\n";
    let out = lotrace(&["trace", "--format", "json", "python3", "-c", script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(summary(&lines)["journeys"], 2, "{:?}", journeys(&lines));
}

/// Only a send on an ICMP socket is an echo request: a UDP message whose
/// first bytes read as one (type 8, an id, a sequence) is not a journey,
/// while a real ping from the same command is.
#[test]
fn a_udp_message_that_reads_as_an_echo_is_not_one() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let script = "import socket, subprocess\n\
                  r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                  r.bind(('127.0.0.1', 0))\n\
                  s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                  s.sendto(bytes([8, 0, 0, 0, 0x12, 0x34, 0, 1]) + b'x' * 56, r.getsockname())\n\
                  r.recv(100)\n\
                  subprocess.run(['ping', '-c', '1', '127.0.0.1'], check=True)\n";
    let out = lotrace(&["trace", "--format", "json", "python3", "-c", script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    let js = journeys(&lines);
    assert_eq!(js.len(), 1, "{js:?}");
    assert_ne!(js[0]["icmp_id"], 0x1234, "{}", js[0]);
    assert_eq!(js[0]["complete"], true, "{}", js[0]);
}

/// Echo requests with id 0x4242 on a raw ICMP socket, sequences `first`
/// to `last`, each answered.
fn echo_sender(first: u16, last: u16) -> String {
    format!(
        "import socket\n\
         def csum(b):\n\
         \x20   s = sum(b[i] << 8 | b[i + 1] for i in range(0, len(b), 2))\n\
         \x20   s = (s >> 16) + (s & 0xffff)\n\
         \x20   return ~(s + (s >> 16)) & 0xffff\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n\
         s.settimeout(2)\n\
         for seq in range({first}, {last} + 1):\n\
         \x20   m = bytes([8, 0, 0, 0, 0x42, 0x42, 0, seq]) + b'x' * 8\n\
         \x20   c = csum(m)\n\
         \x20   s.sendto(m[:2] + bytes([c >> 8, c & 0xff]) + m[4:], ('127.0.0.1', 0))\n\
         \x20   while s.recv(100)[20] != 0: pass\n"
    )
}

/// The ids a traced process sent are forgotten when it ends: another,
/// untraced, process sending with the same id afterwards (a pid reused, a
/// datagram socket's id given again) is not followed.
#[test]
fn an_echo_id_ends_with_its_process() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let done = done.to_str().unwrap();
    // Starts once the traced sender has ended, for 20 s at most.
    let mut other = Command::new("sh")
        .args([
            "-c",
            &format!(
                "i=0; while [ ! -e {done} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; \
                 exec python3 -c \"$0\"",
            ),
            &echo_sender(2, 4),
        ])
        .spawn()
        .unwrap();
    let traced = format!("python3 -c \"$0\" && touch {done} && sleep 1.5");
    let out = lotrace(&[
        "trace",
        "--format",
        "json",
        "sh",
        "-c",
        &traced,
        &echo_sender(1, 1),
    ]);
    assert!(other.wait().unwrap().success());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    let js = journeys(&lines);
    assert_eq!(js.len(), 1, "{js:?}");
    assert_eq!(js[0]["icmp_id"], 0x4242, "{}", js[0]);
    assert_eq!(js[0]["icmp_seq"], 1, "{}", js[0]);
}

#[test]
fn a_tiny_ring_loses_events_counted_exactly() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let out = lotrace(&[
        "trace",
        "--format",
        "json",
        "--ring-size",
        "4096",
        "ping",
        "-q",
        "-f",
        "-c",
        "3000",
        "127.0.0.1",
    ]);
    let lines = ok_json(&out);
    let s = summary(&lines);
    let lost = s["lost_events"].as_u64().unwrap();
    let events = s["events"].as_u64().unwrap();
    assert!(lost > 0, "a one-page ring must overflow under a flood");
    // Every event the probes produced was either received or counted lost.
    assert_eq!(events + lost, s["submitted_events"].as_u64().unwrap());
    let js = journeys(&lines);
    assert!(s["incomplete"].as_u64().unwrap() > 0);
    for j in &js {
        if j["complete"] == true {
            assert!(j["missing"].as_array().unwrap().is_empty());
        } else {
            assert!(!j["missing"].as_array().unwrap().is_empty(), "{j}");
        }
        // Whatever was seen is in time order and adds up: never wrong.
        let mut last = 0i64;
        let mut sum = 0u64;
        for leg in j["legs"].as_array().unwrap() {
            for e in leg["events"].as_array().unwrap() {
                sum += e["delta_ns"].as_u64().unwrap();
            }
        }
        let mut all: Vec<&Value> = j["legs"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|l| l["events"].as_array().unwrap())
            .collect();
        all.sort_by_key(|e| e["t_ns"].as_i64().unwrap());
        for e in &all {
            let t = e["t_ns"].as_i64().unwrap();
            assert!(t >= last);
            last = t;
        }
        assert_eq!(sum, j["total_ns"].as_u64().unwrap(), "{j}");
        assert!((1..=3000).contains(&j["icmp_seq"].as_u64().unwrap()));
    }
}

/// One line on stderr, starting `lotrace: error: `, and a non-zero exit.
fn one_line_error(args: &[&str], want: &str) {
    let out = lotrace(args);
    assert!(!out.status.success(), "{args:?}: expected a failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: one line, got: {err}"
    );
    assert!(err.starts_with("lotrace: error: "), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: expected {want:?} in: {err}");
}

#[test]
fn bad_inputs_each_give_one_line() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let before = lotrace_programs();
    let unwritable = "/proc/lotrace-cannot-write-here";
    let table: &[(&[&str], &str)] = &[
        (
            &["trace", "ping", "-c", "1", "no-such-host.invalid"],
            "unknown host no-such-host.invalid",
        ),
        (
            &["trace", "--no-such-flag", "ping", "127.0.0.1"],
            "'--no-such-flag'",
        ),
        (&["trace", "--format", "xml", "ping", "127.0.0.1"], "'xml'"),
        (
            &["trace", "--ring-size", "1000", "ping", "127.0.0.1"],
            "power of two",
        ),
        (&["nonsense"], "'nonsense'"),
        (
            &[
                "trace",
                "--summary-only",
                "--record",
                "/tmp/x",
                "ping",
                "127.0.0.1",
            ],
            "cannot be used with",
        ),
        (
            &["trace", "no-such-command-lotrace"],
            "command not found: no-such-command-lotrace",
        ),
        (
            &["compare", "127.0.0.1", "--", "curl", "http://127.0.0.1/"],
            "does not say where the target goes",
        ),
        (
            &["compare", "-c", "3", "127.0.0.1", "--", "curl", "{}"],
            "cannot be used with",
        ),
        (
            &[
                "trace",
                "--btf",
                "/nonexistent",
                "ping",
                "-c",
                "1",
                "127.0.0.1",
            ],
            "no kernel BTF at /nonexistent",
        ),
        (
            &[
                "trace",
                "--record",
                &format!("{unwritable}/x"),
                "ping",
                "-c",
                "1",
                "127.0.0.1",
            ],
            "cannot write the record file",
        ),
        (
            &[
                "trace",
                "--perfetto",
                &format!("{unwritable}/x"),
                "ping",
                "-c",
                "1",
                "127.0.0.1",
            ],
            "cannot write the Perfetto trace",
        ),
        (
            &[
                "trace",
                "--netns",
                "lotrace-no-such-ns",
                "ping",
                "-c",
                "1",
                "127.0.0.1",
            ],
            "no network namespace lotrace-no-such-ns",
        ),
        // This host has neither kprobes nor fentry: a function it cannot
        // probe makes a forced backend fail.
        (
            &[
                "trace",
                "--backend",
                "fentry",
                "ping",
                "-c",
                "1",
                "127.0.0.1",
            ],
            "--backend fentry cannot observe",
        ),
        (
            &["replay", "/nonexistent.lotrace"],
            "cannot open the record file",
        ),
    ];
    for (args, want) in table {
        one_line_error(args, want);
    }
    // The kernel frees a closed program asynchronously: wait, bounded.
    eventually("programs to go", Duration::from_secs(5), || {
        lotrace_programs().is_subset(&before)
    });
}

#[test]
fn under_sudo_the_command_runs_as_the_invoking_user() {
    if skip_without_root() {
        return;
    }
    let _k = kernel_lock();
    let sudo = [("SUDO_UID", "65534"), ("SUDO_GID", "65534")];
    let ids = |extra: &[&str]| {
        let mut args = vec!["trace", "--format", "json"];
        args.extend_from_slice(extra);
        args.extend(["sh", "-c", "id -u; id -g"]);
        let out = Command::new(BIN).envs(sudo).args(&args).output().unwrap();
        assert!(out.status.success());
        // In JSON mode the command's own output goes to stderr.
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&[]), ["65534", "65534"]);
    assert_eq!(ids(&["--child-as-root"]), ["0", "0"]);

    // ping still works as that user (its file capability), is traced, and
    // does not outlive a killed lotrace. The kernel clears the death signal
    // when ping gains its capability, so what stops it here is its next
    // write to the closed pipe.
    let before = lotrace_programs();
    let (mut child, ping, _out) = start_tracing(&sudo);
    let uid = std::fs::read_to_string(format!("/proc/{ping}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|v| v.split_whitespace().next().unwrap().to_string())
        })
        .unwrap();
    assert_eq!(uid, "65534");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(_out);
    eventually("ping to stop", Duration::from_secs(5), || !alive(ping));
    eventually("programs to go", Duration::from_secs(5), || {
        lotrace_programs().is_subset(&before)
    });
}

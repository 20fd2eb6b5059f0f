//! The kernel matrix: in each Debian guest, trace a busybox ping with each
//! backend and check the journeys.

use std::{collections::VecDeque, path::Path, sync::Mutex, time::Instant};

use anyhow::{Context as _, Result, bail, ensure};
use lotrace_common::order::CARD;
use serde_json::Value;

use crate::{
    kernels::{self, Flavour, SERIES},
    vm::{self, Run},
};

pub const BACKENDS: &[&str] = &["kprobe", "fentry", "tracepoint"];
pub const PINGS: usize = 3;

/// One lotrace invocation of a guest, and what is checked of it.
#[derive(Clone, Copy)]
enum Check {
    /// `lotrace probes`.
    Probes,
    /// busybox's ping (a raw socket), then iputils' (an ICMP datagram
    /// socket: the kernel delivers its replies through ping_rcv, not
    /// raw_rcv), in one trace with this backend forced.
    Trace(&'static str),
    /// busybox's ping, aggregated in the kernel.
    SummaryOnly,
    /// busybox's ping on CPU 0, its packets steered (RPS) to CPU 1, whose
    /// backlog thread receives them (see [`EXTRAS`]).
    Backlog,
    /// `lotrace probes` on a PREEMPT_RT kernel: it must say so.
    Realtime,
}

const CHECKS: &[Check] = &[
    Check::Probes,
    Check::Trace("kprobe"),
    Check::Trace("fentry"),
    Check::Trace("tracepoint"),
    Check::SummaryOnly,
];

/// A guest besides the plain one of each series: a machine and checks of
/// its own.
struct Extra {
    /// Its name in the matrix.
    name: &'static str,
    series: &'static str,
    checks: &'static [Check],
    machine: vm::Machine,
    /// What the matrix says it does.
    says: &'static str,
}

/// lo's receives steered by RPS to CPU 1.
const RPS_TO_CPU1: &str = "echo 2 > /sys/class/net/lo/queues/rx-0/rps_cpus\n";

const EXTRAS: &[Extra] = &[
    // `thread_backlog_napi` came with 6.10.
    Extra {
        name: "6.12, backlog threads",
        series: "6.12",
        checks: &[Check::Backlog],
        machine: vm::Machine {
            flavour: Flavour::Cloud,
            cpus: 2,
            cmdline: "thread_backlog_napi",
            setup: RPS_TO_CPU1,
            suffix: "-backlog",
        },
        says: "6.12 on two CPUs with thread_backlog_napi, lo's receives steered to CPU 1: \
               busybox's ping on CPU 0",
    },
    // PREEMPT_RT: softirqs run in preemptible threads, and the programs
    // keep their state per thread. The plain guest's checks, on the
    // series' RT build.
    Extra {
        name: "6.12 PREEMPT_RT",
        series: "6.12",
        checks: &[
            Check::Realtime,
            Check::Trace("kprobe"),
            Check::Trace("fentry"),
            Check::Trace("tracepoint"),
            Check::SummaryOnly,
        ],
        machine: vm::Machine {
            flavour: Flavour::Rt,
            suffix: "-rt",
            ..vm::PLAIN
        },
        says: "6.12's PREEMPT_RT build (-rt-amd64), with the same checks",
    },
];

/// The sockets the traced pings send on, each ping's journeys apart.
const SOCKETS: &[&str] = &["raw", "datagram"];

impl Check {
    fn args(self) -> Vec<String> {
        let busybox = ["ping", "-c", "3", "127.0.0.1"];
        let both = format!(
            "{} && {} -c 3 -i 0.2 127.0.0.1",
            busybox.join(" "),
            vm::IPUTILS_PING
        );
        let both = ["sh", "-c", both.as_str()];
        let trace = |options: &[&str], ping: &[&str]| -> Vec<String> {
            ["trace"]
                .iter()
                .chain(options)
                .chain(&["--format", "json"])
                .chain(ping)
                .map(|s| s.to_string())
                .collect()
        };
        match self {
            Check::Probes | Check::Realtime => {
                vec!["probes".into(), "--format".into(), "json".into()]
            }
            Check::Trace(b) => trace(&["--backend", b], &both),
            Check::SummaryOnly => trace(&["--summary-only"], &busybox),
            Check::Backlog => trace(&[], &[&["taskset", "-c", "0"][..], &busybox].concat()),
        }
    }

    /// Its name in the matrix table.
    fn mode(self) -> Option<String> {
        match self {
            Check::Probes | Check::Realtime => None,
            Check::Trace(b) => Some(b.to_string()),
            Check::SummaryOnly => Some("summary-only".into()),
            Check::Backlog => Some("backlog thread".into()),
        }
    }

    fn check(self, run: &Run) -> Result<()> {
        match self {
            Check::Probes => check_probes(run, false),
            Check::Realtime => check_probes(run, true),
            Check::Trace(b) => check_trace(run, b).map(|_| ()).with_context(|| {
                // Runs the kernel skipped (a probe firing inside another
                // eBPF program): a hint when a journey comes out wrong.
                let missed = json_lines(run)
                    .ok()
                    .and_then(|v| {
                        v.iter()
                            .find(|l| l["type"] == "summary")
                            .map(|s| s["missed_runs"].clone())
                    })
                    .unwrap_or_default();
                format!("probe runs the kernel skipped: {missed}")
            }),
            Check::SummaryOnly => check_summary_only(run),
            Check::Backlog => check_backlog(run),
        }
    }
}

/// The lotrace invocations of one guest.
fn runs(checks: &[Check]) -> Vec<Vec<String>> {
    checks.iter().map(|c| c.args()).collect()
}

fn json_lines(run: &Run) -> Result<Vec<Value>> {
    run.stdout
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// A journey's events in one line, for a failure's message:
/// `request sendto@0 tracepoint:... task, ...`.
fn events_line(j: &Value) -> String {
    let mut evs: Vec<(&str, &Value)> = j["legs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| {
            let leg = l["leg"].as_str().unwrap_or("?");
            l["events"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |e| (leg, e))
        })
        .collect();
    evs.sort_by_key(|(_, e)| e["t_ns"].as_i64().unwrap_or(0));
    evs.iter()
        .map(|(leg, e)| {
            format!(
                "{leg} {}{}@{} {} {} cpu{}",
                e["stage"].as_str().unwrap_or("?"),
                if e["at_return"] == true { "↩" } else { "" },
                e["t_ns"],
                e["probe"].as_str().unwrap_or("?"),
                e["context"].as_str().unwrap_or("?"),
                e["cpu"]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every backend available, and PREEMPT_RT told as it is.
pub fn check_probes(run: &Run, rt: bool) -> Result<()> {
    ensure!(run.exit == 0, "lotrace probes exited with {}", run.exit);
    let v = json_lines(run)?;
    let p = v.first().context("no output from lotrace probes")?;
    ensure!(
        p["preempt_rt"] == rt,
        "preempt_rt is {}, not {rt}",
        p["preempt_rt"]
    );
    for b in BACKENDS {
        ensure!(
            p["backends"][b]["available"] == true,
            "backend {b} unavailable: {}",
            p["backends"][b]["why"]
        );
    }
    Ok(())
}

/// Does a probe label belong to `backend`?
fn of_backend(label: &str, backend: &str) -> bool {
    let kind = label.split(':').next().unwrap_or("");
    match backend {
        "kprobe" => kind == "kprobe" || kind == "kretprobe",
        "fentry" => kind == "fentry" || kind == "fexit",
        _ => kind == "tracepoint" || kind == "raw_tracepoint",
    }
}

/// Checks a traced ping's journeys; returns them.
pub fn check_trace(run: &Run, backend: &str) -> Result<Vec<Value>> {
    ensure!(run.exit == 0, "lotrace trace exited with {}", run.exit);
    let lines = json_lines(run)?;
    let summary = lines
        .iter()
        .find(|v| v["type"] == "summary")
        .context("no summary")?;
    // Function backends must see all of the card's stages; tracepoints only
    // those this kernel has a tracepoint for (6.1 has no sock_send_length),
    // and the others must be reported as not observed.
    let observed = |stage: &str| {
        summary["probes"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["stage"] == stage))
            .is_some_and(|p| !p["backend"].is_null())
    };
    let card: Vec<&str> = CARD
        .iter()
        .map(|s| s.name())
        .filter(|s| backend != "tracepoint" || observed(s))
        .collect();
    let journeys: Vec<&Value> = lines.iter().filter(|v| v["type"] == "journey").collect();
    let list = |js: &[&Value]| {
        js.iter()
            .map(|j| {
                format!(
                    "[{} seq {} {}: {}]",
                    j["socket"],
                    j["icmp_seq"],
                    if j["complete"] == true {
                        "complete".to_string()
                    } else {
                        format!("missing {}", j["missing"])
                    },
                    events_line(j)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    ensure!(
        journeys.len() == PINGS * SOCKETS.len(),
        "{} journeys, not {}: {}",
        journeys.len(),
        PINGS * SOCKETS.len(),
        list(&journeys)
    );
    for socket in SOCKETS {
        let js: Vec<&Value> = journeys
            .iter()
            .copied()
            .filter(|j| j["socket"] == *socket)
            .collect();
        ensure!(
            js.len() == PINGS,
            "{} journeys on a {socket} socket, not {PINGS}: {}",
            js.len(),
            list(&journeys)
        );
        check_journeys(&js, backend, &card, observed("sock_deliver"))
            .with_context(|| format!("{socket} socket"))?;
    }
    let summary = lines
        .iter()
        .find(|v| v["type"] == "summary")
        .context("no summary")?;
    ensure!(
        summary["journeys"] == (PINGS * SOCKETS.len()) as u64,
        "summary: {}",
        summary["journeys"]
    );
    ensure!(
        summary["lost_events"] == 0,
        "lost events: {}",
        summary["lost_events"]
    );
    Ok(journeys.into_iter().cloned().collect())
}

/// One ping's journeys: one id, each sequence once, complete, the card's
/// stages (and the delivery to ping's socket, where observed) from the
/// forced backend, in kernel order.
fn check_journeys(journeys: &[&Value], backend: &str, card: &[&str], deliver: bool) -> Result<()> {
    let id = &journeys[0]["icmp_id"];
    let mut seqs = Vec::new();
    for j in journeys {
        let seq = j["icmp_seq"].as_u64().context("icmp_seq")?;
        ensure!(&j["icmp_id"] == id, "seq {seq}: another icmp id");
        ensure!(!seqs.contains(&seq), "seq {seq} twice");
        seqs.push(seq);
        ensure!(
            j["complete"] == true,
            "seq {seq} incomplete: missing {}; its events: {}",
            j["missing"],
            events_line(j)
        );
        let legs = j["legs"].as_array().context("legs")?;
        let mut all = Vec::new();
        for leg in legs {
            let events = leg["events"].as_array().context("events")?;
            ensure!(!events.is_empty(), "seq {seq}: empty {} leg", leg["leg"]);
            all.extend(
                events
                    .iter()
                    .map(|e| (leg["leg"].as_str().unwrap_or(""), e)),
            );
        }
        all.sort_by_key(|(_, e)| e["t_ns"].as_i64().unwrap_or(i64::MAX));
        // The card's stages from the chosen backend, in kernel order on the
        // request leg (sock_sendmsg from a tracepoint is seen at its return:
        // it is checked for presence only).
        let mut last = -1i64;
        for stage in card {
            let first = all
                .iter()
                .find(|(leg, e)| {
                    *leg == "request" && e["stage"] == *stage && e["at_return"] == false
                })
                .or_else(|| all.iter().find(|(_, e)| e["stage"] == *stage))
                .with_context(|| format!("seq {seq}: no {stage}"))?;
            let probe = first.1["probe"].as_str().unwrap_or("");
            ensure!(
                of_backend(probe, backend),
                "seq {seq}: {stage} seen by {probe}, not by {backend}"
            );
            if first.1["at_return"] == false {
                let t = first.1["t_ns"].as_i64().unwrap_or(-1);
                ensure!(t >= last, "seq {seq}: {stage} out of order");
                last = t;
            }
        }
        if deliver {
            let (_, e) = all
                .iter()
                .find(|(_, e)| e["stage"] == "sock_deliver")
                .with_context(|| format!("seq {seq}: no sock_deliver"))?;
            let probe = e["probe"].as_str().unwrap_or("");
            ensure!(
                of_backend(probe, backend),
                "seq {seq}: sock_deliver seen by {probe}, not by {backend}"
            );
        }
    }
    Ok(())
}

/// busybox's pings received by CPU 1's backlog thread: every journey
/// complete, each leg received in `backlog_napi/1`, without a softirq.
pub fn check_backlog(run: &Run) -> Result<()> {
    ensure!(run.exit == 0, "lotrace trace exited with {}", run.exit);
    let lines = json_lines(run)?;
    let journeys: Vec<&Value> = lines.iter().filter(|v| v["type"] == "journey").collect();
    ensure!(
        journeys.len() == PINGS,
        "{} journeys, not {PINGS}",
        journeys.len()
    );
    for j in journeys {
        let seq = &j["icmp_seq"];
        ensure!(
            j["complete"] == true,
            "seq {seq} incomplete: missing {}; its events: {}",
            j["missing"],
            events_line(j)
        );
        for leg in j["legs"].as_array().context("legs")? {
            let s = &leg["softirq"];
            ensure!(
                s["context"] == "backlog_thread"
                    && s["comm"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("backlog_napi/")),
                "seq {seq}: the {} was received {s}; its events: {}",
                leg["leg"],
                events_line(j)
            );
        }
    }
    let s = lines
        .iter()
        .find(|v| v["type"] == "summary")
        .context("no summary")?;
    ensure!(
        s["softirq"]["backlog_thread"] == (2 * PINGS) as u64,
        "softirq: {}",
        s["softirq"]
    );
    Ok(())
}

/// The in-kernel aggregation: every echo answered with every stage, the
/// rows there, nothing streamed.
pub fn check_summary_only(run: &Run) -> Result<()> {
    ensure!(run.exit == 0, "lotrace trace exited with {}", run.exit);
    let lines = json_lines(run)?;
    ensure!(
        lines.iter().all(|v| v["type"] != "journey"),
        "journeys were streamed"
    );
    let s = lines
        .iter()
        .find(|v| v["type"] == "summary")
        .context("no summary")?;
    ensure!(s["journeys"] == PINGS as u64, "journeys: {}", s["journeys"]);
    ensure!(
        s["in_kernel"]["answered"] == PINGS as u64,
        "outcomes: {}",
        s["in_kernel"]
    );
    ensure!(s["rtt"]["count"] == PINGS as u64, "rtt: {}", s["rtt"]);
    let stages: Vec<&str> = s["stages"]
        .as_array()
        .context("stages")?
        .iter()
        .filter_map(|r| r["stage"].as_str())
        .collect();
    for stage in CARD.iter().map(|s| s.name()) {
        ensure!(stages.contains(&stage), "no {stage} row: {stages:?}");
    }
    Ok(())
}

fn check_guest(series: &str, checks: &[Check], results: &[Run]) -> Result<()> {
    if results.len() != checks.len() {
        bail!("{series}: {} results", results.len());
    }
    for (c, r) in checks.iter().zip(results) {
        c.check(r).with_context(|| {
            format!(
                "{series}: {}",
                c.mode().unwrap_or_else(|| "lotrace probes".into())
            )
        })?;
    }
    Ok(())
}

/// One line of the matrix table: what one lotrace invocation in one guest
/// saw.
pub struct Row {
    pub mode: String,
    pub journeys: u64,
    pub complete: u64,
    pub stages: usize,
    /// Stages no probe of this mode could observe, each with lotrace's
    /// reason.
    pub missing: Vec<(String, String)>,
    /// Tracepoints attached: how many, and how many of those raw.
    pub tracepoints: usize,
    pub raw: usize,
}

/// The table row of a trace run (`mode` is a backend or `summary-only`).
pub fn row(run: &Run, mode: &str) -> Result<Row> {
    let lines = json_lines(run)?;
    let s = lines
        .iter()
        .find(|v| v["type"] == "summary")
        .context("no summary")?;
    let journeys = s["journeys"].as_u64().unwrap_or(0);
    let probes = s["probes"].as_array().context("probes")?;
    // A probe two stages share (the transmit tracepoints) counts once.
    let labels: std::collections::BTreeSet<&str> = probes
        .iter()
        .flat_map(|p| p["probes"].as_array().into_iter().flatten())
        .filter_map(|l| l.as_str())
        .collect();
    Ok(Row {
        tracepoints: labels
            .iter()
            .filter(|l| l.starts_with("tracepoint:") || l.starts_with("raw_tracepoint:"))
            .count(),
        raw: labels
            .iter()
            .filter(|l| l.starts_with("raw_tracepoint:"))
            .count(),
        mode: mode.to_string(),
        journeys,
        complete: journeys.saturating_sub(s["incomplete"].as_u64().unwrap_or(0)),
        stages: probes.len(),
        missing: probes
            .iter()
            .filter(|p| p["backend"].is_null())
            .map(|p| {
                (
                    p["stage"].as_str().unwrap_or("?").to_string(),
                    p["missing"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    })
}

/// What one guest gave the matrix.
struct Outcome {
    series: &'static str,
    release: String,
    seconds: f64,
    retried: bool,
    /// The check that failed on the first boot, when a second passed.
    failed_once: Option<String>,
    rows: Result<Vec<Row>>,
}

/// Boots one guest, checks it, and makes its table rows.
fn boot_and_check(series: &'static str, bin: &Path) -> (String, bool, Result<Vec<Row>>) {
    let (kernel, checks, machine) = match EXTRAS.iter().find(|e| e.name == series) {
        Some(e) => (e.series, e.checks, &e.machine),
        None => (series, CHECKS, &vm::PLAIN),
    };
    match vm::boot(kernel, bin, &runs(checks), false, machine) {
        Ok(g) => {
            let rows = check_guest(series, checks, &g.runs).and_then(|_| {
                checks
                    .iter()
                    .zip(&g.runs)
                    .filter_map(|(c, r)| Some(row(r, &c.mode()?)))
                    .collect::<Result<Vec<_>>>()
            });
            (g.release, g.retried, rows)
        }
        Err(e) => (String::new(), false, Err(e)),
    }
}

/// One guest, booted once more if a check failed (an intermittent failure
/// is reported as such, with what failed; a second failure fails it).
fn guest(series: &'static str, bin: &Path) -> Outcome {
    let t = Instant::now();
    let (mut release, mut retried, mut rows) = boot_and_check(series, bin);
    let mut failed_once = None;
    if let Err(e) = &rows
        && !release.is_empty()
    {
        let first = format!("{e:#}");
        println!("xtask: kernel matrix: {series} failed a check ({first}); booting it once more");
        let again = boot_and_check(series, bin);
        (release, rows) = (again.0, again.2);
        retried |= again.1;
        failed_once = Some(first);
    }
    Outcome {
        series,
        release,
        seconds: t.elapsed().as_secs_f64(),
        retried,
        failed_once,
        rows,
    }
}

/// Boots every kernel of `series`, `rounds` times over, at most as many at
/// once as there are CPUs (each guest has one vCPU), and checks each. Says
/// how long each took and which had to be booted twice; ends with the
/// table of the last round. Fails if any guest failed, after all have run.
pub fn run(bin: &Path, series: &[&str], rounds: u32) -> Result<()> {
    let series: Vec<&'static str> = series
        .iter()
        .map(|s| {
            SERIES
                .iter()
                .copied()
                .find(|k| k == s)
                .with_context(|| format!("unknown kernel series {s}"))
        })
        .collect::<Result<_>>()?;
    // Downloads one at a time: they share xtask's apt lists and cache.
    let extras: Vec<&Extra> = EXTRAS
        .iter()
        .filter(|e| series.contains(&e.series))
        .collect();
    for s in &series {
        kernels::fetch(s, Flavour::Cloud, &vm::vm_dir())?;
    }
    for e in &extras {
        kernels::fetch(e.series, e.machine.flavour, &vm::vm_dir())?;
    }
    let mut guests: Vec<&'static str> = series.clone();
    guests.extend(extras.iter().map(|e| e.name));
    let jobs = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(guests.len());
    let mut times = Vec::new();
    let mut failed = Vec::new();
    let mut last = Vec::new();
    for round in 1..=rounds {
        let of = if rounds > 1 {
            format!(" (round {round} of {rounds})")
        } else {
            String::new()
        };
        println!(
            "xtask: kernel matrix{of}: Debian {} under qemu, {jobs} at a time; in each: probes, {}",
            series.join(", "),
            CHECKS
                .iter()
                .filter_map(|c| c.mode())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for e in &extras {
            println!("xtask: kernel matrix: and {}", e.says);
        }
        let start = Instant::now();
        let queue = Mutex::new(guests.iter().copied().collect::<VecDeque<_>>());
        let done = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..jobs {
                scope.spawn(|| {
                    while let Some(s) = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None) {
                        let o = guest(s, bin);
                        let mut retry = if o.retried {
                            ", booted twice: the first boot hung".to_string()
                        } else {
                            String::new()
                        };
                        if let Some(first) = &o.failed_once {
                            retry.push_str(&format!(
                                ", booted twice: the first boot failed a check ({first})"
                            ));
                        }
                        match &o.rows {
                            Ok(_) => println!(
                                "xtask: kernel matrix: {s} ({}) passed in {:.0} s{retry}",
                                o.release, o.seconds
                            ),
                            Err(e) => println!(
                                "xtask: kernel matrix: {s} FAILED after {:.0} s{retry}: {e:#}",
                                o.seconds
                            ),
                        }
                        if let Ok(mut d) = done.lock() {
                            d.push(o);
                        }
                    }
                });
            }
        });
        let mut outcomes = done.into_inner().unwrap_or_default();
        outcomes.sort_by_key(|o| guests.iter().position(|s| *s == o.series));
        let retried: Vec<&str> = outcomes
            .iter()
            .filter(|o| o.retried || o.failed_once.is_some())
            .map(|o| o.series)
            .collect();
        failed.extend(
            outcomes
                .iter()
                .filter(|o| o.rows.is_err())
                .map(|o| format!("{} (round {round})", o.series)),
        );
        times.push((start.elapsed(), retried.join(", ")));
        last = outcomes;
    }
    println!("xtask: kernel matrix, the last round:\n{}", table(&last));
    if rounds > 1 {
        println!(
            "xtask: kernel matrix: {rounds} rounds of {}",
            series.join(", ")
        );
        for (i, (t, retried)) in times.iter().enumerate() {
            let retried = if retried.is_empty() {
                "no retry".to_string()
            } else {
                format!("retried {retried}")
            };
            println!("  round {}: {:.0} s, {retried}", i + 1, t.as_secs_f64());
        }
    }
    if !failed.is_empty() {
        bail!("kernel matrix: failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The matrix as a Markdown table: kernel × mode, journeys complete,
/// stages observed and those missing.
fn table(outcomes: &[Outcome]) -> String {
    let mut t = String::from(
        "| kernel | mode | journeys complete | stages observed | not observed | stage tracepoints attached raw |\n|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let kernel = format!("{} ({})", o.series, o.release);
        match &o.rows {
            Ok(rows) => {
                for r in rows {
                    let missing: Vec<&str> = r.missing.iter().map(|(s, _)| s.as_str()).collect();
                    t.push_str(&format!(
                        "| {kernel} | {} | {}/{} | {}/{} | {} | {}/{} |\n",
                        r.mode,
                        r.complete,
                        r.journeys,
                        r.stages - r.missing.len(),
                        r.stages,
                        if missing.is_empty() {
                            "-".to_string()
                        } else {
                            missing.join(", ")
                        },
                        r.raw,
                        r.tracepoints
                    ));
                }
            }
            Err(_) => t.push_str(&format!("| {kernel} | failed | | | | |\n")),
        }
    }
    t
}

//! The kernel matrix: in each Debian guest, trace a busybox ping with each
//! backend and check the journeys.

use std::{collections::VecDeque, path::Path, sync::Mutex, time::Instant};

use anyhow::{Context as _, Result, bail};

mod checks;
mod tcp;

use checks::{Row, check_backlog, check_probes, check_summary_only, check_trace, json_lines, row};
use tcp::check_tcp;

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
    /// One HTTP request over TCP (busybox's wget and httpd, traced
    /// together), with this backend forced: the handshake and the
    /// exchange, and TCP's own function stages.
    Tcp(&'static str, u16),
}

const CHECKS: &[Check] = &[
    Check::Probes,
    Check::Trace("kprobe"),
    Check::Trace("fentry"),
    Check::Trace("tracepoint"),
    Check::SummaryOnly,
    Check::Tcp("kprobe", 8080),
    Check::Tcp("fentry", 8081),
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
            Check::Tcp("kprobe", 8080),
            Check::Tcp("fentry", 8081),
        ],
        machine: vm::Machine {
            flavour: Flavour::Rt,
            ..vm::PLAIN
        },
        says: "6.12's PREEMPT_RT build (-rt-amd64), with the same checks",
    },
];

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
            Check::Tcp(b, port) => {
                let http = format!(
                    "mkdir -p /tmp/www && echo hello > /tmp/www/index.html && \
                     {{ busybox httpd -f -p 127.0.0.1:{port} -h /tmp/www & }} && sleep 0.5 && \
                     busybox wget -q -O /dev/null http://127.0.0.1:{port}/; r=$?; kill $!; exit $r"
                );
                trace(&["--backend", b, "--allow-missing"], &["sh", "-c", &http])
            }
        }
    }

    /// Its name in the matrix table.
    fn mode(self) -> Option<String> {
        match self {
            Check::Probes | Check::Realtime => None,
            Check::Trace(b) => Some(b.to_string()),
            Check::SummaryOnly => Some("summary-only".into()),
            Check::Backlog => Some("backlog thread".into()),
            // Its row would count echoes: it has none.
            Check::Tcp(..) => None,
        }
    }

    fn check(self, run: &Run) -> Result<()> {
        match self {
            Check::Probes => check_probes(run, false),
            Check::Realtime => check_probes(run, true),
            Check::Trace(b) => check_trace(run, b)
                .map(|_| ())
                .with_context(|| missed_runs(run)),
            Check::SummaryOnly => check_summary_only(run),
            Check::Backlog => check_backlog(run),
            Check::Tcp(b, _) => {
                check_tcp(run, b).with_context(|| format!("tcp ({b}), {}", missed_runs(run)))
            }
        }
    }
}

/// Runs the kernel skipped (a probe firing inside another run of an
/// eBPF program on that CPU): a hint when a journey comes out wrong.
fn missed_runs(run: &Run) -> String {
    let missed = json_lines(run)
        .ok()
        .and_then(|v| {
            v.iter()
                .find(|l| l["type"] == "summary")
                .map(|s| s["missed_runs"].clone())
        })
        .unwrap_or_default();
    format!("probe runs the kernel skipped: {missed}")
}

/// The lotrace invocations of one guest.
fn runs(checks: &[Check]) -> Vec<Vec<String>> {
    checks.iter().map(|c| c.args()).collect()
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
                .filter_map(|c| match c {
                    Check::Tcp(b, _) => Some(format!("an HTTP request ({b})")),
                    _ => c.mode(),
                })
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

//! `cargo xtask bench`: what tracing costs the packets it measures.
//!
//! Interleaved rounds of the same ping flood untraced, under lotrace and
//! under a bpftrace script attached to the same probes that only counts
//! them; each round also runs an adaptive ping (`-A`), which prints every
//! reply's RTT, for the distribution, and times a bystander: a process no
//! trace targets, making system calls and loopback UDP round trips of its
//! own while the probes are attached. Then one long traced flood samples
//! lotrace's RSS to show it stays flat.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

mod bpftrace;
mod bystander;
mod sockets;

use bpftrace::{Bpftrace, bpftrace_probes};
use bystander::footprint;

pub struct BenchOptions {
    pub count: u32,
    pub rounds: u32,
    pub long: u32,
    /// Which parts run: the pings, the TCP workloads, or both.
    pub pings: bool,
    pub sockets: bool,
    /// redis-benchmark's requests per test, and iperf3's seconds.
    pub requests: u32,
    pub iperf_seconds: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Untraced,
    /// `lotrace trace`: journeys assembled in the kernel, streamed.
    Lotrace,
    /// `lotrace trace --per-event`: each stage's event streamed alone.
    PerEvent,
    /// `lotrace trace --summary-only`: aggregated in the kernel.
    Summary,
    Bpftrace,
    /// `lotrace trace --floor`: the same attach points, every program
    /// returning at once.
    Floor,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Lotrace => "lotrace",
            Mode::PerEvent => "lotrace --per-event",
            Mode::Summary => "lotrace --summary-only",
            Mode::Bpftrace => "bpftrace (count only)",
            Mode::Floor => "lotrace --floor",
        }
    }

    /// The options `lotrace trace` runs with in this mode.
    fn lotrace_options(self) -> &'static [&'static str] {
        match self {
            Mode::Summary => &["--summary-only"],
            Mode::PerEvent => &["--per-event"],
            Mode::Floor => &["--floor"],
            _ => &[],
        }
    }
}

/// One configuration in one round.
#[derive(Default, Debug, Clone)]
struct Sample {
    /// Flood: wall time per ping (ns), the flood's cycle time.
    flood_ns_per_ping: f64,
    /// Flood: ping's own mean RTT (µs, 1 µs resolution).
    flood_avg_us: f64,
    /// Adaptive: mean and p99 of the RTTs ping printed (ns).
    mean_ns: f64,
    p99_ns: f64,
    /// A process that is not traced, beside the trace: ns per system call
    /// (getppid) and per loopback UDP round trip of its own.
    bystander_syscall_ns: f64,
    bystander_udp_ns: f64,
    /// Tracer side, both runs together.
    events: u64,
    lost: u64,
    tracer_cpu_ns: u64,
    tracer_wall_ns: u64,
    tracer_rss_kb: u64,
}

/// From a flood's output: time per ping (ns, ping's own clock: the time it
/// spent pinging, without a tracer's start-up or shutdown) and ping's mean
/// RTT (µs).
fn parse_flood(text: &str, n: u32) -> Result<(f64, f64)> {
    let wall = ping_time(text)?;
    let avg = text
        .lines()
        .find_map(|l| l.split_once("rtt min/avg/max/mdev = "))
        .and_then(|(_, r)| r.split('/').nth(1)?.parse::<f64>().ok())
        .context("no rtt line in ping's output")?;
    let received = text
        .lines()
        .find_map(|l| l.split_once(" received,"))
        .and_then(|(a, _)| a.rsplit(", ").next()?.parse::<u32>().ok())
        .unwrap_or(0);
    if received != n {
        bail!("the flood lost pings: {received} of {n} answered");
    }
    Ok((wall.as_nanos() as f64 / n as f64, avg * 1000.0))
}

/// Mean and p99 (ns) of the `time=` values ping printed.
fn parse_adaptive(text: &str) -> Result<(f64, f64)> {
    let mut t: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split_once("time=")?.1.split(' ').next()?.parse().ok())
        .map(|ms: f64| ms * 1e6)
        .collect();
    if t.is_empty() {
        bail!("no RTTs in ping's output");
    }
    t.sort_by(f64::total_cmp);
    let mean = t.iter().sum::<f64>() / t.len() as f64;
    let p99 = t[((t.len() as f64 * 0.99).ceil() as usize).clamp(1, t.len()) - 1];
    Ok((mean, p99))
}

fn ping_args(flood: bool, n: u32) -> Vec<String> {
    let mut a = vec!["ping".to_string()];
    if flood {
        a.extend(["-q", "-f"].map(String::from));
    } else {
        a.push("-A".into());
    }
    a.extend(["-c".into(), n.to_string(), "127.0.0.1".into()]);
    a
}

/// Runs the ping directly; returns its output.
fn run_ping(flood: bool, n: u32) -> Result<String> {
    let args = ping_args(flood, n);
    let out = Command::new(&args[0])
        .args(&args[1..])
        .output()
        .context("running ping")?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the ping under lotrace (JSON to a file, ping's lines to stderr);
/// returns ping's output and lotrace's summary. The journeys go to a file,
/// not a pipe to xtask: reading 100 MB from a pipe would take a CPU from
/// the machine being measured, and charge it to lotrace.
fn run_lotrace(lotrace: &Path, extra: &[&str], flood: bool, n: u32) -> Result<(String, Value)> {
    let args = ping_args(flood, n);
    let path = std::env::temp_dir().join(format!("lotrace-bench-{}.json", std::process::id()));
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let out = Command::new(lotrace)
        .args(["trace", "--format", "json"])
        .args(extra)
        .args(&args)
        .stdout(file)
        .output()
        .context("running lotrace");
    let json = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    let out = out?;
    if !out.status.success() {
        bail!("lotrace failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let summary = json?
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .context("no summary from lotrace")?;
    Ok((String::from_utf8_lossy(&out.stderr).into_owned(), summary))
}

/// The elapsed time ping reports in its summary line.
fn ping_time(text: &str) -> Result<Duration> {
    text.lines()
        .find_map(|l| l.rsplit_once(", time "))
        .and_then(|(_, t)| t.trim_end_matches("ms").parse::<u64>().ok())
        .map(Duration::from_millis)
        .context("no time in ping's summary")
}

/// CPU time (user + system) of a live process so far, from /proc.
fn proc_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted after the command name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000_000 / hz)
}

/// Waits for a child with wait4, returning its peak RSS (kB).
fn reap(pid: u32) -> Result<u64> {
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    Ok(ru.ru_maxrss.max(0) as u64)
}

fn sample(mode: Mode, lotrace: &Path, probes: &[String], n: u32) -> Result<Sample> {
    let mut s = Sample::default();
    match mode {
        Mode::Untraced => {
            (s.flood_ns_per_ping, s.flood_avg_us) = parse_flood(&run_ping(true, n)?, n)?;
            (s.mean_ns, s.p99_ns) = parse_adaptive(&run_ping(false, n)?)?;
        }
        Mode::Lotrace | Mode::PerEvent | Mode::Summary | Mode::Floor => {
            let extra = mode.lotrace_options();
            let (text, sum) = run_lotrace(lotrace, extra, true, n)?;
            (s.flood_ns_per_ping, s.flood_avg_us) = parse_flood(&text, n)?;
            let (text2, sum2) = run_lotrace(lotrace, extra, false, n)?;
            (s.mean_ns, s.p99_ns) = parse_adaptive(&text2)?;
            for v in [&sum, &sum2] {
                s.events += v["events"].as_u64().unwrap_or(0);
                s.lost += v["lost_events"].as_u64().unwrap_or(0);
                s.tracer_cpu_ns += v["lotrace"]["cpu_ns"].as_u64().unwrap_or(0);
                s.tracer_wall_ns += v["lotrace"]["wall_ns"].as_u64().unwrap_or(0);
                s.tracer_rss_kb = s
                    .tracer_rss_kb
                    .max(v["lotrace"]["max_rss_kb"].as_u64().unwrap_or(0));
            }
        }
        Mode::Bpftrace => {
            let bt = Bpftrace::start(probes)?;
            let started = Instant::now();
            let cpu0 = proc_cpu_ns(bt.pid()).unwrap_or(0);
            let flood = run_ping(true, n);
            let adaptive = run_ping(false, n);
            let cpu = proc_cpu_ns(bt.pid()).unwrap_or(0).saturating_sub(cpu0);
            let wall = started.elapsed();
            let (hits, rss) = bt.stop()?;
            (s.flood_ns_per_ping, s.flood_avg_us) = parse_flood(&flood?, n)?;
            (s.mean_ns, s.p99_ns) = parse_adaptive(&adaptive?)?;
            s.events = hits;
            s.tracer_cpu_ns = cpu;
            s.tracer_wall_ns = wall.as_nanos() as u64;
            s.tracer_rss_kb = rss;
        }
    }
    (s.bystander_syscall_ns, s.bystander_udp_ns) = footprint(mode, lotrace, probes)?;
    Ok(s)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// VmRSS of a process, kB.
fn rss_kb(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A long traced flood, its RSS sampled every second.
fn long_run(lotrace: &Path, extra: &[&str], n: u32) -> Result<(Vec<u64>, Value)> {
    let mut child = Command::new(lotrace)
        .args(["trace", "--format", "json"])
        .args(extra)
        .args(ping_args(true, n))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running lotrace")?;
    let pid = child.id();
    let stdout = child.stdout.take().context("stdout")?;
    // Read journeys as they stream, parsing only the summary: a reader
    // slower than lotrace would block its output and so its draining.
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = Vec::new();
        let mut summary = None;
        while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            if !line.starts_with(b"{\"type\":\"journey\"") {
                summary = serde_json::from_slice::<Value>(&line)
                    .ok()
                    .filter(|v| v["type"] == "summary")
                    .or(summary);
            }
            line.clear();
        }
        summary
    });
    let mut rss = Vec::new();
    // Bounded: a million pings take well under ten minutes traced.
    let deadline = Instant::now() + Duration::from_secs(1200);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the long run did not finish in 20 minutes");
        }
        // From when the traced command runs: loading (BTF, the programs)
        // is not the steady state.
        let children = format!("/proc/{pid}/task/{pid}/children");
        let running = std::fs::read_to_string(&children).is_ok_and(|c| !c.trim().is_empty());
        if running && let Some(kb) = rss_kb(pid) {
            rss.push(kb);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let summary = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?
        .context("no summary from the long run")?;
    Ok((rss, summary))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cpus} CPUs, kernel {kernel}")
}

pub fn run(lotrace: &Path, o: &BenchOptions) -> Result<()> {
    let probes = bpftrace_probes(lotrace)?;
    println!("xtask: bench on {}", machine());
    println!("xtask: bpftrace counts {} probes", probes.len());
    println!(
        "xtask: where lotrace attaches a raw tracepoint, bpftrace (0.17 has no raw tracepoints) counts its classic one"
    );
    if o.pings {
        pings(lotrace, o, &probes)?;
    }
    if o.sockets {
        sockets::run_all(lotrace, &probes, o.rounds, o.requests, o.iperf_seconds)?;
    }
    Ok(())
}

/// The ping part: floods and adaptive pings, the bystander, the long run.
fn pings(lotrace: &Path, o: &BenchOptions, probes: &[String]) -> Result<()> {
    println!(
        "xtask: {} rounds of {} pings per run, interleaved",
        o.rounds, o.count
    );
    let modes = [
        Mode::Untraced,
        Mode::Lotrace,
        Mode::PerEvent,
        Mode::Summary,
        Mode::Bpftrace,
        Mode::Floor,
    ];
    let mut all: Vec<(u32, Mode, Sample)> = Vec::new();
    for round in 1..=o.rounds {
        for &m in &modes {
            let s = sample(m, lotrace, probes, o.count)
                .with_context(|| format!("round {round}, {}", m.name()))?;
            println!(
                "xtask: round {round} {:<22} flood {:>7.0} ns/ping, adaptive mean {:>6.0} ns p99 {:>6.0} ns; bystander {:>5.0} ns/syscall {:>6.0} ns/UDP round trip",
                m.name(),
                s.flood_ns_per_ping,
                s.mean_ns,
                s.p99_ns,
                s.bystander_syscall_ns,
                s.bystander_udp_ns
            );
            all.push((round, m, s));
        }
    }

    println!();
    println!(
        "| round | run | flood: time per ping | flood: ping's mean RTT | adaptive: mean RTT | adaptive: p99 RTT | events (lotrace) / probe hits (bpftrace) | events/s | lost | tracer CPU | tracer peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (round, m, s) in &all {
        let (ev, rate, lost, cpu, rss) = if *m == Mode::Untraced {
            ("".into(), "".into(), "".into(), "".into(), "".into())
        } else {
            let secs = s.tracer_wall_ns as f64 / 1e9;
            (
                s.events.to_string(),
                format!("{:.0}", s.events as f64 / secs.max(1e-9)),
                if *m != Mode::Bpftrace {
                    s.lost.to_string()
                } else {
                    "n/a".into()
                },
                format!(
                    "{:.0}% of a core",
                    100.0 * s.tracer_cpu_ns as f64 / s.tracer_wall_ns.max(1) as f64
                ),
                format!("{} MiB", s.tracer_rss_kb / 1024),
            )
        };
        println!(
            "| {round} | {} | {:.2} µs | {:.0} µs | {:.2} µs | {:.2} µs | {ev} | {rate} | {lost} | {cpu} | {rss} |",
            m.name(),
            s.flood_ns_per_ping / 1000.0,
            s.flood_avg_us,
            s.mean_ns / 1000.0,
            s.p99_ns / 1000.0,
        );
    }

    // Added cost per ping, per round, against the untraced run of the same
    // round; the ratio uses the medians over rounds.
    let per = |m: Mode, f: fn(&Sample) -> f64| -> Vec<f64> {
        (1..=o.rounds)
            .map(|r| {
                let get = |mm: Mode| {
                    all.iter()
                        .find(|(rr, x, _)| *rr == r && *x == mm)
                        .map(|(_, _, s)| f(s))
                        .unwrap_or(f64::NAN)
                };
                get(m) - get(Mode::Untraced)
            })
            .collect()
    };
    let flood_b = median(per(Mode::Bpftrace, |s| s.flood_ns_per_ping));
    let mean_b = median(per(Mode::Bpftrace, |s| s.mean_ns));
    let p99_b = median(per(Mode::Bpftrace, |s| s.p99_ns));
    println!();
    let flood_f = median(per(Mode::Floor, |s| s.flood_ns_per_ping));
    let mean_f = median(per(Mode::Floor, |s| s.mean_ns));
    println!(
        "added per ping (median over rounds), the floor (lotrace --floor: the same attach points, programs returning at once): flood cycle +{:.2} µs, adaptive mean RTT +{:.2} µs",
        flood_f / 1000.0,
        mean_f / 1000.0,
    );
    for m in [Mode::Lotrace, Mode::PerEvent, Mode::Summary] {
        let flood = median(per(m, |s| s.flood_ns_per_ping));
        let mean = median(per(m, |s| s.mean_ns));
        println!(
            "  {} vs the floor: flood cycle {:.2}x, adaptive mean RTT {:.2}x",
            m.name(),
            flood / flood_f,
            mean / mean_f
        );
    }
    for m in [Mode::Lotrace, Mode::PerEvent, Mode::Summary] {
        let flood = median(per(m, |s| s.flood_ns_per_ping));
        let mean = median(per(m, |s| s.mean_ns));
        let p99 = median(per(m, |s| s.p99_ns));
        println!(
            "added per ping (median over rounds), {} vs bpftrace: flood cycle +{:.2} vs +{:.2} µs, ratio {:.2}; adaptive mean RTT +{:.2} vs +{:.2} µs, ratio {:.2}; adaptive p99 +{:.2} vs +{:.2} µs",
            m.name(),
            flood / 1000.0,
            flood_b / 1000.0,
            flood / flood_b,
            mean / 1000.0,
            mean_b / 1000.0,
            mean / mean_b,
            p99 / 1000.0,
            p99_b / 1000.0,
        );
    }

    let untraced = |f: fn(&Sample) -> f64| {
        median(
            all.iter()
                .filter(|(_, m, _)| *m == Mode::Untraced)
                .map(|(_, _, s)| f(s))
                .collect(),
        )
    };
    let (sys0, udp0) = (
        untraced(|s| s.bystander_syscall_ns),
        untraced(|s| s.bystander_udp_ns),
    );
    let sys_b = median(per(Mode::Bpftrace, |s| s.bystander_syscall_ns));
    let udp_b = median(per(Mode::Bpftrace, |s| s.bystander_udp_ns));
    println!(
        "footprint on a process that is not traced (median over rounds; untraced {sys0:.0} ns per system call, {:.2} µs per loopback UDP round trip):",
        udp0 / 1000.0
    );
    for m in [Mode::Lotrace, Mode::PerEvent, Mode::Summary, Mode::Floor] {
        let sys = median(per(m, |s| s.bystander_syscall_ns));
        let udp = median(per(m, |s| s.bystander_udp_ns));
        println!(
            "  {} vs bpftrace: system call +{sys:.0} vs +{sys_b:.0} ns, ratio {:.2}; UDP round trip +{:.2} vs +{:.2} µs, ratio {:.2}",
            m.name(),
            sys / sys_b,
            udp / 1000.0,
            udp_b / 1000.0,
            udp / udp_b,
        );
    }

    for m in [Mode::Lotrace, Mode::Summary]
        .into_iter()
        .filter(|_| o.long > 0)
    {
        println!(
            "xtask: long run: {} pings flooded under {}, RSS sampled every second",
            o.long,
            m.name()
        );
        let (rss, sum) = long_run(lotrace, m.lotrace_options(), o.long)?;
        let n = rss.len();
        let tenth = (n / 10).max(1);
        let early = rss.iter().take(tenth).copied().max().unwrap_or(0);
        let late = rss
            .iter()
            .skip(n.saturating_sub(tenth))
            .copied()
            .max()
            .unwrap_or(0);
        println!(
            "long run, {}: {} journeys, {} events, {} lost; RSS max {} MiB over the first tenth of the run, {} MiB over the last ({} samples); lotrace CPU {:.0}% of a core",
            m.name(),
            sum["journeys"],
            sum["events"],
            sum["lost_events"],
            early / 1024,
            late / 1024,
            n,
            100.0 * sum["lotrace"]["cpu_ns"].as_f64().unwrap_or(0.0)
                / sum["lotrace"]["wall_ns"].as_f64().unwrap_or(1.0)
        );
    }
    Ok(())
}

//! The benchmark's TCP part: what tracing costs a request/response
//! workload (redis-benchmark against redis-server) and a stream (iperf3),
//! untraced, under lotrace and under bpftrace counting the same probes,
//! interleaved. The servers run untraced; the client is what is traced.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{bpftrace::Bpftrace, median};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Untraced,
    Lotrace,
    Summary,
    Bpftrace,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Lotrace => "lotrace",
            Mode::Summary => "lotrace --summary-only",
            Mode::Bpftrace => "bpftrace (count only)",
        }
    }
}

/// A server of the benchmark's, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn start(args: &[&str], port: u16) -> Result<Server> {
    let child = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args[0]))?;
    let s = Server(child);
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > until {
            bail!("{} never listened on port {port}", args[0]);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(s)
}

/// Runs `cmd` as `mode` says; returns its stdout, and lotrace's summary
/// (JSON written to a file: the journeys of 300,000 requests are a few
/// GB, and reading them from a pipe would take a CPU from the machine
/// being measured) or bpftrace's probe hits.
fn run(mode: Mode, lotrace: &Path, probes: &[String], cmd: &[String]) -> Result<(String, Value)> {
    let capture = |c: &mut Command| -> Result<String> {
        let out = c.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    match mode {
        Mode::Untraced => Ok((capture(Command::new(&cmd[0]).args(&cmd[1..]))?, Value::Null)),
        Mode::Bpftrace => {
            let bt = Bpftrace::start(probes)?;
            let text = capture(Command::new(&cmd[0]).args(&cmd[1..]));
            let (hits, _) = bt.stop()?;
            Ok((text?, serde_json::json!({ "events": hits })))
        }
        Mode::Lotrace | Mode::Summary => {
            let path = std::env::temp_dir()
                .join(format!("lotrace-bench-sockets-{}.json", std::process::id()));
            let file = std::fs::File::create(&path)?;
            let mut c = Command::new(lotrace);
            c.args(["trace", "--format", "json"]);
            if mode == Mode::Summary {
                c.arg("--summary-only");
            }
            let out = c.args(cmd).stdout(file).output().context("running lotrace");
            // The summary is the last line: read only the file's end.
            let summary = last_line(&path);
            let _ = std::fs::remove_file(&path);
            let out = out?;
            if !out.status.success() {
                bail!(
                    "lotrace failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            // The command's own output went to stderr (stdout is JSON).
            Ok((String::from_utf8_lossy(&out.stderr).into_owned(), summary?))
        }
    }
}

fn last_line(path: &Path) -> Result<Value> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(1 << 20)))?;
    let mut tail = String::new();
    f.read_to_string(&mut tail)?;
    tail.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .context("no summary from lotrace")
}

/// redis-benchmark's `--csv` lines: the mean of its tests' requests/s.
fn requests_per_s(text: &str) -> Result<f64> {
    let rates: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',').map(|x| x.trim_matches('"'));
            let _test = f.next()?;
            f.next()?.parse().ok()
        })
        .collect();
    if rates.is_empty() {
        bail!("no requests/s in redis-benchmark's output: {text}");
    }
    Ok(rates.iter().sum::<f64>() / rates.len() as f64)
}

/// iperf3's `-J` report: bits per second received.
fn bits_per_s(text: &str) -> Result<f64> {
    let v: Value = serde_json::from_str(text).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received in iperf3's report")
}

struct Sample {
    round: u32,
    mode: Mode,
    rate: f64,
    events: u64,
    lost: u64,
    cpu_pct: f64,
}

fn sample(
    mode: Mode,
    round: u32,
    lotrace: &Path,
    probes: &[String],
    cmd: &[String],
    parse: fn(&str) -> Result<f64>,
) -> Result<Sample> {
    let (text, v) = run(mode, lotrace, probes, cmd)?;
    let cpu = v["lotrace"]["cpu_ns"].as_f64().unwrap_or(0.0);
    let wall = v["lotrace"]["wall_ns"].as_f64().unwrap_or(0.0);
    Ok(Sample {
        round,
        mode,
        rate: parse(&text)?,
        events: v["events"].as_u64().unwrap_or(0),
        lost: v["lost_events"].as_u64().unwrap_or(0),
        cpu_pct: if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 },
    })
}

/// What tracing lost, per round, as a fraction of the untraced rate; then
/// the medians, and lotrace's loss over bpftrace's.
fn report(what: &str, unit: &str, scale: f64, all: &[Sample], modes: &[Mode], rounds: u32) {
    println!();
    println!(
        "| round | run | {what} | events (lotrace) / probe hits (bpftrace) | lost | lotrace CPU |"
    );
    println!("|---|---|---|---|---|---|");
    for s in all {
        let traced = s.mode != Mode::Untraced;
        println!(
            "| {} | {} | {:.2} {unit} | {} | {} | {} |",
            s.round,
            s.mode.name(),
            s.rate / scale,
            if traced {
                s.events.to_string()
            } else {
                String::new()
            },
            if matches!(s.mode, Mode::Lotrace | Mode::Summary) {
                s.lost.to_string()
            } else {
                String::new()
            },
            if matches!(s.mode, Mode::Lotrace | Mode::Summary) {
                format!("{:.0}% of a core", s.cpu_pct)
            } else {
                String::new()
            },
        );
    }
    let loss = |m: Mode| -> f64 {
        median(
            (1..=rounds)
                .map(|r| {
                    let get = |mm: Mode| {
                        all.iter()
                            .find(|s| s.round == r && s.mode == mm)
                            .map_or(f64::NAN, |s| s.rate)
                    };
                    1.0 - get(m) / get(Mode::Untraced)
                })
                .collect(),
        )
    };
    let b = loss(Mode::Bpftrace);
    println!();
    println!(
        "{what} lost to tracing (median over rounds): bpftrace counting {:.1}%",
        100.0 * b
    );
    for &m in modes
        .iter()
        .filter(|m| matches!(m, Mode::Lotrace | Mode::Summary))
    {
        let l = loss(m);
        println!(
            "  {}: {:.1}%, {:.2}x counting's loss",
            m.name(),
            100.0 * l,
            l / b
        );
    }
}

pub(super) fn run_all(
    lotrace: &Path,
    probes: &[String],
    rounds: u32,
    requests: u32,
    iperf_secs: u32,
) -> Result<()> {
    let port = free_port()?;
    let p = port.to_string();
    let _redis = start(
        &[
            "redis-server",
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        port,
    )?;
    let bench: Vec<String> = [
        "redis-benchmark",
        "-p",
        &p,
        "-t",
        "ping,get",
        "-n",
        &requests.to_string(),
        "--csv",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    println!(
        "xtask: redis-benchmark -t ping,get -n {requests} against redis-server, {rounds} rounds, interleaved"
    );
    let modes = [Mode::Untraced, Mode::Lotrace, Mode::Summary, Mode::Bpftrace];
    let mut all = Vec::new();
    for round in 1..=rounds {
        for &m in &modes {
            let s = sample(m, round, lotrace, probes, &bench, requests_per_s)
                .with_context(|| format!("redis round {round}, {}", m.name()))?;
            println!(
                "xtask: round {round} {:<22} {:>9.0} requests/s, {} events, {} lost",
                m.name(),
                s.rate,
                s.events,
                s.lost
            );
            all.push(s);
        }
    }
    report("requests/s", "k/s", 1000.0, &all, &modes, rounds);

    let port = free_port()?;
    let p = port.to_string();
    let _iperf = start(&["iperf3", "-s", "-p", &p, "-B", "127.0.0.1"], port)?;
    let iperf: Vec<String> = [
        "iperf3",
        "-c",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        &iperf_secs.to_string(),
        "-J",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    println!();
    println!("xtask: iperf3 -c 127.0.0.1 -t {iperf_secs} (TCP), {rounds} rounds, interleaved");
    let modes = [Mode::Untraced, Mode::Summary, Mode::Bpftrace];
    let mut all = Vec::new();
    for round in 1..=rounds {
        for &m in &modes {
            let s = sample(m, round, lotrace, probes, &iperf, bits_per_s)
                .with_context(|| format!("iperf3 round {round}, {}", m.name()))?;
            println!(
                "xtask: round {round} {:<22} {:>7.2} Gbit/s, {} events, {} lost",
                m.name(),
                s.rate / 1e9,
                s.events,
                s.lost
            );
            all.push(s);
        }
    }
    report("throughput", "Gbit/s", 1e9, &all, &modes, rounds);
    Ok(())
}

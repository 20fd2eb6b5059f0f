//! lotrace's build, run and test orchestration: `cargo xtask <command>`.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod kernels;
mod matrix;
mod setup;
mod vm;

use setup::{VM_PACKAGES, have, install_packages, setup};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test lotrace")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need, when it is missing.
    Setup,
    /// Build lotrace (release) with its eBPF programs embedded.
    Build,
    /// Build, then run lotrace with ARGS (as root; through sudo if needed).
    ///
    /// Example: cargo xtask run -- trace ping 127.0.0.1
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Boot a Debian kernel under qemu and run lotrace with ARGS inside;
    /// its output comes back on stdout, and its exit status is ours.
    ///
    /// The kernel is the newest Debian cloud kernel of the series, found
    /// and downloaded through xtask's own apt configuration under
    /// target/vm/apt (the machine's apt sources are left alone) and cached
    /// under target/vm; its version is printed on stderr. A guest that
    /// prints nothing for a minute is taken for hung, killed and booted
    /// once more.
    ///
    /// Example: cargo xtask vm --kernel 5.10 -- trace --backend kprobe --format json ping -c 3 127.0.0.1
    Vm {
        /// The kernel series (5.10: bullseye; 6.1, 6.12: bookworm; 6.18:
        /// trixie-backports; latest: the newest of those suites and sid).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(kernels::SERIES))]
        kernel: String,
        /// Boot the series' PREEMPT_RT build (`-rt-amd64`) instead of its
        /// cloud build.
        #[arg(long)]
        rt: bool,
        /// vCPUs (1 or 2; two run in turn, in one qemu thread).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
        cpus: u32,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// The whole test suite: formatting, clippy, unit tests, the
    /// integration tests that trace real pings (as root), the fuzz target
    /// for a bounded time, and the kernel matrix under qemu.
    Test,
    /// Only the kernel matrix of `test`: boot each Debian kernel under qemu
    /// and check, in each, `lotrace probes` and a traced ping with every
    /// backend and with --summary-only.
    ///
    /// Guests run side by side, as many as there are CPUs. Prints each
    /// guest's time, says when a guest hung (printed nothing for a minute)
    /// and was booted again, and ends with a table: kernel × backend,
    /// journeys complete, stages observed and not. Every guest runs even
    /// if one fails.
    ///
    /// Example: cargo xtask matrix --kernel 5.10 --kernel latest --rounds 5
    Matrix {
        /// A kernel series to boot (repeatable; all of them by default).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(kernels::SERIES))]
        kernel: Vec<String>,
        /// How many times to run the matrix, back to back.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
    },
    /// What tracing costs: interleaved rounds of a ping flood untraced,
    /// under lotrace and under a counting-only bpftrace on the same probes,
    /// each with a bystander (an untraced process's system calls and UDP
    /// round trips); then a long traced flood to watch lotrace's memory;
    /// then TCP: redis-benchmark against redis-server and an iperf3
    /// stream, the same ways (as root).
    Bench {
        /// Pings per run.
        #[arg(long, default_value_t = 20000)]
        count: u32,
        /// Rounds of each configuration.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Pings in the long memory run (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        long: u32,
        /// Which parts to run.
        #[arg(long, default_value = "all", value_parser = ["all", "pings", "tcp"])]
        part: String,
        /// redis-benchmark's requests per test (`-t ping,get`: three tests).
        #[arg(long, default_value_t = 100_000)]
        requests: u32,
        /// iperf3's seconds per run.
        #[arg(long, default_value_t = 5)]
        iperf_seconds: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Build => setup().and_then(|_| build()).map(|_| 0),
        Cmd::Run { args } => run(args),
        Cmd::Vm {
            kernel,
            rt,
            cpus,
            args,
        } => vm_run(&kernel, rt, cpus, args),
        Cmd::Test => test().map(|_| 0),
        Cmd::Matrix { kernel, rounds } => matrix_run(&kernel, rounds).map(|_| 0),
        Cmd::Bench {
            count,
            rounds,
            long,
            part,
            requests,
            iperf_seconds,
        } => bench_run(bench::BenchOptions {
            count,
            rounds,
            long,
            pings: part != "tcp",
            sockets: part != "pings",
            requests,
            iperf_seconds,
        }),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace());
    c
}

fn build() -> Result<PathBuf> {
    status(cargo().args(["build", "--release", "--package", "lotrace"]))?;
    Ok(workspace().join("target/release/lotrace"))
}

fn run(args: Vec<OsString>) -> Result<u8> {
    setup()?;
    let bin = build()?;
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else if have("sudo") {
        eprintln!("xtask: lotrace loads eBPF programs: running it through sudo");
        let mut c = Command::new("sudo");
        c.arg("--preserve-env=PATH").arg(&bin);
        c
    } else {
        bail!(
            "lotrace needs root to load eBPF programs and sudo is not installed: run `cargo xtask run` as root"
        );
    };
    let st = cmd.args(&args).status().context("cannot run lotrace")?;
    Ok(st.code().unwrap_or(1).clamp(0, 255) as u8)
}

fn bench_run(o: bench::BenchOptions) -> Result<u8> {
    setup()?;
    install_packages(&[
        ("bpftrace", "bpftrace", "the benchmark's peer tracer"),
        ("redis-server", "redis-server", "the benchmark's TCP server"),
        (
            "redis-tools",
            "redis-benchmark",
            "the benchmark's TCP client",
        ),
        ("iperf3", "iperf3", "the benchmark's TCP stream"),
    ])?;
    if !is_root() {
        bail!("the benchmark loads eBPF programs: run `cargo xtask bench` as root");
    }
    if o.rounds == 0 || o.count == 0 {
        bail!("--rounds and --count must be at least 1");
    }
    let bin = build()?;
    bench::run(&bin, &o)?;
    Ok(0)
}

/// How long `test` fuzzes the record decoder, at most.
const FUZZ_SECONDS: u32 = 45;
/// How many inputs it tries, at most.
const FUZZ_RUNS: u32 = 50_000;

/// Fuzzes the record decoder (and the journeys and renderings a decoded
/// file produces) for a bounded time, seeded with the test fixtures.
fn fuzz_record(seconds: u32) -> Result<()> {
    let nightly_ok = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly_ok {
        println!("xtask: installing the nightly Rust toolchain (cargo fuzz needs it)");
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let has_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        println!("xtask: installing cargo-fuzz (fuzzes the record decoder)");
        status(Command::new("cargo").args(["+nightly", "install", "cargo-fuzz", "--locked"]))?;
    }
    let ws = workspace();
    let corpus = ws.join("target/fuzz/corpus");
    let artifacts = ws.join("target/fuzz/artifacts");
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    println!("xtask: fuzzing the record decoder for {seconds} s");
    status(
        Command::new("cargo")
            .current_dir(&ws)
            .args(["+nightly", "fuzz", "run", "record"])
            .arg(&corpus)
            .arg(ws.join("lotrace/tests/fixtures"))
            .arg("--")
            // A fixed seed and a bounded run count: CI replays the same
            // inputs each time (a prefix of them on a slow machine), so it
            // fails only when the code changes; longer hunts are local.
            .arg("-seed=1")
            .arg(format!("-runs={FUZZ_RUNS}"))
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1"),
    )
    .context(
        "the fuzzer found an input that crashes the record decoder (see target/fuzz/artifacts)",
    )
}

fn vm_run(kernel: &str, rt: bool, cpus: u32, args: Vec<String>) -> Result<u8> {
    setup()?;
    install_packages(VM_PACKAGES)?;
    let bin = build()?;
    let machine = vm::Machine {
        flavour: if rt {
            kernels::Flavour::Rt
        } else {
            kernels::Flavour::Cloud
        },
        cpus,
        ..vm::PLAIN
    };
    let guest = vm::boot(kernel, &bin, &[args], true, &machine)?;
    Ok(guest.runs[0].exit.clamp(0, 255) as u8)
}

fn test() -> Result<()> {
    setup()?;
    install_packages(VM_PACKAGES)?;
    if !is_root() {
        bail!(
            "the integration tests load eBPF programs and trace real pings: run `cargo xtask test` as root"
        );
    }
    println!("xtask: cargo fmt --check");
    status(cargo().args(["fmt", "--all", "--check"]))?;
    println!("xtask: cargo clippy -D warnings");
    status(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("xtask: unit and integration tests");
    status(cargo().args(["test", "--workspace"]))?;
    fuzz_record(FUZZ_SECONDS)?;
    let bin = build()?;
    matrix::run(&bin, kernels::SERIES, 1)?;
    println!("xtask: all tests passed");
    Ok(())
}

fn matrix_run(kernels: &[String], rounds: u32) -> Result<()> {
    setup()?;
    install_packages(VM_PACKAGES)?;
    let bin = build()?;
    let series: Vec<&str> = if kernels.is_empty() {
        kernels::SERIES.to_vec()
    } else {
        kernels.iter().map(|k| k.as_str()).collect()
    };
    matrix::run(&bin, &series, rounds)
}

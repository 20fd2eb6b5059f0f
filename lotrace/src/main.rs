use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use lotrace::{
    cmd::{compare, probes, replay, trace},
    kernel::btf::VMLINUX_BTF,
    model::{plan::BackendChoice, unavailable::Unavailable},
    output::{Format, Lang, Style},
};

/// Trace a ping's journey through the Linux kernel with eBPF, stage by
/// stage: sendto, route lookup, dev_queue_xmit, the loopback "fake NIC",
/// netif_rx and the backlog queue, the NET_RX softirq, and back up to ping.
#[derive(Parser)]
#[command(name = "lotrace", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// How the output looks.
#[derive(Args, Clone)]
struct Output {
    /// Output format: a timeline per ping and tables, or JSON Lines.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Annotate each stage with what the kernel does there.
    #[arg(long)]
    explain: bool,
    /// Language of --explain.
    #[arg(long, value_enum, default_value_t = Lang::En)]
    lang: Lang,
    /// Print a latency histogram per stage in the summary.
    #[arg(long)]
    hist: bool,
    /// Also write a trace that ui.perfetto.dev opens: a track per CPU and
    /// task, a slice per stage, a flow from each request to its reply.
    #[arg(long, value_name = "FILE")]
    perfetto: Option<PathBuf>,
}

impl Output {
    fn style(&self) -> Style {
        Style {
            explain: self.explain.then_some(self.lang),
            hist: self.hist,
        }
    }
}

/// How the kernel is probed.
#[derive(Args, Clone)]
struct Probing {
    /// Size of the event ring buffer in bytes: a power of two, at least
    /// one page. Events that do not fit are counted as lost.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20, value_parser = parse_ring_size)]
    ring_size: u32,
    /// Kernel BTF to read struct layouts from.
    #[arg(long, value_name = "PATH", default_value = VMLINUX_BTF)]
    btf: PathBuf,
    /// How stages are observed: per stage the best the kernel allows
    /// (fentry, else kprobe, else tracepoint), or one backend forced.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// With a forced backend, trace even if it cannot observe some
    /// stages (they are reported as missing).
    #[arg(long)]
    allow_missing: bool,
    /// Run the command inside this network namespace (a name from
    /// `ip netns list`); the probes see every namespace.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Under sudo, run the command as root too; by default it runs as the
    /// user who invoked sudo (SUDO_UID/SUDO_GID).
    #[arg(long)]
    child_as_root: bool,
    /// Show the eBPF programs' diagnostics (aya-log) and lotrace's own.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run COMMAND (usually ping) under the probes and print each echo's
    /// journey, request and reply, with the time spent at every stage.
    ///
    /// Example: lotrace trace ping -c 5 127.0.0.1
    #[command(arg_required_else_help = true)]
    Trace {
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        probing: Probing,
        /// Also save the raw events, the probes and the command's output to
        /// FILE, to be shown again with `lotrace replay FILE`.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// Keep only the summary, aggregated inside the kernel: per-stage
        /// histograms, RTT and outcomes, no journey per ping. For floods
        /// and long runs: nothing is streamed, so tracing costs the packets
        /// less and lotrace itself almost nothing. Echoes are told apart by
        /// family and sequence number.
        #[arg(long, conflicts_with_all = ["record", "perfetto", "ring_size"])]
        summary_only: bool,
        /// The command to trace and its arguments, e.g. `ping -c 5 127.0.0.1`.
        #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Trace a short ping to each TARGET and print the stage tables side by
    /// side, differences marked: 127.0.0.1 vs ::1 vs localhost vs 0.0.0.0.
    Compare {
        /// Pings per target.
        #[arg(short = 'c', long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        probing: Probing,
        /// Hosts to ping.
        #[arg(default_values_t = ["127.0.0.1".to_string(), "::1".to_string(), "localhost".to_string(), "0.0.0.0".to_string()])]
        targets: Vec<String>,
    },
    /// List every stage, each probe that could observe it, whether this
    /// kernel allows it (and why not), and what `--backend auto` chooses.
    Probes {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Kernel BTF to read function and struct information from.
        #[arg(long, value_name = "PATH", default_value = VMLINUX_BTF)]
        btf: PathBuf,
    },
    /// Show a trace saved with `trace --record` again; needs no root.
    Replay {
        #[command(flatten)]
        output: Output,
        /// A file written by `lotrace trace --record FILE`.
        file: PathBuf,
    },
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two of at least 4096 bytes"));
    }
    Ok(n)
}

fn options(
    command: Vec<String>,
    output: &Output,
    p: &Probing,
    record: Option<PathBuf>,
) -> trace::TraceOptions {
    trace::TraceOptions {
        command,
        style: output.style(),
        perfetto: output.perfetto.clone(),
        netns: p.netns.clone(),
        backend: p.backend,
        allow_missing: p.allow_missing,
        format: output.format,
        record,
        ring_size: p.ring_size,
        btf: p.btf.clone(),
        verbose: p.verbose,
        summary_only: false,
        run_as: if p.child_as_root {
            None
        } else {
            lotrace::cmd::child::sudo_user()
        },
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let verbose = match &cli.command {
        Cmd::Trace { probing, .. } | Cmd::Compare { probing, .. } => probing.verbose,
        _ => false,
    };
    env_logger::Builder::new()
        .filter_level(if verbose {
            log::LevelFilter::Info
        } else {
            log::LevelFilter::Warn
        })
        .format_target(false)
        .init();
    let result = match cli.command {
        Cmd::Trace {
            output,
            probing,
            record,
            summary_only,
            command,
        } => runtime().and_then(|rt| {
            let mut opts = options(command, &output, &probing, record);
            opts.summary_only = summary_only;
            rt.block_on(trace::run(opts))
        }),
        Cmd::Compare {
            count,
            format,
            probing,
            targets,
        } => {
            let output = Output {
                format,
                explain: false,
                lang: Lang::En,
                hist: false,
                perfetto: None,
            };
            runtime().and_then(|rt| {
                rt.block_on(compare::run(compare::CompareOptions {
                    targets,
                    count,
                    format,
                    template: options(Vec::new(), &output, &probing, None),
                }))
            })
        }
        Cmd::Probes { format, btf } => probes::run(&btf, format),
        Cmd::Replay { output, file } => replay::run(
            &file,
            output.format,
            output.style(),
            output.perfetto.as_deref(),
        ),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            print_verifier_log(&e, verbose);
            eprintln!("lotrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version as clap prints them; a usage error in one line, like
/// every other error.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let text = e.render().to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("bad arguments")
        .trim()
        .trim_start_matches("error: ");
    eprintln!("lotrace: error: {first} (see `lotrace --help`)");
    ExitCode::from(2)
}

/// Lines of a rejected program's verifier log shown without `-v`: its
/// verdict is at the end.
const VERIFIER_TAIL: usize = 20;

/// The kernel's own words on a program it refused, before the one-line
/// error: the end of the verifier's log, or all of it with `-v`.
fn print_verifier_log(e: &anyhow::Error, verbose: bool) {
    let Some(refusal) = e
        .chain()
        .find_map(|c| c.downcast_ref::<Unavailable>())
        .and_then(Unavailable::refusal)
    else {
        return;
    };
    let (lines, total) = refusal.log_lines((!verbose).then_some(VERIFIER_TAIL));
    if lines.is_empty() {
        return;
    }
    if lines.len() < total {
        eprintln!(
            "lotrace: the verifier's log, last {} of {total} lines (-v shows all):",
            lines.len()
        );
    } else {
        eprintln!("lotrace: the verifier's log:");
    }
    for l in lines {
        eprintln!("    {l}");
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

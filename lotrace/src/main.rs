use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lotrace::{Format, btf::VMLINUX_BTF, plan::BackendChoice, probes, replay, trace};

/// Trace a ping's journey through the Linux kernel with eBPF, stage by
/// stage: sendto, route lookup, dev_queue_xmit, the loopback "fake NIC",
/// netif_rx and the backlog queue, the NET_RX softirq, and back up to ping.
#[derive(Parser)]
#[command(name = "lotrace", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run COMMAND (usually ping) under the probes and print each echo's
    /// journey, request and reply, with the time spent at every stage.
    ///
    /// Example: lotrace trace ping -c 5 127.0.0.1
    #[command(arg_required_else_help = true)]
    Trace {
        /// Output format: a timeline per ping and tables, or JSON Lines.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Also save the raw events, the probes and the command's output to
        /// FILE, to be shown again with `lotrace replay FILE`.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// Size of the event ring buffer in bytes: a power of two, at least
        /// one page. Events that do not fit are counted as lost.
        #[arg(long, value_name = "BYTES", default_value_t = 4 << 20, value_parser = parse_ring_size)]
        ring_size: u32,
        /// Kernel BTF to read struct layouts from.
        #[arg(long, value_name = "PATH", default_value = VMLINUX_BTF)]
        btf: PathBuf,
        /// How stages are observed: per stage the best the kernel allows
        /// (fentry, else kprobe, else tracepoint), or one backend forced.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        /// Run COMMAND inside this network namespace (a name from
        /// `ip netns list`); the probes see every namespace.
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
        /// With a forced backend, trace even if it cannot observe some
        /// stages (they are reported as missing).
        #[arg(long)]
        allow_missing: bool,
        /// Show the eBPF programs' diagnostics (aya-log) and lotrace's own.
        #[arg(short, long)]
        verbose: bool,
        /// The command to trace and its arguments, e.g. `ping -c 5 127.0.0.1`.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
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
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = matches!(cli.command, Cmd::Trace { verbose: true, .. });
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
            format,
            record,
            ring_size,
            btf,
            backend,
            netns,
            allow_missing,
            verbose,
            command,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(trace::run(trace::TraceOptions {
                    command,
                    netns,
                    backend,
                    allow_missing,
                    format,
                    record,
                    ring_size,
                    btf,
                    verbose,
                }))
            }),
        Cmd::Probes { format, btf } => probes::run(&btf, format),
        Cmd::Replay { format, file } => replay::run(&file, format),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("lotrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

//! The command line, written once: `main` parses it, and `--help`, the
//! shell completions and the man page are all generated from it.

use std::{io::Write, path::PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::{
    cmd::{child::sudo_user, compare::CompareOptions, trace::TraceOptions},
    kernel::btf::VMLINUX_BTF,
    model::{plan::BackendChoice, unavailable::Unavailable},
    output::{Format, Lang, Style},
};

const EXIT_CODES_TRACE: &str = "\
Exit status:
  N      the traced command's own exit status (0 when it was stopped by
         the Ctrl-C or SIGTERM lotrace passed on to it; 128+S when a
         signal S killed it)
  1      lotrace failed (the error is one line on stderr, starting
         `lotrace: error:`)
  2      the command line is wrong";

const EXIT_CODES: &str = "\
Exit status:
  0      done
  1      lotrace failed (the error is one line on stderr, starting
         `lotrace: error:`)
  2      the command line is wrong";

const TOP_AFTER: &str = "\
Examples:
  sudo lotrace trace ping -c 5 127.0.0.1     each echo's journey, then the summary
  sudo lotrace probes                        what this kernel lets lotrace attach
  sudo lotrace compare                       127.0.0.1, ::1, localhost and 0.0.0.0 side by side
  lotrace replay saved.lotrace               a recorded trace again, without root

`lotrace COMMAND --help` says more about each command; `lotrace man` prints
the manual page.";

const TRACE_AFTER: &str = "\
Examples:
  sudo lotrace trace ping -c 5 127.0.0.1
      A timeline per echo (request and reply), then per-stage latencies.
  sudo lotrace trace --explain --lang zh ping -c 1 ::1
      Each stage annotated with what the kernel does there, in Chinese.
  sudo lotrace trace --format json ping -c 5 127.0.0.1 > trace.jsonl
      JSON Lines: one object per journey, then a summary object; the
      command's own output goes to stderr.
  sudo lotrace trace --record ping5.lotrace --perfetto ping5.json ping -c 5 127.0.0.1
      Also save the raw events for `lotrace replay`, and a trace for
      ui.perfetto.dev.
  sudo lotrace trace --summary-only ping -f -c 100000 127.0.0.1
      A flood, aggregated in the kernel: only the summary.
  sudo lotrace trace --backend kprobe --allow-missing ping -c 3 127.0.0.1
      Force kprobes, tracing without the stages they cannot observe.
  sudo lotrace trace --netns blue ping -c 3 10.0.0.2
      Run the ping inside the network namespace `blue`.
  sudo lotrace trace curl -s http://127.0.0.1:8000/
      TCP: a journey per segment (the server's side too), then the
      handshake and each request paired with its response. UDP alike
      (a query and its answer).

Run as root (CAP_BPF and CAP_PERFMON): through sudo, the command runs as
the user who invoked sudo unless --child-as-root.

";

const COMPARE_AFTER: &str = "\
Examples:
  sudo lotrace compare
      127.0.0.1, ::1, localhost and 0.0.0.0, five pings each.
  sudo lotrace compare -c 20 127.0.0.1 ::1
  sudo lotrace compare --format json 127.0.0.1 localhost
  sudo lotrace compare 127.0.0.1 ::1 -- curl -s -o /dev/null http://{host}:8000/
      One curl per target (a server listening on both, such as
      `python3 -m http.server --bind ::`): TCP's stages and exchanges.
  sudo lotrace compare --netns blue 127.0.0.1 10.0.0.1 -- dig @{} example.test
      UDP, inside the network namespace `blue`.

Exit status:
  0      every ping (or COMMAND) exited 0
  1      one failed (its status is under the table), or lotrace failed
  2      the command line is wrong";

const PROBES_AFTER: &str = "\
Examples:
  sudo lotrace probes
  lotrace probes --format json
      Without root, what needs root to find out is marked `not checked`.

";

const REPLAY_AFTER: &str = "\
Examples:
  lotrace replay ping5.lotrace
  lotrace replay --format json ping5.lotrace
  lotrace replay --hist --explain ping5.lotrace
  lotrace replay --perfetto ping5.json ping5.lotrace

";

/// Trace a ping's journey through the Linux kernel with eBPF, stage by
/// stage: sendto, route lookup, dev_queue_xmit, the loopback "fake NIC",
/// netif_rx and the backlog queue, the NET_RX softirq, and back up to ping.
#[derive(Parser)]
#[command(name = "lotrace", version, about, long_about = None, after_long_help = TOP_AFTER)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

/// How the output looks.
#[derive(Args, Clone)]
#[command(next_help_heading = "Output")]
pub struct Output {
    /// Output format: a timeline per ping and tables, or JSON Lines.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Annotate each stage with what the kernel does there.
    #[arg(long)]
    pub explain: bool,
    /// Language of --explain.
    #[arg(long, value_enum, default_value_t = Lang::En)]
    pub lang: Lang,
    /// Print a latency histogram per stage in the summary.
    #[arg(long)]
    pub hist: bool,
    /// Also write a trace that ui.perfetto.dev opens: a track per CPU and
    /// task, a slice per stage, a flow from each request to its reply.
    #[arg(long, value_name = "FILE")]
    pub perfetto: Option<PathBuf>,
}

impl Output {
    pub fn style(&self) -> Style {
        Style {
            explain: self.explain.then_some(self.lang),
            hist: self.hist,
        }
    }
}

/// How the kernel is probed.
#[derive(Args, Clone)]
#[command(next_help_heading = "Probing")]
pub struct Probing {
    /// How stages are observed: per stage the best the kernel allows
    /// (fentry, else kprobe, else tracepoint), or one backend forced.
    /// `lotrace probes` shows what each allows here.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// With a forced backend, trace even if it cannot observe some
    /// stages (they are reported as missing).
    #[arg(long)]
    pub allow_missing: bool,
    /// Kernel BTF to read struct layouts from.
    #[arg(long, value_name = "PATH", default_value = VMLINUX_BTF)]
    pub btf: PathBuf,
    /// Size of the event ring buffer in bytes: a power of two, at least
    /// one page. Events that do not fit are counted as lost.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20, value_parser = parse_ring_size)]
    pub ring_size: u32,
    /// Show the eBPF programs' diagnostics (aya-log) and lotrace's own,
    /// and the whole verifier log of a program the kernel rejects.
    #[arg(short, long)]
    pub verbose: bool,
    /// Attach every probe as usual but make each program return at once:
    /// nothing is traced or reported. What the attach points alone cost
    /// the traced command, the floor `cargo xtask bench` measures.
    #[arg(long)]
    pub floor: bool,
    /// Send each stage's event to lotrace on its own, as it happens,
    /// instead of assembling each echo's events in the kernel and sending
    /// them as one record when the echo ends. The same journeys, from
    /// about 25 ring buffer records per echo instead of one; for
    /// comparison.
    #[arg(long)]
    pub per_event: bool,
}

/// Where and as whom the traced command runs.
#[derive(Args, Clone)]
#[command(next_help_heading = "The traced command")]
pub struct Child {
    /// Run the command inside this network namespace (a name from
    /// `ip netns list`); the probes see every namespace.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Under sudo, run the command as root too; by default it runs as the
    /// user who invoked sudo (SUDO_UID/SUDO_GID).
    #[arg(long)]
    pub child_as_root: bool,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run COMMAND (usually ping) under the probes and print each echo's
    /// journey, request and reply, with the time spent at every stage; and
    /// each TCP segment's and UDP datagram's of the command's flows, paired
    /// into requests and responses.
    #[command(arg_required_else_help = true, after_long_help = format!("{TRACE_AFTER}{EXIT_CODES_TRACE}"))]
    Trace {
        #[command(flatten)]
        output: Output,
        /// Also save the raw events, the probes and the command's output to
        /// FILE, to be shown again with `lotrace replay FILE`.
        #[arg(long, value_name = "FILE", help_heading = "Output")]
        record: Option<PathBuf>,
        /// Keep only the summary, aggregated inside the kernel: per-stage
        /// histograms, RTT and outcomes, no journey per ping. For floods
        /// and long runs: nothing is streamed, so tracing costs the packets
        /// less and lotrace itself almost nothing. Echoes are told apart by
        /// family and sequence number. TCP and UDP packets are counted per
        /// protocol and stage (not paired into exchanges).
        #[arg(long, help_heading = "Output", conflicts_with_all = ["record", "perfetto", "ring_size", "per_event"])]
        summary_only: bool,
        #[command(flatten)]
        probing: Probing,
        #[command(flatten)]
        child: Child,
        /// The command to trace and its arguments, e.g. `ping -c 5 127.0.0.1`.
        #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Trace a short ping to each TARGET, or COMMAND with the target in it,
    /// and print the stage tables side by side, differences marked:
    /// 127.0.0.1 vs ::1 vs localhost vs 0.0.0.0.
    #[command(after_long_help = COMPARE_AFTER)]
    Compare {
        /// Output format: the tables side by side, or one JSON object.
        #[arg(long, value_enum, default_value_t = Format::Text, help_heading = "Output")]
        format: Format,
        /// Pings per target (not with a COMMAND, which says how many
        /// requests it makes).
        #[arg(short = 'c', long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000), conflicts_with = "command", help_heading = "The traced command")]
        count: u32,
        #[command(flatten)]
        probing: Probing,
        #[command(flatten)]
        child: Child,
        /// Hosts to ping, or to put into COMMAND.
        #[arg(default_values_t = ["127.0.0.1".to_string(), "::1".to_string(), "localhost".to_string(), "0.0.0.0".to_string()])]
        targets: Vec<String>,
        /// Traced instead of ping, once per target, after `--`: `{}` in
        /// its arguments becomes the target, `{host}` the target as a URL
        /// writes it (an IPv6 address in brackets). Its TCP and UDP
        /// packets and exchanges are compared.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List every stage, each probe that could observe it, whether this
    /// kernel allows it (and why not), and what `--backend auto` chooses.
    #[command(after_long_help = format!("{PROBES_AFTER}{EXIT_CODES}"))]
    Probes {
        /// Output format: a table, or one JSON object.
        #[arg(long, value_enum, default_value_t = Format::Text, help_heading = "Output")]
        format: Format,
        /// Kernel BTF to read function and struct information from.
        #[arg(long, value_name = "PATH", default_value = VMLINUX_BTF, help_heading = "Probing")]
        btf: PathBuf,
    },
    /// Show a trace saved with `trace --record` again; needs no root.
    #[command(after_long_help = format!("{REPLAY_AFTER}{EXIT_CODES}"))]
    Replay {
        #[command(flatten)]
        output: Output,
        /// A file written by `lotrace trace --record FILE`.
        #[arg(help_heading = None)]
        file: PathBuf,
    },
    /// Print shell completions for SHELL on stdout.
    #[command(after_long_help = "\
Examples:
  lotrace completions bash > /etc/bash_completion.d/lotrace
  lotrace completions zsh > \"${fpath[1]}/_lotrace\"
  lotrace completions fish > ~/.config/fish/completions/lotrace.fish")]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout: lotrace's, or a command's.
    #[command(after_long_help = "\
Examples:
  lotrace man | man -l -
  lotrace man trace > lotrace-trace.1")]
    Man {
        /// The command whose page to print (trace, compare, probes, ...).
        command: Option<String>,
    },
}

impl Cmd {
    /// `-v`: lotrace's own diagnostics and the whole verifier log.
    pub fn verbose(&self) -> bool {
        match self {
            Cmd::Trace { probing, .. } | Cmd::Compare { probing, .. } => probing.verbose,
            _ => false,
        }
    }
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

/// The options of a trace of `command`.
pub fn trace_options(
    command: Vec<String>,
    output: &Output,
    p: &Probing,
    child: &Child,
    record: Option<PathBuf>,
    summary_only: bool,
) -> TraceOptions {
    TraceOptions {
        command,
        style: output.style(),
        perfetto: output.perfetto.clone(),
        netns: child.netns.clone(),
        backend: p.backend,
        allow_missing: p.allow_missing,
        format: output.format,
        record,
        ring_size: p.ring_size,
        btf: p.btf.clone(),
        verbose: p.verbose,
        floor: p.floor,
        per_event: p.per_event,
        summary_only,
        run_as: if child.child_as_root {
            None
        } else {
            sudo_user()
        },
    }
}

/// The options of `compare`: a trace per target, as configured.
pub fn compare_options(
    targets: Vec<String>,
    command: Vec<String>,
    count: u32,
    format: Format,
    p: &Probing,
    child: &Child,
) -> CompareOptions {
    let output = Output {
        format,
        explain: false,
        lang: Lang::En,
        hist: false,
        perfetto: None,
    };
    CompareOptions {
        targets,
        command,
        count,
        format,
        template: trace_options(Vec::new(), &output, p, child, None, false),
    }
}

/// Shell completions for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut impl Write) {
    clap_complete::generate(shell, &mut Cli::command(), "lotrace", out);
}

/// The manual page of lotrace, or of one of its commands, in roff.
pub fn man_page(command: Option<&str>, out: &mut impl Write) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    cmd.build();
    let page = match command {
        None => cmd,
        Some(name) => {
            let Some(sub) = cmd.find_subcommand(name) else {
                anyhow::bail!("no command {name}: see `lotrace --help`");
            };
            // Built, a command's display name is `lotrace-trace`: the name
            // `man` finds its page by.
            sub.clone()
        }
    };
    clap_mangen::Man::new(page)
        .source(format!("lotrace {}", env!("CARGO_PKG_VERSION")))
        .manual("lotrace manual")
        .render(out)?;
    Ok(())
}

/// What stderr shows for an error: the end of the verifier's log when the
/// kernel rejected a program (all of it with `-v`), then the error in one
/// line.
pub fn error_report(e: &anyhow::Error, verbose: bool) -> String {
    let mut s = verifier_log(e, verbose);
    s.push_str(&format!("lotrace: error: {e:#}\n"));
    s
}

/// Lines of a rejected program's verifier log shown without `-v`: its
/// verdict is at the end.
const VERIFIER_TAIL: usize = 20;

fn verifier_log(e: &anyhow::Error, verbose: bool) -> String {
    let Some(refusal) = e
        .chain()
        .find_map(|c| c.downcast_ref::<Unavailable>())
        .and_then(Unavailable::refusal)
    else {
        return String::new();
    };
    let (lines, total) = refusal.log_lines((!verbose).then_some(VERIFIER_TAIL));
    if lines.is_empty() {
        return String::new();
    }
    let mut s = if lines.len() < total {
        format!(
            "lotrace: the verifier's log, last {} of {total} lines (-v shows all):\n",
            lines.len()
        )
    } else {
        "lotrace: the verifier's log:\n".to_string()
    };
    for l in lines {
        s.push_str(&format!("    {l}\n"));
    }
    s
}

/// A usage error in one line, like every other error: clap's first line,
/// and where to look.
pub fn usage_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
    let mut first = lines
        .next()
        .unwrap_or("bad arguments")
        .trim()
        .trim_start_matches("error: ")
        .to_string();
    // "…were not provided:" is followed by what was not: keep it on the line.
    if first.ends_with(':') {
        for l in lines.take_while(|l| !l.trim().is_empty()) {
            first.push(' ');
            first.push_str(l.trim());
        }
    }
    format!("lotrace: error: {first} (see `lotrace --help`)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::unavailable::Refusal;

    #[test]
    fn the_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn trace_help_is_grouped_and_documents_every_backend() {
        let help = Cli::command()
            .find_subcommand_mut("trace")
            .unwrap()
            .render_long_help()
            .to_string();
        for heading in ["Output:", "Probing:", "The traced command:"] {
            assert!(help.contains(heading), "{heading} in {help}");
        }
        for backend in ["auto:", "fentry:", "kprobe:", "tracepoint:"] {
            assert!(help.contains(backend), "{backend} in {help}");
        }
        assert!(help.contains("Examples:") && help.contains("Exit status:"));
    }

    #[test]
    fn completions_and_man_pages() {
        let mut out = Vec::new();
        completions(clap_complete::Shell::Bash, &mut out);
        assert!(String::from_utf8(out).unwrap().contains("--backend"));
        let mut out = Vec::new();
        man_page(Some("trace"), &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.contains("lotrace\\-trace") && page.contains("\\-\\-summary\\-only"));
        assert!(man_page(Some("nonsense"), &mut Vec::new()).is_err());
    }

    #[test]
    fn usage_errors_are_one_line_that_names_what_is_wrong() {
        let e = Cli::try_parse_from(["lotrace", "completions"])
            .err()
            .unwrap();
        assert_eq!(
            usage_error_line(&e),
            "lotrace: error: the following required arguments were not provided: <SHELL> (see `lotrace --help`)"
        );
        let e = Cli::try_parse_from(["lotrace", "trace", "--format", "xml", "ping"])
            .err()
            .unwrap();
        assert_eq!(
            usage_error_line(&e),
            "lotrace: error: invalid value 'xml' for '--format <FORMAT>' (see `lotrace --help`)"
        );
    }

    #[test]
    fn a_rejected_program_shows_the_end_of_its_log() {
        let log: String = (1..=30).map(|i| format!("{i}: insn\n")).collect();
        let rejected = Unavailable::Refused(Refusal {
            errno: Some(libc::EACCES),
            message: String::new(),
            verifier_log: log,
        });
        let e = anyhow::Error::new(rejected).context("attaching kprobe:ip_rcv failed");
        let short = error_report(&e, false);
        assert!(short.starts_with("lotrace: the verifier's log, last 20 of 30 lines"));
        assert!(!short.contains("\n    10: insn\n") && short.contains("\n    11: insn\n"));
        assert!(short.ends_with(
            "lotrace: error: attaching kprobe:ip_rcv failed: the verifier rejected the program (EACCES)\n"
        ));
        assert_eq!(error_report(&e, true).lines().count(), 32);
        let plain = anyhow::anyhow!("unknown host x");
        assert_eq!(
            error_report(&plain, false),
            "lotrace: error: unknown host x\n"
        );
    }
}

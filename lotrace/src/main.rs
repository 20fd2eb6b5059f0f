use std::process::ExitCode;

use clap::Parser;
use lotrace::{
    cli::{self, Cli, Cmd},
    cmd::{compare, probes, replay, trace},
    output::write_stdout,
};

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
    let verbose = cli.command.verbose();
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
            record,
            summary_only,
            probing,
            child,
            command,
        } => runtime().and_then(|rt| {
            rt.block_on(trace::run(cli::trace_options(
                command,
                &output,
                &probing,
                &child,
                record,
                summary_only,
            )))
        }),
        Cmd::Compare {
            format,
            count,
            probing,
            child,
            targets,
            command,
        } => runtime().and_then(|rt| {
            rt.block_on(compare::run(cli::compare_options(
                targets, command, count, format, &probing, &child,
            )))
        }),
        Cmd::Probes { format, btf } => probes::run(&btf, format),
        Cmd::Replay { output, file } => replay::run(
            &file,
            output.format,
            output.style(),
            output.perfetto.as_deref(),
        ),
        Cmd::Completions { shell } => {
            let mut out = Vec::new();
            cli::completions(shell, &mut out);
            print_bytes(&out)
        }
        Cmd::Man { command } => {
            let mut out = Vec::new();
            cli::man_page(command.as_deref(), &mut out).and_then(|()| print_bytes(&out))
        }
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprint!("{}", cli::error_report(&e, verbose));
            ExitCode::FAILURE
        }
    }
}

/// Help and version as clap prints them; a usage error in one line, like
/// every other error.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            eprintln!("{}", cli::usage_error_line(&e));
            ExitCode::from(2)
        }
    }
}

fn print_bytes(b: &[u8]) -> anyhow::Result<i32> {
    write_stdout(&String::from_utf8_lossy(b))?;
    Ok(0)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

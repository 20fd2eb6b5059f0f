//! lotrace: where a ping's time goes inside the Linux kernel, stage by
//! stage, measured with eBPF.
//!
//! The pure parts (catalog in `lotrace-common`, [`journey`], [`stats`],
//! [`kagg`], [`record`], [`render`], [`session`]) take data and return data; only
//! [`loader`] and [`trace`] touch the kernel.

pub mod btf;
pub mod compare;
pub mod journey;
pub mod kagg;
pub mod loader;
pub mod perfetto;
pub mod pingout;
pub mod plan;
pub mod probes;
pub mod record;
pub mod render;
pub mod replay;
pub mod report;
pub mod session;
pub mod stats;
pub mod trace;
pub mod tracefs;

/// How journeys and the summary are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A timeline per ping and tables, for people.
    Text,
    /// JSON Lines: one object per journey, then one summary object.
    Json,
}

/// Writes to stdout, returning an error (a closed pipe is one) instead of
/// panicking as `print!` does.
pub fn write_stdout(s: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.flush()
}

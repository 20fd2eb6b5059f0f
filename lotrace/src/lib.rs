//! lotrace: where a ping's time goes inside the Linux kernel, stage by
//! stage, measured with eBPF.
//!
//! Layers whose imports point one way: [`cmd`] (the subcommands) uses
//! [`output`] and [`kernel`]; [`output`] renders the [`model`]; [`kernel`]
//! feeds the [`model`]; the model depends on `lotrace-common` alone.

pub mod cmd;
pub mod kernel;
pub mod model;
pub mod output;

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

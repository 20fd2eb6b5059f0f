//! Rendering: journeys, summaries and probe tables as text, JSON Lines and
//! Perfetto traces. Reads the model, never the kernel.

pub mod compare;
pub mod hist;
pub mod json;
pub mod perfetto;
pub mod printer;
pub mod probes;
pub mod text;
pub mod words;

use lotrace_common::Stage;

/// How journeys and the summary are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A timeline per ping and tables, for people.
    Text,
    /// JSON Lines: one object per journey, then one summary object.
    Json,
}

/// The language of stage explanations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// English.
    #[default]
    En,
    /// 中文, the language of the article lotrace grew from.
    Zh,
}

/// Optional parts of the output.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    /// Annotate each stage with what the kernel does there.
    pub explain: Option<Lang>,
    /// Print a latency histogram per stage in the summary.
    pub hist: bool,
}

/// The catalog's explanation of a stage.
pub fn explain(stage: Stage, lang: Lang) -> &'static str {
    match lang {
        Lang::En => stage.info().explain,
        Lang::Zh => stage.info().explain_zh,
    }
}

/// [`explain`] for a TCP segment's or UDP datagram's stage.
pub fn explain_flow(stage: Stage, lang: Lang) -> &'static str {
    let (en, zh) = stage.flow_explain();
    match lang {
        Lang::En => en,
        Lang::Zh => zh,
    }
}

/// 1234 → "1.23 µs".
pub fn fmt_ns(ns: u64) -> String {
    let mut s = String::new();
    write_ns(&mut s, ns);
    s
}

/// [`fmt_ns`] into a string of the caller's.
pub fn write_ns(s: &mut String, ns: u64) {
    use std::fmt::Write as _;
    let f = ns as f64;
    let _ = if ns < 1_000 {
        write!(s, "{ns} ns")
    } else if ns < 1_000_000 {
        write!(s, "{:.2} µs", f / 1e3)
    } else if ns < 1_000_000_000 {
        write!(s, "{:.2} ms", f / 1e6)
    } else {
        write!(s, "{:.2} s", f / 1e9)
    };
}

/// [`write_ns`] of a time that may be negative.
pub(crate) fn write_signed_ns(s: &mut String, ns: i64) {
    if ns < 0 {
        s.push('-');
    }
    write_ns(s, ns.unsigned_abs());
}

/// Writes to stdout, returning an error (a closed pipe is one) instead of
/// panicking as `print!` does.
pub fn write_stdout(s: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.flush()
}

/// A trace of the host's kind (tracepoints only) and one journey, for the
/// renderers' tests.
#[cfg(test)]
pub(crate) mod testdata {
    use crate::model::{
        builder::build_journey,
        journey::tests::echo,
        meta::Meta,
        plan::{BackendChoice, plan, tests::host},
        session::Done,
    };

    pub(crate) fn meta() -> Meta {
        let caps = host();
        let p = plan(&caps, BackendChoice::Auto);
        let mut m = Meta {
            kernel: "6.18.0".into(),
            command: vec!["ping".into(), "127.0.0.1".into()],
            target: Some("127.0.0.1".into()),
            backend: "auto".into(),
            ..Default::default()
        };
        m.set_probes(&p, &p.labels());
        m
    }

    pub(crate) fn done() -> Done {
        Done {
            journey: build_journey(echo(1, 0), &[]),
            ping_rtt_ns: Some(45_000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations() {
        assert_eq!(fmt_ns(850), "850 ns");
        assert_eq!(fmt_ns(12_345), "12.35 µs");
        assert_eq!(fmt_ns(1_500_000), "1.50 ms");
        assert_eq!(fmt_ns(2_000_000_000), "2.00 s");
        let mut s = String::new();
        write_signed_ns(&mut s, -1500);
        assert_eq!(s, "-1.50 µs");
    }
}

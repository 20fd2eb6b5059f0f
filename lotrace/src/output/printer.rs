//! The printer a trace and a replay share: journeys as they close, the
//! traced command's lines, then the summary, in the chosen format, with a
//! Perfetto trace alongside.

use std::io::Write;

use anyhow::Result;

use crate::{
    model::{
        meta::Meta,
        session::{Done, Session},
    },
    output::{Format, Style, json, perfetto::PerfettoWriter, text},
};

/// Prints journeys and the summary in the chosen format.
pub struct Printer {
    pub format: Format,
    pub style: Style,
    pub perfetto: Option<PerfettoWriter>,
    /// Print nothing (the caller renders the session itself).
    pub quiet: bool,
    pub out: std::io::BufWriter<std::io::Stdout>,
}

impl Printer {
    pub fn new(format: Format, style: Style) -> Printer {
        Printer {
            format,
            style,
            perfetto: None,
            quiet: false,
            // Flushed on every drain (10 ms) anyway; a large buffer makes
            // a flood's output a few large writes: written a line at a
            // time, a file system zeroes the part of each new page a
            // write leaves (ext4: a third of lotrace's time in a flood).
            out: std::io::BufWriter::with_capacity(1 << 20, std::io::stdout()),
        }
    }

    /// A line the traced command printed: to stdout as it was, except in
    /// JSON mode where stdout is reserved for JSON.
    pub fn child_line(&mut self, line: &str) -> Result<()> {
        if self.quiet {
            return Ok(());
        }
        match self.format {
            Format::Text => writeln!(self.out, "{line}")?,
            Format::Json => eprintln!("{line}"),
        }
        Ok(())
    }

    pub fn journeys(&mut self, done: &[Done], meta: &Meta) -> Result<()> {
        for d in done {
            if let Some(p) = self.perfetto.as_mut() {
                p.journey(&d.journey, meta)?;
            }
            if self.quiet {
                continue;
            }
            match self.format {
                Format::Text => write!(self.out, "{}", text::journey_text(d, meta, self.style))?,
                Format::Json => {
                    writeln!(self.out, "{}", json::journey_json_line(d, meta, self.style))?
                }
            }
        }
        Ok(())
    }

    /// The TCP and UDP packets the session closed since the last call.
    pub fn packets(&mut self, session: &mut Session, meta: &Meta) -> Result<()> {
        let (packets, exchanges, flows) = session.take_packets();
        if let Some(pf) = self.perfetto.as_mut() {
            for p in &packets {
                pf.packet(p, meta)?;
            }
            for x in &exchanges {
                pf.exchange(x)?;
            }
        }
        if self.quiet {
            return Ok(());
        }
        for p in &packets {
            let flow = flows.get(&p.flow);
            match self.format {
                Format::Text => {
                    write!(self.out, "{}", text::packet_text(p, flow, meta, self.style))?
                }
                Format::Json => writeln!(
                    self.out,
                    "{}",
                    json::packet_json_line(p, flow, meta, self.style)
                )?,
            }
        }
        for x in &exchanges {
            let flow = flows.get(&x.flow);
            match self.format {
                Format::Text => write!(self.out, "{}", text::exchange_text(x, flow))?,
                Format::Json => writeln!(self.out, "{}", json::exchange_json_line(x, flow))?,
            }
        }
        Ok(())
    }

    pub fn summary(&mut self, s: &Session, meta: &Meta) -> Result<()> {
        if self.quiet {
            if let Some(p) = self.perfetto.take() {
                p.finish()?;
            }
            return Ok(());
        }
        let t = s.totals();
        match self.format {
            Format::Text => write!(
                self.out,
                "{}{}",
                text::summary_text(&s.stats, meta, &t, self.style),
                text::packets_summary_text(&s.packet_stats, s.flow_count())
            )?,
            Format::Json => {
                let mut v = json::summary_json(&s.stats, meta, &t);
                // Only when there are any: an echo trace's summary is as it was.
                if !s.packet_stats.is_empty() || s.flow_count() > 0 {
                    v["packets"] = json::packets_summary_json(&s.packet_stats, s.flow_count());
                }
                writeln!(self.out, "{v}")?
            }
        }
        self.out.flush()?;
        if let Some(p) = self.perfetto.take() {
            p.finish()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush()?;
        Ok(())
    }
}

//! `lotrace replay`: renders a record file again, without root.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::{
    model::{
        record::{self, Record},
        session::Session,
    },
    output::{Format, Style, perfetto::PerfettoWriter, printer::Printer},
};

pub fn run(path: &Path, format: Format, style: Style, perfetto: Option<&Path>) -> Result<i32> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot open the record file {}", path.display()))?;
    let rec = record::read(std::io::BufReader::new(f))
        .with_context(|| format!("cannot replay {}", path.display()))?;
    let mut printer = Printer::new(format, style);
    printer.perfetto = perfetto.map(PerfettoWriter::create).transpose()?;
    let mut meta = rec.meta.clone();
    let mut session = Session::new(&meta);
    for r in &rec.records {
        let done = match r {
            Record::Line { ts_ns, text } => {
                // Journeys close when the live run would have closed them:
                // those quiet by the time the line was read come first.
                let done = session.ready(*ts_ns);
                printer.journeys(&done, &meta)?;
                printer.packets(&mut session, &meta)?;
                printer.child_line(text)?;
                session.line(text);
                session.update_target(&mut meta);
                Vec::new()
            }
            other => session.record(other),
        };
        printer.journeys(&done, &meta)?;
    }
    if let Some(t) = &rec.trailer {
        session.missed = t.missed_runs;
        session.submitted = t.submitted_events;
    }
    let done = session.finish();
    printer.journeys(&done, &meta)?;
    printer.packets(&mut session, &meta)?;
    printer.summary(&session, &meta)?;
    if rec.trailer.is_none() {
        eprintln!(
            "lotrace: {} ends without a trailer: the trace was cut short, the last journeys may be incomplete",
            path.display()
        );
    }
    Ok(0)
}

//! A record file is untrusted input: decoding it, building its journeys
//! and rendering them must give an error or output, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lotrace::{
    model::{record, session::Session},
    output::render::{self, Style, Totals},
};

fuzz_target!(|data: &[u8]| {
    let Ok(rec) = record::decode(data) else {
        return;
    };
    let meta = rec.meta.clone();
    let mut session = Session::new(&meta);
    let mut done = Vec::new();
    for r in &rec.records {
        done.extend(session.record(r));
    }
    done.extend(session.finish());
    let style = Style::default();
    for d in &done {
        let _ = render::journey_text(d, &meta, style);
        let _ = render::journey_json_line(d, &meta, style);
    }
    let t = Totals {
        events: session.events,
        lost: session.lost,
        discarded: session.discarded(),
        ..Default::default()
    };
    let _ = render::summary_text(&session.stats, &meta, &t, style);
    let _ = render::summary_json(&session.stats, &meta, &t);
});

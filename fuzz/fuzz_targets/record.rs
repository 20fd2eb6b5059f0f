//! A record file is untrusted input: decoding it, building its journeys
//! and rendering them must give an error or output, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lotrace::{
    model::{record, session::Session},
    output::{Style, json, text},
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
        let _ = text::journey_text(d, &meta, style);
        let _ = json::journey_json_line(d, &meta, style);
    }
    let t = session.totals();
    let _ = text::summary_text(&session.stats, &meta, &t, style);
    let _ = json::summary_json(&session.stats, &meta, &t);
});

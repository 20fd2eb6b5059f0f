//! `lotrace compare`: a short traced ping to each target, the stage tables
//! side by side, differences marked.

use anyhow::Result;

use crate::{
    cmd::trace::{self, TraceOptions},
    output::{
        Format,
        compare::{Column, json, text},
        write_stdout,
    },
};

pub struct CompareOptions {
    pub targets: Vec<String>,
    pub count: u32,
    pub format: Format,
    pub template: TraceOptions,
}

pub async fn run(opts: CompareOptions) -> Result<i32> {
    let mut cols = Vec::new();
    for t in &opts.targets {
        let mut o = opts.template.clone_for(vec![
            "ping".into(),
            "-c".into(),
            opts.count.to_string(),
            "-i".into(),
            "0.2".into(),
            t.clone(),
        ]);
        o.format = opts.format;
        eprintln!("lotrace: tracing ping -c {} {t}", opts.count);
        let f = trace::run_session(o, true).await?;
        cols.push(Column {
            target: t.clone(),
            resolved: f.meta.target.clone(),
            resolution: f.meta.resolution.clone(),
            stats: f.session.stats,
            exit: f.code,
        });
    }
    write_stdout(&match opts.format {
        Format::Text => text(&cols),
        Format::Json => format!("{}\n", json(&cols)),
    })?;
    Ok(if cols.iter().all(|c| c.exit == 0) {
        0
    } else {
        1
    })
}

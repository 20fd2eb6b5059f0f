//! A trace ui.perfetto.dev opens (Chrome JSON trace format): one process
//! per CPU, one thread per task, a slice per stage lasting until the
//! journey's next stage, and a flow from each request to its reply; TCP
//! segments and UDP datagrams alike, with a flow from each exchange's
//! request to its response.

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::{
    model::{
        exchange::Exchange,
        flow::Packet,
        journey::{Hop, Journey, Leg},
        meta::Meta,
    },
    output::words::detail,
};

/// The trace events of one journey (pure), plus the metadata events for
/// CPUs and tasks not named before (`named` is updated).
pub fn journey_events(
    j: &Journey,
    flow_id: u64,
    meta: &Meta,
    named: &mut BTreeSet<(u32, u32)>,
) -> Vec<Value> {
    let mut out = Vec::new();
    let base = json!({"icmp_seq": j.icmp_seq, "icmp_id": j.icmp_id});
    hop_events(&j.hops, &base, |h| h.leg.name(), meta, named, &mut out);
    let first = j.hops.iter().find(|h| h.leg == Leg::Request);
    let last = j.hops.iter().rev().find(|h| h.leg == Leg::Reply);
    if let (Some(a), Some(b)) = (first, last) {
        out.push(json!({"ph": "s", "name": "echo", "cat": "echo", "id": flow_id, "ts": us(a.ts_ns), "pid": a.cpu + 1, "tid": a.pid}));
        out.push(json!({"ph": "f", "bp": "e", "name": "echo", "cat": "echo", "id": flow_id, "ts": us(b.ts_ns), "pid": b.cpu + 1, "tid": b.pid}));
    }
    out
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// A slice per hop, lasting until the next, on its CPU's process and its
/// task's thread (named when first met), with `base` among its args.
fn hop_events<'a>(
    hops: &[Hop],
    base: &Value,
    cat: impl Fn(&Hop) -> &'a str,
    meta: &Meta,
    named: &mut BTreeSet<(u32, u32)>,
    out: &mut Vec<Value>,
) {
    for (i, h) in hops.iter().enumerate() {
        let pid = h.cpu + 1;
        if named.insert((pid, 0)) {
            out.push(json!({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": format!("CPU {}", h.cpu)}}));
        }
        if named.insert((pid, h.pid)) {
            out.push(json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": h.pid, "args": {"name": format!("{}/{}", h.comm, h.pid)}}));
        }
        let end = hops.get(i + 1).map_or(h.ts_ns, |n| n.ts_ns);
        let mut args = base.clone();
        args["leg"] = json!(h.leg.name());
        args["probe"] = json!(meta.probe_label(h.probe));
        args["context"] = json!(h.context.name());
        if let Some(d) = detail(h, meta) {
            args["detail"] = json!(d);
        }
        let name = if h.probe.info().at_return {
            format!("{} ↩", h.stage.name())
        } else {
            h.stage.name().to_string()
        };
        out.push(json!({
            "ph": "X",
            "name": name,
            "cat": cat(h),
            "ts": us(h.ts_ns),
            "dur": us(end.saturating_sub(h.ts_ns)).max(0.001),
            "pid": pid,
            "tid": h.pid,
            "args": args,
        }));
    }
}

/// The trace events of a TCP segment or UDP datagram: a slice per stage.
pub fn packet_events(p: &Packet, meta: &Meta, named: &mut BTreeSet<(u32, u32)>) -> Vec<Value> {
    let mut out = Vec::new();
    let base = json!({
        "proto": p.proto.name(),
        "flow": p.flow,
        "number": p.number,
        "direction": if p.reverse { "back" } else { "forth" },
    });
    hop_events(&p.hops, &base, |_| p.proto.name(), meta, named, &mut out);
    // A packet's hops carry no leg: the args say its direction instead.
    for e in out.iter_mut() {
        if let Some(a) = e.get_mut("args").and_then(Value::as_object_mut) {
            a.remove("leg");
        }
    }
    out
}

/// An exchange's flow arrow: from its request's first stage to its
/// response's arrival (nothing without a response).
pub fn exchange_events(x: &Exchange, flow_id: u64) -> Vec<Value> {
    let first = x
        .request
        .iter()
        .filter_map(|p| p.hops.first())
        .min_by_key(|h| h.ts_ns);
    let last = x
        .response
        .iter()
        .filter_map(|p| p.reach_hop())
        .max_by_key(|h| h.ts_ns);
    let (Some(a), Some(b)) = (first, last) else {
        return Vec::new();
    };
    let name = format!("{} {} {}", x.proto.name(), x.kind.name(), x.number);
    vec![
        json!({"ph": "s", "name": name, "cat": "exchange", "id": flow_id, "ts": us(a.ts_ns), "pid": a.cpu + 1, "tid": a.pid}),
        json!({"ph": "f", "bp": "e", "name": name, "cat": "exchange", "id": flow_id, "ts": us(b.ts_ns), "pid": b.cpu + 1, "tid": b.pid}),
    ]
}

/// Streams journeys into a Perfetto trace file, written under a temporary
/// name and renamed when complete, so an error leaves no half file.
pub struct PerfettoWriter {
    path: PathBuf,
    partial: PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    first: bool,
    flows: u64,
    named: BTreeSet<(u32, u32)>,
}

impl PerfettoWriter {
    pub fn create(path: &Path) -> Result<PerfettoWriter> {
        let partial = path.with_extension("partial");
        let f = std::fs::File::create(&partial)
            .with_context(|| format!("cannot write the Perfetto trace {}", path.display()))?;
        let mut out = std::io::BufWriter::new(f);
        out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")?;
        Ok(PerfettoWriter {
            path: path.to_path_buf(),
            partial,
            out: Some(out),
            first: true,
            flows: 0,
            named: BTreeSet::new(),
        })
    }

    pub fn journey(&mut self, j: &Journey, meta: &Meta) -> Result<()> {
        self.flows += 1;
        let events = journey_events(j, self.flows, meta, &mut self.named);
        self.write(events)
    }

    pub fn packet(&mut self, p: &Packet, meta: &Meta) -> Result<()> {
        let events = packet_events(p, meta, &mut self.named);
        self.write(events)
    }

    pub fn exchange(&mut self, x: &Exchange) -> Result<()> {
        self.flows += 1;
        let events = exchange_events(x, self.flows);
        self.write(events)
    }

    fn write(&mut self, events: Vec<Value>) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        for e in events {
            if !self.first {
                out.write_all(b",\n")?;
            }
            self.first = false;
            serde_json::to_writer(&mut *out, &e)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        if let Some(mut out) = self.out.take() {
            out.write_all(b"\n]}\n")?;
            out.flush()?;
            drop(out);
            std::fs::rename(&self.partial, &self.path)
                .with_context(|| format!("writing {}", self.path.display()))?;
        }
        Ok(())
    }
}

impl Drop for PerfettoWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{builder::build_journey, journey::tests::echo};

    #[test]
    fn slices_tracks_and_a_flow() {
        let j = build_journey(echo(1, 5_000_000), &[]);
        let mut named = BTreeSet::new();
        let ev = journey_events(&j, 1, &Meta::default(), &mut named);
        let slices: Vec<_> = ev.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(slices.len(), j.hops.len());
        assert_eq!(slices[0]["name"], "sendto");
        assert_eq!(slices[0]["ts"], 5000.0);
        // A slice lasts until the next stage.
        assert_eq!(slices[0]["dur"], 0.9);
        assert!(
            ev.iter()
                .any(|e| e["ph"] == "M" && e["args"]["name"] == "CPU 2")
        );
        assert!(
            ev.iter()
                .any(|e| e["ph"] == "M" && e["args"]["name"] == "ping/100")
        );
        assert_eq!(
            ev.iter()
                .filter(|e| e["ph"] == "s" || e["ph"] == "f")
                .count(),
            2
        );
        // Names are given once.
        let again = journey_events(&j, 2, &Meta::default(), &mut named);
        assert!(again.iter().all(|e| e["ph"] != "M"));
    }

    #[test]
    fn the_file_is_valid_json_and_appears_only_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let mut w = PerfettoWriter::create(&path).unwrap();
        w.journey(&build_journey(echo(1, 0), &[]), &Meta::default())
            .unwrap();
        assert!(!path.exists());
        w.finish().unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(v["traceEvents"].as_array().unwrap().len() > 20);
        let abandoned = dir.path().join("u.json");
        drop(PerfettoWriter::create(&abandoned).unwrap());
        assert!(!abandoned.exists() && !abandoned.with_extension("partial").exists());
    }
}

//! One trace's processing, live or replayed: events and the child's output
//! lines in, finished journeys (with ping's own RTT beside them) and
//! statistics out. Pure, so a replay renders exactly what the live run did.

use std::collections::BTreeMap;

use lotrace_common::Event;

use crate::model::{
    journey::{Journey, JourneyBuilder, expected_for},
    meta::Meta,
    pingout::{PingLine, parse_line},
    record::Record,
    stats::Stats,
};

/// A journey is closed when none of its events has been seen for this long.
/// Long enough for ping's own line to be read, short enough to stream.
pub const QUIET_NS: u64 = 250_000_000;
/// ping RTTs kept waiting for their journey (flood pings print none).
const MAX_PING_RTTS: usize = 4096;

#[derive(Debug)]
pub struct Done {
    pub journey: Journey,
    /// The RTT ping printed for the same sequence number.
    pub ping_rtt_ns: Option<u64>,
}

pub struct Session {
    builder: JourneyBuilder,
    pub stats: Stats,
    ping_rtt: BTreeMap<u16, u64>,
    /// The address the child said it pinged, from its `PING` line.
    pub resolved: Option<(String, String)>,
    pub events: u64,
    pub lost: u64,
    /// Probe runs the kernel skipped, when known.
    pub missed: Option<u64>,
    /// Events the probes tried to emit, when known.
    pub submitted: Option<u64>,
    /// lotrace's own cost, for a live trace.
    pub usage: Option<Usage>,
}

impl Session {
    pub fn new(meta: &Meta) -> Session {
        Session {
            builder: JourneyBuilder::new(expected_for(&meta.covered()), QUIET_NS),
            stats: Stats::default(),
            ping_rtt: BTreeMap::new(),
            resolved: None,
            events: 0,
            lost: 0,
            missed: None,
            submitted: None,
            usage: None,
        }
    }

    pub fn record(&mut self, r: &Record) -> Vec<Done> {
        match r {
            Record::Event(e) => self.event(*e),
            Record::Line { text, .. } => {
                self.line(text);
                Vec::new()
            }
            Record::Lost(n) => {
                self.lost = self.lost.max(*n);
                Vec::new()
            }
        }
    }

    pub fn event(&mut self, e: Event) -> Vec<Done> {
        self.events += 1;
        let closed = self.builder.push(e);
        self.done(closed)
    }

    pub fn line(&mut self, text: &str) {
        match parse_line(text) {
            PingLine::Header { host, addr } => self.resolved = Some((host, addr)),
            PingLine::Reply { seq, rtt_ns } => {
                self.ping_rtt.insert(seq, rtt_ns);
                while self.ping_rtt.len() > MAX_PING_RTTS {
                    self.ping_rtt.pop_first();
                }
            }
            PingLine::Other => {}
        }
    }

    /// Journeys quiet since before `now_ns` (the events' clock).
    pub fn ready(&mut self, now_ns: u64) -> Vec<Done> {
        let closed = self.builder.take_ready(now_ns);
        self.done(closed)
    }

    pub fn finish(&mut self) -> Vec<Done> {
        let closed = self.builder.finish();
        self.done(closed)
    }

    /// The target as the command reported resolving it, once it has.
    pub fn update_target(&self, meta: &mut Meta) {
        if let Some((_, addr)) = &self.resolved {
            meta.target = Some(addr.clone());
        }
    }

    pub fn discarded(&self) -> u64 {
        self.builder.discarded
    }

    /// What the summary shows besides the statistics.
    pub fn totals(&self) -> Totals {
        Totals {
            events: self.events,
            lost: self.lost,
            discarded: self.discarded(),
            missed: self.missed,
            submitted: self.submitted,
            usage: self.usage,
        }
    }

    fn done(&mut self, js: Vec<Journey>) -> Vec<Done> {
        js.into_iter()
            .map(|journey| {
                self.stats.add(&journey);
                let ping_rtt_ns = self.ping_rtt.remove(&journey.icmp_seq);
                Done {
                    journey,
                    ping_rtt_ns,
                }
            })
            .collect()
    }
}

/// Everything the summary shows besides the statistics.
#[derive(Default)]
pub struct Totals {
    pub events: u64,
    pub lost: u64,
    pub discarded: u64,
    /// Probe runs the kernel skipped; `None` when not known (a replay of
    /// an older record).
    pub missed: Option<u64>,
    /// Events the probes tried to emit (received + lost).
    pub submitted: Option<u64>,
    /// lotrace's own CPU time and peak RSS, for a live trace.
    pub usage: Option<Usage>,
}

/// What lotrace itself cost while the command ran (after the programs
/// were loaded): CPU time and wall time, and its peak resident set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_ns: u64,
    pub max_rss_kb: u64,
    pub wall_ns: u64,
}

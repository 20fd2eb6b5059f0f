//! Record files: a trace's raw events with what is needed to render them
//! again (kernel, probes, the child's output), so that `lotrace replay`
//! works without root and traces can be shared.
//!
//! Layout: the magic `LOTRACE1` (its last byte is the format's version),
//! then frames of `tag: u8, len: u32 LE,
//! payload`. The first frame is the JSON header ([`Meta`]); then events
//! (80 bytes each), child output lines and lost-event counts, in the order
//! they were read; the last frame is the JSON trailer. A reader treats the
//! file as untrusted: every length and id is checked.

use std::io::{self, Read, Write};

use anyhow::{Context as _, Result, anyhow, bail};
use lotrace_common::{Event, ProbeId, Stage, event::EVENT_SIZE};
use serde::{Deserialize, Serialize};

use crate::model::meta::Meta;

pub const MAGIC: &[u8; 8] = b"LOTRACE1";
/// The magic without its version byte.
const MAGIC_NAME: &[u8; 7] = b"LOTRACE";
const MAX_FRAME: u32 = 1 << 20;

const TAG_HEADER: u8 = 1;
const TAG_EVENT: u8 = 2;
const TAG_LINE: u8 = 3;
const TAG_LOST: u8 = 4;
const TAG_TRAILER: u8 = 5;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Trailer {
    pub lost_events: u64,
    /// Probe runs the kernel skipped (see `Tracer::missed_runs`).
    #[serde(default)]
    pub missed_runs: Option<u64>,
    /// Events the probes tried to emit (received + lost).
    #[serde(default)]
    pub submitted_events: Option<u64>,
    /// The traced command's exit code, or the signal that ended it.
    pub exit: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Event(Event),
    /// A line the traced command printed, with when it was read
    /// (CLOCK_MONOTONIC ns, the events' clock).
    Line {
        ts_ns: u64,
        text: String,
    },
    /// Lost events so far (a running total).
    Lost(u64),
}

pub struct Writer<W: Write> {
    w: W,
}

impl<W: Write> Writer<W> {
    pub fn new(mut w: W, meta: &Meta) -> Result<Writer<W>> {
        w.write_all(MAGIC)?;
        let mut this = Writer { w };
        this.frame(TAG_HEADER, &serde_json::to_vec(meta)?)?;
        Ok(this)
    }

    fn frame(&mut self, tag: u8, payload: &[u8]) -> io::Result<()> {
        self.w.write_all(&[tag])?;
        self.w.write_all(&(payload.len() as u32).to_le_bytes())?;
        self.w.write_all(payload)
    }

    pub fn record(&mut self, r: &Record) -> io::Result<()> {
        match r {
            Record::Event(e) => self.frame(TAG_EVENT, &e.to_bytes()),
            Record::Line { ts_ns, text } => {
                let mut p = ts_ns.to_le_bytes().to_vec();
                p.extend_from_slice(text.as_bytes());
                self.frame(TAG_LINE, &p)
            }
            Record::Lost(n) => self.frame(TAG_LOST, &n.to_le_bytes()),
        }
    }

    pub fn finish(mut self, trailer: &Trailer) -> Result<W> {
        self.frame(TAG_TRAILER, &serde_json::to_vec(trailer)?)?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// A decoded record file.
#[derive(Debug)]
pub struct Recording {
    pub meta: Meta,
    pub records: Vec<Record>,
    /// `None` when the file ends without one (the trace was cut short).
    pub trailer: Option<Trailer>,
}

/// Decodes a whole record file, rejecting anything malformed with a
/// message that says where.
pub fn read(mut r: impl Read) -> Result<Recording> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).context("reading the record file")?;
    decode(&buf)
}

pub fn decode(buf: &[u8]) -> Result<Recording> {
    if buf.len() < MAGIC.len() || &buf[..MAGIC_NAME.len()] != MAGIC_NAME {
        bail!("not a lotrace record file (bad magic)");
    }
    let version = buf[MAGIC_NAME.len()];
    if version != MAGIC[MAGIC_NAME.len()] {
        let shown = if version.is_ascii_graphic() {
            (version as char).to_string()
        } else {
            format!("byte {version:#04x}")
        };
        bail!(
            "record file format version {shown}, and this lotrace reads version {}: replay it with the lotrace that recorded it",
            MAGIC[MAGIC_NAME.len()] as char
        );
    }
    let mut at = MAGIC.len();
    let mut meta = None;
    let mut records = Vec::new();
    let mut trailer = None;
    let mut n = 0usize;
    while at < buf.len() {
        n += 1;
        if trailer.is_some() {
            bail!("record file corrupt: frame {n} after the trailer");
        }
        if buf.len() - at < 5 {
            bail!("record file truncated in the header of frame {n}");
        }
        let tag = buf[at];
        let len = u32::from_le_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]);
        at += 5;
        if len > MAX_FRAME {
            bail!("record file corrupt: frame {n} claims {len} bytes");
        }
        let len = len as usize;
        if buf.len() - at < len {
            bail!("record file truncated in frame {n}");
        }
        let p = &buf[at..at + len];
        at += len;
        if meta.is_none() && tag != TAG_HEADER {
            bail!("record file corrupt: it does not start with a header");
        }
        match tag {
            TAG_HEADER => {
                if meta.is_some() {
                    bail!("record file corrupt: second header at frame {n}");
                }
                meta = Some(
                    serde_json::from_slice::<Meta>(p)
                        .map_err(|e| anyhow!("record file corrupt: bad header: {e}"))?,
                );
            }
            TAG_EVENT => {
                if len != EVENT_SIZE {
                    bail!("record file corrupt: event frame {n} has {len} bytes, not {EVENT_SIZE}");
                }
                let e = Event::from_bytes(p).expect("length checked");
                if Stage::from_u8(e.stage).is_none() || ProbeId::from_u8(e.probe).is_none() {
                    bail!(
                        "record file corrupt: event frame {n} has unknown stage {} or probe {}",
                        e.stage,
                        e.probe
                    );
                }
                records.push(Record::Event(e));
            }
            TAG_LINE => {
                if len < 8 {
                    bail!("record file corrupt: line frame {n} too short");
                }
                let ts_ns = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
                let text = String::from_utf8_lossy(&p[8..]).into_owned();
                records.push(Record::Line { ts_ns, text });
            }
            TAG_LOST => {
                let b: [u8; 8] = p
                    .try_into()
                    .map_err(|_| anyhow!("record file corrupt: lost frame {n} is {len} bytes"))?;
                records.push(Record::Lost(u64::from_le_bytes(b)));
            }
            TAG_TRAILER => {
                trailer = Some(
                    serde_json::from_slice::<Trailer>(p)
                        .map_err(|e| anyhow!("record file corrupt: bad trailer: {e}"))?,
                );
            }
            t => bail!("record file corrupt: unknown frame type {t} at frame {n}"),
        }
    }
    let meta = meta.ok_or_else(|| anyhow!("record file truncated: no header"))?;
    Ok(Recording {
        meta,
        records,
        trailer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::journey::tests::echo;

    fn sample() -> Vec<u8> {
        let meta = Meta {
            kernel: "6.18.0".into(),
            command: vec!["ping".into(), "127.0.0.1".into()],
            target: Some("127.0.0.1".into()),
            ..Default::default()
        };
        let mut w = Writer::new(Vec::new(), &meta).unwrap();
        for e in echo(1, 1000) {
            w.record(&Record::Event(e)).unwrap();
        }
        w.record(&Record::Line {
            ts_ns: 5,
            text: "64 bytes from 127.0.0.1: icmp_seq=1 ttl=64 time=0.045 ms".into(),
        })
        .unwrap();
        w.record(&Record::Lost(0)).unwrap();
        w.finish(&Trailer {
            lost_events: 0,
            exit: "0".into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let rec = decode(&sample()).unwrap();
        assert_eq!(rec.meta.kernel, "6.18.0");
        assert_eq!(rec.records.len(), echo(1, 1000).len() + 2);
        assert_eq!(rec.records[0], Record::Event(echo(1, 1000)[0]));
        assert_eq!(rec.trailer.unwrap().exit, "0");
    }

    #[test]
    fn every_truncation_is_an_error_or_a_clean_prefix() {
        let full = sample();
        for cut in 0..full.len() {
            match decode(&full[..cut]) {
                Ok(r) => assert!(r.trailer.is_none()),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("truncated") || msg.contains("magic"),
                        "cut at {cut}: {msg}"
                    );
                }
            }
        }
    }

    #[test]
    fn corruption_is_reported() {
        let full = sample();
        let mut bad = full.clone();
        bad[0] = b'X';
        assert!(decode(&bad).unwrap_err().to_string().contains("magic"));
        // A later format: its version, and what to do.
        let mut later = full.clone();
        later[7] = b'2';
        let msg = decode(&later).unwrap_err().to_string();
        assert!(
            msg.contains("format version 2") && msg.contains("reads version 1"),
            "{msg}"
        );
        // The first event frame's stage byte.
        let header_len = u32::from_le_bytes(full[9..13].try_into().unwrap()) as usize;
        let first_event = 8 + 5 + header_len + 5;
        let mut bad = full.clone();
        bad[first_event + 64] = 99;
        assert!(
            decode(&bad)
                .unwrap_err()
                .to_string()
                .contains("unknown stage")
        );
        let mut bad = full.clone();
        bad[first_event - 4..first_event].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&bad).unwrap_err().to_string().contains("claims"));
        let mut bad = full;
        bad[first_event - 5] = 77;
        assert!(
            decode(&bad)
                .unwrap_err()
                .to_string()
                .contains("unknown frame")
        );
    }
}

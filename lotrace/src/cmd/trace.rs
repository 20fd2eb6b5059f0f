//! `lotrace trace`: runs a command under the probes and streams its
//! journeys as they close, then the summary.

use std::{
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use lotrace_common::{
    Event,
    assemble::{SLOT_SIZE, SlotHead},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{Instant, interval, sleep_until},
};

use crate::{
    cmd::child::{Child, Output, exit_code, exit_words, forward},
    kernel::{
        self,
        loader::{LoadOptions, Tracer},
        slots::Slots,
    },
    model::{
        assembled::{From, Taken},
        kagg,
        meta::Meta,
        plan::BackendChoice,
        record::{self, Record, Trailer},
        session::{Assembled, Done, Session, Usage},
    },
    output::{Format, Style, perfetto::PerfettoWriter, printer::Printer},
};

pub struct TraceOptions {
    pub command: Vec<String>,
    pub style: Style,
    /// Also write a Perfetto (Chrome JSON) trace here.
    pub perfetto: Option<PathBuf>,
    /// Run the command in this named network namespace (`ip netns`).
    pub netns: Option<String>,
    pub backend: BackendChoice,
    pub allow_missing: bool,
    pub format: Format,
    pub record: Option<PathBuf>,
    pub ring_size: u32,
    pub btf: PathBuf,
    pub verbose: bool,
    /// Run the command with this uid and gid instead of lotrace's.
    pub run_as: Option<(u32, u32)>,
    /// Aggregate in the kernel and print only the summary.
    pub summary_only: bool,
    /// Attach, but let every program return at once (`--floor`).
    pub floor: bool,
    /// Stream each event on its own (`--per-event`).
    pub per_event: bool,
}

impl TraceOptions {
    /// The same options for another command.
    pub fn clone_for(&self, command: Vec<String>) -> TraceOptions {
        TraceOptions {
            command,
            style: self.style,
            perfetto: None,
            netns: self.netns.clone(),
            backend: self.backend,
            allow_missing: self.allow_missing,
            format: self.format,
            record: None,
            ring_size: self.ring_size,
            btf: self.btf.clone(),
            verbose: self.verbose,
            run_as: self.run_as,
            summary_only: self.summary_only,
            floor: self.floor,
            per_event: self.per_event,
        }
    }
}

/// A record file being written; removed unless the trace completes, so an
/// error never leaves a half-written file behind.
struct RecordFile {
    path: PathBuf,
    writer: Option<record::Writer<std::io::BufWriter<std::fs::File>>>,
}

impl RecordFile {
    fn create(path: &Path, meta: &Meta) -> Result<RecordFile> {
        let f = std::fs::File::create(path)
            .with_context(|| format!("cannot write the record file {}", path.display()))?;
        let writer = record::Writer::new(std::io::BufWriter::new(f), meta)?;
        Ok(RecordFile {
            path: path.to_path_buf(),
            writer: Some(writer),
        })
    }

    fn record(&mut self, r: &Record) -> Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.record(r)
                .with_context(|| format!("writing {}", self.path.display()))?;
        }
        Ok(())
    }

    fn finish(mut self, t: &Trailer) -> Result<()> {
        if let Some(w) = self.writer.take() {
            w.finish(t)?;
        }
        Ok(())
    }
}

impl Drop for RecordFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Runs the trace; returns the exit code lotrace should end with.
pub async fn run(opts: TraceOptions) -> Result<i32> {
    Ok(run_session(opts, false).await?.code)
}

/// What a finished trace leaves: the exit code lotrace should end with,
/// and the session's statistics (for `compare`).
pub struct Finished {
    pub code: i32,
    pub session: Session,
    pub meta: Meta,
}

/// Runs the trace; `quiet` prints nothing (neither the command's output nor
/// journeys nor the summary).
pub async fn run_session(opts: TraceOptions, quiet: bool) -> Result<Finished> {
    let started = std::time::Instant::now();
    let child = Child::prepare(&opts.command, opts.netns.as_deref(), opts.run_as)?;
    kernel::preflight()?;
    if let Some(r) = &child.resolution {
        eprintln!("lotrace: {r}");
    }

    let mut meta = Meta {
        kernel: kernel::release(),
        command: opts.command.clone(),
        target: child.target.clone(),
        resolution: child.resolution.clone(),
        netns: opts.netns.clone(),
        backend: opts.backend.name().to_string(),
        ..Default::default()
    };
    let mut tracer = Tracer::load(&LoadOptions {
        btf_path: &opts.btf,
        ring_size: opts.ring_size,
        verbose: opts.verbose,
        backend: opts.backend,
        allow_missing: opts.allow_missing,
        summary_only: opts.summary_only,
        floor: opts.floor,
        per_event: opts.per_event,
        target: meta.target.as_deref(),
    })?;
    meta.set_probes(&tracer.plan, &tracer.attached);
    if opts.floor {
        eprintln!(
            "lotrace: --floor: every probe is attached and returns at once; nothing is traced"
        );
    }
    meta.drop_reasons = tracer.drop_reasons.clone();
    let perfetto = opts
        .perfetto
        .as_deref()
        .map(PerfettoWriter::create)
        .transpose()?;
    let mut recfile = match &opts.record {
        Some(p) => Some(RecordFile::create(p, &meta)?),
        None => None,
    };
    let ring = tracer.take_events()?;
    // SAFETY: the ring buffer owns its fd and keeps it open until dropped,
    // which happens after the AsyncFd is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow!("cannot poll the event ring buffer: {e}"))?;

    // The child becomes a target in the fork tracepoint, before it runs, so
    // not even its first packet can be missed; and lotrace touches no map
    // by system call while it runs (see `targets::SPAWNER`).
    let me = std::process::id();
    tracer.spawner(me)?;
    let spawned = child.command().spawn();
    let mut proc = match spawned {
        Ok(p) => p,
        Err(e) => {
            let _ = tracer.remove_target(me);
            return Err(e).with_context(|| format!("cannot run {}", opts.command[0]));
        }
    };
    let pid = proc
        .id()
        .context("child exited before it could be traced")?;
    // lotrace's cost is counted from here: loading the programs is not
    // part of what tracing costs the traced command.
    let base = self_usage(started);

    let mut printer = Printer::new(opts.format, opts.style);
    printer.perfetto = perfetto;
    printer.quiet = quiet;
    let mut session = Session::new(&meta);
    let mut output = Output::new(proc.stdout.take().context("child stdout")?)?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // The ring is drained, and quiet slots read, on this timer: the
    // programs wake lotrace only as the ring fills (see lotrace-ebpf's
    // `assemble::wake_flags`).
    let mut tick = interval(Duration::from_millis(10));
    let mut kill_at: Option<Instant> = None;
    let mut last_lost = 0;
    let mut taken = Taken::default();
    let slots = tracer.slots()?;

    let status: ExitStatus = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                // The kernel signals only when the ring was empty, so the
                // readiness is cleared before draining: a record committed
                // during the drain wakes us again instead of being stranded.
                guard.clear_ready();
                // ping's lines first: a journey's own may be among them.
                child_lines(&mut output, &mut printer, &mut recfile, &mut session, &mut meta)?;
                let done = drain(guard.get_inner_mut(), &mut taken, &mut session, &mut recfile)?;
                printer.journeys(&done, &meta)?;
            }
            st = proc.wait() => break st?,
            _ = sigint.recv() => {
                forward(pid, libc::SIGINT);
                kill_at.get_or_insert(Instant::now() + Duration::from_secs(3));
            }
            _ = sigterm.recv() => {
                forward(pid, libc::SIGTERM);
                kill_at.get_or_insert(Instant::now() + Duration::from_secs(3));
            }
            _ = sleep_until(kill_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if kill_at.is_some() => {
                forward(pid, libc::SIGKILL);
                kill_at = None;
            }
            _ = tick.tick() => {
                child_lines(&mut output, &mut printer, &mut recfile, &mut session, &mut meta)?;
                let mut done = drain(ring.get_mut(), &mut taken, &mut session, &mut recfile)?;
                let before = kernel::monotonic_ns().saturating_sub(SLOT_QUIET_NS);
                done.extend(sweep(slots.as_ref(), &mut taken, From::Map, before, &mut session, &mut recfile)?);
                printer.journeys(&done, &meta)?;
                tracer.flush_logs();
                let lost = tracer.lost_events();
                if lost != last_lost {
                    last_lost = lost;
                    if let Some(r) = recfile.as_mut() { r.record(&Record::Lost(lost))?; }
                    session.record(&Record::Lost(lost));
                }
                let done = session.ready(kernel::monotonic_ns());
                printer.journeys(&done, &meta)?;
                printer.packets(&mut session, &meta)?;
                printer.flush()?;
            }
        }
    };

    // The child is gone: what it printed and what its packets did are all
    // in the pipes and the ring already. lotrace spawns nothing more.
    let _ = tracer.remove_target(me);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        child_lines(
            &mut output,
            &mut printer,
            &mut recfile,
            &mut session,
            &mut meta,
        )?;
        if !output.open || Instant::now() >= deadline {
            break;
        }
        sleep_until(Instant::now() + Duration::from_millis(10)).await;
    }
    let mut done = drain(ring.get_mut(), &mut taken, &mut session, &mut recfile)?;
    done.extend(sweep(
        slots.as_ref(),
        &mut taken,
        From::Last,
        u64::MAX,
        &mut session,
        &mut recfile,
    )?);
    // A record sent during that read holds nothing new, but must not be
    // left in the ring.
    done.extend(drain(
        ring.get_mut(),
        &mut taken,
        &mut session,
        &mut recfile,
    )?);
    tracer.flush_logs();
    let lost = tracer.lost_events();
    if let Some(r) = recfile.as_mut() {
        r.record(&Record::Lost(lost))?;
    }
    session.record(&Record::Lost(lost));
    session.missed = Some(tracer.missed_runs());
    session.submitted = tracer.submitted_events().ok();
    if tracer.assembles {
        session.assembled = Some(Assembled {
            records: taken.records,
            events: taken.events,
        });
    }
    if opts.summary_only {
        // Every event went into the kernel's aggregates, but for those
        // another program's overwrote on the way (counted lost).
        let agg = tracer.aggregate()?;
        session.stats = kagg::stats(&agg);
        session.packet_stats = kagg::packet_stats(&agg);
        session.events = session.submitted.unwrap_or(0).saturating_sub(lost);
    }
    let end = self_usage(started);
    session.usage = Some(Usage {
        cpu_ns: end.cpu_ns.saturating_sub(base.cpu_ns),
        max_rss_kb: end.max_rss_kb,
        wall_ns: end.wall_ns.saturating_sub(base.wall_ns),
    });
    done.extend(session.finish());
    printer.journeys(&done, &meta)?;
    printer.packets(&mut session, &meta)?;
    printer.summary(&session, &meta)?;
    let exit = exit_words(status);
    if let Some(r) = recfile.take() {
        r.finish(&Trailer {
            lost_events: lost,
            missed_runs: session.missed,
            submitted_events: session.submitted,
            exit: exit.clone(),
        })?;
    }
    drop(ring);
    drop(tracer);
    Ok(Finished {
        code: exit_code(status),
        session,
        meta,
    })
}

/// An echo whose newest event is this old is taken from its slot, on the
/// next 10 ms drain: well before the journey builder's quiet period ends
/// (`QUIET_NS`), so that the events streamed on their own (a copy's free
/// or drop) and those in the slot make one journey.
const SLOT_QUIET_NS: u64 = 100_000_000;

/// A line the command printed: passed on, recorded, and read for ping's
/// RTT and the address it resolved.
/// Every line of the command's output that has arrived.
fn child_lines(
    output: &mut Output,
    printer: &mut Printer,
    recfile: &mut Option<RecordFile>,
    session: &mut Session,
    meta: &mut Meta,
) -> Result<()> {
    for text in output.lines() {
        child_line(&text, printer, recfile, session, meta)?;
    }
    Ok(())
}

fn child_line(
    text: &str,
    printer: &mut Printer,
    recfile: &mut Option<RecordFile>,
    session: &mut Session,
    meta: &mut Meta,
) -> Result<()> {
    printer.child_line(text)?;
    if let Some(r) = recfile.as_mut() {
        r.record(&Record::Line {
            ts_ns: kernel::monotonic_ns(),
            text: text.to_string(),
        })?;
    }
    session.line(text);
    session.update_target(meta);
    Ok(())
}

/// Takes every event in the ring into the session (and the record file);
/// returns the journeys that closed.
fn drain(
    rb: &mut aya::maps::RingBuf<aya::maps::MapData>,
    taken: &mut Taken,
    session: &mut Session,
    recfile: &mut Option<RecordFile>,
) -> Result<Vec<Done>> {
    let mut done = Vec::new();
    while let Some(item) = rb.next() {
        if let Some(e) = Event::from_bytes(&item) {
            done.extend(take(e, session, recfile)?);
        } else if let Some(events) = taken.take(&item, From::Record) {
            for e in events {
                done.extend(take(e, session, recfile)?);
            }
        }
    }
    Ok(done)
}

/// Takes what the programs assembled and still hold: the echoes quiet
/// since `before_ns` (all of them, with `From::Last`).
fn sweep(
    slots: Option<&Slots>,
    taken: &mut Taken,
    from: From,
    before_ns: u64,
    session: &mut Session,
    recfile: &mut Option<RecordFile>,
) -> Result<Vec<Done>> {
    let mut done = Vec::new();
    let Some(slots) = slots else {
        return Ok(done);
    };
    let mut buf = Vec::new();
    let n = slots.copy_busy(&mut buf);
    for slot in buf.chunks_exact(SLOT_SIZE).take(n) {
        let events = taken.take_quiet(slot, from, before_ns).unwrap_or_default();
        if events.is_empty() {
            continue;
        }
        // Told to the programs: should the echo's record not be sent,
        // these are not lost.
        if let Some(head) = SlotHead::from_bytes(slot)
            && let Some((generation, positions)) = taken.of(head.index)
        {
            slots.mark_taken(head.index, generation, positions);
        }
        for e in events {
            done.extend(take(e, session, recfile)?);
        }
    }
    Ok(done)
}

/// One event into the record file and the session.
fn take(e: Event, session: &mut Session, recfile: &mut Option<RecordFile>) -> Result<Vec<Done>> {
    if let Some(r) = recfile.as_mut() {
        r.record(&Record::Event(e))?;
    }
    Ok(session.event(e))
}

/// lotrace's own CPU time (user + system) and peak RSS so far.
fn self_usage(started: std::time::Instant) -> Usage {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    Usage {
        cpu_ns: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_kb: ru.ru_maxrss.max(0) as u64,
        wall_ns: started.elapsed().as_nanos() as u64,
    }
}

//! `lotrace trace`: runs a command under the probes and streams its
//! journeys. With the loader, the only code that touches the kernel.

use std::{
    net::ToSocketAddrs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use lotrace_common::Event;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Interest, unix::AsyncFd},
    process::Command,
    signal::unix::{SignalKind, signal},
    time::{Instant, interval, sleep_until},
};

use crate::{
    kernel::loader::{LoadOptions, Tracer},
    model::meta::Meta,
    model::pingout,
    model::record::{self, Record, Trailer},
    model::session::{Done, Session, Usage},
    output::{Format, Style, perfetto::PerfettoWriter, printer::Printer},
};

pub struct TraceOptions {
    pub command: Vec<String>,
    pub style: Style,
    /// Also write a Perfetto (Chrome JSON) trace here.
    pub perfetto: Option<PathBuf>,
    /// Run the command in this named network namespace (`ip netns`).
    pub netns: Option<String>,
    pub backend: crate::model::plan::BackendChoice,
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
        }
    }
}

/// The user who invoked sudo, when lotrace runs as root through it.
pub fn sudo_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let uid: u32 = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid: u32 = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    (uid != 0).then_some((uid, gid))
}

/// Finds `program` the way the shell would, so a missing command is
/// reported before anything is loaded.
pub fn resolve_program(program: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if runnable(&p) {
            Ok(p)
        } else {
            Err(anyhow!(
                "command not found: {program} (no such executable file)"
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| runnable(p))
        .ok_or_else(|| {
            let hint = if pingout::is_ping(program) {
                " (install iputils-ping)"
            } else {
                ""
            };
            anyhow!("command not found: {program}: it is not on PATH{hint}")
        })
}

/// For a ping, makes sure its target resolves before anything is loaded;
/// returns it and, for a name, where its addresses come from.
fn check_target(command: &[String], hosts_path: &Path) -> Result<(Option<String>, Option<String>)> {
    if !pingout::is_ping(&command[0]) {
        return Ok((None, None));
    }
    let Some(target) = pingout::ping_target(&command[1..]) else {
        return Ok((None, None));
    };
    let hosts = std::fs::read_to_string(hosts_path).unwrap_or_default();
    let listed: Vec<std::net::IpAddr> = pingout::hosts_lines(&hosts, &target)
        .iter()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let addrs: Vec<std::net::IpAddr> = if !listed.is_empty() {
        listed
    } else {
        match (target.as_str(), 0u16).to_socket_addrs() {
            Ok(a) => a.map(|a| a.ip()).collect(),
            Err(e) => bail!("unknown host {target}: {e}"),
        }
    };
    if addrs.is_empty() {
        bail!("unknown host {target}: it resolves to no address");
    }
    if target.parse::<std::net::IpAddr>().is_ok() {
        return Ok((Some(target), None));
    }
    let mut uniq: Vec<String> = Vec::new();
    for a in &addrs {
        if !uniq.contains(&a.to_string()) {
            uniq.push(a.to_string());
        }
    }
    let why = match pingout::hosts_lines(&hosts, &target) {
        lines if !lines.is_empty() => {
            format!("from {}: {}", hosts_path.display(), lines.join("; "))
        }
        _ => "from the resolver (not in /etc/hosts)".to_string(),
    };
    Ok((
        Some(target.clone()),
        Some(format!("{target} resolves to {} ({why})", uniq.join(", "))),
    ))
}

/// Files `ip netns exec` would bind over /etc: (source, target).
fn netns_etc(name: &str) -> Vec<(std::ffi::CString, std::ffi::CString)> {
    let dir = Path::new("/etc/netns").join(name);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let src = std::ffi::CString::new(e.path().to_str()?).ok()?;
            let dst = std::ffi::CString::new(format!("/etc/{}", e.file_name().to_str()?)).ok()?;
            Some((src, dst))
        })
        .collect()
}

/// The network namespace `ip netns` calls `name`, opened.
fn open_netns(name: &str) -> Result<std::fs::File> {
    if name.contains('/') || name.is_empty() {
        bail!("bad network namespace name {name:?}");
    }
    let path = Path::new("/run/netns").join(name);
    std::fs::File::open(&path).map_err(|e| {
        anyhow!(
            "no network namespace {name} ({}: {e}); see `ip netns list`",
            path.display()
        )
    })
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
    let program = resolve_program(&opts.command[0])?;
    let netns = opts.netns.as_deref().map(open_netns).transpose()?;
    // Like `ip netns exec`, files in /etc/netns/NAME replace those in /etc
    // for the command.
    let etc_binds = opts.netns.as_deref().map(netns_etc).unwrap_or_default();
    let hosts_path = etc_binds
        .iter()
        .find(|(_, dst)| dst.as_bytes() == b"/etc/hosts")
        .map(|(src, _)| PathBuf::from(src.to_string_lossy().into_owned()))
        .unwrap_or_else(|| PathBuf::from("/etc/hosts"));
    let (target, resolution) = check_target(&opts.command, &hosts_path)?;
    crate::kernel::loader::preflight()?;
    if let Some(r) = &resolution {
        eprintln!("lotrace: {r}");
    }

    let mut meta = Meta {
        kernel: kernel_release(),
        command: opts.command.clone(),
        target,
        resolution,
        netns: opts.netns.clone(),
        backend: crate::kernel::loader::backend_arg(opts.backend).to_string(),
        ..Default::default()
    };
    let mut tracer = Tracer::load(&LoadOptions {
        btf_path: &opts.btf,
        ring_size: opts.ring_size,
        verbose: opts.verbose,
        backend: opts.backend,
        allow_missing: opts.allow_missing,
        summary_only: opts.summary_only,
    })?;
    meta.set_probes(&tracer.plan, &tracer.attached);
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
    // not even its first packet can be missed.
    let me = std::process::id();
    tracer.add_target(me)?;
    let mut cmd = Command::new(&program);
    cmd.arg0(&opts.command[0])
        .args(&opts.command[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let run_as = opts.run_as;
    let netns_fd = netns.as_ref().map(|f| {
        use std::os::fd::AsRawFd;
        f.as_raw_fd()
    });
    // SAFETY: prctl, setns, unshare and mount are async-signal-safe; the
    // fd and strings stay alive in the parent until the child is spawned.
    unsafe {
        cmd.pre_exec(move || {
            // The child must not outlive lotrace.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(fd) = netns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if !etc_binds.is_empty() {
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_SLAVE | libc::MS_REC,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                for (src, dst) in &etc_binds {
                    if libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            // Last, once the namespace and mounts that need root are set:
            // the invoking user's identity. Changing it clears the death
            // signal, so it is set again.
            if let Some((uid, gid)) = run_as {
                let groups = [gid];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    let removed = tracer.remove_target(me);
    let mut child = spawned.with_context(|| format!("cannot run {}", opts.command[0]))?;
    removed?;
    let pid = child
        .id()
        .context("child exited before it could be traced")?;
    // lotrace's cost is counted from here: loading the programs is not
    // part of what tracing costs the traced command.
    let base = self_usage(started);
    tracer.add_target(pid)?;

    let mut printer = Printer::new(opts.format, opts.style);
    printer.perfetto = perfetto;
    printer.quiet = quiet;
    let mut session = Session::new(&meta);
    let mut lines = BufReader::new(child.stdout.take().context("child stdout")?).lines();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = interval(Duration::from_millis(50));
    let mut stdout_open = true;
    let mut kill_at: Option<Instant> = None;
    let mut last_lost = 0;

    let status: ExitStatus = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                // The kernel signals only when the ring was empty, so the
                // readiness is cleared before draining: a record committed
                // during the drain wakes us again instead of being stranded.
                guard.clear_ready();
                let done = drain(guard.get_inner_mut(), &mut session, &mut recfile)?;
                printer.journeys(&done, &meta)?;
            }
            line = lines.next_line(), if stdout_open => {
                match line {
                    Ok(Some(text)) => {
                        printer.child_line(&text)?;
                        if let Some(r) = recfile.as_mut() {
                            r.record(&Record::Line { ts_ns: monotonic_ns(), text: text.clone() })?;
                        }
                        session.line(&text);
                        session.update_target(&mut meta);
                    }
                    _ => stdout_open = false,
                }
            }
            st = child.wait() => break st?,
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
                let done = drain(ring.get_mut(), &mut session, &mut recfile)?;
                printer.journeys(&done, &meta)?;
                tracer.flush_logs();
                let lost = tracer.lost_events().unwrap_or(last_lost);
                if lost != last_lost {
                    last_lost = lost;
                    if let Some(r) = recfile.as_mut() { r.record(&Record::Lost(lost))?; }
                    session.record(&Record::Lost(lost));
                }
                let done = session.ready(monotonic_ns());
                printer.journeys(&done, &meta)?;
                printer.flush()?;
            }
        }
    };

    // The child is gone: what it printed and what its packets did are all
    // in the pipes and the ring already.
    let deadline = Instant::now() + Duration::from_secs(1);
    while stdout_open {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(text)) => {
                    printer.child_line(&text)?;
                    if let Some(r) = recfile.as_mut() {
                        r.record(&Record::Line { ts_ns: monotonic_ns(), text: text.clone() })?;
                    }
                    session.line(&text);
                    session.update_target(&mut meta);
                }
                _ => stdout_open = false,
            },
            _ = sleep_until(deadline) => stdout_open = false,
        }
    }
    let mut done = drain(ring.get_mut(), &mut session, &mut recfile)?;
    tracer.flush_logs();
    let lost = tracer.lost_events().unwrap_or(last_lost);
    if let Some(r) = recfile.as_mut() {
        r.record(&Record::Lost(lost))?;
    }
    session.record(&Record::Lost(lost));
    session.missed = Some(tracer.missed_runs());
    session.submitted = tracer.submitted_events().ok();
    if opts.summary_only {
        // Every event went into the kernel's aggregates: none was lost.
        session.stats = crate::model::kagg::stats(&tracer.aggregate()?);
        session.events = session.submitted.unwrap_or(0);
    }
    let end = self_usage(started);
    session.usage = Some(Usage {
        cpu_ns: end.cpu_ns.saturating_sub(base.cpu_ns),
        max_rss_kb: end.max_rss_kb,
        wall_ns: end.wall_ns.saturating_sub(base.wall_ns),
    });
    done.extend(session.finish());
    printer.journeys(&done, &meta)?;
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
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) if sig == libc::SIGINT || sig == libc::SIGTERM => 0,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    Ok(Finished {
        code,
        session,
        meta,
    })
}

/// Takes every event in the ring into the session (and the record file);
/// returns the journeys that closed.
fn drain(
    rb: &mut aya::maps::RingBuf<aya::maps::MapData>,
    session: &mut Session,
    recfile: &mut Option<RecordFile>,
) -> Result<Vec<Done>> {
    let mut done = Vec::new();
    while let Some(item) = rb.next() {
        if let Some(e) = Event::from_bytes(&item) {
            if let Some(r) = recfile.as_mut() {
                r.record(&Record::Event(e))?;
            }
            done.extend(session.event(e));
        }
    }
    Ok(done)
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

fn exit_words(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => c.to_string(),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "unknown".into(),
    }
}

fn forward(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, sig) };
}

//! `cargo xtask vm`: boots a Debian cloud kernel under qemu (TCG) with an
//! initramfs holding busybox and lotrace, runs lotrace inside, and streams
//! its output back. Used by hand and by the kernel matrix in `xtask test`.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    kernels::{self, Flavour},
    workspace,
};

const MARK: &str = "@@lotrace-vm";

/// Output of one lotrace invocation in the guest.
pub struct Run {
    pub stdout: Vec<String>,
    pub exit: i32,
}

pub fn vm_dir() -> PathBuf {
    workspace().join("target/vm")
}

/// Shared libraries a binary needs, from ldd.
fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output().context("ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// A newc cpio archive, written directly: the kernel unpacks it as the
/// initramfs (uncompressed is fine).
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Cpio {
        Cpio {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guest's /init: mount what lotrace needs, run each invocation with
/// stdout on ttyS1 (fenced by markers) and stderr on ttyS2, power off.
fn init_script(runs: &[Vec<String>], machine: &Machine) -> String {
    let mut s = format!(
        "#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tracefs nodev /sys/kernel/tracing
mount -t debugfs nodev /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
# iputils' ping uses an ICMP datagram socket where this allows it.
echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range
{setup}stty -F /dev/ttyS1 raw -echo
stty -F /dev/ttyS2 raw -echo
stty -F /dev/ttyS3 raw -echo
",
        setup = machine.setup
    );
    // A sign of life from user space, which a hung kernel stops: the host
    // kills a guest that goes quiet. Bounded by the host's deadline.
    s.push_str(&format!(
        "(i=0; while [ $i -lt {} ]; do echo $i; i=$((i+1)); sleep {HEARTBEAT}; done) > /dev/ttyS3 &\n",
        DEADLINE.as_secs() / HEARTBEAT + 1
    ));
    for (i, args) in runs.iter().enumerate() {
        let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        s.push_str(&format!(
            "echo {MARK} begin {i} > /dev/ttyS1
/lotrace {} > /dev/ttyS1 2> /dev/ttyS2
echo {MARK} exit {i} $? > /dev/ttyS1
",
            args.join(" ")
        ));
    }
    s.push_str("poweroff -f\n");
    s
}

fn initramfs(lotrace: &Path, runs: &[Vec<String>], machine: &Machine) -> Result<Vec<u8>> {
    let mut c = Cpio::new();
    for d in [
        "bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "lib", "lib64", "usr", "usr/lib",
        "usr/bin",
    ] {
        c.dir(d);
    }
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox")?;
    c.file("bin/busybox", 0o755, &busybox);
    c.symlink("bin/sh", "busybox");
    c.file("init", 0o755, init_script(runs, machine).as_bytes());
    c.file("etc/hosts", 0o644, b"127.0.0.1 localhost\n::1 localhost\n");
    c.file("lotrace", 0o755, &std::fs::read(lotrace)?);
    // iputils' ping, beside busybox's: it sends on an ICMP datagram socket.
    let ping = Path::new(IPUTILS_PING);
    c.file(
        "usr/bin/ping",
        0o755,
        &std::fs::read(ping).with_context(|| format!("reading {IPUTILS_PING}"))?,
    );
    let mut dirs = std::collections::BTreeSet::new();
    dirs.insert(PathBuf::from("usr/bin"));
    let mut libs = libraries(lotrace)?;
    libs.extend(libraries(ping)?);
    libs.sort();
    libs.dedup();
    for lib in libs {
        let rel = lib.strip_prefix("/").unwrap_or(&lib);
        let mut acc = PathBuf::new();
        for comp in rel.parent().into_iter().flat_map(|p| p.components()) {
            acc.push(comp);
            if dirs.insert(acc.clone()) {
                c.dir(&acc.to_string_lossy());
            }
        }
        // Libraries are often symlinks: store the file itself.
        let data = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
        c.file(&rel.to_string_lossy(), 0o755, &data);
    }
    Ok(c.finish())
}

/// iputils' ping on the host, and in the guest.
pub const IPUTILS_PING: &str = "/usr/bin/ping";

/// A guest's whole run, at most, hung or not.
const DEADLINE: Duration = Duration::from_secs(600);
/// How long a guest may stay silent (no heartbeat, no output) before it
/// is taken for hung and killed.
const SILENCE: Duration = Duration::from_secs(60);
/// How often the guest's init says it is alive, in seconds.
const HEARTBEAT: u64 = 5;
/// Console lines quoted when a guest fails.
const TAIL_LINES: usize = 20;

/// What one guest gave: each lotrace invocation's output, and whether it
/// had to be booted a second time because the first boot hung.
pub struct Guest {
    pub runs: Vec<Run>,
    pub retried: bool,
    /// The kernel's release, as `uname -r` prints it.
    pub release: String,
}

/// Boots `series` and runs lotrace once per entry of `runs`. With
/// `stream`, each stdout line is printed as it arrives. A guest that hangs
/// is killed after [`SILENCE`] and booted once more.
pub fn boot(
    series: &str,
    lotrace: &Path,
    runs: &[Vec<String>],
    stream: bool,
    machine: &Machine,
) -> Result<Guest> {
    let kernel = kernels::fetch(series, machine.flavour, &vm_dir())?;
    eprintln!(
        "xtask: {series}: Debian kernel {} ({})",
        kernel.release, kernel.version
    );
    let vmlinuz = &kernel.vmlinuz;
    let dir = vm_dir().join(format!("run-{series}{}", machine.suffix));
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(&initrd, initramfs(lotrace, runs, machine)?)?;
    let guest = Paths::new(&dir);
    let mut retried = false;
    loop {
        let results = match boot_once(vmlinuz, &initrd, &guest, stream, machine)? {
            Ended::PoweredOff(results) => results,
            Ended::Killed(Verdict::Silent) if !retried => {
                let kept = dir.join("console.hung.log");
                let _ = std::fs::rename(&guest.console, &kept);
                eprintln!(
                    "xtask: the {series} guest printed nothing for {}s and was killed; \
                     booting it once more (its console is kept in {})",
                    SILENCE.as_secs(),
                    kept.display()
                );
                retried = true;
                continue;
            }
            Ended::Killed(v) => bail!(
                "the {series} guest {}{}; {}",
                v.describe(),
                if retried {
                    ", on its second boot too"
                } else {
                    ""
                },
                console_tail(&guest.console)
            ),
        };
        if results.len() != runs.len() {
            bail!(
                "the {series} guest ran {} of {} lotrace invocations; {}",
                results.len(),
                runs.len(),
                console_tail(&guest.console)
            );
        }
        return Ok(Guest {
            runs: results,
            retried,
            release: kernel.release,
        });
    }
}

/// Where one guest's serial ports are written.
struct Paths {
    console: PathBuf,
    stderr: PathBuf,
    heartbeat: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Paths {
        Paths {
            console: dir.join("console.log"),
            stderr: dir.join("stderr.log"),
            heartbeat: dir.join("heartbeat.log"),
        }
    }
}

enum Ended {
    PoweredOff(Vec<Run>),
    Killed(Verdict),
}

/// The qemu machine every guest runs on. One vCPU: with two, qemu's
/// multi-threaded TCG runs them at once, and when the kernel rewrites its
/// own code to attach or detach a probe (a tracepoint's static branch, a
/// kprobe, an fentry trampoline) the other vCPU can go on running its old
/// translation of that code. Seen under load: a vCPU spinning for minutes
/// on an int3 the kernel had already removed from `consume_skb` (soft
/// lockups and RCU stalls until the deadline, as in CI), and a call
/// through a freed trampoline (NULL RIP under `raw_local_deliver`). With
/// one vCPU the code is rewritten by the only thread that runs it. The
/// matrix checks order and completeness, which one CPU shows as well.
const MACHINE: &[&str] = &["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1"];

/// Two vCPUs, for what needs a second CPU (a packet steered to another
/// CPU's backlog). qemu's single-threaded TCG runs them in turn in one
/// thread, so the kernel's rewriting of its own code is seen by both (see
/// [`MACHINE`]).
const TWO_CPUS: &[&str] = &[
    "-accel",
    "tcg,thread=single",
    "-cpu",
    "max",
    "-m",
    "1024",
    "-smp",
    "2",
];

/// How a guest is set up besides its kernel.
pub struct Machine {
    pub flavour: Flavour,
    pub cpus: u32,
    /// Appended to the kernel's command line.
    pub cmdline: &'static str,
    /// Shell lines the guest's init runs before lotrace.
    pub setup: &'static str,
    /// Told apart from the plain guest's files by this.
    pub suffix: &'static str,
}

/// The guest every check runs in unless it says otherwise.
pub const PLAIN: Machine = Machine {
    flavour: Flavour::Cloud,
    cpus: 1,
    cmdline: "",
    setup: "",
    suffix: "",
};

fn boot_once(
    vmlinuz: &Path,
    initrd: &Path,
    guest: &Paths,
    stream: bool,
    machine: &Machine,
) -> Result<Ended> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(if machine.cpus > 1 { TWO_CPUS } else { MACHINE })
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 quiet panic=-1 {}", machine.cmdline))
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", guest.console.display()))
        .args(["-serial", "stdio"])
        .arg("-serial")
        .arg(format!("file:{}", guest.stderr.display()))
        .arg("-serial")
        .arg(format!("file:{}", guest.heartbeat.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let pid = child.id();
    // Bytes read from the guest's stdout so far: one of the signs of life
    // the watchdog follows.
    let read = Arc::new(AtomicU64::new(0));
    let watchdog = {
        let read = Arc::clone(&read);
        let files = [guest.stderr.clone(), guest.heartbeat.clone()];
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut watch = Watch::new(SILENCE, DEADLINE);
            loop {
                std::thread::sleep(Duration::from_millis(200));
                if std::fs::metadata(format!("/proc/{pid}")).is_err() {
                    return Verdict::Running;
                }
                // The kernel's console is not a sign of life: a hung guest
                // keeps printing its soft lockup reports there.
                let seen = read.load(Ordering::Relaxed)
                    + files
                        .iter()
                        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
                        .sum::<u64>();
                let v = watch.observe(start.elapsed(), seen);
                if v != Verdict::Running {
                    // SAFETY: kill has no memory-safety preconditions; the
                    // pid is our unreaped child's.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    return v;
                }
            }
        })
    };
    let mut results: Vec<Run> = Vec::new();
    let mut current: Option<Run> = None;
    let out = std::io::stdout();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_default();
        read.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix(MARK) {
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                ["begin", _] => {
                    current = Some(Run {
                        stdout: Vec::new(),
                        exit: -1,
                    })
                }
                ["exit", _, code] => {
                    if let Some(mut r) = current.take() {
                        r.exit = code.parse().unwrap_or(-1);
                        results.push(r);
                    }
                }
                _ => {}
            }
            continue;
        }
        if let Some(r) = current.as_mut() {
            if stream {
                let mut o = out.lock();
                let _ = writeln!(o, "{line}");
                let _ = o.flush();
            }
            r.stdout.push(line.to_string());
        }
    }
    child.wait()?;
    let verdict = watchdog.join().unwrap_or(Verdict::Running);
    if stream {
        let errs = std::fs::read_to_string(&guest.stderr).unwrap_or_default();
        eprint!("{}", errs.replace('\r', ""));
    }
    Ok(match verdict {
        Verdict::Running => Ended::PoweredOff(results),
        v => Ended::Killed(v),
    })
}

/// The watchdog's judgement of a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Running,
    /// Nothing new for the whole silence limit.
    Silent,
    /// Alive, but past the deadline.
    Overdue,
}

impl Verdict {
    fn describe(self) -> String {
        match self {
            Verdict::Running => "ran".into(),
            Verdict::Silent => format!("printed nothing for {}s", SILENCE.as_secs()),
            Verdict::Overdue => format!("did not finish within {}s", DEADLINE.as_secs()),
        }
    }
}

/// Follows how much a guest has printed, and when that last changed.
struct Watch {
    silence: Duration,
    deadline: Duration,
    seen: u64,
    changed: Duration,
}

impl Watch {
    fn new(silence: Duration, deadline: Duration) -> Watch {
        Watch {
            silence,
            deadline,
            seen: 0,
            changed: Duration::ZERO,
        }
    }

    /// `seen` is the guest's output so far, in bytes over all its signs of
    /// life; `now` is the time since it was started.
    fn observe(&mut self, now: Duration, seen: u64) -> Verdict {
        if seen != self.seen {
            self.seen = seen;
            self.changed = now;
        }
        if now.saturating_sub(self.changed) >= self.silence {
            Verdict::Silent
        } else if now >= self.deadline {
            Verdict::Overdue
        } else {
            Verdict::Running
        }
    }
}

/// The end of a guest's console, for an error message.
fn console_tail(console: &Path) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into_owned();
    match tail(&text, TAIL_LINES) {
        t if t.is_empty() => format!("its console ({}) is empty", console.display()),
        t => format!(
            "the last lines of its console ({}):\n{t}",
            console.display()
        ),
    }
}

/// The last `n` lines of a console log, without carriage returns.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn cpio_entries_are_aligned() {
        let mut c = Cpio::new();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert!(out.len().is_multiple_of(4));
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn a_guest_that_keeps_printing_runs_until_its_deadline() {
        let s = Duration::from_secs;
        let mut w = Watch::new(s(60), s(600));
        let mut seen = 0;
        for t in (0..600).step_by(30) {
            seen += 10;
            assert_eq!(w.observe(s(t), seen), Verdict::Running, "at {t}s");
        }
        assert_eq!(w.observe(s(600), seen + 1), Verdict::Overdue);
    }

    #[test]
    fn a_guest_silent_for_a_minute_is_hung() {
        let s = Duration::from_secs;
        let mut w = Watch::new(s(60), s(600));
        assert_eq!(w.observe(s(1), 100), Verdict::Running);
        assert_eq!(w.observe(s(30), 200), Verdict::Running);
        // Quiet from 30 s on: still running at 89 s, hung at 90 s.
        assert_eq!(w.observe(s(89), 200), Verdict::Running);
        assert_eq!(w.observe(s(90), 200), Verdict::Silent);
        // A guest that never prints anything is hung a minute after start.
        let mut w = Watch::new(s(60), s(600));
        assert_eq!(w.observe(s(59), 0), Verdict::Running);
        assert_eq!(w.observe(s(60), 0), Verdict::Silent);
    }

    #[test]
    fn the_tail_of_a_console_is_its_last_lines() {
        let console = "[    0.1] a\r\n[    0.2] b\r\n\r\n[   31.0] rcu: stall\r\n[   52.0] watchdog: soft lockup\r\n";
        assert_eq!(
            tail(console, 2),
            "[   31.0] rcu: stall\n[   52.0] watchdog: soft lockup"
        );
        assert_eq!(tail(console, 20).lines().count(), 4);
        assert_eq!(tail("no newline at the end", 20), "no newline at the end");
        assert_eq!(tail("", 20), "");
    }

    #[test]
    fn the_init_script_beats_until_the_deadline() {
        let init = init_script(&[vec!["probes".into()]], &PLAIN);
        let beat = init.lines().find(|l| l.contains("/dev/ttyS3 &")).unwrap();
        let bound: u64 = beat
            .split("-lt ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(bound * HEARTBEAT > DEADLINE.as_secs());
        assert!(HEARTBEAT * 4 < SILENCE.as_secs());
        assert!(init.ends_with("poweroff -f\n"));
    }
}

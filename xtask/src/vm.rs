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

mod initramfs;
mod watch;

use initramfs::initramfs;
use watch::{Verdict, Watch, console_tail};

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
    let dir = vm_dir().join(format!(
        "run-{series}{}{}",
        machine.flavour.run_tag(),
        machine.suffix
    ));
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
    /// Told apart from the plain guest's files by this (the flavour's
    /// own tag comes first, see `Flavour::run_tag`).
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

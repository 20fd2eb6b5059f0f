//! The bystander: a process no trace targets, timing its own system calls
//! and loopback UDP round trips while a mode's probes are attached, for
//! what tracing costs the rest of the machine.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Mode, bpftrace::Bpftrace};

/// How long the system calls (getppid) and the loopback UDP round trips of
/// this process, which no trace targets, take over `window`: ns each.
fn bystander(window: Duration) -> Result<(f64, f64)> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").context("bystander socket")?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let to = sock.local_addr()?;
    let (mut sys, mut sys_n, mut udp, mut udp_n) = (Duration::ZERO, 0u64, Duration::ZERO, 0u64);
    let mut buf = [0u8; 64];
    let end = Instant::now() + window;
    while Instant::now() < end {
        let t = Instant::now();
        for _ in 0..1000 {
            // SAFETY: getppid has no preconditions.
            std::hint::black_box(unsafe { libc::getppid() });
        }
        sys += t.elapsed();
        sys_n += 1000;
        let t = Instant::now();
        for _ in 0..100 {
            sock.send_to(&buf[..32], to)?;
            sock.recv_from(&mut buf)
                .context("bystander's own datagram")?;
        }
        udp += t.elapsed();
        udp_n += 100;
    }
    Ok((
        sys.as_nanos() as f64 / sys_n.max(1) as f64,
        udp.as_nanos() as f64 / udp_n.max(1) as f64,
    ))
}

/// The bystander's times with this mode's probes attached: under lotrace
/// tracing `sleep` (every probe attached, nothing of its own to trace),
/// under the counting bpftrace, or with nothing attached.
pub(super) fn footprint(mode: Mode, lotrace: &Path, probes: &[String]) -> Result<(f64, f64)> {
    let window = Duration::from_secs(2);
    match mode {
        Mode::Untraced => bystander(window),
        Mode::Bpftrace => {
            let bt = Bpftrace::start(probes)?;
            let r = bystander(window);
            bt.stop()?;
            r
        }
        Mode::Lotrace | Mode::PerEvent | Mode::Summary | Mode::Floor => {
            let mut child = Command::new(lotrace)
                .args(["trace", "--format", "json"])
                .args(mode.lotrace_options())
                .args(["sleep", "5"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("running lotrace")?;
            // The traced command starts once every probe is attached.
            let children = format!("/proc/{0}/task/{0}/children", child.id());
            let deadline = Instant::now() + Duration::from_secs(60);
            while std::fs::read_to_string(&children).is_ok_and(|c| c.trim().is_empty()) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("lotrace did not start its command within 60 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let r = bystander(window);
            let st = child.wait()?;
            if !st.success() {
                bail!("lotrace trace sleep 5: {st}");
            }
            r
        }
    }
}

//! The peer the benchmark compares lotrace with: bpftrace attached to the
//! probes lotrace would attach on this kernel, only counting them.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::reap;

/// The probes `lotrace trace` attaches by default on this kernel, as
/// bpftrace names them.
pub(super) fn bpftrace_probes(lotrace: &Path) -> Result<Vec<String>> {
    let out = Command::new(lotrace)
        .args(["probes", "--format", "json"])
        .output()
        .context("running lotrace probes")?;
    let v: Value = serde_json::from_slice(&out.stdout).context("lotrace probes JSON")?;
    let mut probes = Vec::new();
    for st in v["stages"].as_array().context("stages")? {
        for c in st["candidates"].as_array().context("candidates")? {
            if c["chosen"] != true {
                continue;
            }
            let p = c["probe"].as_str().context("probe")?;
            // Debian's bpftrace (0.17) has no raw tracepoints: it counts
            // the classic tracepoint where lotrace attaches raw (see `run`).
            let p = p
                .replacen("raw_tracepoint:", "tracepoint:", 1)
                .replacen("fentry:", "kfunc:", 1)
                .replacen("fexit:", "kretfunc:", 1);
            if !probes.contains(&p) {
                probes.push(p);
            }
        }
    }
    if probes.is_empty() {
        bail!("lotrace probes chose no probe on this kernel");
    }
    Ok(probes)
}

pub(super) struct Bpftrace {
    child: std::process::Child,
}

impl Bpftrace {
    pub(super) fn start(probes: &[String]) -> Result<Bpftrace> {
        let script = format!("{} {{ @[probe] = count(); }}", probes.join(",\n"));
        let mut child = Command::new("bpftrace")
            .args(["-e", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running bpftrace")?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            line.clear();
            if out.read_line(&mut line)? == 0 {
                let mut err = String::new();
                let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                bail!("bpftrace ended before attaching: {}", err.trim());
            }
            if line.starts_with("Attaching") {
                break;
            }
            if Instant::now() > deadline {
                bail!("bpftrace did not attach within 60 s");
            }
        }
        // "Attaching" is printed before the probes are: give it time.
        std::thread::sleep(Duration::from_secs(2));
        child.stdout = Some(out.into_inner());
        Ok(Bpftrace { child })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it; returns how many probe hits it counted and its peak RSS.
    pub(super) fn stop(mut self) -> Result<(u64, u64)> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut text = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut text)?;
        }
        let rss = reap(self.child.id())?;
        let hits = text
            .lines()
            .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
            .sum();
        Ok((hits, rss))
    }
}

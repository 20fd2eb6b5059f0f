//! The guest's initramfs: busybox, lotrace and iputils' ping with their
//! libraries, and an /init that runs each lotrace invocation, fences its
//! output, beats a heartbeat and powers off; written as a newc cpio
//! archive directly.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::{DEADLINE, HEARTBEAT, IPUTILS_PING, MARK, Machine};

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

pub(super) fn initramfs(
    lotrace: &Path,
    runs: &[Vec<String>],
    machine: &Machine,
) -> Result<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::{PLAIN, SILENCE};

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

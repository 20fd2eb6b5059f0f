//! The traced command: found, its target resolved and its network
//! namespace opened before anything is loaded; then started in that
//! namespace, as the invoking user, unable to outlive lotrace.

use std::{
    ffi::CString,
    net::ToSocketAddrs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
};

use anyhow::{Result, anyhow, bail};
use tokio::process::Command;

use crate::model::pingout;

/// A command checked and ready to start.
pub struct Child {
    program: PathBuf,
    argv: Vec<String>,
    netns: Option<std::fs::File>,
    etc_binds: Vec<(CString, CString)>,
    run_as: Option<(u32, u32)>,
    /// For a ping: the host it pings.
    pub target: Option<String>,
    /// For a ping of a name: what it resolves to, and where that comes from.
    pub resolution: Option<String>,
}

impl Child {
    /// Checks `command` (and the namespace it is to run in) so that a
    /// mistake is reported before any program is loaded.
    pub fn prepare(
        command: &[String],
        netns: Option<&str>,
        run_as: Option<(u32, u32)>,
    ) -> Result<Child> {
        let program = resolve_program(&command[0])?;
        let netns_file = netns.map(open_netns).transpose()?;
        // Like `ip netns exec`, files in /etc/netns/NAME replace those in
        // /etc for the command.
        let etc_binds = netns.map(netns_etc).unwrap_or_default();
        let hosts_path = etc_binds
            .iter()
            .find(|(_, dst)| dst.as_bytes() == b"/etc/hosts")
            .map(|(src, _)| PathBuf::from(src.to_string_lossy().into_owned()))
            .unwrap_or_else(|| PathBuf::from("/etc/hosts"));
        let (target, resolution) = check_target(command, &hosts_path)?;
        Ok(Child {
            program,
            argv: command.to_vec(),
            netns: netns_file,
            etc_binds,
            run_as,
            target,
            resolution,
        })
    }

    /// The command to spawn, its stdout piped to lotrace.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg0(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let run_as = self.run_as;
        let etc_binds = self.etc_binds.clone();
        let netns_fd = self.netns.as_ref().map(|f| {
            use std::os::fd::AsRawFd;
            f.as_raw_fd()
        });
        // SAFETY: prctl, setns, unshare and mount are async-signal-safe; the
        // fd stays open in the parent (in `self`) until the child is spawned.
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
        cmd
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
    let Some(args) = pingout::ping_args(command) else {
        return Ok((None, None));
    };
    let Some(target) = pingout::ping_target(args) else {
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
fn netns_etc(name: &str) -> Vec<(CString, CString)> {
    let dir = Path::new("/etc/netns").join(name);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let src = CString::new(e.path().to_str()?).ok()?;
            let dst = CString::new(format!("/etc/{}", e.file_name().to_str()?)).ok()?;
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

/// The exit code lotrace ends with: the command's, 0 when it was stopped
/// by the SIGINT or SIGTERM lotrace forwarded, 128 + N for another signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) if sig == libc::SIGINT || sig == libc::SIGTERM => 0,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    }
}

/// How the command ended, for the record file's trailer.
pub fn exit_words(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => c.to_string(),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "unknown".into(),
    }
}

pub fn forward(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, sig) };
}

/// The command's output, read on lotrace's timer rather than as it comes:
/// a ping flood writes a byte per packet, and a pipe watched by epoll wakes
/// its reader at every write, each wake-up taking the CPU from the traced
/// command (about a third of a core in a 20,000-ping flood, with the
/// programs doing nothing). Not watched by the runtime: read without
/// blocking, whatever has arrived.
pub struct Output {
    file: std::fs::File,
    /// The start of a line whose end has not arrived.
    partial: Vec<u8>,
    pub open: bool,
}

/// A line longer than this is not one lotrace reads (a ping's progress
/// dots, never ended): only its last part is kept.
const LONGEST_LINE: usize = 64 << 10;

impl Output {
    pub fn new(stdout: tokio::process::ChildStdout) -> Result<Output> {
        use std::os::fd::AsRawFd as _;
        let fd = stdout.into_owned_fd()?;
        let raw = fd.as_raw_fd();
        // SAFETY: a valid descriptor, owned here.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            bail!(
                "cannot read the command's output: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Output {
            file: std::fs::File::from(fd),
            partial: Vec::new(),
            open: true,
        })
    }

    /// The whole lines that have arrived (and, once the command closed its
    /// output, the last one unended).
    pub fn lines(&mut self) -> Vec<String> {
        use std::io::Read as _;
        let mut buf = [0u8; 16 << 10];
        let mut lines = Vec::new();
        // Bounded: a pipe holds 64 KiB, and what comes meanwhile waits.
        for _ in 0..64 {
            if !self.open {
                break;
            }
            match self.file.read(&mut buf) {
                Ok(0) => self.open = false,
                Ok(n) => split_lines(&mut self.partial, &buf[..n], &mut lines),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => self.open = false,
            }
        }
        if !self.open && !self.partial.is_empty() {
            lines.push(line_text(&std::mem::take(&mut self.partial)));
        }
        lines
    }
}

/// Appends `bytes` to the unended line `partial`, moving each line they end
/// to `lines`.
fn split_lines(partial: &mut Vec<u8>, bytes: &[u8], lines: &mut Vec<String>) {
    let mut rest = bytes;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        partial.extend_from_slice(&rest[..i]);
        lines.push(line_text(partial));
        partial.clear();
        rest = &rest[i + 1..];
    }
    partial.extend_from_slice(rest);
    if partial.len() > LONGEST_LINE {
        partial.drain(..partial.len() - LONGEST_LINE / 2);
    }
}

fn line_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod output_tests {
    use super::*;

    #[test]
    fn lines_are_split_where_they_end_across_reads() {
        let mut partial = Vec::new();
        let mut lines = Vec::new();
        split_lines(
            &mut partial,
            b"PING 127.0.0.1 (127.0.0.1) 56(84) bytes\n64 bytes from",
            &mut lines,
        );
        assert_eq!(lines, ["PING 127.0.0.1 (127.0.0.1) 56(84) bytes"]);
        split_lines(&mut partial, b" 127.0.0.1: icmp_seq=1\r\n\n", &mut lines);
        assert_eq!(lines[1..], ["64 bytes from 127.0.0.1: icmp_seq=1", ""]);
        assert!(partial.is_empty());
    }

    #[test]
    fn an_unended_line_is_kept_to_its_last_part() {
        let mut partial = Vec::new();
        let mut lines = Vec::new();
        for _ in 0..100 {
            split_lines(&mut partial, &[b'.'; 4096], &mut lines);
        }
        assert!(lines.is_empty());
        assert!(partial.len() <= LONGEST_LINE);
        split_lines(&mut partial, b"\x08 \x08end\n", &mut lines);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].ends_with("end"));
    }
}

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

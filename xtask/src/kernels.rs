//! Debian cloud kernels for the guests: found and downloaded through an apt
//! configuration of xtask's own under `target/vm/apt` (its own sources
//! list, lists and cache), so the machine's apt sources are never touched.
//! The archive is the one the machine already uses.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::status;

/// The kernel series the guests can boot, oldest first. `latest` is the
/// newest cloud kernel any of the suites has.
pub const SERIES: &[&str] = &["5.10", "6.1", "6.12", "6.18", "latest"];

/// The suites searched, each with the archive it lives in: bullseye for
/// 5.10, bookworm for 6.1 and 6.12, trixie-backports for 6.18 and newer,
/// sid for the newest.
const SUITES: &[(Archive, &str)] = &[
    (Archive::Debian, "bullseye"),
    (Archive::Security, "bullseye-security"),
    (Archive::Debian, "bookworm"),
    (Archive::Security, "bookworm-security"),
    (Archive::Debian, "trixie-backports"),
    (Archive::Debian, "sid"),
];

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Lists older than this are fetched again: kernels superseded in the
/// archive disappear from it.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Copy)]
enum Archive {
    Debian,
    Security,
}

/// Which of Debian's builds of a release: the cloud one (small, what the
/// guests boot unless told otherwise) or the PREEMPT_RT one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Cloud,
    Rt,
}

impl Flavour {
    /// The end of the release's name: `6.12.57+deb12-rt-amd64`.
    fn suffix(self) -> &'static str {
        match self {
            Flavour::Cloud => "-cloud-amd64",
            Flavour::Rt => "-rt-amd64",
        }
    }

    /// What a guest's run directory adds for the flavour (`run-6.12-rt`).
    pub fn run_tag(self) -> &'static str {
        match self {
            Flavour::Cloud => "",
            Flavour::Rt => "-rt",
        }
    }
}

/// One kernel, unpacked.
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// The kernel's release, as `uname -r` prints it.
    pub release: String,
    /// The Debian package version.
    pub version: String,
}

/// xtask's own apt: every command gets its configuration from here.
struct Apt {
    root: PathBuf,
}

impl Apt {
    fn new(vm_dir: &Path) -> Apt {
        Apt {
            root: vm_dir.join("apt"),
        }
    }

    fn options(&self) -> Vec<String> {
        let r = |p: &str| self.root.join(p).display().to_string();
        [
            ("Dir::Etc::SourceList", r("sources.list")),
            ("Dir::Etc::SourceParts", "/dev/null".into()),
            ("Dir::State::Lists", r("lists")),
            ("Dir::State::status", r("status")),
            ("Dir::Cache", r("cache")),
            ("APT::Architectures", "amd64".into()),
            ("Acquire::Languages", "none".into()),
            // Files are downloaded into target/, which apt's own user
            // cannot always write.
            ("APT::Sandbox::User", "root".into()),
            // Only the package lists: no AppStream metadata, no icons.
            (
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
                "false".into(),
            ),
            (
                "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled",
                "false".into(),
            ),
            (
                "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled",
                "false".into(),
            ),
            (
                "Acquire::IndexTargets::deb::CNF::DefaultEnabled",
                "false".into(),
            ),
        ]
        .into_iter()
        .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={v}")])
        .collect()
    }

    /// Its output goes to stderr: a guest's stdout is lotrace's.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(self.options()).stdout(std::io::stderr());
        c
    }

    /// Writes the sources list and fetches the lists when there are none,
    /// they are a day old, or `force`.
    fn update(&self, force: bool) -> Result<()> {
        let stamp = self.root.join("updated");
        let stale = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age > LISTS_MAX_AGE);
        if !force && !stale {
            return Ok(());
        }
        for d in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(self.root.join(d))?;
        }
        std::fs::write(self.root.join("status"), "")?;
        let (debian, security) = machine_archives();
        let sources: String = SUITES
            .iter()
            .map(|(archive, suite)| {
                let uri = match archive {
                    Archive::Debian => &debian,
                    Archive::Security => &security,
                };
                format!("deb [arch=amd64 signed-by={KEYRING}] {uri} {suite} main\n")
            })
            .collect();
        std::fs::write(self.root.join("sources.list"), sources)?;
        eprintln!(
            "xtask: fetching the kernel lists of {} from {debian} (into {})",
            SUITES
                .iter()
                .map(|(_, s)| *s)
                .collect::<Vec<_>>()
                .join(", "),
            self.root.display()
        );
        status(self.command("apt-get").args(["-qq", "update"]))?;
        std::fs::write(stamp, "")?;
        Ok(())
    }

    fn names(&self) -> Result<Vec<String>> {
        let out = self
            .command("apt-cache")
            .args(["pkgnames", "linux-image-"])
            .stdout(std::process::Stdio::piped())
            .output()
            .context("apt-cache is needed to find Debian kernels")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// A field of the candidate version's record.
    fn field(&self, pkg: &str, field: &str) -> Result<String> {
        let out = self
            .command("apt-cache")
            .args(["show", "--no-all-versions", pkg])
            .stdout(std::process::Stdio::piped())
            .output()
            .context("apt-cache is needed to find Debian kernels")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}: ")))
            .map(str::to_string)
            .with_context(|| format!("apt-cache show {pkg} has no {field}"))
    }

    fn download(&self, pkg: &str, into: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(into)?;
        let version = self.field(pkg, "Version")?;
        // apt names the file with the version's colon escaped.
        let file = into.join(format!("{pkg}_{}_amd64.deb", version.replace(':', "%3a")));
        if !file.exists() {
            // apt says why on stderr (a 404, say); the command line itself
            // would only repeat xtask's options.
            status(
                self.command("apt-get")
                    .args(["download", "-qq", pkg])
                    .current_dir(into),
            )
            .map_err(|_| anyhow::anyhow!("apt-get download {pkg} failed"))?;
        }
        file.exists()
            .then_some(file)
            .with_context(|| format!("apt-get download {pkg} left no .deb"))
    }
}

/// The Debian and Debian security archives this machine's apt uses, from
/// its index targets; Debian's own when it uses none.
fn machine_archives() -> (String, String) {
    let out = Command::new("apt-get")
        .args(["indextargets", "--format", "$(URI)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    archives_in(&out)
}

fn archives_in(index_uris: &str) -> (String, String) {
    let base = |security: bool| {
        index_uris.lines().find_map(|u| {
            let (base, rest) = u.split_once("/dists/")?;
            let suite = rest.split('/').next()?;
            (suite.ends_with("-security") == security
                && ["bullseye", "bookworm", "trixie", "forky", "sid"]
                    .iter()
                    .any(|c| suite.starts_with(c)))
            .then(|| base.to_string())
        })
    };
    (
        base(false).unwrap_or_else(|| "http://deb.debian.org/debian".into()),
        base(true).unwrap_or_else(|| "http://deb.debian.org/debian-security".into()),
    )
}

/// Compares Debian package names by their embedded numbers, so that
/// `6.12.117` sorts after `6.12.99`.
fn natural_key(s: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut num = String::new();
    let mut text = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !text.is_empty() {
                out.push((0, std::mem::take(&mut text)));
            }
            num.push(c);
        } else {
            if !num.is_empty() {
                out.push((num.parse().unwrap_or(0), String::new()));
                num.clear();
            }
            text.push(c);
        }
    }
    if !num.is_empty() {
        out.push((num.parse().unwrap_or(0), String::new()));
    }
    if !text.is_empty() {
        out.push((0, text));
    }
    out
}

/// The kernel release in an image package's name, if it is one of
/// `flavour`: `linux-image-6.1.0-57-cloud-amd64-unsigned` →
/// `6.1.0-57-cloud-amd64`.
fn release_of(name: &str, flavour: Flavour) -> Option<&str> {
    let r = name.strip_prefix("linux-image-")?;
    let r = r.strip_suffix("-unsigned").unwrap_or(r);
    (r.ends_with(flavour.suffix()) && r.starts_with(|c: char| c.is_ascii_digit())).then_some(r)
}

/// The image packages of `series` among `names`, best first: the newest
/// release first, and of each release its unsigned image before the signed
/// one (the same kernel).
fn candidates(series: &str, flavour: Flavour, names: &[String]) -> Vec<String> {
    let mut found: Vec<(&str, &str)> = names
        .iter()
        .filter_map(|n| Some((n.as_str(), release_of(n, flavour)?)))
        // The series is the first two numbers: 6.1 must not take 6.12.
        .filter(|(_, r)| {
            series == "latest"
                || r.strip_prefix(&format!("{series}."))
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    found.sort_by_key(|(n, r)| (natural_key(r), n.ends_with("-unsigned")));
    found.iter().rev().map(|(n, _)| n.to_string()).collect()
}

/// Packages tried before giving up: a mirror can list a package its pool
/// no longer serves.
const TRIES: usize = 6;

/// The newest Debian kernel of `series` and `flavour` that the archive
/// serves, downloaded and unpacked under `vm_dir` (cached there).
pub fn fetch(series: &str, flavour: Flavour, vm_dir: &Path) -> Result<Kernel> {
    if !SERIES.contains(&series) {
        bail!(
            "unknown kernel series {series}: choose one of {}",
            SERIES.join(", ")
        );
    }
    let apt = Apt::new(vm_dir);
    apt.update(false)?;
    let mut pkgs = candidates(series, flavour, &apt.names()?);
    if pkgs.is_empty() {
        apt.update(true)?;
        pkgs = candidates(series, flavour, &apt.names()?);
    }
    if pkgs.is_empty() {
        bail!(
            "the Debian archive has no {series} kernel of that flavour (linux-image-{series}.*{})",
            flavour.suffix()
        );
    }
    // The newest release already unpacked, if it is: a package the mirror
    // refused before is not asked for again.
    let newest = release_of(&pkgs[0], flavour).unwrap_or_default();
    if let Some(k) = pkgs
        .iter()
        .take_while(|p| release_of(p, flavour) == Some(newest))
        .find_map(|p| cached(&apt, p, flavour, vm_dir))
    {
        return Ok(k);
    }
    let mut failed = Vec::new();
    for pkg in pkgs.iter().take(TRIES) {
        match unpacked(&apt, pkg, series, flavour, vm_dir) {
            Ok(k) => return Ok(k),
            Err(e) => {
                eprintln!("xtask: {pkg}: {e:#}; trying an older package");
                failed.push(pkg.as_str());
            }
        }
    }
    bail!(
        "no {series} kernel could be downloaded (tried {})",
        failed.join(", ")
    )
}

fn cached(apt: &Apt, pkg: &str, flavour: Flavour, vm_dir: &Path) -> Option<Kernel> {
    let release = release_of(pkg, flavour)?;
    let vmlinuz = find_vmlinuz(&vm_dir.join("kernels").join(pkg), release)?;
    Some(Kernel {
        vmlinuz,
        release: release.to_string(),
        version: apt.field(pkg, "Version").ok()?,
    })
}

/// One image package, from the cache or downloaded and unpacked.
fn unpacked(apt: &Apt, pkg: &str, series: &str, flavour: Flavour, vm_dir: &Path) -> Result<Kernel> {
    let release = release_of(pkg, flavour).unwrap_or_default().to_string();
    let version = apt.field(pkg, "Version")?;
    let dir = vm_dir.join("kernels").join(pkg);
    let kernel = |vmlinuz| Kernel {
        vmlinuz,
        release: release.clone(),
        version: version.clone(),
    };
    if let Some(v) = find_vmlinuz(&dir, &release) {
        return Ok(kernel(v));
    }
    eprintln!(
        "xtask: downloading Debian kernel {release} ({version}) for {series} (cached in {})",
        dir.display()
    );
    let debs = vm_dir.join("debs");
    std::fs::create_dir_all(&dir)?;
    let unpack = |deb: &Path| status(Command::new("dpkg").arg("-x").arg(deb).arg(&dir));
    let result = (|| {
        unpack(&apt.download(pkg, &debs)?)?;
        if find_vmlinuz(&dir, &release).is_none() {
            // Newer kernels keep the image itself in linux-binary-RELEASE,
            // which the image package depends on.
            let depends = apt.field(pkg, "Depends")?;
            let binary = depends
                .split(',')
                .map(|d| d.split_whitespace().next().unwrap_or(""))
                .find(|d| d.starts_with("linux-binary-"))
                .context("no vmlinuz, and no linux-binary package among its dependencies")?
                .to_string();
            unpack(&apt.download(&binary, &debs)?)?;
        }
        find_vmlinuz(&dir, &release)
            .with_context(|| format!("unpacked into {}, it has no vmlinuz", dir.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result.map(kernel)
}

/// `boot/vmlinuz-RELEASE`, or `usr/lib/modules/RELEASE/vmlinuz` where the
/// newer packages put it.
fn find_vmlinuz(dir: &Path, release: &str) -> Option<PathBuf> {
    [
        dir.join("boot").join(format!("vmlinuz-{release}")),
        dir.join("usr/lib/modules").join(release).join("vmlinuz"),
        dir.join("lib/modules").join(release).join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn natural_order_of_kernel_releases() {
        let n = names(&[
            "linux-image-6.12.99+deb12-cloud-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64",
            "linux-image-6.12.115+deb12-cloud-amd64",
        ]);
        assert_eq!(
            candidates("6.12", Flavour::Cloud, &n)[0],
            "linux-image-6.12.117+deb12-cloud-amd64"
        );
    }

    #[test]
    fn a_series_is_its_first_two_numbers() {
        let n = names(&[
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-6.12.118+deb12-cloud-amd64",
            "linux-image-5.10.0-32-cloud-amd64",
        ]);
        assert_eq!(
            candidates("6.1", Flavour::Cloud, &n),
            ["linux-image-6.1.0-57-cloud-amd64"]
        );
        assert_eq!(
            candidates("5.10", Flavour::Cloud, &n),
            ["linux-image-5.10.0-32-cloud-amd64"]
        );
        assert!(candidates("6.18", Flavour::Cloud, &n).is_empty());
    }

    #[test]
    fn latest_is_the_newest_of_all_and_prefers_unsigned() {
        let n = names(&[
            "linux-image-7.2.13+deb14-cloud-amd64",
            "linux-image-7.3.4+deb13-cloud-amd64",
            "linux-image-7.3.4+deb13-cloud-amd64-unsigned",
            "linux-image-7.3.4+deb13-cloud-amd64-dbg",
            "linux-image-cloud-amd64",
            "linux-image-6.18.15+deb13-cloud-amd64",
            "linux-image-7.3.4+deb13-amd64",
        ]);
        assert_eq!(
            candidates("latest", Flavour::Cloud, &n)[..4],
            [
                "linux-image-7.3.4+deb13-cloud-amd64-unsigned",
                "linux-image-7.3.4+deb13-cloud-amd64",
                "linux-image-7.2.13+deb14-cloud-amd64",
                "linux-image-6.18.15+deb13-cloud-amd64",
            ]
        );
    }

    #[test]
    fn the_rt_flavour_is_apart() {
        let n = names(&[
            "linux-image-6.12.115+deb12-cloud-amd64",
            "linux-image-6.12.115+deb12-rt-amd64",
            "linux-image-6.12.115+deb12-rt-amd64-unsigned",
            "linux-image-6.12-rt-amd64",
            "linux-image-6.1.0-57-rt-amd64",
        ]);
        assert_eq!(
            candidates("6.12", Flavour::Rt, &n),
            [
                "linux-image-6.12.115+deb12-rt-amd64-unsigned",
                "linux-image-6.12.115+deb12-rt-amd64",
            ]
        );
        assert_eq!(
            candidates("6.12", Flavour::Cloud, &n),
            ["linux-image-6.12.115+deb12-cloud-amd64"]
        );
    }

    #[test]
    fn archives_come_from_the_machines_index_targets() {
        let uris = "http://mirror.example/debian/dists/bookworm/main/binary-amd64/Packages\n\
                    http://mirror.example/debian-security/dists/bookworm-security/main/binary-amd64/Packages\n\
                    https://deb.nodesource.com/node_20.x/dists/nodistro/main/binary-amd64/Packages\n";
        assert_eq!(
            archives_in(uris),
            (
                "http://mirror.example/debian".to_string(),
                "http://mirror.example/debian-security".to_string()
            )
        );
        assert_eq!(
            archives_in(""),
            (
                "http://deb.debian.org/debian".to_string(),
                "http://deb.debian.org/debian-security".to_string()
            )
        );
    }
}

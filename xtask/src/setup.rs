//! What building and testing lotrace needs, installed when missing:
//! the eBPF toolchain's components, bpf-linker, and the Debian packages
//! the tests and the kernel matrix use. Each install says so in a line.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{is_root, status};

/// The bpf-linker release known to load our BTF-carrying objects.
const BPF_LINKER_VERSION: &str = "0.10.4";
/// The toolchain that builds the eBPF object (see lotrace/build.rs).
const EBPF_TOOLCHAIN: &str = "stable";
/// Debian packages: what each is needed for.
const PACKAGES: &[(&str, &str, &str)] = &[
    ("iputils-ping", "ping", "the command lotrace traces"),
    (
        "nftables",
        "nft",
        "the tests' firewall that drops echo requests",
    ),
    ("iproute2", "ip", "the tests' network namespaces"),
    (
        "bpftool",
        "bpftool",
        "the tests' check that no program is left loaded",
    ),
    ("oping", "oping", "the tests' ping that counts from 1"),
    ("fping", "fping", "the tests' ping of several hosts"),
    ("curl", "curl", "the tests' TCP client"),
    (
        "python3",
        "python3",
        "the tests' HTTP server and UDP echo server",
    ),
    ("redis-server", "redis-server", "the tests' TCP server"),
    (
        "redis-tools",
        "redis-benchmark",
        "the tests' TCP clients (redis-cli, redis-benchmark)",
    ),
    ("dnsmasq-base", "dnsmasq", "the tests' DNS server"),
    ("bind9-dnsutils", "dig", "the tests' DNS client"),
    ("iperf3", "iperf3", "the tests' TCP and UDP streams"),
];
/// Debian packages the kernel matrix needs.
pub const VM_PACKAGES: &[(&str, &str, &str)] = &[
    (
        "qemu-system-x86",
        "qemu-system-x86_64",
        "boots the Debian kernels of the matrix",
    ),
    (
        "busybox-static",
        "busybox",
        "the guests' shell and ping, and the tests' second ping",
    ),
];

pub fn setup() -> Result<u8> {
    ensure_rust_components()?;
    ensure_bpf_linker()?;
    ensure_packages()?;
    Ok(0)
}

pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

fn ensure_rust_components() -> Result<()> {
    let out = Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ])
        .output()
        .context("rustup is needed to build lotrace (https://rustup.rs)")?;
    if !out.status.success() {
        println!(
            "xtask: installing the {EBPF_TOOLCHAIN} Rust toolchain (builds the eBPF programs)"
        );
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = String::from_utf8_lossy(&out.stdout).to_string();
    for (component, why) in [
        ("rust-src", "the eBPF target builds core from source"),
        ("rustfmt", "the tests check formatting"),
        ("clippy", "the tests run clippy"),
    ] {
        if !installed.lines().any(|l| l.starts_with(component)) {
            println!("xtask: installing rustup component {component} for {EBPF_TOOLCHAIN} ({why})");
            status(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                EBPF_TOOLCHAIN,
            ]))?;
        }
    }
    Ok(())
}

fn ensure_bpf_linker() -> Result<()> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if current.as_deref() == Some(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        return Ok(());
    }
    println!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} (links the eBPF programs; found {})",
        current.as_deref().unwrap_or("none")
    );
    status(Command::new("cargo").args([
        &format!("+{EBPF_TOOLCHAIN}"),
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]))
}

fn ensure_packages() -> Result<()> {
    install_packages(PACKAGES)
}

pub fn install_packages(packages: &[(&str, &str, &str)]) -> Result<()> {
    let missing: Vec<_> = packages
        .iter()
        .filter(|(pkg, bin, _)| {
            !have(bin)
                && !Command::new("dpkg-query")
                    .args(["-W", "-f=${Status}", pkg])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                    .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        let names: Vec<_> = missing.iter().map(|m| m.0).collect();
        bail!("missing packages {names:?} and no apt-get to install them: install them by hand");
    }
    for (pkg, _, why) in &missing {
        println!("xtask: installing Debian package {pkg} ({why})");
    }
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut all: Vec<&str> = sudo.to_vec();
        all.push("apt-get");
        all.extend_from_slice(args);
        let mut c = Command::new(all[0]);
        c.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    status(apt(&["-qq", "update"]).stdout(std::process::Stdio::null()))?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter().map(|m| m.0));
    status(apt(&args).stdout(std::process::Stdio::null()))
}

//! Builds the eBPF object so that every `cargo build/check/clippy/test` of
//! lotrace embeds programs compiled from the current sources.

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .join("lotrace-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    // The bpf target needs `-Z build-std=core`. The stable toolchain is the
    // one that carries rust-src on these machines, so unstable flags are
    // enabled for this one build rather than requiring a nightly.
    // SAFETY: the build script is single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [Package {
            name: "lotrace-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Custom("stable"),
    )
}

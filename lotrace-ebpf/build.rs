use which::which;

/// Rebuild when bpf-linker changes: it is the linker of this crate's only target.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}

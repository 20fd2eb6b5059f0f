//! Everything that touches the running kernel: what it allows, its BTF and
//! tracefs, and loading and attaching the eBPF programs.

pub mod btf;
pub mod loader;
pub mod tracefs;

//! Types shared by lotrace's eBPF programs and its command-line side.
//!
//! Kernel and user space agree on three things here: the one fixed-size
//! [`Event`] written into the ring buffer, the [`Config`] handed to the
//! programs at load time, and the stage/probe ids. The user-facing half of
//! the catalog (names, explanations, candidate probes) lives in
//! [`catalog`] so that every fact about a stage has one home.
#![no_std]
// The eBPF target's core has atomic loads and stores only; its atomic add
// is reached through the intrinsic (see `bits::set_bits`).
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]

pub mod agg;
pub mod assemble;
pub mod bits;
pub mod catalog;
pub mod config;
pub mod event;
pub mod follow;
pub mod journey;
pub mod order;
pub mod probes;

pub use catalog::{ProbeId, Stage, TpField};
pub use config::Config;
pub use event::{CpuState, Event, PktKey};

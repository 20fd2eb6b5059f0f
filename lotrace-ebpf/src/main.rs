//! lotrace's eBPF programs: one small program per line of the probe table
//! (`lotrace_common::probe_table!`), all writing one [`Event`] shape into
//! one ring buffer.
//!
//! Only the traced command's echo packets produce events. The filter works
//! in two steps: the command's processes are listed in `TARGETS` (the
//! loader adds the child; forks are followed), and an echo request that one
//! of them transmits adds its ICMP id to `TRACKED`. Every skb probe then
//! parses the packet and drops anything that is not an echo with a tracked
//! id. Stages that see no skb (route lookup, softirq, socket, wake-up) are
//! attributed through per-task or per-CPU context set by the stages that do.
//!
//! - `programs`: the programs, generated from the probe table;
//! - `stages/`: their handlers, one module per family of stages;
//! - `filter`: which processes, echo ids and namespaces are traced;
//! - `flow` and `listen`: the traced command's TCP and UDP flows, and its
//!   servers, whose clients' flows are the trace's too;
//! - `packet`: what an skb is (its headers, or its address when they are
//!   out of reach);
//! - `kernel`: reads of kernel memory at the offsets the loader found;
//! - `seen`, `emit`, `assemble` and `aggregate`: what a stage saw of a
//!   packet, and what becomes of it: streamed on its own, assembled with
//!   the rest of its echo's events into one record, or aggregated
//!   (`--summary-only`);
//! - `maps`: the state shared by all of them.
//!
//! [`Event`]: lotrace_common::Event
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod aggregate;
#[cfg(target_arch = "bpf")]
mod assemble;
#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod filter;
#[cfg(target_arch = "bpf")]
mod flow;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod listen;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod seen;
#[cfg(target_arch = "bpf")]
mod stages;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

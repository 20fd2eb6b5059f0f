//! lotrace's eBPF programs: one small handler per tracepoint, all writing
//! one [`Event`] shape into one ring buffer.
//!
//! Only the traced command's echo packets produce events. The filter works
//! in two steps: the command's processes are listed in `TARGETS` (the
//! loader adds the child; forks are followed), and an echo request that one
//! of them transmits adds its ICMP id to `TRACKED`. Every skb probe then
//! parses the packet and drops anything that is not an echo with a tracked
//! id. Stages that see no skb (route lookup, softirq, socket, wake-up) are
//! attributed through per-task or per-CPU context set by the stages that do.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

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

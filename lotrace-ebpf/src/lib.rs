//! lotrace's eBPF programs live in the `lotrace` binary of this crate;
//! this library is empty so that the crate can be a build dependency.
#![no_std]

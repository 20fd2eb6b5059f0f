//! The subcommands: each gathers what it needs (from the kernel, a record
//! file or the traced command), runs the model over it and prints through
//! the output layer.

pub mod child;
pub mod compare;
pub mod probes;
pub mod replay;
pub mod trace;

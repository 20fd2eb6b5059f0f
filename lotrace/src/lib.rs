//! lotrace: where a ping's time goes inside the Linux kernel, stage by
//! stage, measured with eBPF.
//!
//! Layers whose imports point one way: [`cmd`] (the subcommands) uses
//! [`output`] and [`kernel`]; [`output`] renders the [`model`]; [`kernel`]
//! feeds the [`model`]; the model depends on `lotrace-common` alone.

pub mod cmd;
pub mod kernel;
pub mod model;
pub mod output;

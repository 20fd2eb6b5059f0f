//! lotrace: where a ping's time goes inside the Linux kernel, stage by
//! stage, measured with eBPF.
//!
//! Layers whose imports point one way: [`cli`] (the command line, defined
//! once) builds the options of [`cmd`] (the subcommands), which uses
//! [`output`] and [`kernel`]; [`output`] renders the [`model`]; [`kernel`]
//! feeds the [`model`]; the model depends on `lotrace-common` alone.

pub mod cli;
pub mod cmd;
pub mod kernel;
pub mod model;
pub mod output;

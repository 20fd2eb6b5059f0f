//! The handlers the programs call, one module per family of stages, in the
//! order a packet meets them. Each handler takes the program's context,
//! its `ProbeId`, and the tracepoint fields or function arguments its line
//! of the probe table lists.

pub(crate) mod free;
pub(crate) mod receive;
pub(crate) mod recv;
pub(crate) mod route;
pub(crate) mod send;
pub(crate) mod socket;
pub(crate) mod softirq;
pub(crate) mod transmit;

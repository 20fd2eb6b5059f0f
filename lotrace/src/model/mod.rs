//! The pure model of a trace: records in, journeys, statistics and the
//! probe plan out. No kernel, no terminal: everything here is tested on
//! data alone, and a replay builds exactly what the live run did.

pub mod assembled;
pub mod builder;
pub mod detail;
pub mod exchange;
pub mod flow;
pub mod journey;
pub mod kagg;
pub mod meta;
pub mod pingout;
pub mod plan;
pub mod record;
pub mod session;
pub mod stats;
pub mod unavailable;

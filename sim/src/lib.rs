//! Damselfly's scheduler simulator and the yardsticks the benchmarks share.
//!
//! - [`sim`]: a discrete-event simulator that drives the real [`damselfly_scheduler::Scheduler`]
//!   with thousands of simulated hosts (`sim` binary). This crate links the scheduler and the
//!   types crate only: no sockets, no disk, no async runtime.
//! - [`bound`]: the lower bound on the time to distribute a file to N hosts, the yardstick every
//!   completion time is divided by.
//! - [`stats`], [`units`], [`report`]: percentiles, rate and size parsing, markdown tables and
//!   SVG charts for `benches/results/`.

pub mod bound;
pub mod report;
pub mod sim;
pub mod stats;
pub mod units;

//! Damselfly's benchmarks, as a library shared by the benchmark binaries.
//!
//! - [`harness`]: starting the workspace binaries, peak RSS, metrics, a loopback file server.
//! - [`netns`]: hosts as network namespaces with `tbf` bandwidth caps.
//! - [`limited`]: rate-limited hosts in the swarm benchmark, sampled and compared with their limits.
//! - [`bound`], [`stats`], [`units`], [`report`]: from `damselfly-sim` (the simulator's crate),
//!   which the benchmark binaries share: the lower bound, percentiles, rate and size parsing,
//!   markdown tables and SVG charts for `benches/results/`.
//!
//! The simulator itself is the `sim` binary of `damselfly-sim`. See `benches/README.md` for the
//! commands.

pub mod harness;
pub mod limited;
pub mod netns;

pub use damselfly_sim::{bound, report, stats, units};

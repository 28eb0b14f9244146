//! Damselfly's benchmarks, as a library shared by the benchmark binaries.
//!
//! - [`sim`]: a discrete-event simulator that drives the supernode's real
//!   [`supernode::scheduler::Scheduler`] with thousands of simulated hosts (`sim` binary).
//! - [`bound`]: the lower bound on the time to distribute a file to N hosts, the yardstick every
//!   completion time is divided by.
//! - [`harness`]: starting the workspace binaries, peak RSS, metrics, a loopback file server.
//! - [`netns`]: hosts as network namespaces with `tbf` bandwidth caps.
//! - [`limited`]: rate-limited hosts in the swarm benchmark, sampled and compared with their limits.
//! - [`stats`], [`units`], [`report`]: percentiles, rate and size parsing, markdown tables and
//!   SVG charts for `benches/results/`.
//!
//! See `benches/README.md` for the commands.

pub mod bound;
pub mod harness;
pub mod limited;
pub mod netns;
pub mod report;
pub mod sim;
pub mod stats;
pub mod units;

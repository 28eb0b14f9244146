//! Damselfly's vocabulary, shared by every crate and free of I/O: task and peer ids and sha256
//! digests ([`id`]), how a file is cut into pieces and the piece record ([`piece`]), byte sizes
//! for flags and config files ([`size`]), the preheat API's request and job view, shared by the
//! supernode and `dfget preheat` ([`preheat`]), the repository-name grammar of the distribution spec
//! ([`repository`]), the swarm groups downloads name ([`group`]).

pub mod group;
pub mod id;
pub mod piece;
pub mod preheat;
pub mod repository;
pub mod size;

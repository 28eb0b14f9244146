//! Damselfly's vocabulary, shared by every crate and free of I/O: task and peer ids and sha256
//! digests ([`id`]), how a file is cut into pieces and the piece record ([`piece`]), byte sizes
//! for flags and config files ([`size`]).

pub mod id;
pub mod piece;
pub mod size;

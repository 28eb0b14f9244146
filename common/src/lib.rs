//! Shared building blocks of Damselfly: identifiers and digests, piece arithmetic, byte sizes,
//! TLS identities and the QUIC transport, and the piece upload protocol that both the supernode
//! and every dfdaemon serve.

pub mod cache_metrics;
pub mod headers;
pub mod id;
pub mod meta;
pub mod piece;
pub mod rate;
pub mod size;
pub mod telemetry;
pub mod ticket;
pub mod tls;
pub mod token;
pub mod transport;
pub mod upload;

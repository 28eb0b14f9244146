//! Damselfly's networking, shared by the supernode, every dfdaemon and dfget: TLS identities and
//! the cluster CA ([`tls`]), join and API tokens ([`token`]), piece tickets ([`ticket`]), the
//! QUIC transport and frame I/O ([`transport`]), the piece upload server both node kinds run
//! ([`upload`]), rate limits ([`rate`]), the forwarded-header allow-list ([`headers`]), and
//! what every binary's `main` shares: the layered configuration ([`config`]), graceful
//! shutdown ([`shutdown`]) and logging set-up ([`telemetry`]).

pub mod config;
pub mod headers;
pub mod rate;
pub mod shutdown;
pub mod telemetry;
pub mod ticket;
pub mod tls;
pub mod token;
pub mod transport;
pub mod upload;

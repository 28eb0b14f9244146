//! Loopback addresses and free ports, so that many processes can share one machine.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use anyhow::Context;

/// Lowest and highest last octet handed out (127.0.0.1 is left to servers in the test process).
const FIRST: u32 = 2;
const LAST: u32 = 254;

/// A `127.0.0.N` address not handed out before by this process (until the 253 addresses wrap).
///
/// Each process starts at a random N in `2..200`, so concurrently running test processes
/// (nextest runs each test in its own) rarely pick the same address, and a daemon bound to its
/// own address looks like its own host to the others.
pub fn loopback_ip() -> Ipv4Addr {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(rand::random_range(FIRST..200)));
    let n = next.fetch_add(1, Ordering::Relaxed);
    let octet = FIRST + (n - FIRST) % (LAST - FIRST + 1);
    Ipv4Addr::new(127, 0, 0, octet as u8)
}

/// A TCP port on `ip` that was free a moment ago: bound to port 0 and released.
///
/// Another process may take it before the caller binds it; [`crate::Supernode`] and
/// [`crate::Dfdaemon`] retry with fresh ports when that happens.
pub fn free_tcp_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((ip, 0))).with_context(|| format!("bind a TCP port on {ip}"))?;
    Ok(listener.local_addr()?.port())
}

/// A UDP port on `ip` that was free a moment ago: bound to port 0 and released.
pub fn free_udp_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    let socket = UdpSocket::bind(SocketAddr::from((ip, 0))).with_context(|| format!("bind a UDP port on {ip}"))?;
    Ok(socket.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_ips_are_distinct_and_in_range() {
        let ips: Vec<_> = (0..100).map(|_| loopback_ip()).collect();
        let mut unique = ips.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ips.len());
        for ip in ips {
            assert!(ip.is_loopback());
            assert!((2..=254).contains(&ip.octets()[3]), "{ip}");
        }
    }

    #[test]
    fn loopback_ips_wrap_without_leaving_range() {
        for _ in 0..600 {
            let ip = loopback_ip();
            assert!((2..=254).contains(&ip.octets()[3]), "{ip}");
        }
    }

    #[test]
    fn free_ports_can_be_bound() -> anyhow::Result<()> {
        let ip = loopback_ip();
        let tcp = free_tcp_port(ip)?;
        let udp = free_udp_port(ip)?;
        assert_ne!(tcp, 0);
        assert_ne!(udp, 0);
        TcpListener::bind((ip, tcp))?;
        UdpSocket::bind((ip, udp))?;
        Ok(())
    }
}

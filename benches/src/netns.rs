//! Hosts as network namespaces with bandwidth caps, for the swarm benchmark.
//!
//! Topology: one "switch" namespace holding a bridge, and one namespace per host, each joined to
//! the bridge by a veth pair created *inside* the switch namespace (nothing is added to the
//! root namespace, so concurrent runs cannot collide). Addresses are `10.250.0.x/24` inside the
//! namespaces only. A host's upload cap is a `tbf` qdisc on its own `eth0`; its download cap is
//! a `tbf` on the switch-side end of its veth. `netem` is not used (not in this kernel).
//!
//! Every namespace name starts with the topology's prefix; [`Topology`] deletes them (after
//! SIGKILLing every process inside) when dropped, and [`cleanup_prefix`] does the same for
//! leftovers of a run that was killed.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// A host of the topology.
#[derive(Clone, Debug)]
pub struct Host {
    /// Namespace name.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Upload cap, bytes per second.
    pub up: f64,
    /// Download cap, bytes per second.
    pub down: f64,
}

/// The namespaces of one benchmark run. Deleted on drop.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    switch: String,
    hosts: Vec<Host>,
}

/// Runs `ip args...` (or `tc`), failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (install iproute2)"))?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `tbf` burst for `rate` bytes per second: at least 64 KiB, and enough for 4 ms (one jiffy at
/// 250 Hz) so that the cap is reached at high rates.
fn burst(rate: f64) -> String {
    let bytes = (rate * 0.004).max(65536.0) as u64;
    format!("{bytes}b")
}

fn rate_arg(rate: f64) -> String {
    format!("{}bit", (rate * 8.0) as u64)
}

impl Topology {
    /// Creates the switch and one namespace per `(name, up, down)`; addresses are assigned in
    /// order from `10.250.0.1`. Fails (and cleans up) if anything cannot be created.
    pub fn create(prefix: &str, hosts: &[(&str, f64, f64)]) -> anyhow::Result<Self> {
        if hosts.len() > 250 {
            bail!("at most 250 hosts per topology");
        }
        let switch = format!("{prefix}sw");
        let mut topo = Topology { prefix: prefix.to_string(), switch: switch.clone(), hosts: Vec::new() };
        run("ip", &["netns", "add", &switch])?;
        run("ip", &["-n", &switch, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &switch, "link", "set", "br0", "up"])?;
        for (i, &(name, up, down)) in hosts.iter().enumerate() {
            let ns = format!("{prefix}{name}");
            let ip = Ipv4Addr::new(10, 250, 0, i as u8 + 1);
            run("ip", &["netns", "add", &ns])?;
            topo.hosts.push(Host { ns: ns.clone(), ip, up, down });
            let port = format!("p{i}");
            run("ip", &["-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            run("ip", &["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            run("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            // Upload: leaving the host. Download: leaving the switch towards the host.
            let (up_rate, up_burst) = (rate_arg(up), burst(up));
            let (down_rate, down_burst) = (rate_arg(down), burst(down));
            let tbf = |dev_ns: &str, dev: &str, rate: &str, b: &str| {
                run(
                    "ip",
                    &[
                        "netns", "exec", dev_ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                        "burst", b, "latency", "50ms",
                    ],
                )
            };
            tbf(&ns, "eth0", &up_rate, &up_burst)?;
            tbf(&switch, &port, &down_rate, &down_burst)?;
        }
        Ok(topo)
    }

    /// The hosts, in creation order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The name prefix of every namespace.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        cleanup_prefix(&self.prefix);
        let _ = &self.switch;
    }
}

/// Bytes transmitted so far by interface `dev` of namespace `ns` (its `stats64.tx.bytes`, whole
/// frames: payload plus TCP/UDP, IP and Ethernet headers).
pub fn tx_bytes(ns: &str, dev: &str) -> Option<u64> {
    let out = run("ip", &["-n", ns, "-s", "-j", "link", "show", "dev", dev]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.get(0)?.get("stats64")?.get("tx")?.get("bytes")?.as_u64()
}

/// The ids of the processes running in namespace `ns`.
pub fn pids(ns: &str) -> Vec<u32> {
    run("ip", &["netns", "pids", ns]).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// Kills every process in, and deletes, every namespace whose name starts with `prefix`.
/// Returns how many namespaces it deleted.
pub fn cleanup_prefix(prefix: &str) -> usize {
    if prefix.len() < 3 {
        return 0; // never a broad sweep
    }
    let list = run("ip", &["netns", "list"]).unwrap_or_default();
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect();
    for ns in &names {
        if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).stderr(Stdio::null()).status();
            }
        }
    }
    for ns in &names {
        let _ = run("ip", &["netns", "del", ns]);
    }
    names.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_arguments() {
        assert_eq!(rate_arg(12_500_000.0), "100000000bit");
        assert_eq!(burst(12_500_000.0), "65536b");
        assert_eq!(burst(125_000_000.0), "500000b");
    }

    #[test]
    fn short_prefixes_are_refused() {
        assert_eq!(cleanup_prefix("d"), 0);
    }
}

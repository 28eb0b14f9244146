//! The daemon's supernodes: one supervised link per `--supernode`, and which of them owns a task.
//!
//! **Placement.** Every task has an order over the configured supernodes, by rendezvous (highest
//! random weight) hashing: `sha256(task id, supernode name as configured)`, highest first. Every
//! host configured with the same names computes the same order, so in steady state each blob is
//! scheduled, and fetched from the origin, by one supernode. A task's *owner* is the first
//! supernode in its order that is not down; when it goes down the task moves to the next, and
//! comes back when it returns. Adding or removing a supernode moves only the tasks it gains or
//! loses (about 1/n of them).
//!
//! **Links.** A [`Link`] per supernode is kept by [`supervise`]: it enrolls the daemon if it has
//! no certificate yet (lazy enrollment: a daemon starts and serves through the origin fallback
//! while no supernode answers), dials, and holds the connection until it breaks; then it redials
//! at once, and after a failed attempt every [`RETRY_MIN`]–[`RETRY_MAX`]. Every new connection
//! re-announces the finished tasks this supernode now owns ([`crate::announce`]), so a restarted
//! or failed-over supernode knows at once whom to send children to.
//!
//! **Bounded delay.** Downloads never dial: they take the connection the link holds. A link that
//! is down is skipped at once (the next supernode in the task's order, or the origin fallback);
//! only a link still making its first attempt is waited for, at most [`FIRST_ATTEMPT_WAIT`]. A
//! supernode killed without closing its connections is noticed by the connection's idle timeout,
//! [`SUPERNODE_IDLE_TIMEOUT`] (keep-alives every [`SUPERNODE_KEEP_ALIVE`]), shorter than the one
//! between peers because nothing else tells a daemon that its supernode died.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use damselfly_net::tls;
use damselfly_net::transport::TransportError;
use damselfly_types::id::TaskId;
use quinn::Connection;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::Daemon;

/// How long a handshake with a supernode may take before the attempt counts as failed.
pub const SUPERNODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle timeout of a connection to a supernode: a supernode that died without closing it is
/// noticed after this long.
pub const SUPERNODE_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Keep-alive interval on a connection to a supernode.
pub const SUPERNODE_KEEP_ALIVE: Duration = Duration::from_millis(400);
/// Longest a download waits for a link that is still making its first attempt.
pub const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(1);
/// How often a download that lost its supernode looks for the next owner.
const OWNER_POLL: Duration = Duration::from_millis(100);
/// First wait before dialling a supernode again after a failed attempt; doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait between two attempts to reach a supernode.
pub const RETRY_MAX: Duration = Duration::from_secs(4);

/// What a link knows about its supernode.
#[derive(Clone, Debug)]
pub enum LinkState {
    /// No attempt finished yet.
    Connecting,
    /// Connected; `generation` counts the connections this link made.
    Up {
        /// The connection.
        conn: Connection,
        /// Which connection of this link it is (1 for the first).
        generation: u64,
    },
    /// The last attempt failed or the connection broke; the link keeps trying.
    Down(String),
}

/// One configured supernode.
#[derive(Debug)]
pub struct Link {
    /// `HOST:PORT` as configured: the name rendezvous hashing uses, the same on every host.
    pub name: String,
    /// Resolved address, once resolved.
    addr: Mutex<Option<SocketAddr>>,
    state: watch::Sender<LinkState>,
    /// Wakes the supervisor out of its wait between attempts ([`Link::retry_now`]).
    kick: tokio::sync::Notify,
}

impl Link {
    fn new(name: String) -> Self {
        Self {
            name,
            addr: Mutex::new(None),
            state: watch::Sender::new(LinkState::Connecting),
            kick: tokio::sync::Notify::new(),
        }
    }

    /// Ends the wait before the next attempt of a link that is down, and makes downloads wait
    /// for that attempt (as for a first one): after a re-enrollment the supernode is expected to
    /// answer.
    pub fn retry_now(&self) {
        self.state.send_if_modified(|s| match s {
            LinkState::Down(_) => {
                *s = LinkState::Connecting;
                true
            }
            _ => false,
        });
        self.kick.notify_one();
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// The address, resolving the name when it was not resolved yet.
    pub async fn addr(&self) -> Result<SocketAddr, String> {
        if let Some(addr) = *self.addr.lock().unwrap_or_else(PoisonError::into_inner) {
            return Ok(addr);
        }
        let resolved = tokio::time::timeout(SUPERNODE_CONNECT_TIMEOUT, tokio::net::lookup_host(self.name.as_str()))
            .await
            .map_err(|_| format!("resolving supernode {} timed out", self.name))?
            .map_err(|e| format!("cannot resolve supernode {}: {e}", self.name))?
            .next()
            .ok_or_else(|| format!("supernode {} resolves to no address", self.name))?;
        *self.addr.lock().unwrap_or_else(PoisonError::into_inner) = Some(resolved);
        Ok(resolved)
    }

    /// Forgets the resolved address: the next attempt resolves the name again (a StatefulSet
    /// pod that comes back has a new IP under the same name).
    fn forget_addr(&self) {
        *self.addr.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The connection if the link is up.
    pub fn connection(&self) -> Option<Connection> {
        match &*self.state.borrow() {
            LinkState::Up { conn, .. } if conn.close_reason().is_none() => Some(conn.clone()),
            _ => None,
        }
    }

    fn set(&self, state: LinkState) {
        self.state.send_replace(state);
    }

    /// Marks the link down now, e.g. when a download saw its connection break before the
    /// supervisor did.
    pub fn broke(&self, conn: &Connection, why: &str) {
        self.state.send_if_modified(|s| match s {
            LinkState::Up { conn: c, .. } if c.stable_id() == conn.stable_id() => {
                *s = LinkState::Down(why.to_owned());
                true
            }
            _ => false,
        });
    }

    /// The connection, waiting up to `wait` while the first attempt is still running.
    async fn usable(&self, wait: Duration) -> Result<Connection, String> {
        let mut rx = self.state.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                LinkState::Up { conn, .. } if conn.close_reason().is_none() => return Ok(conn),
                LinkState::Up { .. } => return Err(format!("supernode {}: connection lost", self.name)),
                LinkState::Down(why) => return Err(format!("supernode {} is down: {why}", self.name)),
                LinkState::Connecting => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(format!("supernode {} did not answer within {wait:?}", self.name)),
            }
        }
    }
}

/// Every configured supernode, in configuration order.
#[derive(Debug)]
pub struct Supernodes {
    links: Vec<Arc<Link>>,
}

impl Supernodes {
    /// Links for `names` (`HOST:PORT` each), none tried yet.
    pub fn new(names: &[String]) -> Self {
        Self { links: names.iter().map(|n| Arc::new(Link::new(n.clone()))).collect() }
    }

    /// Marks every link down (none answered at start): downloads do not wait for their first
    /// attempt.
    pub fn all_down(&self, why: &str) {
        self.links.iter().for_each(|l| l.set(LinkState::Down(why.to_owned())));
    }

    /// All links, in configuration order.
    pub fn links(&self) -> &[Arc<Link>] {
        &self.links
    }

    /// Indexes of the links in `task`'s rendezvous order (its preferred supernode first).
    pub fn order(&self, task: &TaskId) -> Vec<usize> {
        rendezvous_order(task.as_str(), self.links.iter().map(|l| l.name.as_str()))
    }

    /// The link that owns `task` now: the first in its order that is not down (`None`: all down).
    pub fn owner(&self, task: &TaskId) -> Option<usize> {
        self.order(task).into_iter().find(|&i| !matches!(self.links[i].state(), LinkState::Down(_)))
    }

    /// The connection to `task`'s owner, skipping links in `skip` (already tried by this
    /// download) and links that are down; waits at most [`FIRST_ATTEMPT_WAIT`] in all for links
    /// still on their first attempt. The error says why each supernode could not be used.
    pub async fn connection_for(&self, task: &TaskId, skip: &[usize]) -> Result<(usize, Connection), String> {
        let deadline = tokio::time::Instant::now() + FIRST_ATTEMPT_WAIT;
        let mut why = Vec::new();
        for i in self.order(task).into_iter().filter(|i| !skip.contains(i)) {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.links[i].usable(wait).await {
                Ok(conn) => return Ok((i, conn)),
                Err(e) => why.push(e),
            }
        }
        if why.is_empty() {
            why.push("every supernode was tried".into());
        }
        Err(why.join("; "))
    }

    /// The first link in `task`'s order that is up, waiting up to `wait` for one (a restarted
    /// supernode, a link that reconnects); `None` when none came up in time.
    pub async fn wait_for_owner(&self, task: &TaskId, wait: Duration) -> Option<(usize, Connection)> {
        let deadline = tokio::time::Instant::now() + wait;
        let order = self.order(task);
        loop {
            if let Some(found) = order.iter().find_map(|&i| self.links[i].connection().map(|c| (i, c))) {
                return Some(found);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(OWNER_POLL).await;
        }
    }

    /// Any connection that is up, preferring configuration order (renewal, enrollment).
    pub fn any_up(&self) -> Option<(usize, Connection)> {
        self.links.iter().enumerate().find_map(|(i, l)| l.connection().map(|c| (i, c)))
    }
}

/// Indexes of `names` sorted by rendezvous weight for `key`, highest first (ties: configuration
/// order). A pure function of the key and the names, so every host agrees.
pub fn rendezvous_order<'a>(key: &str, names: impl Iterator<Item = &'a str>) -> Vec<usize> {
    let mut weighted: Vec<([u8; 32], usize)> = names
        .enumerate()
        .map(|(i, name)| {
            let mut h = Sha256::new();
            h.update(key.as_bytes());
            h.update([0u8]);
            h.update(name.as_bytes());
            (h.finalize().into(), i)
        })
        .collect();
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    weighted.into_iter().map(|(_, i)| i).collect()
}

/// The client transport for supernode connections: a shorter idle timeout and keep-alive than
/// between peers (see the module documentation).
pub fn supernode_client(mut client: quinn::ClientConfig) -> quinn::ClientConfig {
    let mut t = damselfly_net::transport::transport_params();
    t.keep_alive_interval(Some(SUPERNODE_KEEP_ALIVE));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(SUPERNODE_IDLE_TIMEOUT).ok());
    client.transport_config(Arc::new(t));
    client
}

/// Keeps link `index` connected while the daemon runs (see the module documentation).
pub async fn supervise(daemon: Arc<Daemon>, index: usize) {
    let link = daemon.supernodes.links[index].clone();
    let mut retry = RETRY_MIN;
    let mut generation = 0u64;
    loop {
        match connect(&daemon, &link).await {
            Ok(conn) => {
                generation += 1;
                retry = RETRY_MIN;
                info!(supernode = %link.name, generation, "connected to the supernode");
                link.set(LinkState::Up { conn: conn.clone(), generation });
                crate::announce::connected(&daemon, index);
                let reason = conn.closed().await;
                warn!(supernode = %link.name, %reason, "lost the supernode connection");
                link.set(LinkState::Down(reason.to_string()));
                link.forget_addr();
                crate::announce::disconnected(&daemon, index);
                // Redial at once: a restarted supernode answers the first attempt.
            }
            Err(e) => {
                if !matches!(link.state(), LinkState::Down(_)) {
                    warn!(supernode = %link.name, error = %e, retry_in = ?retry, "supernode unreachable");
                }
                let was_up_or_new = !matches!(link.state(), LinkState::Down(_));
                link.set(LinkState::Down(e));
                link.forget_addr();
                if was_up_or_new {
                    // Tasks this supernode would own go to the next in their order.
                    crate::announce::disconnected(&daemon, index);
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = link.kick.notified() => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Enrolls first if the daemon has no certificate yet, then dials.
async fn connect(daemon: &Arc<Daemon>, link: &Link) -> Result<Connection, String> {
    let addr = link.addr().await?;
    if !daemon.identity.enrolled() {
        crate::identity::enroll_late(daemon, addr).await.map_err(|e| format!("{e:#}"))?;
    }
    dial(daemon, addr).await.map_err(|e| e.to_string())
}

/// One handshake with the supernode at `addr`, within [`SUPERNODE_CONNECT_TIMEOUT`]. A handshake
/// refused for a certificate reason wakes the certificate upkeep, which enrolls again when the
/// supernode no longer accepts this daemon's certificate.
pub async fn dial(daemon: &Daemon, addr: SocketAddr) -> Result<Connection, TransportError> {
    let endpoint = daemon.pool.endpoint();
    let connecting = endpoint
        .connect_with(daemon.supernode_client.clone(), addr, tls::SUPERNODE_SERVER_NAME)
        .map_err(|source| TransportError::Connect { addr, source })?;
    match tokio::time::timeout(SUPERNODE_CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => {
            let e = TransportError::Connection { addr, source };
            if crate::identity::is_tls_refusal(&e) {
                daemon.identity.handshake_refused();
            }
            Err(e)
        }
        Err(_) => Err(TransportError::Connection { addr, source: quinn::ConnectionError::TimedOut }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_order_is_stable_spread_and_moves_only_the_lost_tasks() {
        let names = ["sn-a:8002", "sn-b:8002", "sn-c:8002"];
        let mut firsts = [0usize; 3];
        for n in 0..3000 {
            let key = format!("sha256:{n:064x}");
            let order = rendezvous_order(&key, names.iter().copied());
            assert_eq!(order, rendezvous_order(&key, names.iter().copied()), "same on every call");
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2], "a permutation");
            firsts[order[0]] += 1;
            // Without sn-b, a task keeps its relative order: tasks owned by a or c stay put.
            let without_b = rendezvous_order(&key, ["sn-a:8002", "sn-c:8002"].into_iter());
            let expected: Vec<&str> = order.iter().map(|&i| names[i]).filter(|n| *n != "sn-b:8002").collect();
            let got: Vec<&str> = without_b.iter().map(|&i| ["sn-a:8002", "sn-c:8002"][i]).collect();
            assert_eq!(got, expected);
        }
        for count in firsts {
            assert!((850..1150).contains(&count), "{firsts:?}");
        }
    }
}

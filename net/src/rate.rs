//! Bandwidth limits: a byte-rate token bucket shared by many transfers, fair between tasks.
//!
//! A [`RateLimiter`] holds one limit (bytes per second) for one direction of one node (a
//! daemon's downloads, its uploads, its origin fallback; a supernode's origin fetches). Each
//! transfer takes a [`Flow`] keyed by its task and asks it for the bytes it is about to send
//! ([`Flow::take`] before writing) or has just received (after reading): the call returns when
//! the bytes fit under the limit.
//!
//! **Fair between tasks.** Waiting requests queue per key (task) and are granted round robin,
//! one request per key in turn, so a task with twenty transfers waiting gets the same share as
//! a task with one. Requests are at most [`RATE_CHUNK`] bytes (callers cut larger writes and
//! reads to [`Flow::chunk`]), so the shares stay within a chunk of each other.
//!
//! **Exact over time.** The bucket may go into debt: a request is granted as soon as the bucket
//! is not negative, and the next one waits until the debt is paid back. The long-run rate is
//! therefore the limit exactly, whatever the request sizes; the bucket holds at most
//! [`RateLimiter::burst`] (200 ms of the limit, at least one chunk) of unused allowance, which
//! absorbs timer lateness without letting a transfer burst after an idle spell.
//!
//! **Why not `governor`.** governor's GCRA limits *cells*: byte shaping needs `until_n_ready`
//! with `n` no larger than the burst, waiters retry on their own timers with jitter and nothing
//! orders them, so there is no fairness between tasks (a task with more transfers takes more,
//! and a large request can lose to a stream of small ones), no way to count the time spent
//! waiting, and no way to hand back a grant whose transfer was cancelled. A single pump task
//! per limiter that grants queued requests in turn gives all three in about a hundred lines.
//!
//! Time spent waiting is counted ([`RateLimiter::throttled`], and per flow [`Flow::waited`]),
//! so a caller can tell a slow parent from its own throttling ([`timeout_unthrottled`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// Largest request a flow makes of its limiter: writes and reads are cut to this size under a
/// limit, so tasks take turns in steps of at most this many bytes.
pub const RATE_CHUNK: usize = 64 << 10;

/// The smallest limit accepted: one [`RATE_CHUNK`] per second.
pub const MIN_RATE: u64 = RATE_CHUNK as u64;

/// A bandwidth in bytes per second, written as a size with an optional `/s`: `50MiB`,
/// `50MiB/s`, `100MB/s`, `1048576`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRate(pub u64);

impl std::str::FromStr for ByteRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let t = t.strip_suffix("/s").or_else(|| t.strip_suffix("/S")).unwrap_or(t);
        let size = damselfly_types::size::parse_size(t)
            .map_err(|_| format!("invalid rate {s:?}; use bytes per second with a unit such as 50MiB or 100MB/s"))?;
        Ok(Self(size.as_u64()))
    }
}

impl<'de> Deserialize<'de> for ByteRate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Self(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl std::fmt::Display for ByteRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}/s", self.0 / size);
            }
        }
        write!(f, "{}/s", bytesize::ByteSize(self.0).display().iec())
    }
}

/// Checks an optional limit from a flag or config file named `what`.
pub fn validate_rate(what: &str, rate: Option<ByteRate>) -> Result<(), String> {
    match rate {
        Some(ByteRate(r)) if r < MIN_RATE => {
            Err(format!("{what} must be at least {} (omit it for no limit)", ByteRate(MIN_RATE)))
        }
        _ => Ok(()),
    }
}

/// Parses a rate for clap's `value_parser`.
pub fn parse_rate(s: &str) -> Result<ByteRate, String> {
    s.parse()
}

/// A bandwidth limit shared by every transfer of one direction; cheap to clone. The default is
/// unlimited: its flows never wait and cost nothing.
#[derive(Clone, Default)]
pub struct RateLimiter {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("limit", &self.limit()).finish()
    }
}

struct Inner {
    rate: u64,
    burst: u64,
    state: Mutex<State>,
    /// Wakes the pump (outside `Inner`, so that the pump can wait without keeping it alive).
    wake: Arc<Notify>,
    /// Total time transfers spent waiting, in nanoseconds.
    throttled_ns: AtomicU64,
    counters: Option<DirectionMetrics>,
}

struct State {
    /// Allowance in bytes; negative while a granted request is being paid back.
    tokens: f64,
    refilled: Instant,
    /// Waiting requests per key, and the keys with waiting requests in turn order.
    queues: HashMap<Arc<str>, VecDeque<Waiter>>,
    turns: VecDeque<Arc<str>>,
    pump_started: bool,
    /// When bytes last went through (granted), for stall detection.
    last_grant: Option<Instant>,
}

struct Waiter {
    bytes: u64,
    since: Instant,
    grant: oneshot::Sender<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the pump see that the limiter is gone and end.
        self.wake.notify_one();
    }
}

impl RateLimiter {
    /// No limit.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// A limit of `rate` bytes per second; `None` (or 0) for none.
    pub fn new(rate: Option<ByteRate>) -> Self {
        Self::build(rate, None)
    }

    fn build(rate: Option<ByteRate>, counters: Option<DirectionMetrics>) -> Self {
        let Some(ByteRate(rate)) = rate.filter(|r| r.0 > 0) else { return Self::default() };
        let burst = (rate / 5).max(RATE_CHUNK as u64);
        let state = State {
            tokens: burst as f64,
            refilled: Instant::now(),
            queues: HashMap::new(),
            turns: VecDeque::new(),
            pump_started: false,
            last_grant: None,
        };
        let inner = Inner {
            rate,
            burst,
            state: Mutex::new(state),
            wake: Arc::new(Notify::new()),
            throttled_ns: AtomicU64::new(0),
            counters,
        };
        Self { inner: Some(Arc::new(inner)) }
    }

    /// The limit in bytes per second, `None` when unlimited.
    pub fn limit(&self) -> Option<u64> {
        self.inner.as_ref().map(|i| i.rate)
    }

    /// Unused allowance the bucket can hold, in bytes (0 when unlimited).
    pub fn burst(&self) -> u64 {
        self.inner.as_ref().map_or(0, |i| i.burst)
    }

    /// Total time transfers spent waiting for this limit (summed over transfers, so it can
    /// exceed the wall-clock time).
    pub fn throttled(&self) -> Duration {
        self.inner.as_ref().map_or(Duration::ZERO, |i| Duration::from_nanos(i.throttled_ns.load(Ordering::Relaxed)))
    }

    /// When bytes last went through this limit; `None` when unlimited or before any.
    pub fn last_grant(&self) -> Option<Instant> {
        self.inner.as_ref().and_then(|i| i.lock().last_grant)
    }

    /// A transfer of `key` (a task id): its requests take turns with other keys'.
    pub fn flow(&self, key: &str) -> Flow {
        Flow { limiter: self.clone(), key: Arc::from(key), waited: Arc::new(AtomicU64::new(0)) }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refill(&self, s: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate as f64).min(self.burst as f64);
        s.refilled = now;
    }

    /// Takes `bytes` at once if nobody waits and the bucket is not in debt; otherwise queues
    /// the request and returns the receiver of its grant.
    fn request(self: &Arc<Self>, key: &Arc<str>, bytes: u64) -> Option<oneshot::Receiver<()>> {
        let now = Instant::now();
        let mut s = self.lock();
        self.refill(&mut s, now);
        if s.turns.is_empty() && s.tokens >= 0.0 {
            s.tokens -= bytes as f64;
            s.last_grant = Some(now);
            if let Some(c) = &self.counters {
                c.bytes.inc_by(bytes);
            }
            return None;
        }
        let (grant, rx) = oneshot::channel();
        let st = &mut *s;
        let queue = st.queues.entry(key.clone()).or_default();
        if queue.is_empty() {
            st.turns.push_back(key.clone());
        }
        queue.push_back(Waiter { bytes, since: now, grant });
        if !s.pump_started {
            s.pump_started = true;
            tokio::spawn(pump(Arc::downgrade(self), self.wake.clone()));
        }
        drop(s);
        if let Some(c) = &self.counters {
            c.waiting.inc();
        }
        self.wake.notify_one();
        Some(rx)
    }

    /// Grants waiting requests in turn while the bucket is not in debt; says how long to sleep
    /// before the next grant, or `None` when nobody waits.
    fn grant_ready(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut guard = self.lock();
        self.refill(&mut guard, now);
        let s = &mut *guard;
        while s.tokens >= 0.0 {
            let key = s.turns.pop_front()?;
            let Some(queue) = s.queues.get_mut(&key) else { continue };
            let waiter = queue.pop_front();
            if queue.is_empty() {
                s.queues.remove(&key);
            } else {
                s.turns.push_back(key);
            }
            let Some(w) = waiter else { continue };
            if let Some(c) = &self.counters {
                c.waiting.dec();
            }
            let waited = now.saturating_duration_since(w.since);
            // A request whose transfer was cancelled meanwhile costs nothing.
            if w.grant.send(()).is_ok() {
                s.tokens -= w.bytes as f64;
                s.last_grant = Some(now);
                self.throttled_ns.fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
                if let Some(c) = &self.counters {
                    c.throttled_seconds.inc_by(waited.as_secs_f64());
                    c.bytes.inc_by(w.bytes);
                }
            }
        }
        if s.turns.is_empty() {
            return None;
        }
        Some(Duration::from_secs_f64(-s.tokens / self.rate as f64).max(Duration::from_millis(1)))
    }
}

/// Grants queued requests as the bucket refills; ends when the limiter is dropped.
async fn pump(limiter: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let Some(inner) = limiter.upgrade() else { return };
        let next = inner.grant_ready();
        drop(inner);
        match next {
            Some(pause) => tokio::time::sleep(pause).await,
            None => wake.notified().await,
        }
    }
}

/// One transfer's (or one task's) use of a limiter. Clones share the waiting-time count.
#[derive(Clone, Debug)]
pub struct Flow {
    limiter: RateLimiter,
    key: Arc<str>,
    waited: Arc<AtomicU64>,
}

impl Flow {
    /// A flow that never waits.
    pub fn unlimited() -> Self {
        RateLimiter::unlimited().flow("")
    }

    /// True when a limit applies.
    pub fn is_limited(&self) -> bool {
        self.limiter.inner.is_some()
    }

    /// How many bytes to move in one step when `want` remain: at most [`RATE_CHUNK`] under a
    /// limit, everything otherwise.
    pub fn chunk(&self, want: usize) -> usize {
        if self.is_limited() {
            want.min(RATE_CHUNK)
        } else {
            want
        }
    }

    /// Returns once `bytes` fit under the limit, in turn with the other keys' requests. Take
    /// before sending, or right after receiving, at most [`Flow::chunk`] bytes at a time.
    pub async fn take(&self, bytes: u64) {
        let Some(inner) = &self.limiter.inner else { return };
        let Some(granted) = inner.request(&self.key, bytes) else { return };
        let since = Instant::now();
        // This flow keeps the limiter, and so its pump, alive: the sender is dropped unsent only
        // if the runtime shuts down, and then there is nothing left to wait for.
        let _ = granted.await;
        self.waited.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Time this flow (and its clones) spent waiting for the limit.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited.load(Ordering::Relaxed))
    }
}

/// Like [`tokio::time::timeout`], but time `flow` spent waiting for its limit does not count:
/// a transfer slowed by this node's own limit is not the other side's fault.
pub async fn timeout_unthrottled<F: Future>(limit: Duration, flow: &Flow, fut: F) -> Result<F::Output, Elapsed> {
    let start = Instant::now();
    tokio::pin!(fut);
    loop {
        let deadline = start + limit + flow.waited();
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep_until(deadline) => {
                if Instant::now() >= start + limit + flow.waited() {
                    return Err(Elapsed);
                }
            }
        }
    }
}

/// A [`timeout_unthrottled`] ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// The direction a limit applies to, as a metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `download`, `upload` or `origin`.
    pub direction: &'static str,
}

#[derive(Clone)]
struct DirectionMetrics {
    waiting: Gauge,
    throttled_seconds: Counter<f64, AtomicU64>,
    bytes: Counter,
}

/// The rate-limit metrics both node kinds export (`damselfly_<component>_rate_*`).
#[derive(Clone, Debug, Default)]
pub struct RateMetrics {
    /// The limit in bytes per second (0: unlimited).
    pub limit: Family<DirectionLabel, Gauge>,
    /// Time transfers spent waiting for the limit, summed over transfers.
    pub throttled_seconds: Family<DirectionLabel, Counter<f64, AtomicU64>>,
    /// Requests waiting for the limit now.
    pub waiting: Family<DirectionLabel, Gauge>,
    /// Bytes that went through the limit (counted as granted, in steps of at most
    /// [`RATE_CHUNK`]: finer than the per-piece byte counters).
    pub bytes: Family<DirectionLabel, Counter>,
}

impl RateMetrics {
    /// Registers every metric as `damselfly_<component>_rate_*`.
    pub fn register(&self, registry: &mut Registry, component: &str) {
        let name = |what: &str| format!("damselfly_{component}_rate_{what}");
        registry.register(
            name("limit_bytes_per_second"),
            "Bandwidth limit by direction in bytes per second (0: unlimited)",
            self.limit.clone(),
        );
        registry.register(
            name("throttled_seconds"),
            "Time transfers spent waiting for the bandwidth limit, summed over transfers",
            self.throttled_seconds.clone(),
        );
        registry.register(name("waiting"), "Transfer steps waiting for the bandwidth limit now", self.waiting.clone());
        registry.register(
            name("bytes"),
            "Bytes that went through the bandwidth limit (only while a limit is set)",
            self.bytes.clone(),
        );
    }

    /// A limiter for `direction` whose limit and waiting time these metrics show.
    pub fn limiter(&self, direction: &'static str, rate: Option<ByteRate>) -> RateLimiter {
        let label = DirectionLabel { direction };
        self.limit.get_or_create(&label).set(rate.map_or(0, |r| r.0) as i64);
        let counters = DirectionMetrics {
            waiting: self.waiting.get_or_create(&label).clone(),
            throttled_seconds: self.throttled_seconds.get_or_create(&label).clone(),
            bytes: self.bytes.get_or_create(&label).clone(),
        };
        RateLimiter::build(rate, Some(counters))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn parses_rates() {
        assert_eq!("50MiB".parse::<ByteRate>().unwrap(), ByteRate(50 * MIB));
        assert_eq!("50MiB/s".parse::<ByteRate>().unwrap(), ByteRate(50 * MIB));
        assert_eq!(" 100MB/s ".parse::<ByteRate>().unwrap(), ByteRate(100_000_000));
        assert_eq!("1048576".parse::<ByteRate>().unwrap(), ByteRate(MIB));
        assert!("fast".parse::<ByteRate>().is_err());
        #[derive(Deserialize)]
        struct C {
            a: ByteRate,
            b: ByteRate,
        }
        let c: C = toml::from_str("a = \"8MiB/s\"\nb = 65536").unwrap();
        assert_eq!((c.a, c.b), (ByteRate(8 * MIB), ByteRate(65536)));
        assert!(validate_rate("x", Some(ByteRate(1000))).unwrap_err().contains("at least 64KiB/s"));
        assert!(validate_rate("x", Some(ByteRate(MIB))).is_ok());
        assert_eq!(ByteRate(50 * MIB).to_string(), "50MiB/s");
        assert_eq!(ByteRate(100_000_000).to_string(), "95.4 MiB/s");
    }

    /// Moves `total` bytes through `flow` in chunks; returns when done.
    async fn transfer(flow: Flow, total: u64) {
        let mut left = total;
        while left > 0 {
            let n = (flow.chunk(left as usize) as u64).min(left);
            flow.take(n).await;
            left -= n;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn long_run_rate_is_the_limit() {
        let limiter = RateLimiter::new(Some(ByteRate(4 * MIB)));
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..4 {
            set.spawn(transfer(limiter.flow(&format!("t{i}")), 10 * MIB));
        }
        while set.join_next().await.is_some() {}
        let secs = start.elapsed().as_secs_f64();
        // 40 MiB at 4 MiB/s: 10 s, less the initial allowance (one burst).
        let expected = (40 * MIB - limiter.burst()) as f64 / (4 * MIB) as f64;
        assert!((secs - expected).abs() < 0.05, "took {secs:.3} s, expected {expected:.3} s");
        assert!(limiter.throttled() > Duration::from_secs(20), "{:?}", limiter.throttled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_big_task_does_not_starve_a_small_one() {
        let limiter = RateLimiter::new(Some(ByteRate(MIB)));
        let start = Instant::now();
        // The big task runs 16 transfers at once, the small one a single one.
        let mut big = tokio::task::JoinSet::new();
        for _ in 0..16 {
            big.spawn(transfer(limiter.flow("big"), 4 * MIB));
        }
        let small = tokio::spawn(transfer(limiter.flow("small"), 2 * MIB));
        small.await.unwrap();
        let small_secs = start.elapsed().as_secs_f64();
        // Half of 1 MiB/s while both want more: 2 MiB in about 4 s, not the 34 s a share per
        // transfer (1/17) would give.
        assert!(small_secs < 4.3, "small task took {small_secs:.2} s");
        while big.join_next().await.is_some() {}
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits_and_cancelled_requests_cost_nothing() {
        let flow = Flow::unlimited();
        assert_eq!(flow.chunk(10 * MIB as usize), 10 * MIB as usize);
        flow.take(u64::MAX).await;
        assert_eq!(flow.waited(), Duration::ZERO);

        let limiter = RateLimiter::new(Some(ByteRate(MIB)));
        let f = limiter.flow("a");
        f.take(MIB).await; // into debt: the next request waits about a second
        let cancelled = tokio::time::timeout(Duration::from_millis(10), f.take(MIB)).await;
        assert!(cancelled.is_err());
        let start = Instant::now();
        f.take(1).await;
        // The cancelled mebibyte was never charged: only the first one's debt is paid back.
        assert!(start.elapsed() < Duration::from_millis(1100), "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_time_does_not_count_against_a_timeout() {
        let limiter = RateLimiter::new(Some(ByteRate(MIN_RATE)));
        let flow = limiter.flow("a");
        // Ten seconds of waiting for the limit, under a 2 s timeout.
        let slow = transfer(flow.clone(), 10 * MIN_RATE);
        assert!(timeout_unthrottled(Duration::from_secs(2), &flow, slow).await.is_ok());
        assert!(flow.waited() >= Duration::from_secs(8));
        let stuck = std::future::pending::<()>();
        assert_eq!(timeout_unthrottled(Duration::from_secs(2), &flow, stuck).await, Err(Elapsed));
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_show_limit_and_waiting_time() {
        let metrics = RateMetrics::default();
        let limiter = metrics.limiter("upload", Some(ByteRate(MIB)));
        let _none = metrics.limiter("download", None);
        transfer(limiter.flow("a"), 3 * MIB).await;
        let mut registry = Registry::default();
        metrics.register(&mut registry, "test");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("damselfly_test_rate_limit_bytes_per_second{direction=\"upload\"} 1048576"), "{text}");
        assert!(text.contains("damselfly_test_rate_limit_bytes_per_second{direction=\"download\"} 0"), "{text}");
        let throttled = metrics.throttled_seconds.get_or_create(&DirectionLabel { direction: "upload" }).get();
        assert!(throttled > 1.5, "{throttled}");
        assert!(text.contains("damselfly_test_rate_bytes_total{direction=\"upload\"} 3145728"), "{text}");
    }
}

//! The in-memory job table and each job's progress, and the JSON view of a job that
//! `GET /api/v1/preheat/{id}` (and `dfget preheat`) shows.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

pub use damselfly_types::preheat::{BlobView, ItemState, JobState, JobView, PeerView};

use super::manifest::{BlobSpec, Resolved};
use crate::cache::CachedTask;

/// Jobs kept in the table; beyond this the oldest finished ones are forgotten.
const MAX_JOBS: usize = 1024;

/// One blob of a job.
struct Blob {
    spec: BlobSpec,
    /// Origin URL (no credentials in it).
    url: url::Url,
    state: ItemState,
    error: Option<String>,
    /// The cache entry while the blob is fetched, for its landed bytes.
    entry: Option<Arc<CachedTask>>,
}

/// One dfdaemon the job also warms.
struct Peer {
    /// As the caller gave it.
    addr: String,
    /// Whom to dial.
    target: super::warm::PeerTarget,
    state: ItemState,
    blobs_done: usize,
    bytes: u64,
    error: Option<String>,
}

struct Inner {
    state: JobState,
    error: Option<String>,
    manifest_digest: Option<String>,
    media_type: Option<String>,
    updated: SystemTime,
    finished: Option<SystemTime>,
    blobs: Vec<Blob>,
    peers: Vec<Peer>,
}

/// What happened to one item (a blob URL, or a peer address): its state and error.
pub(super) type Outcome = (String, ItemState, Option<String>);

/// A step of one peer's warm-up.
pub(super) enum PeerEvent {
    /// It started fetching.
    Started,
    /// It fetched one more blob, of this many bytes.
    BlobDone(u64),
    /// It failed.
    Failed(String),
    /// It has every blob.
    Succeeded,
}

/// One preheat job.
pub struct Job {
    /// Random hex id (the native API's).
    pub id: String,
    /// Sequence number (Harbor's job id: its driver reads ids as integers).
    pub number: u64,
    /// The image as resolved (no credentials).
    pub image: String,
    /// The platform filter (`linux/amd64`, `all`).
    pub platform: String,
    created: SystemTime,
    inner: Mutex<Inner>,
}

/// RFC 3339, seconds precision, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Job {
    fn new(number: u64, image: String, platform: String) -> Self {
        let now = SystemTime::now();
        Self {
            id: hex::encode(rand::random::<[u8; 16]>()),
            number,
            image,
            platform,
            created: now,
            inner: Mutex::new(Inner {
                state: JobState::Pending,
                error: None,
                manifest_digest: None,
                media_type: None,
                updated: now,
                finished: None,
                blobs: Vec::new(),
                peers: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        let mut g = self.lock();
        f(&mut g);
        g.updated = SystemTime::now();
    }

    /// Fills in what resolution found: the blobs with their origin URLs, and the peers.
    pub(super) fn set_plan(
        &self,
        resolved: &Resolved,
        urls: Vec<url::Url>,
        peers: Vec<(String, super::warm::PeerTarget)>,
    ) {
        self.update(|g| {
            g.manifest_digest = Some(resolved.manifest_digest.to_string());
            g.media_type = Some(resolved.media_type.clone());
            g.blobs = resolved
                .blobs
                .iter()
                .zip(urls)
                .map(|(spec, url)| Blob {
                    spec: spec.clone(),
                    url,
                    state: ItemState::Pending,
                    error: None,
                    entry: None,
                })
                .collect();
            g.peers = peers
                .into_iter()
                .map(|(addr, target)| Peer {
                    addr,
                    target,
                    state: ItemState::Pending,
                    blobs_done: 0,
                    bytes: 0,
                    error: None,
                })
                .collect();
        });
    }

    /// Current state.
    pub fn state(&self) -> JobState {
        self.lock().state
    }

    /// Marks the job running.
    pub(super) fn start(&self) {
        self.update(|g| g.state = JobState::Running);
    }

    /// Ends the job: failed with `error`, else succeeded.
    pub(super) fn finish(&self, error: Option<String>) {
        self.update(|g| {
            g.state = if error.is_some() { JobState::Failed } else { JobState::Succeeded };
            g.error = error;
            g.finished = Some(SystemTime::now());
            for b in &mut g.blobs {
                b.entry = None;
                if b.state == ItemState::Pending {
                    b.state = ItemState::Skipped;
                }
            }
            for p in &mut g.peers {
                if p.state == ItemState::Pending {
                    p.state = ItemState::Skipped;
                }
            }
        });
    }

    /// Number of blobs.
    pub(super) fn blob_count(&self) -> usize {
        self.lock().blobs.len()
    }

    /// Blob `i`'s spec and origin URL.
    pub(super) fn blob_target(&self, i: usize) -> Option<(BlobSpec, url::Url)> {
        self.lock().blobs.get(i).map(|b| (b.spec.clone(), b.url.clone()))
    }

    /// Every blob's spec and origin URL, in order.
    pub(super) fn blob_targets(&self) -> Vec<(BlobSpec, url::Url)> {
        self.lock().blobs.iter().map(|b| (b.spec.clone(), b.url.clone())).collect()
    }

    /// Sets blob `i`'s state (and error); a blob that ends drops its cache entry.
    pub(super) fn set_blob(&self, i: usize, state: ItemState, error: Option<String>) {
        self.update(|g| {
            if let Some(b) = g.blobs.get_mut(i) {
                b.state = state;
                b.error = error;
                if state != ItemState::Running {
                    b.entry = None;
                }
            }
        });
    }

    /// Blob `i` is being fetched into `entry`.
    pub(super) fn attach_entry(&self, i: usize, entry: Arc<CachedTask>) {
        self.update(|g| {
            if let Some(b) = g.blobs.get_mut(i) {
                b.entry = Some(entry);
            }
        });
    }

    /// Number of peers.
    pub(super) fn peer_count(&self) -> usize {
        self.lock().peers.len()
    }

    /// Peer `p` as given and whom to dial.
    pub(super) fn peer_target(&self, p: usize) -> Option<(String, super::warm::PeerTarget)> {
        self.lock().peers.get(p).map(|x| (x.addr.clone(), x.target.clone()))
    }

    /// Records what happened to peer `p`.
    pub(super) fn peer_event(&self, p: usize, event: PeerEvent) {
        self.update(|g| {
            let Some(x) = g.peers.get_mut(p) else { return };
            match event {
                PeerEvent::Started => x.state = ItemState::Running,
                PeerEvent::BlobDone(bytes) => {
                    x.blobs_done += 1;
                    x.bytes += bytes;
                }
                PeerEvent::Failed(e) => {
                    x.state = ItemState::Failed;
                    x.error = Some(e);
                }
                PeerEvent::Succeeded => x.state = ItemState::Succeeded,
            }
        });
    }

    /// The view the API shows.
    pub fn view(&self) -> JobView {
        let g = self.lock();
        let blobs: Vec<BlobView> = g
            .blobs
            .iter()
            .map(|b| {
                let landed = match (b.state, &b.entry) {
                    (ItemState::Succeeded, _) => b.spec.size,
                    (_, Some(e)) => e.landed_bytes().min(b.spec.size),
                    _ => 0,
                };
                BlobView {
                    digest: b.spec.digest.to_string(),
                    kind: b.spec.kind,
                    platform: b.spec.platform.clone(),
                    size: b.spec.size,
                    bytes_landed: landed,
                    state: b.state,
                    error: b.error.clone(),
                }
            })
            .collect();
        JobView {
            id: self.id.clone(),
            image: self.image.clone(),
            platform: self.platform.clone(),
            state: g.state,
            error: g.error.clone(),
            manifest_digest: g.manifest_digest.clone(),
            media_type: g.media_type.clone(),
            created_at: rfc3339(self.created),
            updated_at: rfc3339(g.updated),
            finished_at: g.finished.map(rfc3339),
            total_bytes: blobs.iter().map(|b| b.size).sum(),
            bytes_landed: blobs.iter().map(|b| b.bytes_landed).sum(),
            blobs,
            peers: g
                .peers
                .iter()
                .map(|p| PeerView {
                    peer: p.addr.clone(),
                    state: p.state,
                    blobs_done: p.blobs_done,
                    bytes: p.bytes,
                    error: p.error.clone(),
                })
                .collect(),
        }
    }

    /// Blob URLs with their state and error, and peers with theirs (for Harbor's view).
    pub(super) fn harbor_items(&self) -> (Vec<Outcome>, Vec<Outcome>) {
        let g = self.lock();
        let blobs = g.blobs.iter().map(|b| (b.url.to_string(), b.state, b.error.clone())).collect();
        let peers = g.peers.iter().map(|p| (p.addr.clone(), p.state, p.error.clone())).collect();
        (blobs, peers)
    }

    /// When the job was accepted and last changed.
    pub(super) fn times(&self) -> (SystemTime, SystemTime) {
        (self.created, self.lock().updated)
    }

    /// The job's error, once failed.
    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }
}

/// All preheat jobs of this supernode (in memory: a restart forgets them; the cache keeps what
/// they fetched).
#[derive(Default)]
pub struct Preheats {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    jobs: BTreeMap<u64, Arc<Job>>,
    by_id: HashMap<String, u64>,
    last: u64,
}

impl Preheats {
    /// Creates and records a new job.
    pub fn create(&self, image: String, platform: String) -> Arc<Job> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.last += 1;
        let job = Arc::new(Job::new(t.last, image, platform));
        t.jobs.insert(job.number, job.clone());
        t.by_id.insert(job.id.clone(), job.number);
        while t.jobs.len() > MAX_JOBS {
            let oldest_done = t
                .jobs
                .iter()
                .find(|(_, j)| matches!(j.state(), JobState::Succeeded | JobState::Failed))
                .map(|(n, _)| *n);
            let Some(n) = oldest_done else { break };
            if let Some(j) = t.jobs.remove(&n) {
                t.by_id.remove(&j.id);
            }
        }
        job
    }

    /// The job with hex id `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.by_id.get(id).and_then(|n| t.jobs.get(n)).cloned()
    }

    /// The job with sequence number `n` (Harbor's id).
    pub fn by_number(&self, n: u64) -> Option<Arc<Job>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).jobs.get(&n).cloned()
    }

    /// Number of jobs known.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).jobs.len()
    }

    /// Whether no job is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_found_by_id_and_number_and_old_finished_ones_are_forgotten() {
        let p = Preheats::default();
        let first = p.create("a".into(), "linux/amd64".into());
        assert_eq!(first.number, 1);
        assert_eq!(first.id.len(), 32);
        assert!(Arc::ptr_eq(&p.get(&first.id).unwrap(), &first));
        assert!(Arc::ptr_eq(&p.by_number(1).unwrap(), &first));
        assert!(p.get("nope").is_none());
        // A running job is never evicted; finished ones are, oldest first.
        first.start();
        let second = p.create("b".into(), "all".into());
        second.finish(Some("x".into()));
        for _ in 0..MAX_JOBS {
            p.create("c".into(), "all".into()).finish(None);
        }
        assert_eq!(p.len(), MAX_JOBS);
        assert!(p.get(&first.id).is_some(), "running job kept");
        assert!(p.get(&second.id).is_none(), "oldest finished job forgotten");
    }

    #[test]
    fn a_finished_job_skips_what_it_never_started() {
        let p = Preheats::default();
        let job = p.create("img".into(), "linux/amd64".into());
        let spec = |n: u8| BlobSpec {
            digest: damselfly_types::id::Sha256Digest([n; 32]),
            size: 10,
            kind: damselfly_types::preheat::BlobKind::Layer,
            platform: None,
        };
        let resolved = Resolved {
            manifest_digest: damselfly_types::id::Sha256Digest([9; 32]),
            media_type: "m".into(),
            platforms: vec![],
            blobs: vec![spec(1), spec(2)],
        };
        let u = url::Url::parse("http://r/v2/x/blobs/y").unwrap();
        job.set_plan(
            &resolved,
            vec![u.clone(), u],
            vec![("p:1".into(), super::super::warm::PeerTarget::Addr("p:1".into()))],
        );
        job.set_blob(0, ItemState::Succeeded, None);
        job.finish(Some("blob 2 failed".into()));
        let v = job.view();
        assert_eq!(v.state, JobState::Failed);
        assert_eq!(v.blobs[0].bytes_landed, 10);
        assert_eq!(v.blobs[1].state, ItemState::Skipped);
        assert_eq!(v.peers[0].state, ItemState::Skipped);
        assert_eq!(v.total_bytes, 20);
        assert!(v.finished_at.is_some());
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["state"], "failed");
        assert_eq!(json["blobs"][1]["state"], "skipped");
    }
}

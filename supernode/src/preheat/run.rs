//! Running a job: every blob into the supernode's cache through the coalesced origin path, a
//! few at once, then every requested dfdaemon fetches every blob (over QUIC, see [`super::warm`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use damselfly_proto as pb;
use damselfly_types::id::TaskId;
use futures_util::StreamExt;
use tracing::{debug, info, warn, Instrument};

use super::job::{ItemState, Job, PeerEvent};
use super::manifest::BlobSpec;
use super::registry::RegistryClient;
use super::warm::DaemonLink;
use crate::cache::CacheState;
use crate::origin::{start_fetch, OriginRequest};
use crate::Shared;

/// Blobs of one job fetched at once.
const BLOB_PARALLELISM: usize = 4;
/// Peers of one job warmed at once (each fetches its blobs one after the other).
const PEER_PARALLELISM: usize = 4;

/// Runs `job` to its end.
pub(super) async fn run(shared: Arc<Shared>, job: Arc<Job>, client: Arc<RegistryClient>) {
    let span = tracing::info_span!("preheat", job = %job.id, image = %job.image);
    async move {
        job.start();
        let error = match cache_blobs(&shared, &job, &client).await {
            Err(e) => Some(e),
            Ok(()) => warm_peers(&shared, &job, &client).await.err(),
        };
        match &error {
            None => info!("preheat job succeeded"),
            Some(e) => warn!(error = %e, "preheat job failed"),
        }
        job.finish(error);
    }
    .instrument(span)
    .await
}

/// Every blob into the cache; stops starting new blobs after the first failure.
async fn cache_blobs(shared: &Arc<Shared>, job: &Job, client: &RegistryClient) -> Result<(), String> {
    let failed = AtomicBool::new(false);
    let first_error = std::sync::Mutex::new(None::<String>);
    futures_util::stream::iter(0..job.blob_count())
        .for_each_concurrent(BLOB_PARALLELISM, |i| {
            let (failed, first_error) = (&failed, &first_error);
            async move {
                let Some((spec, url)) = job.blob_target(i) else { return };
                if failed.load(Ordering::Relaxed) {
                    job.set_blob(i, ItemState::Skipped, None);
                    return;
                }
                job.set_blob(i, ItemState::Running, None);
                match cache_blob(shared, job, i, &spec, &url, client).await {
                    Ok(()) => job.set_blob(i, ItemState::Succeeded, None),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        let what = format!("{} {} ({} bytes): {e}", spec.kind, spec.digest, spec.size);
                        first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(what);
                        job.set_blob(i, ItemState::Failed, Some(e));
                    }
                }
            }
        })
        .await;
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One blob into the cache: starts the fetch or joins the one running, and waits for its end.
/// A fetch someone else started (a peer, with its own credentials) that fails is retried once
/// with the job's credentials.
async fn cache_blob(
    shared: &Arc<Shared>,
    job: &Job,
    i: usize,
    spec: &BlobSpec,
    url: &url::Url,
    client: &RegistryClient,
) -> Result<(), String> {
    for _attempt in 0..2 {
        let headers = client.forward_headers().await.map_err(|e| e.to_string())?;
        let task = TaskId::for_url(url, Some(&spec.digest));
        let req = OriginRequest { task, url: url.clone(), digest: Some(spec.digest), headers };
        let (entry, started) = start_fetch(shared, req).map_err(|e| format!("supernode cache error: {e}"))?;
        debug!(blob = %spec.digest, started, "waiting for blob");
        job.attach_entry(i, entry.clone());
        let mut changes = entry.subscribe();
        loop {
            match entry.state() {
                CacheState::Complete => return Ok(()),
                CacheState::Failed => break,
                CacheState::Fetching => {
                    if changes.changed().await.is_err() {
                        break;
                    }
                }
            }
        }
        let error = entry.error().unwrap_or_else(|| "origin fetch failed".into());
        if started {
            return Err(error);
        }
        debug!(blob = %spec.digest, %error, "a fetch this job joined failed: fetching with the job's credentials");
    }
    Err("origin fetch failed twice".into())
}

/// Every requested dfdaemon fetches every blob (from the swarm, which now has them).
async fn warm_peers(shared: &Shared, job: &Job, client: &RegistryClient) -> Result<(), String> {
    let n = job.peer_count();
    if n == 0 {
        return Ok(());
    }
    let headers: Vec<pb::Header> = client
        .forward_headers()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(name, value)| pb::Header { name, value })
        .collect();
    let blobs = job.blob_targets();
    let results: Vec<Option<String>> = futures_util::stream::iter(0..n)
        .map(|p| warm_peer(shared, job, p, &blobs, &headers))
        .buffer_unordered(PEER_PARALLELISM)
        .collect()
        .await;
    let errors: Vec<String> = results.into_iter().flatten().collect();
    match errors.first() {
        None => Ok(()),
        Some(first) => Err(format!("{} of {n} peers failed; first: {first}", errors.len())),
    }
}

/// Peer `p` fetches every blob; returns its error, if any.
async fn warm_peer(
    shared: &Shared,
    job: &Job,
    p: usize,
    blobs: &[(BlobSpec, url::Url)],
    headers: &[pb::Header],
) -> Option<String> {
    let (addr, target) = job.peer_target(p)?;
    job.peer_event(p, PeerEvent::Started);
    let link = match DaemonLink::connect(shared, &target).await {
        Ok(link) => link,
        Err(e) => {
            let message = format!("peer {addr}: {e}");
            job.peer_event(p, PeerEvent::Failed(e));
            return Some(message);
        }
    };
    debug!(peer = %addr, peer_id = %link.peer_id, "warming a dfdaemon");
    for (spec, url) in blobs {
        let warm = pb::Warm { url: url.to_string(), digest: spec.digest.to_string(), headers: headers.to_vec() };
        let result = link.warm(shared, warm).await.and_then(|bytes| {
            (bytes == spec.size).then_some(bytes).ok_or_else(|| format!("has {bytes} of {} bytes", spec.size))
        });
        match result {
            Ok(bytes) => job.peer_event(p, PeerEvent::BlobDone(bytes)),
            Err(e) => {
                let message = format!("peer {addr}: {} {}: {e}", spec.kind, spec.digest);
                job.peer_event(p, PeerEvent::Failed(e));
                return Some(message);
            }
        }
    }
    job.peer_event(p, PeerEvent::Succeeded);
    None
}

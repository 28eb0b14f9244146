//! Store tests against a real RocksDB and real files in a temp dir.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use damselfly_types::id::TaskId;
use damselfly_types::piece::PieceSource;
use sha2::{Digest as _, Sha256};

use super::*;
use crate::cache_metrics::CacheMetrics;
use crate::clock::ManualClock;
use crate::verify::piece_matches;

const PIECE: usize = 64 << 10;

fn id(n: u8) -> TaskId {
    TaskId::new(format!("sha256:{}", hex::encode([n; 32])))
}

fn open(dir: &Path, quota: Option<u64>) -> Store {
    open_at(dir, quota, &ManualClock::new(1_000_000), CacheMetrics::default())
}

fn open_at(dir: &Path, quota: Option<u64>, clock: &ManualClock, metrics: CacheMetrics) -> Store {
    let config = StoreConfig { quota, clock: Arc::new(clock.clone()), ..StoreConfig::new("dfdaemon") };
    Store::open_with(dir, config, metrics).unwrap()
}

/// Downloads `data` into a new task `t` as the swarm would: info, table, pieces, complete.
async fn fill(store: &Store, t: &TaskId, data: &[u8]) -> Arc<LocalTask> {
    let (task, fresh) = store.get_or_create(t).unwrap();
    assert!(fresh);
    task.set_origin(&url::Url::parse("http://user:secret@origin/blob").unwrap(), Some(t.as_str()));
    task.set_info(Some(data.len() as u64), PIECE as u32).unwrap();
    let chunks: Vec<_> = data.chunks(PIECE).collect();
    task.add_pieces(chunks.iter().enumerate().map(|(n, c)| {
        (n as u32, Piece { offset: (n * PIECE) as u64, size: c.len() as u32, sha256: Sha256::digest(c).into() })
    }));
    task.update(|v| {
        v.total_pieces = Some(chunks.len() as u32);
        v.pieces.resize(chunks.len(), None);
        v.have.resize(chunks.len(), false);
    });
    for (n, c) in chunks.iter().enumerate() {
        task.store_piece(n as u32, (n * PIECE) as u64, Bytes::copy_from_slice(c)).await.unwrap();
    }
    task.update(|v| v.status = TaskStatus::Done);
    task.release_download();
    task
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[tokio::test]
async fn finished_and_partial_tasks_survive_a_restart_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let data = blob(3 * PIECE + 17, 1);
    {
        let store = open(dir.path(), None);
        fill(&store, &id(1), &data).await;
        // A partial task: two of four pieces.
        let (t, _) = store.get_or_create(&id(2)).unwrap();
        t.set_origin(&url::Url::parse("http://origin/two").unwrap(), None);
        t.set_info(Some(data.len() as u64), PIECE as u32).unwrap();
        let chunks: Vec<_> = data.chunks(PIECE).collect();
        t.add_pieces(chunks.iter().enumerate().map(|(n, c)| {
            (n as u32, Piece { offset: (n * PIECE) as u64, size: c.len() as u32, sha256: Sha256::digest(c).into() })
        }));
        for n in [0usize, 2] {
            t.store_piece(n as u32, (n * PIECE) as u64, Bytes::copy_from_slice(chunks[n])).await.unwrap();
        }
        store.flush();
    }
    let store = open(dir.path(), None);
    let done = store.get(&id(1)).unwrap();
    assert_eq!(done.view().status, TaskStatus::Done);
    assert_eq!(done.read_at(0, data.len()).await.unwrap(), Bytes::from(data.clone()));
    assert_eq!(done.origin().0.as_deref(), Some("http://origin/blob"), "credentials are never stored");
    let partial = store.get(&id(2)).unwrap();
    assert_eq!(partial.view().status, TaskStatus::Running);
    assert_eq!(partial.present_pieces().await, vec![0, 2]);
    assert!(partial.claim_download(), "a loaded partial task is resumable");
    assert!(!partial.claim_download(), "once");
}

#[tokio::test]
async fn a_corrupt_piece_is_dropped_never_served_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let data = blob(4 * PIECE, 2);
    {
        let store = open(dir.path(), None);
        fill(&store, &id(1), &data).await;
        store.flush();
    }
    // Flip a byte of piece 2 while the node is down.
    let path = dir.path().join("tasks").join(format!("{}.data", id(1).file_name()));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2 * PIECE + 5] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let store = open(dir.path(), None);
    let mut events = store.take_events().unwrap();
    let task = store.get(&id(1)).unwrap();
    assert!(store.locate(&id(1), 2).is_none(), "unverified pieces are not uploaded");
    store.prepare_upload(&id(1), 1).await;
    assert!(store.locate(&id(1), 1).is_some(), "a good piece is uploaded once verified");
    // A reader of piece 2 waits for the repair instead of getting corrupt bytes.
    let reader = {
        let task = task.clone();
        tokio::spawn(async move { task.read_at(2 * PIECE as u64, PIECE).await })
    };
    assert_eq!(events.recv().await, Some(StoreEvent::Repair(id(1))));
    assert!(!task.view().has(2));
    assert_eq!(task.view().status, TaskStatus::Running);
    assert!(task.claim_download());
    task.store_piece(2, 2 * PIECE as u64, Bytes::copy_from_slice(&data[2 * PIECE..3 * PIECE])).await.unwrap();
    assert_eq!(reader.await.unwrap().unwrap(), Bytes::copy_from_slice(&data[2 * PIECE..3 * PIECE]));
}

#[tokio::test]
async fn quota_evicts_least_recently_used_idle_tasks_only() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = CacheMetrics::default();
    let clock = ManualClock::new(1_000_000);
    let store = open_at(dir.path(), Some(3 * PIECE as u64), &clock, metrics.clone());
    let mut events = store.take_events().unwrap();
    let a = fill(&store, &id(1), &blob(PIECE, 1)).await;
    drop(fill(&store, &id(2), &blob(PIECE, 2)).await);
    // Task 3 is younger than task 2.
    clock.advance(Duration::from_millis(5));
    drop(fill(&store, &id(3), &blob(PIECE, 3)).await);
    assert_eq!(store.used_bytes(), 3 * PIECE as u64);
    // Task 1 is the oldest but held by a reader: task 2 goes (once the flusher, which holds a
    // task while it syncs it, is done with it).
    clock.advance(Duration::from_millis(5));
    store.flush();
    let d = fill(&store, &id(4), &blob(PIECE, 4)).await;
    assert!(store.get(&id(1)).is_some());
    assert!(store.get(&id(2)).is_none());
    assert!(matches!(events.recv().await, Some(StoreEvent::Evicted { id: e, .. }) if e == id(2)));
    assert_eq!(metrics.evictions.get(), 1);
    assert_eq!(metrics.bytes.get(), 3 * PIECE as i64);
    // Too large for the quota at all, and too large while everything is in use.
    let (big, _) = store.get_or_create(&id(5)).unwrap();
    let err = big.set_info(Some(4 * PIECE as u64), PIECE as u32).unwrap_err();
    assert!(err.to_string().contains("more than the whole cache quota"), "{err}");
    let _held = (store.get(&id(3)).unwrap(), d);
    let (e, _) = store.get_or_create(&id(6)).unwrap();
    let err = e.set_info(Some(PIECE as u64), PIECE as u32).unwrap_err();
    assert!(err.to_string().contains("cache quota exceeded"), "{err}");
    drop(a);
    e.set_info(Some(PIECE as u64), PIECE as u32).unwrap();
    assert!(store.get(&id(1)).is_none(), "the reader is gone: task 1 could be evicted");
    // Nothing exceeds the quota on disk.
    let on_disk: u64 =
        std::fs::read_dir(dir.path().join("tasks")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(on_disk <= 3 * PIECE as u64, "{on_disk}");
}

#[tokio::test]
async fn ttl_evicts_idle_finished_tasks_and_failed_tasks_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let store = open_at(dir.path(), None, &clock, CacheMetrics::default());
    drop(fill(&store, &id(1), &blob(PIECE, 1)).await);
    // The flusher holds a task while it syncs it: idle once it is done.
    store.flush();
    clock.advance(Duration::from_millis(20));
    assert_eq!(store.evict_expired(Duration::from_secs(3600)), 0);
    assert_eq!(store.evict_expired(Duration::from_millis(20)), 0, "not older than the TTL yet");
    assert_eq!(store.evict_expired(Duration::from_millis(19)), 1);
    let (t, _) = store.get_or_create(&id(2)).unwrap();
    t.set_origin(&url::Url::parse("http://origin/x").unwrap(), None);
    t.set_info(Some(10), PIECE as u32).unwrap();
    store.fail(&t, TaskFailure { origin_status: None, message: "boom".into() });
    store.flush();
    drop((t, store));
    let store = open(dir.path(), None);
    assert!(store.tasks().is_empty());
    assert_eq!(std::fs::read_dir(dir.path().join("tasks")).unwrap().count(), 0);
}

/// What durability and verification cost here (run with `--ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn measure_sync_and_hash_costs() {
    const MB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), None);
    let data = blob(256 * MB, 7);
    let (task, _) = store.get_or_create(&id(1)).unwrap();
    task.set_origin(&url::Url::parse("http://origin/m").unwrap(), None);
    task.set_info(Some(data.len() as u64), MB as u32).unwrap();
    let table: Vec<_> = data
        .chunks(MB)
        .enumerate()
        .map(|(n, c)| (n as u32, Piece { offset: (n * MB) as u64, size: MB as u32, sha256: Sha256::digest(c).into() }))
        .collect();
    task.add_pieces(table.clone());
    let started = std::time::Instant::now();
    for (n, c) in data.chunks(MB).enumerate() {
        task.store_piece(n as u32, (n * MB) as u64, Bytes::copy_from_slice(c)).await.unwrap();
    }
    let written = started.elapsed();
    store.flush();
    let durable = started.elapsed();
    let (rounds, syncs, pieces, sync_time) = store.flush_stats();
    println!(
        "256 x 1 MiB pieces: written in {written:?}, all durable after {durable:?}; {rounds} flush rounds, {syncs} fdatasyncs \
         ({:.1} pieces per sync, {:.2} ms per sync, {:.0} MiB/s), {pieces} present rows",
        pieces as f64 / syncs.max(1) as f64,
        sync_time.as_secs_f64() * 1e3 / syncs.max(1) as f64,
        256.0 / durable.as_secs_f64()
    );
    // One fdatasync per piece instead, for comparison.
    let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(dir.path().join("x")).unwrap();
    let started = std::time::Instant::now();
    for (n, c) in data.chunks(MB).enumerate() {
        file.write_all_at(c, (n * MB) as u64).unwrap();
        file.sync_data().unwrap();
    }
    let per_piece = started.elapsed();
    println!("same pieces with one fdatasync each: {per_piece:?} ({:.0} MiB/s)", 256.0 / per_piece.as_secs_f64());
    // Verification on read: hashing what is in the page cache.
    let f = task.file().unwrap();
    let started = std::time::Instant::now();
    for (_, info) in &table {
        assert!(piece_matches(&f, info));
    }
    let hashed = started.elapsed();
    println!("verify 256 MiB (read + sha256): {hashed:?} ({:.0} MiB/s)", 256.0 / hashed.as_secs_f64());
}

fn open_complete_only(dir: &Path, quota: Option<u64>, clock: &ManualClock) -> Store {
    let config = StoreConfig {
        quota,
        durability: Durability::Complete,
        clock: Arc::new(clock.clone()),
        ..StoreConfig::new("supernode")
    };
    Store::open_with(dir, config, CacheMetrics::default()).unwrap()
}

/// Lands `data` into a new task the way the supernode's origin fetch does, without completing.
async fn land_all(store: &Store, t: &TaskId, data: &[u8]) -> Arc<LocalTask> {
    let (task, fresh) = store.get_or_create(t).unwrap();
    assert!(fresh);
    task.set_info(Some(data.len() as u64), PIECE as u32).unwrap();
    for (n, c) in data.chunks(PIECE).enumerate() {
        task.add_pieces([(n as u32, Piece::of((n * PIECE) as u64, c))]);
        task.store_piece(n as u32, (n * PIECE) as u64, Bytes::copy_from_slice(c)).await.unwrap();
    }
    task
}

#[tokio::test]
async fn with_durability_complete_only_complete_tasks_survive_and_come_back_unverified() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let data = blob(3 * PIECE + 5, 9);
    {
        let store = open_complete_only(dir.path(), None, &clock);
        let done = land_all(&store, &id(1), &data).await;
        done.complete(data.len() as u64).await;
        assert_eq!(done.view().status, TaskStatus::Done);
        assert!(!done.claim_download(), "complete: nothing to download");
        // Interrupted: landed but never completed.
        land_all(&store, &id(2), &data).await;
        store.flush();
    }
    let store = open_complete_only(dir.path(), None, &clock);
    assert!(store.get(&id(2)).is_none(), "partial content is not kept");
    assert_eq!(std::fs::read_dir(dir.path().join("tasks")).unwrap().count(), 1);
    let task = store.get(&id(1)).unwrap();
    assert_eq!(task.view().status, TaskStatus::Done);
    assert!(store.locate(&id(1), 0).is_none(), "nothing is served before it is verified");
    for n in 0..4 {
        assert!(task.ensure_verified(n).await.unwrap());
    }
    assert!(store.locate(&id(1), 3).is_some());
    assert_eq!(task.read_at(0, data.len()).await.unwrap(), Bytes::from(data));
}

/// Before the store was shared the supernode recorded complete tasks without present rows:
/// such a data dir still loads, every piece of the table present. A corrupt row numbered beyond
/// the task's pieces is dropped instead of sizing the piece table (u32::MAX slots).
#[tokio::test]
async fn complete_records_without_present_rows_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let data = blob(2 * PIECE + 1, 4);
    std::fs::create_dir_all(dir.path().join("tasks")).unwrap();
    std::fs::write(dir.path().join("tasks").join(format!("{}.data", id(7).file_name())), &data).unwrap();
    {
        let db = crate::meta::MetaDb::open(&dir.path().join("meta")).unwrap();
        let record = crate::meta::TaskRecord {
            content_length: Some(data.len() as u64),
            piece_size: PIECE as u32,
            total_pieces: Some(3),
            state: crate::meta::TaskState::Complete,
            last_access_ms: 5,
            bytes: data.len() as u64,
            ..Default::default()
        };
        let mut b = db.batch();
        b.put_task(&id(7), &record);
        for (n, c) in data.chunks(PIECE).enumerate() {
            b.put_piece(&id(7), n as u32, &Piece::of((n * PIECE) as u64, c));
        }
        b.put_piece(&id(7), u32::MAX, &Piece::of(0, &data[..PIECE]));
        b.commit().unwrap();
    }
    let store = open_complete_only(dir.path(), None, &ManualClock::new(10));
    let task = store.get(&id(7)).unwrap();
    assert_eq!(task.view().status, TaskStatus::Done);
    assert_eq!(task.held_pieces(), vec![0, 1, 2]);
    assert!(task.verify_all().await.unwrap());
    assert_eq!(store.used_bytes(), data.len() as u64);
}

/// A guard that keeps task 1 and counts what it was asked.
struct KeepOne(std::sync::Mutex<Vec<TaskId>>);

impl EvictionGuard for KeepOne {
    fn evict(&self, id: &TaskId, remove: &mut dyn FnMut() -> bool) -> Evict {
        self.0.lock().unwrap().push(id.clone());
        if *id == self::id(1) {
            return Evict::Busy;
        }
        if remove() {
            Evict::Removed
        } else {
            Evict::Raced
        }
    }
}

#[tokio::test]
async fn the_eviction_guard_keeps_what_the_node_still_uses() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let store = open_complete_only(dir.path(), Some(2 * PIECE as u64), &clock);
    let guard = Arc::new(KeepOne(std::sync::Mutex::new(Vec::new())));
    store.set_eviction_guard(guard.clone());
    for t in 1..=2u8 {
        let task = land_all(&store, &id(t), &blob(PIECE, t)).await;
        task.complete(PIECE as u64).await;
        clock.advance(Duration::from_millis(1));
    }
    // Task 1 is the least recently used, but the node keeps it: task 2 goes.
    land_all(&store, &id(3), &blob(PIECE, 3)).await;
    assert_eq!(*guard.0.lock().unwrap(), vec![id(1), id(2)]);
    assert!(store.get(&id(1)).is_some());
    assert!(store.get(&id(2)).is_none());
    // TTL: the guard has its say too.
    clock.advance(Duration::from_secs(60));
    assert_eq!(store.evict_expired(Duration::from_secs(1)), 0, "task 1 is kept, task 3 is not finished");
    let err = land_all_err(&store, &id(4)).await;
    assert!(err.contains("supernode cache quota exceeded"), "{err}");
}

async fn land_all_err(store: &Store, t: &TaskId) -> String {
    let (task, _) = store.get_or_create(t).unwrap();
    task.set_info(Some(PIECE as u64), PIECE as u32).unwrap_err().to_string()
}

#[test]
fn fixing_the_piece_count_uncounts_pieces_cut_off_and_moves_the_generation() {
    let mut v = TaskView::new();
    v.pieces = vec![None; 6];
    v.have = vec![true, false, true, false, true, true];
    v.have_count = 4;
    let before = v.generation;
    // A table of 3 pieces (another piece size): pieces 4 and 5 are cut off.
    v.set_total(3);
    assert_eq!((v.total_pieces, v.have.len(), v.pieces.len()), (Some(3), 3, 3));
    assert_eq!(v.have_count, 2);
    assert!(!v.complete(), "piece 1 is missing");
    assert_eq!(v.generation, before + 1);
    // Nothing present cut off: the table is the same, so is the generation.
    v.set_total(3);
    assert_eq!(v.generation, before + 1);
    v.set_total(5);
    assert_eq!((v.have.len(), v.have_count, v.generation), (5, 2, before + 1));
}

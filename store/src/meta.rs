//! Durable cache metadata: what a node holds, in RocksDB under `DATA_DIR/meta`.
//!
//! Both the supernode's cache and every dfdaemon's store keep their content in one file per task
//! (pieces at their offsets) and describe it here, one column family per record type:
//!
//! | column family | key | value |
//! |---|---|---|
//! | `tasks` | task id | [`TaskRecord`] (JSON: url without credentials, digest, sizes, state, last access, bytes charged to the quota) |
//! | `pieces` | task id, `/`, piece number (u32 big-endian) | a [`Piece`] (offset u64 BE, size u32 BE, sha256: 44 bytes) |
//! | `present` | task id, `/`, piece number | empty: the piece's bytes are on disk and were verified |
//!
//! Keys of one task sort together (ids never contain `/`), so a task's rows are deleted with one
//! range delete and loading walks each column family once, in order, whatever the number of
//! tasks.
//!
//! # Crash consistency
//! The caller writes (and `fdatasync`s) a piece's bytes *before* the batch that marks it present
//! is written, so a present row always describes bytes that reached the disk. Batches are atomic
//! but not synced one by one (the WAL is in the OS's page cache as soon as the write returns, so a
//! killed process loses nothing; a power loss may lose the newest rows, which only means those
//! pieces are fetched again). Request headers and credentials are never stored: callers pass URLs
//! through [`damselfly_types::id::normalise_url`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use damselfly_types::id::TaskId;
use damselfly_types::piece::Piece;

/// Column family of task records.
pub const CF_TASKS: &str = "tasks";
/// Column family of piece table entries.
pub const CF_PIECES: &str = "pieces";
/// Column family of present-piece markers.
pub const CF_PRESENT: &str = "present";

/// Where a stored task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Some pieces may be missing (the present rows say which).
    Partial,
    /// Every piece is present and the whole content was verified.
    Complete,
}

/// One task as stored in the `tasks` column family. Every field has a default so that records
/// written by older versions still load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskRecord {
    /// Origin URL without user-info (see [`damselfly_types::id::normalise_url`]); never headers.
    pub url: Option<String>,
    /// `sha256:<hex>` when the content digest is known.
    pub digest: Option<String>,
    /// Length of the content, once known.
    pub content_length: Option<u64>,
    /// Piece size (0 until known).
    pub piece_size: u32,
    /// Number of pieces, once the whole piece table is known.
    pub total_pieces: Option<u32>,
    /// State.
    pub state: TaskState,
    /// Last access, milliseconds since the Unix epoch: LRU eviction and TTL go by it.
    pub last_access_ms: u64,
    /// Bytes this task is charged against the disk quota.
    pub bytes: u64,
}

impl Default for TaskRecord {
    fn default() -> Self {
        Self {
            url: None,
            digest: None,
            content_length: None,
            piece_size: 0,
            total_pieces: None,
            state: TaskState::Partial,
            last_access_ms: 0,
            bytes: 0,
        }
    }
}

/// Length of a stored piece record: offset u64 BE, size u32 BE, sha256.
const PIECE_LEN: usize = 8 + 4 + 32;

/// A piece as stored in the `pieces` column family.
fn encode_piece(p: &Piece) -> [u8; PIECE_LEN] {
    let mut out = [0u8; PIECE_LEN];
    out[..8].copy_from_slice(&p.offset.to_be_bytes());
    out[8..12].copy_from_slice(&p.size.to_be_bytes());
    out[12..].copy_from_slice(&p.sha256);
    out
}

/// The piece stored as `b`; `None` when `b` is not a piece record.
fn decode_piece(b: &[u8]) -> Option<Piece> {
    if b.len() != PIECE_LEN {
        return None;
    }
    Some(Piece {
        offset: u64::from_be_bytes(b[..8].try_into().ok()?),
        size: u32::from_be_bytes(b[8..12].try_into().ok()?),
        sha256: b[12..].try_into().ok()?,
    })
}

/// Everything stored about one task, as loaded at startup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTask {
    /// The task.
    pub id: TaskId,
    /// Its record.
    pub record: TaskRecord,
    /// Its piece table, by piece number.
    pub pieces: BTreeMap<u32, Piece>,
    /// Pieces marked present, ascending.
    pub present: Vec<u32>,
}

/// A metadata failure.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The database could not be opened (held by another process, unreadable, corrupt).
    #[error(
        "cannot open the cache metadata at {path}: {source} (is another process using this data dir? \
         removing that directory empties the cache)"
    )]
    Open {
        /// The database directory.
        path: PathBuf,
        /// What RocksDB said.
        source: rocksdb::Error,
    },
    /// A read or write failed.
    #[error("cache metadata I/O failed: {0}")]
    Io(#[from] rocksdb::Error),
}

/// The metadata database. Cheap to share behind an `Arc`; every method is thread-safe.
pub struct MetaDb {
    db: DB,
    write: WriteOptions,
}

impl std::fmt::Debug for MetaDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaDb").field("path", &self.db.path()).finish()
    }
}

/// Key of a per-piece row.
fn piece_key(task: &TaskId, n: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(task.as_str().len() + 5);
    k.extend_from_slice(task.as_str().as_bytes());
    k.push(b'/');
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The range `[from, to)` holding every per-piece row of `task`.
fn task_range(task: &TaskId) -> (Vec<u8>, Vec<u8>) {
    let mut from = task.as_str().as_bytes().to_vec();
    let mut to = from.clone();
    from.push(b'/');
    to.push(b'/' + 1);
    (from, to)
}

/// Splits a per-piece key into task id and piece number.
fn split_piece_key(k: &[u8]) -> Option<(&str, u32)> {
    if k.len() < 6 || k[k.len() - 5] != b'/' {
        return None;
    }
    let (id, rest) = k.split_at(k.len() - 5);
    let n = u32::from_be_bytes(rest[1..].try_into().ok()?);
    Some((std::str::from_utf8(id).ok()?, n))
}

impl MetaDb {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, MetaError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // A node's metadata is small (about 100 bytes per piece): keep RocksDB's own footprint
        // small too.
        opts.set_keep_log_file_num(2);
        opts.set_max_log_file_size(1 << 20);
        opts.set_write_buffer_size(8 << 20);
        let cfs = [CF_TASKS, CF_PIECES, CF_PRESENT].map(|name| {
            let mut o = Options::default();
            o.set_write_buffer_size(8 << 20);
            ColumnFamilyDescriptor::new(name, o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .map_err(|source| MetaError::Open { path: dir.to_owned(), source })?;
        Ok(Self { db, write: WriteOptions::default() })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // The three families are created by `open`: a missing one is a programming error.
        #[allow(clippy::expect_used)]
        self.db.cf_handle(name).expect("column family created at open")
    }

    /// A new atomic batch of changes.
    pub fn batch(&self) -> MetaBatch<'_> {
        MetaBatch { db: self, batch: WriteBatch::default() }
    }

    /// Every stored task, with its piece table and present pieces. Rows of unknown or unreadable
    /// tasks are deleted on the way (they can only be leftovers of an interrupted delete).
    pub fn load_all(&self) -> Result<Vec<StoredTask>, MetaError> {
        let mut tasks: BTreeMap<String, StoredTask> = BTreeMap::new();
        let mut cleanup = self.batch();
        for item in self.db.iterator_cf(self.cf(CF_TASKS), IteratorMode::Start) {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&k).into_owned();
            match (damselfly_types::id::TaskId::is_valid(&id), serde_json::from_slice::<TaskRecord>(&v)) {
                (true, Ok(record)) => {
                    let task = StoredTask {
                        id: TaskId::new(id.clone()),
                        record,
                        pieces: BTreeMap::new(),
                        present: Vec::new(),
                    };
                    tasks.insert(id, task);
                }
                _ => {
                    tracing::warn!(task = %id, "unreadable cache record: dropping it");
                    cleanup.delete_task(&TaskId::new(id));
                }
            }
        }
        for (cf, is_present) in [(CF_PIECES, false), (CF_PRESENT, true)] {
            for item in self.db.iterator_cf(self.cf(cf), IteratorMode::Start) {
                let (k, v) = item?;
                let Some((id, n)) = split_piece_key(&k) else {
                    cleanup.batch.delete_cf(self.cf(cf), &k);
                    continue;
                };
                let Some(task) = tasks.get_mut(id) else {
                    cleanup.batch.delete_cf(self.cf(cf), &k);
                    continue;
                };
                if is_present {
                    task.present.push(n);
                } else if let Some(p) = decode_piece(&v) {
                    task.pieces.insert(n, p);
                }
            }
        }
        cleanup.commit()?;
        Ok(tasks.into_values().collect())
    }

    /// Flushes RocksDB's write-ahead log to disk (used at clean shutdown).
    pub fn sync(&self) -> Result<(), MetaError> {
        Ok(self.db.flush_wal(true)?)
    }
}

/// An atomic set of metadata changes: nothing is visible until [`MetaBatch::commit`], and after
/// a crash either all of it or none of it is there.
pub struct MetaBatch<'a> {
    db: &'a MetaDb,
    batch: WriteBatch,
}

impl std::fmt::Debug for MetaBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaBatch").field("len", &self.batch.len()).finish()
    }
}

impl MetaBatch<'_> {
    /// Writes (replaces) the task's record.
    pub fn put_task(&mut self, task: &TaskId, record: &TaskRecord) -> &mut Self {
        // Serialising a struct of plain fields cannot fail.
        let value = serde_json::to_vec(record).unwrap_or_default();
        self.batch.put_cf(self.db.cf(CF_TASKS), task.as_str().as_bytes(), value);
        self
    }

    /// Writes a piece table entry.
    pub fn put_piece(&mut self, task: &TaskId, n: u32, piece: &Piece) -> &mut Self {
        self.batch.put_cf(self.db.cf(CF_PIECES), piece_key(task, n), encode_piece(piece));
        self
    }

    /// Marks a piece present (its bytes must already be on disk).
    pub fn set_present(&mut self, task: &TaskId, n: u32) -> &mut Self {
        self.batch.put_cf(self.db.cf(CF_PRESENT), piece_key(task, n), []);
        self
    }

    /// Marks a piece absent (dropped after failing verification).
    pub fn clear_present(&mut self, task: &TaskId, n: u32) -> &mut Self {
        self.batch.delete_cf(self.db.cf(CF_PRESENT), piece_key(task, n));
        self
    }

    /// Deletes every row of the task.
    pub fn delete_task(&mut self, task: &TaskId) -> &mut Self {
        let (from, to) = task_range(task);
        self.batch.delete_cf(self.db.cf(CF_TASKS), task.as_str().as_bytes());
        self.batch.delete_range_cf(self.db.cf(CF_PIECES), &from, &to);
        self.batch.delete_range_cf(self.db.cf(CF_PRESENT), &from, &to);
        self
    }

    /// Number of changes in the batch.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// True when the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Applies the batch atomically.
    pub fn commit(self) -> Result<(), MetaError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        Ok(self.db.db.write_opt(self.batch, &self.db.write)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;

    fn id(n: u8) -> TaskId {
        TaskId::new(format!("sha256:{}", hex::encode([n; 32])))
    }

    #[test]
    fn round_trip_survives_reopen_and_delete_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let piece = |i: u8| Piece { offset: u64::from(i) << 20, size: 1 << 20, sha256: [i; 32] };
        {
            let db = MetaDb::open(dir.path()).unwrap();
            let mut b = db.batch();
            for t in 1..=3u8 {
                let rec = TaskRecord { url: Some(format!("http://o/{t}")), bytes: 3 << 20, ..Default::default() };
                b.put_task(&id(t), &rec);
                for n in 0..3u8 {
                    b.put_piece(&id(t), u32::from(n), &piece(n));
                }
                b.set_present(&id(t), 2).set_present(&id(t), 0);
            }
            b.commit().unwrap();
            let mut b = db.batch();
            b.delete_task(&id(2)).clear_present(&id(3), 0);
            b.commit().unwrap();
        }
        let db = MetaDb::open(dir.path()).unwrap();
        let all = db.load_all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].id, id(1));
        assert_eq!(all[0].present, vec![0, 2]);
        assert_eq!(all[0].pieces.len(), 3);
        assert_eq!(all[0].pieces[&1], piece(1));
        assert_eq!(all[0].record.url.as_deref(), Some("http://o/1"));
        assert_eq!(all[1].id, id(3));
        assert_eq!(all[1].present, vec![2]);
    }

    #[test]
    fn orphan_rows_and_bad_records_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = MetaDb::open(dir.path()).unwrap();
        let mut b = db.batch();
        b.set_present(&id(9), 1);
        b.batch.put_cf(db.cf(CF_TASKS), id(8).as_str().as_bytes(), b"not json");
        b.commit().unwrap();
        assert!(db.load_all().unwrap().is_empty());
        assert_eq!(db.db.iterator_cf(db.cf(CF_PRESENT), IteratorMode::Start).count(), 0);
        assert_eq!(db.db.iterator_cf(db.cf(CF_TASKS), IteratorMode::Start).count(), 0);
    }

    fn piece_record() -> impl Strategy<Value = Piece> {
        (any::<u64>(), any::<u32>(), any::<[u8; 32]>()).prop_map(|(offset, size, sha256)| Piece {
            offset,
            size,
            sha256,
        })
    }

    proptest! {
        /// A piece record is its 44 bytes as documented (offset u64 BE, size u32 BE, sha256) and
        /// decodes back to itself; a value of any other length is not a record.
        #[test]
        fn piece_record_round_trips(p in piece_record(), other in vec(any::<u8>(), 0..100)) {
            let bytes = encode_piece(&p);
            prop_assert_eq!(&bytes[..8], &p.offset.to_be_bytes()[..]);
            prop_assert_eq!(&bytes[8..12], &p.size.to_be_bytes()[..]);
            prop_assert_eq!(&bytes[12..], &p.sha256[..]);
            prop_assert_eq!(decode_piece(&bytes), Some(p));
            if other.len() != PIECE_LEN {
                prop_assert_eq!(decode_piece(&other), None);
            }
        }

        /// Per-piece keys split back into task and number, and sort as the numbers do inside
        /// the task's range.
        #[test]
        fn piece_keys_split_back_and_sort(t in 0..=255u8, a in any::<u32>(), b in any::<u32>()) {
            let task = id(t);
            let (ka, kb) = (piece_key(&task, a), piece_key(&task, b));
            prop_assert_eq!(split_piece_key(&ka), Some((task.as_str(), a)));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            let (from, to) = task_range(&task);
            prop_assert!(from <= ka && ka < to);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// Piece tables written to RocksDB load back the same after a reopen, whatever the
        /// piece numbers and records.
        #[test]
        fn piece_tables_survive_reopen(tables in vec(btree_map(any::<u32>(), piece_record(), 0..24), 1..4)) {
            let dir = tempfile::tempdir()?;
            {
                let db = MetaDb::open(dir.path())?;
                let mut b = db.batch();
                for (t, table) in tables.iter().enumerate() {
                    b.put_task(&id(t as u8), &TaskRecord::default());
                    for (n, p) in table {
                        b.put_piece(&id(t as u8), *n, p);
                    }
                }
                b.commit()?;
            }
            let loaded = MetaDb::open(dir.path())?.load_all()?;
            let got: Vec<_> = loaded.into_iter().map(|t| t.pieces).collect();
            prop_assert_eq!(got, tables);
        }
    }

    #[test]
    fn keys_split_back() {
        let k = piece_key(&id(1), 0x0102_0304);
        let (t, n) = split_piece_key(&k).unwrap();
        assert_eq!((t, n), (id(1).as_str(), 0x0102_0304));
        let (from, to) = task_range(&id(1));
        assert!(from.as_slice() <= k.as_slice() && k.as_slice() < to.as_slice());
    }
}

//! Loading the store at startup: every task recorded in the metadata whose content file is
//! still there comes back; finished ones are servable once their pieces are verified (as they
//! are first read, or as the supernode replays them), partial ones wait for the dfdaemon to
//! resume them (with [`Durability::Complete`] they are deleted). Content files without a record,
//! and records without a usable file, are deleted.
//!
//! A record in state complete stands for every piece of its table being present: the supernode
//! never wrote present rows before this store was shared, so its data dirs load as they are.

use std::collections::HashSet;
use std::sync::Arc;

use damselfly_types::piece::piece_count;
use tracing::{info, warn};

use crate::meta::{StoredTask, TaskState};
use crate::store::{Durability, Inner, StoreError};
use crate::task::{LocalTask, TaskStatus, TaskView};

/// Loads every stored task into `inner`.
pub(crate) fn load(inner: &Arc<Inner>) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let stored = inner.db.load_all()?;
    let mut keep = HashSet::new();
    let mut used = 0u64;
    let (mut done, mut partial) = (0usize, 0usize);
    for st in stored {
        let id = st.id.clone();
        match restore_task(inner, st) {
            Some(task) => {
                keep.insert(format!("{}.data", id.file_name()));
                used += task.charged();
                if task.is_done() {
                    done += 1;
                } else {
                    partial += 1;
                }
                inner.tasks.insert(id, Arc::new(task));
            }
            None => {
                let mut b = inner.db.batch();
                b.delete_task(&id);
                b.commit()?;
                let _ = std::fs::remove_file(inner.dir.join(format!("{}.data", id.file_name())));
            }
        }
    }
    remove_strays(inner, &keep);
    inner.quota.set_used(used);
    inner.metrics.bytes.set(i64::try_from(used).unwrap_or(i64::MAX));
    if done + partial > 0 {
        info!(done, partial, bytes = used, took_ms = started.elapsed().as_millis() as u64, "cache loaded");
    }
    Ok(())
}

/// Content files that no record describes: leftovers of a task created just before a crash.
fn remove_strays(inner: &Inner, keep: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(&inner.dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The task as stored, or `None` when it cannot be used (file missing or short, or an
/// unfinished task without a URL to resume it from).
fn restore_task(inner: &Arc<Inner>, mut st: StoredTask) -> Option<LocalTask> {
    let path = inner.dir.join(format!("{}.data", st.id.file_name()));
    let file_len = std::fs::metadata(&path).ok()?.len();
    let mut record = st.record;
    if record.content_length.is_some_and(|len| file_len < len) {
        warn!(task = %st.id, "content file shorter than recorded: dropping the task");
        return None;
    }
    // A piece number no file of this length can hold is a corrupt row: it is dropped rather
    // than sizing the table (a number near u32::MAX would ask for gigabytes).
    let most = match (record.total_pieces, record.content_length) {
        (Some(total), _) => u64::from(total),
        (None, Some(len)) if record.piece_size > 0 => u64::from(piece_count(len, record.piece_size)),
        // Unknown length: rows beyond what is on disk are pieces not fetched yet, which the
        // supernode announces again when the task resumes.
        _ => file_len.div_ceil(u64::from(record.piece_size.max(1))),
    };
    let before = st.pieces.len();
    st.pieces.retain(|&n, _| u64::from(n) < most);
    if st.pieces.len() < before {
        warn!(task = %st.id, dropped = before - st.pieces.len(), "piece rows beyond the file: dropped");
    }
    let slots =
        st.pieces.keys().next_back().map_or(0, |&n| n as usize + 1).max(record.total_pieces.unwrap_or(0) as usize);
    let mut view = TaskView::new();
    view.content_length = record.content_length;
    view.piece_size = record.piece_size;
    view.total_pieces = record.total_pieces;
    view.pieces = vec![None; slots];
    view.have = vec![false; slots];
    for (n, p) in &st.pieces {
        view.pieces[*n as usize] = Some(*p);
    }
    let mut present = st.present;
    if record.state == TaskState::Complete {
        present = st.pieces.keys().copied().collect();
    }
    for n in present {
        let fits = view.piece(n).is_some_and(|p| p.offset + u64::from(p.size) <= file_len);
        if fits && !view.have[n as usize] {
            view.have[n as usize] = true;
            view.have_count += 1;
        }
    }
    view.status = if view.complete() {
        TaskStatus::Done
    } else if inner.config.durability == Durability::Complete || record.url.is_none() {
        return None;
    } else if view.piece_size > 0 || view.content_length.is_some() {
        TaskStatus::Running
    } else {
        TaskStatus::Pending
    };
    record.bytes = record.bytes.max(record.content_length.unwrap_or(0));
    Some(inner.new_task(&st.id, None, view, record))
}

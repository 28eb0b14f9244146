//! The partial file of a direct download, kept across runs so that a rerun resumes it.
//!
//! Beside the output `DIR/NAME` live `DIR/.dfget-NAME.part` (the bytes so far, from offset 0)
//! and `DIR/.dfget-NAME.part.meta`, a small JSON record of what the bytes are: the task id of
//! the URL (sha256 of the URL normalised without credentials, as the daemon names tasks, so no
//! secret lands on disk) and the origin's validators (`ETag`, `Last-Modified`) and length. A
//! rerun trusts the partial bytes only when the record names the same URL and a validator to
//! send as `If-Range`: the origin then either continues the same content (206) or sends the
//! new content whole (200) and the download starts over.
//!
//! The partial file is locked (`flock`) while a dfget writes it, so two dfgets writing the same
//! output do not mix their bytes: the second one stops with an error. The lock dies with the
//! process, so a killed dfget leaves nothing that blocks the rerun.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use damselfly_types::id::TaskId;
use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::exit::{self, Exit, Failure, OrExit};

/// Version of the `.meta` record; a record of another version is ignored (the download starts over).
const META_VERSION: u32 = 1;

/// What the partial bytes are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Record format version.
    version: u32,
    /// Task id of the URL: sha256 of the URL without credentials.
    task: String,
    /// The content's length, when the origin announced it.
    length: Option<u64>,
    /// The origin's `ETag`.
    etag: Option<String>,
    /// The origin's `Last-Modified`.
    last_modified: Option<String>,
}

impl Meta {
    /// The record for a full (200) answer to the URL of `task`.
    pub(crate) fn from_response(task: &TaskId, resp: &reqwest::Response) -> Self {
        let header = |name: reqwest::header::HeaderName| {
            resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        Self {
            version: META_VERSION,
            task: task.to_string(),
            length: resp.content_length(),
            etag: header(reqwest::header::ETAG),
            last_modified: header(reqwest::header::LAST_MODIFIED),
        }
    }

    /// The `If-Range` value that makes a range request safe: a strong `ETag`, else
    /// `Last-Modified` (a weak `ETag` is not allowed in `If-Range`).
    pub(crate) fn validator(&self) -> Option<&str> {
        self.etag.as_deref().filter(|e| !e.starts_with("W/")).or(self.last_modified.as_deref())
    }

    /// The content's length, when known.
    pub(crate) fn length(&self) -> Option<u64> {
        self.length
    }
}

/// Where a rerun continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resume {
    /// First byte to ask for.
    pub(crate) offset: u64,
    /// The `If-Range` value.
    pub(crate) validator: String,
}

/// The locked partial file of one output.
#[derive(Debug)]
pub(crate) struct Partial {
    part: PathBuf,
    meta_path: PathBuf,
    file: File,
    /// The record, when it describes this URL.
    meta: Option<Meta>,
    /// Committed or discarded: nothing left to tidy.
    finished: bool,
}

impl Partial {
    /// Opens (or creates) the partial file beside `output` and locks it; reads its record when
    /// it describes the URL of `task`.
    pub(crate) fn open(output: &Path, task: &TaskId) -> exit::Result<Self> {
        let (part, meta_path) = paths(output);
        let file = open_locked(&part, output)?;
        let meta = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
            .filter(|m| m.version == META_VERSION && m.task == task.as_str());
        Ok(Self { part, meta_path, file, meta, finished: false })
    }

    /// Where a rerun can continue: the partial bytes are of this URL, there are some, and the
    /// origin gave a validator. A partial file as long as the content (killed before the
    /// rename) asks for its last byte again, so that the origin still confirms the content.
    pub(crate) fn resume_point(&self) -> exit::Result<Option<Resume>> {
        let Some(meta) = &self.meta else { return Ok(None) };
        let Some(validator) = meta.validator() else { return Ok(None) };
        let len =
            self.file.metadata().or_exit_with(Exit::Local, || format!("cannot read {}", self.part.display()))?.len();
        let offset = match meta.length {
            Some(total) if len > total => return Ok(None),
            Some(total) if len == total => total.saturating_sub(1),
            _ => len,
        };
        Ok((offset > 0).then(|| Resume { offset, validator: validator.to_owned() }))
    }

    /// The record in force.
    pub(crate) fn meta(&self) -> Option<&Meta> {
        self.meta.as_ref()
    }

    /// Keeps the first `offset` bytes and, when `meta` is given (a new content from offset 0),
    /// records it. Returns a handle writing at `offset`.
    pub(crate) fn restart_at(&mut self, offset: u64, meta: Option<Meta>) -> exit::Result<File> {
        let part = self.part.display().to_string();
        self.file.set_len(offset).or_exit_with(Exit::Local, || format!("cannot write {part}"))?;
        if let Some(meta) = meta {
            let json = serde_json::to_vec(&meta).or_exit(Exit::Local)?;
            let meta_path = self.meta_path.display().to_string();
            std::fs::write(&self.meta_path, json).or_exit_with(Exit::Local, || format!("cannot write {meta_path}"))?;
            self.meta = Some(meta);
        }
        let mut writer = self.file.try_clone().or_exit_with(Exit::Local, || format!("cannot write {part}"))?;
        writer.seek(SeekFrom::Start(offset)).or_exit_with(Exit::Local, || format!("cannot write {part}"))?;
        Ok(writer)
    }

    /// Forgets the partial bytes and the record (the next run starts over).
    pub(crate) fn reset(&mut self) -> exit::Result<()> {
        let _ = std::fs::remove_file(&self.meta_path);
        self.meta = None;
        self.file.set_len(0).or_exit_with(Exit::Local, || format!("cannot write {}", self.part.display()))
    }

    /// The sha256 state of the first `len` bytes (a resumed download checks `--digest` over
    /// the whole content; re-reading is cheaper than fetching again).
    pub(crate) async fn hash_prefix(&self, len: u64) -> exit::Result<Sha256> {
        let file = self.file.try_clone().or_exit(Exit::Local)?;
        let part = self.part.display().to_string();
        tokio::task::spawn_blocking(move || hash_file_prefix(file, len))
            .await
            .or_exit(Exit::Local)?
            .or_exit_with(Exit::Local, || format!("cannot read {part} to resume it"))
    }

    /// Makes the bytes durable and moves them to `output` (atomically); removes the record.
    pub(crate) fn commit(mut self, output: &Path) -> exit::Result<()> {
        self.file.sync_all().or_exit_with(Exit::Local, || format!("cannot write {}", self.part.display()))?;
        std::fs::rename(&self.part, output)
            .or_exit_with(Exit::Local, || format!("cannot move the download to {}", output.display()))?;
        let _ = std::fs::remove_file(&self.meta_path);
        self.finished = true;
        Ok(())
    }

    /// Removes the partial file and its record (the bytes are known to be wrong).
    pub(crate) fn discard(mut self) {
        let _ = std::fs::remove_file(&self.part);
        let _ = std::fs::remove_file(&self.meta_path);
        self.finished = true;
    }
}

impl Drop for Partial {
    /// A partial file that kept no byte (the origin refused, say) is not left behind.
    fn drop(&mut self) {
        if !self.finished && self.file.metadata().is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(&self.part);
            let _ = std::fs::remove_file(&self.meta_path);
        }
    }
}

/// `DIR/.dfget-NAME.part` and `DIR/.dfget-NAME.part.meta` for the output `DIR/NAME`.
pub(crate) fn paths(output: &Path) -> (PathBuf, PathBuf) {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (output.with_file_name(format!(".dfget-{name}.part")), output.with_file_name(format!(".dfget-{name}.part.meta")))
}

/// Opens `part` and takes its lock; the file locked must still be the one at `part` (another
/// dfget may have renamed it into place meanwhile).
fn open_locked(part: &Path, output: &Path) -> exit::Result<File> {
    let what = || format!("cannot write {}", part.display());
    for _ in 0..3 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(part)
            .or_exit_with(Exit::Local, what)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if std::io::Error::from(e).kind() == ErrorKind::WouldBlock => {
                return Err(Failure::new(
                    Exit::Local,
                    format!("another dfget is downloading to {} (it holds {})", output.display(), part.display()),
                ))
            }
            Err(e) => return Err(std::io::Error::from(e)).or_exit_with(Exit::Local, what),
        }
        let held = file.metadata().or_exit_with(Exit::Local, what)?;
        match std::fs::metadata(part) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(file),
            _ => continue,
        }
    }
    Err(Failure::new(Exit::Local, format!("{} keeps changing under dfget", part.display())))
}

fn hash_file_prefix(mut file: File, len: u64) -> std::io::Result<Sha256> {
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = (left.min(buf.len() as u64)) as usize;
        file.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskId {
        TaskId::for_url(&url::Url::parse("http://origin/blob").unwrap(), None)
    }

    fn meta(length: Option<u64>, etag: Option<&str>, last_modified: Option<&str>) -> Meta {
        Meta {
            version: META_VERSION,
            task: task().to_string(),
            length,
            etag: etag.map(str::to_owned),
            last_modified: last_modified.map(str::to_owned),
        }
    }

    #[test]
    fn validators_prefer_a_strong_etag() {
        assert_eq!(meta(None, Some("\"v1\""), Some("Mon")).validator(), Some("\"v1\""));
        assert_eq!(meta(None, Some("W/\"v1\""), Some("Mon")).validator(), Some("Mon"));
        assert_eq!(meta(None, Some("W/\"v1\""), None).validator(), None);
        assert_eq!(meta(None, None, None).validator(), None);
    }

    #[tokio::test]
    async fn a_rerun_resumes_only_a_recorded_url_with_a_validator() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut p = Partial::open(&out, &task()).unwrap();
        assert_eq!(p.resume_point().unwrap(), None);
        let mut w = p.restart_at(0, Some(meta(Some(10), Some("\"v1\""), None))).unwrap();
        std::io::Write::write_all(&mut w, b"hello").unwrap();
        drop((w, p));

        let p = Partial::open(&out, &task()).unwrap();
        assert_eq!(p.resume_point().unwrap(), Some(Resume { offset: 5, validator: "\"v1\"".into() }));
        let mut expected = Sha256::new();
        expected.update(b"hello");
        assert_eq!(p.hash_prefix(5).await.unwrap().finalize(), expected.finalize());
        drop(p);

        // Another URL's record does not apply.
        let other = TaskId::for_url(&url::Url::parse("http://origin/other").unwrap(), None);
        assert_eq!(Partial::open(&out, &other).unwrap().resume_point().unwrap(), None);
    }

    #[test]
    fn a_complete_partial_asks_for_its_last_byte_again() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut p = Partial::open(&out, &task()).unwrap();
        let mut w = p.restart_at(0, Some(meta(Some(3), None, Some("Mon, 01 Jan 2024 00:00:00 GMT")))).unwrap();
        std::io::Write::write_all(&mut w, b"abc").unwrap();
        assert_eq!(p.resume_point().unwrap().map(|r| r.offset), Some(2));
        p.commit(&out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"abc");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no partial file or record left");
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let _first = Partial::open(&out, &task()).unwrap();
        let second = Partial::open(&out, &task()).unwrap_err();
        assert_eq!(second.exit, Exit::Local);
        assert!(second.error.to_string().contains("another dfget"), "{}", second.error);
    }
}

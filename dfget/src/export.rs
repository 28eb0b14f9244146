//! Taking a finished file from the local daemon's cache instead of receiving it over HTTP.
//!
//! When dfget and its daemon share a host, the daemon reports where the verified content file
//! is ([`ExportEvent::Done`]) and dfget puts it in place itself, with its own permissions: a
//! hard link when the output is on the same filesystem (no byte is copied), else an in-kernel
//! copy (`copy_file_range`). The daemon never writes where a client asks it to. A hard-linked
//! output shares the cache's copy; the daemon notices a later write to the file (its modification time)
//! and hashes every piece again before serving it.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use dfdaemon::http::ExportEvent;
use futures_util::StreamExt;

use crate::output::Progress;

/// How the output was put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    /// Hard link to the cache's file.
    Linked,
    /// Copied in the kernel.
    Copied,
}

/// Where the finished content is, as the daemon reported it.
#[derive(Debug)]
pub(crate) struct Finished {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
}

/// Why a local download ended without a file to place.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The task is done: place this file.
    Done(Finished),
    /// The download failed, with the daemon's reason and the origin's status when the origin
    /// refused.
    Failed(String, Option<u16>),
}

/// Follows the daemon's progress lines until the task is done or failed.
pub(crate) async fn follow(resp: reqwest::Response, progress: &mut Progress) -> anyhow::Result<Outcome> {
    let mut stream = resp.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| anyhow!("lost the daemon: {e}"))?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event: ExportEvent = serde_json::from_slice(&line).context("unreadable progress from the daemon")?;
            match event {
                ExportEvent::Progress { bytes, total } => progress.set(bytes, total),
                ExportEvent::Done { path, dev, ino, size } => {
                    progress.set(size, Some(size));
                    return Ok(Outcome::Done(Finished { path: PathBuf::from(path), dev, ino, size }));
                }
                ExportEvent::Failed { error, origin_status } => return Ok(Outcome::Failed(error, origin_status)),
            }
        }
    }
    bail!("the daemon ended the progress stream before the download finished")
}

/// Puts the finished file at `output`: a hard link when possible, else a copy, through a
/// temporary name beside it and an atomic rename. `Err` with kind `NotFound`/`PermissionDenied`
/// and friends means the file cannot be taken from here (another host's filesystem, another
/// user's cache): the caller then streams it over HTTP instead.
pub(crate) fn place(done: &Finished, output: &Path) -> std::io::Result<Placed> {
    let meta = std::fs::metadata(&done.path)?;
    if meta.dev() != done.dev || meta.ino() != done.ino || meta.len() != done.size {
        return Err(std::io::Error::new(ErrorKind::NotFound, "the daemon's file is not the one seen here"));
    }
    let tmp = temp_name(output);
    let placed = match std::fs::hard_link(&done.path, &tmp) {
        Ok(()) => {
            let linked = std::fs::metadata(&tmp)?;
            if linked.ino() != done.ino {
                let _ = std::fs::remove_file(&tmp);
                return Err(std::io::Error::new(ErrorKind::NotFound, "the cache file changed while linking"));
            }
            Placed::Linked
        }
        Err(_) => {
            copy(&done.path, &tmp, done.size).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            Placed::Copied
        }
    };
    let renamed = std::fs::rename(&tmp, output);
    // Renaming a link onto another link of the same file succeeds without removing the source.
    let _ = std::fs::remove_file(&tmp);
    renamed?;
    Ok(placed)
}

fn copy(from: &Path, to: &Path, size: u64) -> std::io::Result<()> {
    let mut src = File::open(from)?;
    let mut dst = File::create_new(to)?;
    // std::io::copy between files uses copy_file_range: the bytes never leave the kernel.
    let copied = std::io::copy(&mut src, &mut dst)?;
    if copied != size {
        return Err(std::io::Error::new(ErrorKind::UnexpectedEof, format!("copied {copied} of {size} bytes")));
    }
    dst.sync_all()
}

/// A name for the temporary file beside `output`.
fn temp_name(output: &Path) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nonce: u64 = rand_u64();
    output.with_file_name(format!(".dfget-{name}-{}-{nonce:016x}", std::process::id()))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(path: &Path) -> Finished {
        let m = std::fs::metadata(path).unwrap();
        Finished { path: path.to_owned(), dev: m.dev(), ino: m.ino(), size: m.len() }
    }

    #[test]
    fn links_on_the_same_filesystem_and_replaces_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache.data");
        std::fs::write(&cache, b"verified bytes").unwrap();
        let out = dir.path().join("out");
        std::fs::write(&out, b"old").unwrap();
        assert_eq!(place(&finished(&cache), &out).unwrap(), Placed::Linked);
        assert_eq!(std::fs::read(&out).unwrap(), b"verified bytes");
        assert_eq!(std::fs::metadata(&out).unwrap().ino(), std::fs::metadata(&cache).unwrap().ino());
        // Again onto the same inode: succeeds and leaves no temporary file behind.
        assert_eq!(place(&finished(&cache), &out).unwrap(), Placed::Linked);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_file_that_is_not_the_reported_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache.data");
        std::fs::write(&cache, b"abc").unwrap();
        let mut f = finished(&cache);
        f.ino += 1;
        let err = place(&f, &dir.path().join("out")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(!dir.path().join("out").exists());
    }

    #[test]
    fn copies_across_filesystems() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache.data");
        std::fs::write(&cache, vec![7u8; 3 << 20]).unwrap();
        // /dev/shm is a different filesystem from the temp dir on these machines when it exists.
        let Ok(other) = tempfile::tempdir_in("/dev/shm") else { return };
        let out = other.path().join("out");
        let placed = place(&finished(&cache), &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), vec![7u8; 3 << 20]);
        if std::fs::metadata(&out).unwrap().dev() != std::fs::metadata(&cache).unwrap().dev() {
            assert_eq!(placed, Placed::Copied);
        }
    }
}

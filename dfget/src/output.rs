//! Where the bytes go and what the user sees meanwhile: informational lines and the progress
//! bar on stderr ([`Ui`], [`Progress`]), and the [`Sink`] (a file or stdout) that hashes what
//! it writes and checks `--digest` at the end.
//!
//! stdout cannot be taken back, so a sink to stdout with a digest to check holds the newest
//! chunk back until the content matched: a reader of a bad or broken download sees a short
//! stream, never a complete wrong one.

use std::fmt::Display;
use std::io::{IsTerminal, Write};

use bytes::Bytes;
use damselfly_types::id::Sha256Digest;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::exit::{self, Exit, Failure, OrExit};

/// What dfget says on stderr besides errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ui {
    /// `--quiet`: no informational lines, no progress.
    quiet: bool,
    /// Draw progress bars (stderr is a terminal, neither `--quiet` nor `--no-progress`).
    bars: bool,
}

impl Ui {
    /// Settings from the flags and whether stderr is a terminal.
    pub(crate) fn new(quiet: bool, no_progress: bool) -> Self {
        Self { quiet, bars: !quiet && !no_progress && std::io::stderr().is_terminal() }
    }

    /// One informational line on stderr, unless `--quiet`.
    pub(crate) fn info(&self, line: impl Display) {
        if !self.quiet {
            eprintln!("dfget: {line}");
        }
    }

    /// A progress display (hidden unless bars are on).
    pub(crate) fn progress(&self) -> Progress {
        let bar = if self.bars { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
        if let Ok(style) = ProgressStyle::with_template("{spinner} {binary_bytes} {binary_bytes_per_sec}") {
            bar.set_style(style);
        }
        Progress { bar, started: false, sized: false }
    }
}

/// Bytes, total, rate and ETA of one download on stderr.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: ProgressBar,
    /// The first position was set: a resumed download starts there, and its rate counts only
    /// what arrives from then on.
    started: bool,
    /// The total is known and shown.
    sized: bool,
}

impl Progress {
    /// Shows `pos` bytes of `total`.
    pub(crate) fn set(&mut self, pos: u64, total: Option<u64>) {
        if let (Some(total), false) = (total, self.sized) {
            self.sized = true;
            self.bar.set_length(total);
            let template = "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}";
            if let Ok(style) = ProgressStyle::with_template(template) {
                self.bar.set_style(style);
            }
        }
        self.bar.set_position(pos);
        if !self.started {
            self.started = true;
            // Bytes already here (a resumed download) are not part of the rate.
            self.bar.tick();
            self.bar.reset_eta();
        }
    }

    /// Removes the bar.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Where a sink writes.
pub(crate) enum Target {
    /// A file (the temporary file beside the output), written from its current position.
    File(std::io::BufWriter<std::fs::File>),
    /// The process's stdout.
    Stdout(tokio::io::Stdout),
}

impl Target {
    /// A file, buffered: at most the buffer is lost when dfget is killed.
    pub(crate) fn file(file: std::fs::File) -> Self {
        Self::File(std::io::BufWriter::with_capacity(256 << 10, file))
    }

    /// stdout.
    pub(crate) fn stdout() -> Self {
        Self::Stdout(tokio::io::stdout())
    }
}

/// Writes a download's bytes, hashing them when a digest is to be checked, and shows progress.
pub(crate) struct Sink {
    target: Target,
    /// The output's name, for messages.
    name: String,
    /// Expected digest and the hash of everything before the current position.
    check: Option<(Sha256Digest, Sha256)>,
    /// Bytes not handed to stdout yet (the newest chunk, while a digest is to be checked).
    held: Option<Bytes>,
    /// Position in the content (bytes already present when resuming, plus those written).
    pos: u64,
    total: Option<u64>,
    progress: Progress,
}

impl Sink {
    /// A sink at position 0 writing to `target`; `name` is the output for messages.
    pub(crate) fn new(target: Target, name: impl Into<String>, digest: Option<Sha256Digest>, ui: &Ui) -> Self {
        let check = digest.map(|d| (d, Sha256::new()));
        Self { target, name: name.into(), check, held: None, pos: 0, total: None, progress: ui.progress() }
    }

    /// Whether the sink checks a digest (and so needs the hash of bytes already present).
    pub(crate) fn checks_digest(&self) -> bool {
        self.check.is_some()
    }

    /// Continues after `pos` bytes already present, whose hash is `prefix`.
    pub(crate) fn resume_at(&mut self, pos: u64, prefix: Option<Sha256>) {
        self.pos = pos;
        if let (Some((_, hasher)), Some(prefix)) = (&mut self.check, prefix) {
            *hasher = prefix;
        }
        self.progress.set(pos, self.total);
    }

    /// The content's total length, when known.
    pub(crate) fn set_total(&mut self, total: Option<u64>) {
        self.total = total;
        self.progress.set(self.pos, total);
    }

    /// The position: bytes of the content written (or present before a resume).
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Writes (or, to stdout with a digest to check, holds back) the next bytes.
    pub(crate) async fn write(&mut self, chunk: Bytes) -> exit::Result<()> {
        if let Some((_, hasher)) = &mut self.check {
            hasher.update(&chunk);
        }
        self.pos += chunk.len() as u64;
        let out = match (&self.target, &self.check) {
            (Target::Stdout(_), Some(_)) => self.held.replace(chunk),
            _ => Some(chunk),
        };
        if let Some(out) = out {
            self.emit(&out).await?;
        }
        self.progress.set(self.pos, self.total);
        Ok(())
    }

    async fn emit(&mut self, bytes: &[u8]) -> exit::Result<()> {
        let name = &self.name;
        match &mut self.target {
            Target::File(w) => w.write_all(bytes).or_exit_with(Exit::Local, || format!("cannot write {name}")),
            Target::Stdout(w) => w.write_all(bytes).await.or_exit_with(Exit::Local, || "cannot write to stdout"),
        }
    }

    /// Checks the digest, writes what was held back, flushes; returns the final position.
    /// On a mismatch nothing more is written.
    pub(crate) async fn finish(mut self) -> exit::Result<u64> {
        self.progress.finish();
        if let Some((expected, hasher)) = self.check.take() {
            let got = Sha256Digest(hasher.finalize().into());
            if got != expected {
                let left = match self.target {
                    Target::File(_) => format!("nothing was written to {}", self.name),
                    Target::Stdout(_) => "stdout stopped short of the end".to_owned(),
                };
                return Err(Failure::new(
                    Exit::Digest,
                    format!("digest mismatch: got {got}, expected {expected}; {left}"),
                ));
            }
        }
        if let Some(held) = self.held.take() {
            self.emit(&held).await?;
        }
        let name = &self.name;
        match &mut self.target {
            Target::File(w) => w.flush().or_exit_with(Exit::Local, || format!("cannot write {name}"))?,
            Target::Stdout(w) => w.flush().await.or_exit_with(Exit::Local, || "cannot write to stdout")?,
        }
        Ok(self.pos)
    }
}

/// Why copying a response into a sink stopped.
pub(crate) enum CopyError {
    /// The response body broke off (the sender's side).
    Body(reqwest::Error),
    /// The sink failed (this side).
    Sink(Failure),
}

/// Copies the response body into the sink.
pub(crate) async fn copy(resp: reqwest::Response, sink: &mut Sink) -> Result<(), CopyError> {
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        sink.write(chunk.map_err(CopyError::Body)?).await.map_err(CopyError::Sink)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Ui {
        Ui::new(true, true)
    }

    #[tokio::test]
    async fn a_file_sink_writes_and_checks_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let digest = Sha256Digest(Sha256::digest(b"hello world").into());
        let mut sink = Sink::new(Target::file(std::fs::File::create(&path).unwrap()), "f", Some(digest), &quiet());
        sink.write(Bytes::from_static(b"hello ")).await.unwrap();
        sink.write(Bytes::from_static(b"world")).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 11);
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
    }

    #[tokio::test]
    async fn a_resumed_sink_hashes_the_prefix_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let digest = Sha256Digest(Sha256::digest(b"hello world").into());
        let mut prefix = Sha256::new();
        prefix.update(b"hello ");
        let mut sink = Sink::new(Target::file(std::fs::File::create(&path).unwrap()), "f", Some(digest), &quiet());
        assert!(sink.checks_digest());
        sink.resume_at(6, Some(prefix));
        sink.write(Bytes::from_static(b"world")).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 11);
    }

    #[tokio::test]
    async fn a_mismatch_is_a_digest_failure() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Sha256Digest([0; 32]);
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let mut sink = Sink::new(Target::file(file), "f", Some(digest), &quiet());
        sink.write(Bytes::from_static(b"x")).await.unwrap();
        let failure = sink.finish().await.unwrap_err();
        assert_eq!(failure.exit, Exit::Digest);
        assert!(failure.error.to_string().contains("nothing was written to f"));
    }
}

//! Direct mode: no daemon answered and no `--supernode` was given, so dfget fetches the URL
//! from the origin itself, like curl: a plain GET with the `-H` headers (redirects followed, 10
//! at most; credentials are not carried to another host), into a partial file beside the
//! output, checked against `--digest`, renamed into place when complete.
//!
//! An interrupted download keeps its partial file ([`crate::partial`]); the rerun asks for the
//! rest (`Range: bytes=N-`) under `If-Range` with the origin's validator, so an origin whose
//! content changed meanwhile sends the new content whole and the download starts over. With
//! `--digest` the partial bytes are read and hashed again first. `-O -` streams to stdout
//! (nothing to resume there).

use std::path::Path;
use std::time::Duration;

use damselfly_types::id::TaskId;
use indicatif::HumanBytes;
use reqwest::header::{CONTENT_RANGE, IF_RANGE, RANGE};
use reqwest::StatusCode;

use crate::exit::{self, Exit, Failure, OrExit};
use crate::output::{copy, CopyError, Sink, Target, Ui};
use crate::partial::{Meta, Partial, Resume};
use crate::{Output, Request};

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 10;
/// Longest wait for a connection to the origin.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence from the origin in the middle of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Downloads `req` straight from its origin.
pub(crate) async fn download(req: &Request, ui: &Ui) -> exit::Result<()> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("dfget/", env!("CARGO_PKG_VERSION")))
        .build()
        .or_exit_with(Exit::OriginFailed, || "cannot set up an HTTP client")?;
    match &req.output {
        Output::Stdout => to_stdout(&client, req, ui).await,
        Output::File(path) => to_file(&client, req, path, ui).await,
    }
}

async fn to_stdout(client: &reqwest::Client, req: &Request, ui: &Ui) -> exit::Result<()> {
    let resp = send(get(client, req, None), false).await?;
    let total = resp.content_length();
    let mut sink = Sink::new(Target::stdout(), "stdout", req.digest, ui);
    sink.set_total(total);
    match copy(resp, &mut sink).await {
        Ok(()) => {}
        Err(CopyError::Body(e)) => return Err(broke_off(e, sink.position(), false)),
        Err(CopyError::Sink(f)) => return Err(f),
    }
    sink.finish().await?;
    Ok(())
}

async fn to_file(client: &reqwest::Client, req: &Request, output: &Path, ui: &Ui) -> exit::Result<()> {
    let task = TaskId::for_url(&req.url, None);
    let mut part = Partial::open(output, &task)?;
    if let Some(resume) = part.resume_point()? {
        let resp = send(get(client, req, Some(&resume)), true).await?;
        match continuation(&resp, &resume, part.meta()) {
            Continuation::Rest { total } => {
                ui.info(format!("resuming {} at {}", output.display(), HumanBytes(resume.offset)));
                return fill(part, resp, Some((resume.offset, total)), req, output, ui).await;
            }
            Continuation::Whole => {
                ui.info("the origin sent the whole file again (it changed since, or ignores ranges): starting over");
                return fill(part, resp, None, req, output, ui).await;
            }
            Continuation::Over => {
                ui.info("the origin cannot continue the interrupted download: starting over");
                part.reset()?;
            }
        }
    }
    let resp = send(get(client, req, None), false).await?;
    if resp.status() == StatusCode::PARTIAL_CONTENT {
        return Err(Failure::new(Exit::OriginFailed, "the origin sent part of the file when asked for all of it"));
    }
    fill(part, resp, None, req, output, ui).await
}

/// How the origin answered a range request.
#[derive(Debug, PartialEq, Eq)]
enum Continuation {
    /// The rest of the same content (of `total` bytes when known).
    Rest { total: Option<u64> },
    /// The whole (new) content.
    Whole,
    /// Neither: forget the partial bytes and ask again.
    Over,
}

fn continuation(resp: &reqwest::Response, resume: &Resume, meta: Option<&Meta>) -> Continuation {
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            Continuation::Over
        } else {
            Continuation::Whole
        };
    }
    let range = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).and_then(parse_content_range);
    let known = meta.and_then(Meta::length);
    match range {
        Some((start, total)) if start == resume.offset && (known.is_none() || total.is_none() || known == total) => {
            Continuation::Rest { total: total.or(known) }
        }
        _ => Continuation::Over,
    }
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) → (START, TOTAL).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let spec = value.trim().strip_prefix("bytes ")?;
    let (range, total) = spec.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end) = (start.trim().parse::<u64>().ok()?, end.trim().parse::<u64>().ok()?);
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok()?),
    };
    Some((start, total))
}

/// Writes the response into the partial file, from `start` (offset, total) or from 0 (a new
/// content), checks it, and moves it into place.
async fn fill(
    mut part: Partial,
    resp: reqwest::Response,
    start: Option<(u64, Option<u64>)>,
    req: &Request,
    output: &Path,
    ui: &Ui,
) -> exit::Result<()> {
    let (writer, offset, total) = match start {
        Some((offset, total)) => (part.restart_at(offset, None)?, offset, total),
        None => {
            let meta = Meta::from_response(&TaskId::for_url(&req.url, None), &resp);
            let total = resp.content_length();
            (part.restart_at(0, Some(meta))?, 0, total)
        }
    };
    let mut sink = Sink::new(Target::file(writer), output.display().to_string(), req.digest, ui);
    sink.set_total(total);
    let prefix = if sink.checks_digest() && offset > 0 { Some(part.hash_prefix(offset).await?) } else { None };
    sink.resume_at(offset, prefix);
    match copy(resp, &mut sink).await {
        Ok(()) => {}
        // Dropping the sink flushes what it buffered: the partial file keeps every byte received.
        Err(CopyError::Body(e)) => return Err(broke_off(e, sink.position(), true)),
        Err(CopyError::Sink(f)) => return Err(f),
    }
    let end = match sink.finish().await {
        Ok(end) => end,
        Err(f) => {
            if f.exit == Exit::Digest {
                part.discard();
            }
            return Err(f);
        }
    };
    if let Some(total) = total.filter(|&t| t != end) {
        return Err(Failure::new(
            Exit::OriginFailed,
            format!("the origin sent {end} of {total} bytes; run the same command again to resume"),
        ));
    }
    part.commit(output)
}

/// The GET for `req`, with the caller's headers (except `Range` and `If-Range`: dfget's own)
/// and, when resuming, the range and its validator.
fn get(client: &reqwest::Client, req: &Request, resume: Option<&Resume>) -> reqwest::RequestBuilder {
    let mut builder = client.get(req.url.clone());
    for (name, value) in &req.headers {
        if !name.eq_ignore_ascii_case("range") && !name.eq_ignore_ascii_case("if-range") {
            builder = builder.header(name.as_str(), value.as_str());
        }
    }
    if let Some(r) = resume {
        builder = builder.header(RANGE, format!("bytes={}-", r.offset)).header(IF_RANGE, r.validator.as_str());
    }
    builder
}

/// Sends the request; an HTTP error status becomes its exit code. `ranged`: a 416 is an
/// answer the caller handles.
async fn send(builder: reqwest::RequestBuilder, ranged: bool) -> exit::Result<reqwest::Response> {
    let resp = builder.send().await.map_err(|e| {
        let exit = if e.is_builder() { Exit::Usage } else { Exit::OriginFailed };
        let what = if e.is_redirect() { "too many redirects" } else { "cannot reach the origin" };
        Failure { exit, error: anyhow::Error::from(e.without_url()).context(what) }
    })?;
    let status = resp.status();
    if status.is_success() || (ranged && status == StatusCode::RANGE_NOT_SATISFIABLE) {
        return Ok(resp);
    }
    let hint = match status.as_u16() {
        401 | 403 => ": check the credentials given with -H",
        _ => "",
    };
    Err(Failure::new(Exit::for_status(status.as_u16()), format!("the origin answered HTTP {status}{hint}")))
}

fn broke_off(e: reqwest::Error, pos: u64, resumable: bool) -> Failure {
    let what = format!(
        "the download from the origin broke off after {}{}",
        HumanBytes(pos),
        if resumable { "; run the same command again to resume" } else { "" }
    );
    Failure { exit: Exit::OriginFailed, error: anyhow::Error::from(e.without_url()).context(what) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(parse_content_range("bytes 100-199/1000"), Some((100, Some(1000))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}

//! Downloads through a dfdaemon's HTTP API: the host's daemon, or the embedded peer.
//!
//! `POST /api/v1/download`. When the daemon shares this host and the output is a file, the
//! answer is a progress stream ending with the daemon's verified cache file, which dfget links
//! or copies into place itself ([`crate::export`]). Otherwise (another host, `-O -`, or a file
//! that cannot be taken from here) the answer is the content, streamed in order as pieces
//! arrive; the daemon holds the last byte until the task is verified and breaks the body off
//! when it fails, and dfget then asks it why (`GET /api/v1/tasks/{id}`).

use std::time::Duration;

use dfdaemon::http::{ApiError, DownloadBody, TaskStatusView, NDJSON, TASK_HEADER};

use crate::exit::{self, Exit, Failure, OrExit};
use crate::export;
use crate::output::{copy, CopyError, Sink, Target, Ui};
use crate::{Output, Request};

/// Longest wait for a connection to a daemon that is not on this host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a daemon answered.
pub(crate) enum Reached {
    /// It answered; how the download went.
    Answered(exit::Result<()>),
    /// Nothing listens at its address.
    NoAnswer,
}

/// The client for daemon APIs (no proxy: daemons are on this host or its network).
pub(crate) fn client() -> exit::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .or_exit_with(Exit::Daemon, || "cannot set up an HTTP client")
}

/// Downloads `req` through the daemon at `daemon`.
pub(crate) async fn download(client: &reqwest::Client, daemon: &str, req: &Request, ui: &Ui) -> Reached {
    // A daemon on this host shares its filesystem: take the finished file from its cache.
    let local = matches!(req.output, Output::File(_)) && same_host(daemon);
    let body = req.body(local);
    match post(client, daemon, &body).await {
        Err(e) if e.is_connect() => Reached::NoAnswer,
        Err(e) => Reached::Answered(Err(lost(daemon, e))),
        Ok(resp) => Reached::Answered(answered(client, daemon, req, resp, ui).await),
    }
}

async fn answered(
    client: &reqwest::Client,
    daemon: &str,
    req: &Request,
    resp: reqwest::Response,
    ui: &Ui,
) -> exit::Result<()> {
    let mut resp = check_status(daemon, resp).await?;
    let is_export =
        resp.headers().get(reqwest::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == NDJSON.as_bytes());
    if is_export {
        if let Output::File(path) = &req.output {
            let mut progress = ui.progress();
            let outcome = export::follow(resp, &mut progress).await;
            progress.finish();
            match outcome.or_exit_with(Exit::Daemon, || format!("the dfdaemon at {daemon} failed"))? {
                export::Outcome::Failed(error, origin_status) => {
                    return Err(Failure::new(
                        Exit::for_daemon_failure(origin_status, &error),
                        format!("download failed: {error}"),
                    ))
                }
                export::Outcome::Done(done) => match export::place(&done, path) {
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot take the file from the daemon's cache: streaming it");
                    }
                },
            }
        }
        let again = post(client, daemon, &req.body(false)).await.map_err(|e| lost(daemon, e))?;
        resp = check_status(daemon, again).await?;
    }
    stream(client, daemon, req, resp, ui).await
}

/// Receives the content: into a temporary file beside the output, renamed into place when
/// complete (and matching `--digest`), or onto stdout.
async fn stream(
    client: &reqwest::Client,
    daemon: &str,
    req: &Request,
    resp: reqwest::Response,
    ui: &Ui,
) -> exit::Result<()> {
    let expected_len = resp.content_length();
    let task = resp.headers().get(TASK_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (target, tmp, name) = match &req.output {
        Output::Stdout => (Target::stdout(), None, "stdout".to_owned()),
        Output::File(path) => {
            let tmp = crate::temp_beside(path)?;
            let file =
                tmp.as_file().try_clone().or_exit_with(Exit::Local, || format!("cannot write {}", path.display()))?;
            (Target::file(file), Some((tmp, path)), path.display().to_string())
        }
    };
    let mut sink = Sink::new(target, name, req.digest, ui);
    sink.set_total(expected_len);
    match copy(resp, &mut sink).await {
        Ok(()) => {}
        Err(CopyError::Sink(f)) => return Err(f),
        // The daemon breaks the body off when the download fails midway: ask it why.
        Err(CopyError::Body(e)) => {
            let pos = sink.position();
            return Err(match task {
                Some(task) => failure_reason(client, daemon, &task).await,
                None => None,
            }
            .unwrap_or_else(|| {
                let what = format!("the dfdaemon's stream broke off after {pos} bytes");
                Failure { exit: Exit::Daemon, error: anyhow::Error::from(e.without_url()).context(what) }
            }));
        }
    }
    if let Some(len) = expected_len.filter(|&l| l != sink.position()) {
        return Err(Failure::new(
            Exit::Daemon,
            format!("the dfdaemon's stream broke off after {} of {len} bytes", sink.position()),
        ));
    }
    sink.finish().await?;
    if let Some((tmp, path)) = tmp {
        tmp.as_file().sync_all().or_exit_with(Exit::Local, || format!("cannot write {}", path.display()))?;
        tmp.persist(path).or_exit_with(Exit::Local, || format!("cannot move the download to {}", path.display()))?;
    }
    Ok(())
}

/// Turns an error answer into a failure with the daemon's reason.
async fn check_status(daemon: &str, resp: reqwest::Response) -> exit::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let Ok(err) = resp.json::<ApiError>().await else {
        return Err(Failure::new(Exit::Daemon, format!("the dfdaemon at {daemon} answered HTTP {status}")));
    };
    let exit = match (status.as_u16(), err.origin_status) {
        (400, None) => Exit::Usage,
        (_, origin) => Exit::for_daemon_failure(origin, &err.error),
    };
    Err(Failure::new(exit, err.error))
}

/// The daemon's account of a failed task, if it has one.
async fn failure_reason(client: &reqwest::Client, daemon: &str, task: &str) -> Option<Failure> {
    let url = format!("{}/api/v1/tasks/{task}", daemon.trim_end_matches('/'));
    let view: TaskStatusView = client.get(url).send().await.ok()?.json().await.ok()?;
    let error = view.error?;
    Some(Failure::new(Exit::for_daemon_failure(view.origin_status, &error), format!("download failed: {error}")))
}

fn lost(daemon: &str, e: reqwest::Error) -> Failure {
    let what = format!("the dfdaemon at {daemon} failed");
    Failure { exit: Exit::Daemon, error: anyhow::Error::from(e.without_url()).context(what) }
}

async fn post(client: &reqwest::Client, daemon: &str, body: &DownloadBody) -> reqwest::Result<reqwest::Response> {
    client.post(format!("{}/api/v1/download", daemon.trim_end_matches('/'))).json(body).send().await
}

/// Whether the daemon URL names this host: a loopback address, or an address of one of this
/// host's interfaces (a daemon listening on the host's own IP, as in a network namespace).
fn same_host(daemon: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(daemon) else { return false };
    let ip: std::net::IpAddr = match url.host() {
        Some(url::Host::Domain(d)) => return d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.into(),
        Some(url::Host::Ipv6(ip)) => ip.into(),
        None => return false,
    };
    // Binding a socket to an address only works for this host's own addresses.
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

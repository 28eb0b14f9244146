//! Exit codes: what a failed download tells a script, and the error type that carries one.
//!
//! Every error path of a download maps to one [`Exit`]; the numbers are part of dfget's
//! interface (documented in `dfget --help`) and never change meaning. A failure the daemon
//! reports carries the origin's HTTP status when the origin answered with an error
//! ([`Exit::for_status`]); otherwise its message says what failed ([`Exit::for_daemon_failure`]).

use std::fmt::Display;

/// Why a download stopped; the process exit code is the discriminant (0 is success).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Bad arguments: unknown flag, invalid URL, header or digest syntax.
    Usage = 1,
    /// The origin has no such file (HTTP 404, 410).
    NotFound = 2,
    /// The origin refused the credentials, or wants some (HTTP 401, 403, 407).
    Denied = 3,
    /// The origin refused the request otherwise (any other HTTP 4xx).
    Refused = 4,
    /// The origin failed or could not be reached (HTTP 5xx, connection, TLS, timeout, a body
    /// that broke off or came out short).
    OriginFailed = 5,
    /// The content does not match `--digest`: nothing was written (a stdout stream stops short).
    Digest = 6,
    /// A local file could not be read or written (the output, its directory, the cache: disk
    /// full, permissions, another dfget writing the same output).
    Local = 7,
    /// No daemon answered and the embedded peer could not join the supernode (`--supernode`
    /// unreachable, enrollment refused).
    NoSwarm = 8,
    /// The daemon or the swarm failed for another reason (its storage, its quota, the
    /// supernode's origin policy, a lost connection to the daemon).
    Daemon = 9,
}

/// The exit code table, for `dfget --help`.
pub(crate) const TABLE: &str = "\
Exit codes:
  0  downloaded (and verified, with --digest)
  1  bad arguments: flags, URL, header or digest syntax
  2  the origin has no such file (HTTP 404, 410)
  3  the origin refused the credentials or wants some (HTTP 401, 403, 407)
  4  the origin refused the request otherwise (other HTTP 4xx)
  5  the origin failed or is unreachable (HTTP 5xx, connection, TLS, timeout, a broken body)
  6  the content does not match --digest (nothing written; stdout stops short)
  7  local I/O: cannot write the output or the cache (disk full, permissions, output busy)
  8  no daemon answered and the embedded peer cannot join --supernode
  9  the daemon or the swarm failed otherwise (its storage or quota, origin policy, lost daemon)";

impl Exit {
    /// The process exit code.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    /// The exit for an origin's HTTP error status.
    pub(crate) fn for_status(status: u16) -> Self {
        match status {
            404 | 410 => Self::NotFound,
            401 | 403 | 407 => Self::Denied,
            400..=499 => Self::Refused,
            _ => Self::OriginFailed,
        }
    }

    /// The exit for a failure the daemon reported: by the origin's status when it has one, else
    /// by what the message says (the daemon's messages name a digest mismatch and an origin
    /// that cannot be reached in fixed words).
    pub(crate) fn for_daemon_failure(origin_status: Option<u16>, message: &str) -> Self {
        if let Some(status) = origin_status {
            return Self::for_status(status);
        }
        let m = message.to_ascii_lowercase();
        if m.contains("digest") && m.contains("does not match") {
            Self::Digest
        } else if ["origin unreachable", "origin request to", "origin body broke off", "origin sent "]
            .iter()
            .any(|p| m.contains(p))
        {
            Self::OriginFailed
        } else {
            Self::Daemon
        }
    }
}

/// A failed download: what to print and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The exit code.
    pub(crate) exit: Exit,
    /// What failed and what to do, for stderr.
    pub(crate) error: anyhow::Error,
}

impl Failure {
    /// A failure with a message.
    pub(crate) fn new(exit: Exit, message: impl Display) -> Self {
        Self { exit, error: anyhow::anyhow!("{message}") }
    }
}

/// A download step's result.
pub(crate) type Result<T, E = Failure> = std::result::Result<T, E>;

/// Attaches an exit code (and a context line) to any error.
pub(crate) trait OrExit<T> {
    /// The error, with `exit`.
    fn or_exit(self, exit: Exit) -> Result<T>;
    /// The error under the context `what`, with `exit`.
    fn or_exit_with<C: Display + Send + Sync + 'static>(self, exit: Exit, what: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<anyhow::Error>> OrExit<T> for std::result::Result<T, E> {
    fn or_exit(self, exit: Exit) -> Result<T> {
        self.map_err(|e| Failure { exit, error: e.into() })
    }

    fn or_exit_with<C: Display + Send + Sync + 'static>(self, exit: Exit, what: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Failure { exit, error: e.into().context(what()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_distinct_codes() {
        assert_eq!(Exit::for_status(404), Exit::NotFound);
        assert_eq!(Exit::for_status(410), Exit::NotFound);
        assert_eq!(Exit::for_status(401), Exit::Denied);
        assert_eq!(Exit::for_status(403), Exit::Denied);
        assert_eq!(Exit::for_status(400), Exit::Refused);
        assert_eq!(Exit::for_status(416), Exit::Refused);
        assert_eq!(Exit::for_status(500), Exit::OriginFailed);
        assert_eq!(Exit::for_status(503), Exit::OriginFailed);
        let codes = [
            Exit::Usage,
            Exit::NotFound,
            Exit::Denied,
            Exit::Refused,
            Exit::OriginFailed,
            Exit::Digest,
            Exit::Local,
            Exit::NoSwarm,
            Exit::Daemon,
        ]
        .map(Exit::code);
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        for code in codes {
            assert!(TABLE.contains(&format!("\n  {code}  ")), "exit code {code} is documented");
        }
    }

    #[test]
    fn daemon_messages_are_classified() {
        let f = Exit::for_daemon_failure;
        assert_eq!(f(Some(404), "origin answered HTTP 404"), Exit::NotFound);
        assert_eq!(f(None, "content digest sha256:aa does not match sha256:bb"), Exit::Digest);
        assert_eq!(f(None, "supernode: content digest sha256:aa does not match the expected sha256:bb"), Exit::Digest);
        assert_eq!(f(None, "origin unreachable: connection refused"), Exit::OriginFailed);
        assert_eq!(f(None, "supernode: origin request to http://h/x failed: reset"), Exit::OriginFailed);
        assert_eq!(f(None, "origin 10.0.0.1:80 is not allowed: it is not on this supernode's list"), Exit::Daemon);
        assert_eq!(f(None, "task does not fit in the cache quota"), Exit::Daemon);
    }
}

//! The registry's access log (combined log format) read incrementally and counted.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use anyhow::Context;

/// Query parameter of the marker requests [`crate::Registry`] sends to settle its log.
pub(crate) const SYNC_QUERY: &str = "damselfly-testkit-sync";

/// One request as the registry logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRecord {
    /// `GET`, `HEAD`, `PUT`, ...
    pub method: String,
    /// The request path without the query: `/v2/demo/app/blobs/sha256:...`.
    pub path: String,
    /// The query string, if any: containerd's mirror requests carry `ns=<registry>`.
    pub query: Option<String>,
    /// The HTTP status of the answer.
    pub status: u16,
    /// Body bytes the registry wrote (0 for `HEAD`; fewer than the blob when the client hung up).
    pub bytes: u64,
    /// Who asked: `containerd/1.6.20~ds1`, `containers/5.23.1 ...` (podman), `skopeo/1.9.3`,
    /// the Go HTTP client of a pull-through registry or of dfdaemon's origin fetch.
    pub user_agent: String,
}

impl AccessRecord {
    /// Parses one combined-log-format line:
    /// `127.0.0.1 - - [27/Nov/2026:08:33:11 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"`.
    /// `None` for any other line (the registry's own messages share the log).
    pub fn parse(line: &str) -> Option<Self> {
        let (head, rest) = line.split_once("] \"")?;
        if !head.contains(" [") {
            return None;
        }
        let (request, rest) = rest.split_once("\" ")?;
        let mut request_parts = request.split(' ');
        let method = request_parts.next()?.to_string();
        let uri = request_parts.next()?;
        if !request_parts.next()?.starts_with("HTTP/") {
            return None;
        }
        let mut fields = rest.splitn(3, ' ');
        let status = fields.next()?.parse().ok()?;
        let bytes = match fields.next()? {
            "-" => 0,
            n => n.parse().ok()?,
        };
        let user_agent = fields.next().and_then(last_quoted).unwrap_or_default().to_string();
        let (path, query) = match uri.split_once('?') {
            Some((path, query)) => (path.to_string(), Some(query.to_string())),
            None => (uri.to_string(), None),
        };
        Some(AccessRecord { method, path, query, status, bytes, user_agent })
    }

    /// Whether this is a request for a blob (`/v2/<name>/blobs/<digest>`, uploads included).
    pub fn is_blob(&self) -> bool {
        self.path.contains("/blobs/")
    }

    /// Whether this is a `GET` of blob `digest` that the registry answered with its bytes
    /// (200 or 206).
    pub fn is_blob_get_of(&self, digest: &str) -> bool {
        self.is_blob_get() && self.path.ends_with(&format!("/blobs/{digest}"))
    }

    /// Whether this is a `GET` of a blob answered with bytes (200 or 206).
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && matches!(self.status, 200 | 206) && self.is_blob() && !self.path.contains("/uploads/")
    }

    /// Whether this is a request for a manifest (`/v2/<name>/manifests/<reference>`).
    pub fn is_manifest(&self) -> bool {
        self.path.contains("/manifests/")
    }

    /// The value of query parameter `name`, undecoded except for `%3A` (`:`), which is how
    /// containerd writes `ns=127.0.0.1%3A5000`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.replace("%3A", ":").replace("%3a", ":"))
    }

    fn is_sync_marker(&self) -> bool {
        self.path == "/v2/" && self.query.as_deref().is_some_and(|q| q.starts_with(SYNC_QUERY))
    }
}

/// The text between the last pair of double quotes of `s`.
fn last_quoted(s: &str) -> Option<&str> {
    let end = s.rfind('"')?;
    let start = s[..end].rfind('"')?;
    Some(&s[start + 1..end])
}

/// A position in a registry's access log, from [`crate::Registry::mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AccessMark(usize);

/// Access records (in log order) and the counts tests assert on.
#[derive(Debug, Clone, Default)]
pub struct AccessLog {
    records: Vec<AccessRecord>,
}

impl AccessLog {
    /// A log of these records, for counting records from elsewhere.
    pub fn new(records: Vec<AccessRecord>) -> Self {
        AccessLog { records }
    }

    /// The records, in the order the registry logged them.
    pub fn records(&self) -> &[AccessRecord] {
        &self.records
    }

    /// `GET`s of blob `digest` answered with bytes (200 or 206).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.records.iter().filter(|r| r.is_blob_get_of(digest)).count()
    }

    /// `GET`s of any blob answered with bytes.
    pub fn all_blob_gets(&self) -> usize {
        self.records.iter().filter(|r| r.is_blob_get()).count()
    }

    /// `HEAD`s of blobs (the supernode's authorization checks), by repository path prefix
    /// (`/v2/<name>/`).
    pub fn blob_heads_per_repository(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for r in self.records.iter().filter(|r| r.is_blob() && r.method == "HEAD") {
            let repo = r.path.split("/blobs/").next().unwrap_or_default().to_owned();
            *m.entry(repo).or_default() += 1;
        }
        m
    }

    /// Requests of any method to any blob path (`HEAD`s, uploads and errors included).
    pub fn blob_requests(&self) -> usize {
        self.records.iter().filter(|r| r.is_blob()).count()
    }

    /// Body bytes of the blob `GET`s answered with bytes: what the registry's disk and network
    /// served for blobs.
    pub fn blob_bytes_served(&self) -> u64 {
        self.records.iter().filter(|r| r.is_blob_get()).map(|r| r.bytes).sum()
    }

    /// Requests of any method to any manifest path.
    pub fn manifest_requests(&self) -> usize {
        self.records.iter().filter(|r| r.is_manifest()).count()
    }

    /// The records whose user agent contains `needle` (`containerd`, `containers/`, `skopeo`).
    pub fn by_user_agent(&self, needle: &str) -> AccessLog {
        AccessLog::new(self.records.iter().filter(|r| r.user_agent.contains(needle)).cloned().collect())
    }
}

/// Reads a log file from where it stopped last time and keeps the parsed records.
pub(crate) struct LogReader {
    path: PathBuf,
    offset: u64,
    /// Every record, marker requests included (marks index into this).
    records: Vec<AccessRecord>,
    /// Bytes after the last newline: a line the registry is still writing.
    partial: Vec<u8>,
}

impl LogReader {
    pub(crate) fn new(path: PathBuf) -> Self {
        LogReader { path, offset: 0, records: Vec::new(), partial: Vec::new() }
    }

    /// Parses what was appended since the last call.
    pub(crate) fn refresh(&mut self) -> anyhow::Result<()> {
        let mut file = std::fs::File::open(&self.path).with_context(|| format!("open {}", self.path.display()))?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = std::mem::take(&mut self.partial);
        let read = file.read_to_end(&mut buf).with_context(|| format!("read {}", self.path.display()))?;
        self.offset += read as u64;
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.partial = buf.split_off(complete);
        let text = String::from_utf8_lossy(&buf);
        self.records.extend(text.lines().filter_map(AccessRecord::parse));
        Ok(())
    }

    /// Whether marker request `n` was logged.
    pub(crate) fn saw_sync(&mut self, n: u64) -> anyhow::Result<bool> {
        self.refresh()?;
        let wanted = format!("{SYNC_QUERY}={n}");
        Ok(self.records.iter().rev().any(|r| r.is_sync_marker() && r.query.as_deref() == Some(wanted.as_str())))
    }

    pub(crate) fn mark(&self) -> AccessMark {
        AccessMark(self.records.len())
    }

    pub(crate) fn all(&self) -> AccessLog {
        self.since(AccessMark(0))
    }

    pub(crate) fn since(&self, mark: AccessMark) -> AccessLog {
        let records = self.records.get(mark.0..).unwrap_or_default();
        AccessLog::new(records.iter().filter(|r| !r.is_sync_marker()).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOB: &str = "sha256:ba939b8572226060c42f36a784490f2323ec6ccd3afb792ab2bb865501e97fd7";

    fn line(method: &str, uri: &str, status: u16, bytes: &str, ua: &str) -> String {
        format!("127.0.0.1 - - [27/Nov/2026:08:33:52 +0000] \"{method} {uri} HTTP/1.1\" {status} {bytes} \"\" \"{ua}\"")
    }

    #[test]
    fn parses_combined_log_lines() {
        let text = line(
            "GET",
            &format!("/v2/demo/app/blobs/{BLOB}?ns=127.0.0.1%3A5987"),
            200,
            "1054720",
            "containerd/1.6.20~ds1",
        );
        let record = AccessRecord::parse(&text).expect("an access line");
        assert_eq!(record.method, "GET");
        assert_eq!(record.path, format!("/v2/demo/app/blobs/{BLOB}"));
        assert_eq!(record.query.as_deref(), Some("ns=127.0.0.1%3A5987"));
        assert_eq!(record.query_param("ns").as_deref(), Some("127.0.0.1:5987"));
        assert_eq!((record.status, record.bytes), (200, 1_054_720));
        assert_eq!(record.user_agent, "containerd/1.6.20~ds1");
        assert!(record.is_blob_get_of(BLOB));

        let podman = line("HEAD", "/v2/", 401, "-", "containers/5.23.1 (github.com/containers/image)");
        let record = AccessRecord::parse(&podman).expect("an access line");
        assert_eq!((record.bytes, record.user_agent.as_str()), (0, "containers/5.23.1 (github.com/containers/image)"));
    }

    #[test]
    fn other_lines_are_skipped() {
        for text in [
            "time=\"2026-11-27T08:33:10Z\" level=info msg=\"listening on 127.0.0.1:5987\" go.version=go1.19.8",
            "=== testkit: starting registry 127.0.0.1:5: docker-registry serve /tmp/c.yml",
            "",
            "127.0.0.1 - - [27/Nov/2026:08:33:52 +0000] \"garbage\" 200 1 \"\" \"x\"",
        ] {
            assert_eq!(AccessRecord::parse(text), None, "{text}");
        }
    }

    #[test]
    fn counts_blob_gets_requests_and_bytes() {
        let records = [
            line("GET", &format!("/v2/a/blobs/{BLOB}"), 200, "100", "x"),
            line("GET", &format!("/v2/a/blobs/{BLOB}"), 206, "10", "x"),
            line("HEAD", &format!("/v2/a/blobs/{BLOB}"), 200, "0", "x"),
            line("GET", &format!("/v2/a/blobs/{BLOB}"), 404, "157", "x"),
            line("GET", "/v2/a/blobs/sha256:other", 200, "7", "x"),
            line("POST", "/v2/a/blobs/uploads/", 202, "0", "x"),
            line("GET", "/v2/a/manifests/v1", 200, "551", "x"),
        ]
        .iter()
        .filter_map(|l| AccessRecord::parse(l))
        .collect();
        let log = AccessLog::new(records);
        assert_eq!(log.blob_gets(BLOB), 2);
        assert_eq!(log.blob_requests(), 6);
        assert_eq!(log.blob_bytes_served(), 117);
        assert_eq!(log.manifest_requests(), 1);
    }

    #[test]
    fn reader_is_incremental_and_keeps_partial_lines() -> anyhow::Result<()> {
        use std::io::Write;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("registry.log");
        let mut file = std::fs::File::create(&path)?;
        let mut reader = LogReader::new(path);
        let first = line("GET", "/v2/a/blobs/sha256:1", 200, "1", "x");
        let marker = line("GET", &format!("/v2/?{SYNC_QUERY}=1"), 200, "2", "x");
        writeln!(file, "{first}\ntime=... level=info msg=noise\n{marker}")?;
        let half = line("GET", "/v2/a/blobs/sha256:2", 200, "2", "x");
        write!(file, "{}", &half[..20])?;
        assert!(reader.saw_sync(1)?);
        assert!(!reader.saw_sync(2)?);
        let mark = reader.mark();
        assert_eq!(reader.all().records().len(), 1, "markers are left out");
        writeln!(file, "{}", &half[20..])?;
        reader.refresh()?;
        let after = reader.since(mark);
        assert_eq!(after.records().len(), 1);
        assert_eq!(after.records()[0].path, "/v2/a/blobs/sha256:2");
        Ok(())
    }
}

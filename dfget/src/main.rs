//! `dfget`: download a URL through the Damselfly swarm, like curl.
//!
//! Three modes, chosen in this order:
//! 1. **Daemon**: the host's dfdaemon (`--daemon`, else `$DFGET_DAEMON`, else
//!    `http://127.0.0.1:65001`) fetches the URL through the swarm ([`daemon`]); on the same
//!    host dfget takes the verified file from its cache ([`export`]), otherwise it streams.
//! 2. **Embedded**: no daemon answered and `--supernode` is given: an in-process peer with a
//!    persistent per-user cache joins the swarm for the download ([`embedded`]); it enrolls
//!    with the join token (`--join-token-file FILE` or `DAMSELFLY_JOIN_TOKEN`).
//! 3. **Direct**: no daemon answered and no `--supernode`: a plain GET from the origin, saying
//!    so once on stderr ([`direct`]).
//!
//! `-O -` writes the content to stdout in every mode. A rerun resumes an interrupted download
//! in every mode: the daemon finished the task meanwhile or resumes it, the embedded peer's
//! cache holds the pieces fetched so far, a direct download keeps its partial file
//! ([`partial`]). Every failure exits with a code from [`exit::TABLE`].
//!
//! `dfget preheat IMAGE ...` ([`preheat`]) asks the supernode to load an image into its cache.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use damselfly_types::id::Sha256Digest;
use damselfly_types::size::{parse_size, ByteSize};
use dfdaemon::http::DownloadBody;

use exit::{Exit, Failure, OrExit};
use output::Ui;

mod daemon;
mod direct;
mod embedded;
mod exit;
mod export;
mod output;
mod partial;
mod preheat;

/// After the flags in `dfget --help`: the modes, the exit codes, the preheat subcommand.
const MODES: &str = "\
Modes: through the dfdaemon at --daemon; when none answers, through an embedded peer of
--supernode; without --supernode, straight from the origin (said once on stderr). -O - writes
to stdout. Rerunning an interrupted download resumes it in every mode.";
const PREHEAT: &str = "Preheat an image into the supernode's cache: dfget preheat IMAGE (see dfget preheat --help)";

/// Download a URL through the Damselfly swarm.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// URL to download (http or https).
    url: String,
    /// Output file, or - for stdout.
    #[arg(short = 'O', long = "output", value_name = "FILE|-")]
    output: PathBuf,
    /// Expected digest, sha256:<hex>; the download fails on a mismatch.
    #[arg(long)]
    digest: Option<String>,
    /// Header for the origin request, 'Name: value'; repeatable (Range is dfget's own).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Swarm group: downloads of one image that name the same group are scheduled as one
    /// swarm; a hint, grants nothing (ignored when downloading straight from the origin).
    #[arg(long, value_name = "KEY")]
    group: Option<String>,
    /// dfdaemon API URL [default: $DFGET_DAEMON or http://127.0.0.1:65001].
    #[arg(
        long,
        env = "DFGET_DAEMON",
        default_value = "http://127.0.0.1:65001",
        hide_env = true,
        hide_default_value = true
    )]
    daemon: String,
    /// Supernode HOST:PORT for an embedded peer when no daemon answers.
    #[arg(long)]
    supernode: Option<String>,
    /// Join token file for the embedded peer (the supernode's DATA_DIR/join-token)
    /// [default: none, the token itself from the environment variable DAMSELFLY_JOIN_TOKEN].
    #[arg(long)]
    join_token_file: Option<PathBuf>,
    /// Cluster CA certificate for the embedded peer; optional, the join token pins the CA.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// The embedded peer's cache [default: $DFGET_CACHE_DIR, else $XDG_CACHE_HOME/damselfly/dfget,
    /// else ~/.cache/damselfly/dfget, else a temporary directory].
    #[arg(long, env = "DFGET_CACHE_DIR", hide_env = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Disk quota of the embedded peer's cache [env: DFGET_CACHE_QUOTA].
    #[arg(long, env = "DFGET_CACHE_QUOTA", hide_env = true, default_value = "10GiB", value_parser = parse_size)]
    cache_quota: ByteSize,
    /// No progress bar (it is also off when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
    /// No progress and no informational lines; errors are still printed.
    #[arg(short = 'q', long)]
    quiet: bool,
}

fn main() -> ExitCode {
    // `dfget preheat ...` is a subcommand; anything else is a download (`dfget URL -O FILE`), so
    // the download's flags and positional URL stay exactly as they were.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "preheat") {
        let args = preheat::PreheatArgs::parse_from(&argv[1..]);
        damselfly_net::telemetry::init_tracing("warn");
        return match runtime().map(|rt| rt.block_on(preheat::run(args))) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) | Err(e) => {
                eprintln!("dfget: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let help = format!("{MODES}\n\n{}\n\n{PREHEAT}", exit::TABLE);
    let parsed = Args::command().after_help(help).try_get_matches_from(argv);
    let args = match parsed.and_then(|m| Args::from_arg_matches(&m)) {
        Ok(args) => args,
        Err(e) => {
            // Help and version are not errors; usage errors exit 1, not clap's 2 (see the table).
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(Exit::Usage.code()) } else { ExitCode::SUCCESS };
        }
    };
    damselfly_net::telemetry::init_tracing(if args.quiet { "error" } else { "warn" });
    let outcome = match runtime() {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => Err(Failure { exit: Exit::Local, error: e }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("dfget: error: {:#}", f.error);
            ExitCode::from(f.exit.code())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")
}

/// What to download, checked.
#[derive(Debug)]
pub(crate) struct Request {
    /// The URL (http or https).
    pub(crate) url: url::Url,
    /// The expected digest.
    pub(crate) digest: Option<Sha256Digest>,
    /// Headers for the origin request.
    pub(crate) headers: Vec<(String, String)>,
    /// The swarm group (`--group`), checked; not used by a direct download.
    pub(crate) group: Option<String>,
    /// Where the content goes.
    pub(crate) output: Output,
}

/// Where the content goes.
#[derive(Debug)]
pub(crate) enum Output {
    /// A file, put in place only when complete (and verified).
    File(PathBuf),
    /// stdout (`-O -`).
    Stdout,
}

impl Request {
    fn from_args(args: &Args, ui: &Ui) -> exit::Result<Self> {
        let url = url::Url::parse(&args.url).or_exit_with(Exit::Usage, || format!("invalid URL {:?}", args.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Failure::new(
                Exit::Usage,
                format!("unsupported URL scheme {:?}: use http or https", url.scheme()),
            ));
        }
        let digest = args.digest.as_deref().map(str::parse::<Sha256Digest>).transpose().or_exit(Exit::Usage)?;
        let mut headers = Vec::new();
        for h in &args.headers {
            let (name, value) = parse_header(h)?;
            if name.eq_ignore_ascii_case("range") || name.eq_ignore_ascii_case("if-range") {
                ui.info(format!("ignoring -H {name}: dfget asks for ranges itself"));
                continue;
            }
            headers.push((name, value));
        }
        let group = match args.group.as_deref() {
            None | Some("") => None,
            Some(g) => {
                damselfly_types::group::check(g)
                    .or_exit_with(Exit::Usage, || format!("--group {g:?} is not a valid group"))?;
                Some(g.to_owned())
            }
        };
        let output = if args.output == Path::new("-") {
            Output::Stdout
        } else if args.output.is_dir() {
            return Err(Failure::new(Exit::Usage, format!("output {} is a directory", args.output.display())));
        } else {
            Output::File(args.output.clone())
        };
        Ok(Self { url, digest, headers, group, output })
    }

    /// The daemon API's request body; `local`: the answer is the cache file's location.
    pub(crate) fn body(&self, local: bool) -> DownloadBody {
        DownloadBody {
            url: self.url.to_string(),
            digest: self.digest.map(|d| d.to_string()),
            headers: self.headers.clone(),
            local,
            group: self.group.clone(),
        }
    }
}

fn parse_header(h: &str) -> exit::Result<(String, String)> {
    let Some((name, value)) = h.split_once(':') else {
        return Err(Failure::new(Exit::Usage, format!("header {h:?} is not 'Name: value'")));
    };
    let name = name.trim();
    if name.is_empty() || name.bytes().any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_')) {
        return Err(Failure::new(Exit::Usage, format!("header name {name:?} is not valid")));
    }
    let value = value.trim();
    if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Err(Failure::new(Exit::Usage, format!("header {name} has a control character in its value")));
    }
    Ok((name.to_owned(), value.to_owned()))
}

async fn run(args: Args) -> exit::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ui = Ui::new(args.quiet, args.no_progress);
    let req = Request::from_args(&args, &ui)?;
    let client = daemon::client()?;
    if let daemon::Reached::Answered(outcome) = daemon::download(&client, &args.daemon, &req, &ui).await {
        return outcome;
    }
    let Some(supernode) = &args.supernode else {
        ui.info(format!("no daemon answered at {}: downloading straight from the origin", args.daemon));
        return direct::download(&req, &ui).await;
    };
    let opts = embedded::EmbeddedOpts {
        supernode: supernode.clone(),
        join_token_file: args.join_token_file.clone(),
        ca_cert: args.ca_cert.clone(),
        cache_dir: args.cache_dir.clone(),
        cache_quota: args.cache_quota,
    };
    let peer = embedded::Embedded::start(&opts, &ui).await?;
    let outcome = match daemon::download(&client, &peer.url, &req, &ui).await {
        daemon::Reached::Answered(outcome) => outcome,
        daemon::Reached::NoAnswer => Err(Failure::new(Exit::Daemon, "the embedded peer stopped answering")),
    };
    peer.stop().await;
    outcome.map_err(|f| {
        if format!("{:#}", f.error).contains("quota") {
            let hint = "the embedded peer's cache is too small (--cache-quota or DFGET_CACHE_QUOTA)";
            Failure { exit: f.exit, error: f.error.context(hint) }
        } else {
            f
        }
    })
}

/// A temporary file in the output's directory, so the final rename is atomic.
pub(crate) fn temp_beside(output: &Path) -> exit::Result<tempfile::NamedTempFile> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".dfget-{name}-"))
        .tempfile_in(&dir)
        .or_exit_with(Exit::Local, || format!("cannot write output {}", output.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse() {
        assert_eq!(parse_header("Authorization: Bearer x:y").unwrap(), ("Authorization".into(), "Bearer x:y".into()));
        assert_eq!(parse_header("novalue").unwrap_err().exit, Exit::Usage);
        assert!(parse_header("bad name: v").is_err());
        assert!(parse_header("X-A: a\nb").is_err());
    }

    #[test]
    fn a_group_is_checked_and_sent_to_the_daemon() {
        let ui = Ui::new(true, true);
        let request = |extra: &[&str]| {
            let argv = ["dfget", "http://origin.example/blob", "-O", "out"].iter().chain(extra);
            Request::from_args(&Args::try_parse_from(argv).unwrap(), &ui)
        };
        assert_eq!(request(&["--group", "sha256:ab"]).unwrap().body(false).group.as_deref(), Some("sha256:ab"));
        assert_eq!(request(&[]).unwrap().body(false).group, None);
        assert_eq!(request(&["--group", ""]).unwrap().body(true).group, None);
        assert_eq!(request(&["--group", "a\tb"]).unwrap_err().exit, Exit::Usage);
        assert_eq!(request(&["--group", &"g".repeat(257)]).unwrap_err().exit, Exit::Usage);
    }
}

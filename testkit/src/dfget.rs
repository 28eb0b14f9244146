//! Running the real `dfget` CLI, alone or many at once.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::bin_path;

/// Runs `dfget ARGS...` with extra environment variables and collects its output.
///
/// Fails only when the binary cannot be found or started; check `output.status` (or use
/// [`ensure_success`]) for how the download went.
pub async fn dfget(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let mut command = Command::new(bin_path("dfget")?);
    command.args(args).env("NO_COLOR", "1").envs(env.iter().copied()).stdin(Stdio::null()).kill_on_drop(true);
    command.output().await.with_context(|| format!("run dfget {}", args.join(" ")))
}

/// Fails, with the exit status and stderr, unless `output` is a successful run.
pub fn ensure_success(output: &Output, what: &str) -> anyhow::Result<()> {
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n--- stderr ---\n{}--- stdout ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(())
}

/// One `dfget URL -O FILE --no-progress [...]` invocation, built step by step, to run now
/// ([`DfgetRun::run`]), start in the background ([`DfgetRun::spawn`]) or run with others at once
/// ([`run_all`]).
///
/// ```no_run
/// # async fn example(cluster: &damselfly_testkit::Cluster, url: &str, digest: &str) -> anyhow::Result<()> {
/// use damselfly_testkit::{run_all, ensure_success};
///
/// let dir = tempfile::tempdir()?;
/// let runs: Vec<_> = cluster
///     .daemons
///     .iter()
///     .enumerate()
///     .map(|(i, d)| d.dfget(url, dir.path().join(format!("out{i}"))).digest(digest))
///     .collect();
/// for (run, output) in runs.iter().zip(run_all(&runs).await?) {
///     ensure_success(&output, &run.to_string())?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DfgetRun {
    args: Vec<String>,
    env: Vec<(String, String)>,
    output: PathBuf,
}

impl DfgetRun {
    /// `dfget URL -O output --no-progress`.
    pub fn new(url: &str, output: impl AsRef<Path>) -> Self {
        let output = output.as_ref().to_path_buf();
        let args =
            vec![url.to_string(), "-O".to_string(), output.to_string_lossy().into_owned(), "--no-progress".to_string()];
        DfgetRun { args, env: Vec::new(), output }
    }

    /// `--digest sha256:HEX`.
    pub fn digest(self, digest: &str) -> Self {
        self.arg("--digest").arg(digest)
    }

    /// `-H 'Name: value'`.
    pub fn header(self, header: &str) -> Self {
        self.arg("-H").arg(header)
    }

    /// `--group KEY`: the downloads of one image that name the same group are one swarm.
    pub fn group(self, key: &str) -> Self {
        self.arg("--group").arg(key)
    }

    /// `--daemon URL`.
    pub fn daemon(self, url: &str) -> Self {
        self.arg("--daemon").arg(url)
    }

    /// `--supernode HOST:PORT` (embedded peer, no daemon).
    pub fn supernode(self, addr: &str) -> Self {
        self.arg("--supernode").arg(addr)
    }

    /// `--join-token-file FILE`, for the embedded peer.
    pub fn join_token_file(self, path: &Path) -> Self {
        self.arg("--join-token-file").arg(&path.to_string_lossy())
    }

    /// `--cache-dir DIR`: the embedded peer's cache (keep tests off `~/.cache`).
    pub fn cache_dir(self, path: &Path) -> Self {
        self.arg("--cache-dir").arg(&path.to_string_lossy())
    }

    /// `--quiet`.
    pub fn quiet(self) -> Self {
        self.arg("--quiet")
    }

    /// Without `--no-progress`: dfget decides itself (no bar, stderr not being a terminal).
    pub fn default_progress(mut self) -> Self {
        self.args.retain(|a| a != "--no-progress");
        self
    }

    /// Any other argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The `-O` file.
    pub fn output_path(&self) -> &Path {
        &self.output
    }

    /// The arguments after `dfget`.
    pub fn args_list(&self) -> &[String] {
        &self.args
    }

    fn command(&self) -> anyhow::Result<Command> {
        let mut command = Command::new(bin_path("dfget")?);
        command
            .args(&self.args)
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(command)
    }

    /// Runs it to the end and returns its output, whatever the exit status.
    pub async fn run(&self) -> anyhow::Result<Output> {
        self.command()?.output().await.with_context(|| format!("run {self}"))
    }

    /// Runs it to the end and fails, with its stderr, unless it succeeded.
    pub async fn run_ok(&self) -> anyhow::Result<Output> {
        let output = self.run().await?;
        ensure_success(&output, &self.to_string())?;
        Ok(output)
    }

    /// Starts it in the background (to kill it halfway, or to start others meanwhile).
    ///
    /// Its stdout and stderr are piped and read only by [`DfgetChild::wait`]: `--no-progress`
    /// keeps them small enough for the pipes.
    pub fn spawn(&self) -> anyhow::Result<DfgetChild> {
        let child = self.command()?.spawn().with_context(|| format!("spawn {self}"))?;
        Ok(DfgetChild { child, description: self.to_string() })
    }
}

impl std::fmt::Display for DfgetRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dfget {}", self.args.join(" "))
    }
}

/// Runs every invocation at the same time; outputs in the same order.
pub async fn run_all(runs: &[DfgetRun]) -> anyhow::Result<Vec<Output>> {
    let children = runs.iter().map(DfgetRun::spawn).collect::<anyhow::Result<Vec<_>>>()?;
    futures_util::future::join_all(children.into_iter().map(DfgetChild::wait)).await.into_iter().collect()
}

/// A `dfget` started in the background; killed when dropped.
#[derive(Debug)]
pub struct DfgetChild {
    child: Child,
    description: String,
}

impl DfgetChild {
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the end and returns its output.
    pub async fn wait(self) -> anyhow::Result<Output> {
        let description = self.description;
        self.child.wait_with_output().await.with_context(|| format!("wait for {description}"))
    }

    /// SIGKILL and wait.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.with_context(|| format!("kill {}", self.description))
    }
}

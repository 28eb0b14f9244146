//! Writing an engine's config file safely: only when its content changes, atomically (a temp
//! file beside it, renamed over it), keeping its permissions, with a timestamped backup of the
//! previous content; and the diff `--dry-run` prints.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;

/// What applying a planned change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The file already had the wanted content: not touched (no write, no backup).
    Unchanged,
    /// The file did not exist and was written.
    Created,
    /// The file was replaced; its previous content is in the backup.
    Replaced {
        /// `FILE.bak-<UTC timestamp>`.
        backup: PathBuf,
    },
    /// `--dry-run`: the change was printed, nothing written.
    DryRun,
}

/// A file's current content (`None`: missing) and the content it should have.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) path: PathBuf,
    pub(crate) before: Option<String>,
    pub(crate) after: String,
}

impl Change {
    /// Whether applying it would change anything.
    pub(crate) fn is_noop(&self) -> bool {
        self.before.as_deref() == Some(self.after.as_str())
    }

    /// Writes `after` unless it is already there; with `dry_run`, prints the diff instead
    /// (to `out`).
    pub(crate) fn apply(&self, dry_run: bool, out: &mut dyn std::io::Write) -> anyhow::Result<Outcome> {
        if self.is_noop() {
            return Ok(Outcome::Unchanged);
        }
        if dry_run {
            let label = self.path.display();
            let before_label = if self.before.is_some() { label.to_string() } else { "/dev/null".into() };
            writeln!(out, "--- {before_label}\n+++ {label} (after dfdaemon configure)")?;
            out.write_all(unified_diff(self.before.as_deref().unwrap_or(""), &self.after, 3).as_bytes())?;
            return Ok(Outcome::DryRun);
        }
        match &self.before {
            None => {
                write_atomically(&self.path, &self.after, None)?;
                Ok(Outcome::Created)
            }
            Some(_) => {
                let backup = backup(&self.path, SystemTime::now())?;
                write_atomically(&self.path, &self.after, Some(&backup))?;
                Ok(Outcome::Replaced { backup })
            }
        }
    }
}

/// Reads `path`: `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Copies `path` to `path.bak-YYYYMMDDTHHMMSSZ` (`-1`, `-2`, ... appended when that exists),
/// permissions included. Returns the backup's path.
pub(crate) fn backup(path: &Path, now: SystemTime) -> anyhow::Result<PathBuf> {
    let stamp: String =
        humantime::format_rfc3339_seconds(now).to_string().chars().filter(|c| !matches!(c, '-' | ':')).collect();
    let base = format!("{}.bak-{stamp}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 0;
    while candidate.exists() {
        n += 1;
        candidate = PathBuf::from(format!("{base}-{n}"));
    }
    std::fs::copy(path, &candidate)
        .with_context(|| format!("cannot back up {} to {}", path.display(), candidate.display()))?;
    Ok(candidate)
}

/// Writes `text` to `path` through a temp file in the same directory renamed over it: a reader
/// (the engine) sees the old file or the new one, never half of one. Keeps the permissions and
/// owner of the file it replaces (`permissions_from`, the backup) or makes it 0644; creates
/// missing parent directories. A symlink is followed: its target is replaced, the link stays.
fn write_atomically(path: &Path, text: &str, permissions_from: Option<&Path>) -> anyhow::Result<()> {
    let resolved = std::fs::canonicalize(path).ok();
    let path = resolved.as_deref().unwrap_or(path);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.dfdaemon-configure-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        match permissions_from {
            Some(from) => {
                let original = std::fs::metadata(from)?;
                file.set_permissions(original.permissions())?;
                let (uid, gid) = (original.uid(), original.gid());
                let written = file.metadata()?;
                if (written.uid(), written.gid()) != (uid, gid) {
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
                }
            }
            None => file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?,
        }
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// One line of a line diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Keep,
    Remove,
    Add,
}

/// Above this many line pairs the diff is not computed (quadratic table): the whole new file
/// is shown instead. Engine config files are a few hundred lines at most.
const DIFF_CELLS_MAX: usize = 4 << 20;

/// A unified diff of `before` → `after` with `context` lines around each change (`@@ -a,b +c,d
/// @@` hunks, as `diff -u` prints them). Empty when they are equal.
pub(crate) fn unified_diff(before: &str, after: &str, context: usize) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    if a.len().saturating_mul(b.len()) > DIFF_CELLS_MAX {
        return b.iter().map(|l| format!("+{l}\n")).collect();
    }
    let ops = edit_script(&a, &b);
    let mut out = String::new();
    let mut i = 0;
    while i < ops.len() {
        if ops[i].0 == Op::Keep {
            i += 1;
            continue;
        }
        // A hunk: from `context` lines before this change to `context` lines after the last
        // change that is at most 2 * context lines from the previous one.
        let start = i.saturating_sub(context);
        let mut end = i;
        while end < ops.len() {
            if ops[end].0 != Op::Keep {
                end += 1;
                continue;
            }
            let run = ops[end..].iter().take_while(|(op, ..)| *op == Op::Keep).count();
            if end + run < ops.len() && run <= 2 * context {
                end += run;
            } else {
                end = (end + context.min(run)).min(ops.len());
                break;
            }
        }
        let (a_start, b_start) = (ops[start].1, ops[start].2);
        let a_len = ops[start..end].iter().filter(|(op, ..)| *op != Op::Add).count();
        let b_len = ops[start..end].iter().filter(|(op, ..)| *op != Op::Remove).count();
        let line_no = |start: usize, len: usize| if len == 0 { start } else { start + 1 };
        let _ = writeln!(out, "@@ -{},{a_len} +{},{b_len} @@", line_no(a_start, a_len), line_no(b_start, b_len));
        for &(op, ai, bi) in &ops[start..end] {
            let _ = match op {
                Op::Keep => writeln!(out, " {}", a[ai]),
                Op::Remove => writeln!(out, "-{}", a[ai]),
                Op::Add => writeln!(out, "+{}", b[bi]),
            };
        }
        i = end;
    }
    out
}

/// The shortest edit script turning `a` into `b` (longest common subsequence), as
/// `(op, index in a, index in b)`: for `Add` the `a` index is where it goes, and vice versa.
fn edit_script(a: &[&str], b: &[&str]) -> Vec<(Op, usize, usize)> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] =
                if a[i] == b[j] { lcs[at(i + 1, j + 1)] + 1 } else { lcs[at(i + 1, j)].max(lcs[at(i, j + 1)]) };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((Op::Keep, i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) {
            // Removals first, as `diff -u` shows a replaced line.
            ops.push((Op::Remove, i, j));
            i += 1;
        } else {
            ops.push((Op::Add, i, j));
            j += 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn diff_shows_changes_with_context() {
        let before = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        let after = "a\nb\nc\nd\nE\nf\ng\nh\ni\nj\nk\n";
        let diff = unified_diff(before, after, 1);
        assert_eq!(diff, "@@ -4,3 +4,3 @@\n d\n-e\n+E\n f\n@@ -10,1 +10,2 @@\n j\n+k\n");
        assert_eq!(unified_diff(before, before, 3), "");
    }

    #[test]
    fn diff_of_a_new_file_adds_every_line() {
        assert_eq!(unified_diff("", "x\ny\n", 3), "@@ -0,0 +1,2 @@\n+x\n+y\n");
    }

    #[test]
    fn close_changes_share_a_hunk() {
        let diff = unified_diff("1\n2\n3\n4\n5\n", "1\nX\n3\nY\n5\n", 1);
        assert_eq!(diff, "@@ -1,5 +1,5 @@\n 1\n-2\n+X\n 3\n-4\n+Y\n 5\n");
    }

    #[test]
    fn apply_writes_backs_up_and_keeps_permissions() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub/daemon.json");
        let mut out = Vec::new();
        let new = Change { path: path.clone(), before: None, after: "one\n".into() };
        assert_eq!(new.apply(true, &mut out)?, Outcome::DryRun);
        assert!(!path.exists(), "a dry run writes nothing");
        assert!(String::from_utf8(out)?.contains("+one"));
        assert_eq!(new.apply(false, &mut std::io::sink())?, Outcome::Created);
        assert_eq!(std::fs::read_to_string(&path)?, "one\n");
        assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o644);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let same = Change { path: path.clone(), before: read_optional(&path)?, after: "one\n".into() };
        assert_eq!(same.apply(false, &mut std::io::sink())?, Outcome::Unchanged);
        let changed = Change { path: path.clone(), before: read_optional(&path)?, after: "two\n".into() };
        let Outcome::Replaced { backup } = changed.apply(false, &mut std::io::sink())? else {
            panic!("expected a replacement")
        };
        assert_eq!(std::fs::read_to_string(&path)?, "two\n");
        assert_eq!(std::fs::read_to_string(&backup)?, "one\n");
        assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600, "permissions kept");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())?.map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temp file left: {names:?}");
        Ok(())
    }

    #[test]
    fn a_symlinked_file_is_replaced_at_its_target() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let target = dir.path().join("real.json");
        let link = dir.path().join("daemon.json");
        std::fs::write(&target, "old")?;
        std::os::unix::fs::symlink(&target, &link)?;
        let change = Change { path: link.clone(), before: read_optional(&link)?, after: "new".into() };
        let Outcome::Replaced { backup } = change.apply(false, &mut std::io::sink())? else {
            panic!("expected a replacement")
        };
        assert!(std::fs::symlink_metadata(&link)?.file_type().is_symlink(), "the link stays a link");
        assert_eq!(std::fs::read_to_string(&target)?, "new");
        assert_eq!(std::fs::read_to_string(backup)?, "old");
        Ok(())
    }

    #[test]
    fn backups_are_timestamped_and_never_overwritten() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("hosts.toml");
        std::fs::write(&path, "x")?;
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let first = backup(&path, now)?;
        assert_eq!(first, dir.path().join("hosts.toml.bak-20231114T221320Z"));
        let second = backup(&path, now)?;
        assert_eq!(second, dir.path().join("hosts.toml.bak-20231114T221320Z-1"));
        Ok(())
    }
}

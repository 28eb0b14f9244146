//! Finding the workspace binaries the tests start.

use std::path::PathBuf;

use anyhow::{bail, Context};

/// Environment variable naming a directory that holds the binaries; overrides the lookup next to
/// the test executable (for example to test a release build: `DAMSELFLY_BIN_DIR=target/release`).
pub const BIN_DIR_ENV: &str = "DAMSELFLY_BIN_DIR";

/// The path of the workspace binary `name` (`supernode`, `dfdaemon`, `dfget`).
///
/// Looks in `$DAMSELFLY_BIN_DIR` when set, else in the profile directory of the running test
/// executable: a test runs as `target/<profile>/deps/<test>-<hash>`, the binaries live in
/// `target/<profile>/`. Fails with what to run when the binary is not there: test builds do not
/// build other packages' binaries.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => profile_dir()?,
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!("binary {name} not built: run `cargo build --workspace --bins` first (looked for {})", path.display());
    }
    Ok(path)
}

/// The Cargo target directory the running test was built in (`target/`, or
/// `$CARGO_TARGET_DIR`): the parent of its profile directory. Tools the tests fetch and the
/// artifacts they keep go under it (`target/test-tools/`, `target/test-artifacts/`).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let profile = profile_dir()?;
    let target = profile.parent().with_context(|| format!("{} has no parent directory", profile.display()))?;
    Ok(target.to_path_buf())
}

fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find the running test executable")?;
    let mut dir = exe.parent().with_context(|| format!("{} has no parent directory", exe.display()))?.to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_names_the_fix() {
        let err = bin_path("no-such-damselfly-binary").expect_err("must not exist");
        let msg = err.to_string();
        assert!(msg.contains("binary no-such-damselfly-binary not built"), "{msg}");
        assert!(msg.contains("cargo build --workspace --bins"), "{msg}");
    }

    #[test]
    fn profile_dir_is_above_deps() -> anyhow::Result<()> {
        let dir = profile_dir()?;
        assert_ne!(dir.file_name().and_then(|n| n.to_str()), Some("deps"));
        Ok(())
    }
}

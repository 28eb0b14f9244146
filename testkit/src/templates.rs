//! The engine configuration examples under `deploy/`, compiled in and filled for tests.
//!
//! Tests use the very files users copy (after the same placeholder substitution), so an example
//! that stops working fails a test.

use anyhow::{bail, Context};
use std::path::Path;

/// `deploy/containerd/hosts.toml`: `{{REGISTRY}}`, `{{MIRROR}}`.
pub const CONTAINERD_HOSTS_TOML: &str = include_str!("../../deploy/containerd/hosts.toml");

/// `deploy/podman/registries.conf`: `{{PREFIX}}`, `{{REGISTRY}}`, `{{MIRROR}}`.
pub const REGISTRIES_CONF: &str = include_str!("../../deploy/podman/registries.conf");

/// `deploy/docker/daemon.json` (no placeholders: it names dfdaemon's default address, which
/// [`crate::docker_daemon_json_for`] replaces).
pub const DOCKER_DAEMON_JSON: &str = include_str!("../../deploy/docker/daemon.json");

/// Replaces every `{{NAME}}` of `values` in `template`, and fails when a `{{...}}` is left over
/// (a placeholder the caller did not fill) or a value was not used (a template that lost one).
///
/// ```
/// let text = damselfly_testkit::fill_template("server = \"http://{{REGISTRY}}\"", &[("REGISTRY", "127.0.0.1:5000")])?;
/// assert_eq!(text, "server = \"http://127.0.0.1:5000\"");
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn fill_template(template: &str, values: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut text = template.to_string();
    for (name, value) in values {
        let placeholder = format!("{{{{{name}}}}}");
        if !text.contains(&placeholder) {
            bail!("the template has no placeholder {placeholder}");
        }
        text = text.replace(&placeholder, value);
    }
    if let Some(start) = text.find("{{") {
        let rest = &text[start..];
        let end = rest.find("}}").map_or(rest.len(), |e| e + 2);
        bail!("placeholder {} left unfilled", &rest[..end]);
    }
    Ok(text)
}

/// Writes `text` to `path`, creating its parent directories.
pub(crate) fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_placeholder() -> anyhow::Result<()> {
        let text = fill_template("a {{X}} b {{Y}} {{X}}", &[("X", "1"), ("Y", "2")])?;
        assert_eq!(text, "a 1 b 2 1");
        Ok(())
    }

    #[test]
    fn leftover_and_unknown_placeholders_fail() {
        let err = fill_template("a {{X}} {{Z}}", &[("X", "1")]).expect_err("Z is left");
        assert!(err.to_string().contains("{{Z}}"), "{err}");
        let err = fill_template("a {{X}}", &[("X", "1"), ("Y", "2")]).expect_err("Y is unused");
        assert!(err.to_string().contains("{{Y}}"), "{err}");
    }

    #[test]
    fn containerd_template_parses_as_toml_with_a_host_table() -> anyhow::Result<()> {
        let text =
            fill_template(CONTAINERD_HOSTS_TOML, &[("REGISTRY", "127.0.0.1:5000"), ("MIRROR", "127.0.0.1:65001")])?;
        let value: toml::Value = toml::from_str(&text)?;
        assert_eq!(value["server"].as_str(), Some("http://127.0.0.1:5000"));
        let caps = &value["host"]["http://127.0.0.1:65001"]["capabilities"];
        assert_eq!(caps.as_array().map(Vec::len), Some(2), "{text}");
        Ok(())
    }

    #[test]
    fn registries_conf_template_parses_as_toml() -> anyhow::Result<()> {
        let text = fill_template(
            REGISTRIES_CONF,
            &[("PREFIX", "central.local"), ("REGISTRY", "127.0.0.1:5000"), ("MIRROR", "127.0.0.1:65001")],
        )?;
        let value: toml::Value = toml::from_str(&text)?;
        let registry = &value["registry"][0];
        assert_eq!(registry["prefix"].as_str(), Some("central.local"));
        assert_eq!(registry["location"].as_str(), Some("127.0.0.1:5000"));
        assert_eq!(registry["mirror"][0]["location"].as_str(), Some("127.0.0.1:65001"));
        assert_eq!(registry["mirror"][0]["insecure"].as_bool(), Some(true));
        Ok(())
    }

    #[test]
    fn docker_daemon_json_is_valid() -> anyhow::Result<()> {
        let value: serde_json::Value = serde_json::from_str(DOCKER_DAEMON_JSON)?;
        assert_eq!(value["registry-mirrors"][0].as_str(), Some("http://127.0.0.1:65001"));
        assert!(value["insecure-registries"].is_array());
        Ok(())
    }
}

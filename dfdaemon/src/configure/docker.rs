//! Docker: `registry-mirrors` (and `insecure-registries` for an http mirror) merged into
//! daemon.json.
//!
//! The top-level keys keep their order and every value this does not change keeps its exact
//! text (nested objects, spacing inside them); the file is re-indented with its own indentation
//! (that of its first key, else two spaces).

use std::fmt;

use anyhow::{bail, Context};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::Mirror;

const MIRRORS: &str = "registry-mirrors";
const INSECURE: &str = "insecure-registries";

/// The content `existing` (`None`: missing) should have so that Docker Hub pulls go through
/// `mirror` first. Returns `existing` itself when nothing needs to change.
pub(crate) fn merge_daemon_json(existing: Option<&str>, mirror: &Mirror) -> anyhow::Result<String> {
    let text = existing.unwrap_or("");
    let mut entries = if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str::<Ordered>(text).context("not valid JSON, or not a JSON object")?.0
    };
    let mut changed = false;
    let url = mirror.url();
    let mirrors = string_list(&entries, MIRRORS)?.unwrap_or_default();
    // Ours first (Docker tries them in order), as the file spells it if it is there already.
    let (ours, others): (Vec<String>, Vec<String>) =
        mirrors.iter().cloned().partition(|m| m.trim_end_matches('/') == url);
    let wanted: Vec<String> = ours.into_iter().take(1).chain(others).collect();
    let wanted = if wanted.first().is_some_and(|m| m.trim_end_matches('/') == url) {
        wanted
    } else {
        std::iter::once(url.clone()).chain(wanted).collect()
    };
    if mirrors != wanted {
        set(&mut entries, MIRRORS, &wanted)?;
        changed = true;
    }
    if mirror.is_plain_http() {
        let mut insecure = string_list(&entries, INSECURE)?.unwrap_or_default();
        if !insecure.iter().any(|h| h == mirror.host()) {
            insecure.push(mirror.host().to_string());
            set(&mut entries, INSECURE, &insecure)?;
            changed = true;
        }
    }
    if !changed {
        return Ok(text.to_string());
    }
    Ok(render(&entries, &indent_of(text)))
}

/// The value of `key` as a list of strings; `None` when absent.
fn string_list(entries: &[(String, Box<RawValue>)], key: &str) -> anyhow::Result<Option<Vec<String>>> {
    let mut found = entries.iter().filter(|(k, _)| k == key);
    let Some((_, raw)) = found.next() else { return Ok(None) };
    if found.next().is_some() {
        bail!("\"{key}\" appears twice");
    }
    let list = serde_json::from_str(raw.get()).with_context(|| format!("\"{key}\" is not a list of strings"))?;
    Ok(Some(list))
}

/// Sets `key` to `list` (one line), in its place or at the end.
fn set(entries: &mut Vec<(String, Box<RawValue>)>, key: &str, list: &[String]) -> anyhow::Result<()> {
    let items: Vec<String> = list.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
    let raw = RawValue::from_string(format!("[{}]", items.join(", ")))?;
    match entries.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = raw,
        None => entries.push((key.to_string(), raw)),
    }
    Ok(())
}

/// One key per line, values as they are.
fn render(entries: &[(String, Box<RawValue>)], indent: &str) -> String {
    if entries.is_empty() {
        return "{}\n".into();
    }
    let lines: Vec<String> = entries
        .iter()
        .map(|(key, raw)| format!("{indent}{}: {}", serde_json::Value::from(key.as_str()), raw.get()))
        .collect();
    format!("{{\n{}\n}}\n", lines.join(",\n"))
}

/// The indentation of the file's first key line, else two spaces.
fn indent_of(text: &str) -> String {
    text.lines()
        .find_map(|line| {
            let rest = line.trim_start_matches([' ', '\t']);
            (rest.starts_with('"') && rest.len() < line.len()).then(|| line[..line.len() - rest.len()].to_string())
        })
        .unwrap_or_else(|| "  ".into())
}

/// A JSON object's entries in file order, each value's text untouched.
struct Ordered(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror() -> Mirror {
        Mirror::parse("http://127.0.0.1:65001").unwrap()
    }

    #[test]
    fn a_new_file_has_the_mirror_and_marks_it_insecure() {
        let text = merge_daemon_json(None, &mirror()).unwrap();
        assert_eq!(
            text,
            "{\n  \"registry-mirrors\": [\"http://127.0.0.1:65001\"],\n  \"insecure-registries\": [\"127.0.0.1:65001\"]\n}\n"
        );
        assert_eq!(merge_daemon_json(Some(&text), &mirror()).unwrap(), text, "idempotent");
        assert_eq!(merge_daemon_json(Some("  \n"), &mirror()).unwrap(), text, "an empty file is no settings");
        let tls = merge_daemon_json(None, &Mirror::parse("https://mirror.local").unwrap()).unwrap();
        assert_eq!(tls, "{\n  \"registry-mirrors\": [\"https://mirror.local\"]\n}\n");
    }

    #[test]
    fn other_keys_keep_their_order_and_text() {
        let user = "{\n    \"log-driver\": \"json-file\",\n    \"log-opts\": {\"max-size\": \"10m\",   \"z\": \"1\", \"a\": \"2\"},\n    \
                    \"registry-mirrors\": [\"https://mirror.corp\", \"http://127.0.0.1:65001/\"],\n    \"debug\": true\n}\n";
        let text = merge_daemon_json(Some(user), &mirror()).unwrap();
        assert_eq!(
            text,
            "{\n    \"log-driver\": \"json-file\",\n    \"log-opts\": {\"max-size\": \"10m\",   \"z\": \"1\", \"a\": \"2\"},\n    \
             \"registry-mirrors\": [\"http://127.0.0.1:65001/\", \"https://mirror.corp\"],\n    \"debug\": true,\n    \
             \"insecure-registries\": [\"127.0.0.1:65001\"]\n}\n"
        );
        assert_eq!(merge_daemon_json(Some(&text), &mirror()).unwrap(), text, "idempotent");
    }

    #[test]
    fn a_file_that_already_has_it_is_left_byte_for_byte() {
        let user = "{\"insecure-registries\":[\"127.0.0.1:65001\",\"10.0.0.1:5000\"],\"registry-mirrors\":[\"http://127.0.0.1:65001/\"]}";
        assert_eq!(merge_daemon_json(Some(user), &mirror()).unwrap(), user);
    }

    #[test]
    fn bad_files_are_refused() {
        for bad in [
            "{\"debug\": tru",
            "[1]",
            "{\"registry-mirrors\": \"http://x\"}",
            "{\"registry-mirrors\": [], \"registry-mirrors\": []}",
        ] {
            assert!(merge_daemon_json(Some(bad), &mirror()).is_err(), "{bad}");
        }
    }
}

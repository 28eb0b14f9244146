//! CRI-O, podman, skopeo, buildah (containers/image): a `[[registry]]` with the dfdaemon as its
//! first `[[registry.mirror]]`, merged into a registries.conf file (v2 format) with `toml_edit`.
//!
//! A drop-in (`registries.conf.d/*.conf`) entry replaces the main file's entry for the same
//! prefix as a whole (containers-registries.conf.d(5)), so when the drop-in has no entry yet and
//! the main file has one, it starts as a copy of the main file's (its location, insecure,
//! blocked and mirrors kept).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Table};

use super::{files, Mirror, MARKER};

/// The registry whose pulls go through the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upstream {
    /// The name image references use (`docker.io`, `reg.example.com:5000`).
    pub(crate) prefix: String,
    /// Where it is (`location`), for a new entry.
    pub(crate) location: String,
    /// Reached over plain HTTP.
    pub(crate) insecure: bool,
}

/// The content `existing` (`None`: missing) should have so that `upstream` is pulled through
/// `mirror` first. `base`: the main file's entry for the prefix, the start of a new entry in a
/// drop-in. Returns `existing` itself when nothing needs to change.
pub(crate) fn merge_registries_conf(
    existing: Option<&str>,
    upstream: &Upstream,
    base: Option<&Table>,
    mirror: &Mirror,
) -> anyhow::Result<String> {
    let text = existing.map_or_else(|| new_file(&upstream.prefix), str::to_string);
    let mut doc: DocumentMut = text.parse().context("not valid TOML")?;
    if doc.contains_key("registries") {
        bail!(
            "the file uses the old v1 format ([registries.search] ...), which cannot be mixed with [[registry]] \
             entries: convert it to v2 (containers-registries.conf(5)) or use a drop-in"
        );
    }
    // A file of comments only (a new drop-in, Debian's registries.conf): toml_edit keeps them
    // after the last table, so they move above the entry added here instead.
    let comments_only = doc.as_table().is_empty();
    let comments = doc.trailing().as_str().unwrap_or_default().to_string();
    if comments_only {
        doc.set_trailing("");
    }
    let registries = doc
        .entry("registry")
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .context("`registry` is not a list of [[registry]] tables")?;
    let found = registries.iter().position(|t| prefix_of(t) == Some(upstream.prefix.as_str()));
    let index = match found {
        Some(i) => i,
        None => {
            let mut entry = base.map_or_else(|| new_entry(upstream), fresh_copy);
            if comments_only && !comments.trim().is_empty() {
                entry.decor_mut().set_prefix(format!("{}\n\n", comments.trim_end()));
            }
            registries.push(entry);
            registries.len() - 1
        }
    };
    let entry = registries.get_mut(index).context("the [[registry]] entry")?;
    if upstream.insecure && entry.get("insecure").and_then(Item::as_bool) != Some(true) {
        entry.insert("insecure", value(true));
    }
    merge_mirror(entry, mirror)?;
    let merged = doc.to_string();
    Ok(if existing.is_some_and(|e| e == merged) { text } else { merged })
}

/// The main registries.conf of a drop-in (`DIR/registries.conf.d/X.conf` →
/// `DIR/registries.conf`); `None` when `path` is not in a `registries.conf.d`.
pub(crate) fn main_file_of(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?;
    (dir.file_name()? == "registries.conf.d").then(|| dir.with_file_name("registries.conf"))
}

/// The `[[registry]]` entry for `prefix` in the file at `path`, if the file exists and has one.
pub(crate) fn entry_in(path: &Path, prefix: &str) -> anyhow::Result<Option<Table>> {
    let Some(text) = files::read_optional(path)? else { return Ok(None) };
    let doc: DocumentMut = text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
    let entries = doc.get("registry").and_then(Item::as_array_of_tables);
    Ok(entries.and_then(|e| e.iter().find(|t| prefix_of(t) == Some(prefix)).cloned()))
}

/// The other drop-ins (`*.conf`) beside `drop_in` that have an entry for `prefix`: whichever
/// of them is read last (by name) decides where `prefix` is pulled from.
pub(crate) fn other_drop_ins_with(drop_in: &Path, prefix: &str) -> Vec<PathBuf> {
    let Some(dir) = drop_in.parent() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conf") && p.file_name() != drop_in.file_name())
        .filter(|p| entry_in(p, prefix).ok().flatten().is_some())
        .collect();
    found.sort();
    found
}

/// Puts `mirror` first in the entry's `[[registry.mirror]]` list, dropping mirrors an earlier
/// run wrote for another address.
fn merge_mirror(entry: &mut Table, mirror: &Mirror) -> anyhow::Result<()> {
    let mirrors = entry
        .entry("mirror")
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .context("`mirror` of the [[registry]] entry is not a list of [[registry.mirror]] tables")?;
    let ours = mirror.host();
    mirrors.retain(|t| location_of(t) == Some(ours) || !is_ours(t));
    let found = mirrors.iter().position(|t| location_of(t) == Some(ours));
    match found {
        Some(i) => {
            let table = mirrors.get_mut(i).context("the mirror entry")?;
            if mirror.is_plain_http() && table.get("insecure").and_then(Item::as_bool) != Some(true) {
                table.insert("insecure", value(true));
            }
            if i > 0 {
                // Rendered by position: take the first one's place.
                let first = mirrors.get(0).and_then(Table::position);
                let mut ours = mirrors.remove(i);
                ours.set_position(first);
                mirrors.insert(0, ours);
            }
        }
        None => mirrors.insert(0, mirror_table(mirror)),
    }
    Ok(())
}

/// A new drop-in: a header only.
fn new_file(prefix: &str) -> String {
    format!(
        "# containers/image (CRI-O, podman, skopeo, buildah): pull {prefix} through the local Damselfly daemon.\n\
         # Written by `dfdaemon configure`; other settings and entries added here are kept.\n"
    )
}

fn new_entry(upstream: &Upstream) -> Table {
    let mut table = Table::new();
    table.insert("prefix", value(&upstream.prefix));
    table.insert("location", value(&upstream.location));
    if upstream.insecure {
        table.insert("insecure", value(true));
    }
    table
}

/// The `[[registry.mirror]]` table, with the marker comment above it.
fn mirror_table(mirror: &Mirror) -> Table {
    let mut table = Table::new();
    table
        .decor_mut()
        .set_prefix(format!("\n# {MARKER}: the local dfdaemon, tried first; the registry itself when it fails.\n"));
    table.insert("location", value(mirror.host()));
    if mirror.is_plain_http() {
        table.insert("insecure", value(true));
    }
    table
}

/// A copy of another file's entry, its values and mirrors only (no layout or positions of the
/// other document).
fn fresh_copy(from: &Table) -> Table {
    let mut table = Table::new();
    for (key, item) in from.iter() {
        match item {
            Item::Value(v) => {
                table.insert(key, value(v.clone()));
            }
            Item::ArrayOfTables(list) if key == "mirror" => {
                let mut copies = ArrayOfTables::new();
                for mirror in list.iter() {
                    copies.push(fresh_copy(mirror));
                }
                table.insert(key, Item::ArrayOfTables(copies));
            }
            _ => {}
        }
    }
    table
}

/// The name an entry matches: `prefix`, else `location` (containers-registries.conf(5)).
fn prefix_of(entry: &Table) -> Option<&str> {
    entry.get("prefix").or_else(|| entry.get("location")).and_then(Item::as_str)
}

fn location_of(mirror: &Table) -> Option<&str> {
    mirror.get("location").and_then(Item::as_str)
}

fn is_ours(table: &Table) -> bool {
    table.decor().prefix().and_then(|p| p.as_str()).is_some_and(|p| p.contains(MARKER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(insecure: bool) -> Upstream {
        Upstream { prefix: "docker.io".into(), location: "docker.io".into(), insecure }
    }

    fn mirror(text: &str) -> Mirror {
        Mirror::parse(text).unwrap()
    }

    fn parsed(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_new_drop_in_mirrors_the_registry() {
        let text = merge_registries_conf(None, &upstream(false), None, &mirror("127.0.0.1:65001")).unwrap();
        let value = parsed(&text);
        let entry = &value["registry"][0];
        assert_eq!(entry["prefix"].as_str(), Some("docker.io"));
        assert_eq!(entry["location"].as_str(), Some("docker.io"));
        assert!(entry.get("insecure").is_none(), "{text}");
        assert_eq!(entry["mirror"][0]["location"].as_str(), Some("127.0.0.1:65001"));
        assert_eq!(entry["mirror"][0]["insecure"].as_bool(), Some(true));
        assert!(value.get("unqualified-search-registries").is_none(), "a drop-in leaves search to the main file");
        let again = merge_registries_conf(Some(&text), &upstream(false), None, &mirror("127.0.0.1:65001")).unwrap();
        assert_eq!(again, text, "idempotent");
    }

    #[test]
    fn the_users_entries_stay_and_the_mirror_goes_first() {
        let user = "# Debian's comments\nunqualified-search-registries = [\"docker.io\"]\n\n\
                    [[registry]]\nprefix = \"quay.io\"\nlocation = \"quay.io\"\n\n\
                    [[registry]]\n# hub\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\n\
                    [[registry.mirror]]\nlocation = \"mirror.corp:5000\"\n\n\
                    [aliases]\n\"app\" = \"docker.io/library/app\"\n";
        let text = merge_registries_conf(Some(user), &upstream(true), None, &mirror("http://127.0.0.1:65001")).unwrap();
        let value = parsed(&text);
        assert_eq!(value["registry"][0]["prefix"].as_str(), Some("quay.io"));
        let hub = &value["registry"][1];
        assert_eq!(hub["insecure"].as_bool(), Some(true));
        let locations: Vec<_> =
            hub["mirror"].as_array().unwrap().iter().map(|m| m["location"].as_str().unwrap()).collect();
        assert_eq!(locations, ["127.0.0.1:65001", "mirror.corp:5000"]);
        // The file order is what containers/image uses.
        let ours = text.find("location = \"127.0.0.1:65001\"").unwrap();
        assert!(ours < text.find("location = \"mirror.corp:5000\"").unwrap(), "{text}");
        assert!(ours > text.find("prefix = \"docker.io\"").unwrap(), "{text}");
        assert!(text.starts_with("# Debian's comments\n") && text.contains("# hub\n"), "{text}");
        assert_eq!(value["aliases"]["app"].as_str(), Some("docker.io/library/app"));
        let again = merge_registries_conf(Some(&text), &upstream(true), None, &mirror("127.0.0.1:65001")).unwrap();
        assert_eq!(again, text, "idempotent");
    }

    #[test]
    fn an_existing_mirror_entry_moves_first_and_a_stale_one_of_ours_goes() {
        let old = merge_registries_conf(None, &upstream(false), None, &mirror("10.0.0.1:1")).unwrap();
        let text = merge_registries_conf(Some(&old), &upstream(false), None, &mirror("127.0.0.1:65001")).unwrap();
        let value = parsed(&text);
        assert_eq!(value["registry"][0]["mirror"].as_array().unwrap().len(), 1, "{text}");
        assert_eq!(text.matches(MARKER).count(), 1);

        let user = "[[registry]]\nlocation = \"docker.io\"\n\n[[registry.mirror]]\nlocation = \"a:1\"\n\n\
                    [[registry.mirror]]\nlocation = \"127.0.0.1:65001\"\n";
        let text = merge_registries_conf(Some(user), &upstream(false), None, &mirror("127.0.0.1:65001")).unwrap();
        assert!(text.find("\"127.0.0.1:65001\"").unwrap() < text.find("\"a:1\"").unwrap(), "{text}");
        let value = parsed(&text);
        assert_eq!(value["registry"].as_array().unwrap().len(), 1, "matched by location: {text}");
        assert_eq!(value["registry"][0]["mirror"][0]["insecure"].as_bool(), Some(true));
        let again = merge_registries_conf(Some(&text), &upstream(false), None, &mirror("127.0.0.1:65001")).unwrap();
        assert_eq!(again, text, "idempotent");
    }

    #[test]
    fn a_drop_in_starts_from_the_main_files_entry() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let main = dir.path().join("registries.conf");
        std::fs::write(
            &main,
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"hub.corp\"\nblocked = false\n\n\
             [[registry.mirror]]\nlocation = \"mirror.corp\"\n",
        )?;
        let drop_in = dir.path().join("registries.conf.d/50-damselfly.conf");
        assert_eq!(main_file_of(&drop_in), Some(main.clone()));
        assert_eq!(main_file_of(&main), None);
        std::fs::create_dir(dir.path().join("registries.conf.d"))?;
        std::fs::write(dir.path().join("registries.conf.d/zz.conf"), "[[registry]]\nlocation = \"docker.io\"\n")?;
        std::fs::write(dir.path().join("registries.conf.d/aa.conf"), "[[registry]]\nlocation = \"quay.io\"\n")?;
        assert_eq!(other_drop_ins_with(&drop_in, "docker.io"), [dir.path().join("registries.conf.d/zz.conf")]);
        let base = entry_in(&main, "docker.io")?;
        let text = merge_registries_conf(None, &upstream(false), base.as_ref(), &mirror("127.0.0.1:65001"))?;
        let value = parsed(&text);
        let entry = &value["registry"][0];
        assert_eq!(entry["location"].as_str(), Some("hub.corp"), "{text}");
        let locations: Vec<_> =
            entry["mirror"].as_array().unwrap().iter().map(|m| m["location"].as_str().unwrap()).collect();
        assert_eq!(locations, ["127.0.0.1:65001", "mirror.corp"], "{text}");
        Ok(())
    }

    #[test]
    fn v1_files_and_other_shapes_are_refused() {
        for bad in [
            "[registries.search]\nregistries = []\n",
            "registry = 1\n",
            "[[registry]]\nprefix = \"docker.io\"\nmirror = 2\n",
            "a =",
        ] {
            let upstream = Upstream { prefix: "docker.io".into(), location: "docker.io".into(), insecure: false };
            assert!(merge_registries_conf(Some(bad), &upstream, None, &mirror("h:1")).is_err(), "{bad}");
        }
    }
}

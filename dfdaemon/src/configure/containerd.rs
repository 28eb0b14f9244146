//! containerd: `<config dir>/<registry>/hosts.toml`, merged with `toml_edit` (comments and
//! layout kept).
//!
//! containerd tries the `[host]` entries in file order and falls back to `server` when they all
//! fail, so the mirror's entry goes first; the user's other entries stay, after it.

use anyhow::Context;
use toml_edit::{value, Array, DocumentMut, Item, Key, Table};

use super::{Mirror, MARKER};

/// What to do with the file's `server` (the registry itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Server {
    /// The user named the scheme: `server` becomes this URL.
    Set(String),
    /// Only when the file has no `server`: the default for the registry.
    IfMissing(String),
}

impl Server {
    fn url(&self) -> &str {
        match self {
            Server::Set(url) | Server::IfMissing(url) => url,
        }
    }
}

/// Capabilities the mirror gets: it serves pulls and resolves tags (manifests).
const CAPABILITIES: [&str; 2] = ["pull", "resolve"];

/// The content `existing` (a hosts.toml, `None` when missing) should have so that `registry` is
/// pulled through `mirror` first: `server` per `server`, a `[host."<mirror>"]` entry first with
/// pull and resolve, entries an earlier run wrote for another mirror address removed, all else
/// kept. Returns `existing` itself when nothing needs to change.
pub(crate) fn merge_hosts_toml(
    existing: Option<&str>,
    registry: &str,
    server: &Server,
    mirror: &Mirror,
) -> anyhow::Result<String> {
    let text = match existing {
        Some(text) => text.to_string(),
        None => new_file(registry, server.url()),
    };
    let mut doc: DocumentMut = text.parse().context("not valid TOML")?;
    set_server(&mut doc, server)?;
    let host = doc
        .entry("host")
        .or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        })
        .as_table_mut()
        .context("`host` is not a table of [host.\"URL\"] sections")?;
    let ours = mirror.url();
    host.retain(|key, item| same_url(key, &ours) || !is_ours(item));
    let key = host.iter().map(|(k, _)| k.to_string()).find(|k| same_url(k, &ours));
    match key {
        Some(key) => {
            let entry = host
                .get_mut(&key)
                .and_then(Item::as_table_mut)
                .with_context(|| format!("[host.\"{key}\"] is not a table"))?;
            add_capabilities(entry, &key)?;
            move_first(host, &key);
        }
        None => {
            host.insert(&ours, Item::Table(mirror_table()));
            move_first(host, &ours);
        }
    }
    let merged = doc.to_string();
    // Unchanged input comes back byte for byte; keep it exactly when nothing changed.
    Ok(if existing.is_some_and(|e| e == merged) { text } else { merged })
}

/// A new file: a header and `server` (the mirror's entry is merged in like into any file).
fn new_file(registry: &str, server: &str) -> String {
    format!(
        "# containerd: pull {registry} through the local Damselfly daemon (dfdaemon).\n\
         # Written by `dfdaemon configure containerd`; other settings and [host] entries added here are kept.\n\
         server = {}\n",
        toml_edit::Value::from(server)
    )
}

/// The `[host."<mirror>"]` table, with the marker comment above it.
fn mirror_table() -> Table {
    let mut table = Table::new();
    table.decor_mut().set_prefix(format!(
        "\n# {MARKER}: the local dfdaemon, tried first; containerd falls back to `server` when it fails.\n"
    ));
    for (key, item) in [("capabilities", value(Array::from_iter(CAPABILITIES))), ("skip_verify", value(false))] {
        table.insert(key, item);
        if let Some(mut key) = table.key_mut(key) {
            key.leaf_decor_mut().set_prefix("  ");
        }
    }
    table
}

fn set_server(doc: &mut DocumentMut, server: &Server) -> anyhow::Result<()> {
    match doc.get_mut("server") {
        None => {
            doc.insert("server", value(server.url()));
        }
        Some(item) => {
            let current = item.as_value_mut().filter(|v| v.is_str()).context("`server` is not a string")?;
            if let Server::Set(url) = server {
                if current.as_str() != Some(url.as_str()) {
                    let decor = current.decor().clone();
                    *current = url.as_str().into();
                    *current.decor_mut() = decor;
                }
            }
        }
    }
    Ok(())
}

/// Adds pull and resolve to an existing entry's capabilities (others, such as push, stay).
fn add_capabilities(entry: &mut Table, key: &str) -> anyhow::Result<()> {
    let capabilities = entry
        .entry("capabilities")
        .or_insert_with(|| value(Array::new()))
        .as_array_mut()
        .with_context(|| format!("[host.\"{key}\"] capabilities is not a list"))?;
    for wanted in CAPABILITIES {
        if !capabilities.iter().any(|c| c.as_str() == Some(wanted)) {
            capabilities.push(wanted);
        }
    }
    Ok(())
}

/// Makes `key` the first `[host]` entry, in the table and in the file (toml_edit renders tables
/// by their position in the original document). No-op when it already is.
fn move_first(host: &mut Table, key: &str) {
    let first = host.iter().next().map(|(k, _)| k.to_string());
    if first.as_deref() == Some(key) {
        return;
    }
    let first_position = host.iter().filter_map(|(_, item)| item.as_table().and_then(Table::position)).min();
    let keys: Vec<String> = host.iter().map(|(k, _)| k.to_string()).collect();
    let mut entries: Vec<(Key, Item)> = keys.iter().filter_map(|k| host.remove_entry(k)).collect();
    if let Some(i) = entries.iter().position(|(k, _)| k.get() == key) {
        let mut ours = entries.remove(i);
        if let Some(table) = ours.1.as_table_mut() {
            table.set_position(first_position);
        }
        entries.insert(0, ours);
    }
    for (k, item) in entries {
        host.insert_formatted(&k, item);
    }
}

/// Whether a `[host]` entry carries the marker: written by an earlier run.
fn is_ours(item: &Item) -> bool {
    item.as_table().and_then(|t| t.decor().prefix()).and_then(|p| p.as_str()).is_some_and(|p| p.contains(MARKER))
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;

    /// The `[host]` keys of a hosts.toml in file order (the order containerd tries them).
    fn host_keys(text: &str) -> anyhow::Result<Vec<String>> {
        let value: toml::Table = toml::from_str(text)?;
        let Some(host) = value.get("host") else { bail!("no host table") };
        let host = host.as_table().context("host")?;
        // toml::Table keeps keys sorted; the order that matters is the file's.
        let mut keys: Vec<(usize, String)> =
            host.keys().map(|k| (text.find(&format!("[host.\"{k}\"]")).unwrap_or(usize::MAX), k.clone())).collect();
        keys.sort();
        Ok(keys.into_iter().map(|(_, k)| k).collect())
    }

    fn mirror() -> Mirror {
        Mirror::parse("http://127.0.0.1:65001").unwrap()
    }

    fn merge(existing: Option<&str>, server: &Server) -> String {
        merge_hosts_toml(existing, "reg.example.com:5000", server, &mirror()).unwrap()
    }

    #[test]
    fn a_new_file_has_server_and_the_mirror() -> anyhow::Result<()> {
        let text = merge(None, &Server::IfMissing("https://reg.example.com:5000".into()));
        let value: toml::Table = toml::from_str(&text)?;
        assert_eq!(value["server"].as_str(), Some("https://reg.example.com:5000"));
        let entry = &value["host"]["http://127.0.0.1:65001"];
        assert_eq!(entry["capabilities"], toml::Value::Array(vec!["pull".into(), "resolve".into()]));
        assert_eq!(entry["skip_verify"].as_bool(), Some(false));
        assert!(text.starts_with("# containerd: pull reg.example.com:5000"), "{text}");
        assert_eq!(merge(Some(&text), &Server::IfMissing("https://other".into())), text, "idempotent");
        Ok(())
    }

    #[test]
    fn user_entries_comments_and_server_are_kept_and_the_mirror_goes_first() -> anyhow::Result<()> {
        let user = "# my registry\nserver = \"https://reg.example.com:5000\" # the real one\n\n\
                    [host.\"https://backup.example.com\"]\n  capabilities = [\"pull\"]\n  ca = \"/etc/ca.pem\"\n";
        let text = merge(Some(user), &Server::IfMissing("https://ignored".into()));
        assert!(text.contains("# my registry\nserver = \"https://reg.example.com:5000\" # the real one\n"), "{text}");
        assert!(text.contains("  ca = \"/etc/ca.pem\"\n"), "{text}");
        assert_eq!(host_keys(&text)?, ["http://127.0.0.1:65001", "https://backup.example.com"], "{text}");
        assert!(text.contains(MARKER));
        assert_eq!(merge(Some(&text), &Server::IfMissing("https://ignored".into())), text, "idempotent");
        let set = merge(Some(&text), &Server::Set("http://reg.example.com:5000".into()));
        assert!(set.contains("server = \"http://reg.example.com:5000\" # the real one\n"), "{set}");
        Ok(())
    }

    #[test]
    fn an_existing_mirror_entry_is_completed_and_moved_first() -> anyhow::Result<()> {
        let user = "server = \"https://r\"\n\n[host.\"https://first\"]\n  capabilities = [\"pull\"]\n\n\
                    [host.\"http://127.0.0.1:65001/\"]\n  capabilities = [\"push\"]\n";
        let text = merge(Some(user), &Server::IfMissing("https://r".into()));
        assert_eq!(host_keys(&text)?, ["http://127.0.0.1:65001/", "https://first"], "{text}");
        assert!(text.contains("capabilities = [\"push\", \"pull\", \"resolve\"]"), "{text}");
        assert_eq!(merge(Some(&text), &Server::IfMissing("https://r".into())), text, "idempotent");
        Ok(())
    }

    #[test]
    fn an_earlier_run_for_another_mirror_address_is_replaced() -> anyhow::Result<()> {
        let old = merge_hosts_toml(None, "r", &Server::IfMissing("https://r".into()), &Mirror::parse("10.0.0.1:1")?)?;
        let text = merge(Some(&old), &Server::IfMissing("https://r".into()));
        assert_eq!(host_keys(&text)?, ["http://127.0.0.1:65001"], "{text}");
        assert_eq!(text.matches(MARKER).count(), 1, "{text}");
        Ok(())
    }

    #[test]
    fn files_that_are_not_hosts_toml_are_refused() {
        for bad in ["server = ", "host = 3\n", "server = 1\n", "[host.\"http://127.0.0.1:65001\"]\ncapabilities = 1\n"]
        {
            assert!(
                merge_hosts_toml(Some(bad), "r", &Server::IfMissing("https://r".into()), &mirror()).is_err(),
                "{bad}"
            );
        }
    }
}

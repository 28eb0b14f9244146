//! The pieces every status view is made of: escaping, number formats, bars and the page shell.
//!
//! Everything that comes from outside (task ids, peer ids, addresses) goes through [`Esc`];
//! numbers are formatted here. Writing into a `String` cannot fail, so the views return
//! `fmt::Result` only to use `?`.

use std::fmt::{self, Write as _};

/// The page's stylesheet (inline: the page needs nothing else but its script).
const STYLE: &str = include_str!("style.css");

/// Text escaped for HTML element content and quoted attribute values.
pub(super) struct Esc<'a>(pub(super) &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// `n` bytes in binary units: `512 B`, `1.5 KiB`, `12.3 MiB`, `4.00 GiB`.
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let digits = if value < 10.0 { 2 } else { 1 };
    format!("{value:.digits$} {}", UNITS[unit])
}

/// A rate in bytes per second.
pub(super) fn rate(n: u64) -> String {
    format!("{}/s", bytes(n))
}

/// `part` as a fraction of `whole` (0 when `whole` is 0), clamped to 0..=1.
pub(super) fn fraction(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 / whole as f64).clamp(0.0, 1.0)
    }
}

/// A fraction as a percentage, `42%` (one decimal below 10%).
pub(super) fn percent(f: f64) -> String {
    let p = f * 100.0;
    if p > 0.0 && p < 10.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// A duration in seconds, `1h 02m`, `3m 20s`, `45s`.
pub(super) fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m"),
    }
}

/// A long id shortened for a table cell: `sha256:` and 12 hex digits, or the first 12
/// characters (the full id goes in the cell's `title`).
pub(super) fn short_id(id: &str) -> String {
    let (prefix, rest) = id.split_once(':').map_or(("", id), |(p, r)| (p, r));
    let cut: String = rest.chars().take(12).collect();
    let more = if rest.chars().count() > 12 { "…" } else { "" };
    if prefix.is_empty() {
        format!("{cut}{more}")
    } else {
        format!("{prefix}:{cut}{more}")
    }
}

/// The link to a task's view (the id percent-encoded as one path segment).
pub(super) fn task_href(id: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    format!("/status/task/{encoded}")
}

/// A horizontal bar filled to `f` (0..=1), with an optional colour class.
pub(super) fn bar(out: &mut String, f: f64, class: &str) -> fmt::Result {
    write!(out, r#"<span class="bar {class}"><span style="width:{:.1}%"></span></span>"#, f.clamp(0.0, 1.0) * 100.0)
}

/// One summary tile: a label, a big value and a small line; `key` and `raw` become
/// `data-metric` and `data-value` (exact numbers for scripts and tests).
pub(super) fn tile(out: &mut String, key: &str, label: &str, value: &str, sub: &str, raw: u64) -> fmt::Result {
    write!(
        out,
        r#"<div class="tile" data-metric="{}" data-value="{raw}"><div class="k">{}</div><div class="v">{}</div><div class="s">{}</div></div>"#,
        Esc(key),
        Esc(label),
        Esc(value),
        Esc(sub)
    )
}

/// The whole page around a view's `body`: head, header, and the `#live` element the script
/// refreshes (`generated` changes on every render).
pub(super) fn page(title: &str, kind: &str, generated_ms: u64, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + STYLE.len() + 1024);
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>{title} · Damselfly</title>
<style>{STYLE}</style>
<script src="/status/app.js" defer></script>
</head><body data-page="{kind}">
<header><h1><a href="/status">Damselfly</a></h1><span class="muted">supernode status</span><span id="live-state" class="muted" aria-live="polite"></span></header>
<main id="live" data-generated="{generated_ms}">
{body}</main>
</body></html>
"#,
        title = Esc(title),
        kind = Esc(kind),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_special_character() {
        let text = format!("{}", Esc(r#"<script>alert("x" & 'y')</script>"#));
        assert_eq!(text, "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;");
        assert_eq!(format!("{}", Esc("plain ünïcode")), "plain ünïcode");
        assert_eq!(format!("{}", Esc("")), "");
    }

    #[test]
    fn formats_numbers_for_people() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.00 KiB");
        assert_eq!(bytes(3 << 20), "3.00 MiB");
        assert_eq!(bytes(48 << 20), "48.0 MiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(rate(2048), "2.00 KiB/s");
        assert_eq!(percent(fraction(1, 3)), "33%");
        assert_eq!(percent(fraction(1, 200)), "0.5%");
        assert_eq!(percent(fraction(5, 0)), "0%");
        assert_eq!(fraction(7, 5), 1.0);
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(200), "3m 20s");
        assert_eq!(duration(3725), "1h 02m");
    }

    #[test]
    fn ids_are_shortened_and_links_encoded() {
        let id = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_id(&id), "sha256:abababababab…");
        assert_eq!(short_id("short"), "short");
        assert_eq!(task_href(&id), format!("/status/task/sha256%3A{}", "ab".repeat(32)));
        assert_eq!(task_href("a/b?c"), "/status/task/a%2Fb%3Fc");
    }
}

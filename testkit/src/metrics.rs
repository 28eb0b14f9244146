//! A parser for the Prometheus text exposition format (and the OpenMetrics text that
//! `prometheus-client` writes), for asserting on what the binaries count.

use std::collections::BTreeMap;

use anyhow::{bail, Context};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name as written, suffix included (`damselfly_dfdaemon_upload_bytes_total`).
    pub name: String,
    /// Label pairs in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn matches(&self, wanted: &[(&str, &str)]) -> bool {
        wanted.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// A parsed `/metrics` page.
///
/// Lookups sum over every label set, and a name matches with or without the `_total` suffix of
/// counters (OpenMetrics declares `# TYPE x counter` and writes `x_total`):
///
/// ```
/// use damselfly_testkit::Metrics;
///
/// let page = r#"
/// ## HELP damselfly_dfdaemon_download_bytes Bytes downloaded, by source.
/// ## TYPE damselfly_dfdaemon_download_bytes counter
/// damselfly_dfdaemon_download_bytes_total{source="peer"} 3072
/// damselfly_dfdaemon_download_bytes_total{source="supernode"} 1024
/// damselfly_supernode_tasks 2
/// ## EOF
/// "#;
/// let m = Metrics::parse(page)?;
/// assert_eq!(m.get("damselfly_dfdaemon_download_bytes_total"), 4096.0);
/// assert_eq!(m.get("damselfly_dfdaemon_download_bytes"), 4096.0);
/// assert_eq!(
///     m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "peer")]),
///     3072.0
/// );
/// assert_eq!(m.get("damselfly_supernode_tasks"), 2.0);
/// assert_eq!(m.get("damselfly_supernode_peers"), 0.0); // absent
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

impl Metrics {
    /// Parses a text exposition page. Fails, naming the line, on anything malformed: a binary
    /// that writes a broken page should fail its tests.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut metrics = Metrics::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if words.next() == Some("TYPE") {
                    if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                        metrics.types.insert(name.to_string(), kind.to_string());
                    }
                }
                continue;
            }
            let sample = parse_sample(line).with_context(|| format!("metrics line {}: {line:?}", index + 1))?;
            metrics.samples.push(sample);
        }
        Ok(metrics)
    }

    /// The sum of every sample of `name` (all label sets); 0.0 when there is none.
    ///
    /// `name` may be given with or without a counter's `_total` suffix.
    pub fn get(&self, name: &str) -> f64 {
        self.get_labeled(name, &[])
    }

    /// The sum of the samples of `name` that carry all the `labels` given (other labels may be
    /// present too); 0.0 when there is none.
    pub fn get_labeled(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples_named(name).filter(|s| s.matches(labels)).map(|s| s.value).sum()
    }

    /// Whether any sample of `name` (with or without `_total`) is present.
    pub fn contains(&self, name: &str) -> bool {
        self.samples_named(name).next().is_some()
    }

    /// Every sample of `name`, matched like [`Metrics::get`].
    pub fn samples(&self, name: &str) -> Vec<&Sample> {
        self.samples_named(name).collect()
    }

    /// Every sample on the page, in order.
    pub fn all(&self) -> &[Sample] {
        &self.samples
    }

    /// The type declared by `# TYPE name kind` (`counter`, `gauge`, ...), if any.
    pub fn metric_type(&self, name: &str) -> Option<&str> {
        self.types.get(name).or_else(|| self.types.get(name.strip_suffix("_total").unwrap_or(name))).map(String::as_str)
    }

    fn samples_named<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Sample> + 'a {
        let exact = name.to_string();
        let exact_found = self.samples.iter().any(|s| s.name == exact);
        let alternative = match name.strip_suffix("_total") {
            Some(base) => base.to_string(),
            None => format!("{name}_total"),
        };
        self.samples.iter().filter(move |s| if exact_found { s.name == exact } else { s.name == alternative })
    }
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        bail!("missing or invalid metric name");
    }
    let mut rest = line[name_end..].trim_start();
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after)?;
        labels = parsed;
        rest = after.trim_start();
    }
    // OpenMetrics exemplars follow the value after " # ".
    let rest = rest.split(" # ").next().unwrap_or(rest);
    let mut fields = rest.split_whitespace();
    let value = fields.next().context("missing value")?;
    let value = parse_value(value)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<f64>().with_context(|| format!("bad timestamp {timestamp:?}"))?;
    }
    if let Some(extra) = fields.next() {
        bail!("unexpected {extra:?} after the value");
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

/// Parses `a="x",b="y"}` (the opening brace already consumed); returns the labels and the text
/// after the closing brace.
fn parse_labels(mut rest: &str) -> anyhow::Result<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let name_end =
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).context("unterminated label set")?;
        let name = &rest[..name_end];
        if name.is_empty() {
            bail!("missing label name at {rest:?}");
        }
        rest = rest[name_end..].trim_start();
        rest = rest.strip_prefix('=').with_context(|| format!("expected '=' after label {name}"))?.trim_start();
        rest = rest.strip_prefix('"').with_context(|| format!("expected '\"' to open the value of label {name}"))?;
        let (value, after) = parse_label_value(rest).with_context(|| format!("value of label {name}"))?;
        labels.push((name.to_string(), value));
        rest = after.trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            bail!("expected ',' or '}}' after label {name}");
        }
    }
}

/// Reads an escaped label value up to its closing quote; returns it and the text after the quote.
fn parse_label_value(text: &str) -> anyhow::Result<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, other)) => bail!("unknown escape \\{other}"),
                None => bail!("unterminated escape"),
            },
            c => value.push(c),
        }
    }
    bail!("unterminated label value")
}

fn parse_value(text: &str) -> anyhow::Result<f64> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse::<f64>().with_context(|| format!("bad sample value {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP damselfly_supernode_origin_bytes Bytes fetched from origins.
# TYPE damselfly_supernode_origin_bytes counter
damselfly_supernode_origin_bytes_total 1048576
damselfly_supernode_origin_bytes_created 1.7e9
# TYPE damselfly_dfdaemon_download_bytes counter
damselfly_dfdaemon_download_bytes_total{source="peer"} 300
damselfly_dfdaemon_download_bytes_total{source="supernode",task="a"} 200
damselfly_dfdaemon_download_bytes_total{task="b",source="supernode"} 50
damselfly_dfdaemon_download_bytes_total{source="origin"} 0
damselfly_supernode_tasks 3 1700000000000
weird{path="C:\\dir\\",msg="say \"hi\"\nbye",} 1.5
spaced { a = "x" , b="y" } -2
inf_metric +Inf
exemplar_total{le="1"} 4 # {trace_id="abc"} 1.0 1700000000
# EOF
"#;

    #[test]
    fn sums_over_label_sets() -> anyhow::Result<()> {
        let m = Metrics::parse(PAGE)?;
        assert_eq!(m.get("damselfly_dfdaemon_download_bytes_total"), 550.0);
        assert_eq!(m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "supernode")]), 250.0);
        assert_eq!(
            m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "supernode"), ("task", "b")]),
            50.0
        );
        assert_eq!(m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "nope")]), 0.0);
        Ok(())
    }

    #[test]
    fn total_suffix_is_optional_both_ways() -> anyhow::Result<()> {
        let m = Metrics::parse(PAGE)?;
        assert_eq!(m.get("damselfly_supernode_origin_bytes"), 1048576.0);
        assert_eq!(m.get("damselfly_supernode_origin_bytes_total"), 1048576.0);
        let plain = Metrics::parse("legacy_requests 7\n")?;
        assert_eq!(plain.get("legacy_requests_total"), 7.0);
        assert_eq!(m.metric_type("damselfly_supernode_origin_bytes_total"), Some("counter"));
        assert!(m.contains("damselfly_supernode_tasks"));
        assert!(!m.contains("damselfly_supernode_peers"));
        assert_eq!(m.get("damselfly_supernode_peers"), 0.0);
        Ok(())
    }

    #[test]
    fn exact_name_wins_over_suffix_variant() -> anyhow::Result<()> {
        let m = Metrics::parse("x 1\nx_total 10\n")?;
        assert_eq!(m.get("x"), 1.0);
        assert_eq!(m.get("x_total"), 10.0);
        Ok(())
    }

    #[test]
    fn unescapes_labels_and_reads_special_values() -> anyhow::Result<()> {
        let m = Metrics::parse(PAGE)?;
        let weird = &m.samples("weird")[0];
        assert_eq!(weird.label("path"), Some("C:\\dir\\"));
        assert_eq!(weird.label("msg"), Some("say \"hi\"\nbye"));
        assert_eq!(weird.value, 1.5);
        assert_eq!(m.get_labeled("spaced", &[("a", "x"), ("b", "y")]), -2.0);
        assert_eq!(m.get("inf_metric"), f64::INFINITY);
        assert_eq!(m.get("damselfly_supernode_tasks"), 3.0);
        assert_eq!(m.get("exemplar_total"), 4.0);
        Ok(())
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "no_value",
            "bad_value abc",
            "unterminated{a=\"x\" 1",
            "unquoted{a=x} 1",
            "bad_escape{a=\"\\q\"} 1",
            "{a=\"x\"} 1",
            "1name 2",
            "trailing 1 2 3",
        ] {
            assert!(Metrics::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn empty_page_has_nothing() -> anyhow::Result<()> {
        let m = Metrics::parse("")?;
        assert!(m.all().is_empty());
        assert_eq!(m.get("anything"), 0.0);
        Ok(())
    }
}

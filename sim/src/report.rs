//! Results for people: markdown tables and hand-written SVG line charts (no plotting
//! dependency).

use std::fmt::Write as _;

/// A markdown table.
#[derive(Clone, Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Self { header: header.into_iter().map(Into::into).collect(), rows: Vec::new() }
    }

    /// Appends a row (missing cells are left empty).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// The table as GitHub-flavoured markdown.
    ///
    /// ```
    /// use damselfly_sim::report::Table;
    /// let mut t = Table::new(["N", "p50"]);
    /// t.row(["2", "1.05"]);
    /// assert_eq!(t.to_markdown(), "| N | p50 |\n|---|---|\n| 2 | 1.05 |\n");
    /// ```
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        out.push_str(&line(&self.header));
        out.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
        for row in &self.rows {
            let mut cells = row.clone();
            cells.resize(self.header.len(), String::new());
            out.push_str(&line(&cells));
        }
        out
    }
}

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// CSS colour.
    pub color: String,
    /// Dashed line (for the bound).
    pub dashed: bool,
    /// The points `(x, y)`.
    pub points: Vec<(f64, f64)>,
    /// Optional whiskers `(x, low, high)` drawn as vertical bars (e.g. p50..max).
    pub whiskers: Vec<(f64, f64, f64)>,
}

impl Series {
    /// A solid line.
    pub fn line(name: &str, color: &str, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), color: color.into(), dashed: false, points, whiskers: Vec::new() }
    }
}

/// A line chart with a log₂ x axis (host counts) and a linear y axis from 0.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

impl Chart {
    /// The chart as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let xs: Vec<f64> = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
        let ys = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1).chain(s.whiskers.iter().map(|w| w.2)))
            .filter(|y| y.is_finite());
        let (x_min, x_max) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let (x_min, x_max) = if x_min < x_max { (x_min, x_max) } else { (x_min / 2.0, x_min * 2.0) };
        let y_max = nice_ceiling(ys.fold(0.0, f64::max));
        let pw = W - LEFT - RIGHT;
        let ph = H - TOP - BOTTOM;
        // 5% of the width free on each side, so that points and bars clear the frame.
        let sx = |x: f64| LEFT + pw * (0.05 + 0.9 * (x.log2() - x_min.log2()) / (x_max.log2() - x_min.log2()));
        let sy = |y: f64| TOP + ph - y / y_max * ph;

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            esc(&self.title)
        );
        // Grid and y ticks.
        for i in 0..=5 {
            let y = y_max * f64::from(i) / 5.0;
            let py = sy(y);
            let _ =
                writeln!(s, r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/>"##, LEFT + pw);
            let _ =
                writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, LEFT - 6.0, py + 4.0, tick(y));
        }
        // X ticks at the data's x values.
        let mut ticks = xs.clone();
        ticks.sort_by(f64::total_cmp);
        ticks.dedup();
        for x in ticks {
            let px = sx(x);
            let _ = writeln!(s, r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/>"##, TOP + ph);
            let _ =
                writeln!(s, r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, TOP + ph + 18.0, tick(x));
        }
        let _ = writeln!(s, r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 12.0,
            esc(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
            TOP + ph / 2.0,
            TOP + ph / 2.0,
            esc(&self.y_label)
        );
        for (i, series) in self.series.iter().enumerate() {
            let dash = if series.dashed { r#" stroke-dasharray="6 4""# } else { "" };
            let pts: Vec<String> = series
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                pts.join(" "),
                series.color
            );
            for &(x, y) in series.points.iter().filter(|p| p.1.is_finite()) {
                let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#, sx(x), sy(y), series.color);
            }
            for &(x, lo, hi) in &series.whiskers {
                let px = sx(x) + 3.0 * (i as f64 - 1.0);
                let _ = writeln!(
                    s,
                    r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="{}" stroke-width="1.5"/>"#,
                    sy(lo),
                    sy(hi),
                    series.color
                );
            }
            let ly = TOP + 10.0 + 20.0 * i as f64;
            let lx = LEFT + pw + 12.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/>"#,
                lx + 22.0,
                series.color
            );
            let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, lx + 28.0, ly + 4.0, esc(&series.name));
        }
        s.push_str("</svg>\n");
        s
    }
}

/// The smallest of 1, 2, 2.5, 5 × 10^k at or above `v` (and 1 for nothing).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|&c| c >= v).unwrap_or(10.0 * mag)
}

fn tick(v: f64) -> String {
    if v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_well_formed_svg() {
        let mut damselfly = Series::line("Damselfly p50", "#1f77b4", vec![(2.0, 5.0), (16.0, 6.0)]);
        damselfly.whiskers = vec![(2.0, 5.0, 5.5), (16.0, 6.0, 7.0)];
        let mut bound = Series::line("bound", "black", vec![(2.0, 4.8), (16.0, 5.1)]);
        bound.dashed = true;
        let chart =
            Chart { title: "t <x>".into(), x_label: "N".into(), y_label: "s".into(), series: vec![damselfly, bound] };
        let svg = chart.to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;x&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(2.2), 2.5);
        assert_eq!(nice_ceiling(120.0), 200.0);
    }
}

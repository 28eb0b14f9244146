//! The overview's chart: bytes per second delivered to peers (from peers, stacked on from the
//! supernode) against bytes per second from the origins, as inline SVG drawn on the server.

use std::fmt::{self, Write as _};

use super::html::{bytes, duration, rate};
use super::stats::Point;

/// Most points plotted: longer series are averaged over bins of several seconds, so the lines
/// stay readable (10 minutes: 5 s per point).
const MAX_POINTS: usize = 120;
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 170.0;

/// Writes the chart section for `series` (oldest first, one point per second).
pub(super) fn write(out: &mut String, series: &[Point]) -> fmt::Result {
    let bin = series.len().div_ceil(MAX_POINTS).max(1);
    let bins: Vec<(f64, f64, f64)> = series
        .chunks(bin)
        .map(|c| {
            let n = c.len() as f64;
            let sum = |f: fn(&Point) -> u64| c.iter().map(f).sum::<u64>() as f64 / n;
            (sum(|p| p.from_peers), sum(|p| p.from_supernode), sum(|p| p.origin))
        })
        .collect();
    let top = bins.iter().map(|&(p, s, o)| (p + s).max(o)).fold(0.0, f64::max);
    let (peers, sn, origin) =
        series.iter().fold((0u64, 0u64, 0u64), |(p, s, o), x| (p + x.from_peers, s + x.from_supernode, o + x.origin));
    write!(
        out,
        r#"<section class="chart"><h2>Delivered vs origin <span class="muted">bytes per second, last {}</span></h2>
<div class="legend"><span class="key k-peer"><span>from peers {}</span></span><span class="key k-sn"><span>from the supernode {}</span></span><span class="key k-origin"><span>from origins {}</span></span><span class="muted">peak {}</span></div>
"#,
        duration(series.len() as u64),
        bytes(peers),
        bytes(sn),
        bytes(origin),
        rate(top as u64)
    )?;
    write!(
        out,
        r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" role="img" aria-label="bytes per second delivered to peers and fetched from origins">"#
    )?;
    if top > 0.0 && bins.len() > 1 {
        let x = |i: usize| i as f64 * WIDTH / (bins.len() - 1) as f64;
        let y = |v: f64| HEIGHT - v / (top * 1.08) * HEIGHT;
        // Stacked: the supernode's share below, the peers' on top of it.
        area(out, &bins.iter().map(|b| b.1).collect::<Vec<_>>(), &vec![0.0; bins.len()], x, y, "var(--sn)")?;
        let below: Vec<f64> = bins.iter().map(|b| b.1).collect();
        let total: Vec<f64> = bins.iter().map(|b| b.0 + b.1).collect();
        area(out, &total, &below, x, y, "var(--peer)")?;
        out.push_str(r#"<polyline fill="none" stroke="var(--origin)" stroke-width="2" vector-effect="non-scaling-stroke" points=""#);
        for (i, b) in bins.iter().enumerate() {
            write!(out, "{:.1},{:.1} ", x(i), y(b.2))?;
        }
        out.push_str(r#""/>"#);
    }
    out.push_str("</svg>\n");
    writeln!(
        out,
        r#"<div class="axis"><span>−{}</span><span>now</span></div></section>"#,
        duration(series.len() as u64)
    )
}

/// A filled band between `low` and `high`.
fn area(
    out: &mut String,
    high: &[f64],
    low: &[f64],
    x: impl Fn(usize) -> f64,
    y: impl Fn(f64) -> f64,
    fill: &str,
) -> fmt::Result {
    write!(out, r#"<path fill="{fill}" fill-opacity="0.75" d="M"#)?;
    for (i, v) in high.iter().enumerate() {
        write!(out, "{:.1},{:.1} ", x(i), y(*v))?;
    }
    for (i, v) in low.iter().enumerate().rev() {
        write!(out, "{:.1},{:.1} ", x(i), y(*v))?;
    }
    out.push_str(r#"Z"/>"#);
    Ok(())
}

//! Rate-limited hosts in the swarm benchmark (`swarm-bench --limited IDX=FILE`): one host's
//! daemon runs with its own config (`download_rate`, `upload_rate`, ...), its `/metrics` are
//! sampled while the swarm runs, and the report compares what it measured with its limits.
//!
//! A limited direction is timed with the bytes that went through its limit
//! (`damselfly_dfdaemon_rate_bytes_total`, counted in 64 KiB steps as they are sent or
//! received); an unlimited one with the verified piece bytes. Two measures of a rate: the host's completion rate (image bytes over its completion time,
//! for downloads: what a user of that host sees), and the sustained rate of a byte counter,
//! `0.8 × final / (t90 − t10)`, where `t10` and `t90` are the moments (interpolated between
//! samples) the counter crossed 10 % and 90 % of its final value: the ramp-up and the tail,
//! when the swarm may ask the host for less than its limit, are left out. For uploads, which
//! depend on what the other hosts ask of this one, also the highest rate over any
//! [`PEAK_WINDOW`] (samples interpolated): a limit must hold it down, and a saturated host
//! must reach it.

use serde::{Deserialize, Serialize};

use crate::harness::metric;
use crate::report::Table;
use crate::units::fmt_rate;

/// The window of the peak rate.
pub const PEAK_WINDOW: f64 = 4.0;

/// Parses `IDX=FILE`.
pub fn parse_limited(text: &str) -> Result<(usize, std::path::PathBuf), String> {
    let (idx, file) = text.split_once('=').ok_or_else(|| format!("{text:?} is not IDX=FILE"))?;
    let idx = idx.trim().parse().map_err(|_| format!("{idx:?} is not a host index"))?;
    Ok((idx, file.into()))
}

/// One sample of a limited host's counters.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the common start.
    pub t: f64,
    /// Bytes received for tasks (every source).
    pub down: f64,
    /// Piece bytes uploaded.
    pub up: f64,
}

impl Sample {
    /// The counters on a dfdaemon `/metrics` page at time `t`: for a limited direction the
    /// bytes that went through its limit (64 KiB steps), otherwise the verified piece bytes
    /// (whole pieces, too coarse to time a rate over a few seconds).
    pub fn from_page(t: f64, page: &str) -> Self {
        let through = |d: &str| metric(page, "damselfly_dfdaemon_rate_bytes_total", &format!("direction=\"{d}\""));
        let limited = |d: &str| {
            metric(page, "damselfly_dfdaemon_rate_limit_bytes_per_second", &format!("direction=\"{d}\"")) > 0.0
        };
        let pick = |d: &str, pieces: &str| if limited(d) { through(d) } else { metric(page, pieces, "") };
        Sample {
            t,
            down: pick("download", "damselfly_dfdaemon_download_bytes_total"),
            up: pick("upload", "damselfly_dfdaemon_upload_bytes_total"),
        }
    }
}

/// What a limited host measured in one run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LimitedHost {
    /// Host index.
    pub host: usize,
    /// Its limits, bytes/s (0: none).
    pub download_limit: f64,
    /// Upload limit.
    pub upload_limit: f64,
    /// Origin-fallback limit.
    pub origin_limit: f64,
    /// Image bytes over the host's completion time, bytes/s.
    pub completion_rate: f64,
    /// Sustained download rate (10 % to 90 % of its bytes), bytes/s.
    pub download_rate: f64,
    /// Sustained upload rate (10 % to 90 % of its bytes), bytes/s.
    pub upload_rate: f64,
    /// Highest download rate over any [`PEAK_WINDOW`], bytes/s.
    #[serde(default)]
    pub download_peak: f64,
    /// Highest upload rate over any [`PEAK_WINDOW`], bytes/s.
    #[serde(default)]
    pub upload_peak: f64,
    /// Piece bytes it uploaded.
    pub upload_bytes: f64,
    /// Seconds its transfers waited for the download limit (summed over transfers).
    pub throttled_download: f64,
    /// Seconds its transfers waited for the upload limit.
    pub throttled_upload: f64,
    /// The samples, for the record.
    pub samples: Vec<Sample>,
}

impl LimitedHost {
    /// Fills in a host's figures from its final `/metrics` page, its samples and its completion
    /// time (seconds since the common start).
    pub fn measure(host: usize, page: &str, samples: Vec<Sample>, image_bytes: f64, completion: Option<f64>) -> Self {
        let limit =
            |d: &str| metric(page, "damselfly_dfdaemon_rate_limit_bytes_per_second", &format!("direction=\"{d}\""));
        let waited =
            |d: &str| metric(page, "damselfly_dfdaemon_rate_throttled_seconds_total", &format!("direction=\"{d}\""));
        let downs: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, s.down)).collect();
        let ups: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, s.up)).collect();
        LimitedHost {
            host,
            download_limit: limit("download"),
            upload_limit: limit("upload"),
            origin_limit: limit("origin"),
            completion_rate: completion.map_or(0.0, |c| image_bytes / c),
            download_rate: sustained(&downs),
            upload_rate: sustained(&ups),
            download_peak: peak(&downs, PEAK_WINDOW),
            upload_peak: peak(&ups, PEAK_WINDOW),
            upload_bytes: metric(page, "damselfly_dfdaemon_upload_bytes_total", ""),
            throttled_download: waited("download"),
            throttled_upload: waited("upload"),
            samples,
        }
    }
}

/// `0.8 × final / (t90 − t10)` of a counter's samples `(t, value)`; 0 when it never grew.
pub fn sustained(samples: &[(f64, f64)]) -> f64 {
    let Some(&(_, last)) = samples.last() else { return 0.0 };
    if last <= 0.0 {
        return 0.0;
    }
    let crossing = |level: f64| {
        samples.windows(2).find(|w| w[0].1 < level && w[1].1 >= level).map(|w| {
            let ((t0, v0), (t1, v1)) = (w[0], w[1]);
            t0 + (t1 - t0) * (level - v0) / (v1 - v0)
        })
    };
    match (crossing(0.1 * last), crossing(0.9 * last)) {
        (Some(a), Some(b)) if b > a => 0.8 * last / (b - a),
        _ => 0.0,
    }
}

/// The highest `(v(t + window) − v(t)) / window` over the samples `(t, value)`, with `v`
/// interpolated linearly between samples; 0 when the samples span less than `window`.
pub fn peak(samples: &[(f64, f64)], window: f64) -> f64 {
    let at = |t: f64| -> Option<f64> {
        samples.windows(2).find(|w| w[0].0 <= t && t <= w[1].0).map(|w| {
            let ((t0, v0), (t1, v1)) = (w[0], w[1]);
            if t1 > t0 {
                v0 + (v1 - v0) * (t - t0) / (t1 - t0)
            } else {
                v1
            }
        })
    };
    samples.iter().filter_map(|&(t, v)| at(t + window).map(|later| (later - v) / window)).fold(0.0, f64::max)
}

/// The report's table: one row per limited host and run.
pub fn table<'a>(rows: impl IntoIterator<Item = (usize, &'a str, &'a LimitedHost)>) -> Table {
    let mut t = Table::new([
        "N",
        "system",
        "host",
        "download limit",
        "completion rate (÷ limit)",
        "sustained download (÷ limit)",
        "peak 4 s download (÷ limit)",
        "upload limit",
        "sustained upload (÷ limit)",
        "peak 4 s upload (÷ limit)",
        "uploaded",
        "waited down / up (s)",
    ]);
    let lim = |l: f64| if l > 0.0 { fmt_rate(l) } else { "none".into() };
    let vs = |r: f64, l: f64| {
        if l > 0.0 {
            format!("{} ({:.3})", fmt_rate(r), r / l)
        } else {
            fmt_rate(r)
        }
    };
    for (n, system, h) in rows {
        t.row([
            n.to_string(),
            system.to_string(),
            h.host.to_string(),
            lim(h.download_limit),
            vs(h.completion_rate, h.download_limit),
            vs(h.download_rate, h.download_limit),
            vs(h.download_peak, h.download_limit),
            lim(h.upload_limit),
            vs(h.upload_rate, h.upload_limit),
            vs(h.upload_peak, h.upload_limit),
            crate::units::fmt_bytes(h.upload_bytes),
            format!("{:.1} / {:.1}", h.throttled_download, h.throttled_upload),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustained_rate_leaves_out_ramp_and_tail() {
        // 0 for a second, then 10 bytes/s for 10 s, then flat.
        let samples: Vec<(f64, f64)> =
            (0..=14).map(|t| (f64::from(t), (10.0 * (f64::from(t) - 1.0)).clamp(0.0, 100.0))).collect();
        assert!((sustained(&samples) - 10.0).abs() < 1e-9, "{}", sustained(&samples));
        assert_eq!(sustained(&[(0.0, 0.0), (1.0, 0.0)]), 0.0);
        assert_eq!(parse_limited("2=/tmp/x.toml").unwrap(), (2, "/tmp/x.toml".into()));
        assert!(parse_limited("x").is_err());
        assert!((peak(&samples, 4.0) - 10.0).abs() < 1e-9);
        let burst = [(0.0, 0.0), (1.0, 0.0), (2.0, 40.0), (6.0, 40.0)];
        assert!((peak(&burst, 4.0) - 10.0).abs() < 1e-9, "{}", peak(&burst, 4.0));
    }
}

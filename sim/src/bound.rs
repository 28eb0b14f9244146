//! The lower bound on the time to distribute `F` bytes to `N` hosts.
//!
//! No scheme can beat any of three limits: the sources must send at least one copy
//! (`F / u_s`), the slowest host must receive a whole copy (`F / d_min`), and all `N` copies
//! must leave some uplink, of which there is `u_s + Σ u_i` in all (`N·F / (u_s + Σ u_i)`).
//! So `T ≥ max(F/u_s, F/d_min, N·F/(u_s + Σu_i))` (Kumar & Ross, "Peer-assisted file
//! distribution: the minimum distribution time", 2006). `u_s` is the upload of the sources (origin
//! plus supernode), `u_i` the hosts' uploads, rates in bytes per second.

/// The three terms of the bound and the bound itself, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bound {
    /// `F / u_s`: the sources must send one copy.
    pub sources: f64,
    /// `F / d_min`: the slowest host must receive one copy.
    pub slowest_download: f64,
    /// `N·F / (u_s + Σ u_i)`: every copy leaves some uplink.
    pub total_upload: f64,
    /// The largest of the three.
    pub seconds: f64,
}

/// The bound for `file_bytes` to every host, given the sources' upload and each host's upload
/// and download (bytes per second).
///
/// ```
/// use damselfly_sim::bound::lower_bound;
/// // 100 MB to 4 hosts of 10 MB/s up and down, from a 20 MB/s source: 400 MB / 60 MB/s.
/// let b = lower_bound(100e6, 20e6, &[10e6; 4], &[10e6; 4]);
/// assert!((b.seconds - 10.0).abs() < 1e-9); // F/d_min = 10 s > 400/60 = 6.7 s
/// ```
pub fn lower_bound(file_bytes: f64, sources_up: f64, host_up: &[f64], host_down: &[f64]) -> Bound {
    let n = host_up.len() as f64;
    let d_min = host_down.iter().copied().fold(f64::INFINITY, f64::min);
    let sources = file_bytes / sources_up;
    let slowest_download = file_bytes / d_min;
    let total_upload = n * file_bytes / (sources_up + host_up.iter().sum::<f64>());
    Bound { sources, slowest_download, total_upload, seconds: sources.max(slowest_download).max(total_upload) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_term_can_bind() {
        // Slow sources.
        assert_eq!(lower_bound(100.0, 1.0, &[100.0], &[100.0]).seconds, 100.0);
        // Many hosts with little upload.
        let b = lower_bound(100.0, 10.0, &[1.0; 100], &[1000.0; 100]);
        assert!((b.seconds - 100.0 * 100.0 / 110.0).abs() < 1e-9);
        assert_eq!(b.seconds, b.total_upload);
        // One slow downloader.
        assert_eq!(lower_bound(100.0, 1000.0, &[1000.0, 1000.0], &[1000.0, 2.0]).seconds, 50.0);
    }
}

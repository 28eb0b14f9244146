//! Failure reports against parents, counted per distinct reporter and forgotten after a while,
//! so that one lying child cannot get a parent banned, and a parent that had a bad spell is not
//! banned for good.
//!
//! A report weighs 2 for a bad digest and 1 for a failed transfer; each reporter counts once per
//! parent, with the heaviest of its recent reports. A parent is bad when at least
//! [`SchedulerConfig::bad_peer_reporters`] distinct reporters reported it within
//! [`SchedulerConfig::strike_ttl`] and their weights add up to
//! [`SchedulerConfig::bad_peer_strikes`]. The ban lasts `strike_ttl` from the report that
//! caused it; then the parent's record starts afresh.

use std::collections::HashMap;
use std::time::Duration;

use damselfly_types::id::PeerId;

use super::{FailReason, SchedulerConfig};

/// Reports against one parent.
#[derive(Debug, Default)]
struct Record {
    /// (reporter, weight, when), one entry per reporter.
    reports: Vec<(PeerId, u32, Duration)>,
    /// When the parent became bad, while it is.
    banned_at: Option<Duration>,
}

impl Record {
    fn weight(&self) -> u32 {
        self.reports.iter().map(|r| r.1).sum()
    }
}

/// Every parent's reports.
#[derive(Debug, Default)]
pub(super) struct StrikeBook {
    parents: HashMap<PeerId, Record>,
}

impl StrikeBook {
    /// Records `reporter`'s failure report against `parent` at `now`. Returns the parent's
    /// strikes when this report made it bad.
    pub(super) fn report(
        &mut self,
        cfg: &SchedulerConfig,
        parent: &PeerId,
        reporter: &PeerId,
        reason: FailReason,
        now: Duration,
    ) -> Option<u32> {
        let weight = match reason {
            FailReason::Digest => 2,
            FailReason::Transfer => 1,
        };
        let rec = self.parents.entry(parent.clone()).or_default();
        if rec.banned_at.is_some() {
            return None;
        }
        rec.reports.retain(|r| now.saturating_sub(r.2) < cfg.strike_ttl);
        match rec.reports.iter_mut().find(|r| &r.0 == reporter) {
            Some(r) => {
                r.1 = r.1.max(weight);
                r.2 = now;
            }
            None => rec.reports.push((reporter.clone(), weight, now)),
        }
        let strikes = rec.weight();
        if rec.reports.len() >= cfg.bad_peer_reporters && strikes >= cfg.bad_peer_strikes {
            rec.banned_at = Some(now);
            return Some(strikes);
        }
        None
    }

    /// Whether `peer` is banned now.
    pub(super) fn is_bad(&self, peer: &PeerId) -> bool {
        self.parents.get(peer).is_some_and(|r| r.banned_at.is_some())
    }

    /// Ends the bans older than `strike_ttl` and forgets stale reports; returns the parents
    /// whose ban ended.
    pub(super) fn expire(&mut self, cfg: &SchedulerConfig, now: Duration) -> Vec<PeerId> {
        let mut ended = Vec::new();
        self.parents.retain(|peer, rec| {
            if rec.banned_at.is_some_and(|at| now.saturating_sub(at) >= cfg.strike_ttl) {
                ended.push(peer.clone());
                return false;
            }
            rec.reports.retain(|r| now.saturating_sub(r.2) < cfg.strike_ttl);
            rec.banned_at.is_some() || !rec.reports.is_empty()
        });
        ended
    }

    /// Banned parents with their strikes.
    pub(super) fn banned(&self) -> Vec<(PeerId, u32)> {
        let mut v: Vec<(PeerId, u32)> =
            self.parents.iter().filter(|(_, r)| r.banned_at.is_some()).map(|(p, r)| (p.clone(), r.weight())).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SchedulerConfig {
        SchedulerConfig::default()
    }

    fn p(s: &str) -> PeerId {
        PeerId::new(s)
    }

    #[test]
    fn one_reporter_alone_never_bans() {
        let mut book = StrikeBook::default();
        for i in 0..20 {
            let now = Duration::from_secs(i);
            assert_eq!(book.report(&cfg(), &p("parent"), &p("liar"), FailReason::Digest, now), None);
        }
        assert!(!book.is_bad(&p("parent")));
    }

    #[test]
    fn two_reporters_of_bad_digests_ban_until_the_strikes_expire() {
        let (c, mut book) = (cfg(), StrikeBook::default());
        let t0 = Duration::from_secs(100);
        assert_eq!(book.report(&c, &p("parent"), &p("a"), FailReason::Digest, t0), None);
        assert_eq!(book.report(&c, &p("parent"), &p("b"), FailReason::Digest, t0), Some(4));
        assert!(book.is_bad(&p("parent")));
        assert_eq!(book.banned(), vec![(p("parent"), 4)]);
        assert!(book.expire(&c, t0 + c.strike_ttl / 2).is_empty());
        assert_eq!(book.expire(&c, t0 + c.strike_ttl), vec![p("parent")]);
        assert!(!book.is_bad(&p("parent")));
    }

    #[test]
    fn transfer_failures_need_more_reporters_and_old_reports_fade() {
        let (c, mut book) = (cfg(), StrikeBook::default());
        let t0 = Duration::from_secs(10);
        assert_eq!(book.report(&c, &p("parent"), &p("a"), FailReason::Transfer, t0), None);
        assert_eq!(book.report(&c, &p("parent"), &p("b"), FailReason::Transfer, t0), None);
        // A third reporter long after the first two: they have faded.
        let late = t0 + c.strike_ttl + Duration::from_secs(1);
        assert_eq!(book.report(&c, &p("parent"), &p("c"), FailReason::Transfer, late), None);
        // A third one in time bans.
        assert_eq!(book.report(&c, &p("parent"), &p("d"), FailReason::Transfer, late), None);
        assert_eq!(book.report(&c, &p("parent"), &p("e"), FailReason::Transfer, late), Some(3));
    }
}

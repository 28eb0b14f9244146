//! Swarm groups: the key a download names so that the supernode schedules the blobs of one image
//! pull as one swarm (`Register.group`). Any text up to [`MAX_LEN`] bytes without control
//! characters; empty means none. A scheduling hint only: it grants nothing, so the one check is
//! that the key stays small and printable. The one check for every place a group arrives: the
//! dfdaemon's download API, `dfget --group`, the supernode's registrations.
//!
//! ```
//! use damselfly_types::group::{check, GroupError};
//!
//! assert_eq!(check("sha256:0123abcd"), Ok(()));
//! assert_eq!(check("team/app v2"), Ok(()));
//! assert_eq!(check("a\nb"), Err(GroupError::Control));
//! ```

/// Longest group, in bytes.
pub const MAX_LEN: usize = 256;

/// Why a group is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// Longer than [`MAX_LEN`] bytes.
    #[error("a group is at most {MAX_LEN} bytes")]
    TooLong,
    /// A control character (a line break, a tab, an escape).
    #[error("a group has no control characters")]
    Control,
}

/// Checks `group` (empty is fine: no group).
pub fn check(group: &str) -> Result<(), GroupError> {
    if group.len() > MAX_LEN {
        return Err(GroupError::TooLong);
    }
    if group.chars().any(char::is_control) {
        return Err(GroupError::Control);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_short_and_printable() {
        for good in ["", "img", "sha256:00ff", "registry.example:5000/team/app:v1", "ünïcode ok"] {
            assert_eq!(check(good), Ok(()), "{good:?}");
        }
        for (bad, why) in [("a\nb", GroupError::Control), ("\t", GroupError::Control), ("a\u{7f}", GroupError::Control)]
        {
            assert_eq!(check(bad), Err(why), "{bad:?}");
        }
        // C1 controls too.
        assert_eq!(check("a\u{85}b"), Err(GroupError::Control));
        assert_eq!(check(&"a".repeat(MAX_LEN)), Ok(()));
        assert_eq!(check(&"a".repeat(MAX_LEN + 1)), Err(GroupError::TooLong));
        // Bytes, not characters: 129 two-byte characters are too long.
        assert_eq!(check(&"é".repeat(129)), Err(GroupError::TooLong));
    }
}

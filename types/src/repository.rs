//! Repository names (`library/alpine`, `team/app`) as the OCI distribution spec defines them:
//! path components of `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`, separated by `/`, at
//! most 255 characters. The one check for every place a name arrives: the supernode's image
//! references and manifest URLs, the dfdaemon mirror's `/v2/<name>/...` paths.
//!
//! ```
//! use damselfly_types::repository::{check, NameError};
//!
//! assert_eq!(check("library/alpine"), Ok(()));
//! assert_eq!(check("c__d/e.f-g---h"), Ok(()));
//! assert_eq!(check("Alpine"), Err(NameError::Uppercase));
//! assert_eq!(check("../etc"), Err(NameError::Malformed));
//! ```

/// Longest repository name the distribution spec allows.
pub const MAX_LEN: usize = 255;

/// Why a repository name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("no repository name")]
    Empty,
    /// The name has an upper-case letter (engines lower-case names; registries refuse them).
    #[error("repository names must be lowercase")]
    Uppercase,
    /// Longer than [`MAX_LEN`].
    #[error("repository names are at most {MAX_LEN} characters")]
    TooLong,
    /// Another character, an empty component, or a separator at a component's edge.
    #[error("not a repository name (lowercase letters and digits, separated by '.', '_', '__', '-' or '/')")]
    Malformed,
}

/// Checks `name` against the distribution spec's grammar.
pub fn check(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(NameError::Uppercase);
    }
    if name.len() > MAX_LEN {
        return Err(NameError::TooLong);
    }
    if name.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(NameError::Malformed)
    }
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or one or more `-`.
fn component_ok(component: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = component.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    component
        .split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        .all(|sep| sep.is_empty() || sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_distribution_grammar() {
        for good in ["a", "library/alpine", "a/b-c/d_e.f", "c__d/e.f-g---h", "0/9", "team/app.v2"] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", NameError::Empty),
            ("UPPER", NameError::Uppercase),
            ("../etc", NameError::Malformed),
            ("a//b", NameError::Malformed),
            ("-a", NameError::Malformed),
            ("a_", NameError::Malformed),
            ("a...b", NameError::Malformed),
            ("a___b", NameError::Malformed),
            ("a._b", NameError::Malformed),
            ("a/", NameError::Malformed),
            ("a b", NameError::Malformed),
            ("a:b", NameError::Malformed),
        ] {
            assert_eq!(check(bad), Err(why), "{bad:?}");
        }
        assert_eq!(check(&"a".repeat(MAX_LEN)), Ok(()));
        assert_eq!(check(&"a".repeat(MAX_LEN + 1)), Err(NameError::TooLong));
    }
}

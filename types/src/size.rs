//! Byte sizes with units (`20GiB`, `512MB`, `1048576`) for flags and config files.

pub use bytesize::ByteSize;

/// Parses a size such as `20GiB`, `500 MB` or a plain number of bytes (for clap `value_parser`).
pub fn parse_size(s: &str) -> Result<ByteSize, String> {
    s.trim()
        .parse::<ByteSize>()
        .map_err(|e| format!("invalid size {s:?} ({e}); use a number with a unit such as 20GiB or 512MB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("20GiB").unwrap().as_u64(), 20 << 30);
        assert_eq!(parse_size("1048576").unwrap().as_u64(), 1 << 20);
        assert!(parse_size("lots").is_err());
    }
}

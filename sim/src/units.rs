//! Byte sizes (`64MiB`) and bit rates (`100mbit`) on the command line, and their display.

/// Parses a byte size: a number with an optional unit (`B`, `KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`,
/// case-insensitive; `k`/`m`/`g` alone are binary, as `tc` reads them).
///
/// ```
/// use damselfly_sim::units::parse_size;
/// assert_eq!(parse_size("64MiB"), Ok(64 << 20));
/// assert_eq!(parse_size("1gib"), Ok(1 << 30));
/// assert_eq!(parse_size("1000"), Ok(1000));
/// assert!(parse_size("12 parsecs").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (num, unit) = split_number(text)?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("bad size {text:?}: use a number with B, KiB, MiB, GiB, KB, MB or GB")),
    };
    Ok((num * mult).round() as u64)
}

/// Parses a bit rate as `tc` writes it (`100mbit`, `1gbit`, `500kbit`, `8bit`) into bytes per
/// second.
///
/// ```
/// use damselfly_sim::units::parse_rate;
/// assert_eq!(parse_rate("100mbit"), Ok(12_500_000.0));
/// assert_eq!(parse_rate("1gbit"), Ok(125_000_000.0));
/// assert!(parse_rate("fast").is_err());
/// ```
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let (num, unit) = split_number(text)?;
    let bits: f64 = match unit.to_ascii_lowercase().as_str() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return Err(format!("bad rate {text:?}: use kbit, mbit or gbit, e.g. 100mbit")),
    };
    if num <= 0.0 {
        return Err(format!("bad rate {text:?}: must be positive"));
    }
    Ok(num * bits / 8.0)
}

fn split_number(text: &str) -> Result<(f64, &str), String> {
    let t = text.trim();
    let end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let num: f64 = t[..end].parse().map_err(|_| format!("bad number in {text:?}"))?;
    Ok((num, t[end..].trim()))
}

/// A byte count for people: `64.0 MiB`.
pub fn fmt_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut i = 0;
    while v.abs() >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{:.0} B", v.max(0.0))
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// A rate in bytes per second for people, in bits as `tc` writes them: `100 Mbit/s`.
pub fn fmt_rate(bytes_per_sec: f64) -> String {
    let bits = bytes_per_sec * 8.0;
    if bits >= 1e9 {
        format!("{:.3} Gbit/s", bits / 1e9).replace(".000", "")
    } else if bits >= 1e6 {
        format!("{:.1} Mbit/s", bits / 1e6).replace(".0 ", " ")
    } else {
        format!("{:.1} kbit/s", bits / 1e3).replace(".0 ", " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates_round_trip_for_people() {
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1.5MB"), Ok(1_500_000));
        assert_eq!(fmt_bytes(64.0 * 1048576.0), "64.0 MiB");
        assert_eq!(fmt_rate(12_500_000.0), "100 Mbit/s");
        assert_eq!(fmt_rate(125_000_000.0), "1 Gbit/s");
        assert!(parse_rate("0mbit").is_err());
    }
}

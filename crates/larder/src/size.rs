//! Byte sizes as people write them: "256MiB", "64K", "1.5G", "20GB", "4096", read by
//! [`parse_size`] and written by [`human`] (which every report of sizes uses, so that they all
//! print a size the same way).

use crate::{Error, Result};

/// Parses a byte size: a number, optionally with a fraction, then an optional unit. `K`, `M`,
/// `G`, `T` and `KiB` … `TiB` are powers of 1024; `KB` … `TB` are powers of 1000; `B` or no unit
/// is bytes. Units are case-insensitive. Zero is refused: every size larder takes is a limit or
/// a target that must hold something.
pub fn parse_size(text: &str) -> Result<u64> {
    let invalid = |why: &str| Error::InvalidArgument {
        name: "size",
        message: format!("{text:?}: {why} (write a size such as 256MiB, 64K, 1.5G or 20GB)"),
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| invalid("not a number followed by a unit"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(invalid("unknown unit")),
    };
    let bytes = n * scale as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(invalid("too large"));
    }
    match bytes.round() as u64 {
        0 => Err(invalid("must be more than zero")),
        b => Ok(b),
    }
}

/// `bytes` in the largest unit that keeps it above 1 (decimal: kB, MB, GB).
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match b {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        _ => format!("{bytes} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::{human, parse_size};

    #[test]
    fn human_sizes_are_decimal_with_one_digit() {
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1_500), "1.5 kB");
        assert_eq!(human(66_052_096), "66.1 MB");
        assert_eq!(human(33_700_000_000), "33.7 GB");
    }

    #[test]
    fn units_are_binary_or_decimal_as_written() {
        assert_eq!(parse_size("4096").ok(), Some(4096));
        assert_eq!(parse_size("256MiB").ok(), Some(256 << 20));
        assert_eq!(parse_size("64k").ok(), Some(64 << 10));
        assert_eq!(parse_size("1.5G").ok(), Some(3 << 29));
        assert_eq!(parse_size("20GB").ok(), Some(20_000_000_000));
        assert_eq!(parse_size(" 2 TiB ").ok(), Some(2 << 40));
    }

    #[test]
    fn nonsense_and_zero_are_refused() {
        for bad in ["", "MiB", "12 parsecs", "0", "0.0G", "1e400", "-5M"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }
}

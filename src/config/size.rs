//! Parsing of `max_nbytes` and `mmap_mode`, in joblib's spellings (also `stack_size`, which takes
//! the same sizes). The memory-mapping code re-exports these parsers; config imports nothing from it.
//!
//! joblib's rules for a size string: the **last character** is the unit, the rest is
//! parsed as a Python float (so `"1.5M"`, `"0.5K"` and `" 1M"` are accepted, and whitespace between the
//! number and the unit is tolerated) and the product is truncated to an integer. pj follows them, with
//! two deliberate differences:
//!
//! - the unit may be lower case (`"1m"`); joblib rejects it with a confusing
//!   message, and nobody writes `"1m"` meaning anything but a mebibyte;
//! - the product is computed **exactly** in integers, never through an `f64`, so a large value such as
//!   `"9007199254740993K"` is not silently rounded, and `inf`, `nan`, a sign, `_` digit separators or
//!   anything a float parser happens to tolerate are rejected. Exponents (`"1e3K"`) are accepted,
//!   as Python's `float` accepts them.
//!
//! A bare number of bytes must be a plain non-negative integer (`"1024"`); joblib only accepts
//! numbers as Python ints or floats, never as unit-less strings, and a fractional byte count has no
//! meaning.

use crate::error::{Error, Result};

use super::MmapMode;

/// Multipliers of the accepted units, as powers of two (binary units: 1 K = 1024 bytes).
const UNIT_SHIFTS: [(char, u32); 3] = [('K', 10), ('M', 20), ('G', 30)];

/// Digits after the decimal point that can change the result: `k / 2^30` has exactly 30 decimal
/// places, so truncating the fraction there never changes `floor(x * 2^s)` for `s <= 30`.
const MAX_FRACTION_DIGITS: usize = 30;

/// More integer digits than this is above `u64::MAX` (20 digits) before any unit is applied.
const MAX_INTEGER_DIGITS: i64 = 20;

/// Exponents are clamped to this magnitude while parsing, so `1e99999999999999999999K` cannot
/// overflow; anything this large is "too large" or exactly 0 anyway.
const EXPONENT_CLAMP: i64 = 100_000;

/// Longest part of a user's value quoted in an error message: a hostile megabyte-long value must
/// not become a megabyte-long message.
const MAX_QUOTED_CHARS: usize = 64;

/// Quotes a user's value for a one-line message: escaped (a newline cannot split the message) and
/// cut after [`MAX_QUOTED_CHARS`] characters.
pub(crate) fn quote(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}

fn invalid_value(key: &str, value: &str, detail: &str) -> Error {
    Error::invalid(format!("invalid {key} {}: {detail}", quote(value)))
}

fn max_nbytes_error(value: &str) -> Error {
    invalid_value(
        "max_nbytes",
        value,
        "expected a number of bytes, \"none\", or a size like \"10G\", \"500M\", \"50K\" (binary units, any case)",
    )
}

fn too_large(value: &str) -> Error {
    invalid_value("max_nbytes", value, "too large (more than 2^64 - 1 bytes)")
}

/// Parses `max_nbytes`: a byte count (`"1048576"`), `"none"`/`"None"` (returns `None`: never use
/// files), or a number followed by `K`, `M` or `G` in either case (binary units, `"1.5M"` =
/// 1572864, truncated as joblib truncates). Anything else, including `""`, `"-1M"`, `"12Q"`,
/// `"fooG"` and values above `u64::MAX`, is an [`ErrorKind::InvalidArgument`](crate::ErrorKind)
/// quoting the value.
pub fn parse_max_nbytes(value: &str) -> Result<Option<u64>> {
    if value == "none" || value == "None" {
        return Ok(None);
    }
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().map(Some).map_err(|_| too_large(value));
    }
    let Some(unit) = value.chars().last() else {
        return Err(max_nbytes_error(value));
    };
    let Some(&(_, shift)) = UNIT_SHIFTS
        .iter()
        .find(|(u, _)| *u == unit.to_ascii_uppercase())
    else {
        return Err(max_nbytes_error(value));
    };
    // Python's float() strips surrounding whitespace, so joblib accepts " 1M" and "1 M".
    let number =
        value[..value.len() - unit.len_utf8()].trim_matches(|c: char| c.is_ascii_whitespace());
    let decimal = Decimal::parse(number).ok_or_else(|| max_nbytes_error(value))?;
    decimal
        .times_power_of_two(shift)
        .map(Some)
        .ok_or_else(|| too_large(value))
}

/// Parses `mmap_mode`: `"r"`, `"r+"`, `"w+"` or `"c"` (numpy's spellings, case-sensitive as in
/// joblib), or `"none"`/`"None"` (joblib's `None`: no memmapping, see [`MmapMode::None`]). Anything
/// else is an [`ErrorKind::InvalidArgument`](crate::ErrorKind) quoting the value.
pub fn parse_mmap_mode(value: &str) -> Result<MmapMode> {
    match value {
        "r" => Ok(MmapMode::R),
        "r+" => Ok(MmapMode::RPlus),
        "w+" => Ok(MmapMode::WPlus),
        "c" => Ok(MmapMode::C),
        "none" | "None" => Ok(MmapMode::None),
        _ => Err(invalid_value(
            "mmap_mode",
            value,
            "expected \"r\", \"r+\", \"w+\", \"c\" or \"none\"",
        )),
    }
}

/// A non-negative decimal `digits × 10^exponent`, as written (`"1.5"`, `".5"`, `"2e3"`).
struct Decimal<'a> {
    /// The integer and fraction digits, concatenated (ASCII digits only).
    integer: &'a str,
    fraction: &'a str,
    /// The exponent, clamped to ±[`EXPONENT_CLAMP`].
    exponent: i64,
}

impl<'a> Decimal<'a> {
    /// Accepts `digits [. digits] [(e|E) [+|-] digits]` with at least one mantissa digit, and `.5`
    /// and `5.`. No sign, no spaces inside, no `_`, no `inf`/`nan`.
    fn parse(text: &'a str) -> Option<Self> {
        let (mantissa, exponent) = match text.find(['e', 'E']) {
            Some(at) => (&text[..at], Some(&text[at + 1..])),
            None => (text, None),
        };
        let (integer, fraction) = match mantissa.split_once('.') {
            Some((i, f)) => (i, f),
            None => (mantissa, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if integer.len() + fraction.len() == 0 || !all_digits(integer) || !all_digits(fraction) {
            return None;
        }
        let exponent = match exponent {
            None => 0,
            Some(e) => {
                let (negative, digits) = match e.strip_prefix('-') {
                    Some(d) => (true, d),
                    None => (false, e.strip_prefix('+').unwrap_or(e)),
                };
                if digits.is_empty() || !all_digits(digits) {
                    return None;
                }
                let magnitude = digits.bytes().fold(0i64, |acc, b| {
                    (acc * 10 + i64::from(b - b'0')).min(EXPONENT_CLAMP)
                });
                if negative { -magnitude } else { magnitude }
            }
        };
        Some(Decimal {
            integer,
            fraction,
            exponent,
        })
    }

    /// The digit at position `i` of the concatenated integer and fraction digits.
    fn digit(&self, i: usize) -> u8 {
        let b = if i < self.integer.len() {
            self.integer.as_bytes()[i]
        } else {
            self.fraction.as_bytes()[i - self.integer.len()]
        };
        b - b'0'
    }

    /// `floor(self × 2^shift)`, exactly, or `None` above `u64::MAX`. `shift` is at most 30.
    fn times_power_of_two(&self, shift: u32) -> Option<u64> {
        debug_assert!(shift as usize <= MAX_FRACTION_DIGITS);
        let len = self.integer.len() + self.fraction.len();
        let Some(first_nonzero) = (0..len).find(|&i| self.digit(i) != 0) else {
            return Some(0);
        };
        // Position of the decimal point among the digits once the exponent is applied: digits
        // [0, point) are the integer part, [point, len) the fraction (negative: leading zeros).
        let point = self.integer.len() as i64 + self.exponent;
        if point - first_nonzero as i64 > MAX_INTEGER_DIGITS {
            return None;
        }

        // Integer part: at most 20 significant digits, so it fits in u128.
        let mut integer: u128 = 0;
        for i in 0..point.max(0) {
            let d = if (i as usize) < len {
                self.digit(i as usize)
            } else {
                0
            };
            integer = integer * 10 + u128::from(d);
        }

        // Fraction, truncated to 30 places (exact, see MAX_FRACTION_DIGITS): F / 10^n.
        let mut fraction: u128 = 0;
        let mut places: u32 = 0;
        for place in 0..MAX_FRACTION_DIGITS as i64 {
            let i = point + place;
            if i >= len as i64 {
                break;
            }
            let d = if i < 0 { 0 } else { self.digit(i as usize) };
            fraction = fraction * 10 + u128::from(d);
            places += 1;
        }
        // floor(F × 2^s / 10^n) = floor(F × 2^s / (2^n × 5^n)); cancelling the powers of two keeps
        // every intermediate below 10^30, far from u128's limit.
        let five_n = 5u128.pow(places);
        let fraction_bytes = if shift >= places {
            (fraction << (shift - places)) / five_n
        } else {
            fraction / ((1u128 << (places - shift)) * five_n)
        };

        let bytes = (integer << shift) + fraction_bytes;
        u64::try_from(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn bytes(value: &str) -> Option<u64> {
        parse_max_nbytes(value).unwrap_or_else(|e| panic!("{value:?}: {e}"))
    }

    /// `value` is rejected as an invalid argument whose message quotes it.
    fn rejected(value: &str) -> String {
        let err = parse_max_nbytes(value).expect_err(&format!("{value:?} accepted"));
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{value:?}");
        assert!(
            err.message().contains(&quote(value)),
            "{value:?}: {}",
            err.message()
        );
        assert!(
            !err.message().contains('\n'),
            "{value:?}: multi-line message"
        );
        err.message().to_owned()
    }

    #[test]
    fn sizes_follow_joblib() {
        assert_eq!(bytes("1M"), Some(1_048_576));
        assert_eq!(bytes("1.5M"), Some(1_572_864));
        assert_eq!(bytes("0.5K"), Some(512));
        assert_eq!(bytes(" 1M"), Some(1_048_576));
        assert_eq!(bytes("1 M"), Some(1_048_576));
        assert_eq!(bytes("\t2K"), Some(2048));
        assert_eq!(bytes("1\nM"), Some(1_048_576)); // Python's float() strips any whitespace
        assert_eq!(bytes("2G"), Some(2 << 30));
        assert_eq!(bytes("1.1K"), Some(1126)); // 1126.4, truncated
        assert_eq!(bytes(".5K"), Some(512));
        assert_eq!(bytes("5.K"), Some(5120));
        assert_eq!(bytes("0K"), Some(0));
        assert_eq!(bytes("0.0001K"), Some(0)); // 0.1024 bytes, truncated
        assert_eq!(bytes("1e3K"), Some(1_024_000));
        assert_eq!(bytes("1E+3K"), Some(1_024_000));
        assert_eq!(bytes("2048e-1K"), Some(209_715)); // 204.8 K = 209715.2
        assert_eq!(bytes("1e-400K"), Some(0));
        assert_eq!(bytes("0e99999999999999999999G"), Some(0));
    }

    #[test]
    fn units_are_case_insensitive() {
        // A deliberate difference from joblib, which rejects lower case.
        assert_eq!(bytes("1m"), Some(1 << 20));
        assert_eq!(bytes("512k"), Some(512 << 10));
        assert_eq!(bytes("2g"), Some(2 << 30));
    }

    #[test]
    fn plain_integers_and_none() {
        assert_eq!(bytes("1024"), Some(1024));
        assert_eq!(bytes("0"), Some(0));
        assert_eq!(bytes("007"), Some(7));
        assert_eq!(bytes("18446744073709551615"), Some(u64::MAX));
        assert_eq!(bytes("none"), None);
        assert_eq!(bytes("None"), None);
    }

    #[test]
    fn exact_arithmetic_where_a_float_would_round() {
        // 2^53 + 1 does not fit an f64 mantissa; K multiplies exactly.
        assert_eq!(
            bytes("9007199254740993K"),
            Some(9_007_199_254_740_993 << 10)
        );
        // Exactly one byte: 2^-30 G needs all 30 decimal places.
        assert_eq!(bytes("0.000000000931322574615478515625G"), Some(1));
        // One place fewer is just below one byte.
        assert_eq!(bytes("0.00000000093132257461547851562G"), Some(0));
        // Digits far beyond the 30th place cannot change the result.
        let long = format!("0.9{}K", "9".repeat(5000));
        assert_eq!(bytes(&long), Some(1023));
    }

    #[test]
    fn edges_of_u64() {
        // 2^64 - 1 = 17179869183.999999999068677425384521484375 G; 17179869184 G is 2^64.
        assert_eq!(bytes("17179869183G"), Some(17_179_869_183 << 30));
        assert_eq!(
            bytes("17179869183.9999999990686774253845214843750G"),
            Some(u64::MAX)
        );
        rejected("17179869184G");
        rejected("18446744073709551616");
        rejected("99999999999999999999999999G");
        rejected("1e400G");
        rejected("1e20K");
        rejected(&format!("{}M", "9".repeat(1000)));
    }

    #[test]
    fn hostile_and_malformed_sizes() {
        for bad in [
            "",
            "12Q",
            "fooG",
            "-1M",
            "-1",
            "+1M",
            "1MB",
            "M",
            "m",
            " M",
            "K ",
            "1M ",
            "1.5",
            "1.",
            ".",
            ".K",
            "1..5M",
            "1.2.3K",
            "1 2M",
            "1_000K",
            "infK",
            "nanM",
            "InfinityG",
            "0x10K",
            "1e",
            "1eK",
            "1e+K",
            "1e-K",
            "e3K",
            "1e3.5K",
            "1e--3K",
            "ÄM",
            "1ÄM",
            "１M",
            "1\u{0}M",
            "\u{0}",
            "1\nM\n",
            "NONE",
            "none ",
            " none",
            "null",
            "1K\u{301}",
        ] {
            rejected(bad);
        }
    }

    #[test]
    fn long_values_are_quoted_shortened() {
        let value = "x".repeat(100_000);
        let message = rejected(&value);
        assert!(message.len() < 400, "{} bytes", message.len());
        assert!(message.contains("..."), "{message}");
    }

    #[test]
    fn messages_quote_the_value() {
        assert_eq!(
            rejected("12Q"),
            "invalid max_nbytes \"12Q\": expected a number of bytes, \"none\", or a size like \"10G\", \"500M\", \"50K\" (binary units, any case)"
        );
        assert!(rejected("1\nQ").contains("\"1\\nQ\""));
    }

    #[test]
    fn mmap_modes() {
        for (text, mode) in [
            ("r", MmapMode::R),
            ("r+", MmapMode::RPlus),
            ("w+", MmapMode::WPlus),
            ("c", MmapMode::C),
            ("none", MmapMode::None),
        ] {
            assert_eq!(parse_mmap_mode(text).unwrap(), mode);
            assert_eq!(mode.name(), text);
        }
        assert_eq!(parse_mmap_mode("None").unwrap(), MmapMode::None);
        for bad in [
            "", "x", "R", "R+", "w", "rw", "r+ ", " r", "NONE", "nil", "c+", "r\0", "+r", "ｒ",
        ] {
            let err = parse_mmap_mode(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.message().contains(&quote(bad)), "{}", err.message());
        }
        assert_eq!(
            parse_mmap_mode("w").unwrap_err().message(),
            "invalid mmap_mode \"w\": expected \"r\", \"r+\", \"w+\", \"c\" or \"none\""
        );
    }
}
